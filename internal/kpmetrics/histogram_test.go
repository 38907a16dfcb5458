package kpmetrics

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

const latency = `# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"} %d
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.5"} %d
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="1"} %d
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} %d
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"} 1
kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} %[4]d
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="0.25"} 0
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="0.5"} 0
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="1"} 10
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="+Inf"} 10
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv6"} 1
kubeproxy_network_programming_duration_seconds_count{ip_family="IPv6"} 10
`

func buckets(t *testing.T, le025, le05, le1, all int) []Bucket {
	t.Helper()
	s, err := Parse(strings.NewReader(fmt.Sprintf(latency, le025, le05, le1, all)))
	if err != nil {
		t.Fatal(err)
	}
	return s.Buckets(NetworkProgramming)
}

func TestQuantile(t *testing.T) {
	before := buckets(t, 0, 0, 0, 0)
	if len(before) != 4 || !math.IsInf(before[3].UpperBound, 1) || before[2].Count != 10 {
		t.Fatalf("buckets summed over the families: %+v", before)
	}
	// Between the scrapes the IPv4 family gained 20 samples ≤ 0.25 s, 20 in (0.25, 0.5], 10 in
	// (0.5, 1] and 10 above 1 s; the IPv6 family none.
	after := buckets(t, 20, 40, 50, 60)
	for _, c := range []struct{ q, want float64 }{
		{0.5, 0.25 + 0.25*(30-20)/20.0}, // rank 30 of 60: half-way through (0.25, 0.5]
		{0.25, 0.25 * 15 / 20},          // rank 15: in the first bucket, from 0
		{0.99, 1},                       // in +Inf: the largest finite bound
	} {
		if got := Quantile(c.q, before, after); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := Quantile(0.5, before, before); !math.IsNaN(got) {
		t.Errorf("no samples added: got %v, want NaN", got)
	}
	if got := Quantile(0.5, after, before); !math.IsNaN(got) {
		t.Errorf("counts went down (a restart): got %v, want NaN", got)
	}
	if got := Quantile(0.5, before[:2], after); !math.IsNaN(got) {
		t.Errorf("different buckets: got %v, want NaN", got)
	}
	for _, c := range []struct {
		name          string
		before, after []Bucket
		want          uint64
	}{
		{"gained", before, after, after[3].Count - before[3].Count},
		{"no histogram before its first sample", nil, after, after[3].Count},
		{"none now", before, nil, 0},
		{"counts went down", after, before, 0},
		{"different buckets", before[:2], after, 0},
	} {
		if got := Count(c.before, c.after); got != c.want {
			t.Errorf("Count, %s: %d, want %d", c.name, got, c.want)
		}
	}
}
