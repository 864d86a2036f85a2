package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/internal/rolecert"
)

// `kiln ca`: the certificate authority of a cluster's roles
// (internal/rolecert, docs/CLUSTER.md "TLS between the roles").

func (a *app) caCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Make the cluster's CA and the certificates of its roles (mTLS between gateway, scheduler, agents)",
		Long: `The roles of a cluster speak gRPC to each other over mutual TLS: each presents
a certificate of the cluster's CA naming its role (and, for an agent, its node
name), and each accepts calls only from the roles that may make them.

  kiln ca init  --dir DIR                      a CA: DIR/ca.crt, DIR/ca.key (0600; keep it offline)
  kiln ca issue --dir DIR --role scheduler     DIR/scheduler.crt, .key
  kiln ca issue --dir DIR --role gateway       DIR/gateway.crt, .key
  kiln ca issue --dir DIR --role agent --node node1   DIR/agent-node1.crt, .key

Start each role with --tls-ca DIR/ca.crt --tls-cert ... --tls-key ... .
A CA of your own works too: a role's certificate needs the URI SAN
kiln://gateway, kiln://scheduler or kiln://agent/NODE and both the server and
client extended key usages. See docs/CLUSTER.md.`,
	}
	cmd.AddCommand(a.caInitCmd(), a.caIssueCmd())
	return cmd
}

func (a *app) caInitCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Make a new CA in DIR (ca.crt, and ca.key readable by you only)",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return &ExitError{Code: 2, Err: errors.New("ca init: --dir is required")}
			}
			if err := rolecert.Init(dir); err != nil {
				if errors.Is(err, rolecert.ErrExists) {
					return &ExitError{Code: 1, Err: fmt.Errorf("ca init: %w (every certificate it issued would stop being trusted; remove it yourself if you mean it)", err)}
				}
				return fmt.Errorf("ca init: %w", err)
			}
			fmt.Fprintf(a.out, "CA made: %s (give it to every role as --tls-ca) and %s (0600: it signs certificates, keep it safe)\n",
				filepath.Join(dir, rolecert.CACertFile), filepath.Join(dir, rolecert.CAKeyFile))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory of the CA (made 0700 if missing)")
	return cmd
}

func (a *app) caIssueCmd() *cobra.Command {
	var dir, role, node, hosts, out string
	cmd := &cobra.Command{
		Use:   "issue --dir DIR --role gateway|scheduler|agent [--node NAME] [--host H,IP...] [--out DIR]",
		Short: "Issue a role's certificate and key with the CA in DIR",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || role == "" {
				return &ExitError{Code: 2, Err: errors.New("ca issue: --dir and --role are required")}
			}
			r := rolecert.Request{Identity: rolecert.Identity{Role: role, Node: node}, OutDir: out}
			if hosts != "" {
				r.Hosts = strings.Split(hosts, ",")
			}
			cert, key, err := rolecert.Issue(dir, r)
			if errors.Is(err, rolecert.ErrBadRequest) {
				return &ExitError{Code: 2, Err: fmt.Errorf("ca issue: %w", err)}
			} else if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			fmt.Fprintf(a.out, "%s: %s, key %s (0600)\n  start it with --tls-ca %s --tls-cert %s --tls-key %s\n",
				r.Identity, cert, key, filepath.Join(filepath.Dir(cert), rolecert.CACertFile), cert, key)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dir, "dir", "", "directory of the CA (kiln ca init); the certificate is written there")
	fl.StringVar(&role, "role", "", "gateway, scheduler or agent")
	fl.StringVar(&node, "node", "", "an agent's node name (its --name); required for --role agent")
	fl.StringVar(&out, "out", "", "write the certificate, its key and a copy of ca.crt here instead of in --dir: a directory to mount into the role (made 0700)")
	fl.StringVar(&hosts, "host", "", "DNS names and IP addresses to add to the certificate, comma-separated (Kiln checks the role, not the host; for other tools)")
	return cmd
}
