// Package bench measures kptune on real kube-proxy at scale: inspect's wall time and peak memory,
// and a retune's stop and total time side by side with the approach kptune replaces (capture the
// runner with `perf probe`, write its fields with `gdb -p`). Run with `make bench`.
package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kptune/internal/freeze"
	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/probe"
	"kptune/test/testbed"
)

var (
	services  = envInt("KPTUNE_BENCH_SERVICES", 5000)
	endpoints = envInt("KPTUNE_BENCH_ENDPOINTS", 10)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// bed is one control plane and one kube-proxy v1.33 holding services × endpoints, under churn,
// shared by the benchmarks of a run. kube-proxy runs in nftables mode: with Debian's iptables (the
// nf_tables backend) its first iptables-restore of 5k Services ran for more than 8 minutes on the
// 2-core VM, where the nftables proxier syncs in seconds.
type bed struct {
	c      *testbed.Cluster
	kp     *testbed.KubeProxy
	kptune string
	churn  *testbed.Churner
}

var (
	once   sync.Once
	shared *bed
	setup  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		_, _ = shared.churn.Stop()
		_ = shared.c.Down()
	}
	os.Exit(code)
}

func get(b *testing.B) *bed {
	b.Helper()
	testbed.NeedRoot(b, "network namespaces, iptables and ptrace")
	once.Do(func() { shared, setup = newBed() })
	if setup != nil {
		b.Fatal(setup)
	}
	return shared
}

func newBed() (*bed, error) {
	ctx := context.Background()
	kptune, err := testbed.Kptune()
	if err != nil {
		return nil, err
	}
	c, err := testbed.Up(ctx, testbed.ClusterOptions{Progress: os.Stderr})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "loading %d Services x %d endpoints\n", services, endpoints)
	start := time.Now()
	if err := c.Load(ctx, services, endpoints); err != nil {
		_ = c.Down()
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "loaded in %v\n", time.Since(start).Round(time.Second))
	kp, err := c.StartKubeProxy(ctx, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, Mode: testbed.NFTables,
		MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	if err == nil {
		err = kp.WaitSynced(ctx, 1, 10*time.Minute)
	}
	if err != nil {
		_ = c.Down()
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "kube-proxy synced %d Services after %v\n", services, time.Since(start).Round(time.Second))
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 10, Services: services, Endpoints: endpoints})
	if err != nil {
		_ = c.Down()
		return nil, err
	}
	return &bed{c: c, kp: kp, kptune: kptune, churn: churn}, nil
}

