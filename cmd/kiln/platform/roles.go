package platform

// The cluster roles: `kiln gateway`, `kiln scheduler` and `kiln agent` each
// run one of these in its own process (docs/CLUSTER.md). Unlike Up, which
// embeds everything, a role reaches the others over the network: Redis for
// the registry and API keys, an external NATS with JetStream for images and
// the async queue, plaintext gRPC between gateway, scheduler and agents.
//
// Every role serves, on its HTTP address, /healthz (the process is alive:
// 200 as long as it can answer at all), /readyz (200 only when what it
// depends on answers now; a JSON body names each check) and /metrics.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/tracing"
	nodeagent "github.com/kilnfaas/kiln/node-agent"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/registry/redisstore"
	"github.com/kilnfaas/kiln/store/slaledger"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// Default listen addresses of the roles. Loopback by default: the gRPC
// between roles is neither encrypted nor authenticated, so binding it to a
// wider network is a decision to make on purpose (docs/CLUSTER.md).
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

// probeTimeout bounds each readiness check.
const probeTimeout = 2 * time.Second

// grace bounds how long a role waits for invocations in flight when it
// stops.
const grace = 10 * time.Second

// roleDialOpts are how roles dial each other: the message bounds of
// dialOpts and a short reconnect backoff, because a restarted scheduler is
// back in a second and gRPC's default backoff grows to two minutes.
var roleDialOpts = append(dialOpts[:len(dialOpts):len(dialOpts)], grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 2 * time.Second,
}))

// natsOpts keep a role's NATS connection trying for as long as the role
// lives: the NATS client gives up after 60 attempts by default.
var natsOpts = []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}

// Role is one Kiln role running in this process. Close stops it.
type Role struct {
	// HTTPURL serves /healthz, /readyz and /metrics (and, for the gateway,
	// the public API), e.g. http://127.0.0.1:8080.
	HTTPURL string
	// GRPCAddr is the scheduler's or agent's gRPC address ("" for the gateway).
	GRPCAddr string
	// Metrics is what /metrics serves.
	Metrics *prometheus.Registry

	log     *slog.Logger
	closers []func() error // run newest first
	wg      sync.WaitGroup
	once    sync.Once
}

func newRole(log *slog.Logger) *Role {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Role{log: log, Metrics: prometheus.NewRegistry()}
	r.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Close stops the role, newest part first, and waits for its goroutines.
func (r *Role) Close() error {
	var errs []error
	r.once.Do(func() {
		for i := len(r.closers) - 1; i >= 0; i-- {
			if err := r.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		r.wg.Wait()
	})
	return errors.Join(errs...)
}

func (r *Role) onClose(f func() error) { r.closers = append(r.closers, f) }

// startTracing exports the role's spans to endpoint (or
// $OTEL_EXPORTER_OTLP_ENDPOINT; neither: off) until the role's last part
// has stopped.
func (r *Role) startTracing(ctx context.Context, service, endpoint string) error {
	stop, err := tracing.Setup(ctx, tracing.Config{Endpoint: endpoint, Service: service})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(func() error { return stop(context.Background()) })
	return nil
}

// check is one dependency /readyz probes.
type check struct {
	name  string
	probe func(ctx context.Context) error
}

// opsHandler serves /healthz, /readyz and /metrics, plus extra routes, and
// hands everything else to next (nil: a JSON 404).
func (r *Role) opsHandler(role string, checks []check, extra map[string]http.HandlerFunc, next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		results := make([]string, len(checks))
		var wg sync.WaitGroup
		for i, c := range checks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(req.Context(), probeTimeout)
				defer cancel()
				if err := c.probe(ctx); err != nil {
					results[i] = err.Error()
				} else {
					results[i] = "ok"
				}
			}()
		}
		wg.Wait()
		body := struct {
			Role   string            `json:"role"`
			Ready  bool              `json:"ready"`
			Error  string            `json:"error,omitempty"`
			Checks map[string]string `json:"checks"`
		}{Role: role, Ready: true, Checks: map[string]string{}}
		var failed []string
		for i, c := range checks {
			body.Checks[c.name] = results[i]
			if results[i] != "ok" {
				body.Ready = false
				failed = append(failed, c.name+": "+results[i])
			}
		}
		code := http.StatusOK
		if !body.Ready {
			sort.Strings(failed)
			code = http.StatusServiceUnavailable
			body.Error = fmt.Sprintf("%s not ready: %v", role, failed)
		}
		writeJSON(w, code, body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.Metrics, promhttp.HandlerOpts{}))
	for pattern, h := range extra {
		mux.HandleFunc(pattern, h)
	}
	if next != nil {
		mux.Handle("/", next)
	} else {
		mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
			writeJSON(w, http.StatusNotFound, map[string]string{
				"error": "no such endpoint " + req.URL.Path + " on the " + role + ": it serves /healthz, /readyz and /metrics"})
		})
	}
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// serveHTTP serves h on addr until Close.
func (r *Role) serveHTTP(addr string, h http.Handler) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%w: HTTP: %v", ErrStart, err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("HTTP server stopped", "err", err)
		}
	}()
	r.onClose(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		return hs.Shutdown(ctx)
	})
	return "http://" + lis.Addr().String(), nil
}

