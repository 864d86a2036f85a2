package platform

// The builders: each opens one kind of dependency, or builds one role from
// the dependencies it is handed, and adds what stops it to the Parts. Up
// opens the embedded dependencies (bbolt stores, the in-process NATS), a
// cluster role the ones it is given URLs of (Redis, an external NATS, the
// scheduler's address); both then call the same role builders, which take
// interfaces and clients, never URLs.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/rolecert"
	nodeagent "github.com/kilnfaas/kiln/node-agent"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/registry"
	"github.com/kilnfaas/kiln/store/registry/redisstore"
	"github.com/kilnfaas/kiln/store/slaledger"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// ErrNoKVM: the kvm runtime was asked for where /dev/kvm is unusable.
var ErrNoKVM = errors.New("platform: no usable /dev/kvm")

// natsOpts keep a role's NATS connection trying for as long as the role
// lives: the NATS client gives up after 60 attempts by default.
var natsOpts = []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}

// Stores are the gateway's stores: the function registry, API keys, the
// SLA ledger and invocation logs.
type Stores struct {
	Registry registry.Store
	Keys     apikeys.Store   // nil: no key exists, management is loopback-only
	Ledger   slaledger.Store // nil: no SLA ledger
	Logs     logstore.Store  // nil: no logs kept
}

// OpenBoltStores opens the stores `kiln up` keeps in dataDir (bbolt
// files); Close closes them.
func (p *Parts) OpenBoltStores(dataDir string) (Stores, error) {
	reg, err := registry.OpenBolt(dataDir)
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(reg.Close)
	keys, err := apikeys.OpenBolt(dataDir)
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(keys.Close)
	ledger, err := slaledger.OpenBolt(dataDir)
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(ledger.Close)
	logs, err := logstore.OpenBolt(dataDir, logstore.BoltOptions{})
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(logs.Close)
	return Stores{Registry: reg, Keys: keys, Ledger: ledger, Logs: logs}, nil
}

// OpenRedisStores opens the stores a cluster's gateways share in Redis at
// url, and the keys file keysFile beside Redis' keys ("": none); Close
// closes them.
func (p *Parts) OpenRedisStores(ctx context.Context, url, keysFile string) (Stores, error) {
	reg, err := redisstore.New(ctx, url)
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(reg.Close)
	keys, err := apikeys.Open(ctx, url, keysFile)
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	if keys != nil {
		p.OnClose(keys.Close)
	}
	ledger, err := slaledger.OpenRedis(ctx, url)
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(ledger.Close)
	logs, err := logstore.NewRedis(ctx, url, logstore.Limits{})
	if err != nil {
		return Stores{}, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(logs.Close)
	return Stores{Registry: reg, Keys: keys, Ledger: ledger, Logs: logs}, nil
}

// EmbeddedImages starts the in-process NATS server of `kiln up` (files in
// dataDir/nats, no port) and the image store on it; Close stops both.
func (p *Parts) EmbeddedImages(ctx context.Context, dataDir string) (*imagestore.Store, error) {
	images, err := imagestore.Embedded(ctx, dataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(images.Close)
	return images, nil
}

// ConnectImages joins the image bucket on the external NATS at url,
// reconnecting for as long as the parts run.
func (p *Parts) ConnectImages(ctx context.Context, url string) (*imagestore.Store, error) {
	if url == "" {
		return nil, fmt.Errorf("%w: no NATS URL (--nats, $KILN_NATS_URL)", ErrStart)
	}
	images, err := imagestore.Connect(ctx, url, natsOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(images.Close)
	return images, nil
}

// readKernel reads the guest kernel at path ("": vmm.FindKernel()) and
// says which file it read.
func readKernel(path string) ([]byte, string, error) {
	if path == "" {
		var err error
		if path, err = vmm.FindKernel(); err != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrStart, err)
		}
	}
	kernel, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("%w: guest kernel: %v", ErrStart, err)
	}
	return kernel, path, nil
}

// SchedulerOptions are what Parts.BuildScheduler needs.
type SchedulerOptions struct {
	// Listener is where the scheduler serves gRPC; BuildScheduler owns it.
	Listener net.Listener
	// HeartbeatInterval agents are told to use; 0 → scheduler.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// StartupGrace: how long invocations wait for a first agent (scheduler.Config).
	StartupGrace time.Duration
	// TLS, when set, is the scheduler's certificate: its gRPC is mTLS,
	// Invoke and ListNodes answer gateways only, Connect agents only and
	// each for the node its certificate names, and agents are dialled
	// expecting that node's certificate. nil: plaintext, every caller
	// trusted (kiln up's 0600 unix sockets, --insecure-grpc).
	TLS    *rolecert.Credentials
	Logger *slog.Logger
}

