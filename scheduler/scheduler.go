// Package scheduler decides where an invocation runs. Node-agents hold a
// Connect stream open to it (Register, then heartbeats carrying capacity,
// warm instances and cached images); gateways call Invoke, which asks a
// Placer for a node and forwards the request to that node's Agent service
// over one reused gRPC connection per node.
//
// Node membership is soft state, rebuilt from the agents' reports after a
// restart. A node leaves in one of two ways:
//
//   - it says goodbye (its agent half-closes the stream while shutting
//     down): no new invocation goes there, those in flight finish;
//   - it is drained: its stream broke, or it missed MissedHeartbeats
//     heartbeats (DrainAfter with the default interval). Invocations in
//     flight on it end at once with Unavailable — they may have run, so
//     they are not retried — and nothing is placed there again.
//
// An invocation whose request never reached the chosen node (no connection,
// the node went away before the request was written) did not start, so it
// is placed again on another node.
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
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/kilnfaas/kiln/internal/tracing"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler/slapolicy"
)

// DefaultHeartbeatInterval is what agents are told when Config names none.
// Heartbeats are a few hundred bytes, so a short interval is cheap and lets
// a silent node be drained quickly.
const DefaultHeartbeatInterval = 500 * time.Millisecond

// MissedHeartbeats is how many intervals without a heartbeat drain a node.
// One late heartbeat (a GC pause, a loaded host) must not drain a healthy
// node; four in a row is a node that is gone or frozen.
const MissedHeartbeats = 4

// DrainAfter is how long a node may stay silent, at the default interval,
// before it is drained; the sweeper notices within a quarter interval more,
// so a silent node is drained within 2.125 s.
const DrainAfter = MissedHeartbeats * DefaultHeartbeatInterval

// Dialer opens the connection to one agent. The returned closer is called
// when the node leaves. With a custom Dialer the scheduler cannot tell
// whether a failed call reached the agent, so it never retries one.
type Dialer func(address string) (kilnv1.AgentClient, io.Closer, error)

