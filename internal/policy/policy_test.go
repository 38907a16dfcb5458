package policy

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

var adaptive = Adaptive{Budget: 0.2, Floor: time.Second, Ceiling: 30 * time.Second, Hysteresis: 0.2, MaxStep: 2}

// churn models kube-proxy under heavy churn at period p for a window: it syncs once a period, each
// sync costing cost seconds of CPU.
func churn(p time.Duration, cost float64, window time.Duration) Inputs {
	syncs := window.Seconds() / p.Seconds()
	return Inputs{Window: window, Syncs: syncs, SyncSeconds: syncs * cost * 0.8, CPUSeconds: syncs * cost, Changes: 50 * window.Seconds(), SyncPeriod: 30 * time.Second}
}

func TestAdaptive(t *testing.T) {
	if err := adaptive.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		current time.Duration
		in      Inputs
		want    time.Duration
	}{
		// 1s costs 0.5 cores with 0.5s syncs: 2.5s would fit 0.2 cores; at most ×2 a step.
		{"over budget: up, by at most the step", time.Second, churn(time.Second, 0.5, time.Minute), 2 * time.Second},
		{"over budget, second step reaches the answer", 2 * time.Second, churn(2*time.Second, 0.5, time.Minute), 2500 * time.Millisecond},
		{"cheap syncs: down to what the budget allows", 10 * time.Second, churn(10*time.Second, 0.6, time.Minute), 5 * time.Second},
		{"cheap syncs: never below the floor", 2 * time.Second, churn(2*time.Second, 0.01, time.Minute), time.Second},
		{"a fall within hysteresis: keep", 2 * time.Second, churn(2*time.Second, 0.36, time.Minute), 2 * time.Second},
		{"a rise within hysteresis: over budget, so rise", 2 * time.Second, churn(2*time.Second, 0.44, time.Minute), 2200 * time.Millisecond},
		{"quiet: keep", 5 * time.Second, Inputs{Window: time.Minute, SyncPeriod: 30 * time.Second}, 5 * time.Second},
		{"churn-limited and under budget: do not raise", time.Second,
			Inputs{Window: time.Minute, Syncs: 6, CPUSeconds: 6, SyncPeriod: 30 * time.Second}, time.Second},
		{"expensive syncs: never above syncPeriod", 20 * time.Second,
			Inputs{Window: time.Minute, Syncs: 3, CPUSeconds: 60, SyncPeriod: 25 * time.Second}, 25 * time.Second},
		{"a period out of bounds is brought in even within hysteresis", 40 * time.Second,
			Inputs{Window: time.Minute, Syncs: 1, CPUSeconds: 7.5, SyncPeriod: 30 * time.Second}, 30 * time.Second},
		{"no CPU measured: sync time is the cost", time.Second,
			Inputs{Window: time.Minute, Syncs: 60, SyncSeconds: 30, SyncPeriod: 30 * time.Second}, 2 * time.Second},
		{"over budget, a larger period cost more: back to the cheapest seen", 2 * time.Second,
			withSeen(churn(2*time.Second, 0.44, time.Minute), map[time.Duration]float64{time.Second: 0.06}), time.Second},
		{"over budget at the cheapest, a larger one cost more: try a smaller one", 4 * time.Second,
			withSeen(churn(4*time.Second, 1.2, time.Minute), map[time.Duration]float64{8 * time.Second: 0.5}), 2 * time.Second},
		{"over budget at the floor, a larger period cost more: keep", time.Second,
			withSeen(churn(time.Second, 0.3, time.Minute), map[time.Duration]float64{2 * time.Second: 0.5}), time.Second},
		// kube-proxy v1.33.5 nftables at 5000 Services under 10 changes/s: 3.5 s syncs back to back at
		// 500ms, 1s and 2s alike, so those periods cost the same: no sign that a larger period costs
		// more. Up from the sync's length, by at most the step.
		{"syncs back to back: up from a sync's length", time.Second,
			withSeen(Inputs{Window: 11 * time.Second, Syncs: 3, SyncSeconds: 10.5, CPUSeconds: 10.3, SyncPeriod: 30 * time.Second},
				map[time.Duration]float64{500 * time.Millisecond: 0.91, 2 * time.Second: 0.97}), 7 * time.Second},
		{"the period binds: what periods below a sync's length cost says nothing", 7 * time.Second,
			withSeen(Inputs{Window: 21 * time.Second, Syncs: 3, SyncSeconds: 12, CPUSeconds: 10.5, SyncPeriod: 30 * time.Second},
				map[time.Duration]float64{time.Second: 0.94, 2 * time.Second: 0.97}), 14 * time.Second},
		// kube-proxy v1.33.5 iptables at 5000 Services under 50 changes/s, the agent's own inputs: the
		// neighbour 9.317s cost less in one window, by less than windows vary. Not a reason to go
		// back to it, nor a sign that a larger period costs more: rise to what fits the budget.
		{"over budget, a neighbour within hysteresis cost less: not compared", 9583 * time.Millisecond,
			withSeen(Inputs{Window: 29 * time.Second, Syncs: 3, SyncSeconds: 6.39, CPUSeconds: 6.27, Changes: 293, SyncPeriod: 30 * time.Second},
				map[time.Duration]float64{9317 * time.Millisecond: 0.205, 6286 * time.Millisecond: 0.294, 3143 * time.Millisecond: 0.59}), 10450 * time.Millisecond},
		// The same, under 1 change/s: four syncs in a 32 s window at 10.483s (one more than periods),
		// 2 s of CPU each, so the cost per sync fits the budget at 10 s, below the period, while the
		// period used 0.25 cores. The CPU used is what must fit: rise by its excess, not halve.
		{"over budget, more than a sync a period: up by the excess", 10483 * time.Millisecond,
			withSeen(Inputs{Window: 32 * time.Second, Syncs: 4, SyncSeconds: 7.81, CPUSeconds: 8, Changes: 35, SyncPeriod: 30 * time.Second},
				map[time.Duration]float64{7704 * time.Millisecond: 0.262, 3852 * time.Millisecond: 0.69, time.Second: 0.902}), 13104 * time.Millisecond},
		{"over budget at the ceiling, no larger period cost more: keep", 30 * time.Second,
			churn(30*time.Second, 12, time.Minute), 30 * time.Second},
		{"under budget, the smaller period was over budget: keep", 4 * time.Second,
			withSeen(churn(4*time.Second, 0.4, time.Minute), map[time.Duration]float64{2 * time.Second: 0.3}), 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := adaptive.Decide(tc.current, tc.in)
			if d.Period != tc.want {
				t.Errorf("Decide(%v) = %v (%s), want %v", tc.current, d.Period, d.Reason, tc.want)
			}
			if d.Reason == "" {
				t.Error("a decision without its reason")
			}
		})
	}
}