// serveGRPC serves srv on lis until stop is called.
func (r *Role) serveGRPC(lis net.Listener, srv *grpc.Server) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := srv.Serve(lis); err != nil {
			r.log.Error("gRPC server stopped", "err", err)
		}
	}()
}

// gracefulStop lets RPCs in flight finish for up to d, then ends the rest.
func gracefulStop(srv *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		srv.Stop()
		<-done
	}
}

// dialScheduler opens the long-lived client connection to the scheduler.
func (r *Role) dialScheduler(addr string) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: no scheduler address (--scheduler, $KILN_SCHEDULER)", ErrStart)
	}
	conn, err := grpc.NewClient(addr, roleDialOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: scheduler %s: %v", ErrStart, addr, err)
	}
	r.onClose(conn.Close)
	return conn, nil
}

// schedulerCheck asks the scheduler's gRPC health service.
func schedulerCheck(conn *grpc.ClientConn) check {
	hc := healthpb.NewHealthClient(conn)
	return check{"scheduler", func(ctx context.Context) error {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: kilnv1.Scheduler_ServiceDesc.ServiceName})
		if err != nil {
			return fmt.Errorf("%s unreachable: %v", conn.Target(), err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("%s is %v", conn.Target(), resp.Status)
		}
		return nil
	}}
}

func natsCheck(nc *nats.Conn) check {
	return check{"nats", func(ctx context.Context) error {
		if err := nc.FlushWithContext(ctx); err != nil {
			return fmt.Errorf("%s: %v (%v)", nc.ConnectedUrlRedacted(), err, nc.Status())
		}
		return nil
	}}
}

