// Command kiln is the one Kiln binary: `kiln up` runs the whole platform on
// this machine, `kiln run` boots a program in a unikernel directly, and the
// client verbs (deploy, invoke, list) talk to a gateway.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/node-agent/vmhost"
)

func main() {
	// First, before flags or anything else: the agent's VM workers are
	// this binary re-executed (node-agent/vmhost), and this is where one
	// becomes a worker instead of the CLI. No package init does it.
	if vmhost.IsWorker() {
		os.Exit(vmhost.RunWorker())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
