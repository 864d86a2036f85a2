package asyncq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/kilnfaas/kiln/gateway/outcome"
	"github.com/kilnfaas/kiln/internal/netpolicy"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// Headers every callback POST carries besides the function's own.
const (
	CallbackHeaderID       = "X-Kiln-Invocation-Id"
	CallbackHeaderFunction = "X-Kiln-Function"
	CallbackHeaderStatus   = "X-Kiln-Status"      // succeeded or failed
	CallbackHeaderCode     = "X-Kiln-Status-Code" // the function's HTTP status, or the platform's 5xx
	CallbackHeaderAttempts = "X-Kiln-Attempts"
	CallbackHeaderError    = "X-Kiln-Error" // when failed
)

// deliver POSTs one result to its callback URL. Callbacks have their own
// consumer and goroutines, so a callback that hangs holds only one of
// those, for at most CallbackTimeout, and never an invocation worker.
func (w *Worker) deliver(msg jetstream.Msg) {
	h := msg.Headers()
	id, url := h.Get(hID), h.Get(hCallback)
	attempt := 1
	if md, err := msg.Metadata(); err == nil {
		attempt = int(md.NumDelivered)
	}
	var resp kilnv1.InvokeResponse
	if !validID(id) || CheckCallbackURL(url) != nil || proto.Unmarshal(msg.Data(), &resp) != nil {
		w.log.Error("undecodable callback message: dropped", "subject", msg.Subject(), "invocation_id", id)
		msg.TermWithReason("undecodable")
		return
	}

	code, err := w.post(h.Get(hFunction), id, url, h.Get(hState), h.Get(hAttempts), h.Get(hError), &resp)
	if w.ctx.Err() != nil {
		msg.Nak()
		return
	}
	verdict := "delivered"
	switch {
	case err == nil:
	case errors.Is(err, ErrCallbackBlocked):
		// Policy, not bad luck: another attempt would be refused again.
		verdict = "blocked"
	case attempt < w.cfg.CallbackAttempts:
		verdict = "retried"
	default:
		verdict = "failed"
	}
	w.q.m.callbacks.WithLabelValues(verdict).Inc()
	_, uerr := w.q.cas(w.ctx, id, nil, func(s *Status) error {
		if s.Callback == nil {
			s.Callback = &Callback{URL: url}
		}
		cb := s.Callback
		if cb.State == CallbackDelivered {
			return errUnchanged
		}
		cb.Attempts, cb.StatusCode, cb.Error = attempt, code, ""
		switch verdict {
		case "delivered":
			cb.State, cb.DeliveredAt = CallbackDelivered, timePtr(w.q.now())
		case "retried":
			cb.State, cb.Error = CallbackPending, err.Error()
		case "blocked":
			cb.State, cb.Error = CallbackBlocked, err.Error()
		default:
			cb.State, cb.Error = CallbackFailed, err.Error()
		}
		return nil
	})
	if uerr != nil && !errors.Is(uerr, ErrNotFound) {
		w.log.Warn("cannot record a callback's delivery", "invocation_id", id, "err", uerr)
	}
	if verdict == "retried" {
		delay := backoff(attempt, w.cfg.BackoffBase, w.cfg.BackoffMax)
		w.log.Info("callback failed; retrying", "invocation_id", id, "url", url, "attempt", attempt, "retry_in", delay, "err", err)
		msg.NakWithDelay(delay)
		return
	}
	switch verdict {
	case "failed":
		w.log.Warn("callback failed for good", "invocation_id", id, "url", url, "attempts", attempt, "err", err)
	case "blocked":
		w.log.Warn("callback blocked by the callback policy", "invocation_id", id, "url", url, "err", err)
	}
	w.ack(msg)
}

// callbackResponse is what the callback of inv receives when it ended as
// out: the function's answer, or the gateway's JSON error when it gave
// none to pass on; at most bodyLimit bytes of body.
func callbackResponse(inv *Invocation, out outcome.Result, bodyLimit int) *kilnv1.InvokeResponse {
	r := &kilnv1.InvokeResponse{Status: int32(out.Code)}
	if out.Passed() {
		r.Body = out.Resp.GetBody()
		for k, vs := range outcome.ResponseHeaders(out.Resp.GetHeaders()) {
			for _, v := range vs {
				r.Headers = append(r.Headers, &kilnv1.Header{Name: k, Value: v})
			}
		}
	} else {
		r.Body, _ = json.Marshal(out.Body(inv.Function, inv.ID))
		r.Headers = []*kilnv1.Header{{Name: "Content-Type", Value: "application/json"}}
	}
	if len(r.Body) > bodyLimit {
		r.Body = r.Body[:bodyLimit]
		r.Headers = append(r.Headers, &kilnv1.Header{Name: "X-Kiln-Body-Truncated", Value: "true"})
	}
	return r
}

