package tune

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/procfs"
	"kptune/internal/target"
)

// defaultSyncPeriod is kube-proxy's default --*-sync-period.
const defaultSyncPeriod = 30 * time.Second

// configzTimeout bounds each read of kube-proxy's /metrics or /configz for the rails.
const configzTimeout = 2 * time.Second

// probe reads a kube-proxy's metrics and /configz at most once, for all of its runners (two in
// dual-stack).
type probe struct {
	p       procfs.Process
	avg     func() (syncs, bool)
	configz func() (time.Duration, bool)
}

// syncs is what kube-proxy's metrics tell of how long its syncs take.
type syncs struct {
	avg time.Duration
	// first: avg is kube-proxy's first sync alone, a full one that can take minutes at scale; it
	// has synced nothing else since it started.
	first bool
}

func newProbe(t *target.Process) *probe {
	return &probe{
		p:       t.Process,
		avg:     sync.OnceValues(func() (syncs, bool) { return observedSync(t.Process) }),
		configz: sync.OnceValues(func() (time.Duration, bool) { return configzSyncPeriod(t) }),
	}
}

// rail applies the /healthz rail to a runner's planned values, adding its notes to the result once.
func (r *ProcessResult) rail(pr *probe, f locate.Found, v patch.Values, force bool) error {
	notes, err := healthRail(pr, f, v, force)
	for _, n := range notes {
		if !slices.Contains(r.Notes, n) {
			r.Notes = append(r.Notes, n)
		}
	}
	return err
}

// healthRail refuses a period with which a queued change could wait close to 2 × syncPeriod:
// kube-proxy's /healthz then answers 503 and load balancers drain the node. kube-proxy's own
// validation also refuses minSyncPeriod > syncPeriod, so a restart could not have set it either.
func healthRail(pr *probe, f locate.Found, v patch.Values, force bool) ([]string, error) {
	if v.MinInterval == f.MinInterval {
		return nil, nil
	}
	var notes []string
	period, from := syncPeriod(pr, f)
	if from != "" {
		notes = append(notes, fmt.Sprintf("syncPeriod %v (%s)", period, from))
	}
	if v.MinInterval > period {
		if !force {
			return notes, fmt.Errorf("%w: minimum sync period %v is longer than kube-proxy's syncPeriod %v: kube-proxy itself refuses that configuration, and a queued change could wait past 2 × syncPeriod, when /healthz answers 503 and load balancers drain the node; use --force to set it anyway",
				patch.ErrRefused, v.MinInterval, period)
		}
		notes = append(notes, "forced past syncPeriod")
	}
	obs, ok := pr.avg()
	avg := obs.avg
	if !ok {
		return append(notes, "kube-proxy's sync duration could not be read from its metrics: the /healthz rail checked the period alone"), nil
	}
	limit := 2 * period * 9 / 10
	worst, before := v.MinInterval+avg, f.MinInterval+avg
	switch {
	case worst < limit:
	case before >= limit:
		// Already at risk with the period it has: the period is not what endangers /healthz.
		notes = append(notes, fmt.Sprintf("kube-proxy's syncs take %v on average: a change can already wait close to 2 × syncPeriod (%v) whatever the period",
			avg.Round(time.Millisecond), 2*period))
	case !force:
		why, what := fmt.Sprintf("with syncs taking %v on average,", avg.Round(time.Millisecond)), "use --force to set it anyway"
		if obs.first {
			why = fmt.Sprintf("kube-proxy has synced once since it started, and that first sync, a full one, took %v: with syncs that long", avg.Round(time.Millisecond))
			what = "set the period again once kube-proxy has synced a change, or use --force"
		}
		return notes, fmt.Errorf("%w: %s a change could wait %v, close to 2 × syncPeriod (%v), when /healthz answers 503; %s",
			patch.ErrRefused, why, worst.Round(time.Millisecond), 2*period, what)
	}
	return notes, nil
}

// syncPeriod finds the period kube-proxy's /healthz measures against: the ≥ 1.34 runner holds it as
// retryInterval; otherwise its flags, its /configz, or the default.
func syncPeriod(pr *probe, f locate.Found) (time.Duration, string) {
	if f.RetryInterval > 0 {
		return f.RetryInterval, ""
	}
	for _, flag := range []string{"--iptables-sync-period", "--ipvs-sync-period", "--sync-period"} {
		if v, ok := kpmetrics.FlagValue(pr.p.Cmdline, flag); ok {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				return d, "from " + flag
			}
		}
	}
	if d, ok := pr.configz(); ok {
		return d, "from /configz"
	}
	return defaultSyncPeriod, "kube-proxy's default: not in its flags or /configz"
}

// observedSync is kube-proxy's average sync duration: of its partial syncs where it reports them
// (1.28+), which are what runs under churn; the first sync after a start is a full one and can take
// minutes at scale without saying much about the next. Else of all its syncs, marked when that is
// the first alone.
func observedSync(p procfs.Process) (syncs, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), configzTimeout)
	defer cancel()
	s, err := kpmetrics.ForProcess(p.PID, p.Cmdline).Scrape(ctx, kpmetrics.SyncPartialDuration, kpmetrics.SyncDuration)
	if err != nil {
		return syncs{}, false
	}
	return averageSync(s)
}

// averageSync reads the average of a scrape's sync durations, as observedSync says.
func averageSync(s kpmetrics.Snapshot) (syncs, bool) {
	n, sum := s.Histogram(kpmetrics.SyncPartialDuration)
	first := false
	if n == 0 {
		n, sum = s.Histogram(kpmetrics.SyncDuration)
		// One sync a proxier (two in dual-stack): each one's first.
		first = n > 0
		for _, m := range s.Families[kpmetrics.SyncDuration].GetMetric() {
			first = first && m.GetHistogram().GetSampleCount() <= 1
		}
	}
	if n == 0 || !(sum >= 0) || sum/float64(n) > maxSync.Seconds() {
		return syncs{}, false
	}
	return syncs{avg: time.Duration(sum / float64(n) * float64(time.Second)), first: first}, true
}

// maxSync bounds a plausible average sync: a larger one (or a negative or NaN sum) is not
// kube-proxy's, and would overflow a Duration.
const maxSync = 24 * time.Hour

// configzSyncPeriod reads syncPeriod from kube-proxy's /configz.
func configzSyncPeriod(t *target.Process) (time.Duration, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), configzTimeout)
	defer cancel()
	ps, err := t.Periods(ctx)
	return ps.Sync, err == nil && ps.Sync > 0
}
