package nodeagent

import "time"

// Admission: what a serve invocation does when it arrives at its pool (and
// again each time it wakes in the queue). The policy is pure — the same
// state and time give the same decision, with no locks, timers or I/O —
// so that it is tested with tables; acquire gathers the state under
// Agent.mu and applies the decision.
//
// Waiting instead of starting is what keeps a burst from becoming a
// restore storm: a start costs far more CPU than the warm calls it would
// overlap, and starting many at once slows every call on the node.

// admitState is what the admission policy sees of one call, its pool and
// the node at the moment it decides.
type admitState struct {
	// failedUntil ends the pool's init-failure backoff (zero: none).
	failedUntil time.Time
	// fresh: the call wants an instance of its own, used once; it never
	// takes an idle one nor queues for a busy one.
	fresh bool
	// patient: the call may still queue for a busy instance rather than
	// start one. It stops being patient when it has waited a start's time
	// in the queue with no instance coming free (keepPlace).
	patient bool

	idle, busy, starting int // the pool's instances (busy: running a call)
	waiting              int // calls already queued in the pool
	maxInstances         int // the function's bound on the pool (0: none)
	// startEst and holdEst are how long a start takes and a call holds an
	// instance in this pool (EWMAs; 0: not seen yet).
	startEst, holdEst time.Duration

	coldStarts int // starts for live calls in flight on the node

	mem  uint64 // what the call's instance needs
	used uint64 // guest memory of the node's live VMs
	// victimMem is the memory of the instance eviction would destroy:
	// the node's longest-idle instance (of another function: a pool that
	// reaches this point has none idle itself). canEvict says there is
	// one. acquire finds it only when the start does not fit, the one
	// case the policy looks at it.
	victimMem uint64
	canEvict  bool
}

// admitAction is what an invocation does next.
type admitAction uint8

const (
	// admitBackoff: the function crashed during init lately; the call is
	// answered crashed without a start until the backoff ends.
	admitBackoff admitAction = iota + 1
	// admitWarm: take the pool's most recently used idle instance.
	admitWarm
	// admitStart: reserve the call's memory and start an instance (a
	// restore, or a boot that takes the snapshot).
	admitStart
	// admitEvict: destroy the node's longest-idle instance for memory,
	// then decide again — live calls outrank speculative warmth,
	// min_warm included.
	admitEvict
	// admitQueue: wait for an instance of the pool to come free, or until
	// the wake-up the admission names; then decide again.
	admitQueue
	// admitNoMemory: the node is full, nothing idle frees enough, and no
	// instance of the pool will come free to queue for: no capacity.
	admitNoMemory
)

var admitActionNames = [...]string{admitBackoff: "backoff", admitWarm: "warm", admitStart: "start",
	admitEvict: "evict", admitQueue: "queue", admitNoMemory: "no_memory"}

func (x admitAction) String() string {
	if int(x) < len(admitActionNames) && admitActionNames[x] != "" {
		return admitActionNames[x]
	}
	return "unknown"
}

// admission is the policy's decision for one call.
type admission struct {
	action admitAction
	// reason labels a queueing in kiln_agent_queued_total: max_instances,
	// busy_sooner, start_limit or memory.
	reason string
	// recheck, when not 0, wakes the queued call after that long to ask
	// keepPlace whether it still waits.
	recheck time.Duration
	// onStartEnd wakes the queued call when one of the node's starts ends.
	onStartEnd bool
}

// admitPolicy is the node-agent's admission policy, in order:
//
//  1. within the pool's init-failure backoff: refuse (crashed);
//  2. an idle instance, unless the call is fresh: take it;
//  3. the pool at max_instances: queue for one of its instances;
//  4. a busy instance expected to come free sooner than a start takes
//     (freeSoonerThanStart), for a patient call that is not fresh: queue
//     for it, and after a start's time ask keepPlace;
//  5. maxColdStarts starts under way on the node: queue until one ends;
//  6. the call's memory free on the node: start;
//  7. destroying the node's longest-idle instance frees enough: evict it
//     and decide again;
//  8. the pool has instances busy or starting and the call is not fresh:
//     queue for one of them, as at max_instances;
//  9. else: no capacity.
type admitPolicy struct {
	maxColdStarts int    // Config.MaxColdStarts
	memory        uint64 // Config.MemoryBytes: the node's guest memory budget
}

// decide is the admission of a call in state st at now.
func (ap admitPolicy) decide(now time.Time, st admitState) admission {
	switch {
	case now.Before(st.failedUntil):
		return admission{action: admitBackoff}
	case st.idle > 0 && !st.fresh:
		return admission{action: admitWarm}
	case st.maxInstances != 0 && st.idle+st.busy+st.starting >= st.maxInstances:
		return admission{action: admitQueue, reason: "max_instances"}
	case !st.fresh && st.patient && freeSoonerThanStart(st):
		return admission{action: admitQueue, reason: "busy_sooner", recheck: st.startEst}
	case st.coldStarts >= ap.maxColdStarts:
		return admission{action: admitQueue, reason: "start_limit", onStartEnd: true}
	case st.used+st.mem <= ap.memory:
		return admission{action: admitStart}
	case st.canEvict && st.used+st.mem <= ap.memory+st.victimMem:
		return admission{action: admitEvict}
	case st.busy+st.starting == 0 || st.fresh:
		return admission{action: admitNoMemory}
	default:
		// The node is full of this function's own instances: queue for
		// one of them.
		return admission{action: admitQueue, reason: "memory"}
	}
}

// freeSoonerThanStart says whether a busy instance of the pool is expected
// to come free for one more waiter sooner than a cold start would be
// ready: the waiters ahead are served round by round, one call per busy
// instance each, a round lasting about one call. Until the pool has seen
// both a start and a call it does not guess.
func freeSoonerThanStart(st admitState) bool {
	if st.busy == 0 || st.holdEst == 0 || st.startEst == 0 {
		return false
	}
	rounds := st.waiting/st.busy + 1
	return time.Duration(rounds)*st.holdEst < st.startEst
}

// keepPlace decides for a call queued as busy_sooner whose recheck (a
// start's time) has passed: freedThen counts the pool's instances that had
// come free after a call when it queued or last checked, freedNow counts
// them now. While instances keep coming free the queue is only long, and
// starting one more would take CPU from them: the call keeps its place. If
// none came free, they are held by long calls: the call stops being
// patient and decides again, which starts its own instance if it may.
func keepPlace(freedThen, freedNow uint64) bool { return freedNow != freedThen }
