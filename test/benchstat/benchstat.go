// Package benchstat is what the bench reports share: medians with percentile bootstrap intervals,
// reproducible from run to run, the reading of their JSON-lines records, and the check that a
// committed report is what its records give.
package benchstat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Interval is a median with a bootstrap confidence interval; N is the number of values, and a
// missing figure (no value) is NaN throughout.
type Interval struct {
	Median, Low, High float64
	N                 int
}

// Bootstrap is the median of xs (NaNs dropped) with a 95 % percentile bootstrap interval from
// resamples drawn with a fixed seed, so that a report is the same each time it is made.
func Bootstrap(xs []float64) Interval {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Interval{math.NaN(), math.NaN(), math.NaN(), 0}
	}
	const resamples = 4000
	rng := rand.New(rand.NewPCG(1, 2))
	meds := make([]float64, resamples)
	s := make([]float64, len(v))
	for i := range meds {
		for j := range s {
			s[j] = v[rng.IntN(len(v))]
		}
		meds[i] = Median(s)
	}
	slices.Sort(meds)
	return Interval{Median: Median(v), Low: meds[resamples*25/1000], High: meds[resamples*975/1000-1], N: len(v)}
}

// Median of xs, which must not be empty; NaNs are not dropped.
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Format writes an interval as "median [low, high]" with format for each figure, and a missing one
// as "–".
func (i Interval) Format(format string) string {
	if i.N == 0 {
		return "–"
	}
	return fmt.Sprintf(format+" ["+format+", "+format+"]", i.Median, i.Low, i.High)
}

// Scale multiplies an interval by k.
func (i Interval) Scale(k float64) Interval {
	i.Median, i.Low, i.High = i.Median*k, i.Low*k, i.High*k
	return i
}

// ReadJSONL decodes every line of every *.jsonl file in dir, files in name order, into a T and
// hands it to each with its file; an error names the file and line.
func ReadJSONL[T any](dir string, each func(file string, v T) error) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, file := range files {
		if err := readFile(file, each); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSONL writes vs to file, one JSON line each, as ReadJSONL reads them.
func WriteJSONL[T any](file string, vs []T) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	for _, v := range vs {
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return os.WriteFile(file, b.Bytes(), 0o644)
}

func readFile[T any](file string, each func(string, T) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for n := 1; sc.Scan(); n++ {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
		if err := each(file, v); err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
	}
	return sc.Err()
}

// SameFiles reports how a generated report directory (got) differs from the committed one (want):
// a file missing from either, or one whose bytes differ, named with the command that regenerates it.
func SameFiles(got, want, regenerate string) error {
	names := func(dir string) (map[string]bool, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		m := map[string]bool{}
		for _, e := range entries {
			if e.Type().IsRegular() {
				m[e.Name()] = true
			}
		}
		return m, nil
	}
	g, err := names(got)
	if err != nil {
		return err
	}
	w, err := names(want)
	if err != nil {
		return err
	}
	var diffs []string
	for _, name := range slices.Sorted(maps.Keys(g)) {
		if !w[name] {
			diffs = append(diffs, name+" is not committed")
			continue
		}
		a, errA := os.ReadFile(filepath.Join(got, name))
		b, errB := os.ReadFile(filepath.Join(want, name))
		if err := errors.Join(errA, errB); err != nil {
			return err
		}
		if !bytes.Equal(a, b) {
			diffs = append(diffs, name+" differs from what its records give")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(w)) {
		if !g[name] {
			diffs = append(diffs, name+" is committed but no record makes it")
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%s: %s; run %s and commit the result", want, strings.Join(diffs, ", "), regenerate)
	}
	return nil
}
