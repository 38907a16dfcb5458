package kpmetrics

import (
	"strings"
	"testing"
	"time"
)

func TestConfigPeriods(t *testing.T) {
	for _, tc := range []struct {
		name, doc, mode string
		min, sync       time.Duration
	}{
		{"≤ 1.30: internal names, the mode's section", `{"kubeproxy.config.k8s.io":{"IPTables":{"MinSyncPeriod":"1s","SyncPeriod":"47s"},"IPVS":{"MinSyncPeriod":"0s","SyncPeriod":"30s"},"Mode":"iptables"}}`, "iptables", time.Second, 47 * time.Second},
		{"≤ 1.30: ipvs reads its own section", `{"kubeproxy.config.k8s.io":{"IPTables":{"MinSyncPeriod":"1s","SyncPeriod":"47s"},"IPVS":{"MinSyncPeriod":"2s","SyncPeriod":"31s"}}}`, "ipvs", 2 * time.Second, 31 * time.Second},
		{"1.29–1.30 nftables: its own section", `{"kubeproxy.config.k8s.io":{"IPTables":{"MinSyncPeriod":"3.7s","SyncPeriod":"47s"},"NFTables":{"MinSyncPeriod":"1s","SyncPeriod":"30s"}}}`, "nftables", time.Second, 30 * time.Second},
		{"1.31–1.35: internal names, top level", `{"kubeproxy.config.k8s.io":{"MinSyncPeriod":"3.7s","SyncPeriod":"45s","IPTables":{"MasqueradeBit":14}}}`, "iptables", 3700 * time.Millisecond, 45 * time.Second},
		{"≥ 1.36: camelCase", `{"kubeproxy.config.k8s.io":{"minSyncPeriod":"1s","syncPeriod":"30s"}}`, "nftables", time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(strings.NewReader(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			min, ok1 := c.Period("minSyncPeriod", tc.mode)
			sync, ok2 := c.Period("syncPeriod", tc.mode)
			if !ok1 || !ok2 || min != tc.min || sync != tc.sync {
				t.Errorf("min %v %v, sync %v %v; want %v %v", min, ok1, sync, ok2, tc.min, tc.sync)
			}
		})
	}
	c, err := ParseConfig(strings.NewReader(`{"a":{"syncPeriod":"soon"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Period("syncPeriod", "iptables"); ok {
		t.Error("an unparsable period was accepted")
	}
	for _, bad := range []string{``, `[]`, `{"a":`, `"x"`} {
		if _, err := ParseConfig(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestAddress(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"kube-proxy"}, "127.0.0.1:10249"},
		{[]string{"kube-proxy", "--metrics-bind-address=0.0.0.0:9999"}, "127.0.0.1:9999"},
		{[]string{"kube-proxy", "--metrics-bind-address", "10.0.0.5:10249"}, "10.0.0.5:10249"},
		{[]string{"kube-proxy", "--metrics-bind-address=[::]:10249"}, "127.0.0.1:10249"},
	} {
		if got := Address(tc.args); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.args, got, tc.want)
		}
	}
}
