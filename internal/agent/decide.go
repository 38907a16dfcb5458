package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"kptune/internal/kpmetrics"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/policy"
	"kptune/internal/procfs"
	"kptune/internal/tune"
)

// key identifies a process: its PID and start time, and its executable's device and inode, since an
// exec (runc init, or a shell's exec, turning into kube-proxy) keeps the first two.
type key struct {
	pid      int
	start    uint64
	dev, ino uint64
}

// source is what a period was chosen by.
type source string

const (
	byOverride source = "node annotation"
	byStatic   source = "static"
	byAdaptive source = "adaptive"
)

// managed is one kube-proxy and what the agent knows of it.
type managed struct {
	key        key
	proc       procfs.Process
	kp         kubeProxy
	runners    []locate.Found // as read this round
	located    bool
	syncPeriod time.Duration
	changed    bool // the agent wrote to it

	// The adaptive policy's state, reset whenever another source takes over.
	last    source // what chose the period last round
	desired time.Duration
	decided time.Time
	window  *sample
	// first: the window is the first since the agent began measuring or kube-proxy was idle, judged
	// as soon as it holds enough (policy.Needs.MinChanges).
	first bool
	seen  map[time.Duration]spent // what each period cost lately
	// idle: the last window held no sync; idleCores is what kube-proxy spent over it.
	idle      bool
	idleCores float64

	refused time.Duration
	retryAt time.Time
	// railMax is the longest period tune's /healthz rail allowed when it last refused one: the
	// agent holds its period there until railUntil rather than ask again every minute, then tries
	// the period it wants once more (kube-proxy's syncs, which the rail weighs, change).
	railMax     time.Duration
	railUntil   time.Time
	badNotice   string // the last override value warned about
	unpatchable string // the last reason a runner could not be retuned, reported once
	// A kube-proxy builds its sync runners once it reaches the API server: until they are found,
	// locating is tried every round, then less and less often.
	misses     int
	nextLocate time.Time
	gaveUp     bool // refused: forgotten at the end of the round
}

// resetAdaptive forgets what the adaptive policy measured: its windows belong to another period
// source or configuration.
func (mp *managed) resetAdaptive() {
	mp.desired, mp.decided, mp.window, mp.seen, mp.idle, mp.first = 0, time.Time{}, nil, nil, false, false
}

// tend locates, reads, decides and writes for one kube-proxy.
func (a *Agent) tend(ctx context.Context, mp *managed, now time.Time) {
	pid := strconv.Itoa(mp.proc.PID)
	located := false
	if !mp.located {
		if located = a.locate(ctx, mp, now); !located {
			return
		}
	}
	runners, err := mp.kp.read()
	if err != nil {
		mp.located = false // changed under us: locate again next round
		a.log.Info("runners to be located again", "pid", mp.proc.PID, "error", err)
		return
	}
	if located {
		a.log.Info("runners located", "pid", mp.proc.PID, "runners", len(runners), "minSyncPeriod", runners[0].MinInterval, "syncPeriod", mp.syncPeriod)
	}
	mp.runners = runners
	for _, f := range runners {
		a.m.period.WithLabelValues(pid, fmt.Sprintf("%#x", f.Address)).Set(f.MinInterval.Seconds())
	}
	for _, f := range runners {
		if !f.Patchable {
			if mp.unpatchable != f.Reason {
				mp.unpatchable = f.Reason
				a.refuse(mp.proc.PID, "unpatchable", fmt.Errorf("runner %#x cannot be retuned: %s", f.Address, f.Reason))
			}
			return
		}
	}
	mp.unpatchable = ""
	current := runners[0].MinInterval
	desired, src := a.desired(ctx, mp, current, now)
	if desired <= 0 {
		return
	}
	if desired > mp.railMax && now.Before(mp.railUntil) {
		desired = mp.railMax
	}
	a.m.desired.DeletePartialMatch(prometheus.Labels{"pid": pid})
	a.m.desired.WithLabelValues(pid, string(src)).Set(desired.Seconds())
	differs := false
	for _, r := range runners {
		differs = differs || r.MinInterval != desired
	}
	if !differs || (desired == mp.refused && now.Before(mp.retryAt)) {
		return
	}
	a.write(ctx, mp, current, desired, src, now)
}