// Config is the scheduler's dependencies. Zero values get the defaults
// documented on each field.
type Config struct {
	HeartbeatInterval time.Duration // DefaultHeartbeatInterval
	Placer            Placer        // WarmFirst{StaleAfter: MissedHeartbeats × interval}
	Clock             func() time.Time
	// DialOptions are used to dial agents (message size bounds, …) when
	// Dial is nil.
	DialOptions []grpc.DialOption
	// AgentCredentials are the transport credentials to dial the agent
	// registered as node: under mTLS, ones that accept only that node's
	// certificate. nil: plaintext gRPC.
	AgentCredentials func(node string) credentials.TransportCredentials
	Dial             Dialer // tests only; see Dialer
	// Authenticate says under which identity the peer of a Connect
	// stream (ctx) holds the node name it registers, or refuses it with
	// a gRPC status error. A name connected under one identity cannot be
	// taken by another while the first is connected. nil → PeerHost.
	Authenticate func(ctx context.Context, node string) (identity string, err error)
	// StartupGrace: for this long after New, an invocation that finds no
	// node registered waits for one instead of failing — after a restart
	// the agents take up to their reconnect backoff (2 s) to come back.
	// 0: no wait.
	StartupGrace time.Duration
	// SLAPolicy sizes warm pools from SLAs (docs/SLA.md); nil → a default
	// slapolicy.Policy.
	SLAPolicy *slapolicy.Policy
	// QueueWait bounds how long an invocation waits for capacity when
	// every node is full; 0 → DefaultQueueWait.
	QueueWait  time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// link is the connection to one agent. It outlives a node entry when the
// agent reconnects from the same address, so that a reconnect does not
// break its invocations in flight. Fields below client are guarded by
// Scheduler.mu.
type link struct {
	client kilnv1.AgentClient
	closer io.Closer
	lost   context.Context // ended when the node is drained: calls in flight stop
	cancel context.CancelFunc
	calls  int  // invocations in flight on this link
	closed bool // the node left: close closer once calls reaches 0
}

// node is a registered agent and the connection it is reached by.
type node struct {
	Node
	session  uint64        // which Connect stream owns this entry
	identity string        // who registered it (Config.Authenticate)
	gone     chan struct{} // closed when the scheduler drops the node
	link     *link

	sendMu sync.Mutex // a gRPC stream takes one Send at a time
	stream grpc.BidiStreamingServer[kilnv1.AgentMessage, kilnv1.SchedulerMessage]
}

func (n *node) send(m *kilnv1.SchedulerMessage) error {
	n.sendMu.Lock()
	defer n.sendMu.Unlock()
	return n.stream.Send(m)
}

// Scheduler implements kilnv1.SchedulerServer.
type Scheduler struct {
	kilnv1.UnimplementedSchedulerServer

	interval time.Duration
	placer   Placer
	now      func() time.Time
	dial     func(node, address string) (kilnv1.AgentClient, io.Closer, error)
	auth     func(ctx context.Context, node string) (string, error)
	log      *slog.Logger

	trackSent bool // dialled with sentTracker: a failed call's sentKey is meaningful

	sla        *slaState
	nodesGauge prometheus.Gauge
	placements *prometheus.CounterVec
	drains     *prometheus.CounterVec
	retries    prometheus.Counter

	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	nodes    map[string]*node
	sessions uint64
	joined   chan struct{} // closed (and replaced) whenever a node registers

	graceEnd time.Time // real time; see Config.StartupGrace
}

// New returns a scheduler and starts its sweeper, which removes nodes that
// stop sending heartbeats; Close stops it.
func New(cfg Config) (*Scheduler, error) {
	s := &Scheduler{
		interval: cfg.HeartbeatInterval,
		placer:   cfg.Placer,
		now:      cfg.Clock,
		auth:     cfg.Authenticate,
		log:      cfg.Logger,
		nodes:    map[string]*node{},
		stop:     make(chan struct{}),
		joined:   make(chan struct{}),
		graceEnd: time.Now().Add(cfg.StartupGrace),
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
	if s.auth == nil {
		s.auth = PeerHost
	}
	if cfg.Dial != nil {
		s.dial = func(_, address string) (kilnv1.AgentClient, io.Closer, error) { return cfg.Dial(address) }
	} else {
		opts := append(cfg.DialOptions[:len(cfg.DialOptions):len(cfg.DialOptions)], grpc.WithStatsHandler(sentTracker{}))
		s.dial = func(node, address string) (kilnv1.AgentClient, io.Closer, error) {
			var creds credentials.TransportCredentials = insecure.NewCredentials()
			if cfg.AgentCredentials != nil {
				creds = cfg.AgentCredentials(node)
			}
			conn, err := grpc.NewClient(address, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
			if err != nil {
				return nil, nil, err
			}
			return kilnv1.NewAgentClient(conn), conn, nil
		}
		s.trackSent = true
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.sla = newSLAState(s, cfg)
	s.nodesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_scheduler_nodes", Help: "Node-agents currently registered.",
	})
	s.placements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_scheduler_placements_total",
		Help: "Placement decisions by outcome: warm, cached (cold start, image on the node), cold, no_capacity, node_error, node_lost.",
	}, []string{"outcome"})
	s.drains = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_scheduler_node_removals_total",
		Help: "Nodes removed by reason: left (said goodbye), stream_broken, missed_heartbeats, replaced.",
	}, []string{"reason"})
	s.retries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kiln_scheduler_retries_total",
		Help: "Invocations placed again because the chosen node refused them or never received them.",
	})
	if cfg.Registerer != nil {
		for _, c := range append([]prometheus.Collector{s.nodesGauge, s.placements, s.drains, s.retries}, s.sla.collectors()...) {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("scheduler: registering metrics: %w", err)
			}
		}
	}
	go s.sweep()
	return s, nil
}

// sentKey marks an Agent.Invoke call's context with a flag that sentTracker
// sets once the request's headers are handed to a live connection to the
// agent. A call that fails with the flag unset never reached the agent, so
// the function did not start and the invocation may be placed again.
type sentKey struct{}

// sentTracker is the gRPC stats handler behind sentKey.
type sentTracker struct{}

func (sentTracker) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (sentTracker) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if _, ok := st.(*stats.OutHeader); ok {
		if f, ok := ctx.Value(sentKey{}).(*atomic.Bool); ok {
			f.Store(true)
		}
	}
}
func (sentTracker) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (sentTracker) HandleConn(context.Context, stats.ConnStats)                       {}

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
		s.dropLocked(name, true)
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

// sweep drains nodes that missed MissedHeartbeats heartbeats. It checks
// four times per interval so that a drain happens within a quarter
// interval of the deadline.
func (s *Scheduler) sweep() {
	defer close(s.done)
	period := s.interval / 4
	t := time.NewTicker(period)
	defer t.Stop()
	g := stallGuard{interval: s.interval, period: period, last: time.Now()}
	for tick := 1; ; tick++ {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if tick%4 == 0 {
				s.planWarm()
			}
			ok, stall := g.mayDrain(time.Now())
			if stall > 0 {
				s.log.Warn("the scheduler was stalled; draining nothing until heartbeats catch up", "stall", stall)
			}
			if ok {
				s.Expire()
			}
		}
	}
}

