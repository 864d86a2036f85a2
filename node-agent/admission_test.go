package nodeagent

import (
	"testing"
	"time"
)

func TestAdmitPolicy(t *testing.T) {
	const mib = 1 << 20
	now := time.Unix(1000, 0)
	ap := admitPolicy{maxColdStarts: 2, memory: 1024 * mib}
	// base: a patient call of a 64 MiB function whose pool has one busy
	// instance, on a node with room; a call there takes 10 ms, a start
	// 50 ms, so with nobody ahead the busy instance frees sooner.
	base := admitState{patient: true, busy: 1, startEst: 50 * time.Millisecond, holdEst: 10 * time.Millisecond,
		mem: 64 * mib, used: 256 * mib}
	with := func(f func(*admitState)) admitState {
		st := base
		f(&st)
		return st
	}
	full := func(st *admitState) { st.used = 1000 * mib } // 24 MiB free
	var (
		warm      = admission{action: admitWarm}
		start     = admission{action: admitStart}
		evict     = admission{action: admitEvict}
		noMemory  = admission{action: admitNoMemory}
		backoff   = admission{action: admitBackoff}
		atMax     = admission{action: admitQueue, reason: "max_instances"}
		sooner    = admission{action: admitQueue, reason: "busy_sooner", recheck: 50 * time.Millisecond}
		startWait = admission{action: admitQueue, reason: "start_limit", onStartEnd: true}
		forMemory = admission{action: admitQueue, reason: "memory"}
	)
	tests := []struct {
		name string
		st   admitState
		want admission
	}{
		// Init-failure backoff comes first.
		{"within the init backoff", with(func(st *admitState) { st.failedUntil = now.Add(time.Second); st.idle = 1 }), backoff},
		{"backoff ends at its instant", with(func(st *admitState) { st.failedUntil = now; st.idle = 1 }), warm},
		{"backoff passed", with(func(st *admitState) { st.failedUntil = now.Add(-time.Second); st.busy = 0 }), start},

		// An idle instance.
		{"an idle instance", with(func(st *admitState) { st.idle = 1 }), warm},
		{"idle even on a full node at the start limit", with(func(st *admitState) {
			st.idle, st.coldStarts, st.maxInstances = 1, 2, 2
			full(st)
		}), warm},
		{"fresh never takes an idle instance", with(func(st *admitState) { st.idle, st.fresh = 1, true }), start},

		// max_instances.
		{"pool at max_instances", with(func(st *admitState) { st.maxInstances = 1 }), atMax},
		{"max_instances counts starting and idle", with(func(st *admitState) {
			st.idle, st.busy, st.starting, st.maxInstances, st.fresh = 1, 0, 1, 2, true
		}), atMax},
		{"below max_instances", with(func(st *admitState) { st.maxInstances, st.holdEst = 2, 0 }), start},
		{"max_instances before the start limit and memory", with(func(st *admitState) {
			st.maxInstances, st.coldStarts = 1, 2
			full(st)
		}), atMax},

		// Queue when a busy instance frees sooner than a start takes.
		{"busy instance frees sooner than a start", base, sooner},
		{"busy_sooner before the start limit", with(func(st *admitState) { st.coldStarts = 2 }), sooner},
		{"busy_sooner on a full node", with(full), sooner},
		{"a start is sooner than the queue ahead", with(func(st *admitState) { st.waiting = 4 }), start},            // 5 rounds × 10 ms ≥ 50 ms
		{"queue ahead shared by busy instances", with(func(st *admitState) { st.busy, st.waiting = 2, 6 }), sooner}, // 4 rounds
		{"a round as long as a start: start", with(func(st *admitState) { st.holdEst = 50 * time.Millisecond }), start},
		{"no start seen yet: no guess", with(func(st *admitState) { st.startEst = 0 }), start},
		{"no call seen yet: no guess", with(func(st *admitState) { st.holdEst = 0 }), start},
		{"nothing busy: nothing to wait for", with(func(st *admitState) { st.busy, st.starting = 0, 1 }), start},
		{"fresh never queues for a busy instance", with(func(st *admitState) { st.fresh = true }), start},
		// 4297ced: a call that waited a start's time with no instance
		// coming free is no longer patient, and starts its own.
		{"impatient: starts its own", with(func(st *admitState) { st.patient = false }), start},
		{"impatient at the start limit waits for a start", with(func(st *admitState) {
			st.patient, st.coldStarts = false, 2
		}), startWait},

		// The node's start limit.
		{"start limit reached", with(func(st *admitState) { st.busy, st.coldStarts = 0, 2 }), startWait},
		{"over the start limit", with(func(st *admitState) { st.busy, st.coldStarts = 0, 3 }), startWait},
		{"below the start limit", with(func(st *admitState) { st.busy, st.coldStarts = 0, 1 }), start},
		{"start limit before memory", with(func(st *admitState) { st.busy, st.coldStarts = 0, 2; full(st) }), startWait},

		// Room to start.
		{"room to start", with(func(st *admitState) { st.busy = 0 }), start},
		{"exact fit", with(func(st *admitState) { st.busy, st.used = 0, 960*mib }), start},

		// A full node: evict another function's idle instance, or queue.
		{"full: evict an idle instance", with(func(st *admitState) {
			st.busy, st.canEvict, st.victimMem = 0, true, 64*mib
			full(st)
		}), evict},
		{"full: eviction frees exactly enough", with(func(st *admitState) {
			st.busy, st.canEvict, st.victimMem = 0, true, 40*mib
			full(st)
		}), evict},
		{"full: eviction frees too little, own busy: queue", with(func(st *admitState) {
			st.holdEst, st.canEvict, st.victimMem = 0, true, 32*mib
			full(st)
		}), forMemory},
		{"full: eviction frees too little, none of its own", with(func(st *admitState) {
			st.busy, st.canEvict, st.victimMem = 0, true, 32*mib
			full(st)
		}), noMemory},
		{"full: fresh evicts too", with(func(st *admitState) {
			st.fresh, st.canEvict, st.victimMem = true, true, 64*mib
			full(st)
		}), evict},
		{"full: nothing idle, own busy: queue", with(func(st *admitState) { st.holdEst = 0; full(st) }), forMemory},
		{"full: nothing idle, own starting: queue", with(func(st *admitState) { st.busy, st.starting = 0, 1; full(st) }), forMemory},
		{"full: impatient, own busy: queue", with(func(st *admitState) { st.patient = false; full(st) }), forMemory},
		{"full: nothing idle, none of its own", with(func(st *admitState) { st.busy = 0; full(st) }), noMemory},
		{"full: fresh does not queue for its own", with(func(st *admitState) { st.fresh = true; full(st) }), noMemory},
		{"bigger than the node", with(func(st *admitState) { st.busy, st.used, st.mem = 0, 0, 2048*mib }), noMemory},
	}
	for _, tt := range tests {
		if got := ap.decide(now, tt.st); got != tt.want {
			t.Errorf("%s: got %+v (%v), want %+v (%v)", tt.name, got, got.action, tt.want, tt.want.action)
		}
	}
}

