package churn

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// Phase is one part of a trace: a workload held for a time. Deployments is how many Deployments a
// rolling update or a scale-down changes at once.
type Phase struct {
	Name        string        `json:"name"`
	Workload    Workload      `json:"workload"`
	Deployments int           `json:"deployments,omitempty"`
	Length      time.Duration `json:"length"`
}

// Day is a cluster's day compressed into one run, each phase unit long or a multiple of it: quiet;
// a rolling update of deployments Deployments at once; steady churn of 20 changes a second; a burst
// of scale-downs of deployments Deployments; quiet again.
func Day(unit time.Duration, deployments int) []Phase {
	return []Phase{
		{Name: "quiet", Workload: Quiet, Length: unit},
		{Name: "rolling update", Workload: Rolling, Deployments: deployments, Length: 2 * unit},
		{Name: "steady churn", Workload: Steady(20), Length: 3 * unit},
		{Name: "scale-downs", Workload: ScaleDown, Deployments: deployments, Length: unit},
		{Name: "quiet again", Workload: Quiet, Length: unit},
	}
}

// PhaseResult is what kube-proxy did and cost over one phase.
type PhaseResult struct {
	Phase        string        `json:"phase"`
	Seconds      float64       `json:"seconds"`
	CPUCores     float64       `json:"cpuCores"` // kube-proxy and its children
	Syncs        uint64        `json:"syncs"`
	Changes      int64         `json:"changes"`    // endpoint changes kube-proxy received
	LatencyP50   Maybe         `json:"latencyP50"` // kube-proxy's network programming latency; null without changes
	LatencyP99   Maybe         `json:"latencyP99"`
	LatencyCount uint64        `json:"latencyCount"`
	PeriodEnd    time.Duration `json:"periodEnd"` // kube-proxy's period at the phase's end
	SyncFailures float64       `json:"syncFailures"`
	Applied      int64         `json:"applied"` // the workload's changes written to the API server
}

// TraceRun is one setup through the whole trace, on a kube-proxy of its own.
type TraceRun struct {
	Setup     Setup         `json:"setup"`
	Name      string        `json:"name"`
	Rep       int           `json:"rep"`
	Services  int           `json:"services"`
	Endpoints int           `json:"endpoints"`
	Build     string        `json:"build"`
	Commit    string        `json:"commit"`
	When      string        `json:"when"`
	Phases    []PhaseResult `json:"phases"`
	Agent     string        `json:"agentDecisions,omitempty"`
}

// RunTrace starts a kube-proxy of setup s (and its agent, for an agent's setup), waits for its first
// sync and a warm-up, and replays the trace, measuring each phase. seed makes the steady churn's
// choice of Services the same in every run.
func RunTrace(ctx context.Context, b Bed, s Setup, trace []Phase, rep int, seed uint64, warmup time.Duration, o Options) (TraceRun, error) {
	r := TraceRun{Setup: s, Name: s.Name(), Rep: rep, Services: b.Services, Endpoints: b.Endpoints,
		Build: o.Build.String() + " " + s.Mode, Commit: startCommit(), When: time.Now().UTC().Format(time.RFC3339)}
	if s.Mode == testbed.IPTables {
		r.Build += " (legacy backend)"
	}
	// Every run starts from the same Deployments and probe Service.
	for k := range max(b.Deployments, 1) {
		if _, err := b.C.SetEndpoints(ctx, b.Deploy()+k, DeployEndpoints, 0); err != nil {
			return r, err
		}
	}
	if _, err := b.C.SetEndpoints(ctx, b.Probe(), b.Endpoints, 0); err != nil {
		return r, err
	}
	// In nftables mode syncPeriod sets only /healthz's timeout (2 × syncPeriod) and the retry after
	// a failed sync. Its default, 30s, is too short at scale: kube-proxy's full syncs of 5000 Services
	// take up to a minute (bench/fullsync), and kptune's /healthz rail would refuse every period but
	// the shortest, as it would for an operator with that syncPeriod. 60s holds for every period.
	syncPeriod := 30 * time.Second
	if s.Mode == testbed.NFTables {
		syncPeriod = time.Minute
	}
	kp, err := b.C.StartKubeProxy(ctx, testbed.KubeProxyOptions{
		Build: o.Build, Mode: s.Mode, MinSyncPeriod: s.Period, SyncPeriod: syncPeriod,
		IPTablesLegacy: s.Mode == testbed.IPTables,
	})
	if err != nil {
		return r, err
	}
	defer kp.Stop()
	if err := kp.WaitSynced(ctx, 1, 15*time.Minute); err != nil {
		return r, err
	}
	// One change (the probe Service's, which the trace leaves alone), so that kube-proxy has made a
	// partial sync after its first, full one, as a kube-proxy in a cluster soon has: kptune's /healthz
	// rail judges a period by the partial syncs, and before the first it has only the full sync, which
	// takes 47 s at 5000 × 10 in nftables mode.
	if _, err := b.C.SetEndpoints(ctx, b.Probe(), b.Endpoints, 1); err != nil {
		return r, err
	}
	if err := kp.WaitSynced(ctx, 2, 5*time.Minute); err != nil {
		return r, err
	}
	var agent *testbed.Process
	if s.Adaptive != "" {
		if agent, err = startAgent(b.C, kp, s.Adaptive, o); err != nil {
			return r, err
		}
		defer agent.Stop()
	}
	if s.RetuneTo != 0 {
		// live: the running kube-proxy retuned by `kptune set` after its first sync, as an operator
		// would, rather than started at the period.
		if out, err := kptune(ctx, o, "set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", s.RetuneTo.String()); err != nil {
			return r, fmt.Errorf("kptune set: %v: %s", err, out)
		}
	}
	time.Sleep(warmup)
	for i, p := range trace {
		pr, err := runPhase(ctx, b, kp, p, seed+uint64(i), o)
		if err != nil {
			return r, fmt.Errorf("%s, phase %s: %w", s.Name(), p.Name, err)
		}
		o.Log("%s rep %d, %s: %.3f cores, %d syncs, p99 %.2fs over %d changes, period %v at its end",
			s.Name(), rep, p.Name, pr.CPUCores, pr.Syncs, float64(pr.LatencyP99), pr.LatencyCount, pr.PeriodEnd)
		r.Phases = append(r.Phases, pr)
	}
	if agent != nil {
		r.Agent = decisions(agent.Log())
	}
	return r, nil
}

