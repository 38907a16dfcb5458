package probe_test

import (
	"os"
	"testing"
	"unsafe"

	"kptune/internal/gobin"
	"kptune/internal/probe"
	"kptune/test/testbed"
)

type receiver struct{ n int }

//go:noinline
func (r *receiver) probed() { r.n++ }

// BenchmarkProbeHit measures what an attached probe costs the probed program per call: the same Go
// method called with no probe and with kptune's program attached at its entry (the trap into the
// kernel, the program, and the return), side by side. Every attached call must be recorded, with the
// receiver's address.
func BenchmarkProbeHit(b *testing.B) {
	testbed.NeedRoot(b, "loading BPF programs and attaching uprobes needs CAP_BPF and CAP_PERFMON")
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	bin, err := gobin.Open(exe)
	if err != nil {
		b.Fatal(err)
	}
	defer bin.Close()
	const fn = "kptune/internal/probe_test.(*receiver).probed"
	entry, _, ok := bin.Func(fn)
	if !ok {
		b.Fatalf("%s not in the test binary", fn)
	}
	off, err := bin.FileOffset(entry)
	if err != nil {
		b.Fatal(err)
	}
	abi, err := probe.ABIFor(bin.ELF.Machine, bin.GoMinor)
	if err != nil {
		b.Fatal(err)
	}
	r := &receiver{}
	var detached float64
	b.Run("detached", func(b *testing.B) {
		for b.Loop() {
			r.probed()
		}
		detached = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("attached", func(b *testing.B) {
		s, err := probe.Attach(exe, os.Getpid(), abi, []probe.Point{{Func: fn, Entry: entry, Offset: off, Field: -1}})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		calls := 0
		for b.Loop() {
			r.probed()
			calls++
		}
		var hits uint64
		err = s.Samples(func(smp probe.Sample, n uint64) {
			if abi.Receivers(smp)[0] != uint64(uintptr(unsafe.Pointer(r))) {
				b.Errorf("recorded receiver %#x, want %p", abi.Receivers(smp)[0], r)
			}
			hits += n
		})
		if err != nil {
			b.Fatal(err)
		}
		if hits != uint64(calls) {
			b.Errorf("%d hits recorded for %d calls", hits, calls)
		}
		attached := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(attached-detached, "ns-added/hit")
		b.ReportMetric(attached/detached, "x-detached")
	})
}
