// Package scheduler decides where an invocation runs. Node-agents hold a
// Connect stream open to it (Register, then heartbeats carrying capacity and
// warm instances); gateways call Invoke, which asks a Placer for a node and
// forwards the request to that node's Agent service over one reused gRPC
// connection per node. Node membership is soft state: a node whose stream
// closes, or that misses three heartbeats, is gone.
//
// Lock order: Scheduler.mu only; no call out (RPC, Placer excepted) is made
// while holding it.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// DefaultHeartbeatInterval is what agents are told when Config names none.
const DefaultHeartbeatInterval = 2 * time.Second

// MissedHeartbeats is how many intervals without a heartbeat remove a node.
const MissedHeartbeats = 3

// Dialer opens the connection to one agent. The returned closer is called
// when the node leaves.
type Dialer func(address string) (kilnv1.AgentClient, io.Closer, error)

// Config is the scheduler's dependencies. Zero values get the defaults
// documented on each field.
type Config struct {
	HeartbeatInterval time.Duration // DefaultHeartbeatInterval
	Placer            Placer        // WarmFirst{StaleAfter: MissedHeartbeats × interval}
	Clock             func() time.Time
	Dial              Dialer // plaintext gRPC (grpc.NewClient)
	Registerer        prometheus.Registerer
	Logger            *slog.Logger
}

// node is a registered agent and the connection it is reached by.
type node struct {
	Node
	session uint64        // which Connect stream owns this entry
	gone    chan struct{} // closed when the scheduler drops the node
	client  kilnv1.AgentClient
	closer  io.Closer
}

// Scheduler implements kilnv1.SchedulerServer.
type Scheduler struct {
	kilnv1.UnimplementedSchedulerServer

	interval time.Duration
	placer   Placer
	now      func() time.Time
	dial     Dialer
	log      *slog.Logger

	nodesGauge prometheus.Gauge
	placements *prometheus.CounterVec

	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	nodes    map[string]*node
	sessions uint64
}

// New returns a scheduler and starts its sweeper, which removes nodes that
// stop sending heartbeats; Close stops it.
func New(cfg Config) (*Scheduler, error) {
	s := &Scheduler{
		interval: cfg.HeartbeatInterval,
		placer:   cfg.Placer,
		now:      cfg.Clock,
		dial:     cfg.Dial,
		log:      cfg.Logger,
		nodes:    map[string]*node{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if s.interval <= 0 {
		s.interval = DefaultHeartbeatInterval
	}
	if s.placer == nil {
		s.placer = WarmFirst{StaleAfter: MissedHeartbeats * s.interval}
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.dial == nil {
		s.dial = dialGRPC
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.nodesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_scheduler_nodes", Help: "Node-agents currently registered.",
	})
	s.placements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_scheduler_placements_total",
		Help: "Placement decisions by outcome: warm, cold, no_capacity, node_error.",
	}, []string{"outcome"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.nodesGauge, s.placements} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("scheduler: registering metrics: %w", err)
			}
		}
	}
	go s.sweep()
	return s, nil
}

func dialGRPC(address string) (kilnv1.AgentClient, io.Closer, error) {
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return kilnv1.NewAgentClient(conn), conn, nil
}

// Close stops the sweeper and closes every agent connection. Connect
// streams still open end as their nodes are dropped.
func (s *Scheduler) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.nodes {
		s.dropLocked(name)
	}
	return nil
}

func (s *Scheduler) closedLocked() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// HeartbeatInterval is what agents are told to use.
func (s *Scheduler) HeartbeatInterval() time.Duration { return s.interval }

// Nodes returns a snapshot of the registered nodes, sorted by name.
func (s *Scheduler) Nodes() []Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *Scheduler) snapshotLocked() []Node {
	out := make([]Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		c := n.Node
		c.Warm = cloneMap(n.Warm)
		c.Claimed = cloneMap(n.Claimed)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func cloneMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return nil
	}
	c := make(map[string]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// sweep removes nodes that missed MissedHeartbeats heartbeats. It checks
// twice per interval so that removal happens within half an interval of the
// deadline.
func (s *Scheduler) sweep() {
	defer close(s.done)
	t := time.NewTicker(s.interval / 2)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Expire()
		}
	}
}