func withSeen(in Inputs, seen map[time.Duration]float64) Inputs {
	in.Seen = seen
	return in
}

// converge runs the policy against a model of kube-proxy, recording what each period cost as the
// agent does, and returns the period it settles at and the trail.
func converge(model func(time.Duration) float64) (time.Duration, []string) {
	p := time.Second
	seen := map[time.Duration]float64{}
	var trail []string
	for i := 0; i < 16; i++ {
		in := churn(p, model(p)*p.Seconds(), time.Minute) // cores × period = CPU a sync
		in.Seen = map[time.Duration]float64{}
		for q, u := range seen {
			if q != p {
				in.Seen[q] = u
			}
		}
		seen[p] = model(p)
		d := adaptive.Decide(p, in)
		trail = append(trail, d.Period.String())
		p = d.Period
	}
	return p, trail
}

// TestAdaptiveWhereALargerPeriodCostsMore: where kube-proxy's CPU grows with the period (a sync's
// cost growing faster than its batch), the policy tries a larger period once, sees it cost more,
// and settles at the cheapest: the floor. Where it falls as 1/period, it settles where it fits.
func TestAdaptiveWhereALargerPeriodCostsMore(t *testing.T) {
	growing := func(p time.Duration) float64 { return 0.06 * p.Seconds() } // 0.06 cores at 1s, 0.12 at 2s …
	p, trail := converge(growing)
	if p != adaptive.Floor {
		t.Errorf("settled at %v, want the floor %v: %s", p, adaptive.Floor, strings.Join(trail, " "))
	}
	if tries := strings.Count(strings.Join(trail, " "), "2s"); tries > 2 {
		t.Errorf("tried 2s %d times: %s", tries, strings.Join(trail, " "))
	}
	falling := func(p time.Duration) float64 { return 0.9 / p.Seconds() }
	if p, trail := converge(falling); p != 4500*time.Millisecond {
		t.Errorf("with CPU falling as 1/period, settled at %v, want 4.5s: %s", p, strings.Join(trail, " "))
	}
}

