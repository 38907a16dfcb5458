// Package churn is the churn bench: what a sync period costs and buys on a real kube-proxy fed by
// the real API server. A run starts one kube-proxy at a static minimum sync period, churns
// EndpointSlices at a steady rate for a window, and measures kube-proxy's CPU with its
// iptables-restore / nft children (/proc), its syncs (its own metrics), and the time from writing a
// change to the API server to seeing it in the namespace's rules, measured independently on a probe
// Service the churn does not touch.
package churn

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// Scenario is one steady-churn run.
type Scenario struct {
	Services, Endpoints int
	Rate                float64 // EndpointSlice changes a second, over Services 0..Services-1
	Mode                string  // iptables or nftables
	Period              time.Duration
	Window              time.Duration
	Probes              int // independent latency samples on the probe Service (index Services)
}

// Result is what a run measured.
type Result struct {
	Scenario
	Build         string        `json:"build"`
	Changes       int64         `json:"changes"`
	Syncs         uint64        `json:"syncs"`
	SyncsPerMin   float64       `json:"syncsPerMinute"`
	CPUCores      float64       `json:"cpuCores"`
	LatencyP50    time.Duration `json:"latencyP50"`
	LatencyMax    time.Duration `json:"latencyMax"`
	Latencies     []time.Duration
	MissingAtEnd  int `json:"missingServicesAtEnd"`
	RestoreFailed float64
}

// Run runs one scenario on cluster c, whose Load must hold Services+1 Services (the last is the
// probe) with Endpoints endpoints each.
func Run(ctx context.Context, c *testbed.Cluster, build testbed.Build, s Scenario) (Result, error) {
	r := Result{Scenario: s, Build: build.String()}
	kp, err := c.StartKubeProxy(ctx, testbed.KubeProxyOptions{Build: build, Mode: s.Mode, MinSyncPeriod: s.Period, SyncPeriod: 30 * time.Second})
	if err != nil {
		return r, err
	}
	defer kp.Stop()
	if err := kp.WaitSynced(ctx, 1, 5*time.Minute); err != nil {
		return r, err
	}
	time.Sleep(time.Second) // past the first full sync
	before, err := kp.Metrics.Scrape(ctx)
	if err != nil {
		return r, err
	}
	cpu0, err := procfs.CPU(kp.PID())
	if err != nil {
		return r, err
	}
	start := time.Now()
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: s.Rate, Services: s.Services, Endpoints: s.Endpoints})
	if err != nil {
		return r, err
	}
	// Independent latency: a change to the probe Service, polled for in the rules.
	gap := s.Window / time.Duration(s.Probes+1)
	for i := 0; i < s.Probes; i++ {
		time.Sleep(gap / 2)
		ip, err := c.SetEndpoints(ctx, s.Services, s.Endpoints, int(time.Now().UnixNano()%200)+i)
		if err != nil {
			_, _ = churn.Stop()
			return r, err
		}
		written := time.Now()
		for {
			rules, err := kp.Rules()
			if err != nil {
				_, _ = churn.Stop()
				return r, err
			}
			if strings.Contains(rules, ip+"/32") || strings.Contains(rules, ip+" ") {
				break
			}
			if time.Since(written) > 2*time.Minute {
				_, _ = churn.Stop()
				return r, fmt.Errorf("period %v: a change to the probe Service never reached the rules", s.Period)
			}
			time.Sleep(20 * time.Millisecond)
		}
		r.Latencies = append(r.Latencies, time.Since(written))
		time.Sleep(gap / 2)
	}
	if rest := s.Window - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	window := time.Since(start)
	if r.Changes, err = churn.Stop(); err != nil {
		return r, err
	}
	after, err := kp.Metrics.Scrape(ctx)
	if err != nil {
		return r, err
	}
	cpu1, err := procfs.CPU(kp.PID())
	if err != nil {
		return r, err
	}
	r.Syncs = after.Syncs() - before.Syncs()
	r.SyncsPerMin = float64(r.Syncs) / window.Minutes()
	r.CPUCores = (cpu1 - cpu0).Seconds() / window.Seconds()
	r.RestoreFailed = after.Value(kpmetrics.RestoreFailures) + after.Value(kpmetrics.NFTablesFailures) -
		before.Value(kpmetrics.RestoreFailures) - before.Value(kpmetrics.NFTablesFailures)
	r.Window = window
	if len(r.Latencies) > 0 {
		l := slices.Clone(r.Latencies)
		slices.Sort(l)
		r.LatencyP50, r.LatencyMax = l[(len(l)-1)/2], l[len(l)-1]
	}
	// Every change eventually reaches the rules: after two periods, every Service is there.
	time.Sleep(2*s.Period + time.Second)
	rules, err := kp.Rules()
	if err != nil {
		return r, err
	}
	r.MissingAtEnd = len(testbed.MissingServices(rules, s.Services+1))
	return r, nil
}
