// Package layout says where the fields kptune reads and writes sit in a kube-proxy's sync runner,
// for one binary: which of the two runner generations it holds, and the offsets of the runner's
// fields (and, in the old generation, of its token bucket's), from the binary itself (runtime type
// descriptors, kept by stripped builds; DWARF where present) or from kptune's built-in table.
//
// Two generations of runner exist. k8s 1.20–1.33 use k8s.io/kubernetes/pkg/util/async, whose rate is
// gated by a client-go token bucket (limiter → *rate.Limiter, with a float32 qps copy); k8s 1.34
// and later use k8s.io/kubernetes/pkg/proxy/runner, which re-reads minInterval after every run.
package layout

import (
	"errors"
	"fmt"

	"kptune/internal/gobin"
)

// Generation is a runner generation.
type Generation string

const (
	Async  Generation = "async"  // pkg/util/async, k8s 1.20–1.33
	Runner Generation = "runner" // pkg/proxy/runner, k8s 1.34+
)

// Package paths and the functions that tell the generations apart.
const (
	AsyncPkg       = "k8s.io/kubernetes/pkg/util/async"
	RunnerPkg      = "k8s.io/kubernetes/pkg/proxy/runner"
	FlowcontrolPkg = "k8s.io/client-go/util/flowcontrol"
	RatePkg        = "golang.org/x/time/rate"
	AsyncTryRun    = AsyncPkg + ".(*BoundedFrequencyRunner).tryRun"
	RunnerLoop     = RunnerPkg + ".(*BoundedFrequencyRunner).Loop"
)

// Layout is where the fields kptune reads and writes sit, for one binary.
type Layout struct {
	Generation Generation
	Source     string // "type descriptors", "DWARF" or "built-in table"

	RunnerSize                              uint64
	Name, MinInterval, MaxInterval, Run, Fn uint64
	RetryInterval                           uint64 // new generation
	Limiter                                 uint64 // old generation: the rateLimiter interface
	TokenBucketType                         uint64 // descriptor of flowcontrol.tokenBucketRateLimiter (0 if unknown)
	TBLimiter, TBQPS, RateLimit, RateBurst  uint64 // old generation: offsets in the token bucket and rate.Limiter
	// RateTokens is the rate.Limiter's tokens (old generation; 0: unknown), adjusted when the period
	// is raised (patch.Plan says why).
	RateTokens uint64
	// RateMu is the rate.Limiter's mutex (old generation), known if RateMuKnown: 0 in x/time since
	// 2021, 16 before. A write that finds it locked waits for another stop (patch.Apply).
	RateMu      uint64
	RateMuKnown bool
	// Confirmed: the built-in layout was checked against a runner's values, and agrees.
	Confirmed bool
	// Unconfirmed says why the built-in layout could not be checked against a runner's values ("":
	// it came from the binary, or was confirmed). Nothing is written with such a layout unless forced.
	Unconfirmed string
}

// Describe is where the layout came from, for people: its source, and for the built-in table
// whether a runner's values confirmed it.
func (l Layout) Describe() string {
	switch {
	case l.Confirmed:
		return l.Source + ", confirmed by values"
	case l.Unconfirmed != "":
		return l.Source + " (unconfirmed: " + l.Unconfirmed + ")"
	}
	return l.Source
}

// DetectGeneration tells the runner generation from the type descriptors the binary holds: a
// BoundedFrequencyRunner of one package or the other. It reads no function table (27 MiB in a
// kube-proxy); generationFromFunctions is the same decision from the functions, and tests hold the
// two to agreement.
func DetectGeneration(b *gobin.Binary) (Generation, error) {
	old, err := b.HasTypeName("async.BoundedFrequencyRunner")
	if err != nil {
		return "", err
	}
	cur, err := b.HasTypeName("runner.BoundedFrequencyRunner")
	if err != nil {
		return "", err
	}
	return decide(old, cur)
}

// generationFromFunctions tells the generation from which runner functions exist: tryRun (k8s ≤
// 1.33) or the new package's Loop (k8s ≥ 1.34).
func generationFromFunctions(b *gobin.Binary) (Generation, error) {
	if err := b.FuncTableErr(); err != nil {
		return "", err
	}
	_, _, old := b.Func(AsyncTryRun)
	_, _, cur := b.Func(RunnerLoop)
	return decide(old, cur)
}

func decide(old, cur bool) (Generation, error) {
	switch {
	case old && !cur:
		return Async, nil
	case cur && !old:
		return Runner, nil
	case old && cur:
		return "", errors.New("the binary holds both runner generations: not a kube-proxy kptune knows")
	}
	return "", errors.New("no BoundedFrequencyRunner in this binary: not a kube-proxy (or its runner was renamed)")
}