// locate finds a kube-proxy's runners, and reports whether they were found.
func (a *Agent) locate(ctx context.Context, mp *managed, now time.Time) bool {
	if now.Before(mp.nextLocate) {
		return false
	}
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, locateTimeout)
	err := mp.kp.locate(lctx)
	cancel()
	switch {
	case (errors.Is(err, layout.ErrNoLayout) || errors.Is(err, locate.ErrScanLimit)) && mp.kp.alive():
		// What its binary declares, or what it maps, is beyond any kube-proxy: for good.
		a.refuse(mp.proc.PID, "locate", err)
		mp.gaveUp = true
		return false
	case err != nil:
		// A kube-proxy builds its proxiers once it reaches the API server (no runner yet), and
		// reading a live process can fail for a moment: try again.
		mp.misses++
		mp.nextLocate = now.Add(locateBackoff(mp.misses, a.o.Interval))
		a.log.Debug("runners not found yet", "pid", mp.proc.PID, "error", err, "next", mp.nextLocate)
		return false
	}
	a.m.locate.Observe(time.Since(start).Seconds())
	mp.located, mp.misses = true, 0
	mp.syncPeriod = mp.kp.syncPeriod(ctx)
	return true
}

// locateTimeout bounds one search for a kube-proxy's runners (230 ms at 5000 Services).
const locateTimeout = 20 * time.Second

// locateBackoff is the wait before the next search for the runners of a kube-proxy in which misses
// searches found none: every round for the first five (a kube-proxy that is starting), then twice as
// long each time, up to two minutes (a process that passes for a kube-proxy and never holds one).
func locateBackoff(misses int, interval time.Duration) time.Duration {
	if misses <= 5 {
		return 0
	}
	return min(interval<<min(misses-5, 16), 2*time.Minute)
}

// desired is the period the node's override or the policy asks for (0: no decision yet).
func (a *Agent) desired(ctx context.Context, mp *managed, current time.Duration, now time.Time) (time.Duration, source) {
	src, d := a.choose(ctx, mp, current, now)
	mp.last = src
	return d, src
}

func (a *Agent) choose(ctx context.Context, mp *managed, current time.Duration, now time.Time) (source, time.Duration) {
	if v, ok := a.kube.override(); ok {
		if d, ok := a.override(mp, v); ok {
			return byOverride, d
		}
	}
	if !a.pol.Needs().Measures {
		return byStatic, a.pol.Decide(current, policy.Inputs{}).Period
	}
	if mp.last != byAdaptive {
		// Entering the policy's hands (at the start, or after the node's override): what it
		// measured before belongs to other periods.
		mp.resetAdaptive()
	}
	return byAdaptive, a.adapt(ctx, mp, current, now)
}