// TestAdaptiveConverges: under steady churn it settles where the CPU fits the budget, and stays.
func TestAdaptiveConverges(t *testing.T) {
	const cost = 0.9 // seconds of CPU a sync
	p := time.Second
	var trail []string
	for i := 0; i < 12; i++ {
		d := adaptive.Decide(p, churn(p, cost, time.Minute))
		trail = append(trail, d.Period.String())
		p = d.Period
	}
	if want := time.Duration(cost / adaptive.Budget * float64(time.Second)); p != want {
		t.Errorf("settled at %v, want %v: %s", p, want, strings.Join(trail, " "))
	}
	if used := cost / p.Seconds(); used > adaptive.Budget*1.0001 {
		t.Errorf("settled over budget: %.3f cores", used)
	}
}

func TestValidate(t *testing.T) {
	for _, bad := range []Adaptive{
		{Budget: 0, Floor: time.Second, Ceiling: time.Minute, MaxStep: 2},
		{Budget: 0.2, Floor: 0, Ceiling: time.Minute, MaxStep: 2},
		{Budget: 0.2, Floor: time.Minute, Ceiling: time.Second, MaxStep: 2},
		{Budget: 0.2, Floor: time.Second, Ceiling: time.Minute, Hysteresis: 1, MaxStep: 2},
		{Budget: 0.2, Floor: time.Second, Ceiling: time.Minute, MaxStep: 0.5},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestStatic(t *testing.T) {
	if d := (Static{Period: 3 * time.Second}).Decide(time.Second, Inputs{}); d.Period != 3*time.Second {
		t.Errorf("static: %v", d.Period)
	}
}

var objective = Objective{Latency: 10 * time.Second, Quantile: 0.99, Margin: 0.2, MinChanges: 20, Prefer: PreferObjective,
	Floor: time.Second, Ceiling: 30 * time.Second, Hysteresis: 0.2, MaxStep: 2}

// loaded models kube-proxy under churn at period p for a minute: syncs of length sync, each change
// waiting for the next sync (up to a period) then the sync and delay more: its p99 is 0.99 p +
// sync + delay.
func loaded(p, sync, delay time.Duration, cores float64) Inputs {
	window := time.Minute
	syncs := window.Seconds() / max(p, sync).Seconds()
	return Inputs{Window: window, Syncs: syncs, SyncSeconds: syncs * sync.Seconds(), CPUSeconds: cores * window.Seconds(),
		Changes: 600, SyncPeriod: 30 * time.Second, Latency: time.Duration(0.99*float64(p)) + sync + delay, LatencyChanges: 600}
}

func TestObjective(t *testing.T) {
	if err := objective.Validate(); err != nil {
		t.Fatal(err)
	}
	ms := time.Millisecond
	budget := func(o Objective, b float64, p Prefer) Objective { o.Budget, o.Prefer = b, p; return o }
	few := loaded(5*time.Second, 500*ms, 200*ms, 0.1)
	few.LatencyChanges = 5
	for _, tc := range []struct {
		name    string
		o       Objective
		current time.Duration
		in      Inputs
		want    time.Duration
		met     string // "true", "false", "nil"
		reason  string
	}{
		// The aim is 8s: the rest is 0.7 s, so the period that puts p99 at 8s is (8 - 0.7) / 0.99.
		{"under the aim: up, by at most the step", objective, time.Second, loaded(time.Second, 500*ms, 200*ms, 0.5), 2 * time.Second, "true", "under the aim"},
		{"under the aim: up to the aim", objective, 4 * time.Second, loaded(4*time.Second, 500*ms, 200*ms, 0.2), 7374 * ms, "true", "under the aim"},
		{"missed: down to the aim at once", objective, 20 * time.Second, loaded(20*time.Second, 500*ms, 200*ms, 0.05), 7374 * ms, "false", "objective missed"},
		{"met, above the aim past hysteresis: down", objective, 9300 * ms, loaded(9300*ms, 500*ms, 200*ms, 0.1), 7374 * ms, "true", "above the aim"},
		{"met, above the aim within hysteresis: keep", objective, 9 * time.Second, loaded(9*time.Second, 500*ms, 200*ms, 0.1), 9 * time.Second, "true", "within hysteresis"},
		{"at the aim: keep", objective, 7400 * ms, loaded(7400*ms, 500*ms, 200*ms, 0.1), 7400 * ms, "true", "within hysteresis"},
		{"too few changes to tell: keep", objective, 5 * time.Second, few, 5 * time.Second, "nil", "too few changes"},
		{"syncs back to back: a smaller period cannot help", objective, 2 * time.Second, loaded(2*time.Second, 12*time.Second, 200*ms, 1), 2 * time.Second, "false", "back to back"},
		{"under the aim, the period not binding: keep", objective, 20 * time.Second,
			func() Inputs { in := loaded(20*time.Second, 100*ms, 0, 0.01); in.Latency = 2 * time.Second; return in }(),
			20 * time.Second, "true", "not binding"},
		{"never above syncPeriod", func() Objective { o := objective; o.Latency = time.Minute; return o }(), 20 * time.Second,
			func() Inputs {
				in := loaded(20*time.Second, 100*ms, 0, 0.01)
				in.SyncPeriod = 25 * time.Second
				return in
			}(),
			25 * time.Second, "true", "under the aim"},
		{"over budget at the aim: the objective wins", budget(objective, 0.2, PreferObjective), 7374 * ms, loaded(7374*ms, 500*ms, 200*ms, 0.5), 7374 * ms, "true", "the objective wins"},
		{"over budget at the aim, the budget preferred: up", budget(objective, 0.2, PreferBudget), 7374 * ms, loaded(7374*ms, 500*ms, 200*ms, 0.5), 14748 * ms, "true", "budget is preferred"},
		{"missed and over budget: the objective wins, down", budget(objective, 0.2, PreferObjective), 20 * time.Second, loaded(20*time.Second, 500*ms, 200*ms, 0.5), 7374 * ms, "false", "the objective wins"},
		{"under the aim and over budget: up either way", budget(objective, 0.2, PreferObjective), 2 * time.Second, loaded(2*time.Second, 500*ms, 200*ms, 0.5), 4 * time.Second, "true", "under the aim"},
	} {
		d := tc.o.Decide(tc.current, tc.in)
		met := "nil"
		if d.Objective != nil && d.Objective.Met != nil {
			met = strconv.FormatBool(*d.Objective.Met)
		}
		if d.Period != tc.want || met != tc.met || !strings.Contains(d.Reason, tc.reason) {
			t.Errorf("%s: %v, met %s, %q; want %v, met %s, %q", tc.name, d.Period, met, d.Reason, tc.want, tc.met, tc.reason)
		}
	}
}

// TestObjectiveConverges: on the latency model, from 1s and from 30s, the period settles where
// p99 is at the aim, and stays there.
func TestObjectiveConverges(t *testing.T) {
	for _, start := range []time.Duration{time.Second, 30 * time.Second} {
		p := start
		var seen []time.Duration
		for range 10 {
			p = objective.Decide(p, loaded(p, 500*time.Millisecond, 200*time.Millisecond, 0.1)).Period
			seen = append(seen, p)
		}
		if p != 7374*time.Millisecond || seen[len(seen)-2] != p {
			t.Errorf("from %v: %v", start, seen)
		}
	}
}

func TestObjectiveValidate(t *testing.T) {
	for _, bad := range []func(*Objective){
		func(o *Objective) { o.Latency = 0 },
		func(o *Objective) { o.Quantile = 1 },
		func(o *Objective) { o.Quantile = 0 },
		func(o *Objective) { o.Margin = 1 },
		func(o *Objective) { o.MinChanges = 0 },
		func(o *Objective) { o.Budget = -1 },
		func(o *Objective) { o.Prefer = "cpu" },
		func(o *Objective) { o.Ceiling = 0 },
	} {
		o := objective
		bad(&o)
		if o.Validate() == nil {
			t.Errorf("%+v validated", o)
		}
	}
}
