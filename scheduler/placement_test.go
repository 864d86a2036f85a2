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
		{"busy instances are not warm", Demand{dA, 64 * mib},
			[]Node{node("n1", 1024, 512, map[string]Warm{dA: {Busy: 3}}), node("n2", 1024, 0, nil)},
			Decision{Node: "n2"}, false},
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
			Decision{Node: "n1"}, false}, // n1 still has the most free memory for a cold start
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
	if err == nil || err.Error() != "scheduler: no capacity: the function needs 512 MiB, the most any of 1 nodes has free is 256 MiB" {
		t.Fatalf("%v", err)
	}
}
