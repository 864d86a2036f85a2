package cli

import (
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

func (a *app) rollbackCmd() *cobra.Command {
	var output, alias string
	cmd := &cobra.Command{
		Use:   "rollback NAME [--alias prod]",
		Short: "Point an alias of NAME back where it was before its last change",
		Long: `Rollback moves an alias back to the route it had before its last change,
atomically; nothing is redeployed. Repeat it to go further back (an alias
remembers its last 10 routes). 'latest' always follows the newest deploy and
cannot be rolled back: point another alias at the version you want instead.`,
		Example: `  kiln rollback hello
  kiln rollback hello --alias beta`,
		Args:              usage(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeFunctionNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("rollback", output); err != nil {
				return err
			}
			var al registry.Alias
			path := "/system/functions/" + url.PathEscape(args[0]) + "/rollback"
			if err := a.sendJSON(cmd.Context(), "POST", path, gateway.RollbackRequest{Alias: alias}, &al); err != nil {
				return err
			}
			if output == "json" {
				return a.printJSON(al)
			}
			fmt.Fprintf(a.out, "rolled back: ")
			return a.printAlias(args[0], al, output)
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().StringVar(&alias, "alias", "prod", "the alias to roll back")
	cmd.RegisterFlagCompletionFunc("alias", func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return a.aliasNames(cmd.Context(), args[0], toComplete), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}