// adapt is the measuring policy's period: the one decided last until a window has passed, then a
// new decision from what kube-proxy spent over it.
func (a *Agent) adapt(ctx context.Context, mp *managed, current time.Duration, now time.Time) time.Duration {
	needs := a.pol.Needs()
	if mp.window == nil {
		if s, err := a.node.sampler.sample(ctx, mp.proc); err == nil {
			mp.window, mp.decided, mp.first = &s, now, true
		}
		return mp.desired
	}
	// A window of at least three periods: over fewer, syncs (and their CPU) arrive in lumps. A
	// latency objective is judged on one: the changes measured make the window, and a missed
	// objective is not to wait three long periods. A first window is judged as soon as it holds a
	// period and the changes the policy needs: the period it starts at (kube-proxy's own, or the one
	// held through a quiet spell) may be far from the one the load wants.
	periods := time.Duration(3)
	if needs.LatencyQuantile > 0 {
		periods = 1
	}
	elapsed := now.Sub(mp.decided)
	whole := elapsed >= max(a.cfg.DecideEvery.Duration, periods*current)
	early := mp.first && needs.MinChanges > 0 && elapsed >= current
	if !whole && !early {
		return mp.desired
	}
	if mp.idle {
		// kube-proxy synced nothing in the last window. Reading its metrics costs it CPU (as much as
		// everything else it does at rest), so they are read again only once its CPU rises, or
		// maxIdle after the last reading.
		cpu, err := a.node.sampler.cpu(mp.proc.PID)
		busy := err == nil && !stillIdle(mp.idleCores, cpu-mp.window.cpu, now.Sub(mp.window.at))
		if !busy && now.Sub(mp.decided) < max(maxIdle, a.cfg.DecideEvery.Duration) {
			return mp.desired
		}
		if busy {
			// The window since the last reading is mostly idle and would understate what the period
			// costs now: a fresh one starts here.
			if s, err := a.node.sampler.sample(ctx, mp.proc); err == nil {
				mp.window, mp.decided, mp.idle, mp.first = &s, now, false, true
				a.log.Info("kube-proxy is busy again", "pid", mp.proc.PID)
			}
			return mp.desired
		}
	}
	s, err := a.node.sampler.sample(ctx, mp.proc)
	if err != nil {
		a.log.Warn("read kube-proxy's metrics", "pid", mp.proc.PID, "error", err)
		return mp.desired
	}
	in := s.inputs(*mp.window, mp.syncPeriod, needs.LatencyQuantile)
	if !whole && in.LatencyChanges < needs.MinChanges {
		return mp.desired // a first window without enough changes yet: it goes on
	}
	in.Seen = mp.recall(current, now, 20*a.cfg.DecideEvery.Duration)
	d := a.pol.Decide(current, in)
	if in.Syncs >= 1 {
		mp.remember(current, in, now)
	}
	pid := strconv.Itoa(mp.proc.PID)
	a.m.cpu.WithLabelValues(pid).Set(in.CPUSeconds / in.Window.Seconds())
	a.m.changes.WithLabelValues(pid).Set(in.Changes / in.Window.Seconds())
	if in.Syncs > 0 {
		a.m.syncCost.WithLabelValues(pid).Set(in.CPUSeconds / in.Syncs)
	}
	if o := d.Objective; o != nil && o.Met != nil {
		a.m.latency.WithLabelValues(pid, strconv.FormatFloat(o.Quantile, 'g', -1, 64)).Set(o.Latency.Seconds())
		met := 0.0
		if *o.Met {
			met = 1
		}
		a.m.objectiveMet.WithLabelValues(pid).Set(met)
	}
	a.log.Info("decision", "pid", mp.proc.PID, "policy", a.pol.Name(), "current", current, "next", d.Period, "reason", d.Reason)
	if in.Syncs < 1 {
		if !mp.idle {
			a.log.Info("kube-proxy is idle: its metrics are read again when its CPU rises, or in a minute", "pid", mp.proc.PID)
		}
		mp.idle, mp.idleCores = true, in.CPUSeconds/in.Window.Seconds()
	} else {
		mp.idle = false
	}
	mp.window, mp.decided, mp.desired, mp.first = &s, now, d.Period, false
	return d.Period
}

// override reads the node's annotation value v: a period clamped to the configuration's floor and
// ceiling, since whoever may patch the Node sets it (a node's kubelet may patch its own Node). A value
// that is not a positive duration is ignored; one outside the bounds is held at the nearest. Either
// is reported once (log, Event, metric).
func (a *Agent) override(mp *managed, v string) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	floor, ceiling := a.cfg.Floor.Duration, a.cfg.Ceiling.Duration
	notice := func(reason, format string, args ...any) {
		if mp.badNotice == v {
			return
		}
		mp.badNotice = v
		a.m.overrides.WithLabelValues(reason).Inc()
		msg := fmt.Sprintf(format, args...)
		a.log.Warn("the node's override is "+reason, "annotation", Annotation, "value", v, "detail", msg)
		a.kube.event(corev1.EventTypeWarning, "InvalidOverride", "%s=%q %s", Annotation, v, msg)
	}
	switch {
	case err != nil || d <= 0:
		notice("ignored", "is not a positive duration: ignored")
		return 0, false
	case d < floor:
		notice("clamped", "is below the floor %v: %v is held", floor, floor)
		return floor, true
	case d > ceiling:
		notice("clamped", "is above the ceiling %v: %v is held", ceiling, ceiling)
		return ceiling, true
	}
	mp.badNotice = ""
	return d, true
}

// maxIdle is the longest an idle kube-proxy's metrics go unread.
const maxIdle = time.Minute

