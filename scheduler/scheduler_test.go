package scheduler

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testAgent is a real gRPC Agent server that answers with what it is told
// and records what it ran, standing in for a node-agent without KVM.
type testAgent struct {
	kilnv1.UnimplementedAgentServer
	name   string
	addr   string
	answer kilnv1.Outcome
	mu     sync.Mutex
	ran    []string
}

func (a *testAgent) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	a.mu.Lock()
	a.ran = append(a.ran, req.InvocationId)
	answer := a.answer
	a.mu.Unlock()
	if answer != kilnv1.Outcome_OUTCOME_OK {
		return &kilnv1.InvokeResponse{Outcome: a.answer, Error: a.name + " refuses"}, nil
	}
	return &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_OK, Status: 200, Body: append([]byte(a.name+":"), req.Body...)}, nil
}

func (a *testAgent) runs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ran...)
}

func startAgent(t *testing.T, name string, answer kilnv1.Outcome) *testAgent {
	a := &testAgent{name: name, answer: answer}
	a.addr = testnet.ServeGRPC(t, func(s *grpc.Server) { kilnv1.RegisterAgentServer(s, a) })
	return a
}

type env struct {
	s      *Scheduler
	client kilnv1.SchedulerClient
	clock  *clock
	reg    *prometheus.Registry
}

func start(t *testing.T, interval time.Duration) *env {
	t.Helper()
	e := &env{clock: &clock{t: time.Unix(1_800_000_000, 0)}, reg: prometheus.NewRegistry()}
	var err error
	e.s, err = New(Config{HeartbeatInterval: interval, Clock: e.clock.Now, Registerer: e.reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.s.Close() })
	addr := testnet.ServeGRPC(t, func(srv *grpc.Server) { kilnv1.RegisterSchedulerServer(srv, e.s) })
	e.client = kilnv1.NewSchedulerClient(testnet.Dial(t, addr))
	return e
}

type agentStream = grpc.BidiStreamingClient[kilnv1.AgentMessage, kilnv1.SchedulerMessage]

// connect registers a node the way an agent does and returns its stream.
func (e *env) connect(t *testing.T, ctx context.Context, name, addr string, mem uint64) agentStream {
	t.Helper()
	st, err := e.client.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Register{Register: &kilnv1.Register{
		Node: name, Address: addr, MemoryBytesTotal: mem}}}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := m.GetRegistered().GetHeartbeatIntervalMs(); got != e.s.HeartbeatInterval().Milliseconds() {
		t.Fatalf("Registered interval %d ms", got)
	}
	return st
}

func heartbeat(t *testing.T, st agentStream, total, used uint64, warm ...*kilnv1.WarmInstances) {
	t.Helper()
	err := st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Heartbeat{Heartbeat: &kilnv1.Heartbeat{
		Capacity: &kilnv1.CapacityResponse{MemoryBytesTotal: total, MemoryBytesUsed: used, Warm: warm}}}})
	if err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond: the scheduler applies stream messages asynchronously.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func nodeNames(s *Scheduler) string {
	var n []string
	for _, x := range s.Nodes() {
		n = append(n, x.Name)
	}
	return strings.Join(n, ",")
}

func TestRegisterHeartbeatLeave(t *testing.T) {
	e := start(t, time.Hour) // the sweeper stays out of the way; Expire is called by hand
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := e.connect(t, ctx, "n1", "127.0.0.1:1", 1<<30)
	if got := nodeNames(e.s); got != "n1" {
		t.Fatalf("nodes %q", got)
	}
	if v := testutil.ToFloat64(e.s.nodesGauge); v != 1 {
		t.Fatalf("kiln_scheduler_nodes = %v", v)
	}
	e.clock.Advance(time.Minute)
	heartbeat(t, st, 1<<30, 300<<20, &kilnv1.WarmInstances{ImageDigest: dA, Idle: 2, Busy: 1})
	waitFor(t, "heartbeat", func() bool {
		n := e.s.Nodes()
		return len(n) == 1 && n[0].MemoryUsed == 300<<20
	})
	n := e.s.Nodes()[0]
	if n.Warm[dA] != (Warm{Idle: 2, Busy: 1}) || !n.LastHeartbeat.Equal(e.clock.Now()) || n.Address != "127.0.0.1:1" {
		t.Fatalf("node after heartbeat: %+v", n)
	}
	// The agent closes its side: the node is gone.
	st.CloseSend()
	waitFor(t, "removal after close", func() bool { return nodeNames(e.s) == "" })
	if v := testutil.ToFloat64(e.s.nodesGauge); v != 0 {
		t.Fatalf("kiln_scheduler_nodes = %v", v)
	}
}