// stallGuard keeps the sweeper from draining on stale numbers. A sweep that
// comes a whole interval late means this process itself was stalled
// (descheduled on a loaded host, stopped): the agents' heartbeats of that
// time are still unread in its sockets, so draining now would drain every
// node at once. After a stall the guard allows no drain for one interval,
// time for the streams to catch up. It reads the real clock, not the
// scheduler's injected one: it is about this process, not about policy.
type stallGuard struct {
	interval, period time.Duration
	last             time.Time // the previous sweep
	graceUntil       time.Time
}

// mayDrain records a sweep at now and says whether it may drain nodes, and
// how long the stall was when this sweep detected one.
func (g *stallGuard) mayDrain(now time.Time) (ok bool, stall time.Duration) {
	if gap := now.Sub(g.last); gap > g.interval+g.period {
		g.graceUntil = now.Add(g.interval)
		stall = gap
	}
	g.last = now
	return !now.Before(g.graceUntil) && stall == 0, stall
}

// Expire drains every node whose last heartbeat is more than
// MissedHeartbeats intervals before the clock's now, and returns their
// names, sorted.
func (s *Scheduler) Expire() []string {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for name, n := range s.nodes {
		if now.Sub(n.LastHeartbeat) > MissedHeartbeats*s.interval {
			gone = append(gone, name)
			s.dropLocked(name, true)
			s.drains.WithLabelValues("missed_heartbeats").Inc()
			s.log.Warn("node missed heartbeats; drained", "node", name, "last", n.LastHeartbeat,
				"silent", now.Sub(n.LastHeartbeat))
		}
	}
	sort.Strings(gone)
	return gone
}

// dropLocked removes a node and ends its Connect stream. Drained (hard),
// its invocations in flight are stopped; otherwise they finish first. The
// connection closes once none is left. s.mu must be held.
func (s *Scheduler) dropLocked(name string, hard bool) {
	n, ok := s.nodes[name]
	if !ok {
		return
	}
	delete(s.nodes, name)
	close(n.gone)
	if l := n.link; l != nil {
		if hard {
			l.cancel()
		}
		l.closed = true
		if l.calls == 0 {
			l.close()
		}
	}
	s.nodesGauge.Set(float64(len(s.nodes)))
}

func (l *link) close() {
	l.cancel()
	if l.closer != nil {
		l.closer.Close()
	}
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
	identity, err := s.auth(stream.Context(), reg.Node)
	if err != nil {
		s.log.Warn("registration refused", "node", reg.Node, "address", reg.Address, "err", err)
		return err
	}
	s.mu.Lock()
	if err := s.takenLocked(reg.Node, identity); err != nil {
		s.mu.Unlock()
		return err
	}
	// A node that reconnects (its old stream not yet seen as broken)
	// replaces its old entry and the old stream ends. If it is still at
	// the same address its connection is kept: invocations in flight on
	// it are not the reconnect's business.
	var l *link
	if old, ok := s.nodes[reg.Node]; ok {
		if old.Address == reg.Address && !old.link.closed {
			l, old.link = old.link, nil
		}
		s.dropLocked(reg.Node, false)
		s.drains.WithLabelValues("replaced").Inc()
	}
	s.mu.Unlock()
	if l == nil {
		client, closer, err := s.dial(reg.Node, reg.Address)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "scheduler: cannot dial agent at %q: %v", reg.Address, err)
		}
		l = &link{client: client, closer: closer}
		l.lost, l.cancel = context.WithCancel(context.Background())
	}
	s.mu.Lock()
	if s.closedLocked() {
		s.mu.Unlock()
		l.close()
		return status.Error(codes.Unavailable, "scheduler: shutting down")
	}
	if err := s.takenLocked(reg.Node, identity); err != nil {
		s.mu.Unlock()
		l.close()
		return err
	}
	if _, ok := s.nodes[reg.Node]; ok { // a concurrent registration of the same name loses
		s.dropLocked(reg.Node, false)
		s.drains.WithLabelValues("replaced").Inc()
	}
	s.sessions++
	session := s.sessions
	n := &node{
		Node: Node{
			Name: reg.Node, Address: reg.Address, MemoryTotal: reg.MemoryBytesTotal,
			LastHeartbeat: s.now(),
		},
		session:  session,
		identity: identity,
		gone:     make(chan struct{}),
		link:     l,
		stream:   stream,
	}
	s.nodes[reg.Node] = n
	close(s.joined)
	s.joined = make(chan struct{})
	s.nodesGauge.Set(float64(len(s.nodes)))
	s.mu.Unlock()
	s.log.Info("node registered", "node", reg.Node, "address", reg.Address, "memory", reg.MemoryBytesTotal)

	err = n.send(&kilnv1.SchedulerMessage{Msg: &kilnv1.SchedulerMessage_Registered{
		Registered: &kilnv1.Registered{HeartbeatIntervalMs: s.interval.Milliseconds()},
	}})
	if err != nil {
		s.leave(reg.Node, session, true)
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
		if errors.Is(err, io.EOF) {
			// The agent half-closed its side: an orderly goodbye.
			if s.leave(reg.Node, session, false) {
				s.drains.WithLabelValues("left").Inc()
				s.log.Info("node left", "node", reg.Node)
			}
			return nil
		}
		if s.leave(reg.Node, session, true) {
			s.drains.WithLabelValues("stream_broken").Inc()
			s.log.Warn("node stream broke; drained", "node", reg.Node, "err", err)
		}
		return err
	case <-n.gone:
		// Returning ends the stream, which also ends the receiver.
		return status.Error(codes.Unavailable, "scheduler: node removed (missed heartbeats or replaced)")
	}
}

