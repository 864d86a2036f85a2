package nodeagent

import (
	"context"
	"slices"
	"time"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// DefaultKeepAlive is how long an idle instance above a function's
// min_warm lives when its deploy names no keep_alive.
const DefaultKeepAlive = 60 * time.Second

// Init-failure backoff: a function whose instances crash before their first
// read of input is not started again until the backoff passes, doubling
// from initBackoffMin up to initBackoffMax, so that a broken deploy costs
// one boot per backoff, not one per request.
const (
	initBackoffMin = time.Second
	initBackoffMax = time.Minute
)

// maxPrewarming bounds the instances min_warm starts at once on a node, so
// that filling pools never crowds out the cold starts of live calls.
const maxPrewarming = 4

// pool holds the serve instances of one function shape (spec.key()) on this
// node. Every field is guarded by Agent.mu.
type pool struct {
	key, digest, name string
	spec              *spec // the newest invocation's: what replenishing starts
	idle              []*instance
	busy, starting    int
	waiters           []chan *instance // invocations queued for the next instance to come free
	lastUsed          time.Time
	startEst, holdEst time.Duration // how long a start takes, and a call holds an instance (EWMAs)
	freed             uint64        // instances that came free after a call: the queue's progress

	slaWarm     int       // the scheduler's SLA target for this node (0: none)
	ready       bool      // an instance got through its init once: min_warm may start more
	failedUntil time.Time // init crashed: refuse until then
	failures    int       // init crashes in a row
	initErr     string

	charges map[*instance]idleCharge // idle instances' guest-CPU accounts (chargeIdle)
}

func (p *pool) total() int { return len(p.idle) + p.busy + p.starting }

// keepWarm is how many instances the pool keeps: its min_warm, or more
// when the scheduler's SLA policy asks.
func (p *pool) keepWarm() int { return max(p.spec.minWarm, p.slaWarm) }

// room says whether the pool may start another instance.
func (p *pool) room(s *spec) bool { return s.maxInstances == 0 || p.total() < s.maxInstances }

func (a *Agent) poolFor(s *spec) *pool {
	k := s.key()
	p := a.pools[k]
	if p == nil {
		p = &pool{key: k, digest: s.digest, name: s.name}
		a.pools[k] = p
	}
	p.spec, p.lastUsed = s, a.now()
	return p
}

// acquire finds the instance an invocation runs on — an idle one, a new
// one, or one it queued for — as admitPolicy decides, until ctx ends; a
// closing agent admits nothing. waited is the time the call spent queued
// before its instance was found or its start began.
//
// acquire only applies the policy: it gathers the state under Agent.mu,
// asks the policy, and takes, starts, evicts or queues, with the queue's
// timers, deciding again after an eviction or a wake-up in the queue.
func (a *Agent) acquire(ctx context.Context, s *spec) (in *instance, kind kilnv1.StartKind, waited time.Duration, resp *kilnv1.InvokeResponse) {
	from := a.now()
	policy := admitPolicy{maxColdStarts: a.cfg.MaxColdStarts, memory: a.cfg.MemoryBytes}
	patient := true // may still wait for a busy instance rather than start
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", ErrClosed)
		}
		p := a.poolFor(s)
		st, victim, victimPool := a.admitStateLocked(p, s, patient)
		d := policy.decide(a.now(), st)
		switch d.action {
		case admitBackoff:
			until, msg := p.failedUntil, p.initErr
			a.mu.Unlock()
			return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_CRASHED, "the function crashed during initialisation and is not restarted until %s: %s",
				until.UTC().Format(time.RFC3339), msg)
		case admitWarm:
			n := len(p.idle)
			in := p.idle[n-1] // the most recently used: its pages are the warmest
			p.idle = p.idle[:n-1]
			if in.dead() {
				a.mu.Unlock()
				in.destroy()
				continue
			}
			p.busy++
			a.updateWarmLocked(p)
			a.mu.Unlock()
			return in, kilnv1.StartKind_START_WARM, a.now().Sub(from), nil
		case admitEvict:
			victimPool.idle = slices.DeleteFunc(victimPool.idle, func(in *instance) bool { return in == victim })
			a.updateWarmLocked(victimPool)
			a.mu.Unlock()
			victim.destroy()
			a.m.evictions.Inc()
			continue
		case admitNoMemory:
			err := a.noMemoryLocked(s.mem)
			a.mu.Unlock()
			return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", err)
		case admitStart:
			if err := a.reserveLocked(s.mem); err != nil { // the policy saw it fit, under this lock
				a.mu.Unlock()
				return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", err)
			}
			p.starting++
			a.coldStarts++
			a.mu.Unlock()
			waited = a.now().Sub(from)
			in, kind, resp := a.startInstance(s, p)
			a.mu.Lock()
			p.starting--
			a.coldStarts--
			close(a.startEnded)
			a.startEnded = make(chan struct{})
			if resp == nil {
				p.busy++
			}
			a.updateWarmLocked(p)
			a.mu.Unlock()
			return in, kind, waited, resp
		case admitQueue: // below: the queue and its wake-ups
		}
		var slot <-chan struct{} // wakes the call when a start ends
		if d.onStartEnd {
			slot = a.startEnded
		}
		ch := make(chan *instance, 1)
		p.waiters = append(p.waiters, ch)
		busy := p.total()
		a.m.queued.WithLabelValues(d.reason).Inc()
		freedAt := p.freed
		a.mu.Unlock()
		var timer <-chan time.Time
		var t *time.Timer
		if d.recheck > 0 {
			t = time.NewTimer(d.recheck)
			timer = t.C
		}
	wait:
		for {
			select {
			case in := <-ch:
				if in == nil { // the agent is closing
					return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", ErrClosed)
				}
				return in, kilnv1.StartKind_START_WARM, a.now().Sub(from), nil
			case <-timer: // a start's time has passed: keepPlace says whether to wait on
				a.mu.Lock()
				freedNow := p.freed
				a.mu.Unlock()
				if keepPlace(freedAt, freedNow) {
					freedAt = freedNow
					t.Reset(d.recheck)
					continue
				}
				patient = false
			case <-slot:
			case <-ctx.Done():
			}
			break wait
		}
		if t != nil {
			t.Stop()
		}
		if in, handed := a.leaveQueue(p, ch); handed {
			if ctx.Err() == nil {
				return in, kilnv1.StartKind_START_WARM, a.now().Sub(from), nil
			}
			a.release(in, true)
		}
		if ctx.Err() != nil {
			return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_TIMEOUT, "deadline passed while all %d instances were busy (max_instances or the node's memory)", busy)
		}
	}
}

