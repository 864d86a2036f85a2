package slapolicy

import "time"

// Window shape: arrivals are counted in rateSlot buckets so a burst shows
// in the short window within seconds; distributions change slowly and are
// kept in distSlot buckets, which keeps a function's state small (a few
// kilobytes) however many calls it gets.
const (
	rateSlot = 5 * time.Second
	distSlot = time.Minute
)

// distBucket is one minute of execution and cold-start times.
type distBucket struct {
	start               time.Time
	exec, restore, boot *Histogram
}

// windows is one function's rolling record: arrival counts for the long
// window in rateSlot buckets, and distributions in distSlot buckets.
type windows struct {
	long      time.Duration
	rateStart []time.Time
	rateN     []uint32
	dist      []distBucket
	first     time.Time // the first observation: a younger window is shorter
}

func newWindows(long time.Duration) *windows {
	nr := int(long / rateSlot)
	nd := int(long / distSlot)
	return &windows{long: long, rateStart: make([]time.Time, nr), rateN: make([]uint32, nr), dist: make([]distBucket, nd)}
}

func (w *windows) observe(o Observation) {
	if w.first.IsZero() || o.At.Before(w.first) {
		w.first = o.At
	}
	rs := o.At.Truncate(rateSlot)
	i := int(rs.UnixNano()/int64(rateSlot)) % len(w.rateN)
	if !w.rateStart[i].Equal(rs) {
		if w.rateStart[i].After(rs) {
			return // older than the window: already forgotten
		}
		w.rateStart[i], w.rateN[i] = rs, 0
	}
	w.rateN[i]++

	ds := o.At.Truncate(distSlot)
	j := int(ds.UnixNano()/int64(distSlot)) % len(w.dist)
	b := &w.dist[j]
	if !b.start.Equal(ds) {
		if b.start.After(ds) {
			return
		}
		*b = distBucket{start: ds}
	}
	add := func(h **Histogram, d time.Duration) {
		if *h == nil {
			*h = new(Histogram)
		}
		(*h).Add(d)
	}
	add(&b.exec, o.Exec)
	switch o.Start {
	case StartRestore:
		add(&b.restore, o.StartTime)
	case StartBoot:
		add(&b.boot, o.StartTime)
	}
}

// rate is arrivals per second over the last span before now. A function
// first seen less than span ago is measured over its life so far (at least
// one rate slot), so a new function's first burst is not diluted.
func (w *windows) rate(now time.Time, span time.Duration) float64 {
	from := now.Add(-span)
	if w.first.After(from) {
		from = w.first
	}
	if d := now.Sub(from); d < rateSlot {
		from = now.Add(-rateSlot)
	}
	var n uint32
	for i, s := range w.rateStart {
		// A slot counts when it started inside the span; the slot holding
		// `from` counts whole, a small overestimate on the safe side.
		if !s.IsZero() && !s.After(now) && s.Add(rateSlot).After(from) {
			n += w.rateN[i]
		}
	}
	return float64(n) / now.Sub(from).Seconds()
}

// dists merges the distribution buckets of the long window before now.
func (w *windows) dists(now time.Time) (exec, restore, boot *Histogram) {
	exec, restore, boot = new(Histogram), new(Histogram), new(Histogram)
	from := now.Add(-w.long)
	for _, b := range w.dist {
		if b.start.IsZero() || b.start.After(now) || !b.start.Add(distSlot).After(from) {
			continue
		}
		exec.Merge(b.exec)
		restore.Merge(b.restore)
		boot.Merge(b.boot)
	}
	return exec, restore, boot
}

// mixture is the cold-start distribution: restores and boots weighted by
// how often each happened.
type mixture struct{ a, b *Histogram }

func (m mixture) total() float64 { return float64(m.a.Count() + m.b.Count()) }

func (m mixture) CDF(d time.Duration) float64 {
	t := m.total()
	if t == 0 {
		return 0
	}
	return (m.a.CDF(d)*float64(m.a.Count()) + m.b.CDF(d)*float64(m.b.Count())) / t
}

func (m mixture) Points() []Point {
	t := m.total()
	if t == 0 {
		return nil
	}
	var pts []Point
	for _, h := range []*Histogram{m.a, m.b} {
		w := float64(h.Count()) / t
		for _, p := range h.Points() {
			pts = append(pts, Point{p.V, p.P * w})
		}
	}
	return pts
}

func (m mixture) Mean() time.Duration {
	t := m.total()
	if t == 0 {
		return 0
	}
	return time.Duration((float64(m.a.Mean())*float64(m.a.Count()) + float64(m.b.Mean())*float64(m.b.Count())) / t)
}