// BuildScheduler builds the scheduler and serves its gRPC, with the gRPC health
// service, on o.Listener. Close refuses new calls, gives those in flight a
// moment, then drops the nodes (their agents reconnect to the next
// scheduler).
func (p *Parts) BuildScheduler(o SchedulerOptions) (*scheduler.Scheduler, error) {
	cfg := scheduler.Config{
		HeartbeatInterval: o.HeartbeatInterval,
		DialOptions:       dialOpts,
		StartupGrace:      o.StartupGrace,
		Registerer:        p.Metrics,
		Logger:            o.Logger,
	}
	if o.TLS != nil {
		cfg.Authenticate = rolecert.AuthenticateAgent
		cfg.AgentCredentials = func(node string) credentials.TransportCredentials {
			return o.TLS.Client(rolecert.Identity{Role: rolecert.RoleAgent, Node: node})
		}
	}
	sched, err := scheduler.New(cfg)
	if err != nil {
		o.Listener.Close()
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	srv := grpcServer(o.TLS, rolecert.SchedulerPolicy)
	kilnv1.RegisterSchedulerServer(srv, sched)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(kilnv1.Scheduler_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	p.serveGRPC(o.Listener, srv)
	p.OnClose(func() error {
		// Connect streams never end by themselves, so the wait is bounded.
		hs.Shutdown()
		gracefulStop(srv, 2*time.Second)
		return sched.Close()
	})
	return sched, nil
}

// BooterFor is the agent's runtime: RuntimeKVM ("" too) gives nil (KVM
// virtual machines), or an error wrapping ErrNoKVM where /dev/kvm is
// unusable; RuntimeProcess runs functions as host processes with their
// files in dataDir/run, and says in log that they have no isolation.
func BooterFor(runtime, dataDir string, log *slog.Logger) (nodeagent.Booter, error) {
	switch runtime {
	case "", RuntimeKVM:
		if err := vmm.Available(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoKVM, err)
		}
		return nil, nil
	case RuntimeProcess:
		run := filepath.Join(dataDir, "run")
		if err := os.MkdirAll(run, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrStart, err)
		}
		log.Warn("RUNTIME process: functions run as plain host processes with NO isolation — for development and tests only, never for untrusted code")
		return nodeagent.ProcessBooter(run), nil
	default:
		return nil, fmt.Errorf("%w: unknown runtime %q: want %q or %q", ErrStart, runtime, RuntimeKVM, RuntimeProcess)
	}
}

// AgentOptions are what Parts.BuildAgent needs.
type AgentOptions struct {
	Node        string // this node's name; "" → the host name
	MemoryBytes uint64 // guest memory this node may hand out; 0 → half of RAM
	CacheDir    string // the image cache; required
	CacheBytes  int64  // bound of the image cache; 0 → nodeagent.DefaultCacheBytes
	// SnapshotBytes bounds the snapshot store's disk; 0 → nodeagent.DefaultSnapshotBytes.
	SnapshotBytes int64
	// Kernel, when set, overrides every image's guest kernel.
	Kernel []byte
	// VMsPerWorker: VMs per vmhost worker process (nodeagent.Config).
	VMsPerWorker int
	// NoJail runs the vmhost workers unjailed (nodeagent.Config.NoJail;
	// `--no-jail`): debugging only, logged loudly.
	NoJail bool
	// WorkerAnswerWithin, WorkerWorkWithin: the vmhost watchdog's
	// deadlines (nodeagent.Config); 0 → vmhost's defaults.
	WorkerAnswerWithin, WorkerWorkWithin time.Duration
	// Boot is the runtime (BooterFor); nil: KVM.
	Boot      nodeagent.Booter
	Images    nodeagent.ImageFetcher
	Scheduler kilnv1.SchedulerClient
	// Listener is where the agent serves gRPC; BuildAgent owns it.
	Listener net.Listener
	// Advertise is the address the scheduler dials; "" → Listener's
	// (unix:///PATH for a unix socket).
	Advertise string
	// TLS, when set, is the agent's certificate: its gRPC is mTLS and
	// answers the scheduler only. nil: plaintext, every caller trusted.
	TLS    *rolecert.Credentials
	Logger *slog.Logger
}

