package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/registry"
)

func (a *app) keysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage API keys (create, list, revoke; generate for a keys file)",
		Long: `API keys open the management API (deploy, delete, list, ...) and private
functions: send one with --api-key, $KILN_API_KEY or api_key in the config
file (~/.config/kiln/config.yaml). The gateway keeps only a hash of each key.

While no key exists, the gateway lets in callers on its own machine only:
'kiln keys create admin --save' on that machine makes the first key and
stores it in your config file, which closes the API to everyone without one.`,
	}
	cmd.AddCommand(a.keysCreateCmd(), a.keysListCmd(), a.keysRevokeCmd(), a.keysGenerateCmd())
	return cmd
}

func (a *app) keysCreateCmd() *cobra.Command {
	var save bool
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an API key on the gateway and print it (the only time it is shown)",
		Args:  usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			body, _ := json.Marshal(map[string]string{"name": args[0]})
			resp, err := a.do(cmd.Context(), "POST", "/system/keys", nil, http.Header{"Content-Type": {"application/json"}}, bytes.NewReader(body), int64(len(body)))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusCreated {
				return fmt.Errorf("keys create %s: %w", args[0], failure(resp, b))
			}
			var ck gateway.CreatedKey
			if err := json.Unmarshal(b, &ck); err != nil || ck.Key == "" {
				return fmt.Errorf("keys create %s: unexpected answer %q", args[0], b)
			}
			fmt.Fprintln(a.out, ck.Key)
			if save {
				path, err := saveAPIKey(ck.Key)
				if err != nil {
					return fmt.Errorf("key %s created, but saving it failed (copy it from above): %w", ck.Name, err)
				}
				fmt.Fprintf(a.err, "key %s created and saved in %s: the kiln CLI sends it from now on\n", ck.Name, path)
				return nil
			}
			fmt.Fprintf(a.err, "key %s created: it is shown only this once; use it with --api-key, $KILN_API_KEY or `Authorization: Bearer KEY`\n", ck.Name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&save, "save", false, "also write the key into the config file as api_key")
	return cmd
}

func (a *app) keysListCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List API keys (names and dates; keys themselves are never shown again)",
		Args:    usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return &ExitError{Code: 2, Err: fmt.Errorf("keys list: -o %q: use table or json", output)}
			}
			var ks []apikeys.Key
			if err := a.getJSON(cmd.Context(), "/system/keys", &ks); err != nil {
				return err
			}
			if output == "json" {
				if ks == nil {
					ks = []apikeys.Key{}
				}
				enc := json.NewEncoder(a.out)
				enc.SetIndent("", "  ")
				return enc.Encode(ks)
			}
			if len(ks) == 0 {
				fmt.Fprintln(a.out, "no API keys: the management API is open to callers on the gateway's machine only; create one with `kiln keys create NAME`")
				return nil
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED\tLAST USED")
			for _, k := range ks {
				created, used := "-", "never"
				if !k.Created.IsZero() {
					created = k.Created.Local().Format(time.DateTime)
				}
				if !k.LastUsed.IsZero() {
					used = k.LastUsed.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, created, used)
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func (a *app) keysRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an API key: every gateway sharing the key store refuses it at once",
		Args:  usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := a.do(cmd.Context(), "DELETE", "/system/keys/"+url.PathEscape(args[0]), nil, nil, nil, -1)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusNoContent {
				return fmt.Errorf("keys revoke %s: %w", args[0], failure(resp, b))
			}
			fmt.Fprintf(a.out, "revoked %s\n", args[0])
			return nil
		},
	}
}

func (a *app) keysGenerateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "generate NAME",
		Short: "Make a key here, without a gateway: prints the key and the line for a keys file ($KILN_API_KEYS_FILE)",
		Args:  usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := apikeys.CheckName(args[0]); err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("keys generate: %w", err)}
			}
			key, h, err := apikeys.Generate()
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "key:  %s\nline: %s\n", key, apikeys.Line(args[0], h))
			fmt.Fprintln(a.err, "give the key to its user; append the line to the gateways' keys file (only the line is needed there)")
			return nil
		},
	}
}

// describeLimits says in a few words what a deploy set, "" for none.
func describeLimits(l registry.Limits) string {
	var parts []string
	if l.Private {
		parts = append(parts, "private (callers need an API key)")
	}
	if l.MaxConcurrency > 0 {
		parts = append(parts, fmt.Sprintf("%d in flight", l.MaxConcurrency))
	}
	if l.RatePerSecond > 0 {
		s := strconv.FormatFloat(l.RatePerSecond, 'g', 4, 64) + "/s"
		if l.RateBurst > 0 {
			s += fmt.Sprintf(" (burst %d)", l.RateBurst)
		}
		parts = append(parts, s)
	}
	if l.MaxBodyBytes > 0 {
		parts = append(parts, fmt.Sprintf("body up to %d bytes", l.MaxBodyBytes))
	}
	return strings.Join(parts, ", ")
}
