// Package slaledger keeps, per function and per minute, how many
// invocations there were, how many were good (succeeded within the
// function's deadline), how many errored and how many started cold, for
// 25 hours: enough for the attainment over the last hour and day, the error
// budget and the cold-start share that `kiln sla` shows.
//
// Two stores fill one Store contract and pass one conformance suite
// (ledgertest): Bolt (embedded, `kiln up`) and Redis (the cluster). A
// Recorder sits in front of either so that recording never blocks an
// invocation.
package slaledger

import (
	"context"
	"errors"
	"time"
)

// Retention is how long a minute's counts are kept.
const Retention = 25 * time.Hour

// retainedFrom is the first minute a store still keeps at now: a minute
// is kept while it started at most Retention ago (rounded down to a minute).
func retainedFrom(now time.Time) time.Time { return now.Add(-Retention).Truncate(time.Minute) }

// ErrInvalid: a function name or time range a store cannot use.
var ErrInvalid = errors.New("slaledger: invalid argument")

// Counts are one function's counters over some minutes.
type Counts struct {
	Invocations int64 `json:"invocations"`
	// Good invocations succeeded within the deadline.
	Good int64 `json:"good"`
	// Errors failed (platform error, crash, timeout, function status ≥ 500).
	Errors int64 `json:"errors"`
	// Restores and Boots are the cold starts by kind.
	Restores int64 `json:"restores"`
	Boots    int64 `json:"boots"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Invocations += o.Invocations
	c.Good += o.Good
	c.Errors += o.Errors
	c.Restores += o.Restores
	c.Boots += o.Boots
}

// Entry is counts to add to one function's minute.
type Entry struct {
	Function string
	Minute   time.Time // truncated to the minute by the store
	Counts
}

// Store keeps per-minute counts. Implementations are safe for concurrent
// use; every Add is atomic per entry (a crash never leaves half of one).
type Store interface {
	// Add adds each entry's counts to its minute. Entries older than
	// Retention (by the store's clock) are ignored.
	Add(ctx context.Context, entries []Entry) error
	// Sum adds up fn's minutes in [from, to).
	Sum(ctx context.Context, fn string, from, to time.Time) (Counts, error)
	// Close releases the store.
	Close() error
}

// Summary is what an operator reads of one function's SLA.
type Summary struct {
	Hour Counts `json:"last_1h"`
	Day  Counts `json:"last_1d"`
	// Attainment1h and Attainment1d are good/invocations; nil without
	// invocations in the window.
	Attainment1h *float64 `json:"attainment_1h"`
	Attainment1d *float64 `json:"attainment_1d"`
	// ErrorBudgetLeft is, over the last day, 1 − bad / ((1 − target)·total):
	// 1 with nothing spent, 0 when spent, negative when overspent; 1
	// without invocations.
	ErrorBudgetLeft float64 `json:"error_budget_left"`
	// ColdStartShare is the fraction of the last day's invocations that
	// started cold (restore or boot); 0 without invocations.
	ColdStartShare float64 `json:"cold_start_share"`
}

// Summarize reads fn's last hour and day at now from s.
func Summarize(ctx context.Context, s Store, fn string, target float64, now time.Time) (Summary, error) {
	end := now.Truncate(time.Minute).Add(time.Minute) // the current minute counts
	var sum Summary
	var err error
	if sum.Hour, err = s.Sum(ctx, fn, end.Add(-time.Hour), end); err != nil {
		return Summary{}, err
	}
	if sum.Day, err = s.Sum(ctx, fn, end.Add(-24*time.Hour), end); err != nil {
		return Summary{}, err
	}
	ratio := func(c Counts) *float64 {
		if c.Invocations == 0 {
			return nil
		}
		r := float64(c.Good) / float64(c.Invocations)
		return &r
	}
	sum.Attainment1h, sum.Attainment1d = ratio(sum.Hour), ratio(sum.Day)
	sum.ErrorBudgetLeft = ErrorBudgetLeft(sum.Day, target)
	if d := sum.Day; d.Invocations > 0 {
		sum.ColdStartShare = float64(d.Restores+d.Boots) / float64(d.Invocations)
	}
	return sum, nil
}

// ErrorBudgetLeft is 1 − bad / allowed, where allowed = (1 − target)·total.
func ErrorBudgetLeft(c Counts, target float64) float64 {
	if c.Invocations == 0 {
		return 1
	}
	allowed := (1 - target) * float64(c.Invocations)
	bad := float64(c.Invocations - c.Good)
	if allowed <= 0 {
		if bad == 0 {
			return 1
		}
		return -bad
	}
	return 1 - bad/allowed
}
