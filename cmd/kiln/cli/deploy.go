package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kilnfaas/kiln/gateway"
)

func (a *app) deployCmd() *cobra.Command {
	var p gateway.DeployParams
	var binary string
	var timeout time.Duration
	var private bool
	cmd := &cobra.Command{
		Use:   "deploy NAME [DIR | --binary FILE]",
		Short: "Build and deploy function NAME from its source directory, or deploy a static x86-64 program (a new version each time)",
		Example: `  kiln deploy hello ./hello
  kiln deploy wc ./wordcount --kind exec --timeout 2s
  kiln deploy hello --binary ./hello --kind serve
  kiln deploy wc --binary ./wc --kind exec --mem 32M --timeout 2s --env LANG=C`,
		Args: usage(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if private {
				p.Private = "true"
			}
			if timeout > 0 {
				p.Timeout = timeout.String()
			}
			var upload io.Reader
			var size int64
			switch {
			case len(args) == 2 && binary != "":
				return &ExitError{Code: 2, Err: fmt.Errorf("deploy: give a source directory or --binary FILE, not both")}
			case len(args) == 2 && isDir(args[1]):
				elf, err := a.buildSource(cmd.Context(), args[1])
				if err != nil {
					return err
				}
				upload, size = bytes.NewReader(elf), int64(len(elf))
			case len(args) == 2:
				binary = args[1] // a built program named in place of a directory
			case binary == "":
				return &ExitError{Code: 2, Err: fmt.Errorf("deploy: give the function's source directory (kiln deploy %s ./dir) or --binary FILE", p.Name)}
			}
			if upload == nil {
				f, err := os.Open(binary)
				if err != nil {
					return fmt.Errorf("deploy: %w", err)
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
					progressbar.OptionSetDescription("uploading "+p.Name),
					progressbar.OptionShowBytes(true),
					progressbar.OptionClearOnFinish(),
				)
				r := progressbar.NewReader(upload, bar)
				body = &r
			}
			resp, err := a.do(cmd.Context(), "POST", "/system/functions", p.Values(), http.Header{"Content-Type": {"application/octet-stream"}}, body, size)
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
				return fmt.Errorf("deploy %s: %w", p.Name, failure(resp, b))
			}
			var d gateway.Deployed
			if err := json.Unmarshal(b, &d); err != nil {
				return fmt.Errorf("deploy %s: unexpected answer %q", p.Name, b)
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
	return cmd
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
