package nodeagent

import (
	"context"
	"fmt"
	"maps"
	"slices"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// reserve books mem against the budget; an error (ErrNoCapacity, or
// ErrClosed once the agent is closing) means it was not booked.
func (a *Agent) reserve(mem uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reserveLocked(mem)
}

func (a *Agent) reserveLocked(mem uint64) error {
	if a.closed {
		return ErrClosed
	}
	if a.used+mem > a.cfg.MemoryBytes {
		return a.noMemoryLocked(mem)
	}
	a.used += mem
	a.m.memUsed.Set(float64(a.used))
	a.m.vms.Inc()
	return nil
}

// noMemoryLocked is the error for mem that does not fit in the budget.
func (a *Agent) noMemoryLocked(mem uint64) error {
	return fmt.Errorf("%w: needs %d MiB, %d of %d MiB in use", ErrNoCapacity, mem>>20, a.used>>20, a.cfg.MemoryBytes>>20)
}

func (a *Agent) releaseMem(mem uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.used -= mem
	a.m.memUsed.Set(float64(a.used))
	a.m.vms.Dec()
}

// Capacity implements kilnv1.AgentServer.
func (a *Agent) Capacity(context.Context, *kilnv1.CapacityRequest) (*kilnv1.CapacityResponse, error) {
	return a.capacity(), nil
}

func (a *Agent) capacity() *kilnv1.CapacityResponse {
	cached := a.cache.digests() // disk I/O: outside a.mu
	a.mu.Lock()
	defer a.mu.Unlock()
	warm := map[string]*kilnv1.WarmInstances{}
	var idleMem uint64
	for _, p := range a.pools {
		for _, in := range p.idle {
			idleMem += in.mem
		}
		if p.total() == 0 {
			continue
		}
		w := warm[p.digest]
		if w == nil {
			w = &kilnv1.WarmInstances{ImageDigest: p.digest}
			warm[p.digest] = w
		}
		w.Idle += uint32(len(p.idle))
		w.Busy += uint32(p.busy + p.starting)
	}
	c := &kilnv1.CapacityResponse{Node: a.cfg.Node, MemoryBytesTotal: a.cfg.MemoryBytes, MemoryBytesUsed: a.used,
		MemoryBytesIdle: idleMem, CachedImages: cached}
	for _, d := range slices.Sorted(maps.Keys(warm)) {
		c.Warm = append(c.Warm, warm[d])
	}
	return c
}
