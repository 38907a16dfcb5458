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

// syncs is what kube-proxy's metrics tell of how long its syncs take, for the proxier (two in
// dual-stack) whose syncs take longest.
type syncs struct {
	// partial is the mean of its partial syncs (1.28+), what runs under churn; before 1.28, of all
	// its syncs.
	partial time.Duration
	// full is the mean of its full syncs (1.28+): its first after a start, then one an hour, after a
	// failed sync and on a change of its Node's labels. Each rewrites every rule, and can take a
	// minute at scale; a change queued as one starts waits for it whole. 0 where not reported.
	full time.Duration
	// first: kube-proxy has synced once (each proxier), a full sync, and nothing else yet.
	first bool
}

// longest is the longest a sync can be expected to take.
func (s syncs) longest() time.Duration { return max(s.partial, s.full) }

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

// RailError is the /healthz rail's refusal of a period. Allowed is the longest period the rail
// accepts for that runner as kube-proxy's syncs take now: at most syncPeriod, and not less than the
// period the runner has where the rail accepts that one. A caller that chooses periods by itself
// (the agent) can hold it rather than ask again.
type RailError struct {
	Allowed time.Duration
	Err     error // wraps patch.ErrRefused
}

func (e *RailError) Error() string { return e.Err.Error() }
func (e *RailError) Unwrap() error { return e.Err }

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
	// A change queued as a sync starts waits for it, then for the period, then for the next sync,
	// which may be a full one: /healthz counts that wait against 2 × syncPeriod.
	obs, known := pr.avg()
	longest := obs.longest()
	limit := 2 * period * 9 / 10
	worst, before := v.MinInterval+longest, f.MinInterval+longest
	allowed := period
	if known && before < limit {
		allowed = min(allowed, max(below(limit-longest), f.MinInterval))
	}
	if v.MinInterval > period {
		if !force {
			return notes, &RailError{Allowed: allowed, Err: fmt.Errorf("%w: minimum sync period %v is longer than kube-proxy's syncPeriod %v: kube-proxy itself refuses that configuration, and a queued change could wait past 2 × syncPeriod, when /healthz answers 503 and load balancers drain the node; %v is the longest period allowed; use --force to set it anyway",
				patch.ErrRefused, v.MinInterval, period, allowed)}
		}
		notes = append(notes, "forced past syncPeriod")
	}
	if !known {
		return append(notes, "kube-proxy's sync duration could not be read from its metrics: the /healthz rail checked the period alone"), nil
	}
	what := fmt.Sprintf("kube-proxy's syncs take %v on average", longest.Round(time.Millisecond))
	switch {
	case obs.first:
		what = fmt.Sprintf("kube-proxy's first sync after its start took %v, a full one like those it runs every hour, after a failed sync and when its Node's labels change", longest.Round(time.Millisecond))
	case obs.full >= obs.partial:
		what = fmt.Sprintf("kube-proxy's full syncs (every hour, after a failed sync, when its Node's labels change) take %v on average", longest.Round(time.Millisecond))
	}
	// The syncPeriod under which /healthz would hold: worst < 2 × syncPeriod × 0.9.
	wants := (worst*10/18 + time.Second).Truncate(time.Second)
	switch {
	case worst < limit:
	case before >= limit:
		// Already at risk with the period it has: the period is not what endangers /healthz.
		notes = append(notes, fmt.Sprintf("%s: with its period of %v a change can already wait %v, close to 2 × syncPeriod (%v); a syncPeriod of %v or more keeps /healthz answering 200",
			what, f.MinInterval, before.Round(time.Millisecond), 2*period, wants))
	case !force:
		return notes, &RailError{Allowed: allowed, Err: fmt.Errorf("%w: %s: a change could wait %v, close to 2 × syncPeriod (%v), when /healthz answers 503 and load balancers drain the node; %v is the longest period allowed; give kube-proxy a syncPeriod of %v or more, or use --force",
			patch.ErrRefused, what, worst.Round(time.Millisecond), 2*period, allowed, wants)}
	default:
		notes = append(notes, fmt.Sprintf("forced past the /healthz rail: %s, and a change could wait %v", what, worst.Round(time.Millisecond)))
	}
	return notes, nil
}

// below is the longest period shorter than d, in whole seconds from 1s, else in tenths.
func below(d time.Duration) time.Duration {
	d -= time.Nanosecond
	if d >= time.Second {
		return d.Truncate(time.Second)
	}
	return max(d.Truncate(100*time.Millisecond), 0)
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

// observedSync reads how long kube-proxy's syncs take, from its metrics.
func observedSync(p procfs.Process) (syncs, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), configzTimeout)
	defer cancel()
	s, err := kpmetrics.ForProcess(p.PID, p.Cmdline).Scrape(ctx, kpmetrics.SyncPartialDuration, kpmetrics.SyncFullDuration, kpmetrics.SyncDuration)
	if err != nil {
		return syncs{}, false
	}
	return averageSync(s)
}

// averageSync reads a scrape's sync durations, as syncs holds them: each proxier's partial and full
// syncs apart where kube-proxy reports them (1.28+), else all its syncs as partial ones, and of the
// proxiers the longest. A sum that is negative, NaN or past maxSync makes it unreadable.
func averageSync(s kpmetrics.Snapshot) (syncs, bool) {
	all := s.ByFamily(kpmetrics.SyncDuration)
	partial, full := s.ByFamily(kpmetrics.SyncPartialDuration), s.ByFamily(kpmetrics.SyncFullDuration)
	mean := func(h kpmetrics.Sums) (time.Duration, bool) {
		if !(h.Sum >= 0) || h.Mean() > maxSync.Seconds() {
			return 0, false
		}
		return time.Duration(h.Mean() * float64(time.Second)), true
	}
	var out syncs
	n := uint64(0)
	out.first = true
	for family, h := range all {
		p, f := partial[family], full[family]
		if p.Count == 0 && f.Count == 0 {
			p = h // before 1.28, or no sync yet
		}
		pm, ok1 := mean(p)
		fm, ok2 := mean(f)
		if !ok1 || !ok2 {
			return syncs{}, false
		}
		out.partial, out.full = max(out.partial, pm), max(out.full, fm)
		n += h.Count
		out.first = out.first && h.Count <= 1 // one sync a proxier: each one's first
	}
	if n == 0 {
		return syncs{}, false
	}
	return out, true
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
