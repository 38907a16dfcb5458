// Package probe is kptune's second runner locator, independent of the memory scan: it captures the
// runners as kube-proxy uses them, with an entry uprobe (github.com/cilium/ebpf, no perf or gdb
// binaries, never a uretprobe: a return probe rewrites the return address on the stack, which Go's
// stack copying and traceback do not expect).
//
// Where it probes. Up to k8s 1.33, async.(*BoundedFrequencyRunner).tryRun runs on every trigger and
// its receiver is the runner. From 1.34, runner.(*BoundedFrequencyRunner).Run is inlined into the
// proxiers' Sync, so kptune probes each proxier's Sync and syncProxyRules (the one a trigger calls,
// the other every sync) and follows the proxier's syncRunner field, whose offset comes from the
// proxier's type descriptor. Functions are found in the pclntab, which stripped builds keep; the
// probe goes at the function's file offset, so PIE builds need no bias for it.
//
// What a hit records. The BPF program runs only for the target's thread group (filtered inside the
// program: the probe itself is system-wide, as uprobes are per file) and records two words, the
// receiver register of Go's register ABI and the word above the return address, where Go's stack
// ABI (ABI0) passes it, counted in a hash map. Userspace keeps the candidates that pass the runner's
// signature check (locate.Validate) and detaches as soon as the capture is complete.
package probe

import (
	"debug/elf"
	"fmt"
	"strings"

	"kptune/internal/gobin"
	"kptune/internal/layout"
)

// Point is one probed function.
type Point struct {
	Func   string // full Go name
	Entry  uint64 // entry address, in the file's image
	Offset uint64 // file offset of the entry, where the uprobe goes
	// Field is where the receiver holds the runner: Self when the receiver is the runner, Search
	// when the proxier's layout is unknown, else the offset of the proxier's syncRunner pointer.
	Field int64
	// Via, for a dual-stack metaProxier's handler: the offsets of its two proxy.Provider interface
	// fields (ipv4Proxier, ipv6Proxier), whose dynamic types name the proxier and so, in Proxiers,
	// the offset of its syncRunner.
	Via      []int64
	Proxiers map[string]int64 // "*nftables.Proxier" → offset of syncRunner
}

// MetaProxier is the dual-stack proxier: it hands each event to the IPv4 or IPv6 proxier, by the
// object's address family, so an IPv4 EndpointSlice change triggers only the IPv4 runner. Its
// handlers lead to both.
const MetaProxier = "k8s.io/kubernetes/pkg/proxy/metaproxier"

// Field values that are not offsets.
const (
	Self   = -1 // the receiver is the runner
	Search = -2 // the receiver is a proxier whose layout is unknown: look for the runner pointer
)

// searchProxier bounds the search for a runner pointer in a proxier (a Proxier is 300–700 bytes).
const searchProxier = 1024

// ProxyModes are the Linux proxiers, each a package of k8s.io/kubernetes/pkg/proxy with a Proxier
// type that owns a sync runner.
var ProxyModes = []string{"iptables", "nftables", "ipvs"}

// Points returns where to probe a binary of generation gen.
func Points(b *gobin.Binary, gen layout.Generation) ([]Point, error) {
	if err := b.FuncTableErr(); err != nil {
		return nil, err
	}
	var out []Point
	add := func(name string, field int64) error {
		entry, _, ok := b.Func(name)
		if !ok {
			return nil
		}
		off, err := b.FileOffset(entry)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, Point{Func: name, Entry: entry, Offset: off, Field: field})
		return nil
	}
	proxiers := map[string]int64{}
	for _, mode := range ProxyModes {
		pkg := "k8s.io/kubernetes/pkg/proxy/" + mode
		field, ok := syncRunnerField(b, mode+".Proxier", pkg)
		if !ok {
			if _, _, exists := b.Func(pkg + ".(*Proxier).Sync"); !exists {
				continue
			}
			field = Search // a proxier whose type descriptor and DWARF are unreadable
		}
		proxiers["*"+mode+".Proxier"] = field
		if gen == layout.Runner {
			for _, fn := range []string{"Sync", "syncProxyRules"} {
				if err := add(pkg+".(*Proxier)."+fn, field); err != nil {
					return nil, err
				}
			}
		}
	}
	if gen == layout.Async {
		if err := add(layout.AsyncTryRun, Self); err != nil {
			return nil, err
		}
	}
	if via, ok := metaFields(b); ok && len(proxiers) > 0 {
		n := len(out)
		for _, fn := range []string{"OnEndpointSliceAdd", "OnEndpointSliceUpdate", "OnEndpointSliceDelete", "OnServiceAdd", "OnServiceUpdate", "OnServiceDelete"} {
			if err := add(MetaProxier+".(*metaProxier)."+fn, Self); err != nil {
				return nil, err
			}
		}
		for i := n; i < len(out); i++ {
			out[i].Via, out[i].Proxiers = via, proxiers
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no function to probe for the %s runner generation in this binary", gen)
	}
	return out, nil
}

