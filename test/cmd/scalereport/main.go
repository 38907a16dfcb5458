// Command scalereport turns the scale bench's records (bench/results/scale/*.jsonl, `make
// bench-scale`) into a Markdown report with its tables and SVG plots: by cluster size and mode,
// what giving kube-proxy a new period costs by restart and by `kptune set` (time to the new period,
// the longest time without a rule sync across the change, how long a change made then took to
// reach the rules, the sync spacing after it), and what `kptune inspect` costs with each locator;
// medians over the transitions with bootstrap 95 % intervals. Records in the superseded
// subdirectory (a run measured again since, with a writer changed) keep a section of their own.
//
//	go run ./test/cmd/scalereport -in bench/results/scale -out bench/scale
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"kptune/test/benchstat"
	"kptune/test/churn"
)

func main() {
	in := flag.String("in", "bench/results/scale", "directory of the scale bench's records (*.jsonl)")
	out := flag.String("out", "bench/scale", "directory for the report (README.md) and its plots")
	flag.Parse()
	if err := generate(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "scalereport:", err)
		os.Exit(1)
	}
}

func generate(in, out string) error {
	ts, ls, err := load(in)
	if err != nil {
		return err
	}
	if len(ts) == 0 && len(ls) == 0 {
		return fmt.Errorf("no records in %s: run make bench-scale first", in)
	}
	old, _, err := load(filepath.Join(in, superseded))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(out, "README.md"))
	if err != nil {
		return err
	}
	if err := report(f, out, ts, ls, old); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// superseded is the subdirectory of records measured again since with a changed writer: kept,
// shown in a section of their own, and left out of every other table and plot.
const superseded = "superseded"

// load reads every record of every *.jsonl file in dir (none where dir does not exist).
func load(dir string) ([]churn.Transition, []churn.Locate, error) {
	var ts []churn.Transition
	var ls []churn.Locate
	err := benchstat.ReadJSONL(dir, func(_ string, r churn.ScaleRecord) error {
		switch {
		case r.Transition != nil:
			ts = append(ts, *r.Transition)
		case r.Locate != nil:
			ls = append(ls, *r.Locate)
		default:
			return errors.New("neither a transition nor a locate")
		}
		return nil
	})
	return ts, ls, err
}

type Interval = benchstat.Interval

// series is one line of a table or plot: a mode and a way (or a locator), with a figure at each
// scale (Services × endpoints, ordered by Services).
type series struct {
	label string
	at    map[string]Interval
}

// scales lists the scales records were made at, smallest first, as "SERVICES × ENDPOINTS".
func scales(ts []churn.Transition, ls []churn.Locate) []string {
	type sc struct{ s, e int }
	var all []sc
	for _, t := range ts {
		all = append(all, sc{t.Services, t.Endpoints})
	}
	for _, l := range ls {
		all = append(all, sc{l.Services, l.Endpoints})
	}
	slices.SortFunc(all, func(a, b sc) int {
		if a.s != b.s {
			return a.s - b.s
		}
		return a.e - b.e
	})
	var out []string
	for _, x := range slices.Compact(all) {
		out = append(out, scaleName(x.s, x.e))
	}
	return out
}

func scaleName(services, endpoints int) string { return fmt.Sprintf("%d × %d", services, endpoints) }

// group groups records by the label key gives them and their scale, and takes one figure of each.
func group[T any](xs []T, key func(T) (label string, services, endpoints int), get func(T) float64) []series {
	acc := map[string]map[string][]float64{}
	var labels []string
	for _, x := range xs {
		label, services, endpoints := key(x)
		if acc[label] == nil {
			acc[label] = map[string][]float64{}
			labels = append(labels, label)
		}
		sc := scaleName(services, endpoints)
		acc[label][sc] = append(acc[label][sc], get(x))
	}
	sort.Strings(labels)
	var out []series
	for _, l := range labels {
		s := series{label: l, at: map[string]Interval{}}
		for sc, v := range acc[l] {
			s.at[sc] = benchstat.Bootstrap(v)
		}
		out = append(out, s)
	}
	return out
}

// byWay labels a transition by its mode and way; byDirection adds its direction.
func byWay(t churn.Transition) (string, int, int) {
	return t.Mode + ", " + t.How, t.Services, t.Endpoints
}

func byDirection(t churn.Transition) (string, int, int) {
	return fmt.Sprintf("%s, %s %v→%v", t.Mode, t.How, t.From, t.To), t.Services, t.Endpoints
}

// byLocator labels an inspection by its mode and locator.
func byLocator(l churn.Locate) (string, int, int) {
	return l.Mode + ", " + l.Locator, l.Services, l.Endpoints
}

// first is the first sync spacing once the change was in force (Transition.Spacings); settled the
// median of the ones after it (NaN where there are none).
func first(t churn.Transition) float64 {
	if s := t.Spacings(); len(s) > 0 {
		return s[0].Seconds
	}
	return math.NaN()
}

