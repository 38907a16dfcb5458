// Package inspect puts discovery, binary analysis and the runner scan together: which kube-proxy
// processes run on this node, what they are built from, and the values each sync runner lives by.
package inspect

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/kpmetrics"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/probe"
	"kptune/internal/procfs"
)

// KubeProxyMain is the main package path of every kube-proxy build.
const KubeProxyMain = "k8s.io/kubernetes/cmd/kube-proxy"

// Report is what `kptune inspect -o json` prints.
type Report struct {
	Processes []Process `json:"processes"`
}

// Process is one kube-proxy.
type Process struct {
	PID          int      `json:"pid"`
	StartTime    uint64   `json:"startTime"`
	Exe          string   `json:"exe"`
	BuildID      string   `json:"buildID"`
	K8sVersion   string   `json:"k8sVersion"`
	GoVersion    string   `json:"goVersion"`
	ProxyMode    string   `json:"proxyMode"`
	Generation   string   `json:"generation"`
	LayoutSource string   `json:"layoutSource"`
	Locator      string   `json:"locator,omitempty"`
	Runners      []Runner `json:"runners"`
	Error        string   `json:"error,omitempty"`
	err          error
	found        []locate.Found
}

// Runner is one sync runner.
type Runner struct {
	Address       string   `json:"address"`
	MinInterval   string   `json:"minInterval"`
	MaxInterval   string   `json:"maxInterval"`
	RetryInterval string   `json:"retryInterval,omitempty"`
	QPS           *float32 `json:"qps,omitempty"`
	Limit         *float64 `json:"limit,omitempty"`
	Burst         *int64   `json:"burst,omitempty"`
	Patchable     bool     `json:"patchable"`
	Reason        string   `json:"reason,omitempty"`
}

// ErrNotKubeProxy is wrapped by every refusal of a process as a kube-proxy.
var ErrNotKubeProxy = errors.New("not a kube-proxy")

// What makes a process a kube-proxy, checked before anything costly is read of it, because any
// process of the node can be looked at and none is trusted:
//   - it runs as root (real and effective uid 0, as kube-proxy's DaemonSet runs it);
//   - its executable is a regular file of at most gobin.MaxExecutable bytes, an ELF Go program;
//   - its build information names k8s.io/kubernetes/cmd/kube-proxy as the main package, and
//     k8s.io/client-go among the modules it was built with.
//
// The checks keep the work spent on other processes small; they are not what makes a write safe:
// a process that passes them still has every size and offset of its binary bounded, and every
// runner validated, before anything is written.

// notKubeProxy is a refusal that says what the process is instead.
type notKubeProxy struct{ is string }

func (e notKubeProxy) Error() string        { return e.is + ", not a kube-proxy" }
func (e notKubeProxy) Is(target error) bool { return target == ErrNotKubeProxy }

// Vet checks the build information of a kube-proxy candidate.
func Vet(bi *buildinfo.BuildInfo) error {
	if bi.Path != KubeProxyMain {
		return notKubeProxy{"the Go program " + bi.Path}
	}
	for _, d := range bi.Deps {
		if d.Path == "k8s.io/client-go" {
			return nil
		}
	}
	return notKubeProxy{"a program with kube-proxy's main package built without k8s.io/client-go (every kube-proxy links it)"}
}

// Discover returns the kube-proxy processes of the host. Processes that are not kube-proxies, or
// that vanish while being read, are passed over.
func Discover() ([]procfs.Process, error) {
	var out []procfs.Process
	err := discover(func(p procfs.Process, _ *gobin.Binary) { out = append(out, p) })
	return out, err
}

// All inspects every kube-proxy process on the host. A panic while reading one (a defect, since
// every size read is bounded) is that process's error, not the end of the report.
func All(ctx context.Context, o LocateOptions) (Report, error) {
	var r Report
	err := discover(func(p procfs.Process, b *gobin.Binary) {
		var out Process
		if perr := Safely(p.PID, func() { out = inspect(ctx, p, b, o) }); perr != nil {
			out = Process{PID: p.PID, StartTime: p.StartTime, Runners: []Runner{}, Error: perr.Error(), err: perr}
		}
		r.Processes = append(r.Processes, out)
	})
	return r, err
}