// connectImages joins the image bucket on the external NATS at url.
func (r *Role) connectImages(ctx context.Context, url string) (*imagestore.Store, error) {
	if url == "" {
		return nil, fmt.Errorf("%w: no NATS URL (--nats, $KILN_NATS_URL)", ErrStart)
	}
	images, err := imagestore.Connect(ctx, url, natsOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(images.Close)
	return images, nil
}

// SchedulerConfig configures StartScheduler.
type SchedulerConfig struct {
	GRPCAddr string // "" → DefaultSchedulerAddr
	HTTPAddr string // "" → DefaultSchedulerHTTPAddr
	// HeartbeatInterval agents are told to use; 0 → scheduler.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	OTLPEndpoint      string // traces (docs/TRACING.md); "" → $OTEL_EXPORTER_OTLP_ENDPOINT, else off
	Logger            *slog.Logger
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
	r := newRole(cfg.Logger)
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if err := r.startTracing(ctx, "kiln-scheduler", cfg.OTLPEndpoint); err != nil {
		return nil, err
	}
	sched, err := scheduler.New(scheduler.Config{
		HeartbeatInterval: cfg.HeartbeatInterval,
		DialOptions:       dialOpts,
		StartupGrace:      startupGrace,
		Registerer:        r.Metrics,
		Logger:            r.log,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		sched.Close()
		return nil, fmt.Errorf("%w: scheduler gRPC: %v", ErrStart, err)
	}
	srv := grpc.NewServer(serverOpts...)
	kilnv1.RegisterSchedulerServer(srv, sched)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(kilnv1.Scheduler_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	r.serveGRPC(lis, srv)
	r.onClose(func() error {
		// Refuse new calls, give those in flight a moment, then drop the
		// nodes (their agents reconnect to the next scheduler). Connect
		// streams never end by themselves, so the wait is bounded.
		hs.Shutdown()
		gracefulStop(srv, 2*time.Second)
		return sched.Close()
	})
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
	Node      string // this node's name; "" → the host name
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
	// Runtime is RuntimeKVM ("" too) or RuntimeProcess, which must be asked
	// for by name: it runs functions without any isolation.
	Runtime string
	// KernelPath, when set, overrides every image's guest kernel.
	KernelPath string
	// VMsPerWorker: VMs per vmhost worker process (nodeagent.Config); 0 →
	// the default, -1 → VMs in the agent's own process.
	VMsPerWorker int
	OTLPEndpoint string // traces (docs/TRACING.md); "" → $OTEL_EXPORTER_OTLP_ENDPOINT, else off
	Logger       *slog.Logger
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
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
		if cfg.Node == "" || cfg.Node == "(none)" {
			cfg.Node = "local"
		}
	}
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = halfOfRAM()
	}
	r := newRole(cfg.Logger)
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if err := r.startTracing(ctx, "kiln-agent", cfg.OTLPEndpoint); err != nil {
		return nil, err
	}
	var boot nodeagent.Booter
	switch cfg.Runtime {
	case "", RuntimeKVM:
		if err := vmm.Available(); err != nil {
			return nil, fmt.Errorf("%w: %w (the kvm runtime needs /dev/kvm; for development and tests only, --runtime process runs functions as plain host processes without isolation)", ErrStart, err)
		}
	case RuntimeProcess:
		run := filepath.Join(cfg.DataDir, "run")
		if err := os.MkdirAll(run, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrStart, err)
		}
		boot = nodeagent.ProcessBooter(run)
		r.log.Warn("RUNTIME process: functions run as plain host processes with NO isolation — for development and tests only, never for untrusted code")
	default:
		return nil, fmt.Errorf("%w: unknown runtime %q: want %q or %q", ErrStart, cfg.Runtime, RuntimeKVM, RuntimeProcess)
	}
	var kernel []byte
	if cfg.KernelPath != "" {
		if kernel, err = os.ReadFile(cfg.KernelPath); err != nil {
			return nil, fmt.Errorf("%w: guest kernel: %v", ErrStart, err)
		}
	}
	images, err := r.connectImages(ctx, cfg.NATSURL)
	if err != nil {
		return nil, err
	}
	schedConn, err := r.dialScheduler(cfg.Scheduler)
	if err != nil {
		return nil, err
	}
	agent, err := nodeagent.New(nodeagent.Config{
		Node: cfg.Node, MemoryBytes: cfg.MemoryBytes, Kernel: kernel, Images: images,
		CacheDir: filepath.Join(cfg.DataDir, "cache"), CacheBytes: cfg.CacheBytes, Registerer: r.Metrics, Logger: r.log, Boot: boot,
		VMsPerWorker: cfg.VMsPerWorker,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(agent.Close)

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: agent gRPC: %v", ErrStart, err)
	}
	advertise := cfg.Advertise
	if advertise == "" {
		advertise = lis.Addr().String()
		if ip := lis.Addr().(*net.TCPAddr).IP; ip.IsUnspecified() {
			lis.Close()
			return nil, fmt.Errorf("%w: listening on %s, the scheduler needs an address it can dial: give --advertise HOST:PORT", ErrStart, cfg.GRPCAddr)
		}
	}
	srv := grpc.NewServer(serverOpts...)
	kilnv1.RegisterAgentServer(srv, agent)
	r.serveGRPC(lis, srv)
	r.GRPCAddr = lis.Addr().String()

	runCtx, leave := context.WithCancel(context.Background())
	ran := make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(ran)
		agent.Run(runCtx, kilnv1.NewSchedulerClient(schedConn), advertise)
	}()
	r.onClose(func() error {
		leave() // goodbye: the scheduler places nothing more here
		<-ran
		gracefulStop(srv, grace)
		return nil
	})

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
	r.log.Info("agent is up", "node", cfg.Node, "grpc", r.GRPCAddr, "advertise", advertise, "http", r.HTTPURL,
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
	Logger       *slog.Logger
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
	r := newRole(cfg.Logger)
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if err := r.startTracing(ctx, "kiln-gateway", cfg.OTLPEndpoint); err != nil {
		return nil, err
	}
	kernelPath := cfg.KernelPath
	if kernelPath == "" {
		if kernelPath, err = vmm.FindKernel(); err != nil {
			return nil, fmt.Errorf("%w: %w (give --kernel or $KILN_KERNEL)", ErrStart, err)
		}
	}
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("%w: guest kernel: %v", ErrStart, err)
	}
	reg, err := redisstore.New(ctx, cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(reg.Close)
	keys, err := apikeys.Open(ctx, cfg.RedisURL, cfg.APIKeysFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	if keys != nil {
		r.onClose(keys.Close)
	}
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w: redis url: %v", ErrStart, err)
	}
	probe := redis.NewClient(opts)
	r.onClose(probe.Close)
	images, err := r.connectImages(ctx, cfg.NATSURL)
	if err != nil {
		return nil, err
	}
	schedConn, err := r.dialScheduler(cfg.Scheduler)
	if err != nil {
		return nil, err
	}
	sched := kilnv1.NewSchedulerClient(schedConn)

	queue, err := asyncq.Open(ctx, images.Conn(), asyncq.Config{Registerer: r.Metrics, Logger: r.log.With("part", "async")})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	worker, err := queue.StartWorker(ctx, asyncq.WorkerConfig{Scheduler: sched})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(func() error {
		// Runs still going after the grace period are redelivered by
		// JetStream to another gateway's worker.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		worker.Stop(ctx)
		return nil
	})

	ledger, err := slaledger.OpenRedis(ctx, cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(ledger.Close)
	slaRec := slaledger.NewRecorder(ledger, 0, r.log)
	r.onClose(slaRec.Close)
	logs, err := logstore.NewRedis(ctx, cfg.RedisURL, logstore.Limits{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	r.onClose(logs.Close)
	gw, err := gateway.New(gateway.Config{
		Registry: reg, Images: images, Scheduler: sched, Kernel: kernel, Async: queue, Keys: keys,
		Registerer: r.Metrics, Logger: r.log, Logs: logs,
		SLA: gateway.SLAConfig{Ledger: slaRec, Nodes: func() ([]scheduler.Node, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			r, err := sched.ListNodes(ctx, &kilnv1.ListNodesRequest{})
			if err != nil {
				return nil, err // warm_instances unknown (null), not 0
			}
			return scheduler.NodesFrom(r), nil
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
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
		"kernel", kernelPath, "api_keys", keys != nil)
	return r, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
