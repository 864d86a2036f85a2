package nodeagent

import (
	"slices"
	"time"
)

// The idle-CPU budget (issue 13, finding 8). A parked serve instance waits
// for its next request inside the IO hypercall and costs no host CPU; one
// that keeps running after it answered (a spin, a busy background thread)
// burns a core for as long as it stays warm, which for a min_warm
// instance is forever, and no call's deadline ever stops it. So the agent
// charges each idle instance the guest CPU it uses while parked
// (vmm.Stats.GuestTime, which includes a KVM_RUN in progress) and destroys
// one past its budget; min_warm then starts a replacement, which is idle
// again until a call makes it spin.
//
// The budget is a token bucket per idle period, not a fixed amount: a
// fixed amount would, in the end, kill every min_warm instance of a
// function with a legitimate background thread (a ticker, a flush every
// second), and a rate over one maintenance tick would kill a legitimate
// short burst after an answer (a garbage collection finishing). An
// instance may use DefaultIdleCPUBurst at once, refilled at
// DefaultIdleCPUShare of one CPU: a guest spinning flat out is stopped
// about half a second after it is parked (plus a maintenance tick), one
// using a twentieth of a CPU or less never is.
const (
	DefaultIdleCPUBurst = 500 * time.Millisecond
	DefaultIdleCPUShare = 0.05
)

// Kill reasons: the label values of kiln_agent_instances_killed_total.
const killIdleSpin = "idle_spin"

// idleBudget is the idle-CPU policy: pure, the caller says what time it
// is and how much guest time the instance has used since it booted.
type idleBudget struct {
	burst time.Duration // negative: no budget
	share float64       // of one CPU
}

// idleCharge is one idle instance's account for the idle period that
// began when it was parked at since.
type idleCharge struct {
	since time.Time     // the instance's idleSince when the account was opened
	start time.Duration // guest time at the first sample
	at    time.Time     // the last sample
	guest time.Duration // guest time at the last sample
	debt  time.Duration // guest time used beyond the share, not yet refilled
}

// open starts the account of an idle period with a first sample: what the
// instance used before it (its calls, its start) is never charged.
func (b idleBudget) open(since, now time.Time, guest time.Duration) idleCharge {
	return idleCharge{since: since, start: guest, at: now, guest: guest}
}

// charge folds a sample (guest time since boot, read at now) into c and
// reports whether the instance is now past its budget.
func (b idleBudget) charge(c idleCharge, now time.Time, guest time.Duration) (idleCharge, bool) {
	used := max(0, guest-c.guest)
	var refill time.Duration
	if now.After(c.at) {
		refill = time.Duration(b.share * float64(now.Sub(c.at)))
	}
	c.debt = max(0, c.debt+used-refill)
	c.at, c.guest = now, max(guest, c.guest)
	return c, b.burst >= 0 && c.debt > b.burst
}

// idleSample is one idle instance and its guest time, read without
// Agent.mu (a VM's Stats may ask its worker process).
type idleSample struct {
	in    *instance
	p     *pool
	since time.Time // its idleSince when it was picked
	guest time.Duration
}

// chargeIdle charges every idle instance the guest CPU it used since the
// last pass and destroys those past the budget (Config.IdleCPUBurst,
// IdleCPUShare), returning how many. An instance taken for a call between
// the sample and the charge (or parked again since: its idleSince moved)
// is left alone; its new idle period opens a new account.
func (a *Agent) chargeIdle() int {
	b := idleBudget{burst: a.cfg.IdleCPUBurst, share: a.cfg.IdleCPUShare}
	if b.burst < 0 {
		return 0
	}
	var samples []idleSample
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0
	}
	for _, p := range a.pools {
		for _, in := range p.idle {
			samples = append(samples, idleSample{in: in, p: p, since: in.idleSince})
		}
	}
	a.mu.Unlock()
	for i := range samples {
		samples[i].guest = samples[i].in.m.Stats().GuestTime
	}
	now := a.now()
	type kill struct {
		in   *instance
		p    *pool
		used time.Duration // guest CPU in this idle period (since its first sample)
		idle time.Duration
	}
	var kills []kill
	a.mu.Lock()
	idle := map[*instance]bool{} // every idle instance now
	for _, p := range a.pools {
		for _, in := range p.idle {
			idle[in] = true
		}
	}
	for _, s := range samples {
		p, in := s.p, s.in
		if !idle[in] || !in.idleSince.Equal(s.since) {
			continue
		}
		c, ok := p.charges[in]
		if !ok || !c.since.Equal(s.since) {
			if p.charges == nil {
				p.charges = map[*instance]idleCharge{}
			}
			p.charges[in] = b.open(s.since, now, s.guest)
			continue
		}
		c, over := b.charge(c, now, s.guest)
		p.charges[in] = c
		if over {
			p.idle = slices.DeleteFunc(p.idle, func(x *instance) bool { return x == in })
			delete(p.charges, in)
			delete(idle, in)
			a.updateWarmLocked(p)
			kills = append(kills, kill{in: in, p: p, used: c.guest - c.start, idle: now.Sub(s.since)})
		}
	}
	// Accounts of instances no longer idle (taken, reaped, evicted,
	// ended) go with their period.
	for _, p := range a.pools {
		for in, c := range p.charges {
			if !idle[in] || !in.idleSince.Equal(c.since) {
				delete(p.charges, in)
			}
		}
	}
	a.mu.Unlock()
	for _, k := range kills {
		a.log.Warn("idle instance destroyed: it used more guest CPU while parked than its budget allows",
			"function", k.p.name, "reason", killIdleSpin, "guest_cpu", k.used.Round(time.Millisecond),
			"idle_for", k.idle.Round(time.Millisecond), "burst", b.burst, "share", b.share)
		k.in.destroy()
		a.m.instancesKilled.WithLabelValues(killIdleSpin).Inc()
	}
	return len(kills)
}
