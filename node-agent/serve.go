package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
	"github.com/kilnfaas/kiln/wire"
)

// serveSlot holds the one instance kept for a serve function's key. One
// invocation at a time owns it (sem); inst, live and busy are guarded by
// Agent.mu so that Capacity and Close can read them.
type serveSlot struct {
	sem    chan struct{}
	digest string
	inst   *instance
	live   bool
	busy   bool
}

// instance is a booted serve function: requests go in through a pipe that
// is the VM's stdin, responses come out of its stdout into a wire parser.
type instance struct {
	a      *Agent
	m      Machine
	mem    uint64
	cancel context.CancelFunc
	in     *io.PipeWriter
	resps  chan parsed
	exited chan struct{} // closed once Run returned; res/runErr set before
	gone   chan struct{} // closed by destroy: nobody reads resps any more
	res    *vmm.Result
	runErr error
	stderr *ring
	nextID uint64

	bootStart time.Time
	bootNS    time.Duration // vmm.New alone
	firstRead atomic.Int64  // unix ns of the guest's first read of stdin
	destroyed sync.Once
}

type parsed struct {
	resp *wire.Response
	err  error
}

// stdinProbe notes when the guest first asks for input: that is when its
// initialisation is over, the end of a cold start.
type stdinProbe struct {
	r    io.Reader
	inst *instance
	now  func() time.Time
}

func (p *stdinProbe) Read(b []byte) (int, error) {
	p.inst.firstRead.CompareAndSwap(0, p.now().UnixNano())
	return p.r.Read(b)
}

func (a *Agent) slot(s *spec) *serveSlot {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := s.key()
	sl := a.slots[k]
	if sl == nil {
		sl = &serveSlot{sem: make(chan struct{}, 1), digest: s.digest}
		a.slots[k] = sl
	}
	return sl
}

func (a *Agent) setSlot(sl *serveSlot, inst *instance, busy bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sl.inst, sl.live, sl.busy = inst, inst != nil, busy
}

func (a *Agent) runServe(ctx context.Context, s *spec, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, kilnv1.StartKind) {
	frame, err := requestFrame(req)
	if err != nil {
		return fail(kilnv1.Outcome_OUTCOME_CRASHED, "request cannot be framed: %v", err), kilnv1.StartKind_START_UNSPECIFIED
	}
	sl := a.slot(s)
	select {
	case sl.sem <- struct{}{}:
	case <-ctx.Done():
		return fail(kilnv1.Outcome_OUTCOME_TIMEOUT, "deadline passed while waiting for the busy instance"), kilnv1.StartKind_START_UNSPECIFIED
	}
	defer func() { <-sl.sem }()

	a.mu.Lock()
	inst := sl.inst
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", ErrClosed), kilnv1.StartKind_START_UNSPECIFIED
	}
	start := kilnv1.StartKind_START_WARM
	if inst != nil && inst.dead() {
		inst.destroy()
		inst = nil
	}
	if inst == nil {
		start = kilnv1.StartKind_START_BOOT
		var resp *kilnv1.InvokeResponse
		if inst, resp = a.bootInstance(s); resp != nil {
			a.setSlot(sl, nil, false)
			return resp, start
		}
	}
	a.setSlot(sl, inst, true)
	resp := inst.invoke(ctx, frame, start == kilnv1.StartKind_START_BOOT)
	if resp.Outcome == kilnv1.Outcome_OUTCOME_OK {
		a.setSlot(sl, inst, false)
	} else {
		// Timed out, crashed or spoke nonsense: the next call boots afresh.
		inst.destroy()
		a.setSlot(sl, nil, false)
	}
	return resp, start
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

func (a *Agent) bootInstance(s *spec) (*instance, *kilnv1.InvokeResponse) {
	if err := a.reserve(s.mem); err != nil {
		return nil, fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	inst := &instance{a: a, mem: s.mem, in: inW, resps: make(chan parsed, 1), exited: make(chan struct{}), gone: make(chan struct{}),
		stderr: newRing(StderrRing), bootStart: a.now()}
	cfg := a.vmConfig(s)
	cfg.Stdin = &stdinProbe{r: inR, inst: inst, now: a.now}
	cfg.Stdout, cfg.Stderr = outW, inst.stderr
	m, err := a.boot(cfg)
	if err != nil {
		a.release(s.mem)
		return nil, bootOutcome(err)
	}
	inst.m = m
	inst.bootNS = a.now().Sub(inst.bootStart)
	ctx, cancel := context.WithCancel(context.Background())
	inst.cancel = cancel
	go func() {
		res, err := m.Run(ctx)
		inst.res, inst.runErr = res, err
		close(inst.exited)
		// Unblock both pumps: writes of requests fail, the parser sees EOF.
		inR.CloseWithError(errExited)
		outW.Close()
	}()
	go func() {
		for {
			r, err := wire.ReadResponse(outR, wire.MaxBody)
			select {
			case inst.resps <- parsed{r, err}:
			case <-inst.gone:
				outR.CloseWithError(errExited)
				return
			}
			if err != nil {
				outR.CloseWithError(err)
				return
			}
		}
	}()
	return inst, nil
}

var errExited = errors.New("function instance has exited")

func (in *instance) dead() bool {
	select {
	case <-in.exited:
		return true
	default:
		return false
	}
}

// destroy ends the VM and gives its memory back; safe to call repeatedly.
func (in *instance) destroy() {
	in.destroyed.Do(func() {
		close(in.gone)
		in.cancel()
		in.m.Close()
		<-in.exited
		in.a.release(in.mem)
	})
}

// invoke sends one request and waits for its response, the VM's end or
// the deadline, whichever comes first.
func (in *instance) invoke(ctx context.Context, frame []byte, fresh bool) *kilnv1.InvokeResponse {
	in.nextID++
	id := in.nextID
	// The id sits at offset 8 of the header; the frame is ours alone.
	for i := 0; i < 8; i++ {
		frame[8+i] = byte(id >> (8 * i))
	}
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
		if fresh {
			ready := time.Unix(0, in.firstRead.Load())
			if in.firstRead.Load() == 0 || ready.After(done) {
				ready = sent
			}
			resp.StartNs = ready.Sub(in.bootStart).Nanoseconds()
			in.a.m.boot.Observe(float64(resp.StartNs) / 1e9)
			if ready.After(began) {
				began = ready
			}
		}
		resp.ExecNs = done.Sub(began).Nanoseconds()
		resp.VmExits = in.m.Stats().Exits - exits0
		if resp.Outcome != kilnv1.Outcome_OUTCOME_OK {
			resp.LogTail = in.stderr.tail(TailLines, 0)
		}
		if fresh {
			mark = 0 // what init wrote belongs to the first call's log
		}
		resp.Stderr = in.stderr.since(mark)
		return resp
	}
	crashed := func() *kilnv1.InvokeResponse {
		_, msg := classify(in.res, in.runErr)
		if in.res != nil && in.res.Reason == vmm.ReasonExited {
			msg = fmt.Sprintf("the function exited (status %d) with a request in flight", in.res.Status)
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
