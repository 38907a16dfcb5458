//go:build matrix

package target

import (
	"context"
	"testing"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/probe"
	"kptune/test/testbed"
)

// TestMatrix runs every kube-proxy of the matrix (testbed.Matrix) against one control plane with
// unusual periods, and checks that it syncs and writes the loaded Services, that the layouts from its
// type descriptors, from the built-in table and (unstripped builds) from DWARF agree, and that inspect
// reports exactly the periods each proxier runs with; under churn, the uprobe locator finds the same
// runners as the memory scan, and the layout found from the runners' values equals the type
// descriptors'. Run with `make test-matrix`.
func TestMatrix(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	for _, tg := range testbed.Matrix {
		if _, err := tg.Build.KubeProxy(ctx); err != nil {
			t.Fatalf("%s: %v", tg, err)
		}
	}
	c, err := testbed.Up(ctx, testbed.ClusterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Down() })
	const services = 30
	if err := c.Load(ctx, services, 4); err != nil {
		t.Fatal(err)
	}
	const period, sync = 3700 * time.Millisecond, 47 * time.Second
	// Churn throughout, so that the uprobe locator has syncs to capture: every runner is found by
	// both locators, which must agree.
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 10, Services: services, Endpoints: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	both := LocateOptions{Locator: ByBoth, Probe: probe.Options{Timeout: 30 * time.Second, Settle: 500 * time.Millisecond}}
	for _, tg := range testbed.Matrix {
		t.Run(tg.String(), func(t *testing.T) {
			kp, err := c.StartKubeProxy(ctx, testbed.KubeProxyOptions{Build: tg.Build, Mode: tg.Mode, DualStack: tg.DualStack,
				MinSyncPeriod: period, SyncPeriod: sync})
			if err != nil {
				t.Fatal(err)
			}
			defer kp.Stop()
			if err := kp.WaitSynced(ctx, 1, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
			rules, err := kp.Rules()
			if err != nil {
				t.Fatal(err)
			}
			if missing := testbed.MissingServices(rules, services); len(missing) > 0 {
				t.Errorf("%d Services missing from the rules", len(missing))
			}

			b, err := gobin.Open(kp.Binary)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			checkLayouts(t, b, tg.Build.Debug)

			p, err := Open(ctx, kp.PID())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := p.Locate(ctx, both); err != nil {
				t.Fatal(err)
			}
			wantMin, wantMax, wantSync := period, time.Hour, sync
			minor := testbed.Minor(tg.Build.Version)
			if tg.Mode == testbed.NFTables && minor <= 30 {
				// 1.29–1.30 nftables reads its own config section, not the --iptables-* flags.
				wantMin, wantMax, wantSync = time.Second, 30*time.Second, 30*time.Second
			}
			wantRunners, err := kp.Proxiers()
			if err != nil {
				t.Fatal(err)
			}
			if tg.DualStack && wantRunners != 2 {
				t.Fatalf("a dual-stack node, and kube-proxy runs %d proxiers", wantRunners)
			}
			if p.K8sVersion() != tg.Build.Version || len(p.Runners()) != wantRunners {
				t.Fatalf("version %s, %d runners; want %s and %d", p.K8sVersion(), len(p.Runners()), tg.Build.Version, wantRunners)
			}
			for _, f := range p.Runners() {
				if f.MinInterval != wantMin || f.MaxInterval != wantMax || !f.Patchable {
					t.Errorf("runner %#x: min %v max %v patchable %v (%s), want %v %v", f.Address, f.MinInterval, f.MaxInterval, f.Patchable, f.Reason, wantMin, wantMax)
				}
				if minor >= 34 {
					if f.RetryInterval != sync {
						t.Errorf("runner %#x: retry %v, want %v", f.Address, f.RetryInterval, sync)
					}
				} else if want := locate.QPSFor(wantMin); f.QPS != want || f.Limit != float64(want) || f.Burst != 2 {
					t.Errorf("runner %#x: qps %v limit %v burst %d, want %v %v 2", f.Address, f.QPS, f.Limit, f.Burst, want, float64(want))
				}
			}
			if p.FoundBy() != "scan+uprobe" {
				t.Errorf("located by %q, want scan+uprobe", p.FoundBy())
			}
			checkValueLayout(t, kp, p.Runners(), locate.Periods{MinSync: wantMin, Sync: wantSync})
			t.Logf("%s: %s runners %d, min %v, layout from %s, located by %s", tg, p.Layout().Generation, len(p.Runners()), wantMin, p.Layout().Describe(), p.FoundBy())
		})
	}
}

// checkLayouts compares the layout sources of one binary.
func checkLayouts(t *testing.T, b *gobin.Binary, debug bool) {
	t.Helper()
	l, err := layout.Of(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.Source != "type descriptors" {
		t.Errorf("layout from %s, want type descriptors", l.Source)
	}
	table := layout.Builtin(l.Generation)
	l.Source, table.Source, l.TokenBucketType = "", "", 0
	if l != table {
		t.Errorf("type descriptors and built-in table differ:\n%+v\n%+v", l, table)
	}
	if !debug {
		return
	}
	d, err := layout.FromDWARF(b)
	if err != nil {
		t.Fatal(err)
	}
	d.Source, d.TokenBucketType = "", 0
	if d != l {
		t.Errorf("type descriptors and DWARF differ:\n%+v\n%+v", l, d)
	}
}
