package slaledger

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one finished invocation of a function with an SLA.
type Record struct {
	Function string
	At       time.Time
	Good     bool // succeeded within the deadline
	Error    bool
	Start    Start
}

// Start is how the invocation's instance started.
type Start int

// Start kinds; StartNone when the invocation never reached an instance.
const (
	StartNone Start = iota
	StartWarm
	StartRestore
	StartBoot
)

// DefaultQueue is how many records a Recorder holds for a slow store
// before it drops new ones.
const DefaultQueue = 8192

// Recorder takes records without blocking and writes them to its store in
// batches: whatever arrived while the previous batch was written, added up
// per function and minute. When the store is slower than the invocations
// for long enough to fill the queue, records are dropped and counted
// (Dropped), so a stalled Redis never stalls the gateway.
type Recorder struct {
	store Store
	log   *slog.Logger
	ch    chan Record

	dropped atomic.Uint64
	written atomic.Uint64

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// NewRecorder starts a Recorder over s with room for queue records (0 →
// DefaultQueue). Close stops it; the Recorder does not close s.
func NewRecorder(s Store, queue int, log *slog.Logger) *Recorder {
	if queue <= 0 {
		queue = DefaultQueue
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Recorder{store: s, log: log, ch: make(chan Record, queue), stop: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r
}

// Store is the store the Recorder writes to (and readers read).
func (r *Recorder) Store() Store { return r.store }

// Record queues rec; it never blocks. It reports false when the queue was
// full and rec was dropped.
func (r *Recorder) Record(rec Record) bool {
	select {
	case r.ch <- rec:
		return true
	default:
		r.dropped.Add(1)
		return false
	}
}

// Dropped is how many records were dropped: the queue was full, or the
// store refused a batch.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// Written is how many records reached the store.
func (r *Recorder) Written() uint64 { return r.written.Load() }

func (r *Recorder) run() {
	defer close(r.done)
	for {
		select {
		case rec := <-r.ch:
			r.flush(r.drain(rec))
		case <-r.stop:
			// Whatever is queued is written before Close returns.
			for {
				select {
				case rec := <-r.ch:
					r.flush(r.drain(rec))
				default:
					return
				}
			}
		}
	}
}

type minuteKey struct {
	fn     string
	minute int64
}

// drain adds up first and every record already queued.
func (r *Recorder) drain(first Record) map[minuteKey]*Counts {
	batch := map[minuteKey]*Counts{}
	add := func(rec Record) {
		k := minuteKey{rec.Function, rec.At.Unix() / 60}
		c := batch[k]
		if c == nil {
			c = &Counts{}
			batch[k] = c
		}
		c.Invocations++
		if rec.Good {
			c.Good++
		}
		if rec.Error {
			c.Errors++
		}
		switch rec.Start {
		case StartRestore:
			c.Restores++
		case StartBoot:
			c.Boots++
		}
	}
	add(first)
	for len(batch) < 10000 {
		select {
		case rec := <-r.ch:
			add(rec)
		default:
			return batch
		}
	}
	return batch
}

func (r *Recorder) flush(batch map[minuteKey]*Counts) {
	entries := make([]Entry, 0, len(batch))
	var n uint64
	for k, c := range batch {
		entries = append(entries, Entry{Function: k.fn, Minute: time.Unix(k.minute*60, 0), Counts: *c})
		n += uint64(c.Invocations)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.store.Add(ctx, entries); err != nil {
		r.dropped.Add(n)
		r.log.Warn("SLA ledger: records lost", "records", n, "err", err)
		return
	}
	r.written.Add(n)
}

// Close writes what is queued and stops the Recorder.
func (r *Recorder) Close() error {
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return nil
}