// Expire removes every node whose last heartbeat is more than
// MissedHeartbeats intervals before the clock's now, and returns their names.
func (s *Scheduler) Expire() []string {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for name, n := range s.nodes {
		if now.Sub(n.LastHeartbeat) > MissedHeartbeats*s.interval {
			gone = append(gone, name)
			s.dropLocked(name)
			s.log.Warn("node missed heartbeats; removed", "node", name, "last", n.LastHeartbeat)
		}
	}
	return gone
}

// dropLocked removes a node, ends its Connect stream and closes its
// connection. s.mu must be held.
func (s *Scheduler) dropLocked(name string) {
	n, ok := s.nodes[name]
	if !ok {
		return
	}
	delete(s.nodes, name)
	close(n.gone)
	if n.closer != nil {
		// Closing a grpc.ClientConn does not block on calls in flight;
		// they fail, which is right for a node that is gone.
		n.closer.Close()
	}
	s.nodesGauge.Set(float64(len(s.nodes)))
}

// Connect implements kilnv1.SchedulerServer: one stream per agent.
func (s *Scheduler) Connect(stream grpc.BidiStreamingServer[kilnv1.AgentMessage, kilnv1.SchedulerMessage]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil || reg.Node == "" || reg.Address == "" {
		return status.Error(codes.InvalidArgument, "scheduler: the first message must be Register with node and address")
	}
	s.mu.Lock()
	// A node that reconnects (its old stream not yet seen as broken)
	// replaces its old entry and the old stream ends. If it is still at
	// the same address its connection is kept: invocations in flight on
	// it are not the reconnect's business.
	var client kilnv1.AgentClient
	var closer io.Closer
	if old, ok := s.nodes[reg.Node]; ok && old.Address == reg.Address {
		client, closer = old.client, old.closer
		old.closer = nil
	}
	s.dropLocked(reg.Node)
	s.mu.Unlock()
	if client == nil {
		var err error
		if client, closer, err = s.dial(reg.Address); err != nil {
			return status.Errorf(codes.InvalidArgument, "scheduler: cannot dial agent at %q: %v", reg.Address, err)
		}
	}
	s.mu.Lock()
	if s.closedLocked() {
		s.mu.Unlock()
		closer.Close()
		return status.Error(codes.Unavailable, "scheduler: shutting down")
	}
	s.dropLocked(reg.Node) // a concurrent registration of the same name loses
	s.sessions++
	session := s.sessions
	n := &node{
		Node: Node{
			Name: reg.Node, Address: reg.Address, MemoryTotal: reg.MemoryBytesTotal,
			LastHeartbeat: s.now(),
		},
		session: session,
		gone:    make(chan struct{}),
		client:  client,
		closer:  closer,
	}
	s.nodes[reg.Node] = n
	s.nodesGauge.Set(float64(len(s.nodes)))
	s.mu.Unlock()
	s.log.Info("node registered", "node", reg.Node, "address", reg.Address, "memory", reg.MemoryBytesTotal)

	err = stream.Send(&kilnv1.SchedulerMessage{Msg: &kilnv1.SchedulerMessage_Registered{
		Registered: &kilnv1.Registered{HeartbeatIntervalMs: s.interval.Milliseconds()},
	}})
	if err != nil {
		s.leave(reg.Node, session)
		return err
	}

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if hb := m.GetHeartbeat(); hb != nil {
				s.heartbeat(reg.Node, session, hb.Capacity)
			}
		}
	}()
	select {
	case err = <-recvErr:
		s.leave(reg.Node, session)
		s.log.Info("node stream closed; removed", "node", reg.Node, "err", err)
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	case <-n.gone:
		// Returning ends the stream, which also ends the receiver.
		return status.Error(codes.Unavailable, "scheduler: node removed (missed heartbeats or replaced)")
	}
}

