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

// TestReport: from records on disk, the report's table holds each kind of sync's medians,
// intervals and counts, the first sync apart from the later ones whatever the period it started
// at, the syncs that turned /healthz to 503 counted, and the later syncs set against the first.
func TestReport(t *testing.T) {
	in, out := t.TempDir(), t.TempDir()
	var records []churn.FullSync
	add := func(r churn.FullSync) {
		r.Services, r.Endpoints, r.Build, r.Commit = 5000, 10, "v1.33.5 nftables", "abc1234"
		records = append(records, r)
	}
	for i := range 5 {
		k := float64(i)
		start := time.Second
		if i%2 == 1 {
			start = 20 * time.Second
		}
		add(churn.FullSync{Mode: "nftables", Rep: i + 1, Period: start, Trigger: "start", Count: 2, Seconds: 40 + k, Waited: 42 + k})
		add(churn.FullSync{Mode: "nftables", Rep: i + 1, Period: time.Second, Trigger: "node labels", Count: 1, Seconds: 60 + k, Partial: 2, Waited: 61 + k, Unhealthy: float64(i % 2)})
		add(churn.FullSync{Mode: "nftables", Rep: i + 1, Period: 20 * time.Second, Trigger: "node labels", Count: 1, Seconds: 50 + k, Partial: 2, Waited: 68 + k, Unhealthy: 8})
	}
	if err := benchstat.WriteJSONL(filepath.Join(in, "5000x10.jsonl"), records); err != nil {
		t.Fatal(err)
	}
	if err := generate(in, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, want := range []string{
		"builds: v1.33.5 nftables; commits: abc1234.",
		"## 5000 × 10 Services × endpoints",
		"| nftables, first sync after the start | 42.0 [40.0, 44.0] (5) | – | – | 0.0 [0.0, 0.0] | 0 of 5 |",
		"| nftables, node labels, at 1s | 62.0 [60.0, 64.0] (5) | 2.00 [2.00, 2.00] | 63.0 [61.0, 65.0] | 0.0 [0.0, 1.0] | 2 of 5 |",
		"| nftables, node labels, at 20s | 52.0 [50.0, 54.0] (5) | 2.00 [2.00, 2.00] | 70.0 [68.0, 72.0] | 8.0 [8.0, 8.0] | 5 of 5 |",
		"- nftables: later full syncs 57.0 [52.0, 62.0] s (10), the first 42.0 [40.0, 44.0] s (5): 1.4× the first",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("report lacks %q:\n%s", want, doc)
		}
	}
	if strings.Index(doc, "first sync after the start") > strings.Index(doc, "at 1s |") || strings.Index(doc, "at 1s |") > strings.Index(doc, "at 20s |") {
		t.Errorf("rows out of order:\n%s", doc)
	}
	if err := generate(t.TempDir(), out); err == nil {
		t.Errorf("no records: no error")
	}
}

// TestCommittedReport: the committed bench/fullsync report is what the committed records give
// (make bench-report regenerates it), so that no figure in it is stale or edited.
func TestCommittedReport(t *testing.T) {
	out := t.TempDir()
	if err := generate("../../../bench/results/fullsync", out); err != nil {
		t.Fatal(err)
	}
	if err := benchstat.SameFiles(out, "../../../bench/fullsync", "make bench-report"); err != nil {
		t.Error(err)
	}
}
