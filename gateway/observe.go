package gateway

import (
	"time"

	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
)

// invocation is what the gateway knows about one synchronous invocation it
// sent to the scheduler, once the answer is in.
type invocation struct {
	ID    string
	Fn    registry.Function
	Resp  *kilnv1.InvokeResponse // nil when the platform failed (Err)
	Err   error                  // a gRPC error from the scheduler
	Total time.Duration          // from the request's arrival to the answer
}

// finished hands one invocation to what records invocations as they end:
// the metrics and the SLA ledger. It must not block the caller. What the
// function wrote to stderr is not recorded here: the log store gets it
// from captureLogs (logs.go), which the async workers' runs reach too.
func (g *Gateway) finished(inv *invocation) {
	start := "none"
	if inv.Err == nil {
		start = inv.Resp.GetStart().Label()
	}
	g.metrics.record(inv, start, outcome.Label(inv.Resp, inv.Err))
	g.recordSLA(inv)
}
