package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/netpolicy"
)

// The cluster roles (docs/CLUSTER.md). Each flag falls back to an
// environment variable, named in its help, so a role is configured the
// same way on a command line, in a systemd unit or in a container.

// envString is an environment variable's value, or def when it is unset.
func envString(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// roleFlags are the flags every role shares.
type roleFlags struct {
	debug bool
}

func (f *roleFlags) add(fl *pflag.FlagSet) {
	fl.BoolVar(&f.debug, "debug", os.Getenv("KILN_DEBUG") == "1", "log every invocation ($KILN_DEBUG=1)")
}

// tlsFlags are the gRPC security flags of every cluster role.
func tlsFlags(fl *pflag.FlagSet, sec *platform.GRPCSecurity) {
	fl.StringVar(&sec.TLS.CA, "tls-ca", os.Getenv("KILN_TLS_CA"), "the cluster CA's certificate, for mTLS between the roles ($KILN_TLS_CA; `kiln ca init`)")
	fl.StringVar(&sec.TLS.Cert, "tls-cert", os.Getenv("KILN_TLS_CERT"), "this role's certificate ($KILN_TLS_CERT; `kiln ca issue`)")
	fl.StringVar(&sec.TLS.Key, "tls-key", os.Getenv("KILN_TLS_KEY"), "this role's key ($KILN_TLS_KEY)")
	fl.BoolVar(&sec.Insecure, "insecure-grpc", os.Getenv("KILN_INSECURE_GRPC") == "1",
		"plaintext gRPC that trusts anyone who can reach it, instead of --tls-*: only on a network nobody else is on ($KILN_INSECURE_GRPC=1)")
}

// callbackAllowFlag is --callback-allow of `kiln up` and `kiln gateway`.
func callbackAllowFlag(fl *pflag.FlagSet, s *string) {
	fl.StringVar(s, "callback-allow", os.Getenv("KILN_CALLBACK_ALLOW"),
		"CIDR[,CIDR...]: let async callbacks reach these addresses although they are loopback, private, link-local or this host's (default: public addresses only; $KILN_CALLBACK_ALLOW; docs/ASYNC.md)")
}

// parseCallbackAllow reads --callback-allow for command cmd.
func parseCallbackAllow(cmd, s string) ([]netip.Prefix, error) {
	l, err := netpolicy.ParseAllowList(s)
	if err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("%s: --callback-allow: %w", cmd, err)}
	}
	return l, nil
}

func (a *app) roleLogger(f *roleFlags, role string) *slog.Logger {
	level := slog.LevelInfo
	if f.debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(a.err, &slog.HandlerOptions{Level: level})).With("role", role)
}

// runRole starts a role, says where it serves, and stops it when the
// command's context ends (SIGINT, SIGTERM).
func (a *app) runRole(ctx context.Context, log *slog.Logger, name string, start func() (*platform.Role, error)) error {
	r, err := start()
	if err != nil {
		return err
	}
	if r.GRPCAddr != "" {
		fmt.Fprintf(a.out, "kiln %s: gRPC on %s, health and metrics on %s\n", name, r.GRPCAddr, r.HTTPURL)
	} else {
		fmt.Fprintf(a.out, "kiln %s: serving on %s\n", name, r.HTTPURL)
	}
	<-ctx.Done()
	log.Info("shutting down")
	return r.Close()
}

