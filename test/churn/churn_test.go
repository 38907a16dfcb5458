//go:build churn

package churn

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kptune/test/testbed"
)

// TestSmoke is `make bench-smoke`: the steady-churn scenario at 200 Services × 5 endpoints, 10
// changes a second, on kube-proxy v1.33.5 (iptables) at static periods of 1s, 2s and 5s. It asserts
// the physics, not timings: syncs per minute fall as the period rises and never exceed what the
// token bucket allows (60/period + its burst of 2 a window), no sync fails, and every change reaches
// the rules (the probe Service's changes are seen in them, and every Service is there at the end).
// With KPTUNE_CHURN_RECORD set, each run's figures go to bench/results/churn/.
func TestSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and iptables")
	}
	ctx := context.Background()
	const services, endpoints = 200, 5
	c, _ := testbed.Start(t, services+1, endpoints) // the last is the probe Service
	build := testbed.Build{Version: "v1.33.5"}
	var results []Result
	for _, period := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second} {
		r, err := Run(ctx, c, build, Scenario{Services: services, Endpoints: endpoints, Rate: 10, Mode: testbed.IPTables,
			Period: period, Window: 40 * time.Second, Probes: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("period %v: %.1f syncs/min, %.3f cores, change→rules p50 %v max %v, %d changes, %d Services missing at the end",
			period, r.SyncsPerMin, r.CPUCores, r.LatencyP50.Round(time.Millisecond), r.LatencyMax.Round(time.Millisecond), r.Changes, r.MissingAtEnd)
		if limit := 60/period.Seconds() + 2*60/r.Window.Seconds(); r.SyncsPerMin > limit {
			t.Errorf("period %v: %.1f syncs/min, more than the token bucket allows (%.1f)", period, r.SyncsPerMin, limit)
		}
		if len(results) > 0 && r.SyncsPerMin >= results[len(results)-1].SyncsPerMin {
			t.Errorf("period %v: %.1f syncs/min, not fewer than at %v (%.1f)", period, r.SyncsPerMin, results[len(results)-1].Period, results[len(results)-1].SyncsPerMin)
		}
		if r.RestoreFailed != 0 || r.MissingAtEnd != 0 || len(r.Latencies) != 4 {
			t.Errorf("period %v: %v failed syncs, %d Services missing, %d of 4 probe changes seen", period, r.RestoreFailed, r.MissingAtEnd, len(r.Latencies))
		}
		results = append(results, r)
	}
	if os.Getenv("KPTUNE_CHURN_RECORD") != "" {
		dir := filepath.Join(testbed.RepoRoot(), "bench", "results", "churn")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, r := range results {
			b, _ := json.MarshalIndent(r, "", "  ")
			name := fmt.Sprintf("smoke-steady-%dx%d-%s-%s.json", r.Services, r.Endpoints, r.Mode, r.Period)
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
