// Package platform wires every Kiln role into one process: the embedded
// NATS image store, the bbolt registry, the scheduler and a node-agent
// (each serving real gRPC, as they would across machines, on a unix
// socket only this user may open), and the gateway's HTTP server. `kiln up` and the end-to-end
// tests both start Kiln through Up, so what the tests prove is what a user
// runs.
package platform

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

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/tracing"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// DefaultHTTPAddr is where `kiln up` serves the gateway unless told otherwise.
const DefaultHTTPAddr = "127.0.0.1:8080"

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
	// NoJail runs the agent's vmhost workers unjailed (--no-jail):
	// debugging only.
	NoJail bool
	// OTLPEndpoint receives traces (docs/TRACING.md); "" →
	// $OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off.
	OTLPEndpoint string
	// CallbackAllow lets async callbacks reach these prefixes although
	// the callback policy denies them (docs/ASYNC.md); empty: public
	// addresses only.
	CallbackAllow []netip.Prefix
	// WorkerAnswerWithin and WorkerWorkWithin shorten the deadlines of the
	// agent's vmhost watchdog (nodeagent.Config); 0 → vmhost's defaults.
	// Only tests set them, to see a frozen worker found out in seconds.
	WorkerAnswerWithin, WorkerWorkWithin time.Duration
	Logger                               *slog.Logger
}

// Platform is a running Kiln. Close stops it.
type Platform struct {
	// URL is the gateway's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// Agent reports whether a node-agent runs (false without /dev/kvm).
	Agent bool
	// NoKeys reports that no API key existed at start-up: until one is
	// created the management API is open to callers on this machine only.
	NoKeys bool
	// Parts hold Metrics, the registry every role's metrics are in (served
	// at /metrics), and Close, which stops every part, newest first.
	*Parts
}

// Up starts the platform and returns once the gateway accepts requests. The
// parts keep running after ctx ends; call Close. It opens the embedded
// dependencies and builds each role with the builders the cluster roles use
// (build.go), in this process, gRPC between them on unix sockets in
// DataDir/sock (listenLocal).
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
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = EmbeddedHeartbeatInterval
	}
	log := cfg.Logger
	p := &Platform{Parts: NewParts(log)}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err := p.StartTracing(ctx, "kiln", cfg.OTLPEndpoint); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	kernel, kernelPath, err := readKernel(cfg.KernelPath)
	if err != nil {
		return nil, err
	}
	stores, err := p.OpenBoltStores(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if any, err := stores.Keys.Any(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	} else if !any {
		p.NoKeys = true
	}
	images, err := p.EmbeddedImages(ctx, cfg.DataDir)
	if err != nil {
		return nil, err
	}

	sockDir, err := p.socketDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	lis, err := listenLocal(sockDir, "scheduler.sock")
	if err != nil {
		return nil, err
	}
	sched, err := p.BuildScheduler(SchedulerOptions{Listener: lis, HeartbeatInterval: cfg.HeartbeatInterval,
		Logger: log.With("role", "scheduler")})
	if err != nil {
		return nil, err
	}
	schedConn, err := p.DialScheduler("unix://"+lis.Addr().String(), nil)
	if err != nil {
		return nil, err
	}
	schedClient := kilnv1.NewSchedulerClient(schedConn)

	if !cfg.NoAgent {
		boot, err := BooterFor(cfg.Runtime, cfg.DataDir, log)
		switch {
		case errors.Is(err, ErrNoKVM):
			log.Warn("no node-agent on this machine: invocations will answer 503 until an agent joins", "err", err)
		case err != nil:
			return nil, err
		default:
			lis, err := listenLocal(sockDir, "agent.sock")
			if err != nil {
				return nil, err
			}
			// Kernel stays unset: each image boots the kernel it was built with.
			if _, err := p.BuildAgent(AgentOptions{MemoryBytes: cfg.MemoryBytes, CacheDir: filepath.Join(cfg.DataDir, "cache"),
				Boot: boot, Images: images, Scheduler: schedClient, Listener: lis, Logger: log.With("role", "agent"),
				WorkerAnswerWithin: cfg.WorkerAnswerWithin, WorkerWorkWithin: cfg.WorkerWorkWithin, NoJail: cfg.NoJail}); err != nil {
				return nil, err
			}
			p.Agent = true
		}
	}

	gw, _, err := p.BuildGateway(ctx, GatewayOptions{
		Config: gateway.Config{Images: images, Scheduler: schedClient, Kernel: kernel,
			// The scheduler's view in process: no gRPC hop for /system/sla.
			SLA: gateway.SLAConfig{Nodes: func(ctx context.Context) (*kilnv1.ListNodesResponse, error) {
				return sched.ListNodes(ctx, &kilnv1.ListNodesRequest{})
			}}},
		Stores: stores, NATS: images.Conn(), CallbackAllow: cfg.CallbackAllow, Logger: log.With("role", "gateway"),
	})
	if err != nil {
		return nil, err
	}
	gwLis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: gateway: %v (is another `kiln up` running? choose another address with --listen)", ErrStart, err)
	}
	p.URL = p.ServeHTTP(gwLis, tracing.HTTPHandler(gw, "gateway"))
	log.Info("kiln is up", "url", p.URL, "data", cfg.DataDir, "kernel", kernelPath, "agent", p.Agent)
	return p, nil
}

// SocketDir is where Up's roles serve their gRPC, under the data
// directory: scheduler.sock and agent.sock.
const SocketDir = "sock"

// maxSocketPath is below the 108 bytes of sockaddr_un's sun_path, NUL
// included.
const maxSocketPath = 100

// socketDir makes the directory of Up's sockets: dataDir/sock, or, when
// that path is too long for a socket, a new directory in $TMPDIR removed
// on Close. Either is 0700 (made so even if it existed), so nobody else
// can reach a socket even in the moment between its bind and its chmod.
func (p *Parts) socketDir(dataDir string) (string, error) {
	dir := filepath.Join(dataDir, SocketDir)
	if len(filepath.Join(dir, "scheduler.sock")) >= maxSocketPath {
		tmp, err := os.MkdirTemp("", "kiln-sock-")
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrStart, err)
		}
		p.OnClose(func() error { return os.RemoveAll(tmp) })
		return tmp, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("%w: %v", ErrStart, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("%w: %v", ErrStart, err)
	}
	return dir, nil
}

// listenLocal listens on the unix socket dir/name, 0600, for gRPC between
// the roles of one process: no other user of the machine may connect
// (issue 13, finding 3; a TCP port on 127.0.0.1 was open to every local
// user). A socket left by a process that died is replaced: the stores
// Up opened first are locked, so no other Up on this data directory
// runs.
func listenLocal(dir, name string) (net.Listener, error) {
	path := filepath.Join(dir, name)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	return lis, nil
}
