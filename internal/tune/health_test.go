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
	// family is a histogram of a dual-stack kube-proxy: a count and sum for each ip_family.
	family := func(name string, v4n int, v4sum string, v6n int, v6sum string) string {
		text := "# TYPE " + name + " histogram\n"
		for _, f := range []struct {
			family, sum string
			n           int
		}{{"IPv4", v4sum, v4n}, {"IPv6", v6sum, v6n}} {
			text += fmt.Sprintf("%s_bucket{ip_family=%q,le=\"+Inf\"} %d\n%s_sum{ip_family=%q} %s\n%s_count{ip_family=%q} %d\n",
				name, f.family, f.n, name, f.family, f.sum, name, f.family, f.n)
		}
		return text
	}
	for _, c := range []struct {
		name, text string
		want       syncs
		ok         bool
	}{
		{"partial and full syncs", hist(kpmetrics.SyncDuration, 6, "104") + hist(kpmetrics.SyncPartialDuration, 4, "16") + hist(kpmetrics.SyncFullDuration, 2, "88"),
			syncs{partial: 4 * time.Second, full: 44 * time.Second}, true},
		{"the first sync alone", hist(kpmetrics.SyncDuration, 1, "47.5") + hist(kpmetrics.SyncPartialDuration, 0, "0") + hist(kpmetrics.SyncFullDuration, 1, "47.5"),
			syncs{full: 47500 * time.Millisecond, first: true}, true},
		{"the first sync alone, partial reported", hist(kpmetrics.SyncDuration, 1, "47.5") + hist(kpmetrics.SyncPartialDuration, 0, "0"), syncs{partial: 47500 * time.Millisecond, first: true}, true},
		{"the first sync alone, before 1.28", hist(kpmetrics.SyncDuration, 1, "3"), syncs{partial: 3 * time.Second, first: true}, true},
		{"two syncs, before 1.28", hist(kpmetrics.SyncDuration, 2, "90"), syncs{partial: 45 * time.Second}, true},
		{"dual-stack, each proxier's first sync", family(kpmetrics.SyncDuration, 1, "40", 1, "50"), syncs{partial: 50 * time.Second, first: true}, true},
		// The IPv6 proxier has nothing to sync: its syncs are short, and the IPv4 one's count.
		{"dual-stack, one proxier idle", family(kpmetrics.SyncDuration, 13, "120", 1, "0.1") +
			family(kpmetrics.SyncPartialDuration, 10, "20", 0, "0") + family(kpmetrics.SyncFullDuration, 3, "100", 1, "0.1"),
			syncs{partial: 2 * time.Second, full: 33333333333}, true},
		{"no sync", hist(kpmetrics.SyncDuration, 0, "0"), syncs{}, false},
		{"a sum past any Duration", hist(kpmetrics.SyncDuration, 1, "1e300"), syncs{}, false},
		{"a full sum past any Duration", hist(kpmetrics.SyncDuration, 2, "3") + hist(kpmetrics.SyncPartialDuration, 1, "1") + hist(kpmetrics.SyncFullDuration, 1, "1e300"), syncs{}, false},
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

func TestHealthRailWithFullSyncs(t *testing.T) {
	f := locate.Found{MinInterval: time.Second, Patchable: true}
	with := func(s syncs) *probe { return probeWith(&s) }
	refused := func(s syncs, d time.Duration, says ...string) {
		t.Helper()
		_, err := healthRail(with(s), f, patchValues(d), false)
		if !errors.Is(err, patch.ErrRefused) {
			t.Errorf("%v with %+v: %v, want a refusal", d, s, err)
			return
		}
		for _, w := range says {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v with %+v: %q does not say %q", d, s, err, w)
			}
		}
	}
	accepted := func(s syncs, d time.Duration, says ...string) {
		t.Helper()
		notes, err := healthRail(with(s), f, patchValues(d), false)
		if err != nil {
			t.Errorf("%v with %+v: %v", d, s, err)
		}
		for _, w := range says {
			if !strings.Contains(strings.Join(notes, "; "), w) {
				t.Errorf("%v with %+v: notes %q do not say %q", d, s, notes, w)
			}
		}
	}
	// 10s after a first sync of 47 s: 57 s, past 0.9 × 60 s; 57 s fits under 2 × 32s × 0.9.
	refused(syncs{full: 47 * time.Second, first: true}, 10*time.Second, "first sync after its start took 47s", "syncPeriod of 32s or more")
	refused(syncs{partial: 2 * time.Second, full: 47 * time.Second}, 10*time.Second, "full syncs", "47s on average")
	refused(syncs{partial: 47 * time.Second}, 10*time.Second, "syncs take 47s")
	accepted(syncs{full: 47 * time.Second, first: true}, 5*time.Second)
	accepted(syncs{partial: 4 * time.Second}, 20*time.Second)
	// Partial syncs alone would allow 25s; the full ones do not.
	accepted(syncs{partial: 2 * time.Second, full: 30 * time.Second}, 20*time.Second)
	refused(syncs{partial: 2 * time.Second, full: 30 * time.Second}, 25*time.Second, "full syncs")
	// Full syncs of 58 s: at 1s a change can already wait 59 s; the period is allowed, and said so.
	accepted(syncs{partial: 2 * time.Second, full: 58 * time.Second}, 10*time.Second, "can already wait 59s", "syncPeriod of 38s or more")
	if notes, err := healthRail(with(syncs{full: 47 * time.Second}), f, patchValues(10*time.Second), true); err != nil || !strings.Contains(strings.Join(notes, "; "), "forced past the /healthz rail") {
		t.Errorf("--force: %v, notes %q", err, notes)
	}
}

