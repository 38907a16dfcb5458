package tune

import (
	"context"
	"runtime"
	"syscall"
	"testing"
	"time"

	"kptune/internal/patch"
	"kptune/internal/state"
	"kptune/internal/target"
	"kptune/test/testbed"
)

// BenchmarkWrite compares, write by write on one kube-proxy v1.33.5 (legacy iptables) holding 1000
// Services × 10 endpoints, a write that opens the executable and scans the memory (kptune
// set) with one through a process its caller holds located (the agent's: Set with Target, which
// reads its runners again without a scan). Each iteration makes one of each, alternating the
// period between 2s and 3s. It reports the CPU (user + system, this process, the stop included),
// the part of it outside the stop (the stop's is its tracing thread's CPU, freeze.Stats.CPU) and the
// bytes allocated per write of each, and their ratio.
func BenchmarkWrite(b *testing.B) {
	testbed.NeedRoot(b, "network namespaces, iptables and ptrace")
	services := 1000
	_, kps := testbed.Start(b, services, 10, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"},
		Mode: testbed.IPTables, IPTablesLegacy: true, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	pid := kps[0].PID()
	store := state.Store{Dir: b.TempDir()}
	held := locateHeld(b, pid)
	held.ReleaseTypes() // as the agent does once located
	ctx := context.Background()
	var fullCPU, heldCPU, fullStop, heldStop time.Duration
	var fullAlloc, heldAlloc uint64
	measure := func(cpu *time.Duration, alloc *uint64, fn func()) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		a0, c0 := ms.TotalAlloc, selfCPU(b)
		fn()
		runtime.ReadMemStats(&ms)
		*cpu += selfCPU(b) - c0
		*alloc += ms.TotalAlloc - a0
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := time.Duration(2+i%2) * time.Second
		measure(&fullCPU, &fullAlloc, func() {
			res, err := Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet(), Locate: target.LocateOptions{Locator: target.ByScan}})
			if err != nil {
				b.Fatal(err)
			}
			fullStop += time.Duration(res.Processes[0].StopCPUNS)
		})
		d = time.Duration(3-i%2) * time.Second
		measure(&heldCPU, &heldAlloc, func() {
			res, err := Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet(), Target: held})
			if err != nil {
				b.Fatal(err)
			}
			heldStop += time.Duration(res.Processes[0].StopCPUNS)
		})
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(fullCPU.Microseconds())/1000/n, "scan-cpu-ms/write")
	b.ReportMetric(float64(heldCPU.Microseconds())/1000/n, "held-cpu-ms/write")
	b.ReportMetric(float64((heldCPU-heldStop).Microseconds())/1000/n, "held-cpu-besides-stop-ms/write")
	b.ReportMetric(float64(heldStop.Microseconds())/1000/n, "held-stop-cpu-ms/write")
	b.ReportMetric(float64((fullCPU-fullStop).Microseconds())/1000/n, "scan-cpu-besides-stop-ms/write")
	b.ReportMetric(float64(fullAlloc)/(1<<20)/n, "scan-MiB/write")
	b.ReportMetric(float64(heldAlloc)/(1<<20)/n, "held-MiB/write")
	if heldCPU > 0 {
		b.ReportMetric(float64(fullCPU)/float64(heldCPU), "cpu-ratio")
	}
}

// selfCPU is this process's user and system CPU time.
func selfCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