// runPhase runs one phase and measures it.
func runPhase(ctx context.Context, b Bed, kp *testbed.KubeProxy, p Phase, seed uint64, o Options) (PhaseResult, error) {
	pr := PhaseResult{Phase: p.Name}
	before, err := kp.Metrics.Scrape(ctx)
	if err != nil {
		return pr, err
	}
	cpu0, err := procfs.CPU(kp.PID())
	if err != nil {
		return pr, err
	}
	start := time.Now()
	churners, err := b.startPhase(ctx, p, seed)
	if err != nil {
		return pr, err
	}
	time.Sleep(p.Length)
	var stopErr error
	for _, c := range churners {
		n, err := c.Stop()
		pr.Applied += n
		stopErr = errors.Join(stopErr, err)
	}
	if stopErr != nil {
		return pr, stopErr
	}
	elapsed := time.Since(start)
	after, err := kp.Metrics.Scrape(ctx)
	if err != nil {
		return pr, err
	}
	cpu1, err := procfs.CPU(kp.PID())
	if err != nil {
		return pr, err
	}
	pr.Seconds = elapsed.Seconds()
	pr.CPUCores = (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	pr.Syncs = after.Syncs() - before.Syncs()
	pr.Changes = int64(after.Value(kpmetrics.EndpointChanges) - before.Value(kpmetrics.EndpointChanges))
	nb, na := before.Buckets(kpmetrics.NetworkProgramming), after.Buckets(kpmetrics.NetworkProgramming)
	pr.LatencyP50, pr.LatencyP99 = Maybe(kpmetrics.Quantile(0.5, nb, na)), Maybe(kpmetrics.Quantile(0.99, nb, na))
	pr.LatencyCount = kpmetrics.Count(nb, na)
	pr.SyncFailures = after.Value(kpmetrics.RestoreFailures) + after.Value(kpmetrics.NFTablesFailures) -
		before.Value(kpmetrics.RestoreFailures) - before.Value(kpmetrics.NFTablesFailures)
	if pr.PeriodEnd, err = currentPeriod(ctx, kp); err != nil {
		return pr, err
	}
	return pr, nil
}

// startPhase starts a phase's workload: the churners to stop at its end (none when quiet).
func (b Bed) startPhase(ctx context.Context, p Phase, seed uint64) ([]*testbed.Churner, error) {
	w := p.Workload
	switch {
	case w.Name == Quiet.Name:
		return nil, nil
	case w.Rate > 0:
		c, err := b.C.Churn(ctx, testbed.ChurnOptions{Rate: w.Rate, Services: b.Services, Endpoints: b.Endpoints, Seed: seed})
		return []*testbed.Churner{c}, err
	case w.Name == Rolling.Name || w.Name == ScaleDown.Name:
		var out []*testbed.Churner
		for k := range max(p.Deployments, 1) {
			idx := b.Deploy() + k
			out = append(out, testbed.Drive(ctx, 1, func(n int) testbed.Step {
				s := deployStep(w, n)
				return testbed.Step{Next: s.next, Change: func(ctx context.Context) error {
					_, err := b.C.SetEndpoints(ctx, idx, s.endpoints, s.gen)
					return err
				}}
			}))
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown workload %+v", w)
}

// startCommit is the repository's commit when the first run started: the code the test binary was
// built from, whatever is committed while it runs.
var startCommit = sync.OnceValue(commit)

// commit is the repository's commit, for the record ("" where git cannot tell).
func commit() string {
	out, err := exec.Command("git", "-C", testbed.RepoRoot(), "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
