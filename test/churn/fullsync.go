package churn

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"kptune/internal/kpmetrics"
	"kptune/internal/netns"
	"kptune/test/testbed"
)

// FullSync is one full sync of a kube-proxy under churn: its first after a start, or one forced by
// a change of its Node's labels (as kube-proxy also runs one an hour and after a failed sync). It
// rewrites every rule, and a change queued just before it waits for the period and then all of it,
// which kube-proxy's /healthz counts against 2 × syncPeriod.
type FullSync struct {
	Mode      string        `json:"mode"`
	Rep       int           `json:"rep"`
	Period    time.Duration `json:"period"`    // the minimum sync period kube-proxy held
	Trigger   string        `json:"trigger"`   // "start" or "node labels"
	Count     int           `json:"count"`     // full syncs it covers (a start can run two)
	Seconds   float64       `json:"seconds"`   // their mean length, from the full sync histogram
	Partial   float64       `json:"partial"`   // kube-proxy's partial syncs until then, mean length (s)
	Unhealthy float64       `json:"unhealthy"` // seconds /healthz answered other than 200, from the trigger to 5 s after
	Waited    float64       `json:"waited"`    // seconds from the trigger to the full sync's end
	Forced    bool          `json:"forced"`    // the period was set with --force (the /healthz rail refused it)
	Services  int           `json:"services"`
	Endpoints int           `json:"endpoints"`
	Build     string        `json:"build"`
	Commit    string        `json:"commit"`
	When      string        `json:"when"`
}

