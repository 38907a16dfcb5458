// Package docs holds kptune's documentation beside the README; its test checks that every headline
// figure of the README (and of the bench report's tables it repeats) is the one the committed
// results file gives, so that a new run that changes a figure, or an edit of the README, cannot
// leave the two disagreeing.
package docs

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"kptune/test/benchstat"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// expect fails unless doc holds want, naming the figure and its source.
func expect(t *testing.T, doc, docName, want, what string) {
	t.Helper()
	if !strings.Contains(doc, want) {
		t.Errorf("%s: %s should read %q (from its results file)", docName, what, want)
	}
}

// e2eSummary reads the summary table TestBenchDeploy ends with: name → median, min, max.
func e2eSummary(t *testing.T, text string) map[string][3]float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)bench_test\.go:\d+: (\w+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+\d+$`)
	out := map[string][3]float64{}
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		var v [3]float64
		for i := range v {
			f, err := strconv.ParseFloat(m[2+i], 64)
			if err != nil {
				t.Fatal(err)
			}
			v[i] = f
		}
		out[m[1]] = v
	}
	if len(out) == 0 {
		t.Fatal("bench/results/e2e-bench.txt holds no summary table")
	}
	return out
}

// scaleRecord is what the README takes of a scale bench record (test/churn ScaleRecord).
type scaleRecord struct {
	Transition *struct {
		How, Mode                              string
		ApplySeconds, GapSeconds, ProbeSeconds float64
	}
	Locate *struct {
		Locator             string
		Seconds, PeakRSSMiB float64
	}
}

func scaleRecords(t *testing.T, path string) []scaleRecord {
	t.Helper()
	var out []scaleRecord
	for _, line := range strings.Split(strings.TrimSpace(read(t, path)), "\n") {
		var r scaleRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, r)
	}
	return out
}

// reportTable reads one table of a report's section: each row's first cell → the cells after it.
func reportTable(t *testing.T, report, section, heading string) map[string][]string {
	t.Helper()
	i := strings.Index(report, section+"\n")
	if i < 0 {
		t.Fatalf("the report has no section %q", section)
	}
	rest := report[i+len(section):]
	if j := strings.Index(rest, "\n## "); j >= 0 {
		rest = rest[:j]
	}
	i = strings.Index(rest, heading+"\n")
	if i < 0 {
		t.Fatalf("the report's section %q has no table %q", section, heading)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(rest[i+len(heading):], "\n")[2:] {
		if line == "" && len(rows) > 0 {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if !strings.HasPrefix(line, "|") || len(cells) < 2 || strings.HasPrefix(line, "|---") {
			continue
		}
		for k := range cells {
			cells[k] = strings.TrimSpace(cells[k])
		}
		rows[cells[0]] = cells[1:]
	}
	if len(rows) == 0 {
		t.Fatalf("the report's table %q in %q is empty", heading, section)
	}
	return rows
}

// seconds writes a cell "median [low, high]" of seconds as "median s [low, high]".
func seconds(cell string) string {
	median, interval, _ := strings.Cut(cell, " ")
	return median + " s " + interval
}

// leading is the number a cell begins with (a median before its interval).
func leading(t *testing.T, cell string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(strings.Fields(cell)[0], 64)
	if err != nil {
		t.Fatalf("cell %q: %v", cell, err)
	}
	return f
}

func TestREADMEFiguresMatchResults(t *testing.T) {
	readme := read(t, "README.md")
	bench := read(t, "bench/README.md")

	// Restart against kptune set at 10000 × 10: the scale bench's intervals.
	scale := scaleRecords(t, "bench/results/scale/10000x10.jsonl")
	modes := map[string]bool{"iptables": true} // and every other mode the file holds
	for _, r := range scale {
		if r.Transition != nil {
			modes[r.Transition.Mode] = true
		}
	}
	for _, mode := range slices.Sorted(maps.Keys(modes)) {
		for _, row := range []struct{ how, label, apply string }{
			{"restart", "restart with the new flag", "%.1f"}, {"kptune set", "`kptune set`", "%.2f"},
		} {
			var apply, gap, probe []float64
			for _, r := range scale {
				if x := r.Transition; x != nil && x.Mode == mode && x.How == row.how {
					apply, gap, probe = append(apply, x.ApplySeconds), append(gap, x.GapSeconds), append(probe, x.ProbeSeconds)
				}
			}
			if len(apply) < 10 {
				t.Errorf("10000x10.jsonl: %d %s transitions in %s mode, want 10", len(apply), row.how, mode)
				continue
			}
			s := func(format string, xs []float64) string {
				i := benchstat.Bootstrap(xs)
				return fmt.Sprintf(format+" s ["+format+", "+format+"]", i.Median, i.Low, i.High)
			}
			expect(t, readme, "README", fmt.Sprintf("| %s | %s | %s | %s | %s |", mode, row.label, s(row.apply, apply), s("%.1f", gap), s("%.1f", probe)),
				fmt.Sprintf("the %s %s row", mode, row.how))
		}
	}
	var walls, peaks []float64
	for _, r := range scale {
		if l := r.Locate; l != nil && l.Locator == "scan" {
			walls, peaks = append(walls, l.Seconds), append(peaks, l.PeakRSSMiB)
		}
	}
	iw, ip := benchstat.Bootstrap(walls), benchstat.Bootstrap(peaks)
	expect(t, readme, "README", fmt.Sprintf("| %.2f s [%.2f, %.2f] / %.0f MiB [%.0f, %.0f] |", iw.Median, iw.Low, iw.High, ip.Median, ip.Low, ip.High), "inspect at 10000 × 10")

	// The objective agent through the trace bench's day at 5000 × 10, in each mode, from the trace
	// report, which TestCommittedReport (test/cmd/tracereport) checks against its records.
	trace := read(t, "bench/trace/README.md")
	// Where a static period cheaper than the cheapest meeting the objective throughout is undecided
	// on it, the README names it too, between the agent and that one.
	for _, m := range []struct{ mode, cpu, p99, steady string }{
		{"iptables", "| kube-proxy CPU through the trace bench's day (quiet, a rolling update, steady churn, scale-downs, quiet), the objective agent (p99 ≤ 10 s) / %s, the cheapest static period that meets it throughout (median of %s, 95 %% interval) | %s cores |",
			"| network programming p99 in the trace's worst phase, same | %s |",
			"| kube-proxy CPU in the trace's steady churn, static 1s / the objective agent | %s / %s cores (%.1f×) |"},
		{"nftables", "| same day, nftables: the objective agent / %s, the cheapest static period that meets it throughout (median of %s, 95 %% interval) | %s cores |",
			"| network programming p99 in the trace's worst phase, same, nftables | %s |",
			"| kube-proxy CPU in the trace's steady churn, static 1s / the objective agent, nftables | %s / %s cores (%.1f×) |"},
	} {
		section := "## 5000x10: 5000 × 10 Services × endpoints, " + m.mode
		whole, cpu := reportTable(t, trace, section, "### The whole trace"), reportTable(t, trace, section, "### kube-proxy CPU (cores)")
		objective, ok := whole["objective"]
		if !ok || len(objective) < 2 {
			t.Fatalf("bench/trace/README.md: no objective row at 5000x10, %s", m.mode)
		}
		cheapest := func(judged string, under float64) string {
			best := ""
			for _, name := range slices.Sorted(maps.Keys(whole)) {
				if cells := whole[name]; strings.HasPrefix(name, "static ") && len(cells) > 2 && cells[2] == judged && leading(t, cells[0]) < under && (best == "" || leading(t, cells[0]) < leading(t, whole[best][0])) {
					best = name
				}
			}
			return best
		}
		meeting := cheapest("yes", math.Inf(1))
		if meeting == "" {
			t.Fatalf("bench/trace/README.md: no static period meets the objective throughout at 5000x10, %s", m.mode)
		}
		names, cpus, p99s := meeting, objective[0]+" / "+whole[meeting][0], seconds(objective[1])+" / "+seconds(whole[meeting][1])
		if undecided := cheapest("?", leading(t, whole[meeting][0])); undecided != "" {
			names = undecided + ", undecided on it throughout, / " + names
			cpus = objective[0] + " / " + whole[undecided][0] + " / " + whole[meeting][0]
			p99s = seconds(objective[1]) + " / " + seconds(whole[undecided][1]) + " / " + seconds(whole[meeting][1])
		}
		reps := regexp.MustCompile(`objective (\d+);`).FindStringSubmatch(trace[strings.Index(trace, section):])
		if reps == nil {
			t.Fatalf("bench/trace/README.md: no repetition count for the objective agent at 5000x10, %s", m.mode)
		}
		expect(t, readme, "README", fmt.Sprintf(m.cpu, names, reps[1], cpus), "the trace's CPU, "+m.mode)
		expect(t, readme, "README", fmt.Sprintf(m.p99, p99s), "the trace's p99, "+m.mode)
		if len(cpu["static 1s"]) < 3 || len(cpu["objective"]) < 3 {
			t.Fatalf("bench/trace/README.md: the 5000x10 %s tables lack the static 1s or objective rows' phases", m.mode)
		}
		steady1s, steadyAgent := cpu["static 1s"][2], cpu["objective"][2]
		expect(t, readme, "README", fmt.Sprintf(m.steady, steady1s, steadyAgent, leading(t, steady1s)/leading(t, steadyAgent)), "the trace's steady churn, "+m.mode)
	}

	// Full syncs in nftables mode (the limitation): the report's figure, itself checked against the
	// records by test/cmd/fullsyncreport.
	fs := regexp.MustCompile(`- nftables: later full syncs ([\d.]+ \[[\d.]+, [\d.]+\]) s \((\d+)\)`).FindStringSubmatch(read(t, "bench/fullsync/README.md"))
	if fs == nil {
		t.Fatal("bench/fullsync/README.md: no nftables line")
	}
	expect(t, readme, "README", fmt.Sprintf("full syncs (one an hour, after a failed\n  sync, when its Node's labels change) took %s under churn", strings.Replace(fs[1], " [", " s [", 1)), "nftables full syncs")

	// The deployed agent.
	e := e2eSummary(t, read(t, "bench/results/e2e-bench.txt"))
	f := func(name string) [3]float64 {
		v, ok := e[name]
		if !ok {
			t.Fatalf("e2e-bench.txt has no %s", name)
		}
		return v
	}
	w, n := f("install_to_verified_write_s"), f("new_kube_proxy_first_sync_to_verified_write_s")
	expect(t, readme, "README", fmt.Sprintf("| %.1f s (%.1f – %.1f s) |", w[0], w[1], w[2]), "helm install → verified")
	expect(t, readme, "README", fmt.Sprintf("| %.2f s (%.2f – %.2f s) |", n[0], n[1], n[2]), "first sync → verified")
	sc, ac := f("static_agent_cpu_percent"), f("adaptive_agent_cpu_percent")
	expect(t, readme, "README", fmt.Sprintf("| %.2f %% / %.2f %% of a core |", sc[0], ac[0]), "agent CPU")
	rss, peak := f("static_agent_rss_mib"), f("static_agent_peak_rss_mib")
	expect(t, readme, "README", fmt.Sprintf("| %.0f MiB / %.0f MiB |", rss[0], peak[0]), "agent RSS")
	ready := f("install_to_ready_s")
	expect(t, bench, "bench/README.md", fmt.Sprintf("| helm install → agent pod Ready | %.1f s | %.1f – %.1f s |", ready[0], ready[1], ready[2]), "install → Ready")
	expect(t, bench, "bench/README.md", fmt.Sprintf("| %.1f s | %.1f – %.1f s |", w[0], w[1], w[2]), "install → verified")
	expect(t, bench, "bench/README.md", fmt.Sprintf("| agent CPU, static policy | %.2f %% of a core | %.2f – %.2f %% |", sc[0], sc[1], sc[2]), "agent CPU, static")
	expect(t, bench, "bench/README.md", fmt.Sprintf("| agent CPU, adaptive policy | %.2f %% of a core | %.2f – %.2f %% |", ac[0], ac[1], ac[2]), "agent CPU, adaptive")

	// The e2e's restart loop.
	m := regexp.MustCompile(`figure restart_loop_first_sync_to_verified_write_s median ([\d.]+) min [\d.]+ max ([\d.]+) n 20`).
		FindStringSubmatch(read(t, "bench/results/e2e.txt"))
	if m == nil {
		t.Fatal("bench/results/e2e.txt has no restart-loop figure")
	}
	med, _ := strconv.ParseFloat(m[1], 64)
	expect(t, readme, "README", fmt.Sprintf("at most\n  %s s after it over 20 container restarts (median %.1f s)", m[2], med), "the restart loop")

	// The stop: medians of the five idle runs' p50 and p99.
	stop := read(t, "bench/results/stop.txt")
	idle, _, _ := strings.Cut(stop, "# loaded")
	re := regexp.MustCompile(`([\d.]+) default-p50-µs\s+([\d.]+) default-p99-µs`)
	var p50, p99 []float64
	for _, m := range re.FindAllStringSubmatch(idle, -1) {
		a, _ := strconv.ParseFloat(m[1], 64)
		b, _ := strconv.ParseFloat(m[2], 64)
		p50, p99 = append(p50, a), append(p99, b)
	}
	if len(p50) != 5 {
		t.Fatalf("stop.txt: %d idle runs, want 5", len(p50))
	}
	expect(t, readme, "README", fmt.Sprintf("| %.0f µs / %.1f ms |", benchstat.Median(p50), benchstat.Median(p99)/1000), "the stop")

	// kube-proxy's CPU in steady churn: the median of a result's windows.
	cores := func(file string) float64 {
		var r struct{ Windows []struct{ CPUCores float64 } }
		if err := json.Unmarshal([]byte(read(t, "bench/results/churn/5000x10/"+file)), &r); err != nil {
			t.Fatal(err)
		}
		var xs []float64
		for _, w := range r.Windows {
			xs = append(xs, w.CPUCores)
		}
		if len(xs) == 0 {
			t.Fatalf("%s: no window", file)
		}
		return benchstat.Median(xs)
	}
	for _, mode := range []string{"iptables", "nftables"} {
		want := fmt.Sprintf("| %.3f / %.3f cores |", cores(mode+"-static-1s-steady-10.json"), cores(mode+"-adaptive-steady-10.json"))
		expect(t, readme, "README", want, mode+" steady churn CPU")
	}
}

// TestWriteBenchmarkMatchesResults: the bench report's BenchmarkWrite table is the medians and
// ranges of bench/results/write.txt.
func TestWriteBenchmarkMatchesResults(t *testing.T) {
	bench := read(t, "bench/README.md")
	metrics := map[string][]float64{}
	re := regexp.MustCompile(`([\d.]+) ([\w-]+/write|cpu-ratio)`)
	for _, line := range strings.Split(read(t, "bench/results/write.txt"), "\n") {
		if !strings.HasPrefix(line, "BenchmarkWrite") {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(line, -1) {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			metrics[m[2]] = append(metrics[m[2]], v)
		}
	}
	if n := len(metrics["held-cpu-ms/write"]); n < 5 {
		t.Fatalf("bench/results/write.txt: %d runs, want 5", n)
	}
	span := func(name string, digits int) string {
		xs := metrics[name]
		f := "%." + strconv.Itoa(digits) + "f"
		return fmt.Sprintf(f+" ms ("+f+" – "+f+")", benchstat.Median(xs), slices.Min(xs), slices.Max(xs))
	}
	r := metrics["cpu-ratio"]
	expect(t, bench, "bench/README.md", fmt.Sprintf("| CPU | %s | %s | %.1f× (%.1f – %.1f) |",
		span("scan-cpu-ms/write", 1), span("held-cpu-ms/write", 1), benchstat.Median(r), slices.Min(r), slices.Max(r)), "BenchmarkWrite CPU")
	expect(t, bench, "bench/README.md", fmt.Sprintf("| CPU besides the stop | %s | %s | |",
		span("scan-cpu-besides-stop-ms/write", 1), span("held-cpu-besides-stop-ms/write", 1)), "BenchmarkWrite CPU besides the stop")
	expect(t, bench, "bench/README.md", fmt.Sprintf("| bytes allocated | %.1f MiB | %.2f MiB | |",
		benchstat.Median(metrics["scan-MiB/write"]), benchstat.Median(metrics["held-MiB/write"])), "BenchmarkWrite bytes")

	agent := map[string][]float64{}
	re = regexp.MustCompile(`([\d.]+) ([\w/-]+)`)
	for _, line := range strings.Split(read(t, "bench/results/agent-write.txt"), "\n") {
		if strings.HasPrefix(line, "BenchmarkAgentWrite") {
			for _, m := range re.FindAllStringSubmatch(line, -1) {
				v, _ := strconv.ParseFloat(m[1], 64)
				agent[m[2]] = append(agent[m[2]], v)
			}
		}
	}
	round := agent["cpu-ms/round-with-write"]
	if len(round) < 5 || slices.Max(agent["scans"]) != 1 {
		t.Fatalf("bench/results/agent-write.txt: %d runs, scans %v", len(round), agent["scans"])
	}
	expect(t, bench, "bench/README.md", fmt.Sprintf("A round that writes costs %.1f ms of CPU (%.1f – %.1f:",
		benchstat.Median(round), slices.Min(round), slices.Max(round)), "BenchmarkAgentWrite CPU")
	expect(t, bench, "bench/README.md", fmt.Sprintf("located the runners once (one scan) for its %.0f\nwrites",
		benchstat.Median(agent["writes"])), "BenchmarkAgentWrite writes")
}
