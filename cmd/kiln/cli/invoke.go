package cli

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
)

func (a *app) invokeCmd() *cobra.Command {
	var data, dataFile, method string
	var headers []string
	var verbose bool
	var output string
	cmd := &cobra.Command{
		Use:   "invoke NAME[@REF] [-d DATA | --data-file FILE]",
		Short: "Call function NAME and print its answer",
		Long: `Call function NAME (or the version an alias or a version number REF
routes to) and print its answer's body. With -o json, print one JSON
document instead: status, headers, body (text, or base64 when it is not
UTF-8), invocation id, start kind, node and version; the exit status is
1 for an answer that is not 2xx either way.`,
		Example: `  kiln invoke hello -d world
  kiln invoke hello@prod -d world -o json
  echo hi | kiln invoke cat --data-file -`,
		Args:              usage(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeFunctionRefs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("invoke", output); err != nil {
				return err
			}
			name := args[0]
			var body []byte
			switch {
			case cmd.Flags().Changed("data") && dataFile != "":
				return &ExitError{Code: 2, Err: fmt.Errorf("invoke: give -d or --data-file, not both")}
			case dataFile == "-":
				b, err := io.ReadAll(a.in)
				if err != nil {
					return err
				}
				body = b
			case dataFile != "":
				b, err := os.ReadFile(dataFile)
				if err != nil {
					return fmt.Errorf("invoke: %w", err)
				}
				body = b
			default:
				body = []byte(data)
			}
			hdr := http.Header{}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok || strings.TrimSpace(k) == "" {
					return &ExitError{Code: 2, Err: fmt.Errorf("invoke: header %q: use -H 'Name: value'", h)}
				}
				hdr.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
			path := "/function/" + name
			resp, err := a.do(cmd.Context(), strings.ToUpper(method), path, nil, hdr, bytes.NewReader(body), int64(len(body)))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if output == "json" {
				if err := a.printJSON(invocationResult(resp, b)); err != nil {
					return err
				}
				if resp.StatusCode/100 != 2 {
					return &ExitError{Code: 1}
				}
				return nil
			}
			if verbose {
				fmt.Fprintf(a.err, "%s  invocation %s  start %s  node %s\n", resp.Status,
					resp.Header.Get("X-Kiln-Invocation-Id"), resp.Header.Get("X-Kiln-Start"), resp.Header.Get("X-Kiln-Node"))
			}
			if resp.StatusCode/100 != 2 {
				a.err.Write(b)
				if len(b) > 0 && b[len(b)-1] != '\n' {
					fmt.Fprintln(a.err)
				}
				return &ExitError{Code: 1}
			}
			a.out.Write(b)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&data, "data", "d", "", "request body")
	fl.StringVar(&dataFile, "data-file", "", "read the request body from FILE (- for stdin)")
	fl.StringVarP(&method, "method", "X", "POST", "HTTP method")
	fl.StringArrayVarP(&headers, "header", "H", nil, "request header 'Name: value' (repeatable)")
	fl.BoolVarP(&verbose, "verbose", "v", false, "print status, invocation id, start kind and node on stderr")
	outputFlag(cmd, &output)
	return cmd
}

// Invocation is what `kiln invoke -o json` prints.
type Invocation struct {
	Status       int                 `json:"status"`
	Headers      map[string][]string `json:"headers"`
	Body         string              `json:"body"`
	BodyEncoding string              `json:"body_encoding"` // "utf-8" or "base64"
	InvocationID string              `json:"invocation_id"`
	Start        string              `json:"start"` // how the instance started: the gateway's X-Kiln-Start
	Node         string              `json:"node"`
	Version      uint64              `json:"version"` // 0 when the gateway named none (e.g. a 404)
}

func invocationResult(resp *http.Response, body []byte) Invocation {
	inv := Invocation{
		Status: resp.StatusCode, Headers: map[string][]string{}, Body: string(body), BodyEncoding: "utf-8",
		InvocationID: resp.Header.Get(gateway.HeaderInvocationID),
		Start:        resp.Header.Get(gateway.HeaderStart),
		Node:         resp.Header.Get(gateway.HeaderNode),
	}
	inv.Version, _ = strconv.ParseUint(resp.Header.Get(gateway.HeaderVersion), 10, 64)
	if !utf8.Valid(body) {
		inv.Body, inv.BodyEncoding = base64.StdEncoding.EncodeToString(body), "base64"
	}
	for k, vs := range resp.Header {
		inv.Headers[k] = vs
	}
	return inv
}
