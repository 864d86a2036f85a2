package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kilnfaas/kiln/internal/tracing"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// instance is a booted serve function: requests go in through a pipe that
// is the VM's stdin, responses come out of its stdout into a wire parser.
type instance struct {
	a      *Agent
	m      Machine
	pool   *pool
	kind   kilnv1.StartKind // how it started: restore or boot
	snap   string           // its snapshot shape (snapStore key)
	fresh  bool             // destroyed after one invocation
	mem    uint64
	cancel context.CancelFunc
	in     *os.File // the write end of the VM's stdin pipe
	resps  chan parsed
	exited chan struct{} // closed once Run returned; res/runErr set before
	gone   chan struct{} // closed by destroy: nobody reads resps any more
	res    *vmm.Result
	runErr error
	stderr *ring
	nextID uint64

	bootStart time.Time
	bootNS    time.Duration // vmm.New alone
	ready     chan struct{} // closed when the guest first waits for input
	firstWait firstWait     // … and when that was
	idleSince time.Time     // guarded by Agent.mu
	destroyed sync.Once
}

type parsed struct {
	resp *wire.Response
	err  error
}

// lost: as Agent.invoke.
func (a *Agent) runServe(ctx context.Context, s *spec, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, kilnv1.StartKind, error) {
	frame, err := requestFrame(req)
	if err != nil {
		return fail(kilnv1.Outcome_OUTCOME_CRASHED, "request cannot be framed: %v", err), kilnv1.StartKind_START_UNSPECIFIED, nil
	}
	inst, start, wait, resp := a.acquire(ctx, s)
	if resp != nil {
		return resp, start, nil
	}
	cold := start != kilnv1.StartKind_START_WARM
	resp = inst.invoke(ctx, frame, cold)
	resp.WaitNs = wait.Nanoseconds()
	ok := resp.Outcome == kilnv1.Outcome_OUTCOME_OK
	if !ok && inst.dead() && lostWithWorker(inst.runErr) {
		// Its worker process failed under it: neither the function's
		// init nor its snapshot is to blame.
		a.release(inst, false)
		return nil, start, inst.runErr
	}
	if ok {
		a.observe(inst.pool, time.Duration(resp.StartNs), time.Duration(resp.ExecNs))
	}
	tracing.Invocation(ctx, start.Label(), resp.WaitNs, resp.StartNs, resp.ExecNs, resp.Error)
	switch {
	case cold && !ok && inst.firstWait.at() == 0 && resp.Outcome != kilnv1.Outcome_OUTCOME_TIMEOUT:
		// It never asked for input: its initialisation is broken.
		a.initFailed(inst.pool, resp.Error+tailNote(resp.LogTail))
	case cold && ok:
		a.initSucceeded(inst.pool)
	}
	if !ok && inst.kind == kilnv1.StartKind_START_RESTORE && inst.firstWait.at() == 0 {
		// A restore that never resumed may come from a bad snapshot:
		// verify the file again before the next restore.
		a.snaps.drop(inst.snap)
	}
	a.release(inst, ok)
	if resp.Outcome == kilnv1.Outcome_OUTCOME_TIMEOUT {
		go a.logTimeout(inst, start)
	}
	return resp, start, nil
}

// logTimeout tells the operator where a timed-out instance was once its
// VM has stopped: whether it ever asked for input, how much it ran and
// its registers — enough to tell a guest stuck in a loop (guest time close
// to the timeout, few exits) from one waiting for what never came.
func (a *Agent) logTimeout(in *instance, start kilnv1.StartKind) {
	<-in.exited
	st := in.m.Stats()
	attrs := []any{"function", in.pool.name, "start", start.Label(),
		"asked_for_input", in.firstWait.at() != 0, "exits", st.Exits, "input_waits", st.InputWaits,
		"guest_time", st.GuestTime.Round(time.Millisecond), "alive", time.Since(in.bootStart).Round(time.Millisecond)}
	if in.res != nil {
		attrs = append(attrs, "ended", in.res.Message, "regs", in.res.Regs)
	}
	a.log.Warn("instance timed out", attrs...)
}

func tailNote(tail []byte) string {
	if len(tail) == 0 {
		return ""
	}
	return "; its stderr ended with: " + string(tail)
}

