// Command benchplot turns the churn bench's results (bench/results/churn/SCALE/*.json) into a
// Markdown report with its tables and SVG plots: kube-proxy's CPU and network-programming latency
// against the period, and the CPU-latency frontier of each workload with the adaptive agent and the
// live retune placed on it.
//
//	go run ./test/cmd/benchplot -in bench/results/churn/5000x10 -out bench/churn
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
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

	"kptune/test/churn"
)

func main() {
	in := flag.String("in", "bench/results/churn/5000x10", "directory of the bench's JSON results")
	out := flag.String("out", "bench/churn", "directory for the report (README.md) and its plots")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "benchplot:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	results, transitions, err := load(in)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		return fmt.Errorf("no results in %s: run make bench-churn first", in)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(out, "README.md"))
	if err != nil {
		return err
	}
	defer f.Close()
	var machine map[string]string
	if b, err := os.ReadFile(filepath.Join(in, "machine.json")); err == nil {
		if err := json.Unmarshal(b, &machine); err != nil {
			return fmt.Errorf("machine.json: %w", err)
		}
	}
	return report(f, out, results, transitions, machine)
}

func load(dir string) ([]churn.Result, []churn.Transition, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, nil, err
	}
	var results []churn.Result
	var transitions []churn.Transition
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, err
		}
		if filepath.Base(file) == "machine.json" {
			continue
		}
		if filepath.Base(file) == "transitions.json" {
			if err := json.Unmarshal(b, &transitions); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", file, err)
			}
			continue
		}
		var r churn.Result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
		results = append(results, r)
	}
	return results, transitions, nil
}

// point is one result reduced to the report's figures, over its measured windows.
type point struct {
	r                        churn.Result
	period                   time.Duration // the period held (median over the windows)
	cpu, latency, latency99  churn.Stat
	syncs, syncSeconds       churn.Stat
	probe, programs, changes churn.Stat // seconds; a minute; a second
	probeCost                churn.Stat // cores the probe's own reads took; NaN where not recorded
}

func reduce(r churn.Result) point {
	ws := r.Measured()
	stat := func(f func(churn.Window) float64) churn.Stat { return churn.Summarize(churn.Each(ws, f)) }
	p := point{r: r}
	p.cpu = stat(func(w churn.Window) float64 { return w.CPUCores })
	p.latency = stat(func(w churn.Window) float64 { return float64(w.NetProgP50) })
	p.latency99 = stat(func(w churn.Window) float64 { return float64(w.NetProgP99) })
	p.syncs = stat(func(w churn.Window) float64 { return w.SyncsPerMin })
	p.syncSeconds = stat(func(w churn.Window) float64 {
		if w.Syncs == 0 {
			return math.NaN()
		}
		return w.SyncSeconds / float64(w.Syncs)
	})
	var probes []float64
	for _, w := range ws {
		probes = append(probes, w.Probes...)
	}
	p.probe = churn.Summarize(probes)
	p.programs = stat(func(w churn.Window) float64 {
		n := 0
		for name, c := range w.Execs {
			if strings.HasSuffix(name, "-restore") || name == "nft" {
				n += c
			}
		}
		return float64(n) / (w.Seconds / 60)
	})
	p.changes = stat(func(w churn.Window) float64 { return float64(w.Changes) / w.Seconds })
	p.probeCost = stat(func(w churn.Window) float64 {
		if w.ProbePolls == 0 {
			return math.NaN()
		}
		return float64(w.ProbeCores)
	})
	period := stat(func(w churn.Window) float64 { return w.Period.Seconds() })
	p.period = time.Duration(period.Median * float64(time.Second)).Round(time.Millisecond)
	return p
}

// group is every setup's point for one mode and workload, static periods first in order.
type group struct {
	mode, workload string
	points         []point
}

func groups(results []churn.Result) []group {
	var out []group
	find := func(mode, workload string) *group {
		for i := range out {
			if out[i].mode == mode && out[i].workload == workload {
				return &out[i]
			}
		}
		out = append(out, group{mode: mode, workload: workload})
		return &out[len(out)-1]
	}
	order := map[string]int{}
	for i, w := range churn.Workloads() {
		order[w.Name] = i
	}
	for _, r := range results {
		g := find(r.Setup.Mode, r.Workload.Name)
		g.points = append(g.points, reduce(r))
	}
	for _, g := range out {
		slices.SortFunc(g.points, func(a, b point) int { return rank(a) - rank(b) })
	}
	slices.SortFunc(out, func(a, b group) int {
		if a.mode != b.mode {
			return strings.Compare(a.mode, b.mode)
		}
		return order[a.workload] - order[b.workload]
	})
	return out
}

// rank orders setups: static by period, then the live retune, then adaptive.
func rank(p point) int {
	switch {
	case p.r.Setup.Adaptive != "":
		return math.MaxInt32
	case p.r.Setup.RetuneTo != 0:
		return math.MaxInt32 - 1
	}
	return int(p.r.Setup.Period / time.Millisecond)
}

func static(p point) bool { return p.r.Setup.Adaptive == "" && p.r.Setup.RetuneTo == 0 }

