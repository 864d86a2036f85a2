package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
)

// Response headers the gateway adds to every invocation.
const (
	HeaderInvocationID = "X-Kiln-Invocation-Id"
	HeaderStart        = "X-Kiln-Start"
	HeaderNode         = "X-Kiln-Node"
)

// schedulerSlack is how much longer than the function's own timeout the
// gateway waits for the scheduler: the node enforces the timeout and
// answers OUTCOME_TIMEOUT; the slack covers placement and a cold boot, and
// the gateway's deadline is only the backstop for a lost scheduler.
const schedulerSlack = 10 * time.Second

// hopByHop headers describe one HTTP connection, not the request, and are
// neither forwarded to functions nor copied from their answers.
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Content-Length": true,
}

func (g *Gateway) invoke(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := uuid.NewString()
	w.Header().Set(HeaderInvocationID, id)
	name, ref, refErr := ParseFunctionRef(r.PathValue("name"))
	fail := func(code int, label, msg string) {
		g.metrics.answered(label, code)
		writeError(w, code, apiError{Error: msg, Function: name, InvocationID: id})
	}

	if refErr != nil {
		fail(http.StatusBadRequest, unknownFunction, refErr.Error())
		return
	}
	fn, rcode, rmsg := g.resolve(r.Context(), name, ref)
	if rcode == http.StatusNotFound {
		fail(rcode, unknownFunction, rmsg)
		return
	} else if rcode != 0 {
		fail(rcode, name, rmsg)
		return
	}
	w.Header().Set(HeaderVersion, strconv.FormatUint(fn.Version, 10))

	release, ok := g.admit(w, r, fn, fail)
	if !ok {
		return
	}
	defer release()
	limit := g.bodyLimit(fn)
	tooBig := fmt.Sprintf("request body too large: the limit is %d bytes (%s); send less, or pass a reference to the data instead", limit, humanBytes(limit))
	if r.ContentLength > limit {
		fail(http.StatusRequestEntityTooLarge, name, tooBig)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		fail(http.StatusBadRequest, name, "reading the request body: "+err.Error())
		return
	}
	if int64(len(body)) > limit {
		fail(http.StatusRequestEntityTooLarge, name, tooBig)
		return
	}

	req := invokeRequest(r, "/function/", id, fn, body, nil)

	timeout := time.Duration(fn.TimeoutMs) * time.Millisecond
	ctx, cancel := context.WithTimeout(r.Context(), timeout+schedulerSlack)
	defer cancel()
	resp, err := g.cfg.Scheduler.Invoke(ctx, req)
	g.finished(&invocation{ID: id, Fn: fn, Resp: resp, Err: err, Total: time.Since(start)})
	g.captureLogs(fn, id, resp)
	if err != nil {
		code, msg := fromGRPC(err, fn, r.Context())
		g.log.Warn("invocation failed in the platform", "function", name, "invocation_id", id, "code", code, "err", err)
		fail(code, name, msg)
		return
	}

	startKind := resp.GetStart().Label()
	h := w.Header()
	h.Set(HeaderStart, startKind)
	if resp.GetNode() != "" {
		h.Set(HeaderNode, resp.GetNode())
	}

	if resp.GetOutcome() == kilnv1.Outcome_OUTCOME_OK {
		code := int(resp.GetStatus())
		if code == 0 {
			code = http.StatusOK
		}
		if code < 100 || code > 999 {
			fail(http.StatusBadGateway, name, fmt.Sprintf("the function answered with HTTP status %d, which is not a valid status code", code))
			return
		}
		for _, hd := range resp.GetHeaders() {
			k := http.CanonicalHeaderKey(hd.GetName())
			if hopByHop[k] || strings.HasPrefix(k, "X-Kiln-") {
				continue
			}
			h.Add(k, hd.GetValue())
		}
		h.Set("Content-Length", strconv.Itoa(len(resp.GetBody())))
		w.WriteHeader(code)
		w.Write(resp.GetBody())
		g.metrics.answered(name, code)
		g.log.Debug("invoked", "function", name, "invocation_id", id, "status", code, "start", startKind, "node", resp.GetNode())
		return
	}

	code, msg := fromOutcome(resp, fn)
	e := apiError{Error: msg, Function: name, InvocationID: id, Log: tail(resp.GetLogTail(), 20)}
	if resp.GetOutcome() == kilnv1.Outcome_OUTCOME_FUNCTION_ERROR {
		st := resp.GetStatus()
		e.ExitStatus = &st
	}
	if resp.GetOutcome() == kilnv1.Outcome_OUTCOME_NO_CAPACITY {
		h.Set("Retry-After", "1")
	}
	g.log.Warn("invocation failed", "function", name, "invocation_id", id, "outcome", resp.GetOutcome().String(), "error", resp.GetError())
	g.metrics.answered(name, code)
	writeError(w, code, e)
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
		if hopByHop[k] || (drop != nil && drop(k)) {
			continue
		}
		for _, v := range vs {
			req.Headers = append(req.Headers, &kilnv1.Header{Name: strings.ToLower(k), Value: v})
		}
	}
	return req
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

