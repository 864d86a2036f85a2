// Command slowfn is the function the observability test loads: it answers
// after sleeping ?ms= milliseconds (0 by default), so the test can make
// calls that meet a deadline and calls that miss it, and calls that run
// past their timeout.
package main

import (
	"context"
	"strconv"
	"time"

	kiln "github.com/kilnfaas/kiln/sdk/go"
)

func main() {
	kiln.Serve(func(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
		ms, _ := strconv.Atoi(req.Query.Get("ms"))
		if req.Query.Get("stubborn") == "1" {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		} else if ms > 0 {
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-ctx.Done():
			}
		}
		return kiln.Text(200, "ok\n"), nil
	})
}
