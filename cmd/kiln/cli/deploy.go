package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kilnfaas/kiln/gateway"
)

func (a *app) deployCmd() *cobra.Command {
	var p gateway.DeployParams // from flags: set only where a flag was given
	var binary, output string
	var timeout time.Duration
	var private bool
	cmd := &cobra.Command{
		Use:   "deploy [NAME] [DIR | --binary FILE]",
		Short: "Build and deploy function NAME from its source directory, or deploy a static x86-64 program (a new version each time)",
		Long: `Build and deploy a function from its source directory (Go or C), or deploy
a static x86-64 program with --binary. Every deploy makes a new version
and points 'latest' at it.

A kiln.yaml in the source directory (written by 'kiln new') holds the
function's deploy settings: name, kind, memory, timeout, env, args,
private, max_concurrency, rate, burst, max_body, async_retries, min_warm,
max_instances, keep_alive, fresh, deadline, target. 'kiln deploy' with no
NAME deploys the current directory under the name in its kiln.yaml. A
flag wins over the same setting in the file; --env entries replace the
file's entry of the same KEY.`,
		Example: `  kiln deploy                      # here: ./kiln.yaml names the function
  kiln deploy hello ./hello
  kiln deploy wc ./wordcount --kind exec --timeout 2s
  kiln deploy hello --binary ./hello --kind serve
  kiln deploy wc --binary ./wc --kind exec --mem 32M --timeout 2s --env LANG=C -o json`,
		Args:              usage(cobra.RangeArgs(0, 2)),
		ValidArgsFunction: a.completeDeployArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("deploy", output); err != nil {
				return err
			}
			if cmd.Flags().Changed("private") {
				p.Private = strconv.FormatBool(private)
			}
			if cmd.Flags().Changed("timeout") {
				p.Timeout = timeout.String()
			}
			var dir string // the source directory, "" for --binary alone
			switch {
			case len(args) == 2 && binary != "":
				return &ExitError{Code: 2, Err: fmt.Errorf("deploy: give a source directory or --binary FILE, not both")}
			case len(args) == 2 && isDir(args[1]):
				dir = args[1]
			case len(args) == 2:
				binary = args[1] // a built program named in place of a directory
			case len(args) == 0 && binary == "":
				dir = "."
			case len(args) == 1 && binary == "":
				hint := ""
				if isDir(args[0]) {
					hint = fmt.Sprintf(", or deploy the directory %s as its kiln.yaml says with `cd %s && kiln deploy`", args[0], args[0])
				}
				return &ExitError{Code: 2, Err: fmt.Errorf("deploy: give the function's source directory (kiln deploy %s ./dir) or --binary FILE%s", args[0], hint)}
			}
			// The manifest comes with source (or with the directory kiln
			// deploy runs in when no NAME is given), never from elsewhere.
			var file gateway.DeployParams
			manifestDir := dir
			if len(args) == 0 {
				manifestDir = "."
			}
			if manifestDir != "" {
				m, path, found, err := readManifest(manifestDir)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("deploy: %w", err)}
				}
				if found {
					file = m
					if len(args) > 0 && m.Name != "" && m.Name != args[0] {
						fmt.Fprintf(a.err, "kiln: deploying as %s, as the command line says (%s names %s)\n", args[0], path, m.Name)
					}
				}
				if len(args) == 0 && file.Name == "" {
					how := fmt.Sprintf("add `name: NAME` to %s", path)
					if !found {
						how = fmt.Sprintf("no %s here: write one with a `name:` line (kiln new writes one)", path)
					}
					return &ExitError{Code: 2, Err: fmt.Errorf("deploy: which function? give its NAME (kiln deploy NAME DIR) or %s", how)}
				}
			}
			if len(args) > 0 {
				p.Name = args[0]
			}
			name := p.Name
			if name == "" {
				name = file.Name
			}

			var upload io.Reader
			var size int64
			if dir != "" {
				elf, err := a.buildSource(cmd.Context(), dir)
				if err != nil {
					return err
				}
				upload, size = bytes.NewReader(elf), int64(len(elf))
			} else {
				f, err := os.Open(binary)
				if err != nil {
					return fmt.Errorf("deploy: %w (--binary takes a built static x86-64 program; `kiln build DIR -o FILE` builds one, or deploy the source with `kiln deploy %s DIR`)", err, name)
				}
				defer f.Close()
				st, err := f.Stat()
				if err != nil {
					return fmt.Errorf("deploy: %w", err)
				}
				upload, size = f, st.Size()
			}
			body := upload
			var bar *progressbar.ProgressBar
			if isTerminal(a.err) {
				bar = progressbar.NewOptions64(size,
					progressbar.OptionSetWriter(a.err),
					progressbar.OptionSetDescription("uploading "+name),
					progressbar.OptionShowBytes(true),
					progressbar.OptionShowCount(), // bytes sent out of the total
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(50*time.Millisecond),
					progressbar.OptionClearOnFinish(),
				)
				r := progressbar.NewReader(upload, bar)
				body = &r
			}
			q := overlay(file, p)
			q.Set("name", name)
			resp, err := a.do(cmd.Context(), "POST", "/system/functions", q, http.Header{"Content-Type": {"application/octet-stream"}}, body, size)
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if resp.StatusCode != 201 {
				return fmt.Errorf("deploy %s: %w", name, failure(resp, b))
			}
			var d gateway.Deployed
			if err := json.Unmarshal(b, &d); err != nil {
				return fmt.Errorf("deploy %s: unexpected answer %q", name, b)
			}
			if output == "json" {
				return a.printJSON(deployResult(d, a.serverURL()))
			}
			fmt.Fprintf(a.out, "deployed %s version %d (%s, %d MiB, timeout %s)\n  image %s\n  call it: curl -d 'world' %s/function/%s\n",
				d.Name, d.Version, d.Kind, d.MemoryBytes>>20, time.Duration(d.TimeoutMs)*time.Millisecond, d.Digest, a.serverURL(), d.Name)
			if l := describeLimits(d.Limits); l != "" {
				fmt.Fprintf(a.out, "  limits: %s\n", l)
			}
			if d.DeadlineMs > 0 {
				fmt.Fprintf(a.out, "  SLA: %g%% within %s\n", d.Target*100, time.Duration(d.DeadlineMs)*time.Millisecond)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&binary, "binary", "", "the static x86-64 ELF to deploy")
	fl.StringVar(&p.Kind, "kind", "", "exec (stdin→stdout, one run per call) or serve (Kiln wire protocol); default serve")
	fl.StringVar(&p.Memory, "mem", "", "guest memory, e.g. 64M (default 64M)")
	fl.DurationVar(&timeout, "timeout", 0, "per-invocation timeout, e.g. 5s (default 30s)")
	fl.StringArrayVar(&p.Env, "env", nil, "environment entry KEY=VALUE (repeatable)")
	fl.StringArrayVar(&p.Args, "arg", nil, "argument after argv[0] (repeatable)")
	fl.BoolVar(&private, "private", false, "callers need an API key (default: public)")
	fl.StringVar(&p.MaxConcurrency, "max-concurrency", "", "invocations in flight at once, per gateway (default: no limit)")
	fl.StringVar(&p.Rate, "rate", "", "requests per second or per unit, e.g. 10, 10/s, 600/m; per gateway (default: no limit)")
	fl.StringVar(&p.Burst, "burst", "", "requests allowed at once above --rate (default: the rate, at least 1)")
	fl.StringVar(&p.MaxBody, "max-body", "", "largest request body, e.g. 256K, up to 64M (default: the gateway's, 6M)")
	fl.StringVar(&p.MinWarm, "min-warm", "", "instances kept booted and idle per node (default 0: the first call restores a snapshot)")
	fl.StringVar(&p.MaxInstances, "max-instances", "", "instances per node at most (default: as many as memory holds)")
	fl.StringVar(&p.KeepAlive, "keep-alive", "", "how long an idle instance above --min-warm lives, e.g. 30s (default: the agent's, 60s)")
	fl.StringVar(&p.Fresh, "fresh", "", "true: every call runs on its own snapshot restore, destroyed afterwards (no state between calls)")
	fl.StringVar(&p.Deadline, "deadline", "", "SLA: the latency each call should meet, e.g. 50ms (with --target)")
	fl.StringVar(&p.Target, "target", "", "SLA: percent of calls that must meet --deadline, e.g. 99.9")
	fl.StringVar(&p.AsyncRetries, "async-retries", "", "retries of a failed async invocation (POST /async-function/NAME), 0 to 20 (default 3)")
	outputFlag(cmd, &output)
	return cmd
}

