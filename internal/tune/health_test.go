package tune

import (
	"testing"
	"time"

	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/procfs"
	"kptune/internal/target"
)

func TestSyncPeriodFromFlagsAndRunner(t *testing.T) {
	p := procfs.Process{PID: -1, Cmdline: []string{"kube-proxy", "--iptables-sync-period=47s"}}
	if d, from := syncPeriod(newProbe(&target.Process{Process: p}), locate.Found{}); d != 47*time.Second || from == "" {
		t.Errorf("from flags: %v %q", d, from)
	}
	p.Cmdline = []string{"kube-proxy", "--ipvs-sync-period", "20s"}
	if d, _ := syncPeriod(newProbe(&target.Process{Process: p}), locate.Found{}); d != 20*time.Second {
		t.Errorf("from a separate flag value: %v", d)
	}
	if d, _ := syncPeriod(newProbe(&target.Process{Process: p}), locate.Found{RetryInterval: 33 * time.Second}); d != 33*time.Second {
		t.Errorf("the ≥ 1.34 runner's retryInterval is syncPeriod: %v", d)
	}
}

func TestHealthRailDecision(t *testing.T) {
	// No metrics reachable (PID -1): only the syncPeriod check applies.
	p := procfs.Process{PID: -1, Cmdline: []string{"kube-proxy", "--iptables-sync-period=30s"}}
	f := locate.Found{MinInterval: time.Second, Patchable: true}
	if _, err := healthRail(newProbe(&target.Process{Process: p}), f, patchValues(10*time.Second), false); err != nil {
		t.Errorf("10s under syncPeriod 30s: %v", err)
	}
	if _, err := healthRail(newProbe(&target.Process{Process: p}), f, patchValues(31*time.Second), false); err == nil {
		t.Errorf("31s over syncPeriod 30s was accepted")
	}
	if notes, err := healthRail(newProbe(&target.Process{Process: p}), f, patchValues(31*time.Second), true); err != nil || len(notes) == 0 {
		t.Errorf("--force: %v, notes %v", err, notes)
	}
}

func patchValues(d time.Duration) patch.Values { return patch.Values{MinInterval: d} }
