package platform

// The cluster roles: `kiln gateway`, `kiln scheduler` and `kiln agent` each
// run one of these in its own process (docs/CLUSTER.md). Unlike Up, which
// embeds everything, a role reaches the others over the network: Redis for
// the registry and API keys, an external NATS with JetStream for images and
// the async queue, gRPC between gateway, scheduler and agents — mutual TLS
// on certificates of the cluster's CA (internal/rolecert), or plaintext
// only when the operator says --insecure-grpc. Each opens its dependencies
// from URLs, builds itself with the builders Up uses too (build.go) and
// serves /healthz, /readyz and /metrics (ops.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/rolecert"
	"github.com/kilnfaas/kiln/internal/tracing"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// Default listen addresses of the roles. Loopback by default: exposing a
// role to a wider network is a decision to make on purpose
// (docs/CLUSTER.md).
const (
	DefaultSchedulerAddr     = "127.0.0.1:7070"
	DefaultSchedulerHTTPAddr = "127.0.0.1:7071"
	DefaultAgentAddr         = "127.0.0.1:7080"
	DefaultAgentHTTPAddr     = "127.0.0.1:7081"
)

// Runtimes of `kiln agent`.
const (
	RuntimeKVM     = "kvm"     // every function in its own KVM virtual machine
	RuntimeProcess = "process" // plain host processes: NO isolation, development and tests only
)

// startupGrace is how long a freshly started scheduler holds invocations
// while no agent has registered yet: agents reconnect within their 2 s
// backoff ceiling, so after a restart calls wait briefly instead of failing.
const startupGrace = 3 * time.Second

// Role is one Kiln role running in this process. Close stops it.
type Role struct {
	// HTTPURL serves /healthz, /readyz and /metrics (and, for the gateway,
	// the public API), e.g. http://127.0.0.1:8080.
	HTTPURL string
	// GRPCAddr is the scheduler's or agent's gRPC address ("" for the gateway).
	GRPCAddr string
	// Parts hold the role's metrics (what /metrics serves) and Close.
	*Parts
}

// newRole starts a role's parts, its spans exported as service to
// endpoint (or $OTEL_EXPORTER_OTLP_ENDPOINT; neither: off).
func newRole(ctx context.Context, log *slog.Logger, service, endpoint string) (*Role, error) {
	r := &Role{Parts: NewParts(log)}
	if err := r.StartTracing(ctx, service, endpoint); err != nil {
		return nil, err
	}
	return r, nil
}

// GRPCSecurity is how a role's gRPC is protected: TLS files, or Insecure.
// One of them must be given, so that nobody runs plaintext by accident.
type GRPCSecurity struct {
	// TLS are the CA, the role's certificate and key (`kiln ca`;
	// --tls-ca, --tls-cert, --tls-key).
	TLS rolecert.Files
	// Insecure runs plaintext gRPC that trusts every caller who can
	// reach the port (--insecure-grpc): for a network nobody else is on.
	Insecure bool
}

// roleTLS loads role's credentials, or says loudly that there are none.
func roleTLS(log *slog.Logger, role string, sec GRPCSecurity) (*rolecert.Credentials, error) {
	switch {
	case sec.Insecure && !sec.TLS.Empty():
		return nil, fmt.Errorf("%w: --insecure-grpc and --tls-* both given: choose one", ErrStart)
	case sec.Insecure:
		log.Warn("INSECURE gRPC: no TLS between the roles — anyone who can reach this role's gRPC can call it (run private functions, register as a node); only for a network nobody else is on (--insecure-grpc)")
		return nil, nil
	case sec.TLS.Empty():
		return nil, fmt.Errorf("%w: no TLS between the roles: give --tls-ca, --tls-cert and --tls-key ($KILN_TLS_CA, $KILN_TLS_CERT, $KILN_TLS_KEY; make them with `kiln ca init` and `kiln ca issue`, docs/CLUSTER.md), or --insecure-grpc to run plaintext on a network nobody else is on", ErrStart)
	}
	creds, err := rolecert.Load(sec.TLS)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	if creds.Identity.Role != role {
		return nil, fmt.Errorf("%w: %s is the certificate of %s, not of a %s (issue one with `kiln ca issue --role %s`)",
			ErrStart, sec.TLS.Cert, creds.Identity, role, role)
	}
	log.Info("gRPC is mutual TLS", "identity", creds.Identity.String(), "cert", sec.TLS.Cert, "expires", creds.NotAfter.Format(time.DateOnly))
	if left := time.Until(creds.NotAfter); left < 30*24*time.Hour {
		log.Warn("this role's certificate expires soon: issue a new one with `kiln ca issue` and restart the role", "expires", creds.NotAfter)
	}
	return creds, nil
}