func TestMissedHeartbeats(t *testing.T) {
	const iv = time.Hour
	e := start(t, iv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st1 := e.connect(t, ctx, "n1", "127.0.0.1:1", 1<<30)
	e.connect(t, ctx, "n2", "127.0.0.1:2", 1<<30)

	e.clock.Advance(2 * iv)
	heartbeat(t, st1, 1<<30, 0)
	waitFor(t, "heartbeat", func() bool { return e.s.Nodes()[0].LastHeartbeat.Equal(e.clock.Now()) })
	e.clock.Advance(MissedHeartbeats*iv - 2*iv) // n2 silent for exactly MissedHeartbeats intervals: still in
	if gone := e.s.Expire(); len(gone) != 0 {
		t.Fatalf("expired too early: %v", gone)
	}
	e.clock.Advance(time.Millisecond)
	if gone := e.s.Expire(); strings.Join(gone, ",") != "n2" {
		t.Fatalf("expired %v, want n2", gone)
	}
	if got := nodeNames(e.s); got != "n1" {
		t.Fatalf("nodes %q", got)
	}
	// The removed node's stream is ended by the scheduler, so its agent
	// notices and reconnects.
	st1.CloseSend()
}

func TestRemovedStreamEnds(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := e.connect(t, ctx, "n1", "127.0.0.1:1", 1<<30)
	e.clock.Advance((MissedHeartbeats + 1) * time.Hour)
	e.s.Expire()
	_, err := st.Recv()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream of a removed node: %v", err)
	}
}

func TestReconnectReplaces(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	old := e.connect(t, ctx, "n1", "127.0.0.1:1", 1<<30)
	e.connect(t, ctx, "n1", "127.0.0.1:9", 2<<30)
	if _, err := old.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("replaced stream: %v", err)
	}
	// The old stream ending must not remove the new registration.
	time.Sleep(50 * time.Millisecond)
	if n := e.s.Nodes(); len(n) != 1 || n[0].Address != "127.0.0.1:9" {
		t.Fatalf("nodes %+v", n)
	}
}

func TestConnectNeedsRegister(t *testing.T) {
	e := start(t, time.Hour)
	st, err := e.client.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Heartbeat{Heartbeat: &kilnv1.Heartbeat{}}})
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("heartbeat first: %v", err)
	}
}