// dominated names the static setups better than p on both CPU and p50 latency (medians); where
// nothing changed (no latency) on CPU alone. A name is marked when the two overlap on an axis
// (one's range of windows reaches into the other's): better by the medians, but within the spread.
// CPU differences below what /proc can tell (a 10 ms clock tick over a window) are ties.
func dominated(p point, g group) []string {
	var by []string
	apart := func(a, b churn.Stat) bool { return a.Max < b.Min }
	tick := 0.0
	if ws := p.r.Measured(); len(ws) > 0 && ws[0].Seconds > 0 {
		tick = 0.01 / ws[0].Seconds
	}
	for _, q := range g.points {
		if !static(q) {
			continue
		}
		noLatency := math.IsNaN(p.latency.Median) || math.IsNaN(q.latency.Median)
		if p.cpu.Median-q.cpu.Median > tick && (noLatency || q.latency.Median < p.latency.Median) {
			name := q.r.Name
			if !apart(q.cpu, p.cpu) || (!noLatency && !apart(q.latency, p.latency)) {
				name += " (within the spread)"
			}
			by = append(by, name)
		}
	}
	return by
}

func f(x float64, format string) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf(format, x)
}

func spread(s churn.Stat, format string) string {
	if math.IsNaN(s.Median) {
		return "–"
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.Median, s.Min, s.Max)
}

