// Command tracereport turns the trace bench's runs (bench/results/trace/*.jsonl, `make bench-trace`)
// into a Markdown report with its tables and SVG plots: for each scale and mode, each setup's
// kube-proxy CPU and network programming latency p99 in each phase of the trace, as medians over the
// repetitions with bootstrap 95 % intervals, and the judgements the objective asks for made on the
// intervals.
//
//	go run ./test/cmd/tracereport -in bench/results/trace -out bench/trace
package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"kptune/test/benchstat"
	"kptune/test/churn"
)

// objective is the latency objective the report judges by: p99 ≤ 10 s.
const objective = 10.0

// judgedReps is the repetitions of every setup a judgement needs; with fewer it is marked provisional.
const judgedReps = 5

func main() {
	in := flag.String("in", "bench/results/trace", "directory of the trace bench's runs (*.jsonl)")
	out := flag.String("out", "bench/trace", "directory for the report (README.md) and its plots")
	flag.Parse()
	if err := generate(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "tracereport:", err)
		os.Exit(1)
	}
}

func generate(in, out string) error {
	runs, err := load(in)
	if err != nil {
		return err
	}
	if len(runs) == 0 {
		return fmt.Errorf("no runs in %s: run make bench-trace first", in)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(out, "README.md"))
	if err != nil {
		return err
	}
	defer f.Close()
	return report(f, out, runs)
}

// load reads every run of every *.jsonl file in dir, in file order. A file is one experiment (its
// name, without .jsonl, in each run's Experiment) and has sections of its own in the report.
func load(dir string) ([]run, error) {
	var runs []run
	err := benchstat.ReadJSONL(dir, func(file string, r churn.TraceRun) error {
		runs = append(runs, run{TraceRun: r, experiment: strings.TrimSuffix(filepath.Base(file), ".jsonl")})
		return nil
	})
	return runs, err
}

// run is one run and the experiment (results file) it belongs to.
type run struct {
	churn.TraceRun
	experiment string
}

// Interval is a median with its bootstrap interval.
type Interval = benchstat.Interval

// cell is one setup in one phase: its CPU and its p99 over the repetitions.
type cell struct {
	cpu, p99 Interval
	changes  float64 // median latency samples a run
}

// table is one scale and mode: setups × phases.
type table struct {
	experiment  string
	scale, mode string
	setups      []string // static periods in increasing order, then the agents
	phases      []string
	cells       map[string]map[string]cell // setup → phase (or span) → cell
	whole       map[string]Interval        // setup → CPU over the whole trace
	worst       map[string]Interval        // setup → the worst phase's p99 (per run, then over runs)
	reps        map[string]int
	build       string
	// spans are a phase in which no change was written counted with the busy phase before it
	// ("scale-downs + quiet again"), cells of their own: what a setup spends in such a phase is the
	// syncs of the phase before's last changes, which a short period makes before the boundary and
	// a long one after it.
	spans []string
}

func tables(runs []run) []*table {
	byKey := map[string]*table{}
	var keys []string
	type acc struct{ cpu, p99, n, whole, worst []float64 }
	accs := map[string]map[string]map[string]*acc{}
	wholeAcc := map[string]map[string]*acc{}
	for _, r := range runs {
		key := fmt.Sprintf("%s %dx%d %s", r.experiment, r.Services, r.Endpoints, r.Setup.Mode)
		t := byKey[key]
		if t == nil {
			t = &table{experiment: r.experiment, scale: fmt.Sprintf("%d × %d", r.Services, r.Endpoints), mode: r.Setup.Mode, cells: map[string]map[string]cell{},
				whole: map[string]Interval{}, worst: map[string]Interval{}, reps: map[string]int{}, build: r.Build}
			byKey[key] = t
			keys = append(keys, key)
			accs[key] = map[string]map[string]*acc{}
			wholeAcc[key] = map[string]*acc{}
		}
		if !slices.Contains(t.setups, r.Name) {
			t.setups = append(t.setups, r.Name)
		}
		t.reps[r.Name]++
		if accs[key][r.Name] == nil {
			accs[key][r.Name] = map[string]*acc{}
			wholeAcc[key][r.Name] = &acc{}
		}
		// add records one run's figures for a phase, or a span of two.
		add := func(phase string, cpu, p99 float64, n uint64) {
			a := accs[key][r.Name][phase]
			if a == nil {
				a = &acc{}
				accs[key][r.Name][phase] = a
			}
			a.cpu, a.p99, a.n = append(a.cpu, cpu), append(a.p99, p99), append(a.n, float64(n))
		}
		var cpuSec, secs, worst float64
		for _, p := range r.Phases {
			if !slices.Contains(t.phases, p.Phase) {
				t.phases = append(t.phases, p.Phase)
			}
			add(p.Phase, p.CPUCores, float64(p.LatencyP99), p.LatencyCount)
			cpuSec += p.CPUCores * p.Seconds
			secs += p.Seconds
			worst = worse(worst, float64(p.LatencyP99))
		}
		for i := 1; i < len(r.Phases); i++ {
			busy, quiet := r.Phases[i-1], r.Phases[i]
			if quiet.Applied != 0 || busy.Applied == 0 {
				continue
			}
			span := busy.Phase + " + " + quiet.Phase
			if !slices.Contains(t.spans, span) {
				t.spans = append(t.spans, span)
			}
			add(span, (busy.CPUCores*busy.Seconds+quiet.CPUCores*quiet.Seconds)/(busy.Seconds+quiet.Seconds),
				worse(float64(busy.LatencyP99), float64(quiet.LatencyP99)), busy.LatencyCount+quiet.LatencyCount)
		}
		w := wholeAcc[key][r.Name]
		w.whole = append(w.whole, cpuSec/secs)
		w.worst = append(w.worst, worst)
	}
	var out []*table
	for _, key := range keys {
		t := byKey[key]
		for setup, phases := range accs[key] {
			t.cells[setup] = map[string]cell{}
			for phase, a := range phases {
				t.cells[setup][phase] = cell{cpu: benchstat.Bootstrap(a.cpu), p99: benchstat.Bootstrap(a.p99), changes: benchstat.Median(a.n)}
			}
			t.whole[setup] = benchstat.Bootstrap(wholeAcc[key][setup].whole)
			t.worst[setup] = benchstat.Bootstrap(wholeAcc[key][setup].worst)
		}
		slices.SortStableFunc(t.setups, func(a, b string) int { return order(a) - order(b) })
		out = append(out, t)
	}
	return out
}

