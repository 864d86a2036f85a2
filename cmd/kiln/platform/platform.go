// Package platform wires every Kiln role into one process: the embedded
// NATS image store, the bbolt registry, the scheduler and a node-agent
// (each serving real gRPC on 127.0.0.1, exactly as they would across
// machines), and the gateway's HTTP server. `kiln up` and the end-to-end
// tests both start Kiln through Up, so what the tests prove is what a user
// runs.
package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/tracing"
	nodeagent "github.com/kilnfaas/kiln/node-agent"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/registry"
	"github.com/kilnfaas/kiln/store/slaledger"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// DefaultHTTPAddr is where `kiln up` serves the gateway unless told otherwise.
const DefaultHTTPAddr = "127.0.0.1:8080"

// maxMessage bounds one gRPC message between the roles. gRPC's default of
// 4 MiB is below the gateway's 6 MiB request bodies and the wire protocol's
// 64 MiB response bodies; the margin is for headers and metadata.
const maxMessage = 64<<20 + 1<<20

var (
	serverOpts = []grpc.ServerOption{grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage), tracing.ServerOption()}
	dialOpts   = []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
		tracing.DialOption(),
	}
)

// EmbeddedHeartbeatInterval is Up's heartbeat interval, longer than the
// cluster default: the agent shares the scheduler's process, so a late
// heartbeat means the whole process was stalled (a loaded or emulated host),
// and draining the only node would only turn that stall into 503s.
const EmbeddedHeartbeatInterval = 2 * time.Second

// ErrStart: a part of the platform failed to start.
var ErrStart = errors.New("platform: cannot start")

// Config says where and how to run Kiln.
type Config struct {
	DataDir     string // registry.db, nats/, cache/ live here; required
	HTTPAddr    string // gateway listen address; "" → DefaultHTTPAddr, "127.0.0.1:0" for a free port
	MemoryBytes uint64 // guest memory the agent may hand out; 0 → half of host RAM
	KernelPath  string // guest kernel ELF; "" → vmm.FindKernel()
	// NoAgent starts no node-agent (gateway and scheduler only). Up also
	// starts none, and says so in the log, when /dev/kvm is unusable.
	NoAgent bool
	// HeartbeatInterval of agents to the scheduler; 0 → EmbeddedHeartbeatInterval.
	HeartbeatInterval time.Duration
	// Runtime of the agent, as for `kiln agent`: RuntimeKVM ("" too), or
	// RuntimeProcess, which must be asked for by name: functions run as
	// plain host processes with no isolation (development and tests only).
	Runtime string
	// OTLPEndpoint receives traces (docs/TRACING.md); "" →
	// $OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off.
	OTLPEndpoint string
	Logger       *slog.Logger
}

// Platform is a running Kiln. Close stops it.
type Platform struct {
	// URL is the gateway's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// Metrics is the registry every role's metrics are in (served at /metrics).
	Metrics *prometheus.Registry
	// Agent reports whether a node-agent runs (false without /dev/kvm).
	Agent bool
	// NoKeys reports that no API key existed at start-up: until one is
	// created the management API is open to callers on this machine only.
	NoKeys bool

	log     *slog.Logger
	closers []func() error // in reverse start order
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// Up starts the platform and returns once the gateway accepts requests. The
// parts keep running after ctx ends; call Close.
func Up(ctx context.Context, cfg Config) (_ *Platform, err error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: no data directory", ErrStart)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultHTTPAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = halfOfRAM()
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = EmbeddedHeartbeatInterval
	}
	log := cfg.Logger
	runCtx, cancel := context.WithCancel(context.Background())
	p := &Platform{log: log, cancel: cancel, Metrics: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	p.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	stopTracing, err := tracing.Setup(ctx, tracing.Config{Endpoint: cfg.OTLPEndpoint, Service: "kiln"})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, func() error { return stopTracing(context.Background()) })

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	kernelPath := cfg.KernelPath
	if kernelPath == "" {
		if kernelPath, err = vmm.FindKernel(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStart, err)
		}
	}
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("%w: guest kernel: %v", ErrStart, err)
	}

	reg, err := registry.OpenBolt(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, reg.Close)

	keys, err := apikeys.OpenBolt(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, keys.Close)
	if any, err := keys.Any(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	} else if !any {
		p.NoKeys = true
	}

	ledger, err := slaledger.OpenBolt(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, ledger.Close)
	slaRec := slaledger.NewRecorder(ledger, 0, log.With("role", "gateway"))
	p.closers = append(p.closers, slaRec.Close) // closed first: what is queued reaches the ledger

	logs, err := logstore.OpenBolt(cfg.DataDir, logstore.BoltOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, logs.Close)

	images, err := imagestore.Embedded(ctx, cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, images.Close)

	sched, err := scheduler.New(scheduler.Config{
		HeartbeatInterval: cfg.HeartbeatInterval,
		DialOptions:       dialOpts,
		Registerer:        p.Metrics,
		Logger:            log.With("role", "scheduler"),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, sched.Close)
	schedSrv := grpc.NewServer(serverOpts...)
	kilnv1.RegisterSchedulerServer(schedSrv, sched)
	schedAddr, err := p.serveGRPC(schedSrv)
	if err != nil {
		return nil, err
	}
	schedConn, err := grpc.NewClient(schedAddr, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: scheduler client: %v", ErrStart, err)
	}
	p.closers = append(p.closers, schedConn.Close)
	schedClient := kilnv1.NewSchedulerClient(schedConn)

	if !cfg.NoAgent {
		switch cfg.Runtime {
		case "", RuntimeKVM:
			if kvmErr := vmm.Available(); kvmErr != nil {
				log.Warn("no node-agent on this machine: invocations will answer 503 until an agent joins", "err", kvmErr)
			} else if err := p.startAgent(runCtx, cfg, images, schedClient, nil); err != nil {
				return nil, err
			}
		case RuntimeProcess:
			run := filepath.Join(cfg.DataDir, "run")
			if err := os.MkdirAll(run, 0o700); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrStart, err)
			}
			log.Warn("RUNTIME process: functions run as plain host processes with NO isolation — for development and tests only, never for untrusted code")
			if err := p.startAgent(runCtx, cfg, images, schedClient, nodeagent.ProcessBooter(run)); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%w: unknown runtime %q: want %q or %q", ErrStart, cfg.Runtime, RuntimeKVM, RuntimeProcess)
		}
	}

	queue, err := p.startAsync(ctx, images, schedClient)
	if err != nil {
		return nil, err
	}

	gw, err := gateway.New(gateway.Config{
		Registry: reg, Images: images, Scheduler: schedClient, Kernel: kernel, Async: queue, Keys: keys,
		Registerer: p.Metrics, Logger: log.With("role", "gateway"), Logs: logs,
		SLA: gateway.SLAConfig{Ledger: slaRec, Nodes: func() ([]scheduler.Node, error) { return sched.Nodes(), nil }},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	lis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: gateway: %v (is another `kiln up` running? choose another address with --listen)", ErrStart, err)
	}
	hs := &http.Server{Handler: tracing.HTTPHandler(gw, "gateway"), ReadHeaderTimeout: 10 * time.Second}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("gateway stopped", "err", err)
		}
	}()
	p.closers = append(p.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return hs.Shutdown(ctx)
	})
	p.URL = "http://" + lis.Addr().String()
	log.Info("kiln is up", "url", p.URL, "data", cfg.DataDir, "kernel", kernelPath, "agent", p.Agent)
	return p, nil
}

