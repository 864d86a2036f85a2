package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler/slapolicy"
)

func invokeSLA(e *env, id string, deadlineMs int64) (*kilnv1.InvokeResponse, error) {
	return e.client.Invoke(context.Background(), &kilnv1.InvokeRequest{
		InvocationId: id,
		Function:     &kilnv1.FunctionSpec{Name: "f" + id, ImageDigest: dA, MemoryBytes: 64 << 20, DeadlineMs: deadlineMs, SlaTarget: 0.99},
		Body:         []byte(id),
	})
}

// When every node is full an invocation waits for room instead of failing,
// and runs as soon as a heartbeat shows some.
func TestQueueWaitsForRoom(t *testing.T) {
	e := start(t, 500*time.Millisecond)
	a := startAgent(t, "a", kilnv1.Outcome_OUTCOME_OK)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := e.connect(t, ctx, "a", a.addr, 256<<20)
	heartbeat(t, st, 256<<20, 256<<20)
	waitFor(t, "full heartbeat", func() bool { return e.s.Nodes()[0].MemoryUsed == 256<<20 })

	done := make(chan *kilnv1.InvokeResponse, 1)
	go func() {
		r, err := invokeSLA(e, "1", 0)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	waitFor(t, "queued", func() bool { return testutil.ToFloat64(e.s.sla.depth) == 1 })
	select {
	case r := <-done:
		t.Fatalf("answered while every node was full: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
	heartbeat(t, st, 256<<20, 0)
	r := <-done
	if r.Outcome != kilnv1.Outcome_OUTCOME_OK || string(r.Body) != "a:1" {
		t.Fatalf("after room appeared: %+v", r)
	}
}

// Queued invocations go earliest deadline first, and one that can no
// longer meet its deadline is told so instead of running late.
func TestQueueEarliestDeadlineFirst(t *testing.T) {
	e := start(t, 500*time.Millisecond)
	a := startAgent(t, "a", kilnv1.Outcome_OUTCOME_OK)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := e.connect(t, ctx, "a", a.addr, 64<<20)
	heartbeat(t, st, 64<<20, 64<<20)
	waitFor(t, "full heartbeat", func() bool { return e.s.Nodes()[0].MemoryUsed == 64<<20 })

	type res struct {
		id string
		r  *kilnv1.InvokeResponse
	}
	done := make(chan res, 3)
	for i, c := range []struct {
		id       string
		deadline int64
	}{{"late", 4000}, {"soon", 2000}, {"hopeless", 30}} {
		go func() {
			r, err := invokeSLA(e, c.id, c.deadline)
			if err != nil {
				t.Error(err)
			}
			done <- res{c.id, r}
		}()
		waitFor(t, "queued", func() bool { return testutil.ToFloat64(e.s.sla.depth) == float64(i+1) })
	}
	// 100 ms later (the scheduler's clock) "hopeless" has missed its
	// 30 ms deadline; room for one call appears.
	e.clock.Advance(100 * time.Millisecond)
	heartbeat(t, st, 64<<20, 0)
	got := map[string]*kilnv1.InvokeResponse{}
	for range 3 {
		x := <-done
		got[x.id] = x.r
		if x.id == "soon" || x.id == "hopeless" {
			if len(got) == 2 {
				heartbeat(t, st, 64<<20, 0) // the next call finds room too
			}
		}
	}
	if r := got["hopeless"]; r.Outcome != kilnv1.Outcome_OUTCOME_NO_CAPACITY || !strings.Contains(r.Error, "deadline passed") {
		t.Fatalf("hopeless: %+v", r)
	}
	if got["soon"].Outcome != kilnv1.Outcome_OUTCOME_OK || got["late"].Outcome != kilnv1.Outcome_OUTCOME_OK {
		t.Fatalf("soon %+v late %+v", got["soon"], got["late"])
	}
	if ran := a.runs(); len(ran) != 2 || ran[0] != "soon" || ran[1] != "late" {
		t.Fatalf("ran %v, want soon before late", ran)
	}
	if n := testutil.ToFloat64(e.s.sla.rejected); n != 1 {
		t.Fatalf("rejected %v", n)
	}
}

// The policy's plan reaches the nodes that run the function as a
// WarmTargets message with their share above min_warm.
func TestWarmTargetsReachNodes(t *testing.T) {
	e := start(t, 500*time.Millisecond)
	a := startAgent(t, "a", kilnv1.Outcome_OUTCOME_OK)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := e.connect(t, ctx, "a", a.addr, 1<<30)
	heartbeat(t, st, 1<<30, 64<<20, &kilnv1.WarmInstances{ImageDigest: dA, Idle: 1})
	waitFor(t, "warm heartbeat", func() bool { return e.s.Nodes()[0].Warm[dA].Idle == 1 })

	// 20 calls a second of 100 ms each, and cold starts of 300 ms against
	// a 200 ms deadline at 99 %: several warm instances are needed.
	fn := &kilnv1.FunctionSpec{Name: "busy", ImageDigest: dA, MemoryBytes: 64 << 20, DeadlineMs: 200, SlaTarget: 0.99}
	e.s.sla.note(fn)
	now := e.clock.Now()
	for i := range 600 {
		at := now.Add(-time.Duration(i) * 50 * time.Millisecond)
		kind, start := slapolicy.StartWarm, time.Duration(0)
		if i%10 == 0 {
			kind, start = slapolicy.StartRestore, 300*time.Millisecond
		}
		e.s.sla.policy.Observe(slapolicy.Observation{Function: "busy", At: at, Start: kind, StartTime: start, Exec: 100 * time.Millisecond})
	}
	e.s.planWarm()
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	wt := m.GetWarmTargets()
	if wt == nil || len(wt.Targets) != 1 || wt.Targets[0].Function.Name != "busy" || wt.Targets[0].Warm < 3 {
		t.Fatalf("warm targets %v", m)
	}
	if g := testutil.ToFloat64(e.s.sla.target.WithLabelValues("busy")); g != float64(wt.Targets[0].Warm) {
		t.Fatalf("kiln_scheduler_warm_target %v, sent %d", g, wt.Targets[0].Warm)
	}
	// Nothing changed: nothing is sent again.
	e.s.planWarm()
	got := make(chan *kilnv1.SchedulerMessage, 1)
	go func() { m, _ := st.Recv(); got <- m }()
	select {
	case m := <-got:
		t.Fatalf("sent again without a change: %v", m)
	case <-time.After(200 * time.Millisecond):
	}
}

// ListNodes gives a separate gateway the scheduler's view: each node's
// last report, warm instances included, and NodesFrom reads it back.
func TestListNodes(t *testing.T) {
	e := start(t, 500*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := e.connect(t, ctx, "a", "127.0.0.1:1", 1<<30)
	heartbeat(t, st, 1<<30, 128<<20, &kilnv1.WarmInstances{ImageDigest: dA, Idle: 1, Busy: 1})
	waitFor(t, "heartbeat", func() bool { return e.s.Nodes()[0].Warm[dA].Busy == 1 })
	r, err := e.client.ListNodes(ctx, &kilnv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nodes := NodesFrom(r)
	if len(nodes) != 1 || nodes[0].Name != "a" || nodes[0].Warm[dA] != (Warm{Idle: 1, Busy: 1}) || nodes[0].MemoryUsed != 128<<20 {
		t.Fatalf("%+v", nodes)
	}
}
