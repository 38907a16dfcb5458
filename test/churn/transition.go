package churn

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"slices"
	"sync"
	"time"

	prom "github.com/prometheus/procfs"

	"kptune/internal/kpmetrics"
	"kptune/test/testbed"
)

// The two ways of giving a running kube-proxy a new period.
const (
	BySet     = "kptune set"
	ByRestart = "restart"
)

// Transition is one change of a running kube-proxy's period under churn: restarting it with the
// new flag, or `kptune set`.
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
	// SyncSeconds is each of those syncs' length (null where it could not be told), from kube-proxy's
	// sync duration histogram: a sync started at its time less its length.
	SyncSeconds []Maybe `json:"syncSeconds,omitempty"`
	Services    int     `json:"services"`
	Endpoints   int     `json:"endpoints"`
	Build       string  `json:"build"`
	When        string  `json:"when"`
	// Pair is the transition's pair in a scale run (from 1; 0 in runs before pairs).
	Pair int `json:"pair,omitempty"`
}

// Locate is one fresh `kptune inspect` of a kube-proxy at scale: its wall time (finding the
// process, reading its binary, locating its runners) and peak RSS (testbed.RunPeak), with the size
// of the kube-proxy it read.
type Locate struct {
	Mode            string  `json:"mode"`
	Locator         string  `json:"locator"` // scan or uprobe
	Seconds         float64 `json:"seconds"`
	PeakRSSMiB      float64 `json:"peakRSSMiB"`
	KubeProxyRSSMiB float64 `json:"kubeProxyRSSMiB"`
	Services        int     `json:"services"`
	Endpoints       int     `json:"endpoints"`
	Build           string  `json:"build"`
	When            string  `json:"when"`
	Pair            int     `json:"pair"`
}

// ScaleRecord is one line of the scale bench's results: a transition or a locate.
type ScaleRecord struct {
	Transition *Transition `json:"transition,omitempty"`
	Locate     *Locate     `json:"locate,omitempty"`
}

// Scale runs pairs of transitions between low and high on one kube-proxy under steady churn of
// rate, in mode: pair i goes up by one way and back down by the other, `kptune set` first in odd
// pairs and a restart first in even ones, so that each way makes pairs changes, half of them each
// way, interleaved with the other's. After each pair, `kptune inspect` reads the kube-proxy once
// with each locator. Every record goes to emit as it is made.
func Scale(ctx context.Context, b Bed, mode string, low, high, syncPeriod time.Duration, pairs int, rate float64, o Options, emit func(ScaleRecord) error) error {
	kp, err := b.C.StartKubeProxy(ctx, testbed.KubeProxyOptions{
		Build: o.Build, Mode: mode, MinSyncPeriod: low, SyncPeriod: syncPeriod,
		IPTablesLegacy: mode == testbed.IPTables,
	})
	if err != nil {
		return err
	}
	defer kp.Stop()
	if err := kp.WaitSynced(ctx, 1, 15*time.Minute); err != nil {
		return err
	}
	churn, err := b.Start(ctx, Steady(rate))
	if err != nil {
		return err
	}
	defer churn.Stop()
	build := o.Build.String() + " " + mode
	for pair := 1; pair <= pairs; pair++ {
		hows := []string{BySet, ByRestart}
		if pair%2 == 0 {
			hows[0], hows[1] = hows[1], hows[0]
		}
		for i, how := range hows {
			from, to := low, high
			if i == 1 {
				from, to = high, low
			}
			time.Sleep(max(15*time.Second, 3*from))
			t, err := transition(ctx, b, kp, how, from, to, o)
			if err != nil {
				return fmt.Errorf("pair %d, %s %v→%v: %w", pair, how, from, to, err)
			}
			t.Mode, t.Services, t.Endpoints, t.Pair = mode, b.Services, b.Endpoints, pair
			t.Build, t.When = build, time.Now().UTC().Format(time.RFC3339)
			o.Log("pair %d, %s %v→%v: applied in %.3fs, syncs %.2fs apart across it, a change made then reached the rules in %.2fs; syncs after, seconds from the change: %.1f",
				pair, how, from, to, t.ApplySeconds, t.GapSeconds, t.ProbeSeconds, t.SyncTimes)
			if err := emit(ScaleRecord{Transition: &t}); err != nil {
				return err
			}
		}
		proxiers, err := kp.Proxiers()
		if err != nil {
			return err
		}
		locators := []string{"scan", "uprobe"}
		if pair%2 == 0 {
			locators[0], locators[1] = locators[1], locators[0]
		}
		for _, locator := range locators {
			l, err := inspect(ctx, o, kp, locator, proxiers)
			if err != nil {
				return fmt.Errorf("pair %d: %w", pair, err)
			}
			l.Mode, l.Services, l.Endpoints, l.Build, l.Pair = mode, b.Services, b.Endpoints, build, pair
			l.When = time.Now().UTC().Format(time.RFC3339)
			o.Log("pair %d: kptune inspect --locate %s: %.3fs, peak RSS %.1f MiB (kube-proxy's RSS %.0f MiB)", pair, locator, l.Seconds, l.PeakRSSMiB, l.KubeProxyRSSMiB)
			if err := emit(ScaleRecord{Locate: &l}); err != nil {
				return err
			}
		}
	}
	return nil
}

