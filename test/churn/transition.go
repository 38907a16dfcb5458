package churn

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/test/testbed"
)

// Transition is one way of giving a running kube-proxy a new period under churn: restarting it
// with the new flag, or `kptune set`.
type Transition struct {
	How  string        `json:"how"`
	Mode string        `json:"mode"`
	From time.Duration `json:"from"`
	To   time.Duration `json:"to"`
	// ApplySeconds runs from the decision to kube-proxy syncing at the new period: until kptune set
	// returns (its write is in force for the next sync), or until the restarted kube-proxy's first
	// sync has programmed the rules.
	ApplySeconds float64 `json:"applySeconds"`
	// GapSeconds is the time between the last sync before the change and the first after it: how
	// long changes could not reach the rules across it (at most about a period, were nothing lost).
	GapSeconds float64 `json:"gapSeconds"`
	// ProbeSeconds is how long a change written at the decision took to reach the rules.
	ProbeSeconds float64 `json:"probeSeconds"`
	// Syncs after the change (to the end of the observation), and the sync periods seen then.
	SyncsAfter int       `json:"syncsAfter"`
	SyncTimes  []float64 `json:"syncTimes"` // completed syncs, seconds from the decision
	Services   int       `json:"services"`
	Endpoints  int       `json:"endpoints"`
	Build      string    `json:"build"`
	When       string    `json:"when"`
}

// Transitions measures both ways on one kube-proxy at from under steady churn of rate: kptune set
// to the new period (then reset), then a restart with it.
func Transitions(ctx context.Context, b Bed, mode string, from, to time.Duration, rate float64, o Options) ([]Transition, error) {
	kp, err := b.C.StartKubeProxy(ctx, testbed.KubeProxyOptions{
		Build: o.Build, Mode: mode, MinSyncPeriod: from, SyncPeriod: 30 * time.Second,
		IPTablesLegacy: mode == testbed.IPTables,
	})
	if err != nil {
		return nil, err
	}
	defer kp.Stop()
	if err := kp.WaitSynced(ctx, 1, 15*time.Minute); err != nil {
		return nil, err
	}
	churn, err := b.Start(ctx, Steady(rate))
	if err != nil {
		return nil, err
	}
	defer churn.Stop()
	var out []Transition
	for _, how := range []string{"kptune set", "restart"} {
		time.Sleep(max(15*time.Second, 3*from))
		t, err := transition(ctx, b, kp, how, from, to, o)
		if err != nil {
			return out, fmt.Errorf("%s: %w", how, err)
		}
		t.Mode, t.Services, t.Endpoints = mode, b.Services, b.Endpoints
		t.Build, t.When = o.Build.String()+" "+mode, time.Now().UTC().Format(time.RFC3339)
		o.Log("%s %v→%v: applied in %.3fs, syncs %.2fs apart across it, a change made then reached the rules in %.2fs",
			how, from, to, t.ApplySeconds, t.GapSeconds, t.ProbeSeconds)
		o.Log("%s: syncs after, seconds from the change: %.1f", how, t.SyncTimes)
		out = append(out, t)
		if how == "kptune set" {
			if b, err := kptune(ctx, o, "reset", "--pid", fmt.Sprint(kp.PID())); err != nil {
				return out, fmt.Errorf("kptune reset: %v: %s", err, b)
			}
		}
	}
	return out, nil
}

func transition(ctx context.Context, b Bed, kp *testbed.KubeProxy, how string, from, to time.Duration, o Options) (Transition, error) {
	t := Transition{How: how, From: from, To: to}
	// Completed syncs, from kube-proxy's last-sync timestamp polled every 100 ms (through a restart,
	// when the scrapes fail for a while).
	var mu sync.Mutex
	var syncs []float64
	pollCtx, stopPoll := context.WithCancel(ctx)
	var polled sync.WaitGroup
	polled.Add(1)
	go func() {
		defer polled.Done()
		for pollCtx.Err() == nil {
			if s, err := kp.Metrics.Scrape(pollCtx); err == nil {
				if ts := s.Max(kpmetrics.LastSyncTimestamp); ts > 0 {
					mu.Lock()
					if len(syncs) == 0 || syncs[len(syncs)-1] != ts {
						syncs = append(syncs, ts)
					}
					mu.Unlock()
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	time.Sleep(3 * max(from, time.Second))
	decided := time.Now()
	probed := make(chan error, 1)
	go func() {
		d, err := probe(ctx, b, kp, o.Probe, 5*time.Minute, &Window{})
		t.ProbeSeconds = d.Seconds()
		probed <- err
	}()
	switch how {
	case "kptune set":
		if out, err := kptune(ctx, o, "set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", to.String()); err != nil {
			stopPoll()
			return t, fmt.Errorf("%v: %s", err, out)
		}
		t.ApplySeconds = time.Since(decided).Seconds()
	case "restart":
		if err := kp.RestartWith(to); err != nil {
			stopPoll()
			return t, err
		}
		if err := kp.WaitSynced(ctx, 1, 15*time.Minute); err != nil {
			stopPoll()
			return t, err
		}
	}
	if err := <-probed; err != nil {
		stopPoll()
		return t, err
	}
	time.Sleep(3 * to)
	stopPoll()
	polled.Wait()
	at := float64(decided.UnixNano()) / 1e9
	before := slices.IndexFunc(syncs, func(ts float64) bool { return ts > at }) // the first sync after the decision
	if before <= 0 {
		return t, fmt.Errorf("no sync seen both before and after the change (%d seen)", len(syncs))
	}
	if how == "restart" {
		t.ApplySeconds = syncs[before] - at
	}
	t.GapSeconds = syncs[before] - syncs[before-1]
	for _, ts := range syncs[before:] {
		t.SyncTimes = append(t.SyncTimes, ts-at)
	}
	t.SyncsAfter = len(syncs) - before
	return t, nil
}
