// Package teststack starts Kiln for a test: a real gateway, scheduler and
// node-agents on 127.0.0.1, gRPC between them, built by the very builders
// `kiln up` and the cluster roles use (cmd/kiln/platform), so a test proves
// the code a user runs. By default the stores are bbolt files and NATS is
// embedded, as in `kiln up`; a real redis-server and nats-server are
// started when asked. Agents run functions as host processes unless the
// KVM runtime is asked for (the test binary's TestMain must then run the
// vmhost worker hook, as cmd/kiln's main does). Everything stops at the
// test's end (t.Cleanup).
//
// The servers alone (gRPC, NATS, free addresses) are in testnet, which a
// role's in-package tests can import.
package teststack

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/redistest"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	"github.com/kilnfaas/kiln/internal/tracing"
	nodeagent "github.com/kilnfaas/kiln/node-agent"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler"
	"github.com/kilnfaas/kiln/store/imagestore"
)

// DefaultAgentMemory is the guest memory each agent may hand out unless
// Options.AgentMemory says otherwise: a budget, not an allocation.
const DefaultAgentMemory = 4 << 30

// DefaultNode is the name of the agent Start starts.
const DefaultNode = "test-node"

// Options say which stack to start. The zero value is a gateway over
// bbolt and embedded NATS, a scheduler and one agent running functions as
// host processes.
type Options struct {
	// NoAgent starts no node-agent: invocations answer 503 (no capacity)
	// until AddAgent.
	NoAgent bool
	// Runtime of the agents: platform.RuntimeProcess ("" too) or
	// platform.RuntimeKVM.
	Runtime string
	// AgentMemory is each agent's guest memory; 0 → DefaultAgentMemory.
	AgentMemory uint64
	// HeartbeatInterval agents are told to use; 0 → the scheduler's default.
	HeartbeatInterval time.Duration

	// Redis keeps the gateway's stores in a real redis-server
	// (internal/redistest) instead of bbolt files.
	Redis bool
	// NATS runs a real nats-server on 127.0.0.1 (Stack.NATSURL) for images
	// and the async queue instead of the embedded one.
	NATS bool
	// Stores gives the gateway API keys, logs and an SLA ledger in the
	// stack's stores, as `kiln up` does. Without it the gateway has the
	// registry and only what Gateway sets.
	Stores bool

	// Gateway is the gateway's configuration: limits, Keys, Logs, SLA,
	// RandN, and Kernel (the guest kernel deploys pack; under the process
	// runtime any ELF stands in). Registry, Images and Scheduler are the
	// stack's.
	Gateway gateway.Config
	// Worker configures the async worker beside the gateway.
	Worker asyncq.WorkerConfig
	// NoWorker runs no async worker: the test starts its own.
	NoWorker bool
	// CallbackAllow lets async callbacks reach these prefixes (the
	// gateway's --callback-allow): a callback to a test server on
	// 127.0.0.1 needs 127.0.0.1/32 here.
	CallbackAllow []netip.Prefix
	// WrapGateway, when set, wraps the gateway's HTTP handler: a test
	// sees every request that reaches the gateway (say, a callback that
	// must not).
	WrapGateway func(http.Handler) http.Handler

	// Logger receives every part's log; nil: discard.
	Logger *slog.Logger
}

// Stack is a running Kiln.
type Stack struct {
	// URL is the gateway's base URL.
	URL string
	// Scheduler is the scheduler itself, for what a test inspects
	// (Nodes); SchedulerAddr its gRPC address and SchedulerClient a
	// client of it, as the gateway has.
	Scheduler       *scheduler.Scheduler
	SchedulerAddr   string
	SchedulerClient kilnv1.SchedulerClient
	// Stores are the gateway's stores (Registry always).
	Stores platform.Stores
	Images *imagestore.Store
	// Queue is the gateway's async queue.
	Queue *asyncq.Queue
	// NATSURL is the real nats-server's URL ("" with the embedded one);
	// RedisURL the redis-server's ("" without Redis).
	NATSURL, RedisURL string
	// Metrics holds the gateway's, the queue's and the scheduler's
	// metrics; each agent has its own (Agent.Metrics).
	Metrics *prometheus.Registry

	opts  Options
	dir   string
	parts *platform.Parts
}