// run runs kptune and returns its output, wall time and peak RSS (testbed.RunPeak).
func (e *bed) run(b *testing.B, args ...string) ([]byte, time.Duration, int64) {
	b.Helper()
	cmd := exec.Command(e.kptune, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	wall, peak, err := testbed.RunPeak(cmd)
	if err != nil {
		b.Fatalf("kptune %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes(), wall, peak
}

// BenchmarkInspect: `kptune inspect --pid N -o json` against the kube-proxy at scale.
func BenchmarkInspect(b *testing.B) {
	e := get(b)
	pid := strconv.Itoa(e.kp.PID())
	proxiers, err := e.kp.Proxiers()
	if err != nil {
		b.Fatal(err)
	}
	var walls []time.Duration
	var rss int64
	for b.Loop() {
		out, wall, maxrss := e.run(b, "inspect", "--pid", pid, "-o", "json")
		var r struct {
			Processes []struct {
				Runners []struct{ MinInterval string } `json:"runners"`
			} `json:"processes"`
		}
		if err := json.Unmarshal(out, &r); err != nil || len(r.Processes) != 1 || len(r.Processes[0].Runners) != proxiers {
			b.Fatalf("inspect output: %v: %s", err, out)
		}
		walls = append(walls, wall)
		rss = max(rss, maxrss)
	}
	b.ReportMetric(ms(pct(walls, 50)), "wall-p50-ms")
	b.ReportMetric(ms(pct(walls, 100)), "wall-max-ms")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
	record(b, "inspect", map[string]any{"services": services, "endpoints": endpoints, "wallP50ms": ms(pct(walls, 50)),
		"wallMaxMs": ms(pct(walls, 100)), "peakRSSMiB": float64(rss) / (1 << 20), "runs": len(walls)})
}

// BenchmarkLocate: the two locators side by side on the same kube-proxy under churn, in-process:
// the memory scan's time, and the uprobe's time to attach, to its first valid runner and in all
// (detach included, after a settle of 200 ms), with the probe hits it took.
func BenchmarkLocate(b *testing.B) {
	e := get(b)
	bin, err := gobin.Open(e.kp.Binary)
	if err != nil {
		b.Fatal(err)
	}
	defer bin.Close()
	pid := e.kp.PID()
	t, err := locate.TargetOf(pid, bin)
	if err != nil {
		b.Fatal(err)
	}
	var scans, attach, first, total []time.Duration
	var hits uint64
	var held time.Duration
	for b.Loop() {
		start := time.Now()
		scanned, err := locate.Scan(context.Background(), t)
		if err != nil || len(scanned) == 0 {
			b.Fatalf("scan: %d runners, %v", len(scanned), err)
		}
		scans = append(scans, time.Since(start))
		c, err := probe.Locate(context.Background(), t, pid, fmt.Sprintf("/proc/%d/exe", pid),
			probe.Options{Timeout: time.Minute, Settle: 200 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Found) != len(scanned) || c.Found[0].Address != scanned[0].Address {
			b.Fatalf("uprobe found %d runners (%#x), the scan %d (%#x)", len(c.Found), c.Found[0].Address, len(scanned), scanned[0].Address)
		}
		attach, first, total = append(attach, c.Attach), append(first, c.Attach+c.First), append(total, c.Elapsed)
		hits += c.Hits
		held += c.Elapsed - c.Attach
	}
	hitRate := float64(hits) / held.Seconds()
	b.ReportMetric(ms(pct(scans, 50)), "scan-p50-ms")
	b.ReportMetric(ms(pct(attach, 50)), "uprobe-attach-p50-ms")
	b.ReportMetric(ms(pct(first, 50)), "uprobe-first-p50-ms")
	b.ReportMetric(ms(pct(total, 50)), "uprobe-total-p50-ms")
	b.ReportMetric(float64(pct(first, 50))/float64(pct(scans, 50)), "uprobe-first/scan")
	b.ReportMetric(hitRate, "hits/s-attached")
	record(b, "locate", map[string]any{"services": services, "endpoints": endpoints, "iterations": len(scans),
		"scanP50ms": ms(pct(scans, 50)), "scanMaxMs": ms(pct(scans, 100)),
		"uprobeAttachP50ms": ms(pct(attach, 50)), "uprobeFirstP50ms": ms(pct(first, 50)), "uprobeFirstMaxMs": ms(pct(first, 100)),
		"uprobeTotalP50ms": ms(pct(total, 50)), "hitsPerSecondAttached": hitRate, "churnPerSecond": 10})
}

// BenchmarkRetune: each iteration retunes the same kube-proxy once with kptune and once the way
// the original write-up did (perf probe to capture the runner's address, gdb -p to write its
// fields), and reports both and their ratios.
func BenchmarkRetune(b *testing.B) {
	e := get(b)
	for _, tool := range []string{"perf", "gdb"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s for the comparison: run test/setup.sh --bench", tool)
		}
	}
	pid := strconv.Itoa(e.kp.PID())
	state := b.TempDir()
	var kStop, kTotal, gStop, gTotal, gCapture []time.Duration
	// kptune alternates 1.5s and 1.2s, gdb writes 1s in between: every write changes the fields.
	periods := []string{"1500ms", "1200ms"}
	i := 0
	for b.Loop() {
		out, wall, _ := e.run(b, "set", "--pid", pid, "--min-sync-period", periods[i%2], "--state-dir", state, "-o", "json")
		var r struct {
			Processes []struct {
				StoppedNS int64 `json:"stoppedNanoseconds"`
			} `json:"processes"`
		}
		if err := json.Unmarshal(out, &r); err != nil || len(r.Processes) != 1 {
			b.Fatalf("set output: %v: %s", err, out)
		}
		kStop = append(kStop, time.Duration(r.Processes[0].StoppedNS))
		kTotal = append(kTotal, wall)

		capture, stop, total := gdbRetune(b, e, "1s")
		gCapture, gStop, gTotal = append(gCapture, capture), append(gStop, stop), append(gTotal, total)
		i++
	}
	b.ReportMetric(us(pct(kStop, 50)), "kptune-stop-p50-µs")
	b.ReportMetric(us(pct(kStop, 99)), "kptune-stop-p99-µs")
	b.ReportMetric(ms(pct(kTotal, 50)), "kptune-total-p50-ms")
	b.ReportMetric(ms(pct(gStop, 50)), "gdb-stop-p50-ms")
	b.ReportMetric(ms(pct(gTotal, 50)), "perf+gdb-total-p50-ms")
	b.ReportMetric(float64(pct(gStop, 50))/float64(pct(kStop, 50)), "stop-ratio")
	b.ReportMetric(float64(pct(gTotal, 50))/float64(pct(kTotal, 50)), "total-ratio")
	record(b, "retune", map[string]any{"services": services, "endpoints": endpoints, "iterations": len(kStop),
		"kptuneStopP50us": us(pct(kStop, 50)), "kptuneStopP99us": us(pct(kStop, 99)), "kptuneStopMaxUs": us(pct(kStop, 100)),
		"kptuneTotalP50ms": ms(pct(kTotal, 50)), "gdbStopP50ms": ms(pct(gStop, 50)), "gdbStopMaxMs": ms(pct(gStop, 100)),
		"perfCaptureP50ms": ms(pct(gCapture, 50)), "perfGdbTotalP50ms": ms(pct(gTotal, 50))})
	_, _, _ = e.run(b, "reset", "--pid", pid, "--state-dir", state)
}

var runnerArg = regexp.MustCompile(`runner=(0x[0-9a-f]+)`)

// gdbRetune is the write-up's approach: an entry uprobe on tryRun captures the runner (RAX, the
// receiver under Go's register ABI), then gdb attaches, writes minInterval, qps and limit, and
// detaches. The field offsets are kptune's; only the mechanics are the write-up's. It returns the
// capture time, how long gdb held the process (TracerPid set), and the total.
func gdbRetune(b *testing.B, e *bed, period string) (capture, stop, total time.Duration) {
	b.Helper()
	d, err := time.ParseDuration(period)
	if err != nil {
		b.Fatal(err)
	}
	bin, err := gobin.Open(e.kp.Binary)
	if err != nil {
		b.Fatal(err)
	}
	defer bin.Close()
	l, err := layout.Of(bin)
	if err != nil {
		b.Fatal(err)
	}
	entry, _, ok := bin.Func(layout.AsyncTryRun)
	if !ok {
		b.Fatalf("no %s in %s", layout.AsyncTryRun, e.kp.Binary)
	}
	off, err := bin.FileOffset(entry)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	spec := fmt.Sprintf("kptbench=%#x runner=%%ax:x64", off)
	if out, err := exec.Command("perf", "probe", "-q", "-x", e.kp.Binary, "-a", spec).CombinedOutput(); err != nil {
		b.Fatalf("perf probe: %v: %s", err, out)
	}
	defer exec.Command("perf", "probe", "-q", "-d", "probe_kube:kptbench").Run()
	data := filepath.Join(b.TempDir(), "perf.data")
	var runner uint64
	var script []byte
	// tryRun runs only when kube-proxy is triggered and not busy syncing: wait up to a minute.
	for try := 0; try < 30 && runner == 0; try++ {
		rec := exec.Command("perf", "record", "-q", "-e", "probe_kube:kptbench", "-p", strconv.Itoa(e.kp.PID()), "-o", data, "--", "sleep", "2")
		if out, err := rec.CombinedOutput(); err != nil {
			b.Fatalf("perf record: %v: %s", err, out)
		}
		out, err := exec.Command("perf", "script", "-i", data).CombinedOutput()
		if err != nil {
			b.Fatalf("perf script: %v: %s", err, out)
		}
		script = out
		if m := runnerArg.FindSubmatch(out); m != nil {
			runner, _ = strconv.ParseUint(string(m[1]), 0, 64)
		}
	}
	if runner == 0 {
		b.Fatalf("perf probe captured no tryRun in 60s of churn; perf script said: %.500s", script)
	}
	capture = time.Since(start)

	// The limiter chain, read the way gdb users would: from the captured runner.
	mem := readWord(b, e.kp.PID(), runner+l.Limiter+8)
	rl := readWord(b, e.kp.PID(), mem+l.TBLimiter)
	qps := locate.QPSFor(d)
	gdb := exec.Command("gdb", "-p", strconv.Itoa(e.kp.PID()), "-batch", "-nx",
		"-ex", fmt.Sprintf("set *(long*)%#x = %d", runner+l.MinInterval, int64(d)),
		"-ex", fmt.Sprintf("set *(float*)%#x = %v", mem+l.TBQPS, qps),
		"-ex", fmt.Sprintf("set *(double*)%#x = (double)(float)%v", rl+l.RateLimit, qps),
		"-ex", "detach")
	held := watchTracer(e.kp.PID())
	if out, err := gdb.CombinedOutput(); err != nil {
		b.Fatalf("gdb: %v: %s", err, out)
	}
	stop = held()
	total = time.Since(start)
	return capture, stop, total
}

// watchTracer polls the target's TracerPid every 200µs and returns a function that stops the watch
// and reports how long a tracer was attached.
func watchTracer(pid int) func() time.Duration {
	done := make(chan struct{})
	res := make(chan time.Duration, 1)
	go func() {
		var held time.Duration
		var since time.Time
		for {
			tp, _ := freeze.TracerPID(pid)
			now := time.Now()
			switch {
			case tp != 0 && since.IsZero():
				since = now
			case tp == 0 && !since.IsZero():
				held += now.Sub(since)
				since = time.Time{}
			}
			select {
			case <-done:
				if !since.IsZero() {
					held += time.Since(since)
				}
				res <- held
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	return func() time.Duration { close(done); return <-res }
}

func readWord(b *testing.B, pid int, addr uint64) uint64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var buf [8]byte
	if _, err := f.ReadAt(buf[:], int64(addr)); err != nil {
		b.Fatal(err)
	}
	return binary.LittleEndian.Uint64(buf[:])
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// record writes a benchmark's figures to bench/results/NAME.json when KPTUNE_BENCH_RECORD is set.
func record(b *testing.B, name string, figures map[string]any) {
	if os.Getenv("KPTUNE_BENCH_RECORD") == "" {
		return
	}
	host, _ := os.Hostname()
	figures["when"] = time.Now().UTC().Format(time.RFC3339)
	figures["machine"] = fmt.Sprintf("%s, %d CPUs", host, runtime.NumCPU())
	figures["kubeProxy"] = "v1.33.5 nftables, built by test/kubeproxy/build.sh"
	out, err := json.MarshalIndent(figures, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(testbed.RepoRoot(), "bench", "results", name+".json")
	if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
		b.Fatal(err)
	}
}
