package outcome

import (
	"context"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// SchedulerSlack is how much longer than the function's own timeout the
// gateway and the async workers wait for the scheduler: the node enforces
// the timeout and answers OUTCOME_TIMEOUT; the slack covers placement and a
// cold boot, and the caller's deadline is only the backstop for a lost
// scheduler (row NoAnswer).
const SchedulerSlack = 10 * time.Second

// LogLines is how many of the function's last stderr lines an error
// carries.
const LogLines = 20

// Result is one invocation's outcome: its row, the HTTP status and the
// error in words.
type Result struct {
	Kind Kind
	Row
	// Code is the HTTP status of the answer: the row's, or the function's
	// own when the row passes the function's answer on.
	Code int
	// Message is the error in words; "" for OK.
	Message string
	// Resp is the node's answer; nil when none came (a gRPC error, a
	// refusal).
	Resp *kilnv1.InvokeResponse
}

// Of classifies the scheduler's answer to one invocation: resp, or err (a
// gRPC error) when there is none. ctx is the caller's context (not the
// one bounded by timeout + SchedulerSlack): when it has ended, the caller
// went away. timeout is the function's, which the words quote.
func Of(ctx context.Context, resp *kilnv1.InvokeResponse, err error, timeout time.Duration) Result {
	if err == nil {
		return OfResponse(resp, timeout)
	}
	st, _ := status.FromError(err)
	if ctx.Err() != nil {
		// The call ended because the caller did, whatever code it ended with.
		return newResult(CallerGone, facts{})
	}
	k, ok := byCode[st.Code()]
	if !ok {
		k = PlatformFailed
	}
	return newResult(k, facts{why: st.Message(), timeout: timeout})
}

// byCode is the row of each gRPC code the scheduler's errors carry; any
// other code is PlatformFailed.
var byCode = map[codes.Code]Kind{
	codes.Canceled:           CallerGone,
	codes.DeadlineExceeded:   NoAnswer,
	codes.Unavailable:        Unavailable,
	codes.ResourceExhausted:  Exhausted,
	codes.NotFound:           CannotRun,
	codes.FailedPrecondition: CannotRun,
}

// byOutcome is the row of each Outcome a node answers; OK is then split by
// the function's status (OK, ServerError, BadStatus), and any Outcome not
// here is UnknownOutcome.
var byOutcome = map[kilnv1.Outcome]Kind{
	kilnv1.Outcome_OUTCOME_OK:             OK,
	kilnv1.Outcome_OUTCOME_FUNCTION_ERROR: FunctionError,
	kilnv1.Outcome_OUTCOME_CRASHED:        Crashed,
	kilnv1.Outcome_OUTCOME_TIMEOUT:        Timeout,
	kilnv1.Outcome_OUTCOME_NO_CAPACITY:    NoCapacity,
	kilnv1.Outcome_OUTCOME_BAD_IMAGE:      BadImage,
	kilnv1.Outcome_OUTCOME_PLATFORM_ERROR: NotStarted,
}

// Label is the metric outcome label of the scheduler's answer (resp, or
// err when there is none). It depends on the answer alone, so that the
// metrics, the log store and the async workers agree whatever context
// they judge it in.
func Label(resp *kilnv1.InvokeResponse, err error) string {
	return Of(context.Background(), resp, err, 0).Label
}

// OfResponse classifies a node's answer.
func OfResponse(resp *kilnv1.InvokeResponse, timeout time.Duration) Result {
	f := facts{status: resp.GetStatus(), why: resp.GetError(), outcome: resp.GetOutcome().String(), timeout: timeout}
	k, ok := byOutcome[resp.GetOutcome()]
	if !ok {
		k = UnknownOutcome
	}
	if k == OK {
		// The function answered: its status decides what that means.
		if f.status == 0 {
			f.status = http.StatusOK
		}
		switch {
		case f.status < 100 || f.status > 999:
			k = BadStatus
		case f.status >= 500:
			k = ServerError
		}
	}
	r := newResult(k, f)
	r.Resp = resp
	return r
}

// newResult is the result of kind k; f feeds the row's words.
func newResult(k Kind, f facts) Result {
	r := Result{Kind: k, Row: k.Row(), Code: k.Row().Status}
	if r.Code == 0 {
		r.Code = int(f.status)
	}
	if r.say != nil {
		r.Message = r.say(f)
	}
	return r
}

// With is the result of kind k worded msg: an answer the gateway gives
// itself (a refusal, an async invocation given up), whose words only the
// caller knows.
func With(k Kind, msg string) Result {
	r := newResult(k, facts{})
	r.Message = msg
	return r
}

// Passed reports whether the caller gets the function's own answer (its
// status, headers and body) rather than a JSON error.
func (r Result) Passed() bool { return r.Status == 0 }

// ErrorBody is the JSON body of every error the gateway answers, and of an
// async invocation's callback when the function gave no answer to pass on.
type ErrorBody struct {
	Error        string `json:"error"`
	Function     string `json:"function,omitempty"`
	InvocationID string `json:"invocation_id,omitempty"`
	ExitStatus   *int32 `json:"exit_status,omitempty"`
	Log          string `json:"log,omitempty"`
}

// Body is r's JSON error for an invocation of function with id: its
// words, the program's exit status when the row says so, and the last
// LogLines lines the function wrote to stderr.
func (r Result) Body(function, id string) ErrorBody {
	e := ErrorBody{Error: r.Message, Function: function, InvocationID: id, Log: Tail(r.Resp.GetLogTail(), LogLines)}
	if r.ExitStatus {
		st := r.Resp.GetStatus()
		e.ExitStatus = &st
	}
	return e
}

// Tail keeps the last n lines of a log, as text.
func Tail(b []byte, n int) string {
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

// hopByHop headers describe one HTTP connection, not the request, and are
// neither forwarded to functions nor copied from their answers.
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Content-Length": true,
}

// HopByHop reports whether the canonical header name k belongs to one
// connection and must not be passed on.
func HopByHop(k string) bool { return hopByHop[k] }

// ResponseHeaders are the headers of a function's answer that reach its
// caller: all but the hop-by-hop ones and X-Kiln-*, which are the
// platform's to set.
func ResponseHeaders(hs []*kilnv1.Header) http.Header {
	h := http.Header{}
	for _, hd := range hs {
		k := http.CanonicalHeaderKey(hd.GetName())
		if hopByHop[k] || strings.HasPrefix(k, "X-Kiln-") {
			continue
		}
		h.Add(k, hd.GetValue())
	}
	return h
}
