package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/internal/freeze"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/probe"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// TestInspectRealKubeProxy inspects real kube-proxy processes of both generations, fed by the real
// API server: an iptables single-stack v1.33 (one runner) and an nftables dual-stack v1.37 (two),
// started with unusual periods that the report must show exactly.
func TestInspectRealKubeProxy(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Skip("needs iptables: run test/setup.sh")
	}
	ctx := context.Background()
	c, err := testbed.Up(ctx, testbed.ClusterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Down() })
	if err := c.Load(ctx, 20, 3); err != nil {
		t.Fatal(err)
	}
	const period, sync = 3700 * time.Millisecond, 47 * time.Second
	type want struct {
		kp      *testbed.KubeProxy
		runners int
		gen     layout.Generation
		version string
	}
	var wants []want
	for _, o := range []testbed.KubeProxyOptions{
		{Build: testbed.Build{Version: "v1.33.5"}, Mode: testbed.IPTables},
		{Build: testbed.Build{Version: "v1.37.2"}, Mode: testbed.NFTables, DualStack: true},
	} {
		o.MinSyncPeriod, o.SyncPeriod = period, sync
		if o.Mode == testbed.IPTables {
			// A uprobe is set on an executable's inode, in every process that runs it: this one,
			// which killedWhileProbing watches for the uprobe's breakpoint, runs a copy of its own,
			// out of reach of the uprobes other packages' tests set at the same time.
			o.Binary = ownCopy(ctx, t, o.Build)
		}
		kp, err := c.StartKubeProxy(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		w := want{kp: kp, runners: 1, gen: layout.Async, version: o.Build.Version}
		if o.DualStack {
			w.runners = 2
		}
		if testbed.Minor(o.Build.Version) >= 34 {
			w.gen = layout.Runner
		}
		wants = append(wants, w)
	}
	for _, w := range wants {
		if err := w.kp.WaitSynced(ctx, 1, 90*time.Second); err != nil {
			t.Fatal(err)
		}
		if n, err := w.kp.Proxiers(); err != nil || n != w.runners {
			t.Fatalf("%s logged %d proxiers (%v), want %d", w.version, n, err, w.runners)
		}
	}

	// Quiet: the uprobe has nothing to capture, and says so.
	quiet := LocateOptions{Locator: ByUprobe, Probe: probe.Options{Timeout: 2 * time.Second, Settle: 200 * time.Millisecond}}
	if err := locateOne(ctx, t, wants[0].kp.PID(), quiet); !errors.Is(err, probe.ErrNoCall) {
		t.Errorf("uprobe in a quiet cluster: %v, want %v", err, probe.ErrNoCall)
	}

	killedWhileProbing(t, wants[0].kp)

	all, err := Discover()
	if err != nil {
		t.Fatal(err)
	}
	// Under churn, the uprobe captures the runners the scan finds (LocateBy checks they agree).
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 10, Services: 20, Endpoints: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	both := LocateOptions{Locator: ByBoth, Probe: probe.Options{Timeout: 20 * time.Second, Settle: 500 * time.Millisecond}}
	for _, w := range wants {
		start := time.Now()
		p, err := Open(ctx, w.kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Locate(ctx, both); err != nil {
			t.Fatal(err)
		}
		found := p.Runners()
		t.Logf("%s: %d runners in %v, located by %s", w.version, len(found), time.Since(start), p.FoundBy())
		if p.FoundBy() != "scan+uprobe" {
			t.Errorf("located by %q, want scan+uprobe", p.FoundBy())
		}
		if p.K8sVersion() != w.version || p.Layout().Generation != w.gen || p.ProxyMode() != w.kp.Options.Mode {
			t.Errorf("pid %d: version %s generation %s mode %s, want %s %s %s", p.PID, p.K8sVersion(), p.Layout().Generation, p.ProxyMode(), w.version, w.gen, w.kp.Options.Mode)
		}
		if len(found) != w.runners {
			t.Fatalf("pid %d: %d runners, want %d: %+v", p.PID, len(found), w.runners, found)
		}
		for _, f := range found {
			if f.MinInterval != period || !f.Patchable {
				t.Errorf("runner %#x: min %v patchable %v, want %v", f.Address, f.MinInterval, f.Patchable, period)
			}
			if w.gen == layout.Runner {
				// ≥ 1.34 proxiers pass retry = syncPeriod and max = FullSyncPeriod (1h).
				if f.RetryInterval != sync || f.MaxInterval != time.Hour {
					t.Errorf("runner %#x: retry %v max %v, want %v and 1h", f.Address, f.RetryInterval, f.MaxInterval, sync)
				}
			} else if want := locate.QPSFor(period); f.QPS != want || f.Limit != float64(want) || f.Burst != 2 || f.MaxInterval != time.Hour {
				t.Errorf("runner %#x: qps %v limit %v burst %d max %v, want %v %v 2 1h", f.Address, f.QPS, f.Limit, f.Burst, f.MaxInterval, want, float64(want))
			}
		}
		listed := false
		for _, q := range all {
			listed = listed || (q.PID == p.PID && q.StartTime == p.StartTime)
		}
		if !listed {
			t.Errorf("discovering the node's kube-proxies did not list pid %d", p.PID)
		}
		checkValueLayout(t, w.kp, found, locate.Periods{MinSync: period, Sync: sync})
		if w.gen == layout.Runner {
			checkProxierSearch(t, w.kp, found)
		}
	}
}

// checkProxierSearch: with the proxiers' layouts unknown (as in a build whose type descriptors and
// DWARF are unreadable), the uprobe finds the runners by searching the proxier for them.
func checkProxierSearch(t *testing.T, kp *testbed.KubeProxy, found []locate.Found) {
	t.Helper()
	p, err := Open(context.Background(), kp.PID())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tg, err := locate.TargetOf(kp.PID(), p.Binary())
	if err != nil {
		t.Fatal(err)
	}
	points, err := probe.Points(p.Binary(), tg.Layout.Generation)
	if err != nil {
		t.Fatal(err)
	}
	for i := range points {
		if points[i].Field >= 0 {
			points[i].Field = probe.Search
		}
		for name := range points[i].Proxiers {
			points[i].Proxiers[name] = probe.Search
		}
	}
	c, err := probe.Locate(context.Background(), tg, kp.PID(), fmt.Sprintf("/proc/%d/exe", kp.PID()),
		probe.Options{Timeout: 20 * time.Second, Settle: 500 * time.Millisecond, Points: points})
	if err != nil {
		t.Fatal(err)
	}
	if err := agree(found, c.Found); err != nil {
		t.Errorf("searching the proxiers: %v", err)
	}
}

// checkValueLayout: the periods read from kube-proxy's /configz are those it was started with; the
// layout found from each runner's values equals the one from the type descriptors; the built-in
// table is confirmed by the values, and a wrong table is refused.
func checkValueLayout(t *testing.T, kp *testbed.KubeProxy, found []locate.Found, want locate.Periods) {
	t.Helper()
	ctx := context.Background()
	p, err := Open(ctx, kp.PID())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	periods, err := p.Periods(ctx)
	if err != nil || periods != want {
		t.Fatalf("periods from /configz %+v (%v), want %+v", periods, err, want)
	}
	tg, err := locate.TargetOf(kp.PID(), p.Binary())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		l, err := locate.LayoutFromProcess(ctx, tg, f.Address, periods, 300*time.Millisecond)
		if err != nil {
			t.Fatalf("runner %#x: %v", f.Address, err)
		}
		if !layout.SameFields(l, tg.Layout) {
			t.Errorf("runner %#x: layout from values\n%+v\nfrom type descriptors\n%+v", f.Address, l, tg.Layout)
		}
	}
	p.scan = tg
	p.scan.Layout = layout.Builtin(tg.Layout.Generation)
	if err := confirmBuiltin(ctx, p, found[0]); err != nil || !p.Layout().Confirmed || !strings.HasSuffix(p.Layout().Describe(), "confirmed by values") {
		t.Errorf("built-in table: %v, source %q", err, p.Layout().Describe())
	}
	p.scan.Layout = layout.Builtin(tg.Layout.Generation)
	p.scan.Layout.MaxInterval += 8
	if err := confirmBuiltin(ctx, p, found[0]); err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Errorf("a wrong built-in table: %v", err)
	}
}