func report(w io.Writer, dir string, results []churn.Result, transitions []churn.Transition, machine map[string]string) error {
	gs := groups(results)
	r0 := results[0]
	fmt.Fprintf(w, "# The churn bench: %d Services × %d endpoints\n\n", r0.Services, r0.Endpoints)
	var builds []string
	for _, r := range results {
		if !slices.Contains(builds, r.Build) {
			builds = append(builds, r.Build)
		}
	}
	fmt.Fprintf(w, "kube-proxy %s, fed by the test bed's real kube-apiserver and etcd, on the machine below (each result's JSON holds the time it was measured). Each cell is the median over the measured windows (%d a workload), with the least and greatest in brackets; a window lasts at least 15 s and three periods. CPU is kube-proxy's with its iptables-restore / nft children, in cores. Latency is kube-proxy's own network-programming latency (its histogram, from the EndpointSlices' trigger time; p50 and p99 interpolated within its buckets, which are 0.25 s wide below 1 s and 1 s wide above); the probe column times a change to a probe Service from its write to the API server to its address in the namespace's rules, measured outside kube-proxy. The probe sees the change in one of three ways, named in the column: \"datapath\", a connection to the Service's ClusterIP from kube-proxy's namespace reaches one of its new endpoints (the rules' DNAT, whatever their backend; about half a millisecond of CPU a try, the switch into the namespace included; polled every 20 ms); \"kernel\", the probe Service's chain read from the kernel (x_tables for legacy iptables, which copies the whole nat table at each read, netlink for nftables; polled every 100 ms); \"listing\", the earliest probe: it listed the chain with iptables or nft, which parse the whole table or ruleset and cost the machine 0.35–0.75 cores while a change was awaited (and iptables held the lock kube-proxy's iptables-restore waits for). The column next to it gives the CPU the probe's reads took, in cores, where it was recorded. Rule programs are iptables-restore and nft runs a minute. Written by `go run ./test/cmd/benchplot` from the JSON beside it; the runs by `make bench-churn`.\n\n",
		strings.Join(builds, " and "), len(r0.Windows))
	if len(machine) > 0 {
		keys := slices.Sorted(maps.Keys(machine))
		fmt.Fprintf(w, "| ran on and with | |\n|---|---|\n")
		for _, k := range keys {
			fmt.Fprintf(w, "| %s | %s |\n", k, strings.ReplaceAll(machine[k], "\n", " "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "![CPU against the period](cpu.svg)\n![latency against the period](latency.svg)\n\n")
	fmt.Fprintf(w, "## Adaptive against every static period\n\n")
	fmt.Fprintf(w, "| mode | workload | adaptive: period held, CPU, p50 | 1s: CPU | CPU cut vs 1s | dominated by (lower CPU and lower p50) |\n|---|---|---|---|---|---|\n")
	for _, g := range gs {
		var ad, one *point
		for i := range g.points {
			switch p := &g.points[i]; {
			case p.r.Setup.Adaptive != "":
				ad = p
			case static(*p) && p.r.Setup.Period == time.Second:
				one = p
			}
		}
		if ad == nil || one == nil {
			continue
		}
		by := dominated(*ad, g)
		verdict := "none"
		if len(by) > 0 {
			verdict = strings.Join(by, ", ")
		}
		fmt.Fprintf(w, "| %s | %s | %v, %s, %s s | %s | %s× | %s |\n", g.mode, g.workload, ad.period, f(ad.cpu.Median, "%.3f"),
			f(ad.latency.Median, "%.2f"), f(one.cpu.Median, "%.3f"), f(one.cpu.Median/ad.cpu.Median, "%.1f"), verdict)
	}
	fmt.Fprintln(w)
	for _, g := range gs {
		fmt.Fprintf(w, "## %s, %s\n\n![frontier](frontier-%s-%s.svg)\n\n", g.mode, g.workload, g.mode, g.workload)
		fmt.Fprintf(w, "| setup | period held | CPU cores | syncs/min | s a sync | net-prog p50 s | p99 s | probe s | probe read by, its CPU | rule programs/min | changes/s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range g.points {
			fmt.Fprintf(w, "| %s | %v | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.r.Name, p.period, spread(p.cpu, "%.3f"),
				spread(p.syncs, "%.1f"), f(p.syncSeconds.Median, "%.2f"), spread(p.latency, "%.2f"), f(p.latency99.Median, "%.2f"),
				spread(p.probe, "%.2f"), probeRead(p), f(p.programs.Median, "%.1f"), f(p.changes.Median, "%.1f"))
		}
		fmt.Fprintln(w)
		if err := frontier(filepath.Join(dir, fmt.Sprintf("frontier-%s-%s.svg", g.mode, g.workload)), g); err != nil {
			return err
		}
	}
	if len(transitions) > 0 {
		fmt.Fprintf(w, "## Restart against live retune\n\nA new period applied under 10 changes a second: by restarting kube-proxy with the new flag (its first sync at this scale included), or by `kptune set`. Apply: from the decision until kube-proxy syncs at the new period. Gap: the time between the last sync before the change and the first after it. Probe: a change written at the decision, until it is in the rules.\n\n")
		fmt.Fprintf(w, "| mode | how | from → to | apply s | gap s | probe s | syncs after (s from the change) |\n|---|---|---|---|---|---|---|\n")
		for _, t := range transitions {
			var at []string
			for _, s := range t.SyncTimes {
				at = append(at, fmt.Sprintf("%.1f", s))
			}
			fmt.Fprintf(w, "| %s | %s | %v → %v | %.3f | %.2f | %.2f | %s |\n", t.Mode, t.How, t.From, t.To, t.ApplySeconds, t.GapSeconds, t.ProbeSeconds, strings.Join(at, ", "))
		}
		fmt.Fprintln(w)
	}
	for _, what := range []struct {
		file, y string
		v       func(point) float64
	}{
		{"cpu.svg", "kube-proxy CPU (cores, with children)", func(p point) float64 { return p.cpu.Median }},
		{"latency.svg", "network-programming latency p50 (s)", func(p point) float64 { return p.latency.Median }},
	} {
		if err := byPeriod(filepath.Join(dir, what.file), what.y, gs, what.v); err != nil {
			return err
		}
	}
	return nil
}

// byPeriod plots v of the static setups against the period, a line per mode and workload.
func byPeriod(file, ylabel string, gs []group, v func(point) float64) error {
	p := plot.New()
	p.X.Label.Text = "minimum sync period (s, log scale)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	for i, g := range gs {
		var xy plotter.XYs
		for _, pt := range g.points {
			if y := v(pt); static(pt) && !math.IsNaN(y) {
				xy = append(xy, plotter.XY{X: pt.r.Setup.Period.Seconds(), Y: y})
			}
		}
		if len(xy) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		line.Color, points.Color = plotutil.Color(i), plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		if g.mode != "iptables" {
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		p.Add(line, points)
		p.Legend.Add(g.mode+" "+g.workload, line, points)
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, file)
}

// frontier plots each setup of a group at (p50 latency, CPU), labelled.
func frontier(file string, g group) error {
	p := plot.New()
	p.Title.Text = g.mode + ", " + g.workload
	p.X.Label.Text = "network-programming latency p50 (s)"
	p.Y.Label.Text = "kube-proxy CPU (cores, with children)"
	var xy plotter.XYs
	var labels []string
	var special plotter.XYs
	for _, pt := range g.points {
		x := pt.latency.Median
		if math.IsNaN(x) {
			x = 0 // nothing changed: no latency to show
		}
		xy = append(xy, plotter.XY{X: x, Y: pt.cpu.Median})
		labels = append(labels, pt.r.Name)
		if !static(pt) {
			special = append(special, plotter.XY{X: x, Y: pt.cpu.Median})
		}
	}
	s, err := plotter.NewScatter(xy)
	if err != nil {
		return err
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xy, Labels: labels})
	if err != nil {
		return err
	}
	p.Add(s, l)
	if len(special) > 0 {
		sp, err := plotter.NewScatter(special)
		if err != nil {
			return err
		}
		sp.Color = color.RGBA{R: 200, A: 255}
		sp.Radius = vg.Points(4)
		p.Add(sp)
	}
	return p.Save(6*vg.Inch, 4*vg.Inch, file)
}

// probeRead says how a result's probe read the rules, and what that cost the machine.
func probeRead(p point) string {
	how := p.r.Probe
	if how == "" {
		how = "listing"
	}
	if math.IsNaN(p.probeCost.Median) {
		if math.IsNaN(p.probe.Median) {
			return "–" // no probes (quiet)
		}
		return how + ", not recorded"
	}
	return fmt.Sprintf("%s, %.3f", how, p.probeCost.Median)
}
