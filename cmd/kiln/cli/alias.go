package cli

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

func (a *app) aliasCmd() *cobra.Command {
	var (
		output string
		del    bool
	)
	cmd := &cobra.Command{
		Use:   "alias NAME [ALIAS [VERSION[:WEIGHT] [VERSION:WEIGHT]]]",
		Short: "List, show, point, split or delete the aliases of function NAME",
		Long: `Aliases name a version of a function: callers invoke NAME@ALIAS.

  kiln alias NAME                      list NAME's aliases
  kiln alias NAME ALIAS                show one alias and its history
  kiln alias NAME ALIAS VERSION        route all of ALIAS's traffic to VERSION
  kiln alias NAME ALIAS V1:W1 V2:W2    split it between two versions, weights in percent adding up to 100
  kiln alias NAME ALIAS --delete       delete it

Every change is atomic: a call sees the old route or the new one, never a
mix. 'kiln rollback NAME --alias ALIAS' undoes the last change. 'latest'
always follows the newest deploy and cannot be set or deleted.`,
		Example: `  kiln alias hello prod 3
  kiln alias hello prod 3:90 4:10
  kiln alias hello prod --delete`,
		Args:              usage(cobra.RangeArgs(1, 4)),
		ValidArgsFunction: a.completeAliasArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("alias", output); err != nil {
				return err
			}
			name := args[0]
			base := "/system/functions/" + url.PathEscape(name) + "/aliases"
			ctx := cmd.Context()
			switch {
			case del && len(args) != 2:
				return &ExitError{Code: 2, Err: fmt.Errorf("alias: --delete takes NAME and ALIAS only\nusage: kiln alias NAME ALIAS --delete")}
			case del:
				if err := a.sendJSON(ctx, "DELETE", base+"/"+url.PathEscape(args[1]), nil, nil); err != nil {
					return err
				}
				if output == "json" {
					return a.printJSON(map[string]any{"function": name, "alias": args[1], "deleted": true})
				}
				fmt.Fprintf(a.out, "deleted alias %s of %s: calls to %s@%s now answer 404\n", args[1], name, name, args[1])
				return nil
			case len(args) == 1:
				var as []registry.Alias
				if err := a.getJSON(ctx, base, &as); err != nil {
					return err
				}
				if output == "json" {
					return a.printJSON(as)
				}
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ALIAS\tROUTES TO\tROLLBACK GOES TO")
				for _, al := range as {
					back := "-"
					if len(al.History) > 0 {
						back = routeText(al.History[0])
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", al.Name, routeText(al.Targets), back)
				}
				return tw.Flush()
			case len(args) == 2:
				var al registry.Alias
				if err := a.getJSON(ctx, base+"/"+url.PathEscape(args[1]), &al); err != nil {
					return err
				}
				return a.printAlias(name, al, output)
			}
			to, err := parseTargets(args[2:])
			if err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("alias: %v\nusage: kiln alias NAME ALIAS VERSION, or kiln alias NAME ALIAS V1:W1 V2:W2 with weights adding up to 100", err)}
			}
			req := gateway.AliasRequest{Versions: to}
			var al registry.Alias
			if err := a.sendJSON(ctx, "PUT", base+"/"+url.PathEscape(args[1]), req, &al); err != nil {
				return err
			}
			return a.printAlias(name, al, output)
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().BoolVar(&del, "delete", false, "delete the alias")
	return cmd
}

func (a *app) printAlias(name string, al registry.Alias, output string) error {
	if output == "json" {
		return a.printJSON(al)
	}
	fmt.Fprintf(a.out, "%s@%s → %s\n", name, al.Name, routeText(al.Targets))
	for i, h := range al.History {
		if i == 0 {
			fmt.Fprintf(a.out, "  before: %s  (kiln rollback %s --alias %s goes back to it)\n", routeText(h), name, al.Name)
		} else {
			fmt.Fprintf(a.out, "          %s\n", routeText(h))
		}
	}
	return nil
}

// parseTargets reads "3" or "3:90 4:10" from the command line; the gateway
// checks the rest (versions exist, weights add up).
func parseTargets(args []string) ([]registry.Target, error) {
	var to []registry.Target
	for _, s := range args {
		vs, ws, weighted := strings.Cut(s, ":")
		v, err := strconv.ParseUint(strings.TrimPrefix(vs, "v"), 10, 64)
		if err != nil || v == 0 {
			return nil, fmt.Errorf("%q: the version must be a number from 1 (see `kiln versions NAME`)", s)
		}
		t := registry.Target{Version: v}
		if weighted {
			w, err := strconv.ParseUint(strings.TrimSuffix(ws, "%"), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%q: the weight after ':' must be a whole percentage, e.g. %d:90", s, v)
			}
			t.Weight = uint32(w)
		}
		to = append(to, t)
	}
	if len(to) == 2 && (to[0].Weight == 0 || to[1].Weight == 0) {
		return nil, fmt.Errorf("a split needs a weight on both versions, e.g. %d:90 %d:10", to[0].Version, to[1].Version)
	}
	return to, nil
}
