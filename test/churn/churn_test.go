//go:build churn

package churn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/test/testbed"
)

func options(t *testing.T) Options {
	kptune, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	probe := env("KPTUNE_CHURN_PROBE", "kernel")
	if probe != "kernel" && probe != "datapath" {
		t.Fatalf("KPTUNE_CHURN_PROBE=%s: want kernel or datapath", probe)
	}
	return Options{
		Build: testbed.Build{Version: env("KPTUNE_CHURN_BUILD", "v1.33.5")}, Windows: envInt("KPTUNE_CHURN_WINDOWS", 3),
		Window: envDuration("KPTUNE_CHURN_WINDOW", 15*time.Second), Warmup: envDuration("KPTUNE_CHURN_WARMUP", 5*time.Second),
		AdaptiveWarmup: envDuration("KPTUNE_CHURN_ADAPTIVE_WARMUP", 60*time.Second), Probes: envInt("KPTUNE_CHURN_PROBES", 3),
		Probe:  probe,
		Kptune: kptune, StateDir: t.TempDir(), Log: t.Logf,
	}
}

// TestSmoke is `make bench-smoke`: steady churn at 200 Services × 5 endpoints, 10 changes a second,
// on kube-proxy v1.33.5 (iptables) at static periods of 1s, 2s and 5s. It asserts the physics, not
// timings: syncs per minute fall as the period rises and never exceed what the token bucket allows
// (60/period + its burst of 2 a window), no sync fails, and every change reaches the rules (the
// probe Service's changes are seen in them, and every Service is there at the end).
// With KPTUNE_CHURN_RECORD set, the results go to bench/results/churn/smoke/.
func TestSmoke(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	b := Bed{Services: 200, Endpoints: 5}
	b.C, _ = testbed.Start(t, 0, 0)
	if err := b.Load(ctx); err != nil {
		t.Fatal(err)
	}
	o := options(t)
	o.Windows, o.Window, o.Probes = 1, 40*time.Second, 4
	var results []Result
	for _, period := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second} {
		rs, err := Run(ctx, b, Setup{Mode: testbed.IPTables, Period: period}, []Workload{Steady(10)}, o)
		if err != nil {
			t.Fatal(err)
		}
		r, w := rs[0], rs[0].Windows[0]
		if limit := 60/period.Seconds() + 2*60/w.Seconds; w.SyncsPerMin > limit {
			t.Errorf("period %v: %.1f syncs/min, more than the token bucket allows (%.1f)", period, w.SyncsPerMin, limit)
		}
		if len(results) > 0 {
			if prev := results[len(results)-1]; w.SyncsPerMin >= prev.Windows[0].SyncsPerMin {
				t.Errorf("period %v: %.1f syncs/min, not fewer than at %v (%.1f)", period, w.SyncsPerMin, prev.Setup.Period, prev.Windows[0].SyncsPerMin)
			}
		}
		if w.SyncFailures != 0 || r.MissingAtEnd != 0 || w.ProbeMissing != 0 || len(w.Probes) != o.Probes {
			t.Errorf("period %v: %v failed syncs, %d Services missing, %d of %d probe changes seen", period, w.SyncFailures, r.MissingAtEnd, len(w.Probes), o.Probes)
		}
		if w.Execs["iptables-restore"] < int(w.Syncs) {
			t.Errorf("period %v: %d syncs but %v rule programs counted", period, w.Syncs, w.Execs)
		}
		results = append(results, r)
	}
	record(t, "smoke", results)
}

// TestBench is `make bench-churn`: every workload on every setup — static periods, a live retune
// by kptune set, the adaptive agent — in each mode, at KPTUNE_CHURN_SCALE (5000x10 by default).
// Results are written one file per workload and setup as they come, to
// bench/results/churn/SCALE/, from which `go run ./test/cmd/benchplot` draws the tables and plots.
func TestBench(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	b, scale := bedFromEnv(t)
	var workloads []Workload
	for _, name := range strings.Split(env("KPTUNE_CHURN_WORKLOADS", "quiet,steady-1,steady-10,steady-50,scale-down,rolling"), ",") {
		w, err := ParseWorkload(name)
		if err != nil {
			t.Fatal(err)
		}
		workloads = append(workloads, w)
	}
	setups := setupsFromEnv(t, "KPTUNE_CHURN", "iptables,nftables", "1s,adaptive,5s,live,2s,10s,100ms,30s")
	t0 := time.Now()
	b.C, _ = testbed.Start(t, 0, 0)
	if err := b.Load(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d Services × %d endpoints loaded in %v", b.All(), b.Endpoints, time.Since(t0).Round(time.Second))
	o := options(t)
	if os.Getenv("KPTUNE_CHURN_RECORD") != "" {
		recordMachine(t, scale, o)
	}
	for _, s := range setups {
		rs, err := Run(ctx, b, s, workloads, o)
		record(t, scale, rs)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			for _, w := range r.Windows {
				if w.SyncFailures != 0 || w.ProbeMissing != 0 {
					t.Errorf("%s, %s: %v failed syncs, %d probe changes never seen", r.Name, r.Workload.Name, w.SyncFailures, w.ProbeMissing)
				}
			}
			if r.MissingAtEnd != 0 {
				t.Errorf("%s, %s: %d Services missing from the rules at the end", r.Name, r.Workload.Name, r.MissingAtEnd)
			}
		}
	}
}