// requestFrame encodes req up front, so that a request the wire protocol
// cannot carry is refused before it reaches (and desynchronises) a guest.
// The id is patched in per instance.
func requestFrame(req *kilnv1.InvokeRequest) ([]byte, error) {
	w := &wire.Request{Method: req.Method, Path: req.Path, Query: req.Query, Header: toHTTPHeader(req.Headers), Body: req.Body}
	if w.Method == "" {
		w.Method = "POST"
	}
	if req.DeadlineUnixMs > 0 {
		w.Deadline = time.UnixMilli(req.DeadlineUnixMs)
	}
	var b bytes.Buffer
	if err := wire.WriteRequest(&b, w); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// startInstance creates a serve instance for s — restoring the shape's
// snapshot, or booting and taking it — with its memory already reserved;
// on failure the reservation is released.
func (a *Agent) startInstance(s *spec, p *pool) (*instance, kilnv1.StartKind, *kilnv1.InvokeResponse) {
	// OS pipes, not io.Pipe: a VM run in a vmhost worker gets their
	// descriptors and reads and writes them directly.
	inR, inW, err := os.Pipe()
	if err != nil {
		a.releaseMem(s.mem)
		return nil, kilnv1.StartKind_START_UNSPECIFIED, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "stdin pipe: %v", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		a.releaseMem(s.mem)
		return nil, kilnv1.StartKind_START_UNSPECIFIED, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "stdout pipe: %v", err)
	}
	inst := &instance{a: a, pool: p, mem: s.mem, fresh: s.fresh, in: inW, resps: make(chan parsed, 1), exited: make(chan struct{}),
		gone: make(chan struct{}), ready: make(chan struct{}), stderr: newRing(StderrRing), bootStart: a.now()}
	cfg := a.vmConfig(s)
	cfg.OnFirstWait = func() { inst.firstWait.stamp(a.now()); close(inst.ready) }
	cfg.Stdin, cfg.Stdout, cfg.Stderr = inR, outW, inst.stderr
	plan := a.plan(s, &cfg, nil)
	inst.snap = plan.key
	inst.kind = plan.kind()
	m, err := a.bootVM(cfg)
	if err != nil && plan.restore != nil {
		// The snapshot would not restore: forget it and boot instead.
		a.log.Warn("restore failed; booting", "function", s.name, "err", err)
		a.snaps.drop(plan.key)
		cfg.Snapshot = nil
		inst.kind = kilnv1.StartKind_START_BOOT
		inst.bootStart = a.now()
		m, err = a.bootVM(cfg)
	}
	if err != nil {
		if plan.take != "" {
			a.snaps.abandon(plan.key)
		}
		for _, f := range []*os.File{inR, inW, outR, outW} {
			f.Close()
		}
		a.releaseMem(s.mem)
		return nil, inst.kind, bootOutcome(err)
	}
	a.track(inst)
	inst.m = m
	inst.bootNS = a.now().Sub(inst.bootStart)
	ctx, cancel := context.WithCancel(context.Background())
	inst.cancel = cancel
	go func() {
		res, err := m.Run(ctx)
		inst.res, inst.runErr = res, err
		close(inst.exited)
		// Unblock both pumps: writes of requests fail, the parser sees
		// EOF. (A VM in a vmhost worker was given duplicates; these are
		// the agent's own.)
		inR.Close()
		inW.Close()
		outW.Close()
		if plan.take != "" && inst.firstWait.at() == 0 {
			a.snaps.abandon(plan.key)
		}
		a.endedIdle(inst)
	}()
	go func() {
		for {
			r, err := wire.ReadResponse(outR, wire.MaxBody)
			select {
			case inst.resps <- parsed{r, err}:
			case <-inst.gone:
				outR.Close()
				return
			}
			if err != nil {
				outR.Close()
				return
			}
		}
	}()
	return inst, inst.kind, nil
}

// warmUp runs a new instance to its first wait for input without a
// request: what a min_warm instance does before it is parked.
func (in *instance) warmUp(s *spec) *kilnv1.InvokeResponse {
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-in.ready:
		in.bootNS = time.Unix(0, in.firstWait.at()).Sub(in.bootStart)
		in.a.observeStart(in.kind, in.bootNS)
		in.a.observe(in.pool, in.bootNS, 0)
		in.a.initSucceeded(in.pool)
		return nil
	case <-in.exited:
		msg := endedBy(in.res, in.runErr)
		if !lostWithWorker(in.runErr) { // a worker's failure is not the function's
			in.a.initFailed(in.pool, "exited before asking for input: "+msg+tailNote(in.stderr.tail(TailLines, 0)))
		}
		return fail(kilnv1.Outcome_OUTCOME_CRASHED, "exited before asking for input: %s", msg)
	case <-t.C:
		return fail(kilnv1.Outcome_OUTCOME_TIMEOUT, "did not ask for input within %s", s.timeout)
	}
}

// endedBy says in words how a VM that should have kept running ended.
func endedBy(res *vmm.Result, err error) string {
	if res != nil && res.Reason == vmm.ReasonExited {
		return fmt.Sprintf("the function exited (status %d)", res.Status)
	}
	_, msg := classify(res, err)
	return msg
}

// firstWait records when a guest first waited for input (its init done).
type firstWait struct{ ns atomic.Int64 }

func (f *firstWait) stamp(t time.Time) { f.ns.CompareAndSwap(0, t.UnixNano()) }

// at is that time in unix ns; 0: not yet.
func (f *firstWait) at() int64 { return f.ns.Load() }

func (in *instance) dead() bool {
	select {
	case <-in.exited:
		return true
	default:
		return false
	}
}

