package probe_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"

	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/probe"
	"kptune/test/testbed"
)

// TestPoints finds the probed functions of real kube-proxy builds of both generations and of a PIE
// build, and checks that each file offset holds the function's first bytes.
func TestPoints(t *testing.T) {
	testbed.NeedBuilds(t)
	ctx := context.Background()
	for _, tc := range []struct {
		build   testbed.Build
		fixture string // "" for kube-proxy
		gen     layout.Generation
		points  int
	}{
		{testbed.Build{Version: "v1.33.5"}, "", layout.Async, 7},
		{testbed.Build{Version: "v1.37.2"}, "", layout.Runner, 12},
		// PIE kube-proxies are probed end to end in `make test-matrix`; here a PIE fixture.
		{testbed.Build{Version: "v1.33.5", PIE: true}, testbed.AsyncRunner, layout.Async, 1},
	} {
		t.Run(tc.build.String()+"/"+tc.fixture, func(t *testing.T) {
			// Only what the case names: a PIE kube-proxy is a build of minutes that nothing else here needs.
			var path string
			var err error
			if tc.fixture == "" {
				path, err = tc.build.KubeProxy(ctx)
			} else {
				path, err = tc.build.Fixture(ctx, tc.fixture)
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := gobin.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ps, err := probe.Points(b, tc.gen)
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != tc.points {
				t.Fatalf("%d points, want %d: %+v", len(ps), tc.points, ps)
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				img := make([]byte, 16)
				if err := b.ReadAt(img, p.Entry); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(raw[p.Offset:p.Offset+16], img) {
					t.Errorf("%s: file offset %#x does not hold the entry %#x", p.Func, p.Offset, p.Entry)
				}
				switch {
				case strings.HasPrefix(p.Func, probe.MetaProxier+".(*metaProxier).On"):
					if len(p.Via) != 2 || p.Via[1] != p.Via[0]+16 || len(p.Proxiers) != 3 {
						t.Errorf("%s: via %v to %v, want both proxier interfaces and the three proxiers", p.Func, p.Via, p.Proxiers)
					}
				case tc.gen == layout.Async:
					if p.Func != layout.AsyncTryRun || p.Field != -1 {
						t.Errorf("old generation probes %s (field %d), want tryRun on the runner itself", p.Func, p.Field)
					}
				case !strings.Contains(p.Func, ".(*Proxier).") || p.Field <= 0:
					t.Errorf("new generation probes %s (field %d), want a proxier method and its syncRunner", p.Func, p.Field)
				}
			}
		})
	}
}

// TestABI: the receiver's place for each architecture and Go version, checked over pt_regs snapshots
// laid out as the kernel lays them out (arch/x86/include/asm/ptrace.h, arch/arm64 user_pt_regs).
// The arm64 and stack-ABI (Go ≤ 1.16) paths cannot run on this amd64 machine with today's builds:
// these snapshots are their only test.
func TestABI(t *testing.T) {
	const recv, sp, other = 0xc000123400, 0x7ffd0000, 0xdeadbeef
	stack := map[uint64]uint64{sp + 8: recv}
	word := func(a uint64) (uint64, error) {
		if v, ok := stack[a]; ok {
			return v, nil
		}
		return 0, errors.New("unmapped")
	}
	amd64 := func(rax uint64) []byte { // 21 words: r15 … ss
		r := make([]byte, 21*8)
		binary.LittleEndian.PutUint64(r[10*8:], rax)
		binary.LittleEndian.PutUint64(r[19*8:], sp)
		binary.LittleEndian.PutUint64(r[16*8:], 0x401000) // ip
		return r
	}
	arm64 := func(x0 uint64) []byte { // regs[31], sp, pc, pstate
		r := make([]byte, 34*8)
		binary.LittleEndian.PutUint64(r[0:], x0)
		binary.LittleEndian.PutUint64(r[30*8:], 0x401234) // lr
		binary.LittleEndian.PutUint64(r[31*8:], sp)
		return r
	}
	for _, tc := range []struct {
		name    string
		machine elf.Machine
		minor   int
		regs    []byte
		reg     string
	}{
		{"amd64 register ABI (Go 1.17+)", elf.EM_X86_64, 17, amd64(recv), "RAX"},
		{"amd64 stack ABI (Go 1.16)", elf.EM_X86_64, 16, amd64(other), "RAX"},
		{"arm64 register ABI (Go 1.18+)", elf.EM_AARCH64, 26, arm64(recv), "X0"},
		{"arm64 stack ABI (Go 1.17)", elf.EM_AARCH64, 17, arm64(other), "X0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			abi, err := probe.ABIFor(tc.machine, tc.minor)
			if err != nil {
				t.Fatal(err)
			}
			if abi.Register != tc.reg {
				t.Errorf("register %s, want %s", abi.Register, tc.reg)
			}
			s, err := abi.Decode(0, tc.regs, word)
			if err != nil {
				t.Fatal(err)
			}
			if got := abi.Receivers(s)[0]; got != recv {
				t.Errorf("first candidate %#x, want the receiver %#x (sample %+v)", got, uint64(recv), s)
			}
			// The BPF program reads the same two places Decode does.
			loads := map[int16]bool{}
			for _, ins := range probe.Program(abi, 1, 0, 3) {
				if ins.OpCode.Class() == asm.LdXClass && ins.Src == asm.R6 {
					loads[ins.Offset] = true
				}
			}
			if len(loads) != 2 || !loads[abi.RegOff] || !loads[abi.SPOff] {
				t.Errorf("program loads pt_regs at %v, want %d and %d", loads, abi.RegOff, abi.SPOff)
			}
		})
	}
	if _, err := probe.ABIFor(elf.EM_386, 26); err == nil {
		t.Error("386 accepted")
	}
	if _, err := (probe.ABI{Arch: "amd64", RegOff: 80, SPOff: 152, PtrSize: 8}).Decode(0, make([]byte, 100), word); err == nil {
		t.Error("a truncated snapshot decoded")
	}
}
