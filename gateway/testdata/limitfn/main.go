// limitfn is the gateway's host-test function, a serve function run as a
// plain process by the node-agent's ProcessBooter: /slow holds its
// invocation for two seconds (to fill a concurrency limit), and every
// answer reports the Authorization header the function received.
package main

import (
	"io"
	"os"
	"strings"
	"time"

	"github.com/kilnfaas/kiln/proto/wire"
)

func main() {
	for {
		req, err := wire.ReadRequest(os.Stdin, 0)
		if err == io.EOF {
			return
		}
		if err != nil {
			os.Exit(2)
		}
		if req.Path == "/slow" {
			time.Sleep(2 * time.Second)
		}
		body := "authorization=" + strings.Join(req.Header.Values("Authorization"), ",")
		if err := wire.WriteResponse(os.Stdout, &wire.Response{ID: req.ID, Status: 200, Body: []byte(body)}); err != nil {
			os.Exit(4)
		}
	}
}