// leave drops the node if the entry still belongs to this stream.
func (s *Scheduler) leave(name string, session uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nodes[name]; ok && n.session == session {
		s.dropLocked(name)
	}
}

func (s *Scheduler) heartbeat(name string, session uint64, c *kilnv1.CapacityResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[name]
	if !ok || n.session != session {
		return
	}
	n.LastHeartbeat = s.now()
	if c == nil {
		return
	}
	n.MemoryTotal = c.MemoryBytesTotal
	n.MemoryUsed = c.MemoryBytesUsed
	n.Warm = make(map[string]Warm, len(c.Warm))
	for _, w := range c.Warm {
		n.Warm[w.ImageDigest] = Warm{Idle: w.Idle, Busy: w.Busy}
	}
}

// Invoke implements kilnv1.SchedulerServer. An agent that answers
// NO_CAPACITY (its numbers moved since its last heartbeat) did not run the
// function, so the invocation is placed again without that node; any other
// answer is final. A transport failure is returned as an Unavailable error,
// not retried: the function may have run.
func (s *Scheduler) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	fn := req.GetFunction()
	if fn == nil || fn.ImageDigest == "" || fn.MemoryBytes == 0 {
		return nil, status.Error(codes.InvalidArgument, "scheduler: the request needs a function with image_digest and memory_bytes")
	}
	d := Demand{Digest: fn.ImageDigest, MemoryBytes: fn.MemoryBytes}
	excluded := map[string]bool{}
	var lastRefusal *kilnv1.InvokeResponse
	for {
		dec, n, err := s.place(d, excluded)
		if err != nil {
			s.placements.WithLabelValues("no_capacity").Inc()
			if lastRefusal != nil {
				return lastRefusal, nil
			}
			return &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_NO_CAPACITY, Error: err.Error()}, nil
		}
		if dec.Warm {
			s.placements.WithLabelValues("warm").Inc()
		} else {
			s.placements.WithLabelValues("cold").Inc()
		}
		resp, err := n.client.Invoke(ctx, req)
		s.release(n, d, dec)
		if err != nil {
			s.placements.WithLabelValues("node_error").Inc()
			return nil, status.Errorf(status.Code(err), "scheduler: node %s: %v", dec.Node, status.Convert(err).Message())
		}
		resp.Node = dec.Node
		if resp.Outcome == kilnv1.Outcome_OUTCOME_NO_CAPACITY {
			excluded[dec.Node] = true
			lastRefusal = resp
			continue
		}
		return resp, nil
	}
}

// place asks the placer and books the decision on the chosen node.
func (s *Scheduler) place(d Demand, excluded map[string]bool) (Decision, *node, error) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	nodes := s.snapshotLocked()
	nodes = deleteFunc(nodes, func(n Node) bool { return excluded[n.Name] })
	dec, err := s.placer.Place(now, d, nodes)
	if err != nil {
		return Decision{}, nil, err
	}
	n, ok := s.nodes[dec.Node]
	if !ok {
		return Decision{}, nil, fmt.Errorf("scheduler: placer chose unknown node %q", dec.Node)
	}
	if dec.Warm {
		if n.Claimed == nil {
			n.Claimed = map[string]int{}
		}
		n.Claimed[d.Digest]++
	} else {
		n.Reserved += d.MemoryBytes
	}
	return dec, n, nil
}

// release undoes place's booking once the agent answered; its next
// heartbeat carries the real numbers.
func (s *Scheduler) release(n *node, d Demand, dec Decision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if dec.Warm {
		if n.Claimed[d.Digest]--; n.Claimed[d.Digest] <= 0 {
			delete(n.Claimed, d.Digest)
		}
	} else {
		n.Reserved -= d.MemoryBytes
	}
}

func deleteFunc(nodes []Node, del func(Node) bool) []Node {
	out := nodes[:0]
	for _, n := range nodes {
		if !del(n) {
			out = append(out, n)
		}
	}
	return out
}
