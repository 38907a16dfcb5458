package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kptune/test/benchstat"
	"kptune/test/churn"
)

// TestReport: from records on disk, the report's tables hold each way's medians, intervals and
// counts by scale, a scale a way was not measured at as "–", the spacings after the change, and
// the inspections; the plots are written.
func TestReport(t *testing.T) {
	in := t.TempDir()
	var records []churn.ScaleRecord
	add := func(r churn.ScaleRecord) { records = append(records, r) }
	lengths := []churn.Maybe{0.05, 0.05, 0.05, 0.05}
	for i := range 5 {
		k := float64(i) / 100
		for _, services := range []int{1000, 10000} {
			restart := float64(services) / 1000 // 1 s at 1k, 10 s at 10k
			add(churn.ScaleRecord{Transition: &churn.Transition{How: churn.ByRestart, Mode: "iptables", From: time.Second, To: 5 * time.Second,
				ApplySeconds: restart + k, GapSeconds: restart + 1 + k, ProbeSeconds: restart + 0.5 + k,
				SyncTimes: []float64{restart + k, restart + 0.1, restart + 5.1, restart + 10.2}, SyncSeconds: lengths, Services: services, Endpoints: 10, Build: "v1.33.5 iptables"}})
			add(churn.ScaleRecord{Locate: &churn.Locate{Mode: "iptables", Locator: "scan", Seconds: 0.2 + k, PeakRSSMiB: 30, KubeProxyRSSMiB: 100,
				Services: services, Endpoints: 10, Build: "v1.33.5 iptables"}})
		}
		// kptune set measured at 1k only: its 10k cell is missing.
		add(churn.ScaleRecord{Transition: &churn.Transition{How: churn.BySet, Mode: "iptables", From: 5 * time.Second, To: time.Second,
			ApplySeconds: 0.4 + k, GapSeconds: 2 + k, ProbeSeconds: 3 + k, SyncTimes: []float64{0.3, 1.3, 2.3, 3.4}, SyncSeconds: lengths, Services: 1000, Endpoints: 10, Build: "v1.33.5 iptables"}})
	}
	if err := benchstat.WriteJSONL(filepath.Join(in, "all.jsonl"), records); err != nil {
		t.Fatal(err)
	}
	// A superseded record: its own section, in no other table.
	if err := os.Mkdir(filepath.Join(in, superseded), 0o755); err != nil {
		t.Fatal(err)
	}
	old := []churn.ScaleRecord{{Transition: &churn.Transition{How: churn.BySet, Mode: "nftables", From: time.Second, To: 5 * time.Second,
		ApplySeconds: 0.3, GapSeconds: 3, ProbeSeconds: 3, SyncTimes: []float64{0.4, 3.4, 8.4, 13.4}, SyncSeconds: lengths, Services: 10000, Endpoints: 10, Build: "v1.33.5 nftables"}}}
	if err := benchstat.WriteJSONL(filepath.Join(in, superseded, "10000x10.jsonl"), old); err != nil {
		t.Fatal(err)
	}
	doc, out := reportOf(t, in)
	for _, want := range []string{
		"15 transitions and\n10 inspections",
		"| | 1000 × 10 | 10000 × 10 |",
		"| iptables, kptune set | 0.42 [0.40, 0.44] (5) | – |",
		"| iptables, restart | 1.02 [1.00, 1.04] (5) | 10.02 [10.00, 10.04] (5) |",
		// The spacings between starts: the first once the change is in force (restart: after its
		// first sync), then settled.
		"| iptables, restart 1s→5s | 5.00 [5.00, 5.00] (5) | 5.00 [5.00, 5.00] (5) |",
		"| iptables, kptune set 5s→1s | 1.00 [1.00, 1.00] (5) | – |",
		"| iptables, restart 1s→5s | 5.10 [5.10, 5.10] (5) | 5.10 [5.10, 5.10] (5) |",
		"| iptables, scan | 0.220 [0.200, 0.240] (5) | 0.220 [0.200, 0.240] (5) |",
		"## Superseded records\n\n`bench/results/scale/superseded/*.jsonl`, 1 transitions",
		"### First spacing, superseded\n\n| | 10000 × 10 |\n|---|---|\n| nftables, kptune set 1s→5s | 3.00 [3.00, 3.00] (1) |",
		"### Settled spacing, superseded\n\n| | 10000 × 10 |\n|---|---|\n| nftables, kptune set 1s→5s | 5.00 [5.00, 5.00] (1) |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("the report lacks %q:\n%s", want, doc)
		}
	}
	if strings.Contains(doc, "nftables, kptune set | ") {
		t.Errorf("a superseded record is in the main tables:\n%s", doc)
	}
	for _, f := range []string{"apply.svg", "gap.svg", "probe.svg", "inspect.svg"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if err := os.WriteFile(filepath.Join(in, "bad.jsonl"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := generate(in, out); err == nil || !strings.Contains(err.Error(), "bad.jsonl:1") {
		t.Errorf("a record neither kind: %v", err)
	}
}

// TestCommittedReport: the committed bench/scale report, tables and plots, is what the committed
// records give (make bench-report regenerates it), so that no figure in it is stale or edited.
func TestCommittedReport(t *testing.T) {
	out := t.TempDir()
	if err := generate("../../../bench/results/scale", out); err != nil {
		t.Fatal(err)
	}
	if err := benchstat.SameFiles(out, "../../../bench/scale", "make bench-report"); err != nil {
		t.Error(err)
	}
}

// reportOf generates the report of the records in dir and returns it, and the directory it is in.
func reportOf(t *testing.T, dir string) (string, string) {
	t.Helper()
	out := t.TempDir()
	if err := generate(dir, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b), out
}

// TestPastBound: after a raise by kptune set the report gives how far the first spacing lies past
// the new period less the wait of the first sync in force behind the one in progress at the write.
func TestPastBound(t *testing.T) {
	in := t.TempDir()
	raise := func(syncTimes []float64, lengths ...churn.Maybe) churn.ScaleRecord {
		return churn.ScaleRecord{Transition: &churn.Transition{How: churn.BySet, Mode: "iptables", From: time.Second, To: 5 * time.Second,
			ApplySeconds: 0.3, GapSeconds: 2, ProbeSeconds: 1, SyncTimes: syncTimes, SyncSeconds: lengths, Services: 10000, Endpoints: 10, Build: "v1.33.5 iptables"}}
	}
	records := []churn.ScaleRecord{
		// In progress at the write from −1.2 s; the next started as it ended, 2 s after it, and
		// the one after that 3.1 s later: 0.1 s past 5 − 2.
		raise([]float64{0.8, 2.3, 5.4, 10.4}, 2, 1.5, 1.5, 1.5),
		// None in progress: 5 s apart, 0 past 5.
		raise([]float64{1, 6, 11}, 0.5, 0.5, 0.5),
		// And one 5s → 1s, not a raise: no part in it.
		{Transition: &churn.Transition{How: churn.BySet, Mode: "iptables", From: 5 * time.Second, To: time.Second, ApplySeconds: 0.3,
			SyncTimes: []float64{1, 1.5, 2}, SyncSeconds: []churn.Maybe{0.1, 0.1, 0.1}, Services: 10000, Endpoints: 10, Build: "v1.33.5 iptables"}},
	}
	if err := benchstat.WriteJSONL(filepath.Join(in, "10000x10.jsonl"), records); err != nil {
		t.Fatal(err)
	}
	doc, _ := reportOf(t, in)
	for _, want := range []string{
		"### First spacing past its bound\n\n| | 10000 × 10 |\n|---|---|\n| iptables, kptune set 1s→5s | 0.05 [0.00, 0.10] (2) |\n\n",
		"The least over the 2 raises with a first spacing: 0.000 s.",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("the report lacks %q:\n%s", want, doc)
		}
	}
}