// endedIdle destroys an instance whose VM ended while it sat idle (its
// worker process failed, or the guest exited between calls), so that its
// memory is free at once and min_warm starts a replacement. An instance
// in use is its invocation's to release.
func (a *Agent) endedIdle(in *instance) {
	a.mu.Lock()
	p := in.pool
	n := len(p.idle)
	p.idle = slices.DeleteFunc(p.idle, func(x *instance) bool { return x == in })
	idle := len(p.idle) != n
	if idle {
		a.updateWarmLocked(p)
	}
	a.mu.Unlock()
	if idle {
		in.destroy()
		a.kickMaintain()
	}
}

// destroy ends the VM and gives its memory back; safe to call repeatedly.
func (in *instance) destroy() {
	in.destroyed.Do(func() {
		close(in.gone)
		in.cancel()
		in.m.Close()
		<-in.exited
		in.a.untrack(in)
		in.a.releaseMem(in.mem)
	})
}

// invoke sends one request and waits for its response, the VM's end or
// the deadline, whichever comes first.
func (in *instance) invoke(ctx context.Context, frame []byte, cold bool) *kilnv1.InvokeResponse {
	in.nextID++
	id := in.nextID
	// The id sits at offset 8 of the header; the frame is ours alone.
	for i := 0; i < 8; i++ {
		frame[8+i] = byte(id >> (8 * i))
	}
	// Cheap with vmhost too: a worker's VMs keep their counters in memory
	// it shares with the agent.
	exits0 := in.m.Stats().Exits
	mark := in.stderr.written()
	sent := in.a.now()
	sendErr := make(chan error, 1)
	go func() {
		_, err := in.in.Write(frame)
		sendErr <- err
	}()
	resp := &kilnv1.InvokeResponse{}
	finish := func() *kilnv1.InvokeResponse {
		done := in.a.now()
		began := sent
		if cold {
			ready := time.Unix(0, in.firstWait.at())
			if in.firstWait.at() == 0 || ready.After(done) {
				ready = sent
			}
			resp.StartNs = ready.Sub(in.bootStart).Nanoseconds()
			in.a.observeStart(in.kind, ready.Sub(in.bootStart))
			if ready.After(began) {
				began = ready
			}
		}
		resp.ExecNs = done.Sub(began).Nanoseconds()
		resp.VmExits = in.m.Stats().Exits - exits0
		if resp.Outcome != kilnv1.Outcome_OUTCOME_OK {
			resp.LogTail = in.stderr.tail(TailLines, 0)
		}
		if cold {
			mark = 0 // what init wrote belongs to the first call's log
		}
		resp.Stderr = in.stderr.since(mark)
		return resp
	}
	crashed := func() *kilnv1.InvokeResponse {
		msg := endedBy(in.res, in.runErr)
		if in.res != nil && in.res.Reason == vmm.ReasonExited {
			msg += " with a request in flight"
		}
		resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, msg
		return finish()
	}
	for {
		select {
		case p := <-in.resps:
			if p.err != nil {
				if errors.Is(p.err, wire.ErrProtocol) && !errors.Is(p.err, io.ErrUnexpectedEOF) {
					resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, "malformed response: "+p.err.Error()
					return finish()
				}
				// End of stdout: the VM is ending; its result says why.
				select {
				case <-in.exited:
				case <-time.After(2 * time.Second):
				case <-ctx.Done():
				}
				if !in.dead() {
					resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, "the function closed its stdout"
					return finish()
				}
				return crashed()
			}
			if p.resp.ID != id {
				resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, fmt.Sprintf("response has id %d, the request in flight is %d", p.resp.ID, id)
				return finish()
			}
			resp.Outcome, resp.Status = kilnv1.Outcome_OUTCOME_OK, int32(p.resp.Status)
			resp.Headers, resp.Body = fromHTTPHeader(p.resp.Header), p.resp.Body
			return finish()
		case <-in.exited:
			// A response may have been parsed just before the end.
			select {
			case p := <-in.resps:
				if p.err == nil && p.resp.ID == id {
					resp.Outcome, resp.Status = kilnv1.Outcome_OUTCOME_OK, int32(p.resp.Status)
					resp.Headers, resp.Body = fromHTTPHeader(p.resp.Header), p.resp.Body
					return finish()
				}
			default:
			}
			return crashed()
		case <-ctx.Done():
			resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_TIMEOUT, "no response before the deadline; instance destroyed"
			return finish()
		case err := <-sendErr:
			if err != nil && !in.dead() {
				resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, "writing the request: "+err.Error()
				return finish()
			}
			sendErr = nil
		}
	}
}

func toHTTPHeader(hs []*kilnv1.Header) http.Header {
	h := http.Header{}
	for _, x := range hs {
		h.Add(x.Name, x.Value)
	}
	return h
}

func fromHTTPHeader(h http.Header) []*kilnv1.Header {
	var out []*kilnv1.Header
	names := make([]string, 0, len(h))
	for n := range h {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, v := range h[n] {
			out = append(out, &kilnv1.Header{Name: strings.ToLower(n), Value: v})
		}
	}
	return out
}
