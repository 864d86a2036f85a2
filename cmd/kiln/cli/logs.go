package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/store/logstore"
)

// maxLogLine bounds one NDJSON line from the gateway: a stored line is at
// most logstore.MaxLineBytes, and escaping it as JSON at most sextuples it.
const maxLogLine = 6*logstore.MaxLineBytes + 4096

func (a *app) logsCmd() *cobra.Command {
	var (
		output, since, invocation string
		limit                     int
		follow                    bool
	)
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Show what function NAME wrote to stderr, per invocation",
		Long: `Show what function NAME wrote to stderr, one line per row:

  TIME  INVOCATION  NODE  LINE

The newest --limit lines (100 unless told) are shown, oldest first; with
--follow, new lines are printed as invocations end, until interrupted.
Each function keeps its newest lines only (docs/LOGS.md).`,
		Example: `  kiln logs hello
  kiln logs hello -f
  kiln logs hello --since 10m --limit 1000
  kiln logs hello --invocation 0b7c…  (the X-Kiln-Invocation-Id of a call)
  kiln logs hello -o json             (one JSON object per line)`,
		Args:              usage(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeFunctionNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("logs", output); err != nil {
				return err
			}
			q := url.Values{}
			if since != "" {
				q.Set("since", since)
			}
			if cmd.Flags().Changed("limit") {
				q.Set("limit", strconv.Itoa(limit))
			}
			if invocation != "" {
				q.Set("invocation", invocation)
			}
			if follow {
				q.Set("follow", "1")
			}
			return a.logs(cmd.Context(), args[0], q, output == "json")
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines as invocations end")
	cmd.Flags().StringVar(&since, "since", "", "only lines from this long ago (10m, 2h30m) or since an RFC 3339 time")
	cmd.Flags().IntVarP(&limit, "limit", "n", logstore.DefaultLimit, fmt.Sprintf("the newest N lines, 1 to %d", logstore.MaxLimit))
	cmd.Flags().StringVar(&invocation, "invocation", "", "only the lines of this invocation id")
	outputFlag(cmd, &output)
	return cmd
}

// logLine is one line of the gateway's answer: an entry, or, as the last
// line of a followed stream, the error that ended it.
type logLine struct {
	logstore.Entry
	Error string `json:"error"`
}

func (a *app) logs(ctx context.Context, name string, q url.Values, asJSON bool) error {
	resp, err := a.do(ctx, "GET", "/system/logs/"+url.PathEscape(name), q, nil, nil, -1)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return failure(resp, body)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxLogLine)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("the gateway at %s sent a log line that is not JSON (%v): %.200q", a.serverURL(), err, sc.Text())
		}
		if l.Error != "" && l.Cursor == "" {
			return fmt.Errorf("the log stream ended: %s", l.Error)
		}
		if asJSON {
			fmt.Fprintf(a.out, "%s\n", sc.Bytes())
			continue
		}
		fmt.Fprintf(a.out, "%s  %s  %s  %s\n", l.Time.Local().Format("2006-01-02 15:04:05.000"),
			l.InvocationID, orDash(l.Node), l.Line)
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading the logs from %s: %w", a.serverURL(), err)
	}
	// Interrupting a follow is how it ends: not an error.
	return nil
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