// admitStateLocked gathers what admitPolicy looks at for a call of s in
// p; Agent.mu is held. The node's longest-idle instance (and its pool),
// which an eviction would destroy, is looked for only when s's start does
// not fit in the free memory: the policy looks at it in no other case.
func (a *Agent) admitStateLocked(p *pool, s *spec, patient bool) (st admitState, victim *instance, from *pool) {
	st = admitState{failedUntil: p.failedUntil, fresh: s.fresh, patient: patient,
		idle: len(p.idle), busy: p.busy, starting: p.starting, waiting: len(p.waiters), maxInstances: s.maxInstances,
		startEst: p.startEst, holdEst: p.holdEst, coldStarts: a.coldStarts, mem: s.mem, used: a.used}
	if a.used+s.mem > a.cfg.MemoryBytes {
		victim, from = a.longestIdleLocked()
		if victim != nil {
			st.victimMem, st.canEvict = victim.mem, true
		}
	}
	return st, victim, from
}

// leaveQueue takes ch off p's waiters. When release has already picked it,
// the instance is on its way (or there: release sends after unlocking)
// and is returned; nil means the agent is closing.
func (a *Agent) leaveQueue(p *pool, ch chan *instance) (*instance, bool) {
	a.mu.Lock()
	n := len(p.waiters)
	p.waiters = slices.DeleteFunc(p.waiters, func(c chan *instance) bool { return c == ch })
	picked := len(p.waiters) == n
	a.mu.Unlock()
	if !picked {
		return nil, false
	}
	in := <-ch
	return in, in != nil
}

// observe folds one invocation's start (0: it was warm) and the time it
// held its instance into p's estimates.
func (a *Agent) observe(p *pool, start, hold time.Duration) {
	ewma := func(old, x time.Duration) time.Duration {
		if old == 0 {
			return x
		}
		return old + (x-old)/4
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if start > 0 {
		p.startEst = ewma(p.startEst, start)
	}
	if hold > 0 {
		p.holdEst = ewma(p.holdEst, hold)
	}
}

// longestIdleLocked is the node's instance that has been idle longest,
// and its pool: the one an eviction destroys. nil when none is idle.
func (a *Agent) longestIdleLocked() (*instance, *pool) {
	var victim *instance
	var from *pool
	for _, p := range a.pools {
		for _, in := range p.idle {
			if victim == nil || in.idleSince.Before(victim.idleSince) {
				victim, from = in, p
			}
		}
	}
	return victim, from
}

// release gives an instance back after an invocation: to a waiting
// invocation, else to the idle list; a failed or fresh instance is
// destroyed instead.
func (a *Agent) release(in *instance, ok bool) {
	a.mu.Lock()
	p := in.pool
	p.busy--
	if ok && !in.fresh && !a.closed {
		p.freed++
		if len(p.waiters) > 0 {
			ch := p.waiters[0]
			p.waiters = p.waiters[1:]
			p.busy++
			a.mu.Unlock()
			ch <- in
			return
		}
		in.idleSince = a.now()
		p.idle = append(p.idle, in)
		a.updateWarmLocked(p)
		a.mu.Unlock()
		return
	}
	a.updateWarmLocked(p)
	a.mu.Unlock()
	// The answer leaves first; tearing the VM down is not the caller's wait.
	go func() {
		in.destroy()
		a.kickMaintain()
	}()
}

// initFailed starts or extends p's backoff after an instance crashed
// before it first asked for input.
func (a *Agent) initFailed(p *pool, msg string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p.failures++
	back := initBackoffMin << min(p.failures-1, 6)
	back = min(back, initBackoffMax)
	p.failedUntil, p.initErr = a.now().Add(back), msg
	a.log.Warn("function crashed during initialisation", "function", p.name, "backoff", back, "error", msg)
}

func (a *Agent) initSucceeded(p *pool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p.failures, p.failedUntil, p.initErr, p.ready = 0, time.Time{}, "", true
}

func (a *Agent) updateWarmLocked(p *pool) {
	a.m.warm.WithLabelValues(p.name, "idle").Set(float64(len(p.idle)))
	a.m.warm.WithLabelValues(p.name, "busy").Set(float64(p.busy + p.starting))
}

// kickMaintain asks the maintenance loop to run now.
func (a *Agent) kickMaintain() {
	select {
	case a.maintainKick <- struct{}{}:
	default:
	}
}

// maintain destroys idle instances that use more guest CPU than their
// budget (chargeIdle), reaps instances idle past their keep-alive (down to
// min_warm) and starts instances up to min_warm, every tick or when
// kicked.
func (a *Agent) maintain(stop <-chan struct{}) {
	t := time.NewTicker(a.cfg.MaintainEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		case <-a.maintainKick:
		}
		// First: what it destroys frees memory the refill below uses.
		a.chargeIdle()
		a.maintainOnce()
	}
}

