package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
)

func (a *app) upCmd() *cobra.Command {
	var cfg platform.Config
	var mem, callbackAllow string
	var debug bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole platform on this machine (gateway, scheduler, agent, registry, image store)",
		Long: `Run the whole platform on this machine: the gateway (HTTP), the scheduler and a
node-agent (gRPC between them on unix sockets in DATA/sock that only you may
open), the function registry and the image store. State lives in --data
(default $KILN_DATA, else ~/.kiln). Stop with Ctrl-C.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.DataDir == "" {
				cfg.DataDir = defaultDataDir()
			}
			if cfg.Runtime != platform.RuntimeKVM && cfg.Runtime != platform.RuntimeProcess {
				return &ExitError{Code: 2, Err: fmt.Errorf("up: --runtime %q: want %s (the default) or %s (no isolation, development only)",
					cfg.Runtime, platform.RuntimeKVM, platform.RuntimeProcess)}
			}
			if mem != "" {
				m, err := gateway.ParseMemory(mem)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("up: --mem: %w", err)}
				}
				cfg.MemoryBytes = m
			}
			var err error
			if cfg.CallbackAllow, err = parseCallbackAllow("up", callbackAllow); err != nil {
				return err
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(a.err, &slog.HandlerOptions{Level: level}))
			p, err := platform.Up(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "Kiln is up at %s (data in %s)\n", p.URL, cfg.DataDir)
			if p.NoKeys {
				fmt.Fprintln(a.out, "no API keys yet: the management API is open to callers on this machine only; close it with `kiln keys create admin --save`")
			}
			if !p.Agent {
				fmt.Fprintln(a.out, "warning: /dev/kvm is not usable here, so no node-agent runs: deploys work, invocations answer 503")
			}
			fmt.Fprintf(a.out, "  deploy: kiln deploy hello --binary ./hello\n  call:   curl -sd world %s/function/hello\n", p.URL)
			<-cmd.Context().Done()
			cfg.Logger.Info("shutting down")
			return p.Close()
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.HTTPAddr, "listen", platform.DefaultHTTPAddr, "gateway listen address")
	fl.StringVar(&cfg.DataDir, "data", "", "data directory (default $KILN_DATA, else ~/.kiln)")
	fl.StringVar(&mem, "mem", "", "guest memory the node-agent may use (default half of RAM)")
	fl.StringVar(&cfg.KernelPath, "kernel", "", "guest kernel ELF (default: $KILN_KERNEL, beside kiln, or build/kernel)")
	fl.BoolVar(&debug, "debug", false, "log every invocation")
	fl.StringVar(&cfg.Runtime, "runtime", envString("KILN_RUNTIME", platform.RuntimeKVM), "kvm, or process (NO isolation: development and tests only) ($KILN_RUNTIME)")
	fl.BoolVar(&cfg.NoJail, "no-jail", os.Getenv("KILN_NO_JAIL") == "1", noJailUsage)
	fl.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "send traces over OTLP/HTTP to this collector, e.g. http://jaeger:4318 (default $OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off; docs/TRACING.md)")
	callbackAllowFlag(fl, &callbackAllow)
	return cmd
}

// noJailUsage describes --no-jail (kiln agent, kiln up).
const noJailUsage = "run the VM worker processes unjailed: as root with this process's environment, no namespaces, seccomp or cgroup (debugging only, logged loudly; without it the agent must run as root) ($KILN_NO_JAIL=1)"

func defaultDataDir() string {
	if d := os.Getenv("KILN_DATA"); d != "" {
		return d
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".kiln")
	}
	return ".kiln"
}