// FullSyncs runs one repetition in mode: a fresh kube-proxy at the first of periods, its first
// full syncs recorded, then under steady churn of rate one full sync at each period, forced by a new
// label on its Node, `kptune set` changing the period between them. /healthz is polled every 250 ms
// throughout. Every record goes to emit as it is made.
func FullSyncs(ctx context.Context, b Bed, mode string, rep int, periods []time.Duration, rate float64, o Options, emit func(FullSync) error) error {
	kp, err := b.C.StartKubeProxy(ctx, testbed.KubeProxyOptions{
		Build: o.Build, Mode: mode, MinSyncPeriod: periods[0], SyncPeriod: 30 * time.Second,
		IPTablesLegacy: mode == testbed.IPTables,
	})
	if err != nil {
		return err
	}
	defer kp.Stop()
	health := pollHealth(ctx, netns.ForName(kp.NS))
	defer health.stop()
	start := time.Now()
	if err := kp.WaitSynced(ctx, 1, 15*time.Minute); err != nil {
		return err
	}
	synced := time.Since(start)
	// A record is of the proxier whose full syncs took longest (a dual-stack kube-proxy's other
	// proxier may hold nothing).
	rec := func(period time.Duration, trigger string, from time.Time, before, after kpmetrics.Snapshot) FullSync {
		r := FullSync{Mode: mode, Rep: rep, Period: period, Trigger: trigger,
			Waited: time.Since(from).Seconds(), Services: b.Services, Endpoints: b.Endpoints,
			Build: o.Build.String() + " " + mode, Commit: commit(), When: time.Now().UTC().Format(time.RFC3339)}
		full0, partial := before.ByFamily(kpmetrics.SyncFullDuration), before.ByFamily(kpmetrics.SyncPartialDuration)
		for family, h := range after.ByFamily(kpmetrics.SyncFullDuration) {
			d := kpmetrics.Sums{Count: h.Count - full0[family].Count, Sum: h.Sum - full0[family].Sum}
			if d.Count > 0 && d.Mean() > r.Seconds {
				r.Count, r.Seconds, r.Partial = int(d.Count), d.Mean(), partial[family].Mean()
			}
		}
		time.Sleep(5 * time.Second)
		r.Unhealthy = health.unhealthy(from)
		return r
	}
	churn, err := b.Start(ctx, Steady(rate))
	if err != nil {
		return err
	}
	defer churn.Stop()
	// kube-proxy may run more than one full sync before its first partial one (a first sync before
	// it has read its Node's labels, then one for them): the start's record holds them all.
	var first kpmetrics.Snapshot
	if err := kp.WaitMetrics(ctx, waitLimit, waitEvery, "kube-proxy "+kp.Node+": no partial sync", func(s kpmetrics.Snapshot) bool {
		n, _ := s.Histogram(kpmetrics.SyncPartialDuration)
		first = s
		return n > 0
	}); err != nil {
		return err
	}
	r := rec(periods[0], "start", start, kpmetrics.Snapshot{}, first)
	r.Waited = synced.Seconds() // to the first sync's end, not to the partial one waited for
	if err := emit(r); err != nil {
		return err
	}
	current := periods[0]
	for i, period := range periods {
		forced := false
		if period != current {
			args := []string{"set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", period.String()}
			if out, err := kptune(ctx, o, args...); err != nil {
				o.Log("%s rep %d: kptune set %v refused (%v: %s): forcing it", mode, rep, period, err, out)
				if out, err := kptune(ctx, o, append(args, "--force")...); err != nil {
					return fmt.Errorf("kptune set --force: %v: %s", err, out)
				}
				forced = true
			}
			current = period
		}
		time.Sleep(max(20*time.Second, 2*period+5*time.Second))
		// The change of labels comes as a sync ends, the worst moment: the churn's next change then
		// waits for the rate limiter (about a period less that sync) and for the whole full sync.
		var before kpmetrics.Snapshot
		last := -1.0
		if err := kp.WaitMetrics(ctx, waitLimit, waitEvery, "kube-proxy "+kp.Node+": no sync", func(s kpmetrics.Snapshot) bool {
			ts := s.Max(kpmetrics.LastSyncTimestamp)
			before = s
			if last < 0 {
				last = ts
			}
			return ts != last
		}); err != nil {
			return err
		}
		full0 := before.ByFamily(kpmetrics.SyncFullDuration)
		from := time.Now()
		patch := fmt.Sprintf(`{"metadata":{"labels":{"kptune.test/full-sync":"r%d-%d"}}}`, rep, i)
		if _, err := b.C.Client.CoreV1().Nodes().Patch(ctx, kp.Node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return err
		}
		// Each proxier runs a full sync.
		var after kpmetrics.Snapshot
		if err := kp.WaitMetrics(ctx, waitLimit, waitEvery, "kube-proxy "+kp.Node+": no full sync after a change of its Node's labels", func(s kpmetrics.Snapshot) bool {
			after = s
			now := s.ByFamily(kpmetrics.SyncFullDuration)
			for family, h := range full0 {
				if now[family].Count <= h.Count {
					return false
				}
			}
			return true
		}); err != nil {
			return err
		}
		r := rec(period, "node labels", from, before, after)
		r.Forced = forced
		o.Log("%s rep %d, period %v: full sync of %.1fs (partial syncs %.2fs), %.1fs from the label change to its end, /healthz not 200 for %.1fs",
			mode, rep, period, r.Seconds, r.Partial, r.Waited, r.Unhealthy)
		if err := emit(r); err != nil {
			return err
		}
	}
	return nil
}

// How long FullSyncs waits for a sync, and how often it scrapes kube-proxy meanwhile: often enough
// to change the Node's labels within a few tens of milliseconds of a sync's end.
const (
	waitLimit = 10 * time.Minute
	waitEvery = 50 * time.Millisecond
)

// healthPoller records when kube-proxy's /healthz answered other than 200.
type healthPoller struct {
	mu   sync.Mutex
	bad  []time.Time
	stop func()
}

const healthEvery = 250 * time.Millisecond

func pollHealth(ctx context.Context, d netns.Dialer) *healthPoller {
	ctx, cancel := context.WithCancel(ctx)
	h := &healthPoller{}
	var wg sync.WaitGroup
	wg.Add(1)
	h.stop = func() { cancel(); wg.Wait() }
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: time.Second}
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			// Connection errors (kube-proxy starting) are not answers: only a status counts.
			if resp, err := client.Get("http://127.0.0.1:10256/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					h.mu.Lock()
					h.bad = append(h.bad, time.Now())
					h.mu.Unlock()
				}
			}
			time.Sleep(healthEvery)
		}
	}()
	return h
}

// unhealthy is about how long /healthz answered other than 200 since from (each answer counting
// for the poll's interval).
func (h *healthPoller) unhealthy(from time.Time) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, t := range h.bad {
		if !t.Before(from) {
			n++
		}
	}
	return float64(n) * healthEvery.Seconds()
}
