package churn

import (
	"context"
	"fmt"
	"time"

	"kptune/test/testbed"
)

// Workload is what changes in the cluster during a scenario.
type Workload struct {
	Name string  `json:"name"`
	Rate float64 `json:"rate,omitempty"` // steady: EndpointSlice changes a second
}

// The scenarios' workloads.
var (
	// Quiet changes nothing: what kube-proxy costs at rest.
	Quiet = Workload{Name: "quiet"}
	// ScaleDown is the docs' example: a Deployment of 100 pods deleted, its EndpointSlice losing one
	// endpoint at a time as the pods terminate (one every 50 ms), then scaled back up in one change.
	ScaleDown = Workload{Name: "scale-down"}
	// Rolling is a rolling update of a 100-pod Deployment with 25% surge: in each wave 25 new
	// endpoints become ready one at a time, then 25 old ones leave one at a time (one every 100 ms).
	Rolling = Workload{Name: "rolling"}
)

// Steady is R changes a second, each to a Service chosen at random among all of them.
func Steady(rate float64) Workload { return Workload{Name: fmt.Sprintf("steady-%g", rate), Rate: rate} }

// Workloads is the bench's scenario set, in the order it runs them.
func Workloads() []Workload {
	return []Workload{Quiet, Steady(1), Steady(10), Steady(50), ScaleDown, Rolling}
}

// ParseWorkload reads a workload's name.
func ParseWorkload(name string) (Workload, error) {
	for _, w := range Workloads() {
		if w.Name == name {
			return w, nil
		}
	}
	var r float64
	if _, err := fmt.Sscanf(name, "steady-%g", &r); err == nil && r > 0 {
		return Steady(r), nil
	}
	return Workload{}, fmt.Errorf("unknown workload %q: use quiet, steady-R, scale-down or rolling", name)
}

// DeployEndpoints is the size of the Deployment the scale-down and rolling workloads change.
const DeployEndpoints = 100

// Bed is a control plane loaded for the bench: Services 0..Services-1 of Endpoints endpoints
// (which steady churn changes), a probe Service (index Services) whose changes are timed into the
// rules, and Deployments' Services (from index Services+1; one if Deployments is 0) of
// DeployEndpoints endpoints each.
type Bed struct {
	C                   *testbed.Cluster
	Services, Endpoints int
	Deployments         int
}

// Probe is the probe Service's index.
func (b Bed) Probe() int { return b.Services }

// Deploy is the first Deployment Service's index.
func (b Bed) Deploy() int { return b.Services + 1 }

// All is how many Services the bed holds.
func (b Bed) All() int { return b.Services + 1 + max(b.Deployments, 1) }

// Load creates the bed's Services.
func (b Bed) Load(ctx context.Context) error {
	if err := b.C.Load(ctx, b.All(), b.Endpoints); err != nil {
		return err
	}
	for k := range max(b.Deployments, 1) {
		if _, err := b.C.SetEndpoints(ctx, b.Deploy()+k, DeployEndpoints, 0); err != nil {
			return err
		}
	}
	return nil
}

// Start starts a workload; nil for Quiet.
func (b Bed) Start(ctx context.Context, w Workload) (*testbed.Churner, error) {
	switch {
	case w == Quiet:
		return nil, nil
	case w.Rate > 0:
		return b.C.Churn(ctx, testbed.ChurnOptions{Rate: w.Rate, Services: b.Services, Endpoints: b.Endpoints})
	case w == ScaleDown || w == Rolling:
		return testbed.Drive(ctx, 1, func(n int) testbed.Step {
			s := deployStep(w, n)
			return testbed.Step{Next: s.next, Change: func(ctx context.Context) error {
				_, err := b.C.SetEndpoints(ctx, b.Deploy(), s.endpoints, s.gen)
				return err
			}}
		}), nil
	}
	return nil, fmt.Errorf("unknown workload %+v", w)
}

// step is the n-th state of the Deployment's EndpointSlice: endpoints addresses from window gen
// (see testbed.SetEndpoints), and the time to the next step.
type step struct {
	endpoints, gen int
	next           time.Duration
}

func deployStep(w Workload, n int) step {
	if w == ScaleDown {
		// A cycle: 100 removals 50 ms apart, 2 s at zero, back to 100 (new pods, new addresses), 2 s.
		const cycle = DeployEndpoints + 1
		gen, k := n/cycle, n%cycle
		switch {
		case k < DeployEndpoints-1:
			return step{DeployEndpoints - 1 - k, gen, 50 * time.Millisecond}
		case k == DeployEndpoints-1:
			return step{0, gen, 2 * time.Second}
		}
		return step{DeployEndpoints, gen + 1, 2 * time.Second}
	}
	// Rolling, a wave: the window of addresses grows by 25 new ones at its end, one at a time, then
	// sheds 25 old ones at its start.
	const surge = DeployEndpoints / 4
	wave, k := n/(2*surge), n%(2*surge)
	start := wave * surge
	if k < surge {
		return step{DeployEndpoints + k + 1, start, 100 * time.Millisecond}
	}
	gone := k - surge + 1
	return step{DeployEndpoints + surge - gone, start + gone, 100 * time.Millisecond}
}