// post makes one delivery attempt; a non-2xx answer is a failure.
func (w *Worker) post(function, id, url, state, attempts, failure string, resp *kilnv1.InvokeResponse) (int, error) {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.CallbackTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(resp.GetBody()))
	if err != nil {
		return 0, err
	}
	for _, hd := range resp.GetHeaders() {
		req.Header.Add(hd.GetName(), hd.GetValue())
	}
	req.Header.Set(CallbackHeaderID, id)
	req.Header.Set(CallbackHeaderFunction, function)
	req.Header.Set(CallbackHeaderStatus, state)
	req.Header.Set(CallbackHeaderCode, strconv.Itoa(int(resp.GetStatus())))
	req.Header.Set(CallbackHeaderAttempts, attempts)
	if failure != "" {
		req.Header.Set(CallbackHeaderError, failure)
	}
	r, err := w.client.Do(req)
	if err != nil {
		if b := blockedBy(err); b != nil {
			return redirectCode(err), b
		}
		var ne net.Error
		if ctx.Err() == context.DeadlineExceeded || errors.As(err, &ne) && ne.Timeout() {
			return 0, fmt.Errorf("the callback did not answer within %s", w.cfg.CallbackTimeout)
		}
		return 0, fmt.Errorf("the callback could not be reached: %v", err)
	}
	io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10))
	r.Body.Close()
	if r.StatusCode < 200 || r.StatusCode > 299 {
		return r.StatusCode, fmt.Errorf("the callback answered HTTP %d; want 2xx", r.StatusCode)
	}
	return r.StatusCode, nil
}

// The callback policy. A callback URL is the caller's, but the POST leaves
// from inside the platform's network: without these checks it reaches
// the management API on loopback, the cloud's metadata service, the
// private network and the other roles' ports (issue 13, finding 2). The
// address is judged where the connection is made, after DNS, by the
// dialer's Control hook, so neither a name resolving to 127.0.0.1 nor one
// rebinding between two lookups gets round it; redirects are not
// followed (a 3xx ends the callback as blocked: following one would only
// hand the caller a second URL the gateway never saw); proxies named in
// the environment are not used (the proxy would make the connection, and
// judge nothing).

// blockedError is a callback the policy stopped; its text is for the
// caller, in the invocation's status.
type blockedError struct{ why string }

func (e *blockedError) Error() string        { return e.why }
func (e *blockedError) Is(target error) bool { return target == ErrCallbackBlocked }

// redirectRefused is what CheckRedirect answers a 3xx with.
type redirectRefused struct {
	code int
	to   string
}

func (e *redirectRefused) Error() string {
	return fmt.Sprintf("the callback answered HTTP %d with a redirect to %s: callbacks follow no redirects", e.code, e.to)
}

// callbackPolicy is the queue's policy, with own as the platform's
// addresses.
func (q *Queue) callbackPolicy(own []netip.Addr) netpolicy.Policy {
	return netpolicy.Policy{Allow: q.cfg.CallbackAllow, Own: own}
}

// callbackAddrAllowed is p.Check with an error for the caller.
func callbackAddrAllowed(p netpolicy.Policy, a netip.Addr) error {
	var de *netpolicy.DeniedError
	if err := p.Check(a); errors.As(err, &de) {
		return &blockedError{fmt.Sprintf("callbacks may not reach %s: it is %s; only public addresses are reached unless the operator allows others (--callback-allow)",
			de.Addr, de.Class.Describe())}
	}
	return nil
}

// blockedBy returns the blockedError err carries (from the dialer or from
// a refused redirect), or nil.
func blockedBy(err error) error {
	var b *blockedError
	if errors.As(err, &b) {
		return b
	}
	var rr *redirectRefused
	if errors.As(err, &rr) {
		return &blockedError{rr.Error()}
	}
	return nil
}

func redirectCode(err error) int {
	var rr *redirectRefused
	if errors.As(err, &rr) {
		return rr.code
	}
	return 0
}

// newCallbackClient is the client callbacks are POSTed with: every
// connection it makes is judged by the queue's policy, with this host's
// addresses as the platform's own.
func (q *Queue) newCallbackClient(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{
		Timeout:   timeout,
		KeepAlive: 30 * time.Second,
		// address is the resolved IP:port about to be connected to.
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &blockedError{fmt.Sprintf("callbacks may not reach %q: not an IP address and port", address)}
			}
			return callbackAddrAllowed(q.callbackPolicy(hostAddrs()), ap.Addr())
		},
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil, // never $HTTP_PROXY: the policy judges the callback's own address
			DialContext:           dialer.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			code := 0
			if req.Response != nil {
				code = req.Response.StatusCode
			}
			return &redirectRefused{code: code, to: req.URL.String()}
		},
	}
}

// hostAddrs are this host's interface addresses: where the platform's
// roles may listen, however public. Read at each dial, so an address
// added since start-up counts too; none when they cannot be read (the
// classes still hold).
func hostAddrs() []netip.Addr {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		if n, ok := ifa.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}
