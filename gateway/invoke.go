package gateway

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
)

// Response headers the gateway adds to every invocation.
const (
	HeaderInvocationID = "X-Kiln-Invocation-Id"
	HeaderStart        = "X-Kiln-Start"
	HeaderNode         = "X-Kiln-Node"
	// HeaderVersion names the version that served an invocation: with a
	// split alias the caller cannot otherwise tell which side of the canary
	// it hit.
	HeaderVersion = "X-Kiln-Version"
)

// invoke runs one synchronous invocation of /function/NAME[@REF][/PATH],
// in this order: which version runs (the registry), whether the caller may
// call it (auth.go), the body, whether the call is within the function's
// limits (limits.go), the scheduler, the answer. Every way it ends is a
// row of the outcome table.
//
// The body comes before the limits: a concurrency slot or rate token taken
// first would be held by a caller sending its body slowly, and one such
// caller kept a function of --max-concurrency 1 at 429 (docs/SECURITY.md).
// Read first, a body costs its caller the body timeout and no one else
// anything; a call refused 413 or 408 still takes no slot and no token.
func (g *Gateway) invoke(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := uuid.NewString()
	w.Header().Set(HeaderInvocationID, id)
	name, ref, refErr := ParseFunctionRef(r.PathValue("name"))
	refuse := g.refuser(w, name, id)
	byName := func(k outcome.Kind, msg string) { refuse(k, name, msg) }

	fn, ok := g.resolve(r.Context(), name, ref, refErr, refuse)
	if !ok {
		return
	}
	w.Header().Set(HeaderVersion, strconv.FormatUint(fn.Version, 10))

	if !g.callerMayInvoke(r, fn.Private, byName) {
		return
	}
	body, ok := g.readBody(r, g.bodyLimit(fn), "", byName)
	if !ok {
		return
	}
	release, ok := g.withinLimits(w, fn, byName)
	if !ok {
		return
	}
	defer release()

	req := invokeRequest(r, "/function/", id, fn, body, nil)
	timeout := time.Duration(fn.TimeoutMs) * time.Millisecond
	// The server's write timeout is for the longest function there may
	// be; a caller who stops reading this one's answer holds it only for
	// this function's own timeout (see MaxAnswerTime).
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(timeout + outcome.SchedulerSlack + answerSendTime))
	ctx, cancel := context.WithTimeout(r.Context(), timeout+outcome.SchedulerSlack)
	defer cancel()
	resp, err := g.cfg.Scheduler.Invoke(ctx, req)
	g.finished(&invocation{ID: id, Fn: fn, Resp: resp, Err: err, Total: time.Since(start)})
	g.captureLogs(fn, id, resp)
	g.answer(w, name, id, outcome.Of(r.Context(), resp, err, timeout), err)
}

// refuseFunc answers a request refused before it reached the scheduler:
// kind k's status and header, msg as the error, counted in
// kiln_gateway_requests_total under metricName.
type refuseFunc func(k outcome.Kind, metricName, msg string)

// refuser is the refuseFunc of one invocation request for function name
// (id "" when the answer carries none).
func (g *Gateway) refuser(w http.ResponseWriter, name, id string) refuseFunc {
	return func(k outcome.Kind, metricName, msg string) {
		g.metrics.answered(metricName, k.Row().Status)
		writeRefusal(w, k, apiError{Error: msg, Function: name, InvocationID: id})
	}
}

// writeRefusal answers with kind k's status and header and error e.
func writeRefusal(w http.ResponseWriter, k outcome.Kind, e apiError) {
	row := k.Row()
	row.SetHeader(w.Header())
	writeError(w, row.Status, e)
}

// ParseFunctionRef splits the NAME[@REF] segment of an invocation path,
// where REF is an alias or a version number. It checks only REF's form (a
// malformed REF is the caller's mistake, 400); the name is checked by the
// lookup (an impossible name is simply not deployed, 404).
func ParseFunctionRef(seg string) (name, ref string, err error) {
	name, ref, at := strings.Cut(seg, "@")
	if !at {
		return name, "", nil
	}
	if ref == "" {
		return name, "", fmt.Errorf("%q names nothing after '@': use NAME@ALIAS (e.g. %s@prod) or NAME@VERSION (e.g. %s@3)", seg, name, name)
	}
	if strings.Trim(ref, "0123456789") == "" {
		if v, err := strconv.ParseUint(ref, 10, 64); err != nil || v == 0 {
			return name, "", fmt.Errorf("%q: version %s does not exist: versions are numbered from 1", seg, ref)
		}
		return name, ref, nil
	}
	if !registry.ValidName(ref) {
		return name, "", fmt.Errorf("%q: %q is not an alias name: aliases are 1-63 characters of a-z, 0-9 and '-'", seg, ref)
	}
	return name, ref, nil
}

