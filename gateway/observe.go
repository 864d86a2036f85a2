package gateway

import (
	"time"

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

// finished hands one invocation to everything that records invocations:
// metrics, the SLA ledger, the log store. It must not block the caller.
func (g *Gateway) finished(inv *invocation) {
	start, outcome := "none", ""
	if inv.Err != nil {
		outcome = outcomeFromGRPC(inv.Err)
	} else {
		start, outcome = inv.Resp.GetStart().Label(), outcomeLabel(inv.Resp.GetOutcome())
	}
	g.metrics.record(inv, start, outcome)
	g.recordSLA(inv)
}
