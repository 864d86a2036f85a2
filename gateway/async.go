package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/gateway/outcome"
	"github.com/kilnfaas/kiln/store/registry"
)

// HeaderCallbackURL names where the result of an async invocation is POSTed.
const HeaderCallbackURL = "X-Callback-Url"

// Accepted is the answer of POST /async-function/NAME.
type Accepted struct {
	ID        string `json:"id"`
	StatusURL string `json:"status_url"`
}

// registerAsync adds the async routes. Without a queue they still answer,
// with a 503 that says why.
func (g *Gateway) registerAsync() {
	g.mux.HandleFunc("/async-function/{name}", g.invokeAsync)
	g.mux.HandleFunc("/async-function/{name}/{rest...}", g.invokeAsync)
	g.mux.HandleFunc("GET /system/invocations/{id}", g.invocationStatus)
}

// invokeAsync checks and stores an invocation, and answers 202 once it is
// durable. Everything a caller can get wrong is refused before anything is
// stored.
func (g *Gateway) invokeAsync(w http.ResponseWriter, r *http.Request) {
	id := uuid.NewString()
	name, ref, refErr := ParseFunctionRef(r.PathValue("name"))
	// Refusals carry no invocation id: nothing was stored under it.
	refuse := g.refuser(w, name, "")
	byName := func(k outcome.Kind, msg string) { refuse(k, name, msg) }
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		refuse(outcome.MethodNotAllowed, unknownFunction, "async invocations are POST requests: POST "+r.URL.Path)
		return
	}
	q := g.cfg.Async
	if q == nil {
		refuse(outcome.AsyncDisabled, unknownFunction,
			"async invocations are not available on this gateway: it was started without a NATS JetStream queue")
		return
	}
	// A split alias is resolved here, once: every attempt of the
	// invocation runs the version picked now.
	fn, ok := g.resolve(r.Context(), name, ref, refErr, refuse)
	if !ok {
		return
	}
	if !g.callerMayInvoke(r, fn.Private, byName) {
		return
	}

	limit := min(g.bodyLimit(fn), q.MaxBodyBytes())
	body, ok := g.readBody(r, limit, " for an async invocation", byName)
	if !ok {
		return
	}
	callback := r.Header.Get(HeaderCallbackURL)
	if callback != "" {
		// The address is judged too (a literal 127.0.0.1 is refused
		// here); the worker's dialer is the check that holds.
		if err := q.CheckCallback(callback); err != nil {
			why := "use an absolute http:// or https:// URL"
			if errors.Is(err, asyncq.ErrCallbackBlocked) {
				why = err.Error()
			}
			byName(outcome.BadRequest, "bad "+HeaderCallbackURL+" "+fmt.Sprintf("%q", callback)+": "+why)
			return
		}
	}

	// X-Kiln-* headers are the platform's to set (the worker adds the
	// invocation id and attempt); the callback URL is for the platform.
	req := invokeRequest(r, "/async-function/", id, fn, body, func(k string) bool {
		return k == HeaderCallbackURL || strings.HasPrefix(k, "X-Kiln-")
	})
	err := q.Enqueue(r.Context(), &asyncq.Invocation{
		ID: id, Function: name, Ref: ref, Version: fn.Version, Retries: fn.AsyncRetryLimit(),
		CallbackURL: callback, Enqueued: time.Now(), Request: req,
	})
	switch {
	case errors.Is(err, asyncq.ErrTooLarge):
		byName(outcome.TooLarge, tooLarge(" for an async invocation", limit))
		return
	case err != nil:
		g.log.Error("enqueueing an async invocation failed", "function", name, "err", err)
		byName(outcome.QueueUnavailable, "the async queue is unavailable, nothing was stored; retry shortly: "+err.Error())
		return
	}
	w.Header().Set(HeaderInvocationID, id)
	w.Header().Set(HeaderVersion, strconv.FormatUint(fn.Version, 10))
	status := "/system/invocations/" + id
	w.Header().Set("Location", status)
	code := outcome.Accepted.Row().Status
	g.metrics.answered(name, code)
	g.log.Debug("async invocation accepted", "function", name, "ref", ref, "version", fn.Version, "invocation_id", id)
	writeJSON(w, code, Accepted{ID: id, StatusURL: status})
}

func (g *Gateway) invocationStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if g.cfg.Async == nil {
		writeError(w, http.StatusServiceUnavailable, apiError{InvocationID: id,
			Error: "async invocations are not available on this gateway: it was started without a NATS JetStream queue"})
		return
	}
	st, err := g.cfg.Async.Status(r.Context(), id)
	switch {
	case errors.Is(err, asyncq.ErrNotFound):
		writeError(w, http.StatusNotFound, apiError{InvocationID: id,
			Error: "no invocation " + fmt.Sprintf("%q", id) + ": ids come from POST /async-function/NAME, and statuses expire after a while"})
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, apiError{InvocationID: id, Error: "the async queue is unavailable, retry shortly: " + err.Error()})
	default:
		writeJSON(w, http.StatusOK, st)
	}
}

// asyncRetries reads a deploy's async retry limit; "" leaves the default.
func (p DeployParams) asyncRetries() (*int, error) {
	if p.AsyncRetries == "" {
		return nil, nil
	}
	n, err := strconv.Atoi(p.AsyncRetries)
	if err != nil || n < 0 || n > registry.MaxAsyncRetries {
		return nil, fmt.Errorf("bad async_retries %q: use a whole number from 0 (never retry) to %d", p.AsyncRetries, registry.MaxAsyncRetries)
	}
	return &n, nil
}