// BuildAgent builds a node-agent, serves its gRPC on o.Listener and keeps it
// joined to the scheduler (reconnecting) until Close, which says goodbye
// first, so no new invocation arrives, then lets those in flight finish.
func (p *Parts) BuildAgent(o AgentOptions) (*nodeagent.Agent, error) {
	if o.Node == "" {
		o.Node = hostName()
	}
	if o.MemoryBytes == 0 {
		o.MemoryBytes = halfOfRAM()
	}
	if o.Logger == nil {
		o.Logger = p.log
	}
	agent, err := nodeagent.New(nodeagent.Config{
		Node: o.Node, MemoryBytes: o.MemoryBytes, Kernel: o.Kernel, Images: o.Images,
		CacheDir: o.CacheDir, CacheBytes: o.CacheBytes, SnapshotBytes: o.SnapshotBytes, Registerer: p.Metrics, Logger: o.Logger, Boot: o.Boot,
		VMsPerWorker: o.VMsPerWorker, WorkerAnswerWithin: o.WorkerAnswerWithin, WorkerWorkWithin: o.WorkerWorkWithin,
		NoJail: o.NoJail,
	})
	if err != nil {
		o.Listener.Close()
		return nil, fmt.Errorf("%w: node-agent: %w", ErrStart, err)
	}
	p.OnClose(agent.Close)
	advertise := o.Advertise
	if advertise == "" {
		advertise = o.Listener.Addr().String()
		if o.Listener.Addr().Network() == "unix" {
			advertise = "unix://" + advertise
		}
	}
	srv := grpcServer(o.TLS, rolecert.AgentPolicy)
	kilnv1.RegisterAgentServer(srv, agent)
	p.serveGRPC(o.Listener, srv)

	runCtx, leave := context.WithCancel(context.Background())
	ran := make(chan struct{})
	p.goroutine(func() {
		defer close(ran)
		if err := agent.Run(runCtx, o.Scheduler, advertise); err != nil && runCtx.Err() == nil {
			o.Logger.Error("node-agent stopped", "err", err)
		}
	})
	p.OnClose(func() error {
		leave() // goodbye: the scheduler places nothing more here
		<-ran
		gracefulStop(srv, grace)
		return nil
	})
	return agent, nil
}

// GatewayOptions are what Parts.BuildGateway needs.
type GatewayOptions struct {
	// Config is the gateway's: Images, Scheduler and Kernel set, the
	// limits and SLA.Nodes as wanted. Registry, Keys and Logs left nil are
	// taken from Stores; Async, SLA.Ledger, Registerer and Logger left
	// unset are filled in here.
	Config gateway.Config
	Stores Stores
	// NATS carries the async queue (JetStream); nil (and no Config.Async):
	// the async API answers 503.
	NATS *nats.Conn
	// Worker configures the async worker that runs beside the gateway;
	// its Scheduler defaults to Config.Scheduler.
	Worker asyncq.WorkerConfig
	// NoWorker opens the queue but runs no worker here.
	NoWorker bool
	// CallbackAllow lets async callbacks reach these prefixes although
	// the callback policy denies them (loopback, private, link-local...;
	// asyncq.Config.CallbackAllow): `--callback-allow`.
	CallbackAllow []netip.Prefix
	Logger        *slog.Logger
}

// BuildGateway builds the gateway: its async queue and worker, its SLA recorder
// and the gateway itself, over the stores and clients it is handed. The
// caller serves it. Close stops the worker (runs still going after 5 s
// are redelivered by JetStream) and flushes the SLA records.
func (p *Parts) BuildGateway(ctx context.Context, o GatewayOptions) (*gateway.Gateway, *asyncq.Queue, error) {
	cfg := o.Config
	if o.Logger == nil {
		o.Logger = p.log
	}
	if cfg.Registry == nil {
		cfg.Registry = o.Stores.Registry
	}
	if cfg.Keys == nil {
		cfg.Keys = o.Stores.Keys
	}
	if cfg.Logs == nil {
		cfg.Logs = o.Stores.Logs
	}
	if cfg.Registerer == nil && cfg.Gatherer == nil {
		cfg.Registerer = p.Metrics
	}
	if cfg.Logger == nil {
		cfg.Logger = o.Logger
	}
	if cfg.Async == nil && o.NATS != nil {
		q, err := asyncq.Open(ctx, o.NATS, asyncq.Config{Registerer: p.Metrics, Logger: o.Logger.With("part", "async"),
			CallbackAllow: o.CallbackAllow})
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrStart, err)
		}
		cfg.Async = q
		if len(o.CallbackAllow) > 0 {
			o.Logger.Warn("async callbacks may reach these prefixes although the callback policy denies them", "callback_allow", o.CallbackAllow)
		}
		if !o.NoWorker {
			wc := o.Worker
			if wc.Scheduler == nil {
				wc.Scheduler = cfg.Scheduler
			}
			w, err := q.StartWorker(ctx, wc)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %w", ErrStart, err)
			}
			p.OnClose(func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				w.Stop(ctx)
				return nil
			})
		}
	}
	if cfg.SLA.Ledger == nil && o.Stores.Ledger != nil {
		rec := slaledger.NewRecorder(o.Stores.Ledger, 0, o.Logger)
		p.OnClose(rec.Close) // before the store closes: what is queued reaches it
		cfg.SLA.Ledger = rec
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	return gw, cfg.Async, nil
}

// hostName is this node's default name: the host name, or "local" on a
// Linux that was never given one ("(none)").
func hostName() string {
	host, _ := os.Hostname()
	if host == "" || host == "(none)" {
		return "local"
	}
	return host
}

func halfOfRAM() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 1 << 30
	}
	return uint64(si.Totalram) * uint64(si.Unit) / 2
}
