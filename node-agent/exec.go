package nodeagent

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/kilnfaas/kiln/internal/tracing"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/proto/wire"
)

// capped keeps at most limit bytes and remembers that it dropped some.
type capped struct {
	buf      bytes.Buffer
	limit    int
	overflow bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.limit - c.buf.Len(); len(p) > room {
		c.overflow = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

// runExec runs an exec function on a VM of its own: a restore of its
// snapshot (taken at its first read of stdin, so its start-up work is done
// once per node) or a boot that takes it.
// lost: as Agent.invoke.
func (a *Agent) runExec(ctx context.Context, s *spec, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, kilnv1.StartKind, error) {
	if err := a.reserve(s.mem); err != nil {
		return fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", err), kilnv1.StartKind_START_UNSPECIFIED, nil
	}
	handedOff := false // to the teardown goroutine, which releases the memory
	defer func() {
		if !handedOff {
			a.releaseMem(s.mem)
		}
	}()
	stdout := &capped{limit: wire.MaxBody}
	stderr := newRing(StderrRing)
	cfg := a.vmConfig(s)
	var first firstWait
	cfg.OnFirstWait = func() { first.stamp(a.now()) }
	cfg.Stdin, cfg.Stdout, cfg.Stderr = bytes.NewReader(req.Body), stdout, stderr
	plan := a.plan(s, &cfg, func() string {
		if stdout.buf.Len() > 0 {
			return "it writes to stdout before it reads stdin, and a restore would not repeat that output"
		}
		return ""
	})
	kind := plan.kind()
	t0 := a.now()
	m, err := a.bootVM(cfg)
	if err != nil && plan.restore != nil {
		a.log.Warn("restore failed; booting", "function", s.name, "err", err)
		a.snaps.drop(plan.key)
		cfg.Snapshot, kind, t0 = nil, kilnv1.StartKind_START_BOOT, a.now()
		m, err = a.bootVM(cfg)
	}
	if err != nil {
		if plan.take != "" {
			a.snaps.abandon(plan.key)
		}
		return bootOutcome(err), kind, nil
	}
	if !a.trackMachine(m) {
		m.Close()
		return fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", ErrClosed), kind, nil
	}
	res, runErr := m.Run(ctx)
	// Tearing a VM down (unmapping its memory, closing its KVM objects)
	// is not the caller's wait: the answer leaves first.
	handedOff = true
	go func() {
		m.Close()
		a.untrackMachine(m)
		a.releaseMem(s.mem)
	}()
	done := a.now()
	ready := done
	if at := first.at(); at != 0 {
		ready = time.Unix(0, at)
	} else if plan.take != "" {
		a.snaps.abandon(plan.key) // it never asked for input
	}
	bootNS, execNS := ready.Sub(t0), done.Sub(ready)
	a.observeStart(kind, bootNS)
	var exits uint64
	if res != nil {
		exits = res.Stats.Exits
	}
	if lostWithWorker(runErr) {
		return nil, kind, runErr
	}
	outcome, msg := classify(res, runErr)
	resp := &kilnv1.InvokeResponse{Outcome: outcome, Error: msg, StartNs: bootNS.Nanoseconds(), ExecNs: execNS.Nanoseconds(), VmExits: exits}
	switch outcome {
	case kilnv1.Outcome_OUTCOME_OK:
		if stdout.overflow {
			resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, fmt.Sprintf("stdout exceeded %d bytes", wire.MaxBody)
			break
		}
		resp.Status, resp.Body = http.StatusOK, stdout.buf.Bytes()
	case kilnv1.Outcome_OUTCOME_FUNCTION_ERROR:
		resp.Status = int32(res.Status)
	}
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK {
		resp.LogTail = stderr.tail(TailLines, 0)
	}
	resp.Stderr = stderr.since(0)
	tracing.Invocation(ctx, kind.Label(), 0, resp.StartNs, resp.ExecNs, resp.Error)
	return resp, kind, nil
}
