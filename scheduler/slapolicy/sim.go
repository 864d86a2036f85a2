package slapolicy

import (
	"math/rand/v2"
	"sort"
	"time"
)

// RateSpan is a stretch of a trace of arrival rates: Rate calls per second
// from the previous span's end until Until.
type RateSpan struct {
	Until time.Duration
	Rate  float64
}

// BurstTrace is the trace docs/SLA.md reports: sparse calls (one every
// 20 s) with a burst of 30/s for a minute at 10 min and of 60/s for 30 s
// at 16 min, half an hour in all.
var BurstTrace = []RateSpan{
	{10 * time.Minute, 0.05},
	{11 * time.Minute, 30},
	{16 * time.Minute, 0.05},
	{16*time.Minute + 30*time.Second, 60},
	{30 * time.Minute, 0.05},
}

// SimConfig is one simulated function and its traffic.
type SimConfig struct {
	Trace    []RateSpan
	Deadline time.Duration
	Target   float64
	// Exec and Cold are uniform ranges [min, max] of execution and
	// cold-start time.
	Exec, Cold [2]time.Duration
	// KeepAlive reaps instances idle this long, down to the desired pool.
	KeepAlive time.Duration
	Seed      uint64
}

// BurstSim is docs/SLA.md's simulation: BurstTrace, 30–40 ms calls,
// 200–300 ms cold starts (a cold call always misses), a 150 ms deadline
// met by 99 %, a 10 s keep-alive.
func BurstSim(seed uint64) SimConfig {
	return SimConfig{Trace: BurstTrace, Deadline: 150 * time.Millisecond, Target: 0.99,
		Exec: [2]time.Duration{30 * time.Millisecond, 40 * time.Millisecond}, Cold: [2]time.Duration{200 * time.Millisecond, 300 * time.Millisecond},
		KeepAlive: 10 * time.Second, Seed: seed}
}

// SimResult is what a simulation measured.
type SimResult struct {
	Calls, Good, Cold int
	// InstanceSeconds is the pool's cost: instances kept, summed each second.
	InstanceSeconds float64
}

// Attainment is Good / Calls.
func (r SimResult) Attainment() float64 {
	if r.Calls == 0 {
		return 1
	}
	return float64(r.Good) / float64(r.Calls)
}

type simCall struct {
	at, exec, cold time.Duration
}

// calls draws Poisson arrivals over the trace, each with its execution
// and (would-be) cold-start time; one seed gives one sequence.
func (cfg SimConfig) calls() []simCall {
	rng := rand.New(rand.NewPCG(cfg.Seed, 1))
	uniform := func(r [2]time.Duration) time.Duration { return r[0] + time.Duration(rng.Float64()*float64(r[1]-r[0])) }
	var calls []simCall
	var from time.Duration
	for _, sp := range cfg.Trace {
		// Memorylessness lets each span start its clock at its start
		// without biasing the arrivals.
		at := from
		for sp.Rate > 0 {
			at += time.Duration(rng.ExpFloat64() / sp.Rate * float64(time.Second))
			if at >= sp.Until {
				break
			}
			calls = append(calls, simCall{at: at, exec: uniform(cfg.Exec), cold: uniform(cfg.Cold)})
		}
		from = sp.Until
	}
	return calls
}

type simInstance struct {
	ready, busyUntil time.Duration
}

// Simulate runs cfg's calls against a pool that starts an instance on
// demand whenever a call finds none idle (a cold start) and reaps
// instances idle past KeepAlive. With p nil that is a fixed min_warm = 0
// pool; with p it also keeps p.Desired instances warm, re-planned every
// simulated second, booting missing ones in the background. The same
// cfg gives the same calls either way, so the two runs compare directly.
func Simulate(cfg SimConfig, p *Policy) SimResult {
	const fn = "f"
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if p != nil {
		p.SetSpec(fn, Spec{Deadline: cfg.Deadline, Target: cfg.Target})
	}
	calls := cfg.calls()
	var pool []*simInstance
	var res SimResult
	end := cfg.Trace[len(cfg.Trace)-1].Until
	next := 0
	for tick := time.Duration(0); tick <= end; {
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
				res.Cold++
			}
			inst.busyUntil = c.at + latency
			res.Calls++
			if latency <= cfg.Deadline {
				res.Good++
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
			idle := in.busyUntil <= tick && in.ready <= tick && tick-max(in.busyUntil, in.ready) > cfg.KeepAlive
			if idle && len(kept)+len(pool)-i-1 >= want {
				continue
			}
			kept = append(kept, in)
		}
		pool = kept
		for len(pool) < want {
			pool = append(pool, &simInstance{ready: tick + (cfg.Cold[0]+cfg.Cold[1])/2})
		}
		res.InstanceSeconds += float64(len(pool))
	}
	return res
}