func (a *Agent) maintainOnce() {
	now := a.now()
	var reap []*instance
	type grow struct {
		p *pool
		s *spec
	}
	var grows []grow
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	for k, p := range a.pools {
		s := p.spec
		keep := s.keepAlive
		if keep <= 0 {
			keep = a.cfg.KeepAlive
		}
		// Oldest idle first; never below min_warm.
		slices.SortFunc(p.idle, func(x, y *instance) int { return x.idleSince.Compare(y.idleSince) })
		for len(p.idle) > 0 && p.total() > p.keepWarm() && now.Sub(p.idle[0].idleSince) >= keep {
			reap = append(reap, p.idle[0])
			p.idle = p.idle[1:]
		}
		a.updateWarmLocked(p)
		if p.total() == 0 && p.keepWarm() == 0 && now.Sub(p.lastUsed) >= keep {
			delete(a.pools, k)
			a.m.warm.DeleteLabelValues(p.name, "idle")
			a.m.warm.DeleteLabelValues(p.name, "busy")
			continue
		}
		// min_warm grows a pool only once an instance has shown that the
		// function initialises: a broken deploy is booted by calls alone.
		for !s.fresh && p.ready && now.After(p.failedUntil) && p.total() < p.keepWarm() && p.room(s) && a.prewarming < maxPrewarming {
			if err := a.reserveLocked(s.mem); err != nil {
				break
			}
			p.starting++
			a.prewarming++
			grows = append(grows, grow{p, s})
		}
	}
	a.mu.Unlock()
	for _, in := range reap {
		in.destroy()
		a.m.reaped.Inc()
	}
	for _, g := range grows {
		go a.prewarm(g.p, g.s)
	}
}

// prewarm starts one instance for p's min_warm and parks it idle. Its
// memory is already reserved and p.starting counts it.
func (a *Agent) prewarm(p *pool, s *spec) {
	in, kind, resp := a.startInstance(s, p)
	if resp == nil {
		// Run it up to its first wait for input, so that it is ready.
		resp = in.warmUp(s)
		if resp != nil {
			in.destroy()
		}
	}
	a.mu.Lock()
	p.starting--
	a.prewarming--
	if resp != nil {
		a.updateWarmLocked(p)
		a.mu.Unlock()
		a.log.Warn("starting a warm instance failed", "function", p.name, "start", kind, "error", resp.Error)
		return
	}
	p.busy++ // release moves it to idle (or to a waiter)
	a.mu.Unlock()
	a.m.prewarmed.WithLabelValues(kind.Label()).Inc()
	a.release(in, true)
	a.kickMaintain()
}

// closePoolsLocked hands nil to every waiter (their channels have room)
// and empties the idle lists; Close destroys every instance.
func (a *Agent) closePoolsLocked() {
	for _, p := range a.pools {
		p.idle = nil
		for _, ch := range p.waiters {
			ch <- nil
		}
		p.waiters = nil
	}
}

// setWarmTargets applies the scheduler's SLA targets: the pools named get
// at least that many instances, every other pool goes back to its own
// min_warm. Only pools this node already runs are sized; the scheduler
// sends targets to the nodes that report the function's instances.
func (a *Agent) setWarmTargets(ctx context.Context, targets []*kilnv1.WarmTarget) {
	want := map[string]int{}
	for _, t := range targets {
		if t.GetFunction().GetImageDigest() == "" {
			continue
		}
		s, resp := a.resolve(ctx, &kilnv1.InvokeRequest{Function: t.Function})
		if resp != nil {
			a.log.Warn("warm target for a function this node cannot resolve", "function", t.Function.Name, "error", resp.Error)
			continue
		}
		want[s.key()] = int(t.Warm)
	}
	a.mu.Lock()
	for k, p := range a.pools {
		p.slaWarm = want[k]
	}
	a.mu.Unlock()
	a.kickMaintain()
}
