package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"kptune/internal/policy"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// BenchmarkAgentCost measures the agent's own cost in steady state: the agent (adaptive policy,
// deciding every 10 s, looking over the node every 2 s, its defaults otherwise) runs as a process
// beside a real kube-proxy holding 200 Services under 10 changes a second; each iteration is a 10 s
// window of its CPU (from /proc) and its resident memory. Targets: ≤ 0.5 % of a core, ≤ 40 MiB.
func BenchmarkAgentCost(b *testing.B) {
	testbed.NeedRoot(b, "network namespaces, and the agent reads kube-proxy's memory")
	ctx := context.Background()
	c, kps := testbed.Start(b, 200, 5, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, Mode: testbed.NFTables,
		MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	kp := kps[0]
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 10, Services: 200, Endpoints: 5})
	if err != nil {
		b.Fatal(err)
	}
	defer churn.Stop()
	dir := b.TempDir()
	kptune, err := testbed.Kptune()
	if err != nil {
		b.Fatal(err)
	}
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, []byte("policy: adaptive\ndecideEvery: 10s\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	ag, err := c.StartInControlPlane("kptune-agent-bench", kptune, "agent", "--config", config, "--kubeconfig", c.AdminKubeconfig(),
		"--node-name", kp.Node, "--state-dir", filepath.Join(dir, "state"))
	if err != nil {
		b.Fatal(err)
	}
	defer ag.Stop()
	time.Sleep(15 * time.Second) // started, located, a first decision made

	var cores, rss, hwm float64
	for b.Loop() {
		cpu0, err := procfs.CPU(ag.PID())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		time.Sleep(10 * time.Second)
		cpu1, err := procfs.CPU(ag.PID())
		if err != nil {
			b.Fatal(err)
		}
		cores = max(cores, (cpu1-cpu0).Seconds()/time.Since(start).Seconds())
		r, h := memory(b, ag.PID())
		rss, hwm = max(rss, r), max(hwm, h)
	}
	if !ag.Running() {
		b.Fatal("the agent exited")
	}
	b.ReportMetric(cores*100, "%-core-max")
	b.ReportMetric(rss, "RSS-MiB-max")
	b.ReportMetric(hwm, "peak-RSS-MiB")
	b.ReportMetric(cores*100/0.5, "x-of-0.5%-target")
	b.ReportMetric(rss/40, "x-of-40MiB-target")
}

// memory reads a process's resident and peak resident memory, in MiB.
func memory(b *testing.B, pid int) (rss, hwm float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		fields := bytes.Fields(line)
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(string(fields[1]), 64)
		switch string(fields[0]) {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// BenchmarkAgentWrite: the agent's round that writes, in process, on a real kube-proxy v1.33.5
// (legacy iptables) holding 1000 Services × 10 endpoints: the static period alternates between 2s
// and 3s, so that every round writes. It reports the CPU of such a round (the whole process: the
// round's reading, its decision, the write through tune with the stop, the Event-less bookkeeping),
// and how many times the agent located kube-proxy's runners (a memory scan) beside how many times
// it wrote: one scan, at the start, whatever the writes.
func BenchmarkAgentWrite(b *testing.B) {
	testbed.NeedRoot(b, "network namespaces, and the agent writes kube-proxy's memory")
	ctx := context.Background()
	_, kps := testbed.Start(b, 1000, 10, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"},
		Mode: testbed.IPTables, IPTablesLegacy: true, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	pid := kps[0].PID()
	a, err := New(Options{Config: DefaultConfig(), Log: quiet(), StateDir: b.TempDir(), Interval: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	// This kube-proxy alone: other tests' kube-proxies may run on the machine.
	a.node.list = func() ([]procfs.Process, error) {
		p, err := procfs.Get(pid)
		return []procfs.Process{p}, err
	}
	a.pol = policy.Static{Period: 2 * time.Second}
	a.reconcile(ctx) // found, located, written
	defer a.shutdown()
	writes0 := testutil.ToFloat64(a.m.writes.WithLabelValues("set"))
	var cpu time.Duration
	i := 0
	for b.Loop() {
		a.pol = policy.Static{Period: time.Duration(3-i%2) * time.Second}
		i++
		c0 := selfCPU(b)
		a.reconcile(ctx)
		cpu += selfCPU(b) - c0
	}
	writes := testutil.ToFloat64(a.m.writes.WithLabelValues("set")) - writes0
	if writes != float64(b.N) {
		b.Fatalf("%v writes in %d rounds", writes, b.N)
	}
	var m dto.Metric
	if err := a.m.locate.Write(&m); err != nil {
		b.Fatal(err)
	}
	scans := m.GetHistogram().GetSampleCount()
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/round-with-write")
	b.ReportMetric(float64(scans), "scans")
	b.ReportMetric(writes+1, "writes")
}

// selfCPU is this process's user and system CPU time.
func selfCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
