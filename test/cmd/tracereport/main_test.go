package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kptune/test/benchstat"
	"kptune/test/churn"
)

func TestMeets(t *testing.T) {
	for _, c := range []struct {
		i    Interval
		want string
	}{
		{Interval{Median: 8, Low: 7, High: 9.9, N: 5}, "yes"},
		{Interval{Median: 12, Low: 10.5, High: 13, N: 5}, "no"},
		{Interval{Median: 9, Low: 8, High: 11, N: 5}, "?"},
		{Interval{Median: math.NaN(), Low: math.NaN(), High: math.NaN(), N: 0}, "–"},
	} {
		if got := meets(c.i); got != c.want {
			t.Errorf("%+v: %s, want %s", c.i, got, c.want)
		}
	}
}

// synthetic is a run: CPU and p99 per phase, of quiet, steady churn (the one writing changes) and
// quiet again, as many as given.
func synthetic(name string, period time.Duration, rep int, cpu, p99 []float64) churn.TraceRun {
	r := churn.TraceRun{Name: name, Rep: rep, Services: 1000, Endpoints: 10, Build: "v1.33.5 iptables",
		Setup: churn.Setup{Mode: "iptables", Period: period}}
	for i, phase := range []string{"quiet", "steady churn", "quiet again"}[:len(cpu)] {
		applied := int64(0)
		if phase == "steady churn" {
			applied = 1000
		}
		r.Phases = append(r.Phases, churn.PhaseResult{Phase: phase, Seconds: 60, CPUCores: cpu[i], LatencyP99: churn.Maybe(p99[i]), LatencyCount: 100, Applied: applied})
	}
	return r
}

// TestSpans: a quiet phase after a busy one is judged alone and also with the busy phase, its CPU
// time-weighted over the two per run; the per-phase tables keep their phases alone.
func TestSpans(t *testing.T) {
	var runs []churn.TraceRun
	for rep := 1; rep <= 5; rep++ {
		j := float64(rep) / 100
		runs = append(runs,
			synthetic("static 1s", time.Second, rep, []float64{j, 1 + j, 0.02 + j}, []float64{math.NaN(), 2, 2}),
			synthetic("static 5s", 5*time.Second, rep, []float64{j, 0.3 + j, 0.1 + j}, []float64{math.NaN(), 6, 6}),
			synthetic("objective", time.Second, rep, []float64{j, 0.25 + j, 0.08 + j}, []float64{math.NaN(), 8, 9}))
	}
	doc, _ := render(t, runs)
	for _, want := range []string{
		"| setup | quiet | steady churn | quiet again |\n",
		// Alone, the quiet phase's spill-over makes the agent 2.2× static 1s there.
		"| quiet again | static 1s | 0.050 [0.030, 0.070] | 0.110 [0.090, 0.130] | 2.20 | no | yes |",
		// With the busy phase, static 1s's syncs there count: static 5s is the cheapest.
		"| steady churn + quiet again | static 5s | 0.230 [0.210, 0.250] | 0.195 [0.175, 0.215] | 0.85 | yes | yes |",
		"also judged with the phase before it (steady churn + quiet again)",
		// static 5s's CPU (0.33) is a third of 1s's (1.03) within the intervals; the agent's is below.
		"| static 5s | 0.330 [0.310, 0.350] | 3.1× | ? | 6.0 [6.0, 6.0] | yes |",
		"Both at least 3× less CPU than static 1s and meeting the objective: objective; undecided: static 5s.",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("the report lacks %q:\n%s", want, doc)
		}
	}
}

// render writes runs as one results file and returns the report generate makes of it, and the
// directory it is in.
func render(t *testing.T, runs []churn.TraceRun) (string, string) {
	t.Helper()
	in, out := t.TempDir(), t.TempDir()
	if err := benchstat.WriteJSONL(filepath.Join(in, "1000x10.jsonl"), runs); err != nil {
		t.Fatal(err)
	}
	if err := generate(in, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b), out
}