func settled(t churn.Transition) float64 {
	if s := t.Spacings(); len(s) > 1 {
		return benchstat.Median(churn.Seconds(s[1:]))
	}
	return math.NaN()
}

// pastBound is how far the first spacing after a raise lies past the bucket's bound for it, the new
// period less the wait of its first sync (churn.Spacing); NaN where there is no first spacing.
func pastBound(t churn.Transition) float64 {
	if s := t.Spacings(); len(s) > 0 {
		return s[0].Seconds - (t.To.Seconds() - s[0].Late)
	}
	return math.NaN()
}

func table(w io.Writer, title string, cols []string, rows []series, format string) {
	fmt.Fprintf(w, "### %s\n\n| | %s |\n|---|%s\n", title, strings.Join(cols, " | "), strings.Repeat("---|", len(cols)))
	for _, s := range rows {
		fmt.Fprintf(w, "| %s |", s.label)
		for _, c := range cols {
			i, ok := s.at[c]
			v := "–"
			if ok && i.N > 0 {
				v = fmt.Sprintf("%s (%d)", i.Format(format), i.N)
			}
			fmt.Fprintf(w, " %s |", v)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

func report(w io.Writer, dir string, ts []churn.Transition, ls []churn.Locate, old []churn.Transition) error {
	cols := scales(ts, ls)
	builds := map[string]bool{}
	for _, t := range ts {
		builds[t.Build] = true
	}
	for _, l := range ls {
		builds[l.Build] = true
	}
	var bs []string
	for b := range builds {
		bs = append(bs, b)
	}
	sort.Strings(bs)
	fmt.Fprintf(w, "# The scale bench: a new period by restart or by `kptune set`, as the cluster grows\n\n")
	fmt.Fprintf(w, "Generated by `make bench-report` (`go run ./test/cmd/scalereport`) from `bench/results/scale/*.jsonl`, %d transitions and\n", len(ts))
	fmt.Fprintf(w, "%d inspections; do not edit. kube-proxy %s, under 10 EndpointSlice changes a second, its period changed between 1s\n", len(ls), strings.Join(bs, ", "))
	fmt.Fprintf(w, "and 5s: by a restart with the new flag, or by `kptune set`, each way up and down in turn, interleaved (`make bench-scale`).\n")
	fmt.Fprintf(w, "Figures are medians over the transitions with 95 %% bootstrap intervals `median [low, high] (count)`, in seconds unless said.\n\n")
	fmt.Fprintf(w, "## Giving kube-proxy a new period\n\n")
	figures := []struct {
		title, file, ylabel, note string
		get                       func(churn.Transition) float64
	}{
		{"Time to the new period", "apply", "time to the new period (s)",
			"From the decision to kube-proxy running at the new period: until `kptune set` returns (its write is in force for the next sync; locating the runners included), or until the restarted kube-proxy's first sync has programmed the rules.",
			func(t churn.Transition) float64 { return t.ApplySeconds }},
		{"No rule sync across the change", "gap", "time between the syncs across the change (s)",
			"The time between the last sync before the change and the first after it: changes made then wait for the rules at least that long.",
			func(t churn.Transition) float64 { return t.GapSeconds }},
		{"A change made at the decision reached the rules in", "probe", "a change made at the decision reached the rules in (s)",
			"A probe Service's endpoints, changed at the decision, timed from the write to the API server to a connection reaching a new endpoint through the rules.",
			func(t churn.Transition) float64 { return t.ProbeSeconds }},
	}
	for _, f := range figures {
		rows := group(ts, byWay, f.get)
		fmt.Fprintf(w, "%s\n\n", f.note)
		table(w, f.title, cols, rows, "%.2f")
		if err := plotScales(filepath.Join(dir, f.file+".svg"), cols, rows, f.ylabel); err != nil {
			return err
		}
		fmt.Fprintf(w, "![%s](%s.svg)\n\n", f.ylabel, f.file)
	}
	fmt.Fprintf(w, "## Sync spacing once the change is in force\n\n")
	fmt.Fprintf(w, "Between the starts of consecutive syncs (a sync's completion less its length, from kube-proxy's sync duration histogram)\n")
	fmt.Fprintf(w, "started once the change was in force: after `kptune set` returned, or after the restarted process's first sync (whose\n")
	fmt.Fprintf(w, "token bucket then starts full, two syncs deep). A sync whose length is unknown (two syncs within one 100 ms poll) or\n")
	fmt.Fprintf(w, "inconsistent (it would start before the previous one ended, which one runner cannot do) is left out. The settled spacing\n")
	fmt.Fprintf(w, "is the median of the spacings after the first, per transition; it needs three syncs in force within the observation\n")
	fmt.Fprintf(w, "(three of the slower period after the probe change landed), which syncs of 5–13 s (nftables at 10000 × 10) rarely give.\n\n")
	table(w, "First spacing", cols, group(ts, byDirection, first), "%.2f")
	table(w, "Settled spacing", cols, group(ts, byDirection, settled), "%.2f")
	raises := slices.DeleteFunc(slices.Clone(ts), func(t churn.Transition) bool { return t.How != churn.BySet || t.To <= t.From })
	if len(raises) > 0 {
		fmt.Fprintf(w, "After a raise by `kptune set` the first spacing can fall short of the new period by as long as the first sync in\n")
		fmt.Fprintf(w, "force waited for the sync in progress at the write (`churn.Spacing`: a token bucket credits a late taker;\n")
		fmt.Fprintf(w, "docs/how-it-works.md). The first spacing less that bound, new period − wait, is not negative if the bucket paces as\n")
		fmt.Fprintf(w, "said (to within a few milliseconds: a sync's start is its completion timestamp less its length, two clocks):\n\n")
		table(w, "First spacing past its bound", cols, group(raises, byDirection, pastBound), "%.2f")
		var past []float64
		for _, t := range raises {
			if v := pastBound(t); !math.IsNaN(v) {
				past = append(past, v)
			}
		}
		if len(past) > 0 {
			fmt.Fprintf(w, "The least over the %d raises with a first spacing: %.3f s.\n\n", len(past), slices.Min(past))
		}
	}
	fmt.Fprintf(w, "## `kptune inspect` at scale\n\n")
	fmt.Fprintf(w, "One fresh `kptune inspect --pid N --locate L -o json` after each pair of transitions, with each locator (scan: the memory\n")
	fmt.Fprintf(w, "scan; uprobe: a uprobe captures the runner as kube-proxy syncs), on the same kube-proxy.\n\n")
	wall := group(ls, byLocator, func(l churn.Locate) float64 { return l.Seconds })
	table(w, "Wall time", cols, wall, "%.3f")
	if err := plotScales(filepath.Join(dir, "inspect.svg"), cols, wall, "kptune inspect wall time (s)"); err != nil {
		return err
	}
	fmt.Fprintf(w, "![kptune inspect wall time](inspect.svg)\n\n")
	table(w, "Peak RSS of kptune (MiB)", cols, group(ls, byLocator, func(l churn.Locate) float64 { return l.PeakRSSMiB }), "%.1f")
	table(w, "RSS of the kube-proxy read (MiB)", cols, group(ls, byLocator, func(l churn.Locate) float64 { return l.KubeProxyRSSMiB }), "%.0f")
	if len(old) > 0 {
		fmt.Fprintf(w, "## Superseded records\n\n")
		fmt.Fprintf(w, "`bench/results/scale/%s/*.jsonl`, %d transitions of a writer since changed and measured again (bench/README.md\n", superseded, len(old))
		fmt.Fprintf(w, "says what changed); kept, and left out of every table and plot above. Their sync spacing once the change was in force:\n\n")
		oc := scales(old, nil)
		table(w, "First spacing, superseded", oc, group(old, byDirection, first), "%.2f")
		table(w, "Settled spacing, superseded", oc, group(old, byDirection, settled), "%.2f")
	}
	return nil
}

// plotScales draws each series' medians against the scale with their intervals as error bars; a
// missing figure is left out, never drawn as 0.
func plotScales(file string, cols []string, rows []series, ylabel string) error {
	p := plot.New()
	p.Y.Label.Text = ylabel
	p.X.Label.Text = "Services × endpoints"
	p.NominalX(cols...)
	p.Y.Min = 0
	p.Legend.Left = false
	p.Legend.Top = true
	width := 0.6 / float64(max(len(rows), 1))
	for i, s := range rows {
		var xy plotter.XYs
		var errs plotter.YErrors
		for j, c := range cols {
			iv, ok := s.at[c]
			if !ok || iv.N == 0 || math.IsNaN(iv.Median) {
				continue
			}
			xy = append(xy, plotter.XY{X: float64(j) - 0.3 + width*(float64(i)+0.5), Y: iv.Median})
			errs = append(errs, struct{ Low, High float64 }{iv.Median - iv.Low, iv.High - iv.Median})
		}
		if len(xy) == 0 {
			continue
		}
		line, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		line.Color, pts.Color, pts.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
		bars, err := plotter.NewYErrorBars(struct {
			plotter.XYer
			plotter.YErrorer
		}{xy, errs})
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		p.Add(line, bars, pts)
		p.Legend.Add(s.label, line, pts)
	}
	// The legend goes right of the data, in a margin of its own.
	p.X.Min, p.X.Max = -0.5, float64(len(cols))+0.9
	return p.Save(9*vg.Inch, 4.5*vg.Inch, file)
}
