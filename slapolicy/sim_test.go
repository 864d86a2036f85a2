package slapolicy

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// The simulation: one function with a 150 ms deadline and a 99 % target,
// 30–40 ms executions, 200–300 ms cold starts (so a cold call always
// misses), idle instances reaped after a 10 s keep-alive. Traffic is
// sparse (one call every 20 s) with two bursts (30/s for a minute, and
// 60/s for 30 s five minutes later). The baseline keeps min_warm = 0 and
// starts instances on demand; the policy's run does the same plus keeps
// Policy.Desired warm, re-planned every second.

type rateSpan struct {
	until time.Duration
	rate  float64 // arrivals per second
}

var simTrace = []rateSpan{
	{10 * time.Minute, 0.05},
	{11 * time.Minute, 30},
	{16 * time.Minute, 0.05},
	{16*time.Minute + 30*time.Second, 60},
	{30 * time.Minute, 0.05},
}

const (
	simDeadline  = 150 * time.Millisecond
	simTarget    = 0.99
	simKeepAlive = 10 * time.Second
)

type simCall struct {
	at         time.Duration
	exec, cold time.Duration
}

// simCalls draws Poisson arrivals over the trace and each call's
// execution and (would-be) cold-start time.
func simCalls(seed uint64) []simCall {
	rng := rand.New(rand.NewPCG(seed, 1))
	var calls []simCall
	var at, from time.Duration
	for _, sp := range simTrace {
		if at < from {
			at = from
		}
		for {
			// Memorylessness lets each span restart its clock at its
			// start without biasing the arrivals.
			at += time.Duration(rng.ExpFloat64() / sp.rate * float64(time.Second))
			if at >= sp.until {
				break
			}
			calls = append(calls, simCall{at: at,
				exec: 30*time.Millisecond + time.Duration(rng.Float64()*float64(10*time.Millisecond)),
				cold: 200*time.Millisecond + time.Duration(rng.Float64()*float64(100*time.Millisecond))})
		}
		at, from = sp.until, sp.until
	}
	return calls
}

type simInstance struct {
	ready, busyUntil time.Duration
}

type simResult struct {
	calls, good, cold int
	warmSeconds       float64 // instance-seconds kept, the cost of the pool
}

func (r simResult) attainment() float64 { return float64(r.good) / float64(r.calls) }

// simulate runs calls against a pool; with p it re-plans every second and
// keeps p.Desired instances, booting missing ones in the background.
func simulate(calls []simCall, p *Policy) simResult {
	const fn = "f"
	if p != nil {
		p.SetSpec(fn, Spec{Deadline: simDeadline, Target: simTarget})
	}
	var pool []*simInstance
	var res simResult
	end := simTrace[len(simTrace)-1].until
	tick, next := time.Duration(0), 0
	for tick <= end {
		// Calls arriving before the next tick.
		for ; next < len(calls) && calls[next].at < tick+time.Second; next++ {
			c := calls[next]
			var inst *simInstance
			for _, in := range pool {
				if in.ready <= c.at && in.busyUntil <= c.at {
					inst = in
					break
				}
			}
			o := Observation{Function: fn, At: t0.Add(c.at), Exec: c.exec}
			latency := c.exec
			if inst == nil {
				inst = &simInstance{ready: c.at + c.cold}
				pool = append(pool, inst)
				latency += c.cold
				o.Start, o.StartTime = StartRestore, c.cold
				res.cold++
			}
			inst.busyUntil = c.at + latency
			res.calls++
			if latency <= simDeadline {
				res.good++
			}
			if p != nil {
				p.Observe(o)
			}
		}
		tick += time.Second
		want := 0
		if p != nil {
			p.Plan(t0.Add(tick))
			want = p.Desired(fn)
		}
		// Reap instances idle past the keep-alive, longest idle first,
		// down to the desired pool.
		sort.Slice(pool, func(i, j int) bool { return pool[i].busyUntil < pool[j].busyUntil })
		kept := pool[:0]
		for i, in := range pool {
			idle := in.busyUntil <= tick && in.ready <= tick && tick-max(in.busyUntil, in.ready) > simKeepAlive
			if idle && len(kept)+len(pool)-i-1 >= want {
				continue
			}
			kept = append(kept, in)
		}
		pool = kept
		for len(pool) < want {
			pool = append(pool, &simInstance{ready: tick + 250*time.Millisecond})
		}
		res.warmSeconds += float64(len(pool))
	}
	return res
}

func TestSimulatedBurstsPolicyMeetsTargetBaselineDoesNot(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		calls := simCalls(seed)
		base := simulate(calls, nil)
		pol := simulate(calls, New(Config{}))
		t.Logf("seed %d: %d calls; min_warm=0: attainment %.4f, %d cold, %.0f instance-s; SLA policy: attainment %.4f, %d cold, %.0f instance-s",
			seed, base.calls, base.attainment(), base.cold, base.warmSeconds, pol.attainment(), pol.cold, pol.warmSeconds)
		if pol.attainment() < simTarget {
			t.Errorf("seed %d: the policy reached %.4f, below the %.2f target", seed, pol.attainment(), simTarget)
		}
		if base.attainment() >= simTarget {
			t.Errorf("seed %d: the min_warm=0 baseline reached %.4f: the scenario does not tell them apart", seed, base.attainment())
		}
		// The policy pays for its pool, but not without bound: no more
		// than a few instances on average over the half hour.
		if avg := pol.warmSeconds / (30 * 60); avg > 6 {
			t.Errorf("seed %d: the policy kept %.1f instances on average", seed, avg)
		}
	}
}