func fromOutcome(resp *kilnv1.InvokeResponse, fn registry.Function) (int, string) {
	why := resp.GetError()
	switch resp.GetOutcome() {
	case kilnv1.Outcome_OUTCOME_FUNCTION_ERROR:
		return http.StatusInternalServerError, fmt.Sprintf(
			"the function exited with status %d%s; its last log lines are in \"log\"", resp.GetStatus(), suffix(why))
	case kilnv1.Outcome_OUTCOME_CRASHED:
		return http.StatusBadGateway, fmt.Sprintf(
			"the function crashed%s; the instance was replaced, see \"log\" and fix the program", suffix(orDefault(why, "without a reason")))
	case kilnv1.Outcome_OUTCOME_TIMEOUT:
		return http.StatusGatewayTimeout, fmt.Sprintf(
			"the function ran past its timeout of %s and was stopped; make it faster or redeploy with a longer --timeout", time.Duration(fn.TimeoutMs)*time.Millisecond)
	case kilnv1.Outcome_OUTCOME_NO_CAPACITY:
		return http.StatusServiceUnavailable, "no node has capacity for this function right now" + suffix(why) + "; retry shortly, or start more agents"
	case kilnv1.Outcome_OUTCOME_BAD_IMAGE:
		return http.StatusBadGateway, "the function's image could not be loaded" + suffix(why) + "; redeploy it with `kiln deploy`"
	default:
		return http.StatusBadGateway, "the platform returned an unknown outcome " + resp.GetOutcome().String() + suffix(why)
	}
}

func fromGRPC(err error, fn registry.Function, reqCtx context.Context) (int, string) {
	if reqCtx.Err() != nil {
		// 499 is nginx's "client closed request"; nobody reads the body.
		return 499, "the caller went away"
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout, fmt.Sprintf("no answer within the function's timeout of %s plus %s for placement",
			time.Duration(fn.TimeoutMs)*time.Millisecond, schedulerSlack)
	case codes.Unavailable:
		if why, ok := strings.CutPrefix(st.Message(), "scheduler: "); ok {
			// The scheduler answered: a node was lost or unreachable.
			return http.StatusServiceUnavailable, why + "; retry shortly"
		}
		return http.StatusServiceUnavailable, "the scheduler is unreachable (" + st.Message() + "); retry shortly"
	case codes.ResourceExhausted:
		return http.StatusServiceUnavailable, "the platform refused the invocation for lack of resources: " + st.Message()
	case codes.NotFound, codes.FailedPrecondition:
		return http.StatusServiceUnavailable, "the platform cannot run the function now: " + st.Message()
	default:
		return http.StatusBadGateway, "the platform failed to run the function: " + st.Message()
	}
}

func outcomeFromGRPC(err error) string {
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return "timeout"
	case codes.ResourceExhausted:
		return "no_capacity"
	default:
		return "platform_error"
	}
}

func outcomeLabel(o kilnv1.Outcome) string {
	switch o {
	case kilnv1.Outcome_OUTCOME_OK:
		return "ok"
	case kilnv1.Outcome_OUTCOME_FUNCTION_ERROR:
		return "function_error"
	case kilnv1.Outcome_OUTCOME_CRASHED:
		return "crashed"
	case kilnv1.Outcome_OUTCOME_TIMEOUT:
		return "timeout"
	case kilnv1.Outcome_OUTCOME_NO_CAPACITY:
		return "no_capacity"
	case kilnv1.Outcome_OUTCOME_BAD_IMAGE:
		return "bad_image"
	default:
		return "unknown"
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// tail keeps the last n lines of a log, as text.
func tail(b []byte, n int) string {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.ToValidUTF8(strings.Join(lines, "\n"), "\uFFFD")
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d B", n)
	}
}