// Start starts a stack and waits until its agent (if any) has registered.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	if o.AgentMemory == 0 {
		o.AgentMemory = DefaultAgentMemory
	}
	if o.Runtime == "" {
		o.Runtime = platform.RuntimeProcess
	}
	s := &Stack{opts: o, dir: t.TempDir()}
	// The servers first: cleanups run newest first, so the parts stop
	// while Redis and NATS still answer.
	if o.Redis {
		s.RedisURL = redistest.Start(t, "the test stack")
	}
	if o.NATS {
		s.NATSURL = testnet.NATS(t)
	}
	s.parts = platform.NewParts(o.Logger)
	s.Metrics = s.parts.Metrics
	t.Cleanup(func() { s.parts.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var err error
	if o.Redis {
		s.Stores, err = s.parts.OpenRedisStores(ctx, s.RedisURL, "")
	} else {
		s.Stores, err = s.parts.OpenBoltStores(s.dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.NATS {
		s.Images, err = s.parts.ConnectImages(ctx, s.NATSURL)
	} else {
		s.Images, err = s.parts.EmbeddedImages(ctx, s.dir)
	}
	if err != nil {
		t.Fatal(err)
	}

	lis := testnet.Listen(t)
	if s.Scheduler, err = s.parts.BuildScheduler(platform.SchedulerOptions{Listener: lis,
		HeartbeatInterval: o.HeartbeatInterval, Logger: o.Logger}); err != nil {
		t.Fatal(err)
	}
	s.SchedulerAddr = lis.Addr().String()
	conn, err := s.parts.DialScheduler(s.SchedulerAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SchedulerClient = kilnv1.NewSchedulerClient(conn)
	if !o.NoAgent {
		s.AddAgent(t, DefaultNode)
	}

	stores := platform.Stores{Registry: s.Stores.Registry}
	if o.Stores {
		stores = s.Stores
	}
	cfg := o.Gateway
	cfg.Images, cfg.Scheduler = s.Images, s.SchedulerClient
	gw, q, err := s.parts.BuildGateway(ctx, platform.GatewayOptions{Config: cfg, Stores: stores, NATS: s.Images.Conn(),
		Worker: o.Worker, NoWorker: o.NoWorker, CallbackAllow: o.CallbackAllow, Logger: o.Logger})
	if err != nil {
		t.Fatal(err)
	}
	s.Queue = q
	handler := tracing.HTTPHandler(gw, "gateway")
	if o.WrapGateway != nil {
		handler = o.WrapGateway(handler)
	}
	s.URL = s.parts.ServeHTTP(testnet.Listen(t), handler)
	return s
}

// Agent is a node-agent of the stack.
type Agent struct {
	*nodeagent.Agent
	// Name is its node name, Addr its gRPC address.
	Name, Addr string
	// Metrics are the agent's own.
	Metrics *prometheus.Registry

	parts *platform.Parts
	lis   *trackingListener
	once  sync.Once
}

// AddAgent starts a node-agent named node, joined to the scheduler, and
// waits until the scheduler knows it.
func (s *Stack) AddAgent(t testing.TB, node string) *Agent {
	t.Helper()
	log := s.opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(s.dir, "agent-"+node)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	boot, err := platform.BooterFor(s.opts.Runtime, dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{Name: node, parts: platform.NewParts(log), lis: &trackingListener{Listener: testnet.Listen(t)}}
	a.Metrics = a.parts.Metrics
	t.Cleanup(a.Stop)
	a.Agent, err = a.parts.BuildAgent(platform.AgentOptions{Node: node, MemoryBytes: s.opts.AgentMemory,
		CacheDir: filepath.Join(dir, "cache"), Boot: boot, Images: s.Images, Scheduler: s.SchedulerClient,
		Listener: a.lis, Logger: log.With("node", node)})
	if err != nil {
		t.Fatal(err)
	}
	a.Addr = a.lis.Addr().String()
	s.WaitFor(t, "agent "+node+" to register", func() bool {
		for _, n := range s.Scheduler.Nodes() {
			if n.Name == node {
				return true
			}
		}
		return false
	})
	return a
}

// Stop stops the agent as `kiln agent` stops: goodbye to the scheduler,
// then the invocations in flight finish.
func (a *Agent) Stop() { a.once.Do(func() { a.parts.Close() }) }

// Kill stops the agent at once, as a crash would: its connections drop,
// so the invocations it runs fail at their callers.
func (a *Agent) Kill() {
	a.once.Do(func() {
		a.lis.crash()
		a.parts.Close()
	})
}

// WaitFor polls cond every 10 ms for up to 10 s and fails the test when
// it stays false.
func (s *Stack) WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// trackingListener remembers the connections it accepted, so that crash
// can drop them all as a dying process would.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) crash() {
	l.Listener.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}