// killedWhileProbing: kptune SIGKILLed while its uprobe is attached leaves nothing behind: the
// breakpoint the kernel placed at tryRun's entry (int3, 0xcc) is gone from kube-proxy's code once
// the kernel has closed kptune's descriptors, and kube-proxy runs on, neither stopped nor traced.
func killedWhileProbing(t *testing.T, kp *testbed.KubeProxy) {
	t.Helper()
	kptune, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(context.Background(), kp.PID())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := p.Binary()
	entry, _, ok := b.Func(layout.AsyncTryRun)
	if !ok || b.PIE {
		t.Fatalf("no tryRun at a fixed address (PIE %v)", b.PIE)
	}
	code := func() byte {
		var c [1]byte
		if err := (memory.Process{PID: kp.PID()}).ReadMem(c[:], entry); err != nil {
			t.Fatal(err)
		}
		return c[0]
	}
	original := code()
	if original == 0xcc {
		t.Fatal("tryRun starts with int3 before any probe")
	}
	for round := 0; round < 3; round++ {
		cmd := exec.Command(kptune, "inspect", "--pid", strconv.Itoa(kp.PID()), "--locate", "uprobe", "--probe-timeout", "1m")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for code() != 0xcc && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		attached := code() == 0xcc
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if !attached {
			t.Fatal("the uprobe's breakpoint never appeared at tryRun's entry")
		}
		deadline = time.Now().Add(5 * time.Second)
		for code() != original && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := code(); got != original {
			t.Fatalf("round %d: tryRun starts with %#x after kptune was killed, want %#x", round, got, original)
		}
		st, err := procfs.Get(kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		tracer, err := freeze.TracerPID(kp.PID())
		if err != nil || tracer != 0 || st.State == 't' || st.State == 'T' || st.State == 'Z' {
			t.Fatalf("round %d: kube-proxy is in state %c, traced by %d (%v)", round, st.State, tracer, err)
		}
	}
}

// locateOne opens process pid and locates its runners with o.
func locateOne(ctx context.Context, t *testing.T, pid int, o LocateOptions) error {
	t.Helper()
	p, err := Open(ctx, pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	return p.Locate(ctx, o)
}

// ownCopy copies build's kube-proxy to a file of the test's own.
func ownCopy(ctx context.Context, t *testing.T, build testbed.Build) string {
	t.Helper()
	src, err := build.KubeProxy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "kube-proxy")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}