// closeIfFailed stops what a Start function built when it fails (*err).
func (r *Role) closeIfFailed(err *error) {
	if *err != nil {
		r.Close()
	}
}

// SchedulerConfig configures StartScheduler.
type SchedulerConfig struct {
	GRPCAddr string // "" → DefaultSchedulerAddr
	HTTPAddr string // "" → DefaultSchedulerHTTPAddr
	// HeartbeatInterval agents are told to use; 0 → scheduler.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	OTLPEndpoint      string // traces (docs/TRACING.md); "" → $OTEL_EXPORTER_OTLP_ENDPOINT, else off
	GRPCSecurity
	Logger *slog.Logger
}

// StartScheduler runs the scheduler role. It keeps no durable state: after
// a restart it knows the cluster again once the agents have reconnected
// (they retry every 2 s at most) and sent their first heartbeat. Its HTTP
// address also serves GET /nodes, the node table as JSON.
func StartScheduler(ctx context.Context, cfg SchedulerConfig) (_ *Role, err error) {
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = DefaultSchedulerAddr
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultSchedulerHTTPAddr
	}
	r, err := newRole(ctx, cfg.Logger, "kiln-scheduler", cfg.OTLPEndpoint)
	if err != nil {
		return nil, err
	}
	defer r.closeIfFailed(&err)
	creds, err := roleTLS(r.log, rolecert.RoleScheduler, cfg.GRPCSecurity)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: scheduler gRPC: %v", ErrStart, err)
	}
	sched, err := r.BuildScheduler(SchedulerOptions{Listener: lis, HeartbeatInterval: cfg.HeartbeatInterval,
		StartupGrace: startupGrace, TLS: creds, Logger: r.log})
	if err != nil {
		return nil, err
	}
	r.GRPCAddr = lis.Addr().String()

	nodes := func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, sched.Nodes()) }
	if r.HTTPURL, err = r.serveHTTP(cfg.HTTPAddr, r.opsHandler("scheduler", nil,
		map[string]http.HandlerFunc{"GET /nodes": nodes}, nil)); err != nil {
		return nil, err
	}
	r.log.Info("scheduler is up", "grpc", r.GRPCAddr, "http", r.HTTPURL, "heartbeat", sched.HeartbeatInterval())
	return r, nil
}

// AgentConfig configures StartAgent.
type AgentConfig struct {
	Node      string // this node's name; "" → the one in the certificate, else the host name
	GRPCAddr  string // listen address of the Agent service; "" → DefaultAgentAddr
	Advertise string // address the scheduler dials; "" → the listen address
	HTTPAddr  string // "" → DefaultAgentHTTPAddr
	Scheduler string // the scheduler's gRPC address; required
	NATSURL   string // the NATS server holding the images; required
	DataDir   string // image cache (cache/) and process runtime files (run/); required
	// MemoryBytes is the guest memory this node may hand out; 0 → half of RAM.
	MemoryBytes uint64
	// CacheBytes bounds the on-disk image cache; 0 → nodeagent.DefaultCacheBytes.
	CacheBytes int64
	// SnapshotBytes bounds the snapshot store's disk; 0 → nodeagent.DefaultSnapshotBytes.
	SnapshotBytes int64
	// Runtime is RuntimeKVM ("" too) or RuntimeProcess, which must be asked
	// for by name: it runs functions without any isolation.
	Runtime string
	// KernelPath, when set, overrides every image's guest kernel.
	KernelPath string
	// VMsPerWorker: VMs per vmhost worker process (nodeagent.Config); 0 →
	// the default, -1 → VMs in the agent's own process.
	VMsPerWorker int
	// NoJail runs the vmhost workers unjailed (--no-jail): debugging only.
	NoJail       bool
	OTLPEndpoint string // traces (docs/TRACING.md); "" → $OTEL_EXPORTER_OTLP_ENDPOINT, else off
	GRPCSecurity
	Logger *slog.Logger
}