// stillIdle reports whether kube-proxy, which spent idle cores over its last window without a sync,
// has spent (spent over elapsed) no more since than that rate twice over and two clock ticks, the
// grain of the kernel's CPU accounting. A sync at scale costs far more; the syncs of a small cluster
// may cost less, and wait at most maxIdle to be seen: what they cost is negligible, and the period
// held meanwhile is the one chosen before the cluster went quiet.
func stillIdle(idle float64, spent, elapsed time.Duration) bool {
	const tick = 10 * time.Millisecond
	return spent <= time.Duration(2*idle*float64(elapsed))+2*tick
}

// write sets the period; a refused or failed write is tried again after retryAfter.
func (a *Agent) write(ctx context.Context, mp *managed, current, desired time.Duration, src source, now time.Time) {
	stopped, err := mp.kp.set(ctx, desired)
	if err != nil {
		mp.refused, mp.retryAt = desired, now.Add(retryAfter)
		a.m.refusals.WithLabelValues("set").Inc()
		attrs := []any{"pid", mp.proc.PID, "from", current, "to", desired, "source", src, "error", err}
		var re *tune.RailError
		held := ""
		if errors.As(err, &re) && re.Allowed > 0 && re.Allowed < desired {
			// The rail named what it allows: that is written next round, and held for railHold.
			mp.railMax, mp.railUntil = re.Allowed, now.Add(railHold)
			held = fmt.Sprintf("; %v, the longest the /healthz rail allows, is held for %v", re.Allowed, railHold)
			attrs = append(attrs, "held", re.Allowed, "for", railHold)
		}
		a.log.Warn("period not set", attrs...)
		a.kube.event(corev1.EventTypeWarning, "MinSyncPeriodRefused", "kube-proxy pid %d: %v → %v (%s) not written: %v%s", mp.proc.PID, current, desired, src, err, held)
		return
	}
	mp.changed, mp.refused = true, 0
	a.m.writes.WithLabelValues("set").Inc()
	if stopped > 0 {
		a.m.stop.Observe(stopped.Seconds())
	}
	for i := range mp.runners {
		mp.runners[i].MinInterval = desired
	}
	a.kube.event(corev1.EventTypeNormal, "MinSyncPeriodSet", "kube-proxy pid %d: minimum sync period %v → %v (%s)", mp.proc.PID, current, desired, src)
}

// railHold is how long the agent holds the period the /healthz rail allowed after refusing a longer
// one, before it asks for the longer one again.
const railHold = 10 * time.Minute

// spent is what kube-proxy spent, in cores, at one period.
type spent struct {
	cores float64
	at    time.Time
}

// remember records what the current period cost over the window (blended with what it cost before).
func (mp *managed) remember(period time.Duration, in policy.Inputs, now time.Time) {
	if mp.seen == nil {
		mp.seen = map[time.Duration]spent{}
	}
	used := in.CPUSeconds / in.Window.Seconds()
	if in.CPUSeconds <= 0 {
		used = in.SyncSeconds / in.Window.Seconds()
	}
	if old, ok := mp.seen[period]; ok {
		used = (used + old.cores) / 2
	}
	mp.seen[period] = spent{cores: used, at: now}
}

// recall returns what the other periods cost, forgetting what is older than maxAge: churn changes.
func (mp *managed) recall(current time.Duration, now time.Time, maxAge time.Duration) map[time.Duration]float64 {
	out := map[time.Duration]float64{}
	for p, s := range mp.seen {
		switch {
		case now.Sub(s.at) > maxAge:
			delete(mp.seen, p)
		case p != current:
			out[p] = s.cores
		}
	}
	return out
}

// inputs are the policy's inputs over the window from prev to s, with the latency's quantile q
// where q is positive.
func (s sample) inputs(prev sample, syncPeriod time.Duration, q float64) policy.Inputs {
	in := policy.Inputs{
		Window: s.at.Sub(prev.at), Syncs: float64(s.syncs - prev.syncs), SyncSeconds: s.syncSum - prev.syncSum,
		CPUSeconds: (s.cpu - prev.cpu).Seconds(), Changes: s.changes - prev.changes, SyncPeriod: syncPeriod,
	}
	if q > 0 {
		if v := kpmetrics.Quantile(q, prev.latency, s.latency); !math.IsNaN(v) {
			in.Latency = time.Duration(v * float64(time.Second))
			in.LatencyChanges = float64(kpmetrics.Count(prev.latency, s.latency))
		}
	}
	return in
}
