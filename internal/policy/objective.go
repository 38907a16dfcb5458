package policy

import (
	"fmt"
	"math"
	"time"
)

// Prefer says which of a latency objective and a CPU budget wins where both cannot be met.
type Prefer string

const (
	PreferObjective Prefer = "objective" // hold the period that meets the objective, whatever it costs
	PreferBudget    Prefer = "budget"    // raise the period to fit the budget, whatever the latency
)

// Objective holds kube-proxy's network programming latency, the time from a Service or endpoint
// change to the rules that carry it as kube-proxy itself measures it
// (kubeproxy_network_programming_duration_seconds), at a quantile under a target, with the largest
// period that keeps it there: the least CPU that meets the objective. It aims a margin under the
// target, so that one window's noise does not miss it.
//
// The model it decides with: under churn a change waits for the next sync, up to a period, then for
// the sync itself, so the latency's quantile q is about Quantile × period plus what does not depend
// on the period (the sync's length, the API server's and informers' delays). It estimates that rest
// from the window (q − Quantile × current) and moves to the period that would put q at the aim: down
// at once when the objective is missed (changes are late now), up by at most MaxStep a decision and
// only past hysteresis. Where syncs run back to back (a sync lasts longer than the period) a smaller
// period cannot help, and it says so. A window with too few changes to measure the quantile keeps
// the period: a quiet cluster spends little CPU whatever its period, and keeping the period that
// met the objective under load meets it again when the load returns.
//
// With a Budget too, the period the objective allows is kept unless kube-proxy spends more than the
// budget there; then Prefer decides: the objective (default) keeps the period, the budget raises it
// as the adaptive policy would.
type Objective struct {
	Latency    time.Duration // the objective: the quantile of the latency at most this, e.g. 10s
	Quantile   float64       // e.g. 0.99
	Margin     float64       // aim this fraction under Latency, e.g. 0.2
	MinChanges float64       // changes a window needs for its quantile to count, e.g. 20
	Budget     float64       // cores; 0: no budget
	Prefer     Prefer
	Floor      time.Duration
	Ceiling    time.Duration // also kept under syncPeriod
	Hysteresis float64
	MaxStep    float64
}

// Validate checks the objective and its bounds.
func (o Objective) Validate() error {
	switch {
	case o.Latency <= 0:
		return fmt.Errorf("latency objective %v: must be positive", o.Latency)
	case !(o.Quantile > 0 && o.Quantile < 1):
		return fmt.Errorf("latency quantile %v: must be in (0, 1), e.g. 0.99", o.Quantile)
	case o.Margin < 0 || o.Margin >= 1:
		return fmt.Errorf("margin %v: must be in [0, 1)", o.Margin)
	case o.MinChanges < 1:
		return fmt.Errorf("minimum changes %v: must be at least 1", o.MinChanges)
	case o.Budget < 0 || o.Budget > 64:
		return fmt.Errorf("budget %v cores: must be in [0, 64] (0: none)", o.Budget)
	case o.Prefer != PreferObjective && o.Prefer != PreferBudget:
		return fmt.Errorf("prefer %q: use objective or budget", o.Prefer)
	}
	return Adaptive{Budget: 1, Floor: o.Floor, Ceiling: o.Ceiling, Hysteresis: o.Hysteresis, MaxStep: o.MaxStep}.Validate()
}

// Name implements Policy.
func (o Objective) Name() string { return "objective" }

// Needs implements Policy.
func (o Objective) Needs() Needs {
	return Needs{Measures: true, LatencyQuantile: o.Quantile, MinChanges: o.MinChanges}
}

