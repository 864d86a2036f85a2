package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

func (a *app) versionsCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "versions NAME",
		Short: "List every version of function NAME and the aliases that route to it",
		Example: `  kiln versions hello
  kiln versions hello -o json`,
		Args:              usage(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeFunctionNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("versions", output); err != nil {
				return err
			}
			var vl gateway.VersionList
			if err := a.getJSON(cmd.Context(), "/system/functions/"+url.PathEscape(args[0])+"/versions", &vl); err != nil {
				return err
			}
			if output == "json" {
				return a.printJSON(vl)
			}
			// Which aliases send traffic to each version, and how much.
			routes := map[uint64][]string{}
			for _, al := range vl.Aliases {
				for _, t := range al.Targets {
					s := al.Name
					if t.Weight != 100 {
						s += fmt.Sprintf(" (%d%%)", t.Weight)
					}
					routes[t.Version] = append(routes[t.Version], s)
				}
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tKIND\tMEMORY\tTIMEOUT\tIMAGE\tDEPLOYED\tALIASES")
			for _, f := range vl.Versions {
				rs := routes[f.Version]
				sort.Strings(rs)
				fmt.Fprintf(tw, "%d\t%s\t%dM\t%s\t%s\t%s\t%s\n", f.Version, f.Kind, f.MemoryBytes>>20,
					time.Duration(f.TimeoutMs)*time.Millisecond, shortDigest(f.ImageDigest),
					f.Created.Local().Format(time.DateTime), strings.Join(rs, ", "))
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func checkOutput(verb, output string) error {
	if output != "table" && output != "json" {
		return &ExitError{Code: 2, Err: fmt.Errorf("%s: -o %q: use table or json", verb, output)}
	}
	return nil
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// sendJSON sends in (when not nil) as a JSON body and decodes a 2xx answer
// into out (when not nil); any other answer is the gateway's error.
func (a *app) sendJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	size := int64(-1)
	hdr := http.Header{}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, size = bytes.NewReader(b), int64(len(b))
		hdr.Set("Content-Type", "application/json")
	}
	resp, err := a.do(ctx, method, path, nil, hdr, body, size)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return failure(resp, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("the gateway at %s answered %s %s with something that is not the expected JSON: %w", a.serverURL(), method, path, err)
		}
	}
	return nil
}

// routeText renders targets as "v3 90%, v4 10%", or "v3" for one version.
func routeText(to []registry.Target) string {
	if len(to) == 1 && to[0].Weight == 100 {
		return fmt.Sprintf("v%d", to[0].Version)
	}
	parts := make([]string, len(to))
	for i, t := range to {
		parts[i] = fmt.Sprintf("v%d %d%%", t.Version, t.Weight)
	}
	return strings.Join(parts, ", ")
}
