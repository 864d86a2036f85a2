package nodeagent

import (
	"context"
	"fmt"
	"time"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// Reconnect backoff bounds for Run.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Run holds this node's Connect stream to the scheduler until ctx ends:
// Register, then a heartbeat with Capacity at the interval the scheduler
// answers with. A broken stream is reopened with exponential backoff
// (reset once a registration succeeds). It returns ctx's error.
func (a *Agent) Run(ctx context.Context, sched kilnv1.SchedulerClient, advertiseAddr string) error {
	backoff := minBackoff
	for {
		registered, err := a.session(ctx, sched, advertiseAddr)
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

// session runs one Connect stream until it breaks.
func (a *Agent) session(ctx context.Context, sched kilnv1.SchedulerClient, addr string) (registered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := sched.Connect(ctx)
	if err != nil {
		return false, err
	}
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
	a.log.Info("registered with the scheduler", "node", a.cfg.Node, "heartbeat_ms", reg.HeartbeatIntervalMs)
	// The scheduler sends nothing more today; a receive that ends is the
	// stream breaking, noticed without waiting for the next heartbeat.
	broken := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				broken <- err
				return
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
			return true, ctx.Err()
		case err := <-broken:
			return true, err
		case <-t.C:
		}
	}
}