// probeWith is a kube-proxy with syncPeriod 30s whose syncs take s (nil: its metrics unreadable).
func probeWith(s *syncs) *probe {
	pr := newProbe(&target.Process{Process: procfs.Process{PID: -1, Cmdline: []string{"kube-proxy", "--iptables-sync-period=30s"}}})
	if s != nil {
		pr.avg = func() (syncs, bool) { return *s, true }
	}
	return pr
}

// TestHealthRailAllows: a refusal names the longest period the rail accepts, one it then accepts.
func TestHealthRailAllows(t *testing.T) {
	for _, c := range []struct {
		name      string
		s         *syncs // nil: metrics unreadable
		current   time.Duration
		d, allows time.Duration
	}{
		// 47 s + the period must stay under 54 s.
		{"first sync of 47 s", &syncs{full: 47 * time.Second, first: true}, time.Second, 10 * time.Second, 6 * time.Second},
		{"full syncs of 30 s", &syncs{partial: 2 * time.Second, full: 30 * time.Second}, time.Second, 25 * time.Second, 23 * time.Second},
		{"under a second left", &syncs{partial: 53400 * time.Millisecond}, 100 * time.Millisecond, 5 * time.Second, 500 * time.Millisecond},
		// Never less than the period kube-proxy has, which the rail accepts.
		{"the period it has", &syncs{partial: 47500 * time.Millisecond}, 6200 * time.Millisecond, 10 * time.Second, 6200 * time.Millisecond},
		{"past syncPeriod, short syncs", &syncs{partial: 4 * time.Second}, time.Second, 31 * time.Second, 30 * time.Second},
		{"past syncPeriod, long syncs", &syncs{full: 47 * time.Second}, time.Second, 31 * time.Second, 6 * time.Second},
		{"past syncPeriod, metrics unreadable", nil, time.Second, 31 * time.Second, 30 * time.Second},
	} {
		pr := probeWith(c.s)
		f := locate.Found{MinInterval: c.current, Patchable: true}
		_, err := healthRail(pr, f, patchValues(c.d), false)
		var re *RailError
		if !errors.As(err, &re) || !errors.Is(err, patch.ErrRefused) {
			t.Errorf("%s: %v at %v: %v, want a RailError wrapping ErrRefused", c.name, c.d, c.current, err)
			continue
		}
		if re.Allowed != c.allows {
			t.Errorf("%s: allows %v, want %v", c.name, re.Allowed, c.allows)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%v is the longest period allowed", c.allows)) {
			t.Errorf("%s: %q does not name %v", c.name, err, c.allows)
		}
		if re.Allowed != c.current {
			if _, err := healthRail(pr, f, patchValues(re.Allowed), false); err != nil {
				t.Errorf("%s: the period it allows, %v, refused: %v", c.name, re.Allowed, err)
			}
		}
	}
}