// ErrNoLayout is wrapped by every failure to read a runner layout from a binary: the binary does not
// change, so neither does the answer (unlike a runner not found yet in a kube-proxy that is starting).
var ErrNoLayout = errors.New("no runner layout")

// Of reads the layout from the binary's type descriptors, else its DWARF, else the built-in
// table; the table is used only where the binary confirms nothing contradicts it.
func Of(b *gobin.Binary) (Layout, error) {
	l, err := of(b)
	if err != nil {
		return Layout{}, layoutError{err}
	}
	return l, nil
}

// layoutError wraps ErrNoLayout, keeping the message.
type layoutError struct{ error }

func (e layoutError) Unwrap() []error { return []error{e.error, ErrNoLayout} }

func of(b *gobin.Binary) (Layout, error) {
	gen, err := DetectGeneration(b)
	if err != nil {
		return Layout{}, err
	}
	l, err := fromBinary(b, gen, b.StructType, "type descriptors")
	if err == nil {
		return l, nil
	}
	if !errors.Is(err, gobin.ErrTypeNotFound) {
		// The descriptors are there and contradict every kube-proxy: no other source overrules them.
		return Layout{}, fmt.Errorf("the binary's type descriptors: %w", err)
	}
	l, derr := fromBinary(b, gen, b.DWARFStruct, "DWARF")
	if derr == nil {
		return l, nil
	}
	if !errors.Is(derr, gobin.ErrTypeNotFound) && !errors.Is(derr, gobin.ErrNoDWARF) {
		return Layout{}, fmt.Errorf("the binary's DWARF: %w", derr)
	}
	if b.PtrSize == 8 {
		l := builtin[gen]
		return l, nil
	}
	return Layout{}, fmt.Errorf("no layout for the %s runner: %v; %v", gen, err, derr)
}

// FromDWARF reads the layout from DWARF only: the ground truth of unstripped builds.
func FromDWARF(b *gobin.Binary) (Layout, error) {
	gen, err := DetectGeneration(b)
	if err != nil {
		return Layout{}, err
	}
	return fromBinary(b, gen, b.DWARFStruct, "DWARF")
}

type structReader func(name, pkgPath string) (gobin.Struct, error)

func fromBinary(b *gobin.Binary, gen Generation, read structReader, source string) (Layout, error) {
	l := Layout{Generation: gen, Source: source}
	pkg, name := AsyncPkg, "async.BoundedFrequencyRunner"
	if gen == Runner {
		pkg, name = RunnerPkg, "runner.BoundedFrequencyRunner"
	}
	r, err := read(name, pkg)
	if err != nil {
		return l, err
	}
	l.RunnerSize = r.Size
	// Sizes: a string header; durations, a channel and a func value are words; an interface two.
	need := map[string]field{"name": {&l.Name, 16}, "minInterval": {&l.MinInterval, 8}, "maxInterval": {&l.MaxInterval, 8},
		"run": {&l.Run, 8}, "fn": {&l.Fn, 8}}
	if gen == Runner {
		need["retryInterval"] = field{&l.RetryInterval, 8}
	} else {
		need["limiter"] = field{&l.Limiter, 16}
	}
	if err := offsets(r, need); err != nil {
		return l, err
	}
	if gen == Runner {
		return l, l.Check()
	}
	tb, err := read("flowcontrol.tokenBucketRateLimiter", FlowcontrolPkg)
	if err != nil {
		return l, err
	}
	passive, err := read("flowcontrol.tokenBucketPassiveRateLimiter", FlowcontrolPkg)
	if err == nil {
		// client-go ≥ v0.23 embeds the passive limiter, which holds the fields.
		var embed uint64
		if err := offsets(tb, map[string]field{"tokenBucketPassiveRateLimiter": {&embed, passive.Size}}); err != nil {
			return l, err
		}
		if err := offsets(passive, map[string]field{"limiter": {&l.TBLimiter, 8}, "qps": {&l.TBQPS, 4}}); err != nil {
			return l, err
		}
		l.TBLimiter += embed
		l.TBQPS += embed
	} else if err := offsets(tb, map[string]field{"limiter": {&l.TBLimiter, 8}, "qps": {&l.TBQPS, 4}}); err != nil {
		return l, err
	}
	l.TokenBucketType = tb.Addr
	rl, err := read("rate.Limiter", RatePkg)
	if err != nil {
		return l, err
	}
	if err := offsets(rl, map[string]field{"limit": {&l.RateLimit, 8}, "burst": {&l.RateBurst, 8}, "tokens": {&l.RateTokens, 8}, "mu": {&l.RateMu, 8}}); err != nil {
		return l, err
	}
	l.RateMuKnown = true
	return l, l.Check()
}

