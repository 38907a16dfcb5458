package benchstat

import (
	"math"
	"path/filepath"
	"testing"
)

func TestBootstrap(t *testing.T) {
	i := Bootstrap([]float64{1, 2, 3, 4, 100, math.NaN()})
	if i.N != 5 || i.Median != 3 || i.Low > 3 || i.High < 3 || i.Low < 1 || i.High > 100 {
		t.Errorf("bootstrap: %+v", i)
	}
	if j := Bootstrap([]float64{1, 2, 3, 4, 100}); j != i {
		t.Errorf("not reproducible: %+v, then %+v", i, j)
	}
	if e := Bootstrap([]float64{math.NaN()}); e.N != 0 || !math.IsNaN(e.Median) || e.Format("%.1f") != "–" {
		t.Errorf("no values: %+v %q", e, e.Format("%.1f"))
	}
	same := Bootstrap([]float64{2, 2, 2, 2, 2})
	if same.Low != 2 || same.High != 2 || same.Format("%.1f") != "2.0 [2.0, 2.0]" {
		t.Errorf("identical values: %+v %q", same, same.Format("%.1f"))
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of an even count: %v", m)
	}
}

func TestJSONLRoundTrip(t *testing.T) {
	type rec struct {
		Name string  `json:"name"`
		X    float64 `json:"x"`
	}
	dir := t.TempDir()
	want := []rec{{"a <b>", 1.5}, {"c", 2}}
	if err := WriteJSONL(filepath.Join(dir, "r.jsonl"), want); err != nil {
		t.Fatal(err)
	}
	var got []rec
	if err := ReadJSONL(dir, func(_ string, r rec) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("read back %+v, want %+v", got, want)
	}
}
