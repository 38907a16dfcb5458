package tune

import (
	"encoding/json"
	"testing"
	"time"

	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/procfs"
)

func TestFindSyncPeriodInConfigz(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want time.Duration
	}{
		// ≤ 1.30: internal field names, under IPTables.
		{`{"kubeproxy.config.k8s.io":{"IPTables":{"MinSyncPeriod":"1s","SyncPeriod":"47s"},"Mode":"iptables"}}`, 47 * time.Second},
		// 1.31–1.35: internal names at the top level.
		{`{"kubeproxy.config.k8s.io":{"MinSyncPeriod":"3.7s","SyncPeriod":"45s"}}`, 45 * time.Second},
		// ≥ 1.36: v1alpha1 camelCase.
		{`{"kubeproxy.config.k8s.io":{"minSyncPeriod":"1s","syncPeriod":"30s"}}`, 30 * time.Second},
	} {
		var doc any
		if err := json.Unmarshal([]byte(tc.doc), &doc); err != nil {
			t.Fatal(err)
		}
		if got, ok := findSyncPeriod(doc); !ok || got != tc.want {
			t.Errorf("%s: got %v %v, want %v", tc.doc, got, ok, tc.want)
		}
	}
	var doc any
	_ = json.Unmarshal([]byte(`{"a":{"syncPeriod":"soon"}}`), &doc)
	if _, ok := findSyncPeriod(doc); ok {
		t.Errorf("an unparsable period was accepted")
	}
}

func TestSyncPeriodFromFlagsAndRunner(t *testing.T) {
	p := procfs.Process{PID: -1, Cmdline: []string{"kube-proxy", "--iptables-sync-period=47s"}}
	if d, from := syncPeriod(newProbe(p), locate.Found{}); d != 47*time.Second || from == "" {
		t.Errorf("from flags: %v %q", d, from)
	}
	p.Cmdline = []string{"kube-proxy", "--ipvs-sync-period", "20s"}
	if d, _ := syncPeriod(newProbe(p), locate.Found{}); d != 20*time.Second {
		t.Errorf("from a separate flag value: %v", d)
	}
	if d, _ := syncPeriod(newProbe(p), locate.Found{RetryInterval: 33 * time.Second}); d != 33*time.Second {
		t.Errorf("the ≥ 1.34 runner's retryInterval is syncPeriod: %v", d)
	}
	p.Cmdline = []string{"kube-proxy", "--metrics-bind-address=0.0.0.0:9999"}
	if got := metricsAddress(p); got != "127.0.0.1:9999" {
		t.Errorf("metrics address %s", got)
	}
}

func TestHealthRailDecision(t *testing.T) {
	// No metrics reachable (PID -1): only the syncPeriod check applies.
	p := procfs.Process{PID: -1, Cmdline: []string{"kube-proxy", "--iptables-sync-period=30s"}}
	f := locate.Found{MinInterval: time.Second, Patchable: true}
	if _, err := healthRail(newProbe(p), f, patchValues(10*time.Second), false); err != nil {
		t.Errorf("10s under syncPeriod 30s: %v", err)
	}
	if _, err := healthRail(newProbe(p), f, patchValues(31*time.Second), false); err == nil {
		t.Errorf("31s over syncPeriod 30s was accepted")
	}
	if notes, err := healthRail(newProbe(p), f, patchValues(31*time.Second), true); err != nil || len(notes) == 0 {
		t.Errorf("--force: %v, notes %v", err, notes)
	}
}

func patchValues(d time.Duration) patch.Values { return patch.Values{MinInterval: d} }
