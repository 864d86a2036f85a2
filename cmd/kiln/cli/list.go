package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/store/registry"
)

func (a *app) listCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List deployed functions (latest version of each)",
		Args:    usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return &ExitError{Code: 2, Err: fmt.Errorf("list: -o %q: use table or json", output)}
			}
			var fs []registry.Function
			if err := a.getJSON(cmd.Context(), "/system/functions", &fs); err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(a.out)
				enc.SetIndent("", "  ")
				if fs == nil {
					fs = []registry.Function{}
				}
				return enc.Encode(fs)
			}
			if len(fs) == 0 {
				fmt.Fprintln(a.out, "no functions deployed: deploy one with `kiln deploy NAME --binary FILE`")
				return nil
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tKIND\tMEMORY\tTIMEOUT\tIMAGE\tDEPLOYED")
			for _, f := range fs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%dM\t%s\t%s\t%s\n", f.Name, f.Version, f.Kind, f.MemoryBytes>>20,
					time.Duration(f.TimeoutMs)*time.Millisecond, shortDigest(f.ImageDigest), f.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func shortDigest(d string) string {
	h := strings.TrimPrefix(d, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}
