package nodeagent

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler"
)

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// A real scheduler and a real agent over gRPC on 127.0.0.1: the agent
// registers, heartbeats carry its warm instance, the scheduler forwards an
// invocation to it, and the node is removed when the agent goes away.
func TestAgentWithScheduler(t *testing.T) {
	prog := fnProgram(t) // before the cluster starts: building loads the CPUs
	s, err := scheduler.New(scheduler.Config{HeartbeatInterval: 200 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	schedAddr := testnet.ServeGRPC(t, func(g *grpc.Server) { kilnv1.RegisterSchedulerServer(g, s) })

	h := newHarness(t, 1<<30, nil)
	agentAddr := testnet.ServeGRPC(t, func(g *grpc.Server) { kilnv1.RegisterAgentServer(g, h.a) })
	sched := kilnv1.NewSchedulerClient(testnet.Dial(t, schedAddr))
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- h.a.Run(ctx, sched, agentAddr) }()

	waitUntil(t, "registration", func() bool {
		n := s.Nodes()
		return len(n) == 1 && n[0].Name == "test-node" && n[0].Address == agentAddr && n[0].MemoryTotal == 1<<30
	})

	d := h.add(t, "sv", image.KindServe, []byte("kernel"), prog, 5*time.Second)
	call := func() *kilnv1.InvokeResponse {
		r, err := sched.Invoke(context.Background(), &kilnv1.InvokeRequest{
			Function: &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, MemoryBytes: 64 << 20}, Method: "GET", Path: "/x"})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := call()
	if r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Node != "test-node" || r.Start != kilnv1.StartKind_START_BOOT || r.Status != 201 {
		t.Fatalf("through the scheduler: %+v", r)
	}
	waitUntil(t, "heartbeat with the warm instance", func() bool {
		n := s.Nodes()
		return len(n) == 1 && n[0].Warm[d].Idle == 1 && n[0].MemoryUsed == 64<<20 && n[0].Cached[d]
	})
	if !h.a.Registered() {
		t.Fatal("Registered() is false while the stream is up")
	}
	if r := call(); r.Start != kilnv1.StartKind_START_WARM {
		t.Fatalf("second call: %v", r.Start)
	}

	stop()
	if err := <-ran; err != context.Canceled {
		t.Fatalf("Run returned %v", err)
	}
	waitUntil(t, "removal", func() bool { return len(s.Nodes()) == 0 })
	if h.a.Registered() {
		t.Fatal("Registered() is true after Run returned")
	}
}

// The agent reconnects when the scheduler goes away and comes back.
func TestAgentReconnects(t *testing.T) {
	lis := testnet.Listen(t)
	addr := lis.Addr().String()
	start := func(l net.Listener) (*scheduler.Scheduler, *grpc.Server) {
		s, err := scheduler.New(scheduler.Config{HeartbeatInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return s, testnet.ServeGRPCOn(t, l, func(g *grpc.Server) { kilnv1.RegisterSchedulerServer(g, s) })
	}
	s1, g1 := start(lis)
	h := newHarness(t, 1<<30, nil)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go h.a.Run(ctx, kilnv1.NewSchedulerClient(testnet.Dial(t, addr)), "127.0.0.1:1")
	waitUntil(t, "first registration", func() bool { return len(s1.Nodes()) == 1 })
	g1.Stop()
	s1.Close()

	lis2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	s2, g2 := start(lis2)
	defer func() { g2.Stop(); s2.Close() }()
	waitUntil(t, "registration with the new scheduler", func() bool { return len(s2.Nodes()) == 1 })
}