// worse is the larger of two latencies, either of which may be NaN (no change measured).
func worse(a, b float64) float64 {
	switch {
	case math.IsNaN(a):
		return b
	case math.IsNaN(b):
		return a
	}
	return max(a, b)
}

// order sorts static setups by period, then the live retunes, then the agents.
func order(name string) int {
	if d, err := time.ParseDuration(strings.TrimPrefix(name, "static ")); err == nil {
		return int(d / time.Millisecond)
	}
	if strings.HasPrefix(name, "live ") {
		return 1<<30 - 1
	}
	if name == "adaptive" {
		return 1 << 30
	}
	return 1<<30 + 1
}

func static(name string) bool { return strings.HasPrefix(name, "static ") }

// meets says whether a p99 interval meets the objective: "yes" (its upper bound does), "no" (its
// lower bound does not), "?" (the interval straddles it), "–" (no change measured).
func meets(i Interval) string {
	switch {
	case i.N == 0:
		return "–"
	case i.High <= objective:
		return "yes"
	case i.Low > objective:
		return "no"
	}
	return "?"
}

func report(w io.Writer, dir string, runs []run) error {
	fmt.Fprintf(w, "# The trace bench: a cluster's day, every setup\n\n")
	fmt.Fprintf(w, "Generated by `make bench-report` (`go run ./test/cmd/tracereport`) from `bench/results/trace/*.jsonl`, %d runs; do not edit.\n\n", len(runs))
	fmt.Fprintf(w, "Each run is one setup through the whole trace on a kube-proxy of its own; the setups of a repetition ran in an order drawn\n")
	fmt.Fprintf(w, "for it. Figures are medians over the repetitions with 95 %% bootstrap intervals `median [low, high]`. CPU is kube-proxy's\n")
	fmt.Fprintf(w, "with its children, in cores; p99 is kube-proxy's own network programming latency (seconds) over the phase. The objective is\n")
	fmt.Fprintf(w, "p99 ≤ %g s: a setup meets it in a phase where its interval's upper bound does, misses it where its lower bound does not,\n", objective)
	fmt.Fprintf(w, "and is undecided (?) otherwise.\n\n")
	for _, t := range tables(runs) {
		slug := t.experiment + "-" + t.mode
		fmt.Fprintf(w, "## %s: %s Services × endpoints, %s\n\n", t.experiment, t.scale, t.mode)
		fmt.Fprintf(w, "kube-proxy %s. Repetitions:", t.build)
		for _, s := range t.setups {
			fmt.Fprintf(w, " %s %d;", s, t.reps[s])
		}
		fmt.Fprintf(w, "\n\n")
		for _, what := range []struct {
			title  string
			format string
			get    func(cell) Interval
		}{{"kube-proxy CPU (cores)", "%.3f", func(c cell) Interval { return c.cpu }}, {"network programming latency p99 (s)", "%.1f", func(c cell) Interval { return c.p99 }}} {
			fmt.Fprintf(w, "### %s\n\n| setup | %s |\n|---|%s\n", what.title, strings.Join(t.phases, " | "), strings.Repeat("---|", len(t.phases)))
			for _, s := range t.setups {
				fmt.Fprintf(w, "| %s |", s)
				for _, p := range t.phases {
					c, ok := t.cells[s][p]
					v := "–"
					if ok {
						v = what.get(c).Format(what.format)
						if what.format == "%.1f" && c.p99.N > 0 {
							v += " " + meets(c.p99)
						}
					}
					fmt.Fprintf(w, " %s |", v)
				}
				fmt.Fprintln(w)
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "### The whole trace\n\n| setup | CPU (cores, time-weighted) | worst phase p99 (s) | meets the objective throughout | dominated by |\n|---|---|---|---|---|\n")
		for _, s := range t.setups {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", s, t.whole[s].Format("%.3f"), t.worst[s].Format("%.1f"), meets(t.worst[s]), strings.Join(dominators(t, s), ", "))
		}
		fmt.Fprintf(w, "\nA setup is dominated by another whose whole-trace CPU interval lies wholly below its own and whose worst-phase p99\n")
		fmt.Fprintf(w, "interval lies wholly below its own or wholly under the objective where its own is not.\n\n")
		targets(w, t)
		againstOne(w, t)
		for _, what := range []struct {
			name, ylabel string
			get          func(cell) Interval
			line         float64
		}{{"cpu", "kube-proxy CPU (cores)", func(c cell) Interval { return c.cpu }, math.NaN()}, {"p99", "network programming latency p99 (s)", func(c cell) Interval { return c.p99 }, objective}} {
			file := slug + "-" + what.name + ".svg"
			if err := plotPhases(filepath.Join(dir, file), t, what.ylabel, what.get, what.line); err != nil {
				return err
			}
			fmt.Fprintf(w, "![%s by phase](%s)\n\n", what.ylabel, file)
		}
	}
	return nil
}

// dominators are the setups that dominate s over the whole trace, on the intervals.
func dominators(t *table, s string) []string {
	var out []string
	for _, o := range t.setups {
		if o == s || t.whole[o].N == 0 || t.whole[s].N == 0 {
			continue
		}
		cheaper := t.whole[o].High < t.whole[s].Low
		faster := t.worst[o].High < t.worst[s].Low || (meets(t.worst[o]) == "yes" && meets(t.worst[s]) != "yes")
		if cheaper && faster {
			out = append(out, o)
		}
	}
	return out
}

// targets checks the objective agent against the static periods, phase by phase and over the
// whole trace, as the bench's targets ask, each judged on the intervals: yes, no, or ? where they
// overlap the bound.
func targets(w io.Writer, t *table) {
	const agent = "objective"
	if _, ok := t.cells[agent]; !ok {
		return
	}
	fmt.Fprintf(w, "### The objective agent against the static periods\n\n")
	if n := slices.Min(slices.Collect(maps.Values(t.reps))); n < judgedReps {
		fmt.Fprintf(w, "Provisional: %d repetition(s) of a setup, not the %d a judgement needs; an interval of so few runs says little.\n\n", n, judgedReps)
	}
	fmt.Fprintf(w, "| phase | cheapest static period meeting the objective | its CPU | the agent's CPU | agent / static | agent ≤ 1.1 × static | the agent meets it |\n|---|---|---|---|---|---|---|\n")
	for _, p := range slices.Concat(t.phases, t.spans) {
		best := ""
		for _, s := range t.setups {
			if static(s) && meets(t.cells[s][p].p99) == "yes" && (best == "" || t.cells[s][p].cpu.Median < t.cells[best][p].cpu.Median) {
				best = s
			}
		}
		a := t.cells[agent][p]
		if best == "" {
			fmt.Fprintf(w, "| %s | none | – | %s | – | – | %s |\n", p, a.cpu.Format("%.3f"), meets(a.p99))
			continue
		}
		b := t.cells[best][p]
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f | %s | %s |\n", p, best, b.cpu.Format("%.3f"), a.cpu.Format("%.3f"), a.cpu.Median/b.cpu.Median, atMost(a.cpu, b.cpu, 1.1), meets(a.p99))
	}
	fmt.Fprintln(w)
	if len(t.spans) > 0 {
		fmt.Fprintf(w, "A phase in which no change is written is also judged with the phase before it (%s): what a setup spends\n", strings.Join(t.spans, "; "))
		fmt.Fprintf(w, "there is the syncs of that phase's last changes, which a short period makes before the boundary and a long one after it.\n")
		fmt.Fprintf(w, "CPU over the two is time-weighted per run, p99 the worse of the two.\n\n")
	}
	var meeting, beaten []string
	for _, s := range t.setups {
		if static(s) && meets(t.worst[s]) == "yes" {
			meeting = append(meeting, s)
			if v := atMost(t.whole[agent], t.whole[s], 1); v != "yes" {
				beaten = append(beaten, fmt.Sprintf("%s (%s)", s, v))
			}
		}
	}
	switch {
	case len(meeting) == 0:
		fmt.Fprintf(w, "Whole trace: no static period meets the objective throughout.")
	case len(beaten) == 0:
		fmt.Fprintf(w, "Whole trace: the agent uses less CPU than every static period meeting the objective throughout (%s).", strings.Join(meeting, ", "))
	default:
		fmt.Fprintf(w, "Whole trace: the agent does not use less CPU than %s, of the static periods meeting the objective throughout.", strings.Join(beaten, ", "))
	}
	fmt.Fprintf(w, " The agent meets it throughout: %s.\n\n", meets(t.worst[agent]))
}

// againstOne sets every setup against static 1s in each steady-churn phase: its CPU, how many times
// less than 1s's, whether at least 3× less and whether it meets the objective there (each on the
// intervals), and which setups do both.
func againstOne(w io.Writer, t *table) {
	const one = "static 1s"
	for _, p := range t.phases {
		o, ok := t.cells[one][p]
		if !ok || !strings.Contains(p, "steady") || o.cpu.N == 0 {
			continue
		}
		fmt.Fprintf(w, "### %s against static 1s\n\n| setup | CPU | static 1s / it | at least 3× less CPU than static 1s | p99 | meets the objective |\n|---|---|---|---|---|---|\n", p)
		var both, open []string
		for _, s := range t.setups {
			c, ok := t.cells[s][p]
			if s == one || !ok || c.cpu.N == 0 {
				continue
			}
			third, m := atMost(c.cpu.Scale(3), o.cpu, 1), meets(c.p99)
			fmt.Fprintf(w, "| %s | %s | %.1f× | %s | %s | %s |\n", s, c.cpu.Format("%.3f"), o.cpu.Median/c.cpu.Median, third, c.p99.Format("%.1f"), m)
			switch {
			case third == "yes" && m == "yes":
				both = append(both, s)
			case third != "no" && m != "no":
				open = append(open, s)
			}
		}
		fmt.Fprintf(w, "\nBoth at least 3× less CPU than static 1s and meeting the objective: %s", orNone(both))
		if len(open) > 0 {
			fmt.Fprintf(w, "; undecided: %s", strings.Join(open, ", "))
		}
		fmt.Fprintf(w, ".\n\n")
	}
}

func orNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}

