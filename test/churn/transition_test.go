package churn

import (
	"math"
	"testing"
)

func TestSpacings(t *testing.T) {
	// A raise 1s → 5s at 10000 × 10 in iptables mode (bench/results/scale/10000x10.jsonl, pair 7): the
	// sync in progress at the write (0.293 s) started at −1.215 s and ended at 0.747 s, when the next
	// started; the one after that started 3.10 s later, 5 s less the 1.96 s the first waited, and the
	// next 5.00 s after (the one before it started at its token).
	x := Transition{ApplySeconds: 0.293, To: 5e9, SyncTimes: []float64{0.7473, 2.1475, 5.5308, 11.3937}, SyncSeconds: []Maybe{1.9621, 1.4013, 1.6863, 2.5447}}
	s := x.Spacings()
	if len(s) != 2 || math.Abs(s[0].Seconds-3.0983) > 1e-9 || math.Abs(s[0].Late-1.9610) > 1e-9 || math.Abs(s[1].Seconds-5.0045) > 1e-9 || s[1].Late != 0 {
		t.Fatalf("spacings %+v, want {3.0983 1.9610} {5.0045 0}", s)
	}
	if s[0].Seconds < 5-s[0].Late {
		t.Errorf("the first spacing %.3f under the bucket's bound %.3f", s[0].Seconds, 5-s[0].Late)
	}
	for name, c := range map[string]struct {
		x    Transition
		want []Spacing
	}{
		// 1000 × 10, iptables, pair 3: in progress at the write, but the next started 0.76 s after it ended.
		"the next sync started at its token": {Transition{ApplySeconds: 0.104, SyncTimes: []float64{0.3274, 1.3049, 6.3062}, SyncSeconds: []Maybe{0.2374, 0.2179, 0.2185}}, []Spacing{{Seconds: 5.0007}}},
		"a sync before the write":            {Transition{ApplySeconds: 0.2, SyncTimes: []float64{0.1, 1.5, 2.5}, SyncSeconds: []Maybe{0.05, 1, 1}}, []Spacing{{Seconds: 1}}},
		"a length unknown":                   {Transition{ApplySeconds: 0.2, SyncTimes: []float64{1.5, 2.5, 3.5}, SyncSeconds: []Maybe{1, Maybe(math.NaN()), 1}}, nil},
		"a length misread":                   {Transition{ApplySeconds: 0.2, SyncTimes: []float64{1.5, 2.5}, SyncSeconds: []Maybe{1, 1.5}}, nil},
		"no sync":                            {Transition{ApplySeconds: 0.2}, nil},
	} {
		got := c.x.Spacings()
		if len(got) != len(c.want) {
			t.Errorf("%s: %+v, want %+v", name, got, c.want)
			continue
		}
		for i := range got {
			if math.Abs(got[i].Seconds-c.want[i].Seconds) > 1e-9 || got[i].Late != c.want[i].Late {
				t.Errorf("%s: %+v, want %+v", name, got, c.want)
			}
		}
	}
}
