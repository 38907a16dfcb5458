package tune

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"kptune/internal/kpmetrics"
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

func TestAverageSync(t *testing.T) {
	hist := func(name string, n int, sum string) string {
		return "# TYPE " + name + " histogram\n" + name + `_bucket{le="+Inf"} ` + fmt.Sprint(n) + "\n" +
			name + "_sum " + sum + "\n" + name + "_count " + fmt.Sprint(n) + "\n"
	}
	for _, c := range []struct {
		name, text string
		want       syncs
		ok         bool
	}{
		{"partial syncs", hist(kpmetrics.SyncDuration, 5, "60") + hist(kpmetrics.SyncPartialDuration, 4, "16"), syncs{avg: 4 * time.Second}, true},
		{"the first sync alone, partial reported", hist(kpmetrics.SyncDuration, 1, "47.5") + hist(kpmetrics.SyncPartialDuration, 0, "0"), syncs{avg: 47500 * time.Millisecond, first: true}, true},
		{"the first sync alone, before 1.28", hist(kpmetrics.SyncDuration, 1, "3"), syncs{avg: 3 * time.Second, first: true}, true},
		{"two full syncs", hist(kpmetrics.SyncDuration, 2, "90"), syncs{avg: 45 * time.Second}, true},
		{"dual-stack, each proxier's first sync", "# TYPE " + kpmetrics.SyncDuration + " histogram\n" +
			kpmetrics.SyncDuration + `_bucket{ip_family="IPv4",le="+Inf"} 1` + "\n" + kpmetrics.SyncDuration + `_sum{ip_family="IPv4"} 40` + "\n" + kpmetrics.SyncDuration + `_count{ip_family="IPv4"} 1` + "\n" +
			kpmetrics.SyncDuration + `_bucket{ip_family="IPv6",le="+Inf"} 1` + "\n" + kpmetrics.SyncDuration + `_sum{ip_family="IPv6"} 50` + "\n" + kpmetrics.SyncDuration + `_count{ip_family="IPv6"} 1` + "\n",
			syncs{avg: 45 * time.Second, first: true}, true},
		{"no sync", hist(kpmetrics.SyncDuration, 0, "0"), syncs{}, false},
		{"a sum past any Duration", hist(kpmetrics.SyncDuration, 1, "1e300"), syncs{}, false},
		{"a negative sum", hist(kpmetrics.SyncDuration, 2, "-100"), syncs{}, false},
		{"a NaN sum", hist(kpmetrics.SyncDuration, 2, "NaN"), syncs{}, false},
	} {
		s, err := kpmetrics.Parse(strings.NewReader(c.text))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got, ok := averageSync(s); got != c.want || ok != c.ok {
			t.Errorf("%s: %+v %v, want %+v %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestHealthRailAfterTheFirstSync(t *testing.T) {
	p := procfs.Process{PID: -1, Cmdline: []string{"kube-proxy", "--iptables-sync-period=30s"}}
	f := locate.Found{MinInterval: time.Second, Patchable: true}
	with := func(s syncs) *probe {
		pr := newProbe(&target.Process{Process: p})
		pr.avg = func() (syncs, bool) { return s, true }
		return pr
	}
	// 10s after a first sync of 47 s: 57 s, past 0.9 × 60 s. The refusal says why and what to do.
	_, err := healthRail(with(syncs{avg: 47 * time.Second, first: true}), f, patchValues(10*time.Second), false)
	if !errors.Is(err, patch.ErrRefused) || !strings.Contains(err.Error(), "first sync") || !strings.Contains(err.Error(), "once kube-proxy has synced a change") {
		t.Errorf("10s after a first sync of 47s: %v", err)
	}
	_, err = healthRail(with(syncs{avg: 47 * time.Second}), f, patchValues(10*time.Second), false)
	if !errors.Is(err, patch.ErrRefused) || strings.Contains(err.Error(), "first sync") {
		t.Errorf("10s with syncs of 47s: %v", err)
	}
	if _, err := healthRail(with(syncs{avg: 47 * time.Second, first: true}), f, patchValues(5*time.Second), false); err != nil {
		t.Errorf("5s after a first sync of 47s (52 s, under 54 s): %v", err)
	}
	if _, err := healthRail(with(syncs{avg: 4 * time.Second}), f, patchValues(20*time.Second), false); err != nil {
		t.Errorf("20s with partial syncs of 4s: %v", err)
	}
}