// resolve finds the version one invocation of name@ref runs, picking by
// weight when ref is an alias that splits traffic; name, ref and refErr
// are what ParseFunctionRef made of the path. On failure it refuses the
// request, saying what is wrong or missing and what to do, and reports
// false.
func (g *Gateway) resolve(ctx context.Context, name, ref string, refErr error, refuse refuseFunc) (registry.Function, bool) {
	if refErr != nil {
		refuse(outcome.BadRequest, unknownFunction, refErr.Error())
		return registry.Function{}, false
	}
	route, err := g.cfg.Registry.Resolve(ctx, name, ref)
	switch {
	case err == nil:
		return route.Pick(g.randN(100)), true
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidName):
		// Not deployed: counted as unknownFunction, so that callers cannot
		// grow the metric's cardinality with made-up names.
		msg := fmt.Sprintf("function %q is not deployed: deploy it with `kiln deploy %s --binary FILE`, or list deployed functions with `kiln list`", name, name)
		if ref != "" {
			// Say which half is missing: the function, or what ref names.
			if _, err := g.cfg.Registry.GetFunction(ctx, name, ""); err == nil {
				if strings.Trim(ref, "0123456789") == "" {
					msg = fmt.Sprintf("function %q has no version %s: list its versions with `kiln versions %s`", name, ref, name)
				} else {
					msg = fmt.Sprintf("function %q has no alias %q: list its aliases with `kiln alias %s`, or create it with `kiln alias %s %s VERSION`", name, ref, name, name, ref)
				}
			}
		}
		refuse(outcome.NotFound, unknownFunction, msg)
	default:
		g.log.Error("registry lookup failed", "function", name, "ref", ref, "err", err)
		refuse(outcome.RegistryUnavailable, name, "the function registry is unavailable, retry shortly: "+err.Error())
	}
	return registry.Function{}, false
}

// randN is uniform in [0, n): Config.RandN, else math/rand/v2.
func (g *Gateway) randN(n int) int {
	if g.cfg.RandN != nil {
		return g.cfg.RandN(n)
	}
	return rand.IntN(n)
}

// invokeRequest is the agent's view of HTTP request r for function fn, sync
// or async alike: the path after prefix and NAME@REF, the query, the body,
// and every header but the hop-by-hop ones and those drop refuses.
func invokeRequest(r *http.Request, prefix, id string, fn registry.Function, body []byte, drop func(string) bool) *kilnv1.InvokeRequest {
	req := &kilnv1.InvokeRequest{
		InvocationId: id,
		Function:     FunctionSpec(fn),
		Method:       r.Method,
		Path:         invokePath(r.URL.EscapedPath(), prefix),
		Query:        r.URL.RawQuery,
		Body:         body,
	}
	for k, vs := range r.Header {
		if outcome.HopByHop(k) || (drop != nil && drop(k)) {
			continue
		}
		for _, v := range vs {
			req.Headers = append(req.Headers, &kilnv1.Header{Name: strings.ToLower(k), Value: v})
		}
	}
	return req
}

// invokePath is what follows /prefix/NAME[@REF] in an escaped request
// path, "/" when nothing does.
func invokePath(escaped, prefix string) string {
	rest := strings.TrimPrefix(escaped, prefix)
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i:]
	}
	return "/"
}

// FunctionSpec is what a node needs to know about a registry version.
func FunctionSpec(f registry.Function) *kilnv1.FunctionSpec {
	kind := kilnv1.Kind_KIND_SERVE
	if f.Kind == registry.KindExec {
		kind = kilnv1.Kind_KIND_EXEC
	}
	return &kilnv1.FunctionSpec{
		Name: f.Name, Version: f.Version, ImageDigest: f.ImageDigest, Kind: kind,
		MemoryBytes: f.MemoryBytes, TimeoutMs: f.TimeoutMs, Env: f.Env, Args: f.Args,
		MinWarm: uint32(f.MinWarm), MaxInstances: uint32(f.MaxInstances), KeepAliveMs: f.KeepAliveMs, Fresh: f.Fresh,
		DeadlineMs: f.DeadlineMs, SlaTarget: f.Target,
	}
}

// answer writes the outcome of an invocation the scheduler answered, or
// failed to (err): the function's own answer, or the row's status and
// header with a JSON error that says what happened and what to do.
func (g *Gateway) answer(w http.ResponseWriter, name, id string, out outcome.Result, err error) {
	h := w.Header()
	if resp := out.Resp; resp != nil {
		h.Set(HeaderStart, resp.GetStart().Label())
		if resp.GetNode() != "" {
			h.Set(HeaderNode, resp.GetNode())
		}
	}
	g.metrics.answered(name, out.Code)
	if out.Passed() {
		for k, vs := range outcome.ResponseHeaders(out.Resp.GetHeaders()) {
			for _, v := range vs {
				h.Add(k, v)
			}
		}
		h.Set("Content-Length", strconv.Itoa(len(out.Resp.GetBody())))
		w.WriteHeader(out.Code)
		w.Write(out.Resp.GetBody())
		g.log.Debug("invoked", "function", name, "invocation_id", id, "status", out.Code, "start", h.Get(HeaderStart), "node", out.Resp.GetNode())
		return
	}
	if err != nil {
		g.log.Warn("invocation failed in the platform", "function", name, "invocation_id", id, "code", out.Code, "err", err)
	} else {
		g.log.Warn("invocation failed", "function", name, "invocation_id", id, "outcome", out.Name, "error", out.Resp.GetError())
	}
	out.SetHeader(h)
	writeError(w, out.Code, out.Body(name, id))
}
