// Package benchstat is what the bench reports share: medians with percentile bootstrap intervals,
// reproducible from run to run, and the reading of their JSON-lines records.
package benchstat

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
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