// Safely runs fn, the work on process pid outside any stop of it, and turns a panic into a
// *PanicError. Inside a stop nothing is recovered: a panic there ends kptune, and the kernel
// releases the process.
func Safely(pid int, fn func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{PID: pid, Value: r, Stack: debug.Stack()}
		}
	}()
	fn()
	return nil
}

// PanicError is a panic recovered while reading a process: a defect, since every size read is
// bounded. Its message is one line; Stack is where it happened.
type PanicError struct {
	PID   int
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("pid %d: kptune failed reading it (%v): nothing written; please report this with the output of kptune version", e.PID, e.Value)
}

func discover(fn func(procfs.Process, *gobin.Binary)) error {
	procs, err := procfs.List()
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	for _, p := range procs {
		if p.PID == self || len(p.Cmdline) == 0 {
			continue // kptune itself, and kernel threads
		}
		p, b, err := Open(p.PID)
		if err != nil {
			continue
		}
		fn(p, b)
		b.Close()
	}
	return nil
}

// ErrSuspect is wrapped by the refusal of a process that looks like a kube-proxy (it is named
// kube-proxy, or its build information says so) and fails a check: unlike the many processes that
// are plainly something else, such a refusal is worth a warning.
var ErrSuspect = errors.New("looks like a kube-proxy")

// suspect wraps err with ErrSuspect, keeping err's message.
type suspect struct{ error }

func (s suspect) Unwrap() []error { return []error{s.error, ErrSuspect} }

// Open opens the executable of process pid and checks that it is a kube-proxy, with a one-line
// error that says what to do otherwise.
func Open(pid int) (procfs.Process, *gobin.Binary, error) {
	p, err := procfs.Get(pid)
	if err != nil {
		if errors.Is(err, procfs.ErrGone) {
			return p, nil, fmt.Errorf("no process %d: check the PID (pgrep kube-proxy)", pid)
		}
		return p, nil, err
	}
	named := p.Comm == "kube-proxy"
	refuse := func(claims bool, err error) (procfs.Process, *gobin.Binary, error) {
		if claims || named {
			err = suspect{err}
		}
		return p, nil, err
	}
	if ruid, euid, err := procfs.UIDs(pid); err != nil {
		return p, nil, fmt.Errorf("pid %d (%s): %w", pid, p.Comm, err)
	} else if ruid != 0 || euid != 0 {
		return refuse(false, fmt.Errorf("pid %d (%s) runs as uid %d (effective %d), %w: kube-proxy runs as root; pick a kube-proxy PID", pid, p.Comm, ruid, euid, ErrNotKubeProxy))
	}
	claims := false // its build information names kube-proxy's main package
	b, err := gobin.OpenVetted(p.Exe(), func(bi *buildinfo.BuildInfo) error {
		claims = bi.Path == KubeProxyMain
		return Vet(bi)
	})
	var nk notKubeProxy
	switch {
	case errors.Is(err, os.ErrPermission):
		return p, nil, fmt.Errorf("pid %d: cannot read its executable: run as root or with CAP_SYS_PTRACE", pid)
	case errors.Is(err, gobin.ErrNotGo):
		return refuse(false, fmt.Errorf("pid %d (%s) is not a Go program, so %w: pick a kube-proxy PID", pid, p.Comm, ErrNotKubeProxy))
	case errors.Is(err, os.ErrNotExist):
		return p, nil, fmt.Errorf("pid %d (%s) has no readable executable (a kernel thread, or it exited): pick a kube-proxy PID", pid, p.Comm)
	case errors.As(err, &nk):
		return refuse(claims, fmt.Errorf("pid %d (%s) is %w: pick a kube-proxy PID", pid, p.Comm, nk))
	case err != nil:
		return refuse(claims, fmt.Errorf("pid %d (%s): %w", pid, p.Comm, err))
	}
	return p, b, nil
}

