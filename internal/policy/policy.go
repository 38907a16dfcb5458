// Package policy chooses a kube-proxy's minimum sync period.
//
// Static holds a fixed period. Objective (objective.go) holds kube-proxy's network programming
// latency under a target with the largest period that keeps it. Adaptive follows what kube-proxy's own metrics and its CPU say: it
// keeps kube-proxy's CPU (its iptables-restore or nft children included) under a budget with the
// lowest period that allows it (the lowest latency a change can have), within a floor and a
// ceiling, moving by at most a factor per decision. Under churn kube-proxy syncs about once a
// period, so if a sync's cost did not depend on the period its CPU would be cost / period; but a
// larger period batches more changes into each sync, and the cost of a sync can grow as fast as
// the batch or faster. So the policy assumes nothing: it records what each period it tried cost
// (Inputs.Seen) and does not raise the period where a larger one was seen to cost more; over a
// budget it cannot meet, it holds the ceiling, or, where a larger period cost more, settles at the
// cheapest period seen. It falls only when the fall is worth it (hysteresis) and not to a period
// seen over budget, so that it does not flap.
package policy

import (
	"fmt"
	"math"
	"time"
)

// Inputs are what a decision is made from, measured over the window since the previous decision.
type Inputs struct {
	Window      time.Duration // the measured window
	Syncs       float64       // rule syncs run in the window
	SyncSeconds float64       // time spent syncing in the window (kube-proxy's histogram sum)
	CPUSeconds  float64       // CPU used by kube-proxy and its children in the window
	Changes     float64       // Service and endpoint changes kube-proxy received in the window
	SyncPeriod  time.Duration // kube-proxy's syncPeriod: the /healthz limit is twice it
	// Seen is what kube-proxy spent (cores) at the other periods it held lately: the response of
	// its cost to the period, which the adaptive policy does not assume.
	Seen map[time.Duration]float64
	// Latency is the quantile the policy needs (Needs.LatencyQuantile) of kube-proxy's network
	// programming latency over the window, from LatencyChanges changes (0: none measured).
	Latency        time.Duration
	LatencyChanges float64
}

// Needs say what a policy decides from.
type Needs struct {
	// Measures: kube-proxy's CPU, syncs and changes over a window (a static policy needs nothing).
	Measures bool
	// LatencyQuantile, if positive, is the quantile of kube-proxy's network programming latency the
	// policy needs (Inputs.Latency).
	LatencyQuantile float64
	// MinChanges, if positive, is how many latency samples make a window worth judging: a first
	// window (the agent's, or the first since kube-proxy was idle) is judged as soon as it holds
	// them and a period, rather than after the whole window, so that a period far from the aim is
	// not held through the busy phase that shows it.
	MinChanges float64
}

// Decision is a policy's answer.
type Decision struct {
	Period time.Duration
	Reason string
	// Objective is how the window did against a latency objective (nil without one).
	Objective *Attainment
}

// Attainment is a latency objective against one window.
type Attainment struct {
	Quantile  float64
	Objective time.Duration
	Latency   time.Duration // the quantile measured
	Changes   float64       // the changes it was measured over
	Met       *bool         // nil: too few changes to tell
}

// Policy chooses the next period from the current one and the inputs.
type Policy interface {
	Name() string
	// Needs says what Decide reads of its Inputs: where it needs nothing, kube-proxy's metrics need
	// not be read at all.
	Needs() Needs
	Decide(current time.Duration, in Inputs) Decision
}

// Static holds one period.
type Static struct{ Period time.Duration }

// Name implements Policy.
func (s Static) Name() string { return "static" }

// Needs implements Policy: a static period needs no measurement.
func (s Static) Needs() Needs { return Needs{} }

// Decide implements Policy.
func (s Static) Decide(current time.Duration, _ Inputs) Decision {
	return Decision{Period: s.Period, Reason: fmt.Sprintf("static %v", s.Period)}
}

// Adaptive keeps kube-proxy's CPU under a budget with the lowest period that allows it.
type Adaptive struct {
	Budget     float64       // cores kube-proxy may spend syncing, e.g. 0.2
	Floor      time.Duration // never below (the best latency wanted)
	Ceiling    time.Duration // never above; also kept under syncPeriod
	Hysteresis float64       // ignore changes smaller than this fraction, e.g. 0.2
	MaxStep    float64       // change by at most this factor per decision, e.g. 2
}

// Validate checks an adaptive policy's bounds.
func (a Adaptive) Validate() error {
	switch {
	case a.Budget <= 0 || a.Budget > 64:
		return fmt.Errorf("budget %v cores: must be in (0, 64]", a.Budget)
	case a.Floor <= 0:
		return fmt.Errorf("floor %v: must be positive", a.Floor)
	case a.Ceiling < a.Floor:
		return fmt.Errorf("ceiling %v is below the floor %v", a.Ceiling, a.Floor)
	case a.Hysteresis < 0 || a.Hysteresis >= 1:
		return fmt.Errorf("hysteresis %v: must be in [0, 1)", a.Hysteresis)
	case a.MaxStep < 1:
		return fmt.Errorf("max step %v: must be at least 1", a.MaxStep)
	}
	return nil
}

// Name implements Policy.
func (a Adaptive) Name() string { return "adaptive" }

// Needs implements Policy.
func (a Adaptive) Needs() Needs { return Needs{Measures: true} }