// atMost says whether a ≤ factor × b on the intervals: "yes" (a's upper bound is), "no" (a's lower
// bound is above factor × b's upper bound), "?" otherwise (the intervals overlap the bound).
func atMost(a, b Interval, factor float64) string {
	switch {
	case a.N == 0 || b.N == 0:
		return "–"
	case a.High <= factor*b.Low:
		return "yes"
	case a.Low > factor*b.High:
		return "no"
	}
	return "?"
}

// plotPhases draws each setup's medians by phase with their intervals as error bars; a missing
// figure is left out, never drawn as 0.
func plotPhases(file string, t *table, ylabel string, get func(cell) Interval, line float64) error {
	p := plot.New()
	p.Y.Label.Text = ylabel
	p.X.Label.Text = "phase of the trace"
	names := make([]string, len(t.phases))
	copy(names, t.phases)
	p.NominalX(names...)
	p.Legend.Left = false
	p.Legend.Top = true
	p.Legend.XOffs = vg.Points(-4)
	width := 0.8 / float64(len(t.setups))
	for i, s := range t.setups {
		var xy plotter.XYs
		var errs plotter.YErrors
		for j, ph := range t.phases {
			c, ok := t.cells[s][ph]
			iv := get(c)
			if !ok || iv.N == 0 || math.IsNaN(iv.Median) {
				continue
			}
			xy = append(xy, plotter.XY{X: float64(j) - 0.4 + width*(float64(i)+0.5), Y: iv.Median})
			errs = append(errs, struct{ Low, High float64 }{iv.Median - iv.Low, iv.High - iv.Median})
		}
		if len(xy) == 0 {
			continue
		}
		pts, err := plotter.NewScatter(xy)
		if err != nil {
			return err
		}
		pts.Color, pts.Shape = plotutil.Color(i), plotutil.Shape(i)
		bars, err := plotter.NewYErrorBars(struct {
			plotter.XYer
			plotter.YErrorer
		}{xy, errs})
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		p.Add(bars, pts)
		p.Legend.Add(s, pts)
	}
	if !math.IsNaN(line) {
		l, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: line}, {X: float64(len(t.phases)) - 0.5, Y: line}})
		if err != nil {
			return err
		}
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("objective %g s", line), l)
	}
	// The legend goes right of the data, in a margin of its own.
	p.X.Max = float64(len(t.phases)) + 0.8
	return p.Save(10*vg.Inch, 5*vg.Inch, file)
}