// StartAgent runs the node-agent role: it serves the Agent service, joins
// the scheduler (reconnecting for as long as it runs) and fetches images
// from NATS. Close says goodbye to the scheduler first, so no new
// invocation arrives, then lets those in flight finish.
func StartAgent(ctx context.Context, cfg AgentConfig) (_ *Role, err error) {
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = DefaultAgentAddr
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultAgentHTTPAddr
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: no data directory (--data, $KILN_DATA)", ErrStart)
	}
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = halfOfRAM()
	}
	r, err := newRole(ctx, cfg.Logger, "kiln-agent", cfg.OTLPEndpoint)
	if err != nil {
		return nil, err
	}
	defer r.closeIfFailed(&err)
	creds, err := roleTLS(r.log, rolecert.RoleAgent, cfg.GRPCSecurity)
	if err != nil {
		return nil, err
	}
	switch {
	case creds != nil && cfg.Node == "":
		cfg.Node = creds.Identity.Node
	case creds != nil && cfg.Node != creds.Identity.Node:
		// The scheduler would refuse every Register: say so now.
		return nil, fmt.Errorf("%w: --name %q, but the certificate %s is for node %q", ErrStart, cfg.Node, cfg.TLS.Cert, creds.Identity.Node)
	case cfg.Node == "":
		cfg.Node = hostName()
	}
	boot, err := BooterFor(cfg.Runtime, cfg.DataDir, r.log)
	if errors.Is(err, ErrNoKVM) {
		return nil, fmt.Errorf("%w: %w (the kvm runtime needs /dev/kvm; for development and tests only, --runtime process runs functions as plain host processes without isolation)", ErrStart, err)
	} else if err != nil {
		return nil, err
	}
	var kernel []byte
	if cfg.KernelPath != "" {
		if kernel, _, err = readKernel(cfg.KernelPath); err != nil {
			return nil, err
		}
	}
	images, err := r.ConnectImages(ctx, cfg.NATSURL)
	if err != nil {
		return nil, err
	}
	schedConn, err := r.DialScheduler(cfg.Scheduler, creds)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: agent gRPC: %v", ErrStart, err)
	}
	if ip := lis.Addr().(*net.TCPAddr).IP; cfg.Advertise == "" && ip.IsUnspecified() {
		lis.Close()
		return nil, fmt.Errorf("%w: listening on %s, the scheduler needs an address it can dial: give --advertise HOST:PORT", ErrStart, cfg.GRPCAddr)
	}
	agent, err := r.BuildAgent(AgentOptions{
		Node: cfg.Node, MemoryBytes: cfg.MemoryBytes, CacheDir: filepath.Join(cfg.DataDir, "cache"), CacheBytes: cfg.CacheBytes,
		SnapshotBytes: cfg.SnapshotBytes, Kernel: kernel, VMsPerWorker: cfg.VMsPerWorker, NoJail: cfg.NoJail, Boot: boot, Images: images,
		Scheduler: kilnv1.NewSchedulerClient(schedConn), Listener: lis, Advertise: cfg.Advertise, TLS: creds, Logger: r.log,
	})
	if err != nil {
		return nil, err
	}
	r.GRPCAddr = lis.Addr().String()

	registered := check{"scheduler", func(context.Context) error {
		if !agent.Registered() {
			return fmt.Errorf("not registered with the scheduler at %s (yet)", cfg.Scheduler)
		}
		return nil
	}}
	if r.HTTPURL, err = r.serveHTTP(cfg.HTTPAddr, r.opsHandler("agent",
		[]check{registered, natsCheck(images.Conn())}, nil, nil)); err != nil {
		return nil, err
	}
	r.log.Info("agent is up", "node", cfg.Node, "grpc", r.GRPCAddr, "advertise", orDefault(cfg.Advertise, r.GRPCAddr), "http", r.HTTPURL,
		"runtime", orDefault(cfg.Runtime, RuntimeKVM), "memory", cfg.MemoryBytes)
	return r, nil
}

