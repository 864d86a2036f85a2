package cli

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func (a *app) invokeCmd() *cobra.Command {
	var data, dataFile, method string
	var headers []string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "invoke NAME [-d DATA | --data-file FILE]",
		Short: "Call function NAME and print its answer",
		Example: `  kiln invoke hello -d world
  echo hi | kiln invoke cat --data-file -`,
		Args: usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
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
	return cmd
}
