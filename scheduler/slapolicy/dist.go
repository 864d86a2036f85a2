package slapolicy

import (
	"math"
	"time"
)

// Dist is a distribution of durations as the sizing model needs it: its
// CDF, and a discrete form (mass at points) to add two of them together.
type Dist interface {
	// CDF is P(X ≤ d).
	CDF(d time.Duration) float64
	// Points is the distribution as masses at durations, summing to 1;
	// empty when nothing is known.
	Points() []Point
	// Mean is E[X]; 0 when nothing is known.
	Mean() time.Duration
}

// Point is mass P at duration V.
type Point struct {
	V time.Duration
	P float64
}

// Fixed is a duration that is always the same: the table tests' exec and
// cold-start times.
type Fixed time.Duration

// CDF implements Dist.
func (f Fixed) CDF(d time.Duration) float64 {
	if time.Duration(f) <= d {
		return 1
	}
	return 0
}

// Points implements Dist.
func (f Fixed) Points() []Point { return []Point{{time.Duration(f), 1}} }

// Mean implements Dist.
func (f Fixed) Mean() time.Duration { return time.Duration(f) }

// SumCDF is P(A + B ≤ d) for independent A and B: a cold start followed by
// the execution. An unknown A (no points) counts as never within d, so a
// function whose cold starts were never seen is sized as if each one missed.
func SumCDF(a, b Dist, d time.Duration) float64 {
	var p float64
	for _, pt := range a.Points() {
		if pt.V > d {
			continue
		}
		p += pt.P * b.CDF(d-pt.V)
	}
	return math.Min(p, 1)
}

// Histogram layout: log-spaced buckets, histPerOctave per doubling from
// histMin, so the relative error of any duration is under 19 % and 96
// buckets span 100 µs to about 28 minutes — longer than any deadline
// (registry.MaxSLADeadlineMs is 15 minutes).
const (
	histMin       = 100 * time.Microsecond
	histPerOctave = 4
	histBuckets   = 96
)

// histUpper is the upper bound of bucket i; bucket 0 holds [0, histMin].
func histUpper(i int) time.Duration {
	return time.Duration(float64(histMin) * math.Exp2(float64(i)/histPerOctave))
}

func histLower(i int) time.Duration {
	if i == 0 {
		return 0
	}
	return histUpper(i - 1)
}

func histBucket(d time.Duration) int {
	if d <= histMin {
		return 0
	}
	i := int(math.Ceil(math.Log2(float64(d)/float64(histMin)) * histPerOctave))
	// Floating point may land one bucket off at an exact boundary.
	for i > 0 && histUpper(i-1) >= d {
		i--
	}
	for i < histBuckets-1 && histUpper(i) < d {
		i++
	}
	return min(i, histBuckets-1)
}

// Histogram counts durations in log-spaced buckets; the zero value is empty.
type Histogram struct {
	n     [histBuckets]uint32
	total uint64
	sum   time.Duration
}

// Add counts one duration.
func (h *Histogram) Add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.n[histBucket(d)]++
	h.total++
	h.sum += d
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	for i, c := range o.n {
		h.n[i] += c
	}
	h.total += o.total
	h.sum += o.sum
}

// Count is how many durations were added.
func (h *Histogram) Count() uint64 { return h.total }

// Mean implements Dist.
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return h.sum / time.Duration(h.total)
}

// CDF implements Dist, interpolating linearly inside the bucket that holds
// d. An empty histogram answers 0.
func (h *Histogram) CDF(d time.Duration) float64 {
	if h.total == 0 || d < 0 {
		return 0
	}
	b := histBucket(d)
	var c float64
	for i := 0; i < b; i++ {
		c += float64(h.n[i])
	}
	lo, hi := histLower(b), histUpper(b)
	if d >= hi {
		c += float64(h.n[b])
	} else if hi > lo {
		c += float64(h.n[b]) * float64(d-lo) / float64(hi-lo)
	}
	return math.Min(c/float64(h.total), 1)
}

// Points implements Dist: each non-empty bucket's mass at its midpoint.
func (h *Histogram) Points() []Point {
	if h.total == 0 {
		return nil
	}
	var pts []Point
	for i, c := range h.n {
		if c == 0 {
			continue
		}
		pts = append(pts, Point{(histLower(i) + histUpper(i)) / 2, float64(c) / float64(h.total)})
	}
	return pts
}

// Quantile is the smallest bucket bound below which at least q of the
// durations lie (an upper estimate); 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	want := q * float64(h.total)
	var c float64
	for i, n := range h.n {
		c += float64(n)
		if c >= want && n > 0 {
			return histUpper(i)
		}
	}
	return histUpper(histBuckets - 1)
}
