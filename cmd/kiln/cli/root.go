// Package cli is the `kiln` command line: every verb, its flags and its
// exit statuses. It lives apart from package main so tests can run the
// same code path a user does (Main with buffers for the standard streams).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"
)

// DefaultServer is the gateway the client verbs talk to when neither
// --server nor $KILN_SERVER names one.
const DefaultServer = "http://127.0.0.1:8080"

// ExitError asks Main to exit with Code after printing Err (if non-nil).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// streams are the standard streams a command uses.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

type app struct {
	streams
	server string
	apiKey string // --api-key; see apiKeyValue

	cfgOnce sync.Once // guards cfg and cfgErr, read from the config file
	cfg     clientConfig
	cfgErr  error
}

// Main runs the kiln command line with args (without the program name) and
// returns the process exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{streams: streams{in: stdin, out: stdout, err: stderr}}
	root := a.root()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintln(stderr, "kiln:", ee.Err)
		}
		return ee.Code
	}
	fmt.Fprintln(stderr, "kiln:", err)
	return 1
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "kiln",
		Short: "Kiln runs functions as unikernels under KVM",
		Long: `Kiln runs functions as unikernels under KVM.

Start the platform on this machine with 'kiln up'. Write a function with
'kiln new NAME --lang go', try it with 'kiln build' and 'kiln run', deploy
its source with 'kiln deploy NAME DIR' (or a static x86-64 program with
'kiln deploy NAME --binary FILE'), and call it with 'kiln invoke NAME -d DATA'
or 'curl -d DATA http://127.0.0.1:8080/function/NAME'. The source directory's
kiln.yaml holds the function's deploy settings ('kiln new' writes one), so
'kiln deploy' there is enough. See what is deployed with 'kiln list' and
'kiln describe NAME'; Tab-complete names with 'kiln completion bash|zsh|fish'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.server, "server", "",
		"Kiln gateway URL (default $KILN_SERVER, else the config file's server, else "+DefaultServer+")")
	root.PersistentFlags().StringVar(&a.apiKey, "api-key", "",
		"API key for the gateway (default $KILN_API_KEY, else the config file's api_key; see `kiln keys`)")
	root.AddCommand(a.upCmd(), a.runCmd(), a.deployCmd(), a.invokeCmd(), a.listCmd(), a.versionCmd(),
		a.buildCmd(), a.newCmd(), a.keysCmd())
	root.AddCommand(a.versionsCmd(), a.aliasCmd(), a.rollbackCmd())
	root.AddCommand(a.describeCmd(), a.deleteCmd())
	root.AddCommand(a.gatewayCmd(), a.schedulerCmd(), a.agentCmd(), a.caCmd())
	root.AddCommand(a.slaCmd())
	root.AddCommand(a.logsCmd())
	return root
}

// serverURL is --server, else $KILN_SERVER, else the config file's server,
// else DefaultServer.
func (a *app) serverURL() string {
	s := a.server
	if s == "" {
		s = os.Getenv("KILN_SERVER")
	}
	if s == "" {
		cfg, _ := a.config() // a broken file is reported by do
		s = cfg.Server
	}
	if s == "" {
		s = DefaultServer
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return strings.TrimRight(s, "/")
}

// usage wraps an argument check so a wrong command line exits 2 and shows
// how the command is used.
func usage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("%s: %v\nusage: %s", cmd.Name(), err, cmd.UseLine())}
		}
		return nil
	}
}