// clamper holds a period within floor and ceiling, and under kube-proxy's syncPeriod: its
// validation rejects minSyncPeriod > syncPeriod, and /healthz fails once a change waits 2 ×
// syncPeriod. Periods are kept to the millisecond.
func clamper(floor, ceiling, syncPeriod time.Duration) func(time.Duration) time.Duration {
	if syncPeriod > 0 && syncPeriod < ceiling {
		ceiling = syncPeriod
	}
	return func(d time.Duration) time.Duration {
		return min(max(d.Round(time.Millisecond), floor), max(ceiling, floor))
	}
}

// Decide implements Policy.
func (a Adaptive) Decide(current time.Duration, in Inputs) Decision {
	clamp := clamper(a.Floor, a.Ceiling, in.SyncPeriod)
	if current <= 0 {
		current = a.Floor
	}
	if in.Syncs < 1 || in.Window <= 0 {
		next := clamp(current)
		return Decision{Period: next, Reason: fmt.Sprintf("no sync in %v: keep %v", in.Window.Round(time.Second), next)}
	}
	// What kube-proxy spends: CPU where it was measured, else the time its syncs took.
	spent, source := in.SyncSeconds, "sync time"
	if in.CPUSeconds > 0 {
		spent, source = in.CPUSeconds, "CPU"
	}
	used := spent / in.Window.Seconds()
	cost := spent / in.Syncs
	// The period at which syncs of this cost fit the budget, were the cost independent of the
	// period (it is not always: see below) and kube-proxy synced once a period. A window can hold
	// more syncs than periods (its edges catch one more, or the rate limiter's burst lets one
	// through early), so the period at which the CPU used would fall to the budget bounds the fit
	// too; over budget, it lies above the current period. (Measured: kube-proxy v1.33.5 iptables at
	// 5000 Services, four syncs of 2 s of CPU in 32 s at 10.5 s: the cost of a sync alone put the fit
	// at 10 s, below the period, which read as "a larger period costs more" and halved it.)
	fit := time.Duration(max(cost/a.Budget, current.Seconds()*used/a.Budget) * float64(time.Second))
	// A sync that lasts longer than the period starts the next at once: kube-proxy syncs back to
	// back, and the period binds nothing until it exceeds a sync's length. That length is where a
	// step up starts from, and what any period up to it cost says nothing of the period's effect.
	// (Measured: kube-proxy v1.33.5 nftables at 5000 Services syncs for 3.5 s at 1s and at 2s.)
	length := time.Duration(in.SyncSeconds / in.Syncs * float64(time.Second))
	up := clamp(min(fit, time.Duration(float64(max(current, length))*a.MaxStep)))
	down := clamp(max(fit, time.Duration(float64(current)/a.MaxStep)))
	inputs := fmt.Sprintf("%.1f syncs of %v, %.0f changes in %v; %.3fs %s a sync; %.3f cores used, budget %.3f",
		in.Syncs, length.Round(time.Millisecond), in.Changes, in.Window.Round(time.Second), cost, source, used, a.Budget)
	move := func(to time.Duration, why string) Decision {
		if to == current {
			return Decision{Period: current, Reason: "keep " + current.String() + " (" + why + "): " + inputs}
		}
		return Decision{Period: to, Reason: fmt.Sprintf("%v → %v (%s): %s", current, to, why, inputs)}
	}
	if clamp(current) != current {
		return move(clamp(current), "out of bounds")
	}
	// Periods within hysteresis of the current one are not compared with it: one window's CPU
	// varies more than such periods' costs differ, and comparing them flapped the period between
	// neighbours (9.3 s and 9.6 s, measured: kube-proxy v1.33.5 iptables at 5000 Services).
	apart := func(p time.Duration) bool {
		return math.Abs(float64(p-current)) > a.Hysteresis*float64(current)
	}
	// The cheapest period seen lately, this one included.
	best, bestUsed := current, used
	for p, u := range in.Seen {
		if u < bestUsed && apart(p) {
			best, bestUsed = p, u
		}
	}
	if used > a.Budget {
		// A larger period batches more changes into each sync. Where a sync's cost grows with its
		// batch as fast as the period (or faster: measured here with Debian's iptables-nft, 0.06 s
		// of CPU a sync at 1s became 1.25 s at 9s under the same churn), raising the period saves
		// nothing; the record of what each period cost says so.
		rises := false // the cost was seen to rise with the period, where the period binds
		for p, u := range in.Seen {
			binds := current > length && p > length && apart(p)
			rises = rises || (binds && p > current && u >= used) || (binds && p < current && u < used)
		}
		switch {
		case up > current && !rises:
			return move(up, "over budget")
		case !rises:
			return move(current, "over budget, and no larger period allowed")
		case best != current:
			return move(best, "over budget, and a larger period cost more here: the cheapest period seen")
		}
		smaller := clamp(time.Duration(float64(current) / a.MaxStep))
		if _, tried := near(in.Seen, smaller); smaller < current && !tried {
			return move(smaller, "over budget, and a larger period cost more here: try a smaller one")
		}
		return move(current, "over budget at the cheapest period seen")
	}
	// Under budget: a smaller period gives changes a lower latency, unless it was seen to exceed
	// the budget, and unless the gain is within hysteresis.
	if down < current && float64(current-down) > a.Hysteresis*float64(current) {
		for p, u := range in.Seen {
			if p >= down && p < current && u > a.Budget {
				return move(current, fmt.Sprintf("%v was over budget", p))
			}
		}
		return move(down, "under budget")
	}
	return move(current, "under budget, within hysteresis")
}

// near finds a period recorded within 5 % of d.
func near(seen map[time.Duration]float64, d time.Duration) (float64, bool) {
	for p, u := range seen {
		if p > d*95/100 && p < d*105/100 {
			return u, true
		}
	}
	return 0, false
}
