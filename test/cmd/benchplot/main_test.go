package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kptune/test/benchstat"
	"kptune/test/churn"
)

func result(name string, s churn.Setup, cpu, latency float64) churn.Result {
	var ws []churn.Window
	for i := 0; i < 3; i++ {
		// The middle window holds the median; the others spread around it.
		d := float64(i-1) * 0.01
		ws = append(ws, churn.Window{Seconds: 60, CPUCores: cpu + d, NetProgP50: churn.Maybe(latency + d), Syncs: 10, SyncsPerMin: 10,
			Period: s.Period, Probes: []float64{latency}, Execs: map[string]int{"iptables-restore": 10}})
	}
	return churn.Result{Setup: s, Name: name, Workload: churn.Steady(10), Services: 5000, Endpoints: 10, Build: "v1.33.5 iptables", Windows: ws}
}

func TestReport(t *testing.T) {
	static := func(d time.Duration) churn.Setup { return churn.Setup{Mode: "iptables", Period: d} }
	adaptive := churn.Setup{Mode: "iptables", Period: time.Second, Adaptive: "policy: adaptive"}
	results := []churn.Result{
		result("static 1s", static(time.Second), 0.9, 1.0),
		result("static 5s", static(5*time.Second), 0.2, 4.0),
		result("adaptive", adaptive, 0.25, 3.0), // on the frontier: cheaper than 1s, faster than 5s
	}
	dir := t.TempDir()
	var out bytes.Buffer
	if err := report(&out, dir, results, nil, map[string]string{"cpus": "2"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| iptables | steady-10 | 1s, 0.250, 3.00 s | 0.900 | 3.6× | none |") {
		t.Errorf("adaptive on the frontier not reported as undominated:\n%s", out.String())
	}
	// Now a static period beats it on both, by less than the spread of its windows.
	results = append(results, result("static 2s", static(2*time.Second), 0.24, 2.0))
	out.Reset()
	if err := report(&out, dir, results, nil, map[string]string{"cpus": "2"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| 3.6× | static 2s (within the spread) |") {
		t.Errorf("adaptive dominated by static 2s within the spread, not reported so:\n%s", out.String())
	}
	// And one by far.
	results = append(results, result("static 3s", static(3*time.Second), 0.1, 1.5))
	out.Reset()
	if err := report(&out, dir, results, nil, map[string]string{"cpus": "2"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| 3.6× | static 2s (within the spread), static 3s |") {
		t.Errorf("adaptive dominated by static 3s beyond the spread, not reported so:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "| static 5s | 5s | 0.200 (0.190–0.210) |") {
		t.Errorf("the table does not give the median with its spread:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "| cpus | 2 |") {
		t.Errorf("the machine is not in the report")
	}
	for _, f := range []string{"cpu.svg", "latency.svg", "frontier-iptables-steady-10.svg"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestCommittedReport: the committed churn reports, tables and plots, are what the committed
// results give (make bench-report regenerates them), so that no figure in them is stale or edited.
func TestCommittedReport(t *testing.T) {
	for in, want := range map[string]string{"5000x10": "../../../bench/churn", "1000x10": "../../../bench/churn/1000x10"} {
		out := t.TempDir()
		if err := run("../../../bench/results/churn/"+in, out); err != nil {
			t.Fatal(err)
		}
		if err := benchstat.SameFiles(out, want, "make bench-report"); err != nil {
			t.Error(err)
		}
	}
}