// PID inspects one process, which must be a kube-proxy.
func PID(ctx context.Context, pid int, o LocateOptions) (Process, error) {
	p, b, err := Open(pid)
	if err != nil {
		return Process{}, err
	}
	defer b.Close()
	out := inspect(ctx, p, b, o)
	return out, out.err
}

func inspect(ctx context.Context, p procfs.Process, b *gobin.Binary, o LocateOptions) Process {
	out := Process{
		PID: p.PID, StartTime: p.StartTime, Exe: exePath(p), BuildID: b.BuildID(),
		GoVersion: b.GoVersion, K8sVersion: K8sVersion(b), ProxyMode: proxyMode(p.Cmdline), Runners: []Runner{},
	}
	t, found, by, err := LocateBy(ctx, p.PID, b, o)
	l := t.Layout
	out.Generation, out.LayoutSource, out.Locator = string(l.Generation), l.Source, by
	if err != nil {
		out.err = fmt.Errorf("pid %d: %w", p.PID, err)
		out.Error = out.err.Error()
		return out
	}
	out.found = found
	for _, f := range found {
		out.Runners = append(out.Runners, toRunner(f, l.Generation))
	}
	return out
}

// Target prepares the scan of process pid, whose executable b is: its layout, mappings and load bias.
func Target(pid int, b *gobin.Binary) (locate.Target, error) {
	l, err := locate.LayoutOf(b)
	if err != nil {
		return locate.Target{}, err
	}
	maps, err := procfs.Maps(pid)
	if err != nil {
		return locate.Target{Layout: l}, err
	}
	_, ino, err := procfs.ExeID(pid)
	if err != nil {
		return locate.Target{Layout: l}, err
	}
	bias, err := locate.LoadBias(b, maps, ino)
	if err != nil {
		return locate.Target{Layout: l}, err
	}
	return locate.Target{Mem: memory.Process{PID: pid}, Maps: maps, Bias: bias, Binary: b, Layout: l}, nil
}

// LocateTarget prepares the scan of process pid and finds its runners; at least one, or an error
// that says why there is none.
func LocateTarget(ctx context.Context, pid int, b *gobin.Binary) (locate.Target, []locate.Found, error) {
	t, err := Target(pid, b)
	if err != nil {
		return t, nil, err
	}
	found, err := locate.Scan(ctx, t)
	if err != nil {
		return t, nil, err
	}
	if len(found) == 0 {
		if _, gerr := procfs.Get(pid); gerr != nil {
			return t, nil, fmt.Errorf("the process exited during the scan")
		}
		return t, nil, fmt.Errorf("%w in its memory (kube-proxy may still be starting: its proxier is built after it reaches the API server and finds its Node)", ErrNoRunner)
	}
	return t, found, nil
}

// ErrNoRunner is returned when a locator finds no valid runner in a live kube-proxy.
var ErrNoRunner = errors.New("no sync runner found")

// Locator says how runners are found.
type Locator string

const (
	ByScan   Locator = "scan"   // the memory scan for the runner's signature
	ByUprobe Locator = "uprobe" // an entry uprobe on the functions that use the runner
	ByBoth   Locator = "both"   // both, which must agree on every runner
	ByAuto   Locator = "auto"   // the scan, and the uprobe where the scan finds no valid runner
)

// ParseLocator checks a --locate value.
func ParseLocator(s string) (Locator, error) {
	switch l := Locator(s); l {
	case ByScan, ByUprobe, ByBoth, ByAuto:
		return l, nil
	}
	return "", fmt.Errorf("unknown locator %q: use auto, scan, uprobe or both", s)
}

// LocateOptions choose the locator and bound the uprobe's capture.
type LocateOptions struct {
	Locator Locator
	Probe   probe.Options
}

