package scheduler

import (
	"errors"
	"testing"
	"time"
)

const (
	mib = 1 << 20
	dA  = "sha256:aaaa"
	dB  = "sha256:bbbb"
)

func TestWarmFirst(t *testing.T) {
	now := time.Unix(1000, 0)
	fresh := now.Add(-time.Second)
	node := func(name string, total, used uint64, warm map[string]Warm) Node {
		return Node{Name: name, MemoryTotal: total * mib, MemoryUsed: used * mib, Warm: warm, LastHeartbeat: fresh}
	}
	tests := []struct {
		name   string
		d      Demand
		nodes  []Node
		want   Decision
		noRoom bool
	}{
		{"no nodes", Demand{dA, 64 * mib}, nil, Decision{}, true},
		{"one node fits", Demand{dA, 64 * mib}, []Node{node("n1", 1024, 0, nil)}, Decision{Node: "n1"}, false},
		{"exact fit", Demand{dA, 64 * mib}, []Node{node("n1", 128, 64, nil)}, Decision{Node: "n1"}, false},
		{"does not fit", Demand{dA, 64 * mib}, []Node{node("n1", 128, 65, nil)}, Decision{}, true},
		{"most free wins", Demand{dA, 64 * mib},
			[]Node{node("n1", 1024, 512, nil), node("n2", 1024, 100, nil), node("n3", 2048, 1800, nil)},
			Decision{Node: "n2"}, false},
		{"tie broken by name", Demand{dA, 64 * mib},
			[]Node{node("n2", 1024, 0, nil), node("n1", 1024, 0, nil), node("n3", 1024, 0, nil)},
			Decision{Node: "n1"}, false},
		{"warm beats free", Demand{dA, 64 * mib},
			[]Node{node("big", 4096, 0, nil), node("small", 256, 200, map[string]Warm{dA: {Idle: 1}})},
			Decision{Node: "small", Warm: true}, false},
		{"warm even when full", Demand{dA, 64 * mib},
			[]Node{node("full", 256, 256, map[string]Warm{dA: {Idle: 1}})},
			Decision{Node: "full", Warm: true}, false},
		{"busy instances are not warm, but the image is there", Demand{dA, 64 * mib},
			[]Node{node("n1", 1024, 512, map[string]Warm{dA: {Busy: 3}}), node("n2", 1024, 0, nil)},
			Decision{Node: "n1", Cached: true}, false},
		{"other image's warm ignored", Demand{dA, 64 * mib},
			[]Node{node("n1", 1024, 512, map[string]Warm{dB: {Idle: 3}}), node("n2", 1024, 0, nil)},
			Decision{Node: "n2"}, false},
		{"more idle wins", Demand{dA, 64 * mib},
			[]Node{node("n1", 1024, 0, map[string]Warm{dA: {Idle: 1}}), node("n2", 1024, 512, map[string]Warm{dA: {Idle: 2}})},
			Decision{Node: "n2", Warm: true}, false},
		{"equal idle: more free wins", Demand{dA, 64 * mib},
			[]Node{node("n1", 1024, 512, map[string]Warm{dA: {Idle: 1}}), node("n2", 1024, 0, map[string]Warm{dA: {Idle: 1}})},
			Decision{Node: "n2", Warm: true}, false},
		{"claimed idle is not idle", Demand{dA, 64 * mib},
			[]Node{{Name: "n1", MemoryTotal: 1024 * mib, Warm: map[string]Warm{dA: {Idle: 1}}, Claimed: map[string]int{dA: 1}, LastHeartbeat: fresh},
				node("n2", 512, 0, nil)},
			Decision{Node: "n1", Cached: true}, false}, // n1 has the image for a cold start
		{"reserved memory counts", Demand{dA, 64 * mib},
			[]Node{{Name: "n1", MemoryTotal: 1024 * mib, Reserved: 1000 * mib, LastHeartbeat: fresh}, node("n2", 512, 0, nil)},
			Decision{Node: "n2"}, false},
		{"used over total", Demand{dA, 64 * mib}, []Node{node("n1", 128, 4096, nil)}, Decision{}, true},
		{"stale node skipped", Demand{dA, 64 * mib},
			[]Node{{Name: "old", MemoryTotal: 8192 * mib, LastHeartbeat: now.Add(-time.Minute)}, node("n2", 512, 0, nil)},
			Decision{Node: "n2"}, false},
		{"only stale nodes", Demand{dA, 64 * mib},
			[]Node{{Name: "old", MemoryTotal: 8192 * mib, LastHeartbeat: now.Add(-time.Minute)}}, Decision{}, true},
		{"stale warm skipped", Demand{dA, 64 * mib},
			[]Node{{Name: "old", MemoryTotal: 8192 * mib, Warm: map[string]Warm{dA: {Idle: 4}}, LastHeartbeat: now.Add(-time.Minute)}, node("n2", 512, 0, nil)},
			Decision{Node: "n2"}, false},
	}
	cachedNode := func(name string, total, used uint64, digests ...string) Node {
		n := node(name, total, used, nil)
		n.Cached = map[string]bool{}
		for _, d := range digests {
			n.Cached[d] = true
		}
		return n
	}
	tests = append(tests, []struct {
		name   string
		d      Demand
		nodes  []Node
		want   Decision
		noRoom bool
	}{
		{"cached beats more free", Demand{dA, 64 * mib},
			[]Node{node("big", 4096, 0, nil), cachedNode("small", 256, 100, dA)},
			Decision{Node: "small", Cached: true}, false},
		{"warm beats cached", Demand{dA, 64 * mib},
			[]Node{cachedNode("c", 4096, 0, dA), node("w", 256, 200, map[string]Warm{dA: {Idle: 1}})},
			Decision{Node: "w", Warm: true}, false},
		{"cached but full: any node with room", Demand{dA, 64 * mib},
			[]Node{cachedNode("full", 256, 250, dA), node("roomy", 1024, 0, nil)},
			Decision{Node: "roomy"}, false},
		{"cached but full, no other room", Demand{dA, 64 * mib},
			[]Node{cachedNode("full", 256, 250, dA)}, Decision{}, true},
		{"among cached, more free wins", Demand{dA, 64 * mib},
			[]Node{cachedNode("c1", 1024, 900, dA), cachedNode("c2", 1024, 100, dA), node("x", 8192, 0, nil)},
			Decision{Node: "c2", Cached: true}, false},
		{"among cached, equal free: smaller name", Demand{dA, 64 * mib},
			[]Node{cachedNode("c2", 1024, 0, dA), cachedNode("c1", 1024, 0, dA)},
			Decision{Node: "c1", Cached: true}, false},
		{"other image cached is not cached", Demand{dA, 64 * mib},
			[]Node{cachedNode("b", 4096, 0, dB), node("a", 1024, 0, nil)},
			Decision{Node: "b"}, false},
		{"reserved memory counts against cached", Demand{dA, 64 * mib},
			[]Node{{Name: "c", MemoryTotal: 1024 * mib, Reserved: 1000 * mib, Cached: map[string]bool{dA: true}, LastHeartbeat: fresh},
				node("n", 512, 0, nil)},
			Decision{Node: "n"}, false},
		{"stale cached skipped", Demand{dA, 64 * mib},
			[]Node{{Name: "old", MemoryTotal: 8192 * mib, Cached: map[string]bool{dA: true}, LastHeartbeat: now.Add(-time.Minute)},
				node("n", 512, 0, nil)},
			Decision{Node: "n"}, false},
		{"heartbeat exactly StaleAfter ago is live", Demand{dA, 64 * mib},
			[]Node{{Name: "edge", MemoryTotal: 1024 * mib, LastHeartbeat: now.Add(-10 * time.Second)}},
			Decision{Node: "edge"}, false},
		{"heartbeat just over StaleAfter ago is drained", Demand{dA, 64 * mib},
			[]Node{{Name: "edge", MemoryTotal: 1024 * mib, LastHeartbeat: now.Add(-10*time.Second - time.Nanosecond)}},
			Decision{}, true},
	}...)
	p := WarmFirst{StaleAfter: 10 * time.Second}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Place(now, tc.d, tc.nodes)
			if tc.noRoom {
				if !errors.Is(err, ErrNoCapacity) {
					t.Fatalf("got %+v, %v; want ErrNoCapacity", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
			// Pure: the order nodes are listed in does not matter.
			rev := make([]Node, len(tc.nodes))
			for i, n := range tc.nodes {
				rev[len(rev)-1-i] = n
			}
			if got2, _ := p.Place(now, tc.d, rev); got2 != got {
				t.Fatalf("reversed node order gave %+v, want %+v", got2, got)
			}
		})
	}
}

