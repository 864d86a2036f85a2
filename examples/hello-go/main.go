// Command hello-go is the Go example serve function: it answers
// "hello, <body>" ("hello, world" for an empty body) and logs one line per
// request to stderr, which the platform keeps as the function's log.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/kilnfaas/kiln/sdk/go"
)

func hello(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
	who := string(req.Body)
	if who == "" {
		who = "world"
	}
	fmt.Fprintf(os.Stderr, "hello-go: id=%d %s %s body=%d bytes\n", req.ID, req.Method, req.Path, len(req.Body))
	return kiln.Text(200, "hello, "+who), nil
}

func main() {
	kiln.Serve(hello)
}