func TestSweeperRemovesSilentNode(t *testing.T) {
	// Real clock, short interval: the sweeper, not the test, removes it.
	reg := prometheus.NewRegistry()
	s, err := New(Config{HeartbeatInterval: 20 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := testnet.ServeGRPC(t, func(srv *grpc.Server) { kilnv1.RegisterSchedulerServer(srv, s) })
	e := &env{s: s, client: kilnv1.NewSchedulerClient(testnet.Dial(t, addr))}
	e.connect(t, context.Background(), "quiet", "127.0.0.1:1", 1<<30)
	waitFor(t, "sweeper", func() bool { return nodeNames(s) == "" })
}

func invoke(t *testing.T, e *env, id string, mem uint64) *kilnv1.InvokeResponse {
	t.Helper()
	resp, err := e.client.Invoke(context.Background(), &kilnv1.InvokeRequest{
		InvocationId: id,
		Function:     &kilnv1.FunctionSpec{Name: "f", ImageDigest: dA, MemoryBytes: mem},
		Body:         []byte(id),
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestInvokePlacesAndForwards(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	resp := invoke(t, e, "none", 64<<20)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_NO_CAPACITY || !strings.Contains(resp.Error, "no node is registered") {
		t.Fatalf("no nodes: %+v", resp)
	}

	small := startAgent(t, "small", kilnv1.Outcome_OUTCOME_OK)
	big := startAgent(t, "big", kilnv1.Outcome_OUTCOME_OK)
	stSmall := e.connect(t, ctx, "small", small.addr, 256<<20)
	e.connect(t, ctx, "big", big.addr, 1<<30)

	resp = invoke(t, e, "cold1", 64<<20)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK || resp.Node != "big" || string(resp.Body) != "big:cold1" {
		t.Fatalf("cold: %+v", resp)
	}
	resp = invoke(t, e, "huge", 512<<20)
	if resp.Node != "big" {
		t.Fatalf("512 MiB must go to big: %+v", resp)
	}
	resp = invoke(t, e, "toohuge", 2<<30)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_NO_CAPACITY || !strings.Contains(resp.Error, "needs 2048 MiB") {
		t.Fatalf("too big: %+v", resp)
	}

	// small reports an idle warm instance of the image: it wins.
	heartbeat(t, stSmall, 256<<20, 64<<20, &kilnv1.WarmInstances{ImageDigest: dA, Idle: 1})
	waitFor(t, "warm heartbeat", func() bool {
		for _, n := range e.s.Nodes() {
			if n.Name == "small" && n.Warm[dA].Idle == 1 {
				return true
			}
		}
		return false
	})
	resp = invoke(t, e, "warm1", 64<<20)
	if resp.Node != "small" || string(resp.Body) != "small:warm1" {
		t.Fatalf("warm: %+v", resp)
	}
	if got := strings.Join(big.runs(), ","); got != "cold1,huge" {
		t.Fatalf("big ran %s", got)
	}
	for outcome, want := range map[string]float64{"cold": 2, "warm": 1, "no_capacity": 2} {
		if v := testutil.ToFloat64(e.s.placements.WithLabelValues(outcome)); v != want {
			t.Errorf("placements{%s} = %v, want %v", outcome, v, want)
		}
	}
	// Registered on the injected registry, nowhere else.
	if n, err := testutil.GatherAndCount(e.reg, "kiln_scheduler_nodes", "kiln_scheduler_placements_total"); err != nil || n != 4 {
		t.Fatalf("gathered %d series, %v", n, err)
	}
}

func TestInvokeRetriesRefusal(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	full := startAgent(t, "a-full", kilnv1.Outcome_OUTCOME_NO_CAPACITY)
	ok := startAgent(t, "b-ok", kilnv1.Outcome_OUTCOME_OK)
	e.connect(t, ctx, "a-full", full.addr, 1<<30)
	e.connect(t, ctx, "b-ok", ok.addr, 1<<30)
	// Equal memory: a-full is chosen first by name, refuses, b-ok runs it.
	resp := invoke(t, e, "r1", 64<<20)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK || resp.Node != "b-ok" || len(full.runs()) != 1 {
		t.Fatalf("%+v, full ran %v", resp, full.runs())
	}
	// Only refusals: the last one is the answer.
	ok.mu.Lock()
	ok.answer = kilnv1.Outcome_OUTCOME_NO_CAPACITY
	ok.mu.Unlock()
	resp = invoke(t, e, "r2", 64<<20)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_NO_CAPACITY || resp.Node == "" {
		t.Fatalf("%+v", resp)
	}
	// A node that could not start it (its image store unreachable) is a
	// refusal too: the call goes to the next node.
	full.mu.Lock()
	full.answer = kilnv1.Outcome_OUTCOME_PLATFORM_ERROR
	full.mu.Unlock()
	ok.mu.Lock()
	ok.answer = kilnv1.Outcome_OUTCOME_OK
	ok.mu.Unlock()
	resp = invoke(t, e, "r3", 64<<20)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK || resp.Node != "b-ok" || len(full.runs()) != 3 {
		t.Fatalf("after a platform error on a-full: %+v, full ran %v", resp, full.runs())
	}
	// Bookings are released after each answer.
	for _, n := range e.s.Nodes() {
		if n.Reserved != 0 || len(n.Claimed) != 0 {
			t.Fatalf("leaked booking on %+v", n)
		}
	}
}

func TestInvokeUnreachableNode(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := testnet.FreeAddr(t) // nothing listens there
	e.connect(t, ctx, "dead", addr, 1<<30)
	_, err := e.client.Invoke(context.Background(), &kilnv1.InvokeRequest{
		Function: &kilnv1.FunctionSpec{ImageDigest: dA, MemoryBytes: 64 << 20}})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "node dead") {
		t.Fatalf("unreachable node: %v", err)
	}
	_, err = e.client.Invoke(context.Background(), &kilnv1.InvokeRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty request: %v", err)
	}
}

// blockingAgent holds every invocation until release is closed or the
// caller gives up, and reports each one that arrived on arrived.
type blockingAgent struct {
	kilnv1.UnimplementedAgentServer
	addr    string
	arrived chan string
	release chan struct{}
}

func startBlockingAgent(t *testing.T) *blockingAgent {
	a := &blockingAgent{arrived: make(chan string, 16), release: make(chan struct{})}
	a.addr = testnet.ServeGRPC(t, func(s *grpc.Server) { kilnv1.RegisterAgentServer(s, a) })
	return a
}

func (a *blockingAgent) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	a.arrived <- req.InvocationId
	select {
	case <-a.release:
		return &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_OK, Status: 200, Body: []byte("done")}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A node the request cannot reach did not start the invocation: it runs on
// another node.
func TestUnreachableNodeRetriedElsewhere(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dead := testnet.FreeAddr(t)
	ok := startAgent(t, "b-ok", kilnv1.Outcome_OUTCOME_OK)
	e.connect(t, ctx, "a-dead", dead, 4<<30) // most free memory: chosen first
	e.connect(t, ctx, "b-ok", ok.addr, 1<<30)
	resp := invoke(t, e, "x1", 64<<20)
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK || resp.Node != "b-ok" {
		t.Fatalf("%+v", resp)
	}
	if v := testutil.ToFloat64(e.s.retries); v != 1 {
		t.Fatalf("retries = %v", v)
	}
	for _, n := range e.s.Nodes() {
		if n.Reserved != 0 || len(n.Claimed) != 0 {
			t.Fatalf("leaked booking on %+v", n)
		}
	}
}

// A drained node's invocations in flight end at once with Unavailable and
// are not run again elsewhere (they may have run).
func TestDrainStopsInFlight(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck := startBlockingAgent(t)
	other := startAgent(t, "b-other", kilnv1.Outcome_OUTCOME_OK)
	stStuck := e.connect(t, ctx, "a-stuck", stuck.addr, 4<<30)
	stOther := e.connect(t, ctx, "b-other", other.addr, 1<<30)
	errc := make(chan error, 1)
	go func() {
		_, err := e.client.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "s1",
			Function: &kilnv1.FunctionSpec{ImageDigest: dA, MemoryBytes: 64 << 20}})
		errc <- err
	}()
	<-stuck.arrived
	// b-other keeps heartbeating; a-stuck has gone silent.
	e.clock.Advance(MissedHeartbeats*time.Hour + time.Second)
	heartbeat(t, stOther, 1<<30, 0)
	waitFor(t, "b-other's heartbeat", func() bool {
		for _, n := range e.s.Nodes() {
			if n.Name == "b-other" && n.LastHeartbeat.Equal(e.clock.Now()) {
				return true
			}
		}
		return false
	})
	t0 := time.Now()
	if gone := e.s.Expire(); strings.Join(gone, ",") != "a-stuck" {
		t.Fatalf("expired %v", gone)
	}
	select {
	case err := <-errc:
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "drained") {
			t.Fatalf("in flight on a drained node: %v", err)
		}
		if d := time.Since(t0); d > time.Second {
			t.Fatalf("took %v to end after the drain", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("invocation on a drained node still hangs 5 s after the drain")
	}
	if r := other.runs(); len(r) != 0 {
		t.Fatalf("a started invocation was run again on b-other: %v", r)
	}
	if _, err := stStuck.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("drained node's stream: %v", err)
	}
	if v := testutil.ToFloat64(e.s.drains.WithLabelValues("missed_heartbeats")); v != 1 {
		t.Fatalf("removals{missed_heartbeats} = %v", v)
	}
	// Nothing is placed on it any more.
	if resp := invoke(t, e, "after", 64<<20); resp.Node != "b-other" {
		t.Fatalf("after the drain: %+v", resp)
	}
}

// A node that says goodbye gets no new invocations, but those in flight
// finish.
func TestGoodbyeLetsInFlightFinish(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	busy := startBlockingAgent(t)
	st := e.connect(t, ctx, "n1", busy.addr, 1<<30)
	type result struct {
		resp *kilnv1.InvokeResponse
		err  error
	}
	res := make(chan result, 1)
	go func() {
		r, err := e.client.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "g1",
			Function: &kilnv1.FunctionSpec{ImageDigest: dA, MemoryBytes: 64 << 20}})
		res <- result{r, err}
	}()
	<-busy.arrived
	st.CloseSend()
	waitFor(t, "removal after goodbye", func() bool { return nodeNames(e.s) == "" })
	if resp := invoke(t, e, "new", 64<<20); resp.Outcome != kilnv1.Outcome_OUTCOME_NO_CAPACITY {
		t.Fatalf("placed on a node that left: %+v", resp)
	}
	close(busy.release)
	r := <-res
	if r.err != nil || r.resp.Outcome != kilnv1.Outcome_OUTCOME_OK || string(r.resp.Body) != "done" {
		t.Fatalf("in flight across the goodbye: %+v, %v", r.resp, r.err)
	}
	if v := testutil.ToFloat64(e.s.drains.WithLabelValues("left")); v != 1 {
		t.Fatalf("removals{left} = %v", v)
	}
}

