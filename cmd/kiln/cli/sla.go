package cli

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
)

func (a *app) slaCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "sla [NAME]",
		Short: "Show how functions meet their SLA: attainment over 1h and 1d, error budget left, cold-start share",
		Long: `Show, for every function deployed with an SLA (kiln deploy … --deadline 50ms
--target 99.9), or for NAME alone: its deadline and target, the share of calls
that succeeded within the deadline over the last hour and day, the error budget
left over the last day (100% untouched, 0% spent, negative overspent), the
share of calls that started cold, and its warm instances ("-" where the
gateway cannot see them). See docs/SLA.md.`,
		Args:              usage(cobra.MaximumNArgs(1)),
		ValidArgsFunction: a.completeFunctionNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return &ExitError{Code: 2, Err: fmt.Errorf("sla: -o %q: use table or json", output)}
			}
			var reports []gateway.SLAReport
			var body any
			if len(args) == 1 {
				var rep gateway.SLAReport
				if err := a.getJSON(cmd.Context(), "/system/sla/"+url.PathEscape(args[0]), &rep); err != nil {
					return err
				}
				reports, body = []gateway.SLAReport{rep}, rep
			} else {
				var list gateway.SLAList
				if err := a.getJSON(cmd.Context(), "/system/sla", &list); err != nil {
					return err
				}
				if list.Functions == nil {
					list.Functions = []gateway.SLAReport{}
				}
				reports, body = list.Functions, list
			}
			if output == "json" {
				enc := json.NewEncoder(a.out)
				enc.SetIndent("", "  ")
				return enc.Encode(body)
			}
			if len(reports) == 0 {
				fmt.Fprintln(a.out, "no function has an SLA: deploy one with `kiln deploy NAME … --deadline 50ms --target 99.9`")
				return nil
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDEADLINE\tTARGET\tATTAINMENT 1H\tATTAINMENT 1D\tBUDGET LEFT\tCOLD STARTS\tCALLS 1D\tWARM")
			for _, r := range reports {
				warm := "-"
				if r.WarmInstances != nil {
					warm = strconv.Itoa(*r.WarmInstances)
				}
				fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Function, time.Duration(r.DeadlineMs)*time.Millisecond,
					percent(r.Target, -1), attainment(r.Attainment1h), attainment(r.Attainment1d),
					percent(r.ErrorBudgetLeft, 0), percent(r.ColdStartShare, 1), r.Day.Invocations, warm)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// percent shows fraction f as a percentage with prec decimals (-1: as
// many as it needs, for targets such as 99.95 %).
func percent(f float64, prec int) string {
	if prec < 0 {
		return strconv.FormatFloat(f*100, 'g', 6, 64) + "%"
	}
	return strconv.FormatFloat(f*100, 'f', prec, 64) + "%"
}

// attainment shows a window's attainment; "-" when it had no calls. Two
// decimals: a 99.9 % target needs them to tell a hit from a miss.
func attainment(a *float64) string {
	if a == nil {
		return "-"
	}
	return percent(*a, 2)
}
