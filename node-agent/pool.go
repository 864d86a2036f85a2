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

// acquire finds the instance an invocation runs on: an idle warm one; else
// the first busy one to come free, when that is expected sooner than a
// cold start takes; else a new one (a snapshot restore, or a boot that
// takes the snapshot) while the pool has room, the node has memory —
// evicting other functions' idle instances for it if need be — and fewer
// than Config.MaxColdStarts starts are under way; else the first instance
// to come free, until ctx ends. Fresh functions always get a new instance.
// waited is the time the call spent queued before its instance was found
// or its start began.
//
// Waiting instead of starting is what keeps a burst from becoming a
// restore storm: a start costs far more CPU than the warm calls it would
// overlap, and starting many at once slows every call on the node.
func (a *Agent) acquire(ctx context.Context, s *spec) (in *instance, kind kilnv1.StartKind, waited time.Duration, resp *kilnv1.InvokeResponse) {
	from := a.now()
	patient := true // may still wait for a busy instance rather than start
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", ErrClosed)
		}
		p := a.poolFor(s)
		if now := a.now(); now.Before(p.failedUntil) {
			msg := p.initErr
			a.mu.Unlock()
			return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_CRASHED, "the function crashed during initialisation and is not restarted until %s: %s",
				p.failedUntil.UTC().Format(time.RFC3339), msg)
		}
		if n := len(p.idle); n > 0 && !s.fresh {
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
		}
		var recheck time.Duration // wait at most this long, then decide again
		var slot <-chan struct{}  // … or until a start ends
		reason := ""
		switch {
		case !p.room(s):
			reason = "max_instances"
		case !s.fresh && patient && p.freeSoonerThanStart():
			reason, recheck = "busy_sooner", p.startEst
		case a.coldStarts >= a.cfg.MaxColdStarts:
			reason, slot = "start_limit", a.startEnded
		default:
			if err := a.reserveLocked(s.mem); err != nil {
				if victim := a.evictableLocked(s.mem); victim != nil {
					a.mu.Unlock()
					victim.destroy()
					a.m.evictions.Inc()
					continue
				}
				if p.busy+p.starting == 0 || s.fresh {
					a.mu.Unlock()
					return nil, 0, 0, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", err)
				}
				// The node is full of this function's own busy
				// instances: queue for one of them, as at max_instances.
				reason = "memory"
				break
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
		}
		ch := make(chan *instance, 1)
		p.waiters = append(p.waiters, ch)
		busy := p.total()
		a.m.queued.WithLabelValues(reason).Inc()
		freedAt := p.freed
		a.mu.Unlock()
		var timer <-chan time.Time
		var t *time.Timer
		if recheck > 0 {
			t = time.NewTimer(recheck)
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
			case <-timer:
				// A start's time has passed. While instances keep coming
				// free the queue is only long, and starting one more
				// would take CPU from them: keep this place in it. If
				// none came free, they are held by long calls: start.
				a.mu.Lock()
				progress := p.freed != freedAt
				freedAt = p.freed
				a.mu.Unlock()
				if progress {
					t.Reset(recheck)
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

// freeSoonerThanStart says whether a busy instance of p is expected to
// come free for one more waiter sooner than a cold start would be ready:
// the waiters ahead are served round by round, one call per busy instance
// each, a round lasting about one call. Until p has seen both a start and
// a call it does not guess.
func (p *pool) freeSoonerThanStart() bool {
	if p.busy == 0 || p.holdEst == 0 || p.startEst == 0 {
		return false
	}
	rounds := len(p.waiters)/p.busy + 1
	return time.Duration(rounds)*p.holdEst < p.startEst
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

// evictableLocked picks the idle instance of another pool that has been
// idle longest, when destroying it frees enough memory for mem — live
// invocations outrank speculative warmth, min_warm included.
func (a *Agent) evictableLocked(mem uint64) *instance {
	var victim *instance
	var from *pool
	for _, p := range a.pools {
		for _, in := range p.idle {
			if victim == nil || in.idleSince.Before(victim.idleSince) {
				victim, from = in, p
			}
		}
	}
	if victim == nil || a.used-victim.mem+mem > a.cfg.MemoryBytes {
		return nil
	}
	from.idle = slices.DeleteFunc(from.idle, func(in *instance) bool { return in == victim })
	a.updateWarmLocked(from)
	return victim
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

// maintain reaps instances idle past their keep-alive (down to min_warm)
// and starts instances up to min_warm, every tick or when kicked.
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