// DefaultLocate is the memory scan, falling back to the uprobe.
var DefaultLocate = LocateOptions{Locator: ByAuto, Probe: probe.DefaultOptions}

// LocateBy finds the runners of process pid with the chosen locator, and says which locator found
// them: "scan", "uprobe" or "scan+uprobe". Where the layout is the built-in table, the first runner's
// values must confirm it.
func LocateBy(ctx context.Context, pid int, b *gobin.Binary, o LocateOptions) (locate.Target, []locate.Found, string, error) {
	t, found, by, err := locateBy(ctx, pid, b, o)
	if err == nil && len(found) > 0 && t.Layout.Source == locate.BuiltinSource {
		err = confirmBuiltin(ctx, pid, &t, found[0])
	}
	return t, found, by, err
}

func locateBy(ctx context.Context, pid int, b *gobin.Binary, o LocateOptions) (locate.Target, []locate.Found, string, error) {
	if o.Locator == "" {
		o.Locator = ByAuto
	}
	if o.Locator == ByUprobe {
		t, err := Target(pid, b)
		if err != nil {
			return t, nil, "", err
		}
		found, err := uprobe(ctx, t, pid, o.Probe)
		return t, found, string(ByUprobe), err
	}
	t, scanned, err := LocateTarget(ctx, pid, b)
	switch {
	case o.Locator == ByScan:
		return t, scanned, string(ByScan), err
	case o.Locator == ByAuto && err == nil:
		return t, scanned, string(ByScan), nil
	case o.Locator == ByAuto && errors.Is(err, ErrNoRunner):
		found, perr := uprobe(ctx, t, pid, o.Probe)
		if perr != nil {
			return t, nil, "", fmt.Errorf("%v; and the uprobe: %w", err, perr)
		}
		return t, found, string(ByUprobe), nil
	case err != nil:
		return t, nil, "", err
	}
	probed, err := uprobe(ctx, t, pid, o.Probe)
	if err != nil {
		return t, nil, "", fmt.Errorf("the scan found %d runners, the uprobe none: %w", len(scanned), err)
	}
	if err := agree(scanned, probed); err != nil {
		return t, nil, "", err
	}
	return t, scanned, "scan+uprobe", nil
}

func uprobe(ctx context.Context, t locate.Target, pid int, o probe.Options) ([]locate.Found, error) {
	c, err := probe.Locate(ctx, t, pid, procfs.Process{PID: pid}.Exe(), o)
	if err != nil {
		return nil, err
	}
	return c.Found, nil
}

// agree checks that two locators found the same runners, at the same addresses, with the same values.
func agree(scanned, probed []locate.Found) error {
	byAddr := map[uint64]locate.Found{}
	for _, f := range scanned {
		byAddr[f.Address] = f
	}
	for _, f := range probed {
		s, ok := byAddr[f.Address]
		if !ok {
			return fmt.Errorf("the uprobe found a runner at %#x that the memory scan did not: the locators disagree, nothing will be written", f.Address)
		}
		if s != f {
			return fmt.Errorf("the scan and the uprobe read different values at runner %#x: the locators disagree, nothing will be written", f.Address)
		}
		delete(byAddr, f.Address)
	}
	for a := range byAddr {
		return fmt.Errorf("the memory scan found a runner at %#x that the uprobe did not capture: the locators disagree, nothing will be written", a)
	}
	return nil
}

func toRunner(f locate.Found, gen locate.Generation) Runner {
	r := Runner{
		Address: fmt.Sprintf("%#x", f.Address), MinInterval: f.MinInterval.String(), MaxInterval: f.MaxInterval.String(),
		Patchable: f.Patchable, Reason: f.Reason,
	}
	if gen == locate.Runner {
		r.RetryInterval = f.RetryInterval.String()
	} else if f.LimitAddr != 0 {
		qps, limit, burst := f.QPS, f.Limit, f.Burst
		r.QPS, r.Limit, r.Burst = &qps, &limit, &burst
	}
	return r
}

