// Package policy chooses a kube-proxy's minimum sync period.
//
// Static holds a fixed period. Adaptive follows what kube-proxy's own metrics and its CPU say: each
// sync costs kube-proxy (and its iptables-restore or nft children) some CPU, and under churn it
// syncs about once a period, so its CPU is about cost / period. Adaptive keeps that under a budget
// with the lowest period that allows it (the lowest latency a change can have), within a floor and a
// ceiling, moving by at most a factor per decision. It rises as soon as the CPU spent exceeds the
// budget, and falls only when the fall is worth it (hysteresis), so that it does not flap. Without
// churn a low period costs nothing, so the period only rises when the CPU actually spent says so.
package policy

import (
	"fmt"
	"time"
)

// Inputs are what a decision is made from, measured over the window since the previous decision.
type Inputs struct {
	Window       time.Duration // the measured window
	Syncs        float64       // rule syncs run in the window
	SyncSeconds  float64       // time spent syncing in the window (kube-proxy's histogram sum)
	CPUSeconds   float64       // CPU used by kube-proxy and its children in the window
	Changes      float64       // Service and endpoint changes kube-proxy received in the window
	SyncPeriod   time.Duration // kube-proxy's syncPeriod: the /healthz limit is twice it
	LatencyP50   time.Duration // network programming latency, if kube-proxy reports it (0 if not)
	ChangesQueue bool          // a change is queued and not yet synced
}

// Decision is a policy's answer.
type Decision struct {
	Period time.Duration
	Reason string
}

// Policy chooses the next period from the current one and the inputs.
type Policy interface {
	Name() string
	Decide(current time.Duration, in Inputs) Decision
}

// Static holds one period.
type Static struct{ Period time.Duration }

// Name implements Policy.
func (s Static) Name() string { return "static" }

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

// Decide implements Policy.
func (a Adaptive) Decide(current time.Duration, in Inputs) Decision {
	ceiling := a.Ceiling
	if in.SyncPeriod > 0 && in.SyncPeriod < ceiling {
		// kube-proxy's validation rejects minSyncPeriod > syncPeriod, and /healthz fails once a
		// change waits 2 × syncPeriod.
		ceiling = in.SyncPeriod
	}
	clamp := func(d time.Duration) time.Duration { return min(max(d, a.Floor), max(ceiling, a.Floor)) }
	if current <= 0 {
		current = a.Floor
	}
	if in.Syncs < 1 || in.Window <= 0 {
		next := clamp(current)
		return Decision{Period: next, Reason: fmt.Sprintf("no sync in %v: keep %v", in.Window.Round(time.Second), next)}
	}
	// What one sync costs: CPU per sync where the CPU was measured, else its wall time.
	cost := in.SyncSeconds / in.Syncs
	source := "sync time"
	if in.CPUSeconds > 0 {
		cost = in.CPUSeconds / in.Syncs
		source = "CPU"
	}
	used := cost * in.Syncs / in.Window.Seconds()
	want := time.Duration(cost / a.Budget * float64(time.Second))
	// Under the budget already at a lower period than the cost alone asks for: the churn is what
	// limits syncs, not the period, so a lower period costs nothing more.
	if used < a.Budget && want > current {
		want = current
	}
	if a.MaxStep > 1 {
		want = min(max(want, time.Duration(float64(current)/a.MaxStep)), time.Duration(float64(current)*a.MaxStep))
	}
	want = clamp(want.Round(time.Millisecond))
	inputs := fmt.Sprintf("%.1f syncs, %.0f changes in %v; %.3fs %s a sync; %.3f cores used, budget %.3f",
		in.Syncs, in.Changes, in.Window.Round(time.Second), cost, source, used, a.Budget)
	// Hysteresis only on the way down: a rise means the budget is exceeded now.
	if want < current && float64(current-want) <= a.Hysteresis*float64(current) && clamp(current) == current {
		return Decision{Period: current, Reason: "keep " + current.String() + " (within hysteresis): " + inputs}
	}
	return Decision{Period: want, Reason: fmt.Sprintf("%v → %v: %s", current, want, inputs)}
}
