//go:build churn

package churn

import (
	"context"
	"fmt"
	"testing"
	"time"

	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// TestRetuneUnderChurn: kube-proxy retuned under churn (up, down, up) spends, until its second
// sync after the write, no more CPU of its own than it did before it. (A raise under churn once left
// kube-proxy spinning a core until the slower token bucket allowed a sync: patch.keepNextRun.)
func TestRetuneUnderChurn(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	b := Bed{Services: envInt("KPTUNE_RETUNE_SERVICES", 1000), Endpoints: 10}
	b.C, _ = testbed.Start(t, 0, 0)
	if err := b.Load(ctx); err != nil {
		t.Fatal(err)
	}
	o := options(t)
	kp, err := b.C.StartKubeProxy(ctx, testbed.KubeProxyOptions{Build: o.Build, Mode: testbed.IPTables, MinSyncPeriod: time.Second,
		SyncPeriod: 30 * time.Second, IPTablesLegacy: true})
	if err != nil {
		t.Fatal(err)
	}
	defer kp.Stop()
	if err := kp.WaitSynced(ctx, 1, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	churn, err := b.Start(ctx, Steady(50))
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	time.Sleep(10 * time.Second)
	own := func() time.Duration { // kube-proxy's own CPU, its children's left out
		c, err := procfs.OwnCPU(kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	syncs := func() uint64 {
		s, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Syncs()
	}
	c0, t0 := own(), time.Now()
	time.Sleep(10 * time.Second)
	before := (own() - c0).Seconds() / time.Since(t0).Seconds()
	for _, to := range []time.Duration{7 * time.Second, 2 * time.Second, 7 * time.Second} {
		n0 := syncs()
		c0, t0 = own(), time.Now()
		if out, err := kptune(ctx, o, "set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", to.String()); err != nil {
			t.Fatalf("kptune set: %v: %s", err, out)
		}
		// Two syncs: the one scheduled before the write, and the first the new period paces.
		for syncs() < n0+2 && time.Since(t0) < 3*to {
			time.Sleep(100 * time.Millisecond)
		}
		el := time.Since(t0)
		after := (own() - c0).Seconds() / el.Seconds()
		t.Logf("retuned to %v: kube-proxy's own CPU %.3f cores over the %v to its second sync, %.3f before the write", to, after, el.Round(time.Millisecond), before)
		if after > 2*before+0.05 {
			t.Errorf("retuned to %v: kube-proxy spent %.3f cores of its own until its second sync, against %.3f before", to, after, before)
		}
		time.Sleep(3 * to)
		c0, t0 = own(), time.Now()
		time.Sleep(2 * to)
		before = (own() - c0).Seconds() / time.Since(t0).Seconds()
	}
}