// takenLocked refuses a registration of name under identity while the
// name is connected under another: the name's calls (bodies, headers,
// env) go to whoever holds it, so a second certificate — or, without
// mTLS, a second host — cannot take it over (issue 13, finding 3). The
// holder itself may reconnect and replace its entry. s.mu must be held.
func (s *Scheduler) takenLocked(name, identity string) error {
	if old, ok := s.nodes[name]; ok && old.identity != identity {
		s.log.Warn("registration refused: the node name is connected under another identity", "node", name)
		return status.Errorf(codes.AlreadyExists,
			"scheduler: node %q is connected under another identity; it may register again once that one has left or been drained", name)
	}
	return nil
}

// PeerHost is the default Config.Authenticate, for plaintext gRPC: the
// identity is the peer's IP address ("unix" over a unix socket), and any
// peer may register any name. Without certificates nothing better is
// known; it still keeps another host from taking a connected node's name.
func PeerHost(ctx context.Context, _ string) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "", nil
	}
	if a, ok := p.Addr.(*net.TCPAddr); ok {
		return a.IP.String(), nil
	}
	return p.Addr.Network(), nil
}

// leave drops the node if the entry still belongs to this stream, and
// reports whether it did.
func (s *Scheduler) leave(name string, session uint64, hard bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nodes[name]; ok && n.session == session {
		s.dropLocked(name, hard)
		return true
	}
	return false
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
	n.MemoryIdle = c.MemoryBytesIdle
	n.Warm = make(map[string]Warm, len(c.Warm))
	for _, w := range c.Warm {
		n.Warm[w.ImageDigest] = Warm{Idle: w.Idle, Busy: w.Busy}
	}
	n.Cached = make(map[string]bool, len(c.CachedImages))
	for _, d := range c.CachedImages {
		n.Cached[d] = true
	}
	s.wakeLocked()
}