// syncRunnerField reads the offset of a proxier's syncRunner pointer from its type descriptor, else
// its DWARF.
func syncRunnerField(b *gobin.Binary, name, pkg string) (int64, bool) {
	for _, read := range []func(string, string) (gobin.Struct, error){b.StructType, b.DWARFStruct} {
		s, err := read(name, pkg)
		if err != nil {
			continue
		}
		if f, ok := s.Field("syncRunner"); ok && strings.Contains(f.Type, "BoundedFrequencyRunner") {
			return int64(f.Offset), true
		}
	}
	return 0, false
}

// metaFields reads the offsets of the metaProxier's two proxier interfaces.
func metaFields(b *gobin.Binary) ([]int64, bool) {
	for _, read := range []func(string, string) (gobin.Struct, error){b.StructType, b.DWARFStruct} {
		s, err := read("metaproxier.metaProxier", MetaProxier)
		if err != nil {
			continue
		}
		v4, ok4 := s.Field("ipv4Proxier")
		v6, ok6 := s.Field("ipv6Proxier")
		if ok4 && ok6 && v4.Size == 2*uint64(b.PtrSize) && v6.Size == 2*uint64(b.PtrSize) {
			return []int64{int64(v4.Offset), int64(v6.Offset)}, true
		}
	}
	return nil, false
}

// ABI is where a probed function's receiver is at its entry, for one architecture and Go version,
// in the terms of the kernel's pt_regs (what a uprobe's BPF program is given).
type ABI struct {
	Arch     string
	Register string // the register of Go's register ABI that carries the receiver
	RegOff   int16  // its offset in pt_regs
	SPOff    int16  // the stack pointer's offset in pt_regs
	// Stack: the build passes arguments on the stack (ABI0), the receiver one word above the
	// return address (amd64) or the saved link register slot (arm64).
	Stack   bool
	PtrSize int16
}

// ABIFor returns the receiver ABI of a Go build. Go's register ABI came in Go 1.17 on amd64 and
// Go 1.18 on arm64.
func ABIFor(machine elf.Machine, goMinor int) (ABI, error) {
	switch machine {
	case elf.EM_X86_64:
		// arch/x86/include/asm/ptrace.h: r15 … rbx, r11 … r8, ax (10th word), …, sp (19th).
		return ABI{Arch: "amd64", Register: "RAX", RegOff: 10 * 8, SPOff: 19 * 8, Stack: goMinor < 17, PtrSize: 8}, nil
	case elf.EM_AARCH64:
		// arch/arm64/include/uapi/asm/ptrace.h, user_pt_regs: regs[31], sp, pc, pstate.
		return ABI{Arch: "arm64", Register: "X0", RegOff: 0, SPOff: 31 * 8, Stack: goMinor < 18, PtrSize: 8}, nil
	}
	return ABI{}, fmt.Errorf("no uprobe receiver ABI for %v: the probing locator supports amd64 and arm64", machine)
}

// Sample is what one hit records: the receiver register, and the word at SP+8.
type Sample struct {
	Point      uint64 // index into the points
	Reg, Stack uint64
}

// Receivers returns a sample's candidates, the one the build's ABI names first. Both are checked:
// a wrong candidate fails the runner's signature check.
func (a ABI) Receivers(s Sample) []uint64 {
	if a.Stack {
		return []uint64{s.Stack, s.Reg}
	}
	return []uint64{s.Reg, s.Stack}
}

// Decode is what the BPF program computes, over a recorded pt_regs snapshot and the memory at its
// stack pointer: it lets the stack-ABI and arm64 selections be checked where they cannot run.
func (a ABI) Decode(point uint64, regs []byte, stackWord func(addr uint64) (uint64, error)) (Sample, error) {
	if int(a.RegOff)+8 > len(regs) || int(a.SPOff)+8 > len(regs) {
		return Sample{}, fmt.Errorf("pt_regs snapshot of %d bytes is too short for %s", len(regs), a.Arch)
	}
	le := func(off int16) uint64 {
		var v uint64
		for i := 7; i >= 0; i-- {
			v = v<<8 | uint64(regs[int(off)+i])
		}
		return v
	}
	s := Sample{Point: point, Reg: le(a.RegOff)}
	w, err := stackWord(le(a.SPOff) + uint64(a.PtrSize))
	if err == nil {
		s.Stack = w
	}
	return s, nil
}
