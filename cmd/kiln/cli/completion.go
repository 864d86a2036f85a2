package cli

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

// completionTimeout bounds the gateway round trip behind one press of Tab:
// a shell that hangs on a dead server is worse than no suggestions.
const completionTimeout = 2 * time.Second

// Dynamic completion asks the gateway; every failure (unreachable, 401, a
// broken config file) yields no suggestions and no message, since anything
// printed would land in the middle of the user's command line.

// functionNames lists the deployed functions starting with prefix.
func (a *app) functionNames(ctx context.Context, prefix string) []string {
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	var fs []registry.Function
	if err := a.getJSON(ctx, "/system/functions", &fs); err != nil {
		return nil
	}
	var names []string
	for _, f := range fs {
		if strings.HasPrefix(f.Name, prefix) {
			names = append(names, f.Name)
		}
	}
	return names
}

// refsOf lists NAME@ALIAS and NAME@VERSION for the function name, those
// starting with prefix.
func (a *app) refsOf(ctx context.Context, name, prefix string) []string {
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	var vl gateway.VersionList
	if err := a.getJSON(ctx, "/system/functions/"+url.PathEscape(name)+"/versions", &vl); err != nil {
		return nil
	}
	var refs []string
	add := func(ref, what string) {
		if s := name + "@" + ref; strings.HasPrefix(s, prefix) {
			refs = append(refs, s+"\t"+what)
		}
	}
	for _, al := range vl.Aliases {
		add(al.Name, "alias → "+routeText(al.Targets))
	}
	for i := len(vl.Versions) - 1; i >= 0; i-- { // newest first
		v := vl.Versions[i]
		add(strconv.FormatUint(v.Version, 10), "version deployed "+v.Created.Local().Format(time.DateTime))
	}
	return refs
}

// completeFunctionNames completes the first argument with a function name.
func (a *app) completeFunctionNames(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return a.functionNames(cmd.Context(), toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeFunctionRefs completes NAME, and NAME@ALIAS or NAME@VERSION once
// an '@' is typed.
func (a *app) completeFunctionRefs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	if name, _, at := strings.Cut(toComplete, "@"); at {
		return a.refsOf(cmd.Context(), name, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
	return a.functionNames(cmd.Context(), toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeAliasArgs completes `kiln alias NAME ALIAS`: the function, then
// its aliases.
func (a *app) completeAliasArgs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	switch len(args) {
	case 0:
		return a.functionNames(cmd.Context(), toComplete), cobra.ShellCompDirectiveNoFileComp
	case 1:
		return a.aliasNames(cmd.Context(), args[0], toComplete), cobra.ShellCompDirectiveNoFileComp
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// aliasNames lists the aliases of function name starting with prefix.
func (a *app) aliasNames(ctx context.Context, name, prefix string) []string {
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	var as []registry.Alias
	if err := a.getJSON(ctx, "/system/functions/"+url.PathEscape(name)+"/aliases", &as); err != nil {
		return nil
	}
	var names []string
	for _, al := range as {
		if strings.HasPrefix(al.Name, prefix) {
			names = append(names, al.Name+"\t→ "+routeText(al.Targets))
		}
	}
	return names
}

// completeDeployArgs completes a deployed function's name (a redeploy is
// the common case), then the source directory or program from the files.
func (a *app) completeDeployArgs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return a.functionNames(cmd.Context(), toComplete), cobra.ShellCompDirectiveNoFileComp
	}
	return nil, cobra.ShellCompDirectiveDefault
}
