// Command sleepy is the function the cluster tests deploy: it answers
// "hello, <body>" after sleeping ?ms= milliseconds (0 by default), so a
// test can keep instances busy and spread load over nodes.
package main

import (
	"context"
	"strconv"
	"time"

	kiln "github.com/kilnfaas/kiln/sdk/go"
)

func main() {
	kiln.Serve(func(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
		if ms, err := strconv.Atoi(req.Query.Get("ms")); err == nil && ms > 0 {
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-ctx.Done():
			}
		}
		return kiln.Text(200, "hello, "+string(req.Body)), nil
	})
}
