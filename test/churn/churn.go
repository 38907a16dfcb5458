// Package churn is the churn bench: what a sync period costs and buys on a real kube-proxy fed by
// the real API server. A setup is one kube-proxy (iptables or nftables mode) at a static minimum
// sync period, or retuned live by `kptune set`, or left to the adaptive agent; each workload runs
// on it for a warm-up and then a few measured windows. A window measures kube-proxy's CPU with its
// iptables-restore / nft children (/proc), its syncs and their durations, the network-programming
// latency kube-proxy itself reports (its histogram, from the EndpointSlices' trigger-time
// annotation), the rule programs it ran, and, independently, the time from writing a change of
// a probe Service to the API server to seeing it in the namespace's rules.
package churn

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/procfs"
	"kptune/internal/target"
	"kptune/test/testbed"
)

// Setup is how the period of the bench's kube-proxy is chosen.
type Setup struct {
	Mode   string        `json:"mode"`   // iptables (legacy backend) or nftables
	Period time.Duration `json:"period"` // the period kube-proxy starts with
	// RetuneTo, when set, is the period `kptune set` gives the running kube-proxy after each
	// workload's first window (measured at Period); `kptune reset` ends the workload.
	RetuneTo time.Duration `json:"retuneTo,omitempty"`
	// Adaptive, when set, runs `kptune agent` with this configuration (YAML) beside kube-proxy.
	Adaptive string `json:"adaptive,omitempty"`
}

// Name labels a setup in tables and plots.
func (s Setup) Name() string {
	switch {
	case strings.Contains(s.Adaptive, "policy: objective"):
		return "objective"
	case s.Adaptive != "":
		return "adaptive"
	case s.RetuneTo != 0:
		return fmt.Sprintf("live %v→%v", s.Period, s.RetuneTo)
	}
	return "static " + s.Period.String()
}

// Options are the bench's windows.
type Options struct {
	Build   testbed.Build
	Windows int // measured windows a workload
	// Window is a measured window's least length; it is at least three periods.
	Window time.Duration
	// Warmup runs each workload before its windows; at least one period. Adaptive setups get
	// AdaptiveWarmup, long enough for the agent's decisions.
	Warmup, AdaptiveWarmup time.Duration
	Probes                 int // probe changes a window (none in the quiet workload)
	// Probe is how a probe change is seen: "datapath" (a connection to the Service, DNAT'ed by the
	// rules to one of its endpoints: testbed.KubeProxy.Reach) or "kernel" (the Service's chain read
	// from the kernel: testbed.KubeProxy.HasEndpoint).
	Probe    string
	Kptune   string
	StateDir string
	Log      func(format string, args ...any)
}

// Window is one measured window.
type Window struct {
	Seconds      float64        `json:"seconds"`
	Period       time.Duration  `json:"period"` // kube-proxy's period at the end of the window
	Changes      int64          `json:"changes"`
	Syncs        uint64         `json:"syncs"`
	SyncsPerMin  float64        `json:"syncsPerMinute"`
	SyncSeconds  float64        `json:"syncSeconds"` // time kube-proxy spent in syncs
	CPUCores     float64        `json:"cpuCores"`    // kube-proxy and its children
	NetProgP50   Maybe          `json:"netProgP50"`  // seconds, kube-proxy's histogram; NaN without changes
	NetProgP99   Maybe          `json:"netProgP99"`
	NetProgCount uint64         `json:"netProgCount"`
	Probes       []float64      `json:"probeSeconds"` // change written → seen in the rules
	Execs        map[string]int `json:"execs"`        // rule programs run, by name
	SyncFailures float64        `json:"syncFailures"`
	ProbeMissing int            `json:"probeMissing"` // probe changes never seen in the rules
	// The probe's own cost: how often it read kube-proxy's rules, and the CPU those reads took
	// (testbed.KubeProxy.ProbeCPU), which competes with kube-proxy for the machine's cores.
	ProbePolls    int     `json:"probePolls"`
	ProbeCores    Maybe   `json:"probeCores"`          // null where not recorded
	ProbePollMax  float64 `json:"probePollMaxSeconds"` // the longest single read
	BeforeRetune  bool    `json:"beforeRetune,omitempty"`
	RetuneSeconds float64 `json:"retuneSeconds,omitempty"` // kptune set's wall time, before this window
}

// Maybe is a figure that may be missing (NaN), written as null in JSON, which has no NaN.
type Maybe float64

