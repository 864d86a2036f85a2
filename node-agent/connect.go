package nodeagent

import (
	"context"
	"fmt"
	"time"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// Reconnect backoff bounds for Run. The ceiling is short because a
// scheduler that restarts has no nodes until its agents come back: the
// cluster serves nothing meanwhile.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// goodbyeWait bounds how long Run, when ctx ends, waits for the scheduler to
// acknowledge the agent's goodbye (it ends the stream once the node is out
// of its table).
const goodbyeWait = time.Second

// Run holds this node's Connect stream to the scheduler until ctx ends:
// Register, then a heartbeat with Capacity at the interval the scheduler
// answers with. A broken stream is reopened with exponential backoff
// (reset once a registration succeeds), which is also how a restarted
// scheduler gets its node table back. When ctx ends, Run says goodbye by
// half-closing the stream, so the scheduler stops placing here at once but
// lets the invocations in flight finish; the caller then stops the Agent
// service gracefully. It returns ctx's error.
func (a *Agent) Run(ctx context.Context, sched kilnv1.SchedulerClient, advertiseAddr string) error {
	backoff := minBackoff
	for {
		registered, err := a.session(ctx, sched, advertiseAddr)
		a.registered.Store(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if registered {
			backoff = minBackoff
		}
		a.log.Warn("scheduler stream ended; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// Registered reports whether the node is registered with the scheduler now
// (its Connect stream is up): the agent's readiness.
func (a *Agent) Registered() bool { return a.registered.Load() }

// session runs one Connect stream until it breaks or ctx ends.
func (a *Agent) session(ctx context.Context, sched kilnv1.SchedulerClient, addr string) (registered bool, err error) {
	// The stream outlives ctx by the goodbye: cancelling it would look
	// like a crash to the scheduler, which would stop our calls in flight.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	st, err := sched.Connect(sctx)
	if err != nil {
		return false, err
	}
	// Register and its answer are bounded by ctx; after them the goodbye
	// below ends the stream.
	regDone := make(chan struct{})
	defer context.AfterFunc(ctx, func() {
		select {
		case <-regDone:
		default:
			cancel()
		}
	})()
	err = st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Register{Register: &kilnv1.Register{
		Node: a.cfg.Node, Address: addr, MemoryBytesTotal: a.cfg.MemoryBytes}}})
	if err != nil {
		return false, err
	}
	m, err := st.Recv()
	if err != nil {
		return false, err
	}
	reg := m.GetRegistered()
	if reg == nil || reg.HeartbeatIntervalMs <= 0 {
		return false, fmt.Errorf("nodeagent: scheduler answered Register with %v", m)
	}
	close(regDone)
	a.registered.Store(true)
	a.log.Info("registered with the scheduler", "node", a.cfg.Node, "heartbeat_ms", reg.HeartbeatIntervalMs)
	// After Registered the scheduler sends warm-pool targets; a receive
	// that ends is the stream breaking, noticed without waiting for the
	// next heartbeat.
	broken := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				broken <- err
				return
			}
			if wt := m.GetWarmTargets(); wt != nil {
				a.setWarmTargets(sctx, wt.Targets)
			}
		}
	}()
	t := time.NewTicker(time.Duration(reg.HeartbeatIntervalMs) * time.Millisecond)
	defer t.Stop()
	for {
		if err := st.Send(&kilnv1.AgentMessage{Msg: &kilnv1.AgentMessage_Heartbeat{Heartbeat: &kilnv1.Heartbeat{
			Capacity: a.capacity()}}}); err != nil {
			return true, err
		}
		select {
		case <-ctx.Done():
			a.registered.Store(false)
			st.CloseSend()
			select {
			case <-broken:
			case <-time.After(goodbyeWait):
			}
			return true, ctx.Err()
		case err := <-broken:
			return true, err
		case <-t.C:
		}
	}
}
