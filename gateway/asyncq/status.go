package asyncq

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// State is where an invocation is.
type State string

// States of an invocation. Succeeded and Failed are final. Which outcome
// of an attempt leads to which is the gateway's outcome table's to say.
const (
	Queued    State = State(outcome.AsyncQueued) // waiting for a worker, or for its next attempt
	Running   State = "running"                  // a worker is running it
	Succeeded State = State(outcome.AsyncSucceeded)
	Failed    State = State(outcome.AsyncFailed) // retries spent; the message is a dead letter
)

// Final reports whether s can no longer change (callbacks aside).
func (s State) Final() bool { return s == Succeeded || s == Failed }

// Callback states.
const (
	CallbackPending   = "pending"
	CallbackDelivered = "delivered"
	CallbackFailed    = "failed"
	// CallbackBlocked: the callback policy kept the POST from its address
	// (or from where it redirected); Error says why. Never retried.
	CallbackBlocked = "blocked"
)

// Status is the answer of GET /system/invocations/ID, and what the KV
// bucket holds for each id.
type Status struct {
	ID       string `json:"id"`
	Function string `json:"function"`
	Ref      string `json:"ref,omitempty"`
	Version  uint64 `json:"version"`
	State    State  `json:"status"`
	// Attempts counts the runs started so far; MaxAttempts is 1 + the
	// function's retry limit.
	Attempts    int `json:"attempts"`
	MaxAttempts int `json:"max_attempts"`
	// LostRuns counts attempts whose worker went away before they ended
	// (a crash, a lost connection, a shutdown). They are run again without
	// spending the function's retries, up to MaxLostRuns.
	LostRuns int `json:"lost_runs,omitempty"`
	// Error is the last attempt's failure, in words.
	Error         string     `json:"error,omitempty"`
	EnqueuedAt    time.Time  `json:"enqueued_at"`
	StartedAt     *time.Time `json:"started_at,omitempty"`
	FinishedAt    *time.Time `json:"finished_at,omitempty"`
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	Result        *Result    `json:"result,omitempty"`
	History       []Attempt  `json:"history,omitempty"`
	Callback      *Callback  `json:"callback,omitempty"`
}

// Result is the last attempt's answer: what a synchronous call would have
// answered (the function's own status, or the platform's 5xx for a crash,
// a timeout, no capacity).
type Result struct {
	StatusCode int                 `json:"status_code"`
	Headers    map[string][]string `json:"headers,omitempty"`
	// Body is the response body when it is UTF-8 text, else BodyBase64.
	Body          string `json:"body,omitempty"`
	BodyBase64    string `json:"body_base64,omitempty"`
	BodyBytes     int    `json:"body_bytes"`
	BodyTruncated bool   `json:"body_truncated,omitempty"`
	Log           string `json:"log,omitempty"` // stderr's last lines, on failure
	Node          string `json:"node,omitempty"`
	Start         string `json:"start,omitempty"` // warm, restore or boot
}

// Attempt is one run of the function.
type Attempt struct {
	Attempt    int        `json:"attempt"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	StatusCode int        `json:"status_code,omitempty"`
	Error      string     `json:"error,omitempty"`
}

// Callback is the delivery of the result to the caller's X-Callback-Url.
type Callback struct {
	URL         string     `json:"url"`
	State       string     `json:"status"` // pending, delivered, failed, blocked
	Attempts    int        `json:"attempts"`
	StatusCode  int        `json:"status_code,omitempty"` // the callback's answer
	Error       string     `json:"error,omitempty"`
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
}

func newStatus(inv *Invocation) *Status {
	st := &Status{
		ID: inv.ID, Function: inv.Function, Ref: inv.Ref, Version: inv.Version,
		State: Queued, MaxAttempts: inv.Retries + 1, EnqueuedAt: inv.Enqueued.UTC(),
	}
	if inv.CallbackURL != "" {
		st.Callback = &Callback{URL: inv.CallbackURL, State: CallbackPending}
	}
	return st
}

// resultOf is what the status keeps of an attempt that ended as out: the
// function's answer when it is passed on, its last log lines when the
// attempt failed.
func resultOf(out outcome.Result, bodyLimit int) *Result {
	var body []byte
	var headers http.Header
	if out.Passed() {
		body, headers = out.Resp.GetBody(), outcome.ResponseHeaders(out.Resp.GetHeaders())
	}
	r := newResult(out.Code, headers, body, bodyLimit)
	if out.Async != outcome.AsyncSucceeded {
		r.Log = outcome.Tail(out.Resp.GetLogTail(), outcome.LogLines)
	}
	r.Node = out.Resp.GetNode()
	if s := out.Resp.GetStart(); s != kilnv1.StartKind_START_UNSPECIFIED {
		r.Start = s.Label()
	}
	return r
}

// newResult keeps at most limit bytes of body.
func newResult(code int, headers http.Header, body []byte, limit int) *Result {
	r := &Result{StatusCode: code, BodyBytes: len(body)}
	if len(headers) > 0 {
		r.Headers = headers
	}
	if len(body) > limit {
		body, r.BodyTruncated = body[:limit], true
	}
	if utf8.Valid(body) {
		r.Body = string(body)
	} else {
		r.BodyBase64 = base64.StdEncoding.EncodeToString(body)
	}
	return r
}

func (q *Queue) load(ctx context.Context, id string) (*Status, uint64, error) {
	e, err := q.kv.Get(ctx, id)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	case err != nil:
		return nil, 0, fmt.Errorf("%w: status %s: %v", ErrUnavailable, id, err)
	}
	var st Status
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, 0, fmt.Errorf("%w: status %s is not JSON: %v", ErrUnavailable, id, err)
	}
	return &st, e.Revision(), nil
}

// errUnchanged from an update's change function leaves the record as it is.
var errUnchanged = errors.New("unchanged")

// update applies change to the status of inv.ID as a compare-and-set, so
// that the invocation worker and the callback worker, which write
// different fields of one record, never undo each other. A missing record
// (expired, or never written) is recreated from inv.
func (q *Queue) update(ctx context.Context, inv *Invocation, change func(*Status) error) (*Status, error) {
	return q.cas(ctx, inv.ID, func() *Status { return newStatus(inv) }, change)
}

// cas is update for id; a missing record is recreated by fresh, or is
// ErrNotFound when fresh is nil.
func (q *Queue) cas(ctx context.Context, id string, fresh func() *Status, change func(*Status) error) (*Status, error) {
	for try := 0; ; try++ {
		st, rev, err := q.load(ctx, id)
		if errors.Is(err, ErrNotFound) && fresh != nil {
			st, rev, err = fresh(), 0, nil
		}
		if err != nil {
			return nil, err
		}
		if err := change(st); errors.Is(err, errUnchanged) {
			return st, nil
		} else if err != nil {
			return nil, err
		}
		b, err := json.Marshal(st)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			_, err = q.kv.Create(ctx, id, b)
		} else {
			_, err = q.kv.Update(ctx, id, b, rev)
		}
		conflict := errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
			(err != nil && strings.Contains(err.Error(), "wrong last sequence"))
		if conflict && try < 50 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: status %s: %v", ErrUnavailable, id, err)
		}
		return st, nil
	}
}

func timePtr(t time.Time) *time.Time { t = t.UTC(); return &t }