// MarshalJSON implements json.Marshaler.
func (m Maybe) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(m)) || math.IsInf(float64(m), 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(m))
}

// UnmarshalJSON implements json.Unmarshaler.
func (m *Maybe) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*m = Maybe(math.NaN())
		return nil
	}
	return json.Unmarshal(b, (*float64)(m))
}

// Result is one workload on one setup.
type Result struct {
	Setup     Setup    `json:"setup"`
	Name      string   `json:"name"`
	Workload  Workload `json:"workload"`
	Services  int      `json:"services"`
	Endpoints int      `json:"endpoints"`
	Build     string   `json:"build"`
	Windows   []Window `json:"windows"`
	// MissingAtEnd is how many Services were not in the rules a period after the workload.
	MissingAtEnd int    `json:"missingServicesAtEnd"`
	Agent        string `json:"agentDecisions,omitempty"`
	When         string `json:"when"`
	// Probe is how the probe saw a change in the rules: "datapath" (a connection to the Service
	// reached one of its new endpoints; see testbed.KubeProxy.Reach), "kernel" (one chain read over
	// netlink or x_tables; see testbed.KubeProxy.HasEndpoint); empty in results measured with the
	// earliest probe, which listed the chain with iptables or nft and cost the machine up to 0.75
	// cores.
	Probe string `json:"probe,omitempty"`
}

// Measured are a result's windows at the setup's settled period: for a live retune, those after it.
func (r Result) Measured() []Window {
	var w []Window
	for _, x := range r.Windows {
		if !x.BeforeRetune {
			w = append(w, x)
		}
	}
	return w
}

// Stat is a median with its spread over windows.
type Stat struct{ Median, Min, Max float64 }

// Each is f of every window.
func Each(ws []Window, f func(Window) float64) []float64 {
	v := make([]float64, len(ws))
	for i, w := range ws {
		v[i] = f(w)
	}
	return v
}

// Summarize takes the median, least and greatest of values, ignoring NaN (all NaN without any).
func Summarize(values []float64) Stat {
	var v []float64
	for _, x := range values {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Stat{math.NaN(), math.NaN(), math.NaN()}
	}
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Stat{med, v[0], v[len(v)-1]}
}

// Run runs the workloads on one kube-proxy of the given setup.
func Run(ctx context.Context, b Bed, s Setup, workloads []Workload, o Options) ([]Result, error) {
	kp, err := b.C.StartKubeProxy(ctx, testbed.KubeProxyOptions{
		Build: o.Build, Mode: s.Mode, MinSyncPeriod: s.Period, SyncPeriod: 30 * time.Second,
		IPTablesLegacy: s.Mode == testbed.IPTables, CountExecs: true,
	})
	if err != nil {
		return nil, err
	}
	defer kp.Stop()
	if err := kp.WaitSynced(ctx, 1, 15*time.Minute); err != nil {
		return nil, err
	}
	var agent *testbed.Process
	if s.Adaptive != "" {
		if agent, err = startAgent(b.C, kp, s.Adaptive, o); err != nil {
			return nil, err
		}
		defer agent.Stop()
	}
	var results []Result
	for _, w := range workloads {
		r, err := runWorkload(ctx, b, kp, s, w, o)
		if agent != nil {
			r.Agent = decisions(agent.Log())
		}
		if err != nil {
			return results, fmt.Errorf("%s, %s: %w", s.Name(), w.Name, err)
		}
		results = append(results, r)
	}
	return results, nil
}

func startAgent(c *testbed.Cluster, kp *testbed.KubeProxy, config string, o Options) (*testbed.Process, error) {
	dir := filepath.Join(o.StateDir, kp.Node+"-agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		return nil, err
	}
	return c.StartInControlPlane("kptune-agent "+kp.Node, o.Kptune, "agent", "--config", file, "--node-name", kp.Node,
		"--listen", "", "--interval", "1s", "--state-dir", filepath.Join(dir, "state"))
}