// Decide implements Policy.
func (o Objective) Decide(current time.Duration, in Inputs) Decision {
	clamp := clamper(o.Floor, o.Ceiling, in.SyncPeriod)
	if current <= 0 {
		current = o.Floor
	}
	aim := time.Duration(float64(o.Latency) * (1 - o.Margin))
	att := &Attainment{Quantile: o.Quantile, Objective: o.Latency, Changes: in.LatencyChanges, Latency: in.Latency}
	used := 0.0
	if in.Window > 0 {
		used = in.CPUSeconds / in.Window.Seconds()
	}
	length := time.Duration(0)
	if in.Syncs >= 1 {
		length = time.Duration(in.SyncSeconds / in.Syncs * float64(time.Second))
	}
	inputs := fmt.Sprintf("p%g %v over %.0f changes in %v (objective %v, aim %v); %.1f syncs of %v; %.3f cores used",
		o.Quantile*100, in.Latency.Round(10*time.Millisecond), in.LatencyChanges, in.Window.Round(time.Second), o.Latency, aim.Round(10*time.Millisecond),
		in.Syncs, length.Round(time.Millisecond), used)
	if o.Budget > 0 {
		inputs += fmt.Sprintf(", budget %.3f", o.Budget)
	}
	move := func(to time.Duration, why string) Decision {
		d := Decision{Period: to, Objective: att}
		if to == current {
			d.Reason = "keep " + current.String() + " (" + why + "): " + inputs
		} else {
			d.Reason = fmt.Sprintf("%v → %v (%s): %s", current, to, why, inputs)
		}
		return d
	}
	if clamp(current) != current {
		return move(clamp(current), "out of bounds")
	}
	if in.LatencyChanges < o.MinChanges {
		// Too few changes to judge: nothing to program hardly, and little CPU spent whatever the
		// period.
		return o.budget(current, used, clamp, move(current, "too few changes to measure the objective"))
	}
	met := in.Latency <= o.Latency
	att.Met = &met
	// What the latency holds besides the wait for a sync, at least a sync's length.
	rest := max(in.Latency-time.Duration(o.Quantile*float64(current)), length, 0)
	target := time.Duration(float64(aim-rest) / o.Quantile)
	switch {
	case in.Latency > aim && target < current && length >= current:
		// Syncs run back to back: the period binds nothing, and a smaller one cannot help.
		return o.budget(current, used, clamp, move(current, fmt.Sprintf("syncs of %v run back to back: a smaller period cannot bring the latency down", length.Round(time.Millisecond))))
	case !met && target < current:
		return o.budget(current, used, clamp, move(clamp(target), "objective missed"))
	case in.Latency > aim && target < current && float64(current-target) > o.Hysteresis*float64(current):
		return o.budget(current, used, clamp, move(clamp(target), "above the aim"))
	case in.Latency <= aim && target > current && float64(target-current) > o.Hysteresis*float64(current):
		up := clamp(min(target, time.Duration(float64(max(current, length))*o.MaxStep)))
		if up == current {
			return o.budget(current, used, clamp, move(current, "under the aim, at the ceiling"))
		}
		return move(up, "under the aim: a larger period, less CPU")
	case in.Latency <= aim && target <= current:
		// The latency is under the aim by more than the period explains: changes find a sync ready
		// (they come seldom, or in bursts the period does not delay). Nothing to gain either way.
		return o.budget(current, used, clamp, move(current, "under the aim, the period not binding"))
	}
	return o.budget(current, used, clamp, move(current, "at the aim, within hysteresis"))
}

// budget applies the budget to a decision that does not raise the period: over budget, the budget
// raises it if preferred; otherwise the decision stands, saying that the objective won.
func (o Objective) budget(current time.Duration, used float64, clamp func(time.Duration) time.Duration, d Decision) Decision {
	if o.Budget <= 0 || used <= o.Budget || d.Period > current {
		return d
	}
	if o.Prefer == PreferBudget {
		up := clamp(time.Duration(float64(current) * math.Min(o.MaxStep, used/o.Budget)))
		if up > current {
			d.Reason = fmt.Sprintf("%v → %v (over budget, and the budget is preferred to the objective); was: %s", current, up, d.Reason)
			d.Period = up
			return d
		}
	}
	d.Reason += "; over budget: the objective wins"
	return d
}