// GatewayConfig configures StartGateway.
type GatewayConfig struct {
	HTTPAddr  string // the public API; "" → DefaultHTTPAddr
	RedisURL  string // registry and API keys; required
	NATSURL   string // images and the async queue; required
	Scheduler string // the scheduler's gRPC address; required
	// KernelPath is the guest kernel packed into deployed images; "" →
	// vmm.FindKernel().
	KernelPath string
	// APIKeysFile holds keys beside those in Redis (docs/AUTH.md); optional.
	APIKeysFile  string
	OTLPEndpoint string // traces (docs/TRACING.md); "" → $OTEL_EXPORTER_OTLP_ENDPOINT, else off
	// CallbackAllow lets async callbacks reach these prefixes although
	// the callback policy denies them (docs/ASYNC.md).
	CallbackAllow []netip.Prefix
	GRPCSecurity
	Logger *slog.Logger
}

// StartGateway runs the gateway role. It keeps nothing of its own, so any
// number of gateways may serve the same cluster; each also runs an async
// worker on the shared JetStream queue.
func StartGateway(ctx context.Context, cfg GatewayConfig) (_ *Role, err error) {
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultHTTPAddr
	}
	if cfg.RedisURL == "" {
		return nil, fmt.Errorf("%w: no Redis URL (--redis, $KILN_REDIS_URL)", ErrStart)
	}
	r, err := newRole(ctx, cfg.Logger, "kiln-gateway", cfg.OTLPEndpoint)
	if err != nil {
		return nil, err
	}
	defer r.closeIfFailed(&err)
	creds, err := roleTLS(r.log, rolecert.RoleGateway, cfg.GRPCSecurity)
	if err != nil {
		return nil, err
	}
	kernel, kernelPath, err := readKernel(cfg.KernelPath)
	if err != nil {
		return nil, fmt.Errorf("%w (give --kernel or $KILN_KERNEL)", err)
	}
	stores, err := r.OpenRedisStores(ctx, cfg.RedisURL, cfg.APIKeysFile)
	if err != nil {
		return nil, err
	}
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w: redis url: %v", ErrStart, err)
	}
	probe := redis.NewClient(opts)
	r.OnClose(probe.Close)
	images, err := r.ConnectImages(ctx, cfg.NATSURL)
	if err != nil {
		return nil, err
	}
	schedConn, err := r.DialScheduler(cfg.Scheduler, creds)
	if err != nil {
		return nil, err
	}
	sched := kilnv1.NewSchedulerClient(schedConn)
	gw, _, err := r.BuildGateway(ctx, GatewayOptions{
		Config: gateway.Config{Images: images, Scheduler: sched, Kernel: kernel,
			SLA: gateway.SLAConfig{Nodes: func(ctx context.Context) (*kilnv1.ListNodesResponse, error) {
				return sched.ListNodes(ctx, &kilnv1.ListNodesRequest{})
			}}},
		Stores: stores, NATS: images.Conn(), CallbackAllow: cfg.CallbackAllow, Logger: r.log,
	})
	if err != nil {
		return nil, err
	}
	redisCheck := check{"redis", func(ctx context.Context) error {
		if err := probe.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("%s: %v", opts.Addr, err)
		}
		return nil
	}}
	if r.HTTPURL, err = r.serveHTTP(cfg.HTTPAddr, tracing.HTTPHandler(r.opsHandler("gateway",
		[]check{redisCheck, natsCheck(images.Conn()), schedulerCheck(schedConn)}, nil, gw), "gateway")); err != nil {
		return nil, err
	}
	r.log.Info("gateway is up", "url", r.HTTPURL, "redis", opts.Addr, "nats", cfg.NATSURL, "scheduler", cfg.Scheduler,
		"kernel", kernelPath, "api_keys", stores.Keys != nil)
	return r, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
