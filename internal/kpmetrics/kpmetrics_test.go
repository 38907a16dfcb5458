package kpmetrics

import (
	"strings"
	"testing"
)

// A dual-stack kube-proxy 1.33 page, cut down: one series per ip_family.
const dualStack = `# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 12
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 1.5
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 12
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="0.001"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="+Inf"} 5
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 0.25
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 5
# HELP kubeproxy_sync_proxy_rules_endpoint_changes_total [ALPHA] Cumulative proxy rules Endpoint changes
# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter
kubeproxy_sync_proxy_rules_endpoint_changes_total{ip_family="IPv4"} 40
kubeproxy_sync_proxy_rules_endpoint_changes_total{ip_family="IPv6"} 2
# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.8e+09
`

func TestParseSumsOverFamilies(t *testing.T) {
	s, err := Parse(strings.NewReader(dualStack))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Syncs(); got != 17 {
		t.Errorf("Syncs() = %d, want 12+5", got)
	}
	if _, sum := s.Histogram(SyncDuration); sum != 1.75 {
		t.Errorf("sync duration sum = %v, want 1.75", sum)
	}
	if got := s.Value(EndpointChanges); got != 42 {
		t.Errorf("endpoint changes = %v, want 42", got)
	}
	if got := s.Max(LastSyncTimestamp); got != 1.8e9 {
		t.Errorf("last sync = %v, want the later family's 1.8e9", got)
	}
	if s.Has(NFTablesFailures) || s.Value(NFTablesFailures) != 0 {
		t.Errorf("a metric absent from the page reads as present or non-zero")
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	if _, err := Parse(strings.NewReader("kubeproxy_x{le=\"1\" 3\n")); err == nil {
		t.Fatal("a broken exposition parsed without error")
	}
}

// TestParseOnly: the families asked for read the same as from the whole page, and the others are
// not parsed at all (a broken one among them is no error).
func TestParseOnly(t *testing.T) {
	page := dualStack + "# HELP go_goroutines Number of goroutines\n# TYPE go_goroutines gauge\ngo_goroutines 12\nrest_client_x{le=\"1\" 3\n"
	if _, err := Parse(strings.NewReader(page)); err == nil {
		t.Fatal("the whole page, with a broken line, parsed without error")
	}
	s, err := Parse(strings.NewReader(page), SyncDuration, EndpointChanges)
	if err != nil {
		t.Fatal(err)
	}
	if n, sum := s.Histogram(SyncDuration); n != 17 || sum != 1.75 {
		t.Errorf("sync duration: %d syncs, %v s; want 17 and 1.75", n, sum)
	}
	if got := s.Value(EndpointChanges); got != 42 {
		t.Errorf("endpoint changes = %v, want 42", got)
	}
	if len(s.Families) != 2 || s.Has("go_goroutines") || s.Has(LastSyncTimestamp) {
		t.Errorf("families parsed: %d, want the 2 asked for", len(s.Families))
	}
}

// TestParseBounds: a page past maxBody, or a line past maxLine where the families are picked out, is
// an error, not a page cut short that reads as one without the families past the cut.
func TestParseBounds(t *testing.T) {
	filler := func(n int) string { // valid comment lines, n bytes
		line := "# " + strings.Repeat("x", 1021) + "\n"
		rest := n % len(line)
		if rest > 0 {
			return strings.Repeat(line, n/len(line)) + strings.Repeat("#", rest-1) + "\n"
		}
		return strings.Repeat(line, n/len(line))
	}
	atBound := filler(maxBody - len(dualStack))
	if len(atBound)+len(dualStack) != maxBody {
		t.Fatalf("filler: %d bytes, want %d", len(atBound)+len(dualStack), maxBody)
	}
	for _, only := range [][]string{nil, {EndpointChanges}} {
		s, err := Parse(strings.NewReader(atBound+dualStack), only...)
		if err != nil || s.Value(EndpointChanges) != 42 {
			t.Errorf("only %v: a page of exactly %d bytes: %v, endpoint changes %v", only, maxBody, err, s.Value(EndpointChanges))
		}
		_, err = Parse(strings.NewReader("#\n"+atBound+dualStack), only...)
		if err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("only %v: a page one byte past %d: %v, want the bound named", only, maxBody, err)
		}
	}
	long := "kubeproxy_sync_proxy_rules_endpoint_changes_total{x=\"" + strings.Repeat("a", maxLine) + "\"} 1\n"
	if _, err := Parse(strings.NewReader(dualStack+long), EndpointChanges); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a line past %d bytes: %v, want the bound named", maxLine, err)
	}
}
