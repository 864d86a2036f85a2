// slafn is the SLA test's serve function, run as a plain process by the
// node-agent's ProcessBooter: /slow takes 1.5 s (past the test's 1 s
// deadline), anything else answers at once.
package main

import (
	"io"
	"os"
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
			time.Sleep(1500 * time.Millisecond)
		}
		if err := wire.WriteResponse(os.Stdout, &wire.Response{ID: req.ID, Status: 200, Body: []byte("ok")}); err != nil {
			os.Exit(4)
		}
	}
}