// Heartbeats carry the cached images; a cold start goes to a node that has
// the image rather than to the emptier one.
func TestCachedImagePlacement(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	big := startAgent(t, "big", kilnv1.Outcome_OUTCOME_OK)
	small := startAgent(t, "small", kilnv1.Outcome_OUTCOME_OK)
	e.connect(t, ctx, "big", big.addr, 4<<30)
	st := e.connect(t, ctx, "small", small.addr, 1<<30)
	st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Heartbeat{Heartbeat: &kilnv1.Heartbeat{
		Capacity: &kilnv1.CapacityResponse{MemoryBytesTotal: 1 << 30, CachedImages: []string{dA}}}}})
	waitFor(t, "cached report", func() bool {
		for _, n := range e.s.Nodes() {
			if n.Name == "small" && n.Cached[dA] {
				return true
			}
		}
		return false
	})
	if resp := invoke(t, e, "c1", 64<<20); resp.Node != "small" {
		t.Fatalf("cold start with the image cached on small went to %s", resp.Node)
	}
	if v := testutil.ToFloat64(e.s.placements.WithLabelValues("cached")); v != 1 {
		t.Fatalf("placements{cached} = %v", v)
	}
}

// After a stall of the scheduler itself, the sweeper drains nothing for one
// interval; on time, it drains as usual.
func TestStallGuard(t *testing.T) {
	const iv = 500 * time.Millisecond
	t0 := time.Unix(1000, 0)
	g := stallGuard{interval: iv, period: iv / 4, last: t0}
	steps := []struct {
		at    time.Duration // since t0
		ok    bool
		stall time.Duration
	}{
		{125 * time.Millisecond, true, 0},
		{250 * time.Millisecond, true, 0},
		{875 * time.Millisecond, true, 0},                 // late by less than an interval: fine
		{4 * time.Second, false, 3125 * time.Millisecond}, // stalled 3 s: hold
		{4125 * time.Millisecond, false, 0},
		{4375 * time.Millisecond, false, 0},
		{4500 * time.Millisecond, true, 0}, // one interval after waking
		{4625 * time.Millisecond, true, 0},
	}
	for _, st := range steps {
		ok, stall := g.mayDrain(t0.Add(st.at))
		if ok != st.ok || stall != st.stall {
			t.Fatalf("sweep at +%v: mayDrain = %v, stall %v; want %v, %v", st.at, ok, stall, st.ok, st.stall)
		}
	}
}