// field is where to put a field's offset, and the size it has in every kube-proxy.
type field struct {
	dst  *uint64
	size uint64
}

// offsets reads the offsets of the named fields of s, each of which must have the size kube-proxy's
// has, in a struct no larger than maxStruct: the type descriptors are the target's, and a crafted
// binary could declare anything.
func offsets(s gobin.Struct, need map[string]field) error {
	if s.Size > maxStruct {
		return fmt.Errorf("%s is %d bytes, larger than kube-proxy's (at most %d are read): a layout kptune does not know", s.Name, s.Size, maxStruct)
	}
	for name, want := range need {
		f, ok := s.Field(name)
		if !ok {
			return fmt.Errorf("%s has no field %s: a layout kptune does not know", s.Name, name)
		}
		if f.Size != want.size {
			return fmt.Errorf("%s.%s is %d bytes, not %d: a layout kptune does not know", s.Name, name, f.Size, want.size)
		}
		*want.dst = f.Offset
	}
	return nil
}

// maxStruct bounds the runner, the token bucket and the rate.Limiter (152, 48 and 80 bytes in
// kube-proxy 1.33; 104 for the 1.34 runner).
const maxStruct = 4 << 10

// Check refuses a layout whose fields do not fit its runner, or whose runner or limiter offsets
// exceed maxStruct: what the scan reads and the writer writes is bounded by it, whatever source it
// came from.
func (l Layout) Check() error {
	if l.Generation != Async && l.Generation != Runner {
		return fmt.Errorf("layout of unknown runner generation %q", l.Generation)
	}
	if l.RunnerSize == 0 || l.RunnerSize > maxStruct {
		return fmt.Errorf("a runner of %d bytes: not a kube-proxy's (at most %d)", l.RunnerSize, maxStruct)
	}
	type placed struct {
		name          string
		off, size, in uint64
	}
	fs := []placed{{"name", l.Name, 16, l.RunnerSize}, {"minInterval", l.MinInterval, 8, l.RunnerSize},
		{"maxInterval", l.MaxInterval, 8, l.RunnerSize}, {"run", l.Run, 8, l.RunnerSize}, {"fn", l.Fn, 8, l.RunnerSize}}
	if l.Generation == Runner {
		fs = append(fs, placed{"retryInterval", l.RetryInterval, 8, l.RunnerSize})
	} else {
		fs = append(fs, placed{"limiter", l.Limiter, 16, l.RunnerSize}, placed{"token bucket's limiter", l.TBLimiter, 8, maxStruct},
			placed{"token bucket's qps", l.TBQPS, 4, maxStruct}, placed{"rate.Limiter's limit", l.RateLimit, 8, maxStruct},
			placed{"rate.Limiter's burst", l.RateBurst, 8, maxStruct}, placed{"rate.Limiter's tokens", l.RateTokens, 8, maxStruct})
		if l.RateMuKnown {
			fs = append(fs, placed{"rate.Limiter's mutex", l.RateMu, 8, maxStruct})
		}
	}
	for _, f := range fs {
		if f.off > f.in || f.size > f.in-f.off {
			return fmt.Errorf("the %s layout puts %s at %d, outside its %d bytes", l.Generation, f.name, f.off, f.in)
		}
	}
	return nil
}

// builtin is the last resort, for 64-bit builds whose descriptors and DWARF cannot be read: the
// layouts of the two generations, as every release so far has them.
var builtin = map[Generation]Layout{
	Async: {Generation: Async, Source: BuiltinSource, RunnerSize: 152,
		Name: 0, MinInterval: 16, MaxInterval: 24, Run: 32, Fn: 48, Limiter: 96,
		TBLimiter: 0, TBQPS: 8, RateLimit: 8, RateBurst: 16, RateTokens: 24, RateMu: 0, RateMuKnown: true},
	Runner: {Generation: Runner, Source: BuiltinSource, RunnerSize: 104,
		Name: 0, MinInterval: 16, RetryInterval: 24, MaxInterval: 32, Run: 40, Fn: 48},
}

// BuiltinSource is the Source of the built-in layouts.
const BuiltinSource = "built-in table"

// Builtin returns the built-in layout of a generation.
func Builtin(gen Generation) Layout { return builtin[gen] }

// SameFields reports whether two layouts put every field kptune reads or writes at the same offset
// (sources, sizes, confirmation and the token bucket's descriptor aside).
func SameFields(a, b Layout) bool {
	a.Source, b.Source, a.RunnerSize, b.RunnerSize, a.TokenBucketType, b.TokenBucketType = "", "", 0, 0, 0, 0
	a.Unconfirmed, b.Unconfirmed, a.Confirmed, b.Confirmed = "", "", false, false
	return a == b
}
