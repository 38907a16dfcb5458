package kpmetrics

import (
	"math"
	"slices"
)

// Bucket is one cumulative histogram bucket: Count samples were at most UpperBound.
type Bucket struct {
	UpperBound float64
	Count      uint64
}

// Buckets sums a histogram's cumulative buckets over all its label sets, by upper bound, in
// increasing order; the +Inf bucket is last, holding the sample count.
func (s Snapshot) Buckets(name string) []Bucket {
	sums := map[float64]uint64{}
	for _, m := range s.metrics(name) {
		h := m.GetHistogram()
		inf := false
		for _, b := range h.GetBucket() {
			sums[b.GetUpperBound()] += b.GetCumulativeCount()
			inf = inf || math.IsInf(b.GetUpperBound(), 1)
		}
		if !inf && len(h.GetBucket()) > 0 {
			sums[math.Inf(1)] += h.GetSampleCount()
		}
	}
	out := make([]Bucket, 0, len(sums))
	for ub, n := range sums {
		out = append(out, Bucket{ub, n})
	}
	slices.SortFunc(out, func(a, b Bucket) int { return cmpFloat(a.UpperBound, b.UpperBound) })
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Count is how many samples a histogram gained between two scrapes: its +Inf bucket's growth
// (before empty: the histogram had no sample yet, as a labelled one is not exposed before its
// first). 0 when the buckets of the two scrapes differ or count backwards.
func Count(before, after []Bucket) uint64 {
	if len(after) == 0 || (len(before) != 0 && len(before) != len(after)) {
		return 0
	}
	n := after[len(after)-1].Count
	if len(before) != 0 {
		if before[len(before)-1].Count > n {
			return 0
		}
		n -= before[len(before)-1].Count
	}
	return n
}

// Quantile estimates the q-quantile (0 ≤ q ≤ 1) of the samples a histogram gained between two
// scrapes, as Prometheus's histogram_quantile does: linearly within the bucket that holds it, the
// first bucket starting at 0; a quantile in the +Inf bucket is the largest finite bound. It returns
// NaN when no sample was added or the buckets of the two scrapes differ.
func Quantile(q float64, before, after []Bucket) float64 {
	if q < 0 || q > 1 || len(after) == 0 || (len(before) != 0 && len(before) != len(after)) {
		return math.NaN()
	}
	delta := make([]Bucket, len(after))
	for i, b := range after {
		d := b
		if len(before) != 0 {
			if before[i].UpperBound != b.UpperBound || before[i].Count > b.Count {
				return math.NaN() // not the same histogram, or kube-proxy restarted in between
			}
			d.Count -= before[i].Count
		}
		delta[i] = d
	}
	total := delta[len(delta)-1].Count
	if total == 0 || !math.IsInf(delta[len(delta)-1].UpperBound, 1) {
		return math.NaN()
	}
	rank := q * float64(total)
	lower, below := 0.0, uint64(0)
	for i, b := range delta {
		if float64(b.Count) >= rank && b.Count > below {
			if math.IsInf(b.UpperBound, 1) {
				if i == 0 {
					return math.NaN()
				}
				return delta[i-1].UpperBound
			}
			return lower + (b.UpperBound-lower)*(rank-float64(below))/float64(b.Count-below)
		}
		lower, below = b.UpperBound, b.Count
	}
	return lower
}