// A scheduler just started holds an invocation that finds no node until
// one registers (its StartupGrace), instead of failing it.
func TestStartupGraceWaitsForFirstNode(t *testing.T) {
	s, err := New(Config{HeartbeatInterval: time.Hour, StartupGrace: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := testnet.ServeGRPC(t, func(srv *grpc.Server) { kilnv1.RegisterSchedulerServer(srv, s) })
	e := &env{s: s, client: kilnv1.NewSchedulerClient(testnet.Dial(t, addr))}
	got := make(chan *kilnv1.InvokeResponse, 1)
	go func() { got <- invoke(t, e, "early", 64<<20) }()
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-got:
		t.Fatalf("answered before any node registered: %+v", r)
	default:
	}
	a := startAgent(t, "late", kilnv1.Outcome_OUTCOME_OK)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.connect(t, ctx, "late", a.addr, 1<<30)
	select {
	case r := <-got:
		if r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Node != "late" {
			t.Fatalf("%+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting 5 s after a node registered")
	}

	// Without a grace, no node answers at once.
	s2, _ := New(Config{HeartbeatInterval: time.Hour})
	defer s2.Close()
	t0 := time.Now()
	r, _ := s2.Invoke(context.Background(), &kilnv1.InvokeRequest{Function: &kilnv1.FunctionSpec{ImageDigest: dA, MemoryBytes: 1 << 20}})
	if r.GetOutcome() != kilnv1.Outcome_OUTCOME_NO_CAPACITY || time.Since(t0) > time.Second {
		t.Fatalf("%+v after %v", r, time.Since(t0))
	}
}

// A node name connected under one identity cannot be taken by another
// (a rogue agent would receive the node's calls): the second Register is
// refused with AlreadyExists while the first holds the name, the holder
// itself may reconnect, and once it has left the name is free again. The
// identity here comes from the caller's metadata; in the cluster it is
// the agent's certificate (cmd/kiln/platform, rolecert.AuthenticateAgent).
func TestConnectedNameNotTakenOver(t *testing.T) {
	s, err := New(Config{HeartbeatInterval: time.Hour, Authenticate: func(ctx context.Context, node string) (string, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if who := md.Get("who"); len(who) == 1 {
			return who[0], nil
		}
		return "", status.Error(codes.Unauthenticated, "who are you")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	addr := testnet.ServeGRPC(t, func(srv *grpc.Server) { kilnv1.RegisterSchedulerServer(srv, s) })
	e := &env{s: s, client: kilnv1.NewSchedulerClient(testnet.Dial(t, addr))}
	as := func(who string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "who", who)
	}
	register := func(ctx context.Context, name, addr string) (agentStream, error) {
		st, err := e.client.Connect(ctx)
		if err != nil {
			return nil, err
		}
		if err := st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Register{Register: &kilnv1.Register{
			Node: name, Address: addr, MemoryBytesTotal: 1 << 30}}}); err != nil {
			return nil, err
		}
		_, err = st.Recv()
		return st, err
	}

	holder, err := register(as("real"), "n1", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := register(as("rogue"), "n1", "127.0.0.1:9"); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("rogue Register of a connected name: %v, want AlreadyExists", err)
	}
	if _, err := register(context.Background(), "n2", "127.0.0.1:9"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Register refused by Authenticate: %v", err)
	}
	if n := s.Nodes(); len(n) != 1 || n[0].Address != "127.0.0.1:1" {
		t.Fatalf("after the rogue: nodes %+v", n)
	}
	// The holder reconnects (its old stream not yet seen as broken).
	if _, err := register(as("real"), "n1", "127.0.0.1:2"); err != nil {
		t.Fatalf("the holder's reconnect: %v", err)
	}
	if _, err := holder.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("replaced stream: %v", err)
	}
	// Gone for good: the name is free.
	s.Close()
	s2, err := New(Config{HeartbeatInterval: time.Hour, Authenticate: s.auth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	addr = testnet.ServeGRPC(t, func(srv *grpc.Server) { kilnv1.RegisterSchedulerServer(srv, s2) })
	e.client = kilnv1.NewSchedulerClient(testnet.Dial(t, addr))
	first, err := register(as("real"), "n1", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	first.CloseSend()
	waitFor(t, "n1 to leave", func() bool { return nodeNames(s2) == "" })
	if _, err := register(as("other"), "n1", "127.0.0.1:3"); err != nil {
		t.Fatalf("Register of a name its holder left: %v", err)
	}
}

// Without certificates the identity is the peer's host.
func TestPeerHost(t *testing.T) {
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4242}})
	if id, err := PeerHost(ctx, "n1"); err != nil || id != "10.0.0.7" {
		t.Fatalf("PeerHost = %q, %v", id, err)
	}
	ctx = peer.NewContext(context.Background(), &peer.Peer{Addr: &net.UnixAddr{Name: "@", Net: "unix"}})
	if id, _ := PeerHost(ctx, "n1"); id != "unix" {
		t.Fatalf("PeerHost over a unix socket = %q", id)
	}
}