// inspect runs `kptune inspect` once, as a fresh process, and checks it found every runner.
func inspect(ctx context.Context, o Options, kp *testbed.KubeProxy, locator string, proxiers int) (Locate, error) {
	l := Locate{Locator: locator}
	if p, err := prom.NewProc(kp.PID()); err == nil {
		if s, err := p.Stat(); err == nil {
			l.KubeProxyRSSMiB = float64(s.ResidentMemory()) / (1 << 20)
		}
	}
	cmd := exec.CommandContext(ctx, o.Kptune, "inspect", "--pid", fmt.Sprint(kp.PID()), "--locate", locator, "-o", "json")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	wall, peak, err := testbed.RunPeak(cmd)
	if err != nil {
		return l, fmt.Errorf("kptune inspect --locate %s: %v: %s", locator, err, errb.String())
	}
	l.Seconds, l.PeakRSSMiB = wall.Seconds(), float64(peak)/(1<<20)
	var r struct {
		Processes []struct {
			Runners []struct {
				Patchable bool `json:"patchable"`
			} `json:"runners"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || len(r.Processes) != 1 || len(r.Processes[0].Runners) != proxiers {
		return l, fmt.Errorf("kptune inspect --locate %s: want %d runners: %v: %s", locator, proxiers, err, out.Bytes())
	}
	for _, x := range r.Processes[0].Runners {
		if !x.Patchable {
			return l, fmt.Errorf("kptune inspect --locate %s: a runner not patchable: %s", locator, out.Bytes())
		}
	}
	return l, nil
}

func transition(ctx context.Context, b Bed, kp *testbed.KubeProxy, how string, from, to time.Duration, o Options) (Transition, error) {
	t := Transition{How: how, From: from, To: to}
	// Completed syncs, from kube-proxy's last-sync timestamp polled every 100 ms (through a restart,
	// when the scrapes fail for a while), each with its length: the growth of the sync duration
	// histogram's sum when its count grew by one (syncs are a second or more apart; the two metrics
	// are not updated at the same instant, so the length goes to the latest sync still without one).
	var mu sync.Mutex
	var syncs []float64
	var lengths []Maybe
	pollCtx, stopPoll := context.WithCancel(ctx)
	var polled sync.WaitGroup
	polled.Add(1)
	go func() {
		defer polled.Done()
		var count uint64
		var sum float64
		for pollCtx.Err() == nil {
			if s, err := kp.Metrics.Scrape(pollCtx, kpmetrics.LastSyncTimestamp, kpmetrics.SyncDuration); err == nil {
				mu.Lock()
				if ts := s.Max(kpmetrics.LastSyncTimestamp); ts > 0 && (len(syncs) == 0 || syncs[len(syncs)-1] != ts) {
					syncs, lengths = append(syncs, ts), append(lengths, Maybe(math.NaN()))
				}
				n, sm := s.Histogram(kpmetrics.SyncDuration)
				if n < count { // a new process
					count, sum = 0, 0
				}
				if n == count+1 && len(syncs) > 0 && math.IsNaN(float64(lengths[len(lengths)-1])) {
					lengths[len(lengths)-1] = Maybe(sm - sum)
				}
				count, sum = n, sm
				mu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	defer func() {
		stopPoll()
		polled.Wait()
	}()
	time.Sleep(3 * max(from, time.Second))
	decided := time.Now()
	// The first sync after the change: after the decision for kptune set; after the kill for a
	// restart (the old process could complete a sync between the decision and its end).
	after := decided
	probed := make(chan error, 1)
	go func() {
		d, err := probe(ctx, b, kp, o.Probe, 5*time.Minute, &Window{})
		t.ProbeSeconds = d.Seconds()
		probed <- err
	}()
	switch how {
	case BySet:
		if out, err := kptune(ctx, o, "set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", to.String()); err != nil {
			<-probed
			return t, fmt.Errorf("%v: %s", err, out)
		}
		t.ApplySeconds = time.Since(decided).Seconds()
	case ByRestart:
		err := kp.RestartWith(to)
		after = time.Now()
		if err == nil {
			err = kp.WaitSynced(ctx, 1, 15*time.Minute)
		}
		if err != nil {
			<-probed
			return t, err
		}
	default:
		return t, fmt.Errorf("unknown transition %q", how)
	}
	if err := <-probed; err != nil {
		return t, err
	}
	// Long enough to see a few syncs at the slower of the two periods.
	time.Sleep(3 * max(from, to))
	stopPoll()
	polled.Wait()
	at, first := float64(decided.UnixNano())/1e9, float64(after.UnixNano())/1e9
	next := slices.IndexFunc(syncs, func(ts float64) bool { return ts > first })
	if next <= 0 {
		return t, fmt.Errorf("no sync seen both before and after the change (%d seen)", len(syncs))
	}
	if how == ByRestart {
		t.ApplySeconds = syncs[next] - at
	}
	t.GapSeconds = syncs[next] - syncs[next-1]
	for _, ts := range syncs[next:] {
		t.SyncTimes = append(t.SyncTimes, ts-at)
	}
	t.SyncSeconds = lengths[next:]
	t.SyncsAfter = len(syncs) - next
	return t, nil
}

// A Spacing is the time between the starts of two consecutive syncs, and how long the first of them
// waited for the sync before it, at most (Late): if it started as that one ended (within 0.1 s: one
// runner syncs at a time), the time from that one's start to its own; else 0. kube-proxy's token bucket
// (k8s ≤ 1.33) holds at most one token after a run (burst − 1), and kptune set leaves it so, so a sync
// started late past its token is followed a period after that token: sooner than a period by as long
// as it was late, as any token bucket credits a late taker. With syncs longer than the old period,
// the first sync in force after a raise waits for the one in progress at the write.
type Spacing struct{ Seconds, Late float64 }

// Spacings are the spacings between consecutive syncs that started once the change was in force
// (after kptune set returned; after a restarted kube-proxy's first sync, whose length is its
// start-up, not a period): the period kube-proxy keeps. A sync whose length is unknown, or whose
// length would start it before the previous sync ended (one runner syncs at a time: the length was
// misread), breaks the chain. (The times between completions are not the period: a long sync
// followed by a short one completes closer.)
func (t Transition) Spacings() []Spacing {
	var out []Spacing
	start := func(i int) float64 { return t.SyncTimes[i] - float64(t.SyncSeconds[i]) }
	for i := 1; i < len(t.SyncTimes) && i < len(t.SyncSeconds); i++ {
		a, b := start(i-1), start(i)
		if math.IsNaN(a) || math.IsNaN(b) || a < t.ApplySeconds || b < t.SyncTimes[i-1]-0.1 {
			continue
		}
		sp := Spacing{Seconds: b - a}
		if i >= 2 {
			if prev := start(i - 2); !math.IsNaN(prev) && math.Abs(a-t.SyncTimes[i-2]) <= 0.1 {
				sp.Late = a - prev
			}
		}
		out = append(out, sp)
	}
	return out
}

// Seconds are the spacings' times alone.
func Seconds(s []Spacing) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.Seconds
	}
	return out
}