// decisions are the agent's logged period changes.
func decisions(log string) string {
	b, _ := os.ReadFile(log)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"msg":"decision"`) && strings.Contains(line, "→") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func runWorkload(ctx context.Context, b Bed, kp *testbed.KubeProxy, s Setup, w Workload, o Options) (Result, error) {
	r := Result{Setup: s, Name: s.Name(), Workload: w, Services: b.Services, Endpoints: b.Endpoints,
		Build: o.Build.String() + " " + s.Mode, When: time.Now().UTC().Format(time.RFC3339), Probe: o.Probe}
	if s.Mode == testbed.IPTables {
		r.Build += " (legacy backend)"
	}
	churn, err := b.Start(ctx, w)
	if err != nil {
		return r, err
	}
	stop := func() error {
		if churn == nil {
			return nil
		}
		_, err := churn.Stop()
		churn = nil
		return err
	}
	defer stop()
	period := s.Period
	warmup := max(o.Warmup, period)
	if s.Adaptive != "" {
		warmup = o.AdaptiveWarmup
	}
	windows := o.Windows
	if s.RetuneTo != 0 {
		windows++ // the first at the starting period
	}
	o.Log("%s, %s: warm-up %v, %d windows", s.Name(), w.Name, warmup, windows)
	time.Sleep(warmup)
	var retuned float64
	for i := 0; i < windows; i++ {
		if s.RetuneTo != 0 && i == 1 {
			t0 := time.Now()
			if out, err := kptune(ctx, o, "set", "--pid", fmt.Sprint(kp.PID()), "--min-sync-period", s.RetuneTo.String()); err != nil {
				return r, fmt.Errorf("kptune set: %v: %s", err, out)
			}
			retuned = time.Since(t0).Seconds()
			period = s.RetuneTo
			time.Sleep(max(o.Warmup, period))
		}
		if s.Adaptive != "" {
			if period, err = currentPeriod(ctx, kp); err != nil {
				return r, err
			}
		}
		win, err := measure(ctx, b, kp, w, max(o.Window, 3*period), o)
		if err != nil {
			return r, err
		}
		win.Period = period
		if s.Adaptive != "" {
			if win.Period, err = currentPeriod(ctx, kp); err != nil {
				return r, err
			}
		}
		win.BeforeRetune = s.RetuneTo != 0 && i == 0
		if s.RetuneTo != 0 && i == 1 {
			win.RetuneSeconds = retuned
		}
		o.Log("%s, %s: window %d: %.1f syncs/min, %.3f cores, net prog p50 %.2fs, %d changes, probes %v (%d reads, %.3f cores, longest %.2fs)",
			s.Name(), w.Name, i, win.SyncsPerMin, win.CPUCores, win.NetProgP50, win.Changes, win.Probes, win.ProbePolls, win.ProbeCores, win.ProbePollMax)
		r.Windows = append(r.Windows, win)
	}
	if err := stop(); err != nil {
		return r, err
	}
	// The workload's last changes reach the rules within a period and a sync: then every Service
	// must still be there.
	time.Sleep(period + 5*time.Second)
	rules, err := kp.Rules()
	if err != nil {
		return r, err
	}
	r.MissingAtEnd = len(testbed.MissingServices(rules, b.All()))
	if s.RetuneTo != 0 {
		if out, err := kptune(ctx, o, "reset", "--pid", fmt.Sprint(kp.PID())); err != nil {
			return r, fmt.Errorf("kptune reset: %v: %s", err, out)
		}
	}
	return r, nil
}

func kptune(ctx context.Context, o Options, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, o.Kptune, append(args, "--state-dir", o.StateDir)...).CombinedOutput()
}

// currentPeriod reads the period kube-proxy's runner holds (the agent may have changed it).
func currentPeriod(ctx context.Context, kp *testbed.KubeProxy) (time.Duration, error) {
	found, err := target.Runners(ctx, kp.PID())
	if err != nil {
		return 0, err
	}
	if len(found) == 0 {
		return 0, fmt.Errorf("no runner found in kube-proxy %d", kp.PID())
	}
	return found[0].MinInterval, nil
}

// measure runs one window of the running workload.
func measure(ctx context.Context, b Bed, kp *testbed.KubeProxy, w Workload, length time.Duration, o Options) (Window, error) {
	probes := o.Probes
	var win Window
	before, err := kp.Metrics.Scrape(ctx)
	if err != nil {
		return win, err
	}
	cpu0, err := procfs.CPU(kp.PID())
	if err != nil {
		return win, err
	}
	execs0, err := kp.Execs()
	if err != nil {
		return win, err
	}
	probeCPU0 := kp.ProbeCPU()
	start := time.Now()
	changes0 := before.Value(kpmetrics.EndpointChanges)
	if w == Quiet {
		probes = 0
	}
	// Each probe at a random moment of the first half of its slot of the window, so that probes do
	// not keep one phase of the sync period.
	slot := length / time.Duration(max(probes, 1))
	for i := 0; i < probes; i++ {
		time.Sleep(max(0, time.Until(start.Add(slot*time.Duration(i)+rand.N(slot/2)))))
		d, err := probe(ctx, b, kp, o.Probe, time.Until(start.Add(length)), &win)
		if err != nil {
			return win, err
		}
		if d < 0 {
			win.ProbeMissing++
		} else {
			win.Probes = append(win.Probes, d.Seconds())
		}
	}
	time.Sleep(max(0, time.Until(start.Add(length))))
	elapsed := time.Since(start)
	after, err := kp.Metrics.Scrape(ctx)
	if err != nil {
		return win, err
	}
	cpu1, err := procfs.CPU(kp.PID())
	if err != nil {
		return win, err
	}
	execs1, err := kp.Execs()
	if err != nil {
		return win, err
	}
	win.Seconds = elapsed.Seconds()
	win.ProbeCores = Maybe((kp.ProbeCPU() - probeCPU0).Seconds() / elapsed.Seconds())
	win.Changes = int64(after.Value(kpmetrics.EndpointChanges) - changes0)
	win.Syncs = after.Syncs() - before.Syncs()
	win.SyncsPerMin = float64(win.Syncs) / elapsed.Minutes()
	_, sum0 := before.Histogram(kpmetrics.SyncDuration)
	_, sum1 := after.Histogram(kpmetrics.SyncDuration)
	win.SyncSeconds = sum1 - sum0
	win.CPUCores = (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	nb, na := before.Buckets(kpmetrics.NetworkProgramming), after.Buckets(kpmetrics.NetworkProgramming)
	win.NetProgP50, win.NetProgP99 = Maybe(kpmetrics.Quantile(0.5, nb, na)), Maybe(kpmetrics.Quantile(0.99, nb, na))
	win.NetProgCount = kpmetrics.Count(nb, na)
	win.SyncFailures = after.Value(kpmetrics.RestoreFailures) + after.Value(kpmetrics.NFTablesFailures) -
		before.Value(kpmetrics.RestoreFailures) - before.Value(kpmetrics.NFTablesFailures)
	win.Execs = map[string]int{}
	for name, n := range execs1 {
		if d := n - execs0[name]; d > 0 {
			win.Execs[name] = d
		}
	}
	return win, nil
}

// probeGen is the generation of the probe Service's addresses (see testbed.SetEndpoints).
var probeGen atomic.Int64

// probe changes the probe Service and waits until its new addresses are in kube-proxy's rules, seen
// as how says (see Options.Probe): the time from the write to the API server to the rules, or -1 if
// they are not there within limit (and within a minute). It counts its reads in win.
func probe(ctx context.Context, b Bed, kp *testbed.KubeProxy, how string, limit time.Duration, win *Window) (time.Duration, error) {
	// Each probe moves the Service's window of addresses past the previous one, so that the address
	// waited for is new to the rules (a window drawn at random could hold it already, and be seen at
	// once).
	gen := int(probeGen.Add(int64(b.Endpoints)))
	ip, err := b.C.SetEndpoints(ctx, b.Probe(), b.Endpoints, gen)
	if err != nil {
		return 0, err
	}
	written := time.Now()
	limit = max(limit, time.Minute)
	// Every read of the rules costs the machine CPU that kube-proxy could use: at 5000 Services
	// about 1.5 ms for a chain over netlink (70 reads a second took 0.11 cores), and 0.17 s for
	// legacy iptables, whose kernel copies the whole nat table at each read. A connection costs
	// about 0.5 ms, and reaches any of the new endpoints (none was in the previous generation).
	every, seen := 100*time.Millisecond, func() (bool, error) { return kp.HasEndpoint(b.Probe(), ip) }
	if how == "datapath" {
		fresh := testbed.EndpointAddresses(b.Probe(), b.Endpoints, gen)
		every, seen = 20*time.Millisecond, func() (bool, error) {
			got, err := kp.Reach(ctx, b.Probe())
			return slices.Contains(fresh, got), err
		}
	}
	for {
		t := time.Now()
		there, err := seen()
		win.ProbePolls++
		win.ProbePollMax = max(win.ProbePollMax, time.Since(t).Seconds())
		if err != nil {
			return 0, err
		}
		if there {
			return time.Since(written), nil
		}
		if time.Since(written) > limit {
			return -1, nil
		}
		time.Sleep(every)
	}
}
