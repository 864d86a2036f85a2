package cli

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

func (a *app) deleteCmd() *cobra.Command {
	var yes bool
	var output string
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete function NAME with all its versions and aliases",
		Long: `Delete function NAME with every version and alias: calls to it answer 404
from then on. Its images stay in the image store.

On a terminal kiln asks first; elsewhere (a script, CI) it refuses unless
--yes says the deletion is meant.`,
		Example: `  kiln delete hello
  kiln delete hello --yes`,
		Args:              usage(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeFunctionNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("delete", output); err != nil {
				return err
			}
			name := args[0]
			if strings.Contains(name, "@") {
				return &ExitError{Code: 2, Err: fmt.Errorf("delete: %q: delete removes a whole function, give its NAME; to drop an alias use `kiln alias NAME ALIAS --delete`", name)}
			}
			if err := registry.CheckName(name); err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("delete: %q: %v (see `kiln list` for the deployed functions)", name, err)}
			}
			ctx := cmd.Context()
			path := "/system/functions/" + url.PathEscape(name)
			if !yes {
				if !isTerminalReader(a.in) {
					return &ExitError{Code: 2, Err: fmt.Errorf("delete %s: not asking without a terminal: pass --yes to delete it with all its versions and aliases", name)}
				}
				// Say what would go before asking, so the answer is informed.
				var d gateway.Described
				if err := a.getJSON(ctx, path, &d); err != nil {
					return fmt.Errorf("delete %s: %w", name, err)
				}
				fmt.Fprintf(a.err, "Delete function %s with its %d version(s) and aliases? Calls to it will answer 404. Type %s to confirm: ", name, len(d.Versions), name)
				answer, err := bufio.NewReader(a.in).ReadString('\n')
				if err != nil && err != io.EOF {
					return err
				}
				if strings.TrimSpace(answer) != name {
					return &ExitError{Code: 1, Err: fmt.Errorf("delete %s: not confirmed, nothing deleted", name)}
				}
			}
			resp, err := a.do(ctx, "DELETE", path, nil, nil, nil, -1)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
				return fmt.Errorf("delete %s: %w", name, failure(resp, b))
			}
			if output == "json" {
				return a.printJSON(map[string]any{"function": name, "deleted": true})
			}
			fmt.Fprintf(a.out, "deleted %s: calls to it now answer 404\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "delete without asking")
	outputFlag(cmd, &output)
	return cmd
}

// isTerminalReader reports whether r is a terminal someone can answer on.
func isTerminalReader(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
