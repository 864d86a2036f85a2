package slapolicy

import (
	"container/heap"
	"fmt"
	"time"
)

// Invocation is one call waiting for capacity.
type Invocation struct {
	ID       string
	Function string
	Arrived  time.Time
	// Deadline is when the caller's SLA says it must have finished; zero
	// for a function without an SLA, which waits behind every call that
	// has one (in arrival order among themselves).
	Deadline time.Time
}

// Infeasible is a queued invocation that can no longer meet its deadline:
// the caller is told so instead of the call running late.
type Infeasible struct {
	Invocation
	// Expected is the service time it would still need, Left the time to
	// its deadline when it was judged.
	Expected, Left time.Duration
	Reason         string
}

// Queue orders invocations that wait for capacity, earliest deadline
// first. It is not safe for concurrent use; the scheduler owns one behind
// its own lock.
type Queue struct {
	h   invHeap
	seq uint64
	// expect is the expected service time of a function's call.
	expect func(fn string) time.Duration
}

// NewQueue is an empty queue. expect gives each function's expected
// service time (Policy.ExpectedService at the current time, typically);
// nil treats every call as instantaneous, so only a passed deadline makes
// a call infeasible.
func NewQueue(expect func(fn string) time.Duration) *Queue {
	if expect == nil {
		expect = func(string) time.Duration { return 0 }
	}
	return &Queue{expect: expect}
}

// Push queues inv.
func (q *Queue) Push(inv Invocation) {
	q.seq++
	heap.Push(&q.h, queued{inv, q.seq})
}

// Len is how many invocations wait.
func (q *Queue) Len() int { return len(q.h) }

// Next pops the most urgent invocation that can still finish by its
// deadline if it starts at now. Those ahead of it that cannot are popped
// too and returned as infeasible, with the reason. ok is false when no
// feasible invocation is left.
func (q *Queue) Next(now time.Time) (inv Invocation, infeasible []Infeasible, ok bool) {
	for len(q.h) > 0 {
		it := heap.Pop(&q.h).(queued).Invocation
		if it.Deadline.IsZero() {
			return it, infeasible, true
		}
		exp, left := q.expect(it.Function), it.Deadline.Sub(now)
		if now.Add(exp).After(it.Deadline) {
			reason := fmt.Sprintf("cannot meet its deadline: needs about %v, %v left", exp, left)
			if left <= 0 {
				reason = fmt.Sprintf("deadline passed %v ago while queued", -left)
			}
			infeasible = append(infeasible, Infeasible{Invocation: it, Expected: exp, Left: left, Reason: reason})
			continue
		}
		return it, infeasible, true
	}
	return Invocation{}, infeasible, false
}

type queued struct {
	Invocation
	seq uint64 // arrival order: ties and calls without a deadline
}

type invHeap []queued

func (h invHeap) Len() int { return len(h) }
func (h invHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	switch {
	case a.Deadline.IsZero() != b.Deadline.IsZero():
		return b.Deadline.IsZero()
	case !a.Deadline.Equal(b.Deadline):
		return a.Deadline.Before(b.Deadline)
	}
	return a.seq < b.seq
}
func (h invHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *invHeap) Push(x any)   { *h = append(*h, x.(queued)) }
func (h *invHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
