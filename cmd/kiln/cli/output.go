package cli

import "github.com/spf13/cobra"

// outputFlag adds -o/--output (table for people, the default; json for
// programs: one document, field names as the gateway's API has them).
func outputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", "table", "table or json")
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
}
