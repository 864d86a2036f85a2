package cli

import (
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
	cmd := &cobra.Command{
		Use:   "deploy NAME --binary FILE",
		Short: "Deploy a static x86-64 program as function NAME (a new version each time)",
		Example: `  kiln deploy hello --binary ./hello --kind serve
  kiln deploy wc --binary ./wc --kind exec --mem 32M --timeout 2s --env LANG=C`,
		Args: usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if binary == "" {
				return &ExitError{Code: 2, Err: fmt.Errorf("deploy: --binary FILE is required")}
			}
			if timeout > 0 {
				p.Timeout = timeout.String()
			}
			f, err := os.Open(binary)
			if err != nil {
				return fmt.Errorf("deploy: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return fmt.Errorf("deploy: %w", err)
			}
			var body io.Reader = f
			var bar *progressbar.ProgressBar
			if isTerminal(a.err) {
				bar = progressbar.NewOptions64(st.Size(),
					progressbar.OptionSetWriter(a.err),
					progressbar.OptionSetDescription("uploading "+p.Name),
					progressbar.OptionShowBytes(true),
					progressbar.OptionClearOnFinish(),
				)
				r := progressbar.NewReader(f, bar)
				body = &r
			}
			resp, err := a.do(cmd.Context(), "POST", "/system/functions", p.Values(), http.Header{"Content-Type": {"application/octet-stream"}}, body, st.Size())
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
	return cmd
}

// isTerminal reports whether w is a terminal, so progress output appears
// only where a person watches it.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