// bedFromEnv is the bed's size from KPTUNE_CHURN_SCALE (SERVICESxENDPOINTS, 5000x10 by default).
func bedFromEnv(t *testing.T) (Bed, string) {
	var b Bed
	scale := env("KPTUNE_CHURN_SCALE", "5000x10")
	if _, err := fmt.Sscanf(scale, "%dx%d", &b.Services, &b.Endpoints); err != nil || b.Services <= 0 || b.Endpoints <= 0 {
		t.Fatalf("KPTUNE_CHURN_SCALE=%q: want SERVICESxENDPOINTS, e.g. 5000x10", scale)
	}
	return b, scale
}

func record(t *testing.T, dir string, results []Result) {
	if os.Getenv("KPTUNE_CHURN_RECORD") == "" {
		return
	}
	dir = filepath.Join(testbed.RepoRoot(), "bench", "results", "churn", dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		name := strings.NewReplacer(" ", "-", "→", "-to-").Replace(fmt.Sprintf("%s-%s-%s.json", r.Setup.Mode, r.Name, r.Workload.Name))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// recordMachine writes what the bench ran on and with to machine.json beside the results.
func recordMachine(t *testing.T, scale string, o Options) {
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(string(out))
	}
	var mem string
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem, _, _ = strings.Cut(string(b), "\n")
	}
	m := map[string]string{
		"command":   "make bench-churn CHURN_SCALE=" + scale + " (" + strings.Join(churnEnv(), " ") + ")",
		"cpus":      fmt.Sprint(runtime.NumCPU()),
		"memory":    strings.Join(strings.Fields(mem), " "),
		"kernel":    run("uname", "-sr"),
		"go":        runtime.Version(),
		"kubeProxy": o.Build.String() + ", built by test/kubeproxy/build.sh",
		"iptables":  run("iptables-legacy", "--version"),
		"nft":       run("nft", "--version"),
		"when":      time.Now().UTC().Format(time.RFC3339),
	}
	dir := filepath.Join(testbed.RepoRoot(), "bench", "results", "churn", scale)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Results at one scale may come from several runs (a mode or a setup at a time): each run's
	// command and time are kept, in order, and so is any other value a run found different (the
	// kernel, the Go toolchain), after the earlier runs' ones.
	file := filepath.Join(dir, "machine.json")
	if raw, err := os.ReadFile(file); err == nil {
		var old map[string]string
		if err := json.Unmarshal(raw, &old); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for k := range m {
			if old[k] == "" {
				continue
			}
			prev := strings.Split(old[k], "; ")
			if !slices.Contains(prev, m[k]) {
				prev = append(prev, m[k])
			}
			m[k] = strings.Join(prev, "; ")
		}
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// churnEnv is the KPTUNE_CHURN_* settings the run was given.
func churnEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KPTUNE_CHURN_") && !strings.HasPrefix(kv, "KPTUNE_CHURN_RECORD=") && !strings.HasPrefix(kv, "KPTUNE_CHURN_SCALE=") {
			out = append(out, kv)
		}
	}
	return out
}

