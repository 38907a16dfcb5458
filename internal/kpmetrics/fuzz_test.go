package kpmetrics

import (
	"bytes"
	"testing"
)

const sampleMetrics = `# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 12
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 1.5
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 12
# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter
kubeproxy_sync_proxy_rules_endpoint_changes_total{ip_family="IPv4"} 340
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
`

// FuzzParse: any metrics page parses or is refused; the accessors never panic on what parses.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sampleMetrics))
	f.Add([]byte("# TYPE x counter\nx 1\n"))
	f.Add([]byte("kubeproxy_sync_proxy_rules_duration_seconds_count 5\n"))
	f.Add([]byte("# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds counter\nkubeproxy_sync_full_proxy_rules_duration_seconds{ip_family=\"IPv4\"} 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, name := range []string{SyncDuration, SyncPartialDuration, SyncFullDuration, NetworkProgramming, LastSyncTimestamp, EndpointChanges, RestoreFailures} {
			s.Value(name)
			s.Max(name)
			s.Histogram(name)
			s.ByFamily(name)
		}
		s.Syncs()
	})
}

// FuzzConfig: any /configz document parses or is refused; periods read from it are never negative.
func FuzzConfig(f *testing.F) {
	for _, doc := range []string{
		`{"kubeproxy.config.k8s.io":{"IPTables":{"MinSyncPeriod":"1s","SyncPeriod":"47s"},"Mode":"iptables"}}`,
		`{"kubeproxy.config.k8s.io":{"MinSyncPeriod":"3.7s","SyncPeriod":"45s"}}`,
		`{"kubeproxy.config.k8s.io":{"minSyncPeriod":"1s","syncPeriod":"30s","mode":"nftables"}}`,
	} {
		f.Add([]byte(doc), "iptables")
	}
	f.Fuzz(func(t *testing.T, data []byte, mode string) {
		c, err := ParseConfig(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, name := range []string{"minSyncPeriod", "syncPeriod"} {
			if d, ok := c.Period(name, mode); ok && d < 0 {
				t.Fatalf("%s = %v", name, d)
			}
		}
		c.Mode()
	})
}
