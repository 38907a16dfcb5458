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

// TestRetuneUnderChurn: kube-proxy retuned under churn (up, down, up) spends, over the seconds
// after the write, about the CPU of its own it did before it. (A raise under churn once left
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
	// Each write is judged on kube-proxy's own CPU over a fixed window after it against the same
	// window before it: a spin is a core for up to a period, while the syncs themselves cost a few
	// hundredths (a lowered period legitimately syncs more, a raised one spends its burst at once).
	const window = 8 * time.Second
	cores := func() float64 {
		c0, t0 := own(), time.Now()
		time.Sleep(window)
		return (own() - c0).Seconds() / time.Since(t0).Seconds()
	}
	for _, to := range []time.Duration{7 * time.Second, 2 * time.Second, 7 * time.Second} {
		before := cores()
		if out, err := kptune(ctx, o, "set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", to.String()); err != nil {
			t.Fatalf("kptune set: %v: %s", err, out)
		}
		after := cores()
		t.Logf("retuned to %v: kube-proxy's own CPU %.3f cores over the %v after the write, %.3f over the %v before", to, after, window, before, window)
		if after > max(3*before, 0.25) {
			t.Errorf("retuned to %v: kube-proxy spent %.3f cores of its own over the %v after the write, against %.3f before", to, after, window, before)
		}
	}
}
