package churn

import (
	"math"
	"testing"
)

func TestBusy(t *testing.T) {
	// A raise 1s → 5s at 5000 × 10 in nftables mode (bench/results/scale/5000x10.jsonl, pair 5): the
	// sync in progress at the write (0.166 s) started at −0.62 s and ended at 1.87 s.
	x := Transition{ApplySeconds: 0.166, SyncTimes: []float64{1.87, 4.24, 6.85}, SyncSeconds: []Maybe{2.49, 2.37, 2.39}}
	if b := x.Busy(); math.Abs(b-1.704) > 1e-9 {
		t.Errorf("busy %.3f, want 1.704", b)
	}
	for name, y := range map[string]Transition{
		"the first sync started after the write": {ApplySeconds: 0.2, SyncTimes: []float64{1.5}, SyncSeconds: []Maybe{1}},
		"its length unknown":                     {ApplySeconds: 0.2, SyncTimes: []float64{1.5}, SyncSeconds: []Maybe{Maybe(math.NaN())}},
		"no sync":                                {ApplySeconds: 0.2},
	} {
		if b := y.Busy(); b != 0 {
			t.Errorf("%s: busy %.3f, want 0", name, b)
		}
	}
}