func (a *app) gatewayCmd() *cobra.Command {
	var cfg platform.GatewayConfig
	var rf roleFlags
	var callbackAllow string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the gateway role: the public HTTP API of a Kiln cluster",
		Long: `Run the gateway role of a Kiln cluster: the public HTTP API (invocations,
management, async queue) over a Redis registry, a NATS JetStream image store
and a scheduler. It keeps no state of its own: run as many as you like.
/healthz says the process is alive, /readyz that Redis, NATS and the
scheduler answer. See docs/CLUSTER.md.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.CallbackAllow, err = parseCallbackAllow("gateway", callbackAllow); err != nil {
				return err
			}
			log := a.roleLogger(&rf, "gateway")
			cfg.Logger = log
			return a.runRole(cmd.Context(), log, "gateway", func() (*platform.Role, error) {
				return platform.StartGateway(cmd.Context(), cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.HTTPAddr, "listen", envString("KILN_LISTEN", platform.DefaultHTTPAddr), "HTTP listen address ($KILN_LISTEN)")
	fl.StringVar(&cfg.RedisURL, "redis", os.Getenv("KILN_REDIS_URL"), "Redis URL of the registry and API keys, redis://HOST:PORT/DB ($KILN_REDIS_URL)")
	fl.StringVar(&cfg.NATSURL, "nats", os.Getenv("KILN_NATS_URL"), "NATS URL of the image store and async queue, nats://HOST:PORT ($KILN_NATS_URL)")
	fl.StringVar(&cfg.Scheduler, "scheduler", envString("KILN_SCHEDULER", platform.DefaultSchedulerAddr), "the scheduler's gRPC address ($KILN_SCHEDULER)")
	fl.StringVar(&cfg.KernelPath, "kernel", "", "guest kernel ELF packed into deployed images (default: $KILN_KERNEL, beside kiln, or build/kernel)")
	fl.StringVar(&cfg.APIKeysFile, "api-keys-file", os.Getenv("KILN_API_KEYS_FILE"), "a keys file read beside the keys in Redis ($KILN_API_KEYS_FILE; docs/AUTH.md)")
	callbackAllowFlag(fl, &callbackAllow)
	tlsFlags(fl, &cfg.GRPCSecurity)
	fl.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "send traces over OTLP/HTTP to this collector, e.g. http://jaeger:4318 (default $OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off; docs/TRACING.md)")
	rf.add(fl)
	return cmd
}

func (a *app) schedulerCmd() *cobra.Command {
	var cfg platform.SchedulerConfig
	var rf roleFlags
	var heartbeat string
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run the scheduler role: places invocations on the agents of a Kiln cluster",
		Long: `Run the scheduler role of a Kiln cluster. Agents register with it and
heartbeat over gRPC; gateways send it invocations, which it places on a node
with an idle warm instance, else one with room and the image cached, else any
node with room. A node that stops heartbeating is drained. It keeps no
durable state: restarted, it rebuilds its view from the agents, which
reconnect on their own. GET /nodes on its HTTP address lists the nodes.
See docs/CLUSTER.md.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if heartbeat != "" {
				d, err := time.ParseDuration(heartbeat)
				if err != nil || d < 10*time.Millisecond {
					return &ExitError{Code: 2, Err: fmt.Errorf("scheduler: --heartbeat %q: want a duration of at least 10ms, like 500ms", heartbeat)}
				}
				cfg.HeartbeatInterval = d
			}
			log := a.roleLogger(&rf, "scheduler")
			cfg.Logger = log
			return a.runRole(cmd.Context(), log, "scheduler", func() (*platform.Role, error) {
				return platform.StartScheduler(cmd.Context(), cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.GRPCAddr, "listen", envString("KILN_LISTEN", platform.DefaultSchedulerAddr), "gRPC listen address for agents and gateways ($KILN_LISTEN)")
	fl.StringVar(&cfg.HTTPAddr, "http", envString("KILN_HTTP_LISTEN", platform.DefaultSchedulerHTTPAddr), "listen address of /healthz, /readyz, /metrics, /nodes ($KILN_HTTP_LISTEN)")
	tlsFlags(fl, &cfg.GRPCSecurity)
	fl.StringVar(&heartbeat, "heartbeat", os.Getenv("KILN_HEARTBEAT"), "heartbeat interval agents are told to use; a node silent for 4 of them is drained (default 500ms; $KILN_HEARTBEAT)")
	fl.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "send traces over OTLP/HTTP to this collector, e.g. http://jaeger:4318 (default $OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off; docs/TRACING.md)")
	rf.add(fl)
	return cmd
}

func (a *app) agentCmd() *cobra.Command {
	var cfg platform.AgentConfig
	var rf roleFlags
	var mem, cacheSize, snapSize, perWorker string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node-agent role: runs functions on this host for a Kiln cluster",
		Long: `Run the node-agent role of a Kiln cluster: it registers with the scheduler,
heartbeats its capacity, warm instances and cached images, fetches images from
NATS, and runs each function in its own KVM virtual machine.

--runtime process runs functions as plain host processes instead, with NO
isolation: for development and tests on machines without /dev/kvm only, never
for code you do not trust. It must be asked for by name.
See docs/CLUSTER.md.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if mem != "" {
				m, err := gateway.ParseMemory(mem)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("agent: --mem: %w", err)}
				}
				cfg.MemoryBytes = m
			}
			if cacheSize != "" {
				n, err := gateway.ParseMemory(cacheSize)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("agent: --cache-size: %w", err)}
				}
				cfg.CacheBytes = int64(n)
			}
			if snapSize != "" {
				n, err := gateway.ParseMemory(snapSize)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("agent: --snapshot-size: %w", err)}
				}
				cfg.SnapshotBytes = int64(n)
			}
			if perWorker != "" {
				n, err := strconv.Atoi(perWorker)
				if err != nil || n < -1 {
					return &ExitError{Code: 2, Err: fmt.Errorf("agent: --vms-per-worker %q: want a count of VMs, or -1 to run them in the agent process", perWorker)}
				}
				cfg.VMsPerWorker = n
			}
			if cfg.Runtime != platform.RuntimeKVM && cfg.Runtime != platform.RuntimeProcess {
				return &ExitError{Code: 2, Err: fmt.Errorf("agent: --runtime %q: want %s (the default) or %s (no isolation, development only)",
					cfg.Runtime, platform.RuntimeKVM, platform.RuntimeProcess)}
			}
			if cfg.DataDir == "" {
				cfg.DataDir = filepath.Join(defaultDataDir(), "agent")
			}
			log := a.roleLogger(&rf, "agent")
			cfg.Logger = log
			return a.runRole(cmd.Context(), log, "agent", func() (*platform.Role, error) {
				return platform.StartAgent(cmd.Context(), cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.GRPCAddr, "listen", envString("KILN_LISTEN", platform.DefaultAgentAddr), "gRPC listen address of the Agent service ($KILN_LISTEN)")
	fl.StringVar(&cfg.Advertise, "advertise", os.Getenv("KILN_ADVERTISE"), "address the scheduler dials to reach this agent (default: the listen address; $KILN_ADVERTISE)")
	fl.StringVar(&cfg.HTTPAddr, "http", envString("KILN_HTTP_LISTEN", platform.DefaultAgentHTTPAddr), "listen address of /healthz, /readyz, /metrics ($KILN_HTTP_LISTEN)")
	fl.StringVar(&cfg.Scheduler, "scheduler", envString("KILN_SCHEDULER", platform.DefaultSchedulerAddr), "the scheduler's gRPC address ($KILN_SCHEDULER)")
	fl.StringVar(&cfg.NATSURL, "nats", os.Getenv("KILN_NATS_URL"), "NATS URL of the image store, nats://HOST:PORT ($KILN_NATS_URL)")
	fl.StringVar(&cfg.Node, "name", os.Getenv("KILN_NODE_NAME"), "this node's name in the cluster (default: the one in --tls-cert, else the host name; $KILN_NODE_NAME)")
	tlsFlags(fl, &cfg.GRPCSecurity)
	fl.StringVar(&mem, "mem", os.Getenv("KILN_NODE_MEMORY"), "guest memory this node may hand out, like 8G (default half of RAM; $KILN_NODE_MEMORY)")
	fl.StringVar(&cfg.DataDir, "data", "", "image cache directory (default $KILN_DATA/agent, else ~/.kiln/agent)")
	fl.StringVar(&cacheSize, "cache-size", os.Getenv("KILN_CACHE_SIZE"), "bound of the on-disk image cache, like 20G; least recently used images go first (default 10G; $KILN_CACHE_SIZE)")
	fl.StringVar(&snapSize, "snapshot-size", os.Getenv("KILN_SNAPSHOT_SIZE"), "bound of the disk the snapshot store uses, like 20G; least recently used snapshots without a live instance go first (default 10G; $KILN_SNAPSHOT_SIZE)")
	fl.StringVar(&cfg.Runtime, "runtime", envString("KILN_RUNTIME", platform.RuntimeKVM), "kvm, or process (NO isolation: development and tests only) ($KILN_RUNTIME)")
	fl.StringVar(&cfg.KernelPath, "kernel", "", "boot this guest kernel instead of the one in each image (kernel development)")
	fl.BoolVar(&cfg.NoJail, "no-jail", os.Getenv("KILN_NO_JAIL") == "1", noJailUsage)
	fl.StringVar(&perWorker, "vms-per-worker", os.Getenv("KILN_VMS_PER_WORKER"), "VMs each VM host process holds before another is started (default 256; -1: run VMs inside the agent process; $KILN_VMS_PER_WORKER)")
	fl.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "send traces over OTLP/HTTP to this collector, e.g. http://jaeger:4318 (default $OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off; docs/TRACING.md)")
	rf.add(fl)
	return cmd
}