func TestWarmFirstMessage(t *testing.T) {
	_, err := WarmFirst{}.Place(time.Now(), Demand{dA, 512 * mib}, []Node{{Name: "n", MemoryTotal: 256 * mib}})
	if err == nil || errors.Is(err, ErrFull) || err.Error() != "scheduler: no capacity: the function needs 512 MiB, more than any of 1 nodes has (at most 256 MiB)" {
		t.Fatalf("%v", err)
	}
	_, err = WarmFirst{}.Place(time.Now(), Demand{dA, 128 * mib}, []Node{{Name: "n", MemoryTotal: 256 * mib, MemoryUsed: 192 * mib}})
	if !errors.Is(err, ErrFull) || err.Error() != "scheduler: no capacity: every node that could run it is full: the function needs 128 MiB, the most any of 1 nodes has free is 64 MiB" {
		t.Fatalf("%v", err)
	}
	// Idle instances are room: the agent evicts them for a cold start.
	dec, err := WarmFirst{}.Place(time.Now(), Demand{dB, 128 * mib}, []Node{{Name: "n", MemoryTotal: 256 * mib, MemoryUsed: 192 * mib, MemoryIdle: 64 * mib}})
	if err != nil || dec.Node != "n" {
		t.Fatalf("%+v %v", dec, err)
	}
}