// Invoke implements kilnv1.SchedulerServer. An agent that answers
// NO_CAPACITY (its numbers moved since its last heartbeat) did not run the
// function, and neither did one the request never reached, so in both
// cases the invocation is placed again without that node. Any other answer
// is final. A call that reached its node and then failed (the node crashed,
// was drained, or the transport broke) is returned as Unavailable, not
// retried: the function may have run.
func (s *Scheduler) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	fn := req.GetFunction()
	if fn == nil || fn.ImageDigest == "" || fn.MemoryBytes == 0 {
		return nil, status.Error(codes.InvalidArgument, "scheduler: the request needs a function with image_digest and memory_bytes")
	}
	d := Demand{Digest: fn.ImageDigest, MemoryBytes: fn.MemoryBytes}
	arrived := s.now()
	s.sla.note(fn)
	excluded := map[string]bool{}
	var lastRefusal *kilnv1.InvokeResponse
	var lastUnreached error
	for {
		endPlace := tracing.Span(ctx, tracing.SpanPlacement)
		dec, l, err := s.place(d, excluded)
		endPlace(err, tracing.Decision(dec.Node, dec.Warm, dec.Cached)...)
		if err != nil && len(excluded) == 0 && s.awaitFirstNode(ctx) {
			continue
		}
		if errors.Is(err, ErrFull) && len(excluded) == 0 {
			// Every node is full: wait for room, most urgent first.
			endWait := tracing.Span(ctx, tracing.SpanQueueWait)
			why := s.awaitCapacity(ctx, fn, arrived)
			endWait(tracing.Failure(why))
			if why == "" {
				continue
			}
			err = fmt.Errorf("scheduler: %s", why)
		}
		if err != nil {
			s.placements.WithLabelValues("no_capacity").Inc()
			switch {
			case lastRefusal != nil:
				return lastRefusal, nil
			case lastUnreached != nil:
				return nil, lastUnreached
			}
			return &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_NO_CAPACITY, Error: err.Error()}, nil
		}
		switch {
		case dec.Warm:
			s.placements.WithLabelValues("warm").Inc()
		case dec.Cached:
			s.placements.WithLabelValues("cached").Inc()
		default:
			s.placements.WithLabelValues("cold").Inc()
		}
		resp, sent, err := s.call(ctx, l, req)
		s.release(dec.Node, l, d, dec)
		if err != nil {
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			if l.lost.Err() != nil {
				s.placements.WithLabelValues("node_lost").Inc()
				return nil, status.Errorf(codes.Unavailable,
					"scheduler: node %s was drained while running the invocation (it stopped heartbeating or its stream broke); the function may have run, so it was not run again", dec.Node)
			}
			if !sent && s.trackSent {
				// Never reached the node: safe to run elsewhere.
				s.retries.Inc()
				excluded[dec.Node] = true
				lastUnreached = status.Errorf(codes.Unavailable, "scheduler: node %s is unreachable (%v) and no other node could take the invocation; it did not start",
					dec.Node, status.Convert(err).Message())
				s.log.Warn("node unreachable; placing the invocation again", "node", dec.Node, "err", err)
				continue
			}
			s.placements.WithLabelValues("node_error").Inc()
			if status.Code(err) == codes.Unavailable {
				return nil, status.Errorf(codes.Unavailable,
					"scheduler: node %s failed while running the invocation (%v); the function may have run, so it was not run again",
					dec.Node, status.Convert(err).Message())
			}
			return nil, status.Errorf(status.Code(err), "scheduler: node %s: %v", dec.Node, status.Convert(err).Message())
		}
		resp.Node = dec.Node
		if resp.Outcome == kilnv1.Outcome_OUTCOME_NO_CAPACITY || resp.Outcome == kilnv1.Outcome_OUTCOME_PLATFORM_ERROR {
			// Nothing ran there (no room, or the node could not get the
			// image from the store): another node may take it.
			s.retries.Inc()
			excluded[dec.Node] = true
			lastRefusal = resp
			continue
		}
		s.sla.observe(fn, arrived, resp)
		return resp, nil
	}
}

// awaitFirstNode waits, during the startup grace and while no node is
// registered, until one registers, and reports whether it did.
func (s *Scheduler) awaitFirstNode(ctx context.Context) bool {
	s.mu.Lock()
	wait := time.Until(s.graceEnd)
	if len(s.nodes) > 0 || wait <= 0 {
		s.mu.Unlock()
		return false
	}
	joined := s.joined
	s.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-joined:
		return true
	case <-t.C:
	case <-ctx.Done():
	case <-s.stop:
	}
	return false
}

// call runs one Agent.Invoke bounded by ctx and by the node's drain, and
// reports whether the request reached the agent.
func (s *Scheduler) call(ctx context.Context, l *link, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, bool, error) {
	sent := new(atomic.Bool)
	ctx, cancel := context.WithCancel(context.WithValue(ctx, sentKey{}, sent))
	defer cancel()
	defer context.AfterFunc(l.lost, cancel)()
	resp, err := l.client.Invoke(ctx, req)
	return resp, sent.Load(), err
}

// place asks the placer and books the decision on the chosen node.
func (s *Scheduler) place(d Demand, excluded map[string]bool) (Decision, *link, error) {
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
	n.link.calls++
	return dec, n.link, nil
}

// release undoes place's booking once the agent answered (its next
// heartbeat carries the real numbers), and closes the connection of a node
// that left once its last call is over.
func (s *Scheduler) release(name string, l *link, d Demand, dec Decision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.calls--; l.closed && l.calls == 0 {
		l.close()
	}
	defer s.wakeLocked()
	n, ok := s.nodes[name]
	if !ok || n.link != l {
		return // the booking went with the entry
	}
	if dec.Warm {
		if n.Claimed[d.Digest]--; n.Claimed[d.Digest] <= 0 {
			delete(n.Claimed, d.Digest)
		}
	} else if n.Reserved >= d.MemoryBytes {
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
