package churn

import (
	"math"
	"testing"
)

func TestLate(t *testing.T) {
	// A raise 1s → 5s at 10000 × 10 in iptables mode (bench/results/scale/10000x10.jsonl, pair 7): the
	// sync in progress at the write (0.293 s) started at −1.215 s and ended at 0.747 s, when the next
	// started; the one after that started 3.10 s later, 5 s less the 1.96 s the first waited.
	x := Transition{ApplySeconds: 0.293, To: 5e9, SyncTimes: []float64{0.7473, 2.1475, 5.5308}, SyncSeconds: []Maybe{1.9621, 1.4013, 1.6863}}
	if l := x.Late(); math.Abs(l-1.9610) > 1e-9 {
		t.Errorf("late %.4f, want 1.9610", l)
	}
	if s := x.Spacings(); len(s) != 1 || math.Abs(s[0]-(5-x.Late())) > 0.1 {
		t.Errorf("spacings %.3f, want one within 0.1 s of %.3f", s, 5-x.Late())
	}
	for name, y := range map[string]Transition{
		// 1000 × 10, iptables, pair 3: in progress at the write, but the next started 0.76 s after it ended.
		"the next sync started at its token":     {ApplySeconds: 0.104, SyncTimes: []float64{0.3274, 1.3049}, SyncSeconds: []Maybe{0.2374, 0.2179}},
		"the first sync started after the write": {ApplySeconds: 0.2, SyncTimes: []float64{1.5, 2.5}, SyncSeconds: []Maybe{1, 1}},
		"a length unknown":                       {ApplySeconds: 0.2, SyncTimes: []float64{1.5, 2.5}, SyncSeconds: []Maybe{2, Maybe(math.NaN())}},
		"one sync":                               {ApplySeconds: 0.2, SyncTimes: []float64{1.5}, SyncSeconds: []Maybe{2}},
		"no sync":                                {ApplySeconds: 0.2},
	} {
		if l := y.Late(); l != 0 {
			t.Errorf("%s: late %.3f, want 0", name, l)
		}
	}
}