// TestReport: from runs on disk, the report's tables hold each setup's medians and intervals, the
// judgements on them, and a missing latency as "–"; the plots are written.
func TestReport(t *testing.T) {
	var runs []churn.TraceRun
	for rep := 1; rep <= 5; rep++ {
		jitter := float64(rep) / 100
		runs = append(runs,
			synthetic("static 1s", time.Second, rep, []float64{0.05 + jitter, 1.0 + jitter}, []float64{math.NaN(), 2 + jitter}),
			synthetic("static 30s", 30*time.Second, rep, []float64{0.05 + jitter, 0.2 + jitter}, []float64{math.NaN(), 31 + jitter}),
			synthetic("objective", time.Second, rep, []float64{0.05 + jitter, 0.25 + jitter}, []float64{math.NaN(), 8 + jitter}))
	}
	doc, out := render(t, runs)
	for _, want := range []string{
		"## 1000x10: 1000 × 10 Services × endpoints, iptables",
		"| static 1s | 0.080 [0.060, 0.100] | 1.030 [1.010, 1.050] |",
		"| static 30s | – | 31.0 [31.0, 31.1] no |",
		"| objective | – | 8.0 [8.0, 8.1] yes |",
		"| steady churn | static 1s | 1.030 [1.010, 1.050] | 0.280 [0.260, 0.300] | 0.27 | yes | yes |",
		"Whole trace: the agent uses less CPU than every static period meeting the objective throughout (static 1s). The agent meets it throughout: yes.",
		"### steady churn against static 1s\n\n| setup | CPU | static 1s / it | at least 3× less CPU than static 1s | p99 | meets the objective |\n|---|---|---|---|---|---|\n" +
			"| static 30s | 0.230 [0.210, 0.250] | 4.5× | yes | 31.0 [31.0, 31.1] | no |\n" +
			"| objective | 0.280 [0.260, 0.300] | 3.7× | yes | 8.0 [8.0, 8.1] | yes |\n\n" +
			"Both at least 3× less CPU than static 1s and meeting the objective: objective.",
		"| static 30s | 0.155 [0.135, 0.175] | 31.0 [31.0, 31.1] | no |  |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("the report lacks %q:\n%s", want, doc)
		}
	}
	for _, f := range []string{"1000x10-iptables-cpu.svg", "1000x10-iptables-p99.svg"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if strings.Contains(doc, "Provisional") {
		t.Error("five repetitions marked provisional")
	}
	// The first repetition alone: its judgements are marked provisional.
	if doc, _ := render(t, runs[:3]); !strings.Contains(doc, "Provisional: 1 repetition(s) of a setup, not the 5") {
		t.Errorf("one repetition not marked provisional:\n%s", doc)
	}
}

func TestAtMost(t *testing.T) {
	b := Interval{Median: 1, Low: 0.9, High: 1.1, N: 5}
	for _, c := range []struct {
		a      Interval
		factor float64
		want   string
	}{
		{Interval{Median: 0.95, Low: 0.9, High: 0.99, N: 5}, 1.1, "yes"}, // 0.99 ≤ 1.1 × 0.9
		{Interval{Median: 1.3, Low: 1.22, High: 1.4, N: 5}, 1.1, "no"},   // 1.22 > 1.1 × 1.1
		{Interval{Median: 1.05, Low: 1.0, High: 1.1, N: 5}, 1.1, "?"},
		{Interval{}, 1.1, "–"},
	} {
		if got := atMost(c.a, b, c.factor); got != c.want {
			t.Errorf("atMost(%+v, %+v, %v) = %q, want %q", c.a, b, c.factor, got, c.want)
		}
	}
}

// TestCommittedReport: the committed bench/trace report, tables and plots, is what the committed
// records give (make bench-report regenerates it), so that no figure in it is stale or edited.
func TestCommittedReport(t *testing.T) {
	out := t.TempDir()
	if err := generate("../../../bench/results/trace", out); err != nil {
		t.Fatal(err)
	}
	if err := benchstat.SameFiles(out, "../../../bench/trace", "make bench-report"); err != nil {
		t.Error(err)
	}
}