// DeployResult is what `kiln deploy -o json` prints: the new version and
// every setting it was deployed with, each field always present.
type DeployResult struct {
	Name         string           `json:"name"`
	Version      uint64           `json:"version"`
	Digest       string           `json:"digest"`
	Kind         string           `json:"kind"`
	MemoryBytes  uint64           `json:"memory_bytes"`
	TimeoutMs    int64            `json:"timeout_ms"`
	Limits       DescribedLimits  `json:"limits"`
	Scaling      DescribedScaling `json:"scaling"`
	SLA          DescribedSLA     `json:"sla"`
	AsyncRetries int              `json:"async_retries"`
	// URL is where to call it.
	URL string `json:"url"`
}

func deployResult(d gateway.Deployed, server string) DeployResult {
	return DeployResult{
		Name: d.Name, Version: d.Version, Digest: d.Digest, Kind: d.Kind, MemoryBytes: d.MemoryBytes, TimeoutMs: d.TimeoutMs,
		Limits: DescribedLimits{Private: d.Private, MaxConcurrency: d.MaxConcurrency, RatePerSecond: d.RatePerSecond,
			RateBurst: d.RateBurst, MaxBodyBytes: d.MaxBodyBytes},
		Scaling:      DescribedScaling{MinWarm: d.MinWarm, MaxInstances: d.MaxInstances, KeepAliveMs: d.KeepAliveMs, Fresh: d.Fresh},
		SLA:          DescribedSLA{DeadlineMs: d.DeadlineMs, Target: d.Target},
		AsyncRetries: d.AsyncRetries,
		URL:          server + "/function/" + d.Name,
	}
}

// isDir reports whether path names a directory (following links).
func isDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// isTerminal reports whether w is a terminal, so progress output appears
// only where a person watches it.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