// startAgent runs a node-agent serving gRPC on 127.0.0.1 and keeps its
// Connect stream to the scheduler open until Close.
// boot nil means the KVM runtime.
func (p *Platform) startAgent(ctx context.Context, cfg Config, images *imagestore.Store, sched kilnv1.SchedulerClient, boot nodeagent.Booter) error {
	host, _ := os.Hostname()
	if host == "" || host == "(none)" { // "(none)": a Linux that was never given a name
		host = "local"
	}
	agent, err := nodeagent.New(nodeagent.Config{
		Node:        host,
		MemoryBytes: cfg.MemoryBytes,
		// Kernel stays unset: each image boots the kernel it was built with.
		Images:     images,
		CacheDir:   filepath.Join(cfg.DataDir, "cache"),
		Registerer: p.Metrics,
		Logger:     p.log.With("role", "agent"),
		Boot:       boot,
	})
	if err != nil {
		return fmt.Errorf("%w: node-agent: %w", ErrStart, err)
	}
	p.closers = append(p.closers, agent.Close)
	srv := grpc.NewServer(serverOpts...)
	kilnv1.RegisterAgentServer(srv, agent)
	addr, err := p.serveGRPC(srv)
	if err != nil {
		return err
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := agent.Run(ctx, sched, addr); err != nil && ctx.Err() == nil {
			p.log.Error("node-agent stopped", "err", err)
		}
	}()
	p.Agent = true
	return nil
}

// startAsync opens the async queue on the embedded NATS server and runs
// its worker here, beside the scheduler client it invokes through.
func (p *Platform) startAsync(ctx context.Context, images *imagestore.Store, sched kilnv1.SchedulerClient) (*asyncq.Queue, error) {
	q, err := asyncq.Open(ctx, images.Conn(), asyncq.Config{Registerer: p.Metrics, Logger: p.log.With("role", "async")})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	w, err := q.StartWorker(ctx, asyncq.WorkerConfig{Scheduler: sched})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.closers = append(p.closers, func() error {
		// Runs still going after the grace period are left to JetStream,
		// which hands them to the next `kiln up`.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w.Stop(ctx)
		return nil
	})
	return q, nil
}

// serveGRPC serves srv on a free 127.0.0.1 port and returns the address.
func (p *Platform) serveGRPC(srv *grpc.Server) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrStart, err)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		srv.Serve(lis)
	}()
	p.closers = append(p.closers, func() error { srv.Stop(); return nil })
	return lis.Addr().String(), nil
}

// Close stops every part, newest first, and waits for their goroutines.
func (p *Platform) Close() error {
	var errs []error
	p.once.Do(func() {
		p.cancel()
		for i := len(p.closers) - 1; i >= 0; i-- {
			if err := p.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		p.wg.Wait()
	})
	return errors.Join(errs...)
}

func halfOfRAM() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 1 << 30
	}
	return uint64(si.Totalram) * uint64(si.Unit) / 2
}