func needRoot(t *testing.T) {
	testbed.NeedRoot(t, "network namespaces, iptables and ptrace")
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// TestScale is `make bench-scale`: what a new period costs by restart against by `kptune set`
// as the cluster grows. At KPTUNE_SCALE Services × endpoints, in each of KPTUNE_SCALE_MODES, one
// kube-proxy under 10 changes a second goes through KPTUNE_SCALE_PAIRS pairs of transitions
// between 1s and 5s (Scale: each way up and down in turn, interleaved), and is inspected with each
// locator after each pair. Every record is appended to KPTUNE_SCALE_OUT (JSON lines) as it is
// made, so that scales and modes run in several sessions merge. kube-proxy's syncPeriod is
// KPTUNE_SCALE_SYNC_PERIOD (30s, its default): kptune's /healthz rail refuses a period whose wait
// after a full sync comes close to 2 × syncPeriod. The probe is the datapath's unless
// KPTUNE_CHURN_PROBE says otherwise.
func TestScale(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	b, out := loadedBed(t, "KPTUNE_SCALE", "KPTUNE_SCALE_OUT", "scale", 0)
	o := options(t)
	o.Probe = env("KPTUNE_CHURN_PROBE", "datapath")
	const low, high = time.Second, 5 * time.Second
	for _, mode := range strings.Split(env("KPTUNE_SCALE_MODES", "iptables,nftables"), ",") {
		err := Scale(ctx, b, mode, low, high, envDuration("KPTUNE_SCALE_SYNC_PERIOD", 30*time.Second), envInt("KPTUNE_SCALE_PAIRS", 10), 10, o, func(r ScaleRecord) error {
			if x := r.Transition; x != nil {
				if x.SyncsAfter < 2 || x.ProbeSeconds <= 0 {
					t.Errorf("%s %s %v→%v: %d syncs after the change, probe %.2fs", mode, x.How, x.From, x.To, x.SyncsAfter, x.ProbeSeconds)
				}
				// After kptune set raised the period kube-proxy starts its syncs a new period apart,
				// sooner by as long as the first of two waited for the sync before it (Spacing.Late). A
				// restarted kube-proxy may start syncs back to back: its bucket starts full.
				for _, s := range x.Spacings() {
					if least := 0.9 * (x.To.Seconds() - s.Late); x.How == BySet && x.To > x.From && s.Seconds < least {
						t.Errorf("%s %s %v→%v: syncs started %.2fs apart after the change, under %.2fs (%.2f, %.2f long)", mode, x.How, x.From, x.To, s.Seconds, least, x.SyncTimes, x.SyncSeconds)
					}
				}
			}
			return appendLine(out, r)
		})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
	}
}

// TestTrace is `make bench-trace`: a cluster's day (Day: quiet, a rolling update of several
// Deployments, steady churn, a burst of scale-downs, quiet) replayed for every setup, each run on a
// kube-proxy of its own, KPTUNE_TRACE_REPS repetitions from KPTUNE_TRACE_FIRST_REP, the setups
// in an order drawn anew for each repetition (interleaved, not grouped). Each run is appended to
// KPTUNE_TRACE_OUT (JSON lines) as soon as it ends, so that runs split over several sessions merge.
func TestTrace(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	deployments := envInt("KPTUNE_TRACE_DEPLOYMENTS", 5)
	trace := Day(envDuration("KPTUNE_TRACE_UNIT", 30*time.Second), deployments)
	setups := setupsFromEnv(t, "KPTUNE_TRACE", "iptables", "100ms,1s,2s,5s,10s,15s,20s,30s,live,adaptive,objective")
	b, out := loadedBed(t, "KPTUNE_TRACE_SCALE", "KPTUNE_TRACE_OUT", "trace", deployments)
	o := options(t)
	first, reps := envInt("KPTUNE_TRACE_FIRST_REP", 1), envInt("KPTUNE_TRACE_REPS", 1)
	for rep := first; rep < first+reps; rep++ {
		order := slices.Clone(setups)
		rng := rand.New(rand.NewPCG(uint64(rep), 0x7ace))
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, s := range order {
			r, err := RunTrace(ctx, b, s, trace, rep, 0x7ace, envDuration("KPTUNE_TRACE_WARMUP", 10*time.Second), o)
			if err != nil {
				t.Fatal(err)
			}
			if err := appendLine(out, r); err != nil {
				t.Fatal(err)
			}
			for _, p := range r.Phases {
				if p.SyncFailures != 0 {
					t.Errorf("%s rep %d, %s: %v failed syncs", r.Name, rep, p.Phase, p.SyncFailures)
				}
			}
		}
	}
}

// TestFullSync is `make bench-fullsync`: how long kube-proxy's full syncs take, its first after a
// start and later ones (forced by a change of its Node's labels, as an hour, a failed sync or a
// relabelled Node forces them), at a short and a long period, and whether /healthz turned 503 across
// them. At KPTUNE_FULLSYNC_SCALE, KPTUNE_FULLSYNC_REPS repetitions from KPTUNE_FULLSYNC_FIRST_REP,
// each a fresh kube-proxy in each of KPTUNE_FULLSYNC_MODES (in turn, the first mode alternating),
// the periods in turn (FullSyncs). Records go to KPTUNE_FULLSYNC_OUT.
func TestFullSync(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	b, out := loadedBed(t, "KPTUNE_FULLSYNC_SCALE", "KPTUNE_FULLSYNC_OUT", "fullsync", 0)
	o := options(t)
	modes := strings.Split(env("KPTUNE_FULLSYNC_MODES", "iptables,nftables"), ",")
	first, reps := envInt("KPTUNE_FULLSYNC_FIRST_REP", 1), envInt("KPTUNE_FULLSYNC_REPS", 5)
	for rep := first; rep < first+reps; rep++ {
		periods, order := []time.Duration{time.Second, 20 * time.Second}, slices.Clone(modes)
		if rep%2 == 0 {
			slices.Reverse(periods)
			slices.Reverse(order)
		}
		for _, mode := range order {
			err := FullSyncs(ctx, b, mode, rep, periods, 10, o, func(r FullSync) error {
				if r.Seconds <= 0 {
					t.Errorf("%s rep %d, %s at %v: full sync of %.2fs", mode, rep, r.Trigger, r.Period, r.Seconds)
				}
				return appendLine(out, r)
			})
			if err != nil {
				t.Fatalf("%s rep %d: %v", mode, rep, err)
			}
		}
	}
}

// loadedBed starts a control plane and loads it with the Services of the scale in the environment
// variable scaleEnv (SERVICESxENDPOINTS, 5000x10 by default) and deployments Deployments; it returns
// the file records go to: outEnv's, else bench/results/DIR/SCALE.jsonl.
func loadedBed(t *testing.T, scaleEnv, outEnv, dir string, deployments int) (Bed, string) {
	b := Bed{Deployments: deployments}
	scale := env(scaleEnv, "5000x10")
	if _, err := fmt.Sscanf(scale, "%dx%d", &b.Services, &b.Endpoints); err != nil || b.Services <= 0 || b.Endpoints <= 0 {
		t.Fatalf("%s=%q: want SERVICESxENDPOINTS, e.g. 10000x10", scaleEnv, scale)
	}
	out := env(outEnv, filepath.Join(testbed.RepoRoot(), "bench", "results", dir, scale+".jsonl"))
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	b.C, _ = testbed.Start(t, 0, 0)
	if err := b.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d Services × %d endpoints loaded in %v", b.All(), b.Endpoints, time.Since(t0).Round(time.Second))
	return b, out
}

// appendLine appends v to file as one line of JSON.
func appendLine(file string, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(append(line, '\n'))
	return errors.Join(werr, f.Close())
}

// setupsFromEnv reads the setups of each mode: PREFIX_MODES and PREFIX_SETUPS (static periods,
// "live": 1s retuned to 10s by kptune set, "live:PERIOD" to PERIOD, "adaptive" and "objective": the agent from 1s with
// PREFIX_ADAPTIVE or PREFIX_OBJECTIVE as its configuration).
func setupsFromEnv(t *testing.T, prefix, modes, setups string) []Setup {
	var out []Setup
	for _, mode := range strings.Split(env(prefix+"_MODES", modes), ",") {
		for _, p := range strings.Split(env(prefix+"_SETUPS", setups), ",") {
			to, live := strings.CutPrefix(p, "live")
			switch {
			case live:
				d := 10 * time.Second
				if to, ok := strings.CutPrefix(to, ":"); ok {
					var err error
					if d, err = time.ParseDuration(to); err != nil || d <= 0 {
						t.Fatalf("%s_SETUPS: %q: want live or live:PERIOD", prefix, p)
					}
				}
				out = append(out, Setup{Mode: mode, Period: time.Second, RetuneTo: d})
			case p == "adaptive":
				out = append(out, Setup{Mode: mode, Period: time.Second, Adaptive: env(prefix+"_ADAPTIVE",
					"policy: adaptive\nbudget: 0.2\nfloor: 500ms\nceiling: 20s\ndecideEvery: 10s\nmaxStep: 2\n")})
			case p == "objective":
				out = append(out, Setup{Mode: mode, Period: time.Second, Adaptive: env(prefix+"_OBJECTIVE",
					"policy: objective\nlatencyObjective: 10s\nlatencyQuantile: 0.99\nfloor: 500ms\nceiling: 30s\ndecideEvery: 10s\nmaxStep: 8\n")})
			default:
				d, err := time.ParseDuration(p)
				if err != nil {
					t.Fatalf("%s_SETUPS: %v", prefix, err)
				}
				out = append(out, Setup{Mode: mode, Period: d})
			}
		}
	}
	return out
}
