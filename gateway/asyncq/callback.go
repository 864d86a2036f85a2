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
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/kilnfaas/kiln/gateway/outcome"
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
	if verdict == "failed" {
		w.log.Warn("callback failed for good", "invocation_id", id, "url", url, "attempts", attempt, "err", err)
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
	r, err := w.cfg.HTTPClient.Do(req)
	if err != nil {
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