// Found returns the raw scan results behind the report's runners.
func (p Process) Found() []locate.Found { return p.found }

func exePath(p procfs.Process) string {
	if target, err := os.Readlink(p.Exe()); err == nil {
		return target
	}
	return p.Exe()
}

// gitVersionRE is what k8s release builds inject as gitVersion: v1.33.5, v1.34.0-rc.1, v1.33.5+k3s1.
var gitVersionRE = regexp.MustCompile(`^v1\.[0-9]{1,2}\.[0-9]{1,3}([-+][0-9A-Za-z.+-]{1,40})?$`)

// K8sVersion is the version injected at link time (-X k8s.io/component-base/version.gitVersion=…):
// from the build settings where they recorded -ldflags (not under -trimpath, which releases use), else
// from the one string variable of the binary that looks like a release version, else the
// k8s.io/kubernetes module version.
func K8sVersion(b *gobin.Binary) string {
	for _, s := range b.Build.Settings {
		if s.Key != "-ldflags" {
			continue
		}
		for _, f := range strings.Fields(s.Value) {
			if v, ok := strings.CutPrefix(f, "k8s.io/component-base/version.gitVersion="); ok {
				return v
			}
		}
	}
	if vs := b.StringVars(6, 60, gitVersionRE.MatchString); len(vs) == 1 {
		return vs[0]
	}
	if b.Build.Main.Path == "k8s.io/kubernetes" && b.Build.Main.Version != "(devel)" {
		return b.Build.Main.Version
	}
	for _, d := range b.Build.Deps {
		if d.Path == "k8s.io/kubernetes" {
			return d.Version
		}
	}
	return "unknown"
}

// proxyMode reads --proxy-mode from the command line; "" when it comes from a config file.
func proxyMode(args []string) string {
	v, _ := kpmetrics.FlagValue(args, "--proxy-mode")
	return v
}

// Periods reads the periods kube-proxy process p configured its proxiers with, from its /configz.
func Periods(ctx context.Context, p procfs.Process) (locate.Periods, error) {
	cfg, err := kpmetrics.ForProcess(p.PID, p.Cmdline).Configz(ctx)
	if err != nil {
		return locate.Periods{}, err
	}
	mode := proxyMode(p.Cmdline)
	if mode == "" {
		mode = cfg.Mode()
	}
	if mode == "" {
		mode = "iptables" // kube-proxy's default on Linux
	}
	min, ok1 := cfg.Period("minSyncPeriod", mode)
	sync, ok2 := cfg.Period("syncPeriod", mode)
	if !ok1 || !ok2 {
		return locate.Periods{}, fmt.Errorf("no minSyncPeriod and syncPeriod for mode %s in kube-proxy's /configz", mode)
	}
	return locate.Periods{MinSync: min, Sync: sync}, nil
}

// confirmBuiltin checks the built-in layout, used where the binary's type descriptors and DWARF
// cannot be read, against the layout a runner's values give: a contradiction refuses the process.
func confirmBuiltin(ctx context.Context, pid int, t *locate.Target, f locate.Found) error {
	p, err := procfs.Get(pid)
	if err != nil {
		return err
	}
	periods, err := Periods(ctx, p)
	if err == nil {
		var l locate.Layout
		l, err = locate.LayoutFromProcess(ctx, *t, f.Address, periods, 500*time.Millisecond)
		if err == nil && !locate.SameFields(l, t.Layout) {
			return fmt.Errorf("the built-in %s layout disagrees with the layout runner %#x's values give (%+v): a build kptune does not know, nothing will be written", t.Layout.Generation, f.Address, l)
		}
	}
	if err != nil {
		t.Layout.Unconfirmed = err.Error()
		t.Layout.Source += " (unconfirmed: " + err.Error() + ")"
		return nil
	}
	t.Layout.Source += ", confirmed by values"
	return nil
}
