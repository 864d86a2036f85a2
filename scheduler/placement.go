package scheduler

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoCapacity: no registered node can take an invocation right now.
var ErrNoCapacity = errors.New("scheduler: no capacity")

// ErrFull (wrapped with ErrNoCapacity): a node could run the invocation
// but none has room now — waiting for room may help.
var ErrFull = errors.New("every node that could run it is full")

// Warm counts one image's booted instances on a node.
type Warm struct {
	Idle, Busy uint32
}

// Node is the scheduler's view of one agent: what its last heartbeat said,
// corrected by what the scheduler itself placed there since (Reserved,
// Claimed), so that a burst between two heartbeats is not all sent to the
// node that looked emptiest at the last one.
type Node struct {
	Name          string
	Address       string
	MemoryTotal   uint64
	MemoryUsed    uint64
	MemoryIdle    uint64          // of MemoryUsed, held by idle instances the agent evicts for a cold start
	Warm          map[string]Warm // image digest → instances
	Cached        map[string]bool // image digests in the node's image cache
	LastHeartbeat time.Time

	Reserved uint64         // memory of cold starts placed and not yet answered
	Claimed  map[string]int // idle instances of a digest taken by in-flight invocations
}

// Free is the memory a cold start could still use on n: idle instances
// count as free, since the agent destroys them to make room for a call.
func (n *Node) Free() uint64 {
	used := n.MemoryUsed - min(n.MemoryIdle, n.MemoryUsed) + n.Reserved
	if used >= n.MemoryTotal {
		return 0
	}
	return n.MemoryTotal - used
}

// IdleWarm is the number of idle instances of digest not already claimed.
func (n *Node) IdleWarm(digest string) int {
	return int(n.Warm[digest].Idle) - n.Claimed[digest]
}

// HasImage reports whether a cold start of digest on n needs no image
// fetch: the node said it caches the image, or it runs instances of it.
func (n *Node) HasImage(digest string) bool {
	w := n.Warm[digest]
	return n.Cached[digest] || w.Idle+w.Busy > 0
}

// Demand is what one invocation needs from a node.
type Demand struct {
	Digest      string
	MemoryBytes uint64
}

// Decision is where an invocation goes and why: Warm when an idle instance
// waits there, Cached when a cold start there needs no image fetch.
type Decision struct {
	Node   string
	Warm   bool
	Cached bool
}

// Placer chooses a node. Implementations are pure: the same arguments give
// the same decision, with no I/O, so policies are tested with tables.
type Placer interface {
	Place(now time.Time, d Demand, nodes []Node) (Decision, error)
}

// WarmFirst is Kiln's placement policy, in order of preference:
//
//  1. a node with an idle warm instance of the image (no start at all);
//  2. else a node with room (free memory ≥ the function's) that already
//     caches the image (a cold start without a fetch from the image store);
//  3. else any node with room.
//
// Nodes whose last heartbeat is older than StaleAfter are skipped: they are
// about to be drained and their numbers are not to be trusted. Within a
// rule, ties are broken by more idle instances (rule 1), then more free
// memory, then the smaller node name, so that placement is deterministic.
type WarmFirst struct {
	StaleAfter time.Duration // 0: never stale
}

// Place implements Placer.
func (p WarmFirst) Place(now time.Time, d Demand, nodes []Node) (Decision, error) {
	if len(nodes) == 0 {
		return Decision{}, fmt.Errorf("%w: no node is registered", ErrNoCapacity)
	}
	var warm, cached, cold *Node
	live := 0
	var biggest, largest uint64
	for i := range nodes {
		n := &nodes[i]
		if p.StaleAfter > 0 && now.Sub(n.LastHeartbeat) > p.StaleAfter {
			continue
		}
		live++
		largest = max(largest, n.MemoryTotal)
		if idle := n.IdleWarm(d.Digest); idle > 0 && d.Digest != "" {
			if warm == nil || idle > warm.IdleWarm(d.Digest) ||
				idle == warm.IdleWarm(d.Digest) && better(n, warm) {
				warm = n
			}
			continue
		}
		free := n.Free()
		biggest = max(biggest, free)
		if free < d.MemoryBytes {
			continue
		}
		if d.Digest != "" && n.HasImage(d.Digest) && (cached == nil || better(n, cached)) {
			cached = n
		}
		if cold == nil || better(n, cold) {
			cold = n
		}
	}
	switch {
	case warm != nil:
		return Decision{Node: warm.Name, Warm: true}, nil
	case cached != nil:
		return Decision{Node: cached.Name, Cached: true}, nil
	case cold != nil:
		return Decision{Node: cold.Name}, nil
	case live == 0:
		return Decision{}, fmt.Errorf("%w: none of %d nodes has sent a heartbeat in %v", ErrNoCapacity, len(nodes), p.StaleAfter)
	case largest < d.MemoryBytes:
		return Decision{}, fmt.Errorf("%w: the function needs %d MiB, more than any of %d nodes has (at most %d MiB)",
			ErrNoCapacity, d.MemoryBytes>>20, live, largest>>20)
	default:
		return Decision{}, fmt.Errorf("%w: %w: the function needs %d MiB, the most any of %d nodes has free is %d MiB",
			ErrNoCapacity, ErrFull, d.MemoryBytes>>20, live, biggest>>20)
	}
}

// better: more free memory, then the smaller name.
func better(a, b *Node) bool {
	if fa, fb := a.Free(), b.Free(); fa != fb {
		return fa > fb
	}
	return a.Name < b.Name
}