// The queue's wake-up after a start's time (4297ced): a waiter keeps its
// place while instances came free since it queued or last checked.
func TestKeepPlace(t *testing.T) {
	tests := []struct {
		name                string
		freedThen, freedNow uint64
		want                bool
	}{
		{"the queue moved", 3, 5, true},
		{"one came free", 0, 1, true},
		{"none came free", 4, 4, false},
		{"none ever", 0, 0, false},
	}
	for _, tt := range tests {
		if got := keepPlace(tt.freedThen, tt.freedNow); got != tt.want {
			t.Errorf("%s: keepPlace(%d, %d) = %v, want %v", tt.name, tt.freedThen, tt.freedNow, got, tt.want)
		}
	}
}

// A queued call's life under the policy, as acquire drives it: it queues
// for the busy instance, keeps its place while the queue moves, and when
// a start's time passes with no instance freed it starts its own.
func TestAdmitQueuedCallStartsOnlyWhenQueueStalls(t *testing.T) {
	now := time.Unix(1000, 0)
	ap := admitPolicy{maxColdStarts: 4, memory: 1 << 30}
	st := admitState{patient: true, busy: 1, waiting: 2, startEst: 300 * time.Millisecond, holdEst: 20 * time.Millisecond, mem: 64 << 20}
	d := ap.decide(now, st)
	if d.action != admitQueue || d.reason != "busy_sooner" || d.recheck != st.startEst {
		t.Fatalf("arrival: %+v, want to queue busy_sooner for a start's time", d)
	}
	freedAt := uint64(7)
	// A start's time later the instance has served the two ahead: wait on.
	if !keepPlace(freedAt, freedAt+2) {
		t.Fatal("the queue moved, yet the call gave up its place")
	}
	freedAt += 2
	// Another start's time, and nothing came free: the calls holding the
	// instance are long. Decide again, impatient: start.
	if keepPlace(freedAt, freedAt) {
		t.Fatal("the queue stalled, yet the call kept waiting")
	}
	st.patient = false
	if d := ap.decide(now.Add(600*time.Millisecond), st); d.action != admitStart {
		t.Fatalf("after a stalled queue: %+v, want a start", d)
	}
}
