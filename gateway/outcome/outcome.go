// Package outcome is the one table of what an invocation through the
// gateway came to. For every way a call can end — the function answered,
// exited non-zero, crashed or ran out of time; no node had room; the
// platform failed; the caller was refused at the door (bad request,
// unauthorized, not deployed, limited, body too large) — one Row says the
// HTTP status the caller gets, the JSON error it is told in (ErrorBody),
// the `outcome` label of the metrics, and the status an async invocation
// ends in and whether a worker tries it again.
//
// The gateway's synchronous path and the async workers (gateway/asyncq)
// both classify the scheduler's answer with Of and act on the row, so the
// two cannot disagree; the gateway also answers its refusals from the
// table. What both pass on of an answer (ResponseHeaders, HopByHop, Tail)
// and how long both wait for the scheduler (SchedulerSlack) live here too.
//
// # The scheduler's Unavailable is platform_error
//
// The scheduler never reports a lack of room as an error: when no node can
// take an invocation it answers OUTCOME_NO_CAPACITY (row NoCapacity,
// label no_capacity). Its gRPC Unavailable means the platform failed to
// carry the call: a node was lost or drained while running it (the
// function may have run), a node was unreachable and no other could take
// it, the scheduler is shutting down (scheduler.Scheduler.Invoke), or the
// scheduler itself could not be reached. So Unavailable is labelled
// platform_error, as the synchronous path always did (the async workers
// said no_capacity, which would send an operator to add nodes when a node
// or the scheduler is what failed). It stays a 503 — the caller may retry
// shortly — and an async worker still retries it. The gRPC codes Kiln
// itself never returns (NotFound, FailedPrecondition) are platform_error
// too.
//
// A call canceled by its caller (gRPC Canceled: on the synchronous path,
// the HTTP caller went away, 499) is labelled canceled: neither the
// function nor the platform failed. The label depends on the scheduler's
// answer alone (Label), so every part that records it agrees.
//
// # Refusals
//
// Rows with an empty Label never reached the scheduler: the duration
// histogram and kiln_faas_errors_total count invocations, so refusals
// appear only in kiln_gateway_requests_total, by HTTP status. Their async
// status is empty: an async request refused at the door stores nothing.
package outcome

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Kind names one row of the table.
type Kind uint8

// The kinds of outcome. The first group comes from the scheduler's answer
// (Of classifies it), Lost from an async worker, the rest are the
// gateway's own answers before anything ran.
const (
	OK             Kind = iota // the function answered, below 500
	ServerError                // the function answered 5xx
	BadStatus                  // the function answered a status HTTP cannot carry
	FunctionError              // exec: the program exited non-zero (OUTCOME_FUNCTION_ERROR)
	Crashed                    // OUTCOME_CRASHED
	Timeout                    // the node stopped it at its timeout (OUTCOME_TIMEOUT)
	NoCapacity                 // no node could take it (OUTCOME_NO_CAPACITY)
	BadImage                   // OUTCOME_BAD_IMAGE
	NotStarted                 // OUTCOME_PLATFORM_ERROR: the node could not start it (its image store failed)
	UnknownOutcome             // an Outcome this gateway does not know
	NoAnswer                   // gRPC DeadlineExceeded: no answer within timeout + SchedulerSlack
	Unavailable                // gRPC Unavailable: a node or the scheduler failed (see the package doc)
	Exhausted                  // gRPC ResourceExhausted
	CannotRun                  // gRPC NotFound, FailedPrecondition
	PlatformFailed             // any other gRPC code
	CallerGone                 // gRPC Canceled, or the caller's context ended first
	Lost                       // async: too many runs lost with their worker

	BadRequest          // a malformed NAME@REF, an unreadable body, a bad callback URL
	Unauthorized        // a private function, or the management API, without a valid key
	Forbidden           // a caller let in without a key (no key exists yet) that a web page may have sent
	NotFound            // no such function, version or alias
	MethodNotAllowed    // an async invocation that is not a POST
	TooLarge            // the body is over the limit
	SlowBody            // the body did not arrive within the gateway's body timeout
	Limited             // over the function's rate or concurrency limit
	RegistryUnavailable // the registry failed the lookup
	KeyStoreUnavailable // the API key store failed the check
	AsyncDisabled       // an async invocation on a gateway without a queue
	QueueUnavailable    // the queue failed to store an async invocation
	Accepted            // an async invocation was stored

	numKinds
)

// Metric `outcome` labels (kiln_invocation_duration_seconds, the type of
// kiln_faas_errors_total, kiln_async_attempts_total, the log store).
const (
	LabelOK            = "ok"
	LabelFunctionError = "function_error"
	LabelCrashed       = "crashed"
	LabelTimeout       = "timeout"
	LabelNoCapacity    = "no_capacity"
	LabelBadImage      = "bad_image"
	LabelUnknown       = "unknown"
	LabelPlatformError = "platform_error"
	LabelCanceled      = "canceled"
)

// AsyncState is the status an async invocation reports
// (GET /system/invocations/ID); package asyncq's states are these.
type AsyncState string

// The async states a row can lead to.
const (
	AsyncQueued    AsyncState = "queued"
	AsyncSucceeded AsyncState = "succeeded"
	AsyncFailed    AsyncState = "failed"
)

// Row is what one kind of outcome means to every part of the gateway.
type Row struct {
	// Name is the row's name in logs and tests.
	Name string
	// Label is the metric outcome label; "" for a refusal (never ran).
	Label string
	// Status is the HTTP status of the answer; 0 means the function's own.
	Status int
	// Header is a header the answer always carries (name, value), such as
	// Retry-After; Limited's Retry-After varies and is set by the limiter.
	Header [2]string
	// ExitStatus: the JSON error carries the program's exit status.
	ExitStatus bool
	// Async is the status of an async invocation whose last attempt ended
	// so ("" when nothing is stored); Retry whether a worker tries again
	// while the function's retries last.
	Async AsyncState
	Retry bool
	// say words the error from the facts of the answer; nil when the
	// caller words it (refusals, Lost) or there is no error (OK).
	say func(f facts) string
}

// facts are what a row's words may quote.
type facts struct {
	status  int32  // the function's HTTP or exit status
	why     string // the node's or the scheduler's own words
	outcome string // the node's Outcome, by name
	timeout time.Duration
}

var (
	retryAfter1 = [2]string{"Retry-After", "1"}
	bearerRealm = [2]string{"WWW-Authenticate", `Bearer realm="kiln"`}
)

var table = [numKinds]Row{
	OK: {Name: "ok", Label: LabelOK, Async: AsyncSucceeded},
	ServerError: {Name: "server_error", Label: LabelOK, Async: AsyncFailed, Retry: true,
		say: func(f facts) string { return fmt.Sprintf("the function answered HTTP %d", f.status) }},
	BadStatus: {Name: "bad_status", Label: LabelOK, Status: http.StatusBadGateway, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return fmt.Sprintf("the function answered with HTTP status %d, which is not a valid status code", f.status)
		}},
	FunctionError: {Name: "function_error", Label: LabelFunctionError, Status: http.StatusInternalServerError,
		ExitStatus: true, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return fmt.Sprintf("the function exited with status %d%s; its last log lines are in \"log\"", f.status, suffix(f.why))
		}},
	Crashed: {Name: "crashed", Label: LabelCrashed, Status: http.StatusBadGateway, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return "the function crashed" + suffix(orDefault(f.why, "without a reason")) + "; the instance was replaced, see \"log\" and fix the program"
		}},
	Timeout: {Name: "timeout", Label: LabelTimeout, Status: http.StatusGatewayTimeout, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return fmt.Sprintf("the function ran past its timeout of %s and was stopped; make it faster or redeploy with a longer --timeout", f.timeout)
		}},
	NoCapacity: {Name: "no_capacity", Label: LabelNoCapacity, Status: http.StatusServiceUnavailable, Header: retryAfter1,
		Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return "no node has capacity for this function right now" + suffix(f.why) + "; retry shortly, or start more agents"
		}},
	BadImage: {Name: "bad_image", Label: LabelBadImage, Status: http.StatusBadGateway, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return "the function's image could not be loaded" + suffix(f.why) + "; redeploy it with `kiln deploy`"
		}},
	NotStarted: {Name: "not_started", Label: LabelPlatformError, Status: http.StatusServiceUnavailable, Header: retryAfter1,
		Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return "the platform could not start the function" + suffix(f.why) + "; nothing ran, retry shortly"
		}},
	UnknownOutcome: {Name: "unknown_outcome", Label: LabelUnknown, Status: http.StatusBadGateway, Async: AsyncFailed, Retry: true,
		say: func(f facts) string { return "the platform returned an unknown outcome " + f.outcome + suffix(f.why) }},
	NoAnswer: {Name: "no_answer", Label: LabelTimeout, Status: http.StatusGatewayTimeout, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			return fmt.Sprintf("no answer within the function's timeout of %s plus %s for placement", f.timeout, SchedulerSlack)
		}},
	Unavailable: {Name: "unavailable", Label: LabelPlatformError, Status: http.StatusServiceUnavailable, Async: AsyncFailed, Retry: true,
		say: func(f facts) string {
			if why, ok := strings.CutPrefix(f.why, "scheduler: "); ok {
				// The scheduler answered: a node was lost or unreachable.
				return why + "; retry shortly"
			}
			return "the scheduler is unreachable (" + f.why + "); retry shortly"
		}},
	Exhausted: {Name: "exhausted", Label: LabelNoCapacity, Status: http.StatusServiceUnavailable, Async: AsyncFailed, Retry: true,
		say: func(f facts) string { return "the platform refused the invocation for lack of resources: " + f.why }},
	CannotRun: {Name: "cannot_run", Label: LabelPlatformError, Status: http.StatusServiceUnavailable, Async: AsyncFailed, Retry: true,
		say: func(f facts) string { return "the platform cannot run the function now: " + f.why }},
	PlatformFailed: {Name: "platform_failed", Label: LabelPlatformError, Status: http.StatusBadGateway, Async: AsyncFailed, Retry: true,
		say: func(f facts) string { return "the platform failed to run the function: " + f.why }},
	// 499 is nginx's "client closed request"; nobody reads the answer. An
	// async worker cancels its calls only when it stops, and then leaves
	// the message to be redelivered without judging the run; a Canceled
	// from elsewhere is retried like any failure of the platform.
	CallerGone: {Name: "caller_gone", Label: LabelCanceled, Status: 499, Async: AsyncFailed, Retry: true,
		say: func(facts) string { return "the caller went away" }},
	Lost: {Name: "lost", Label: LabelPlatformError, Status: http.StatusBadGateway, Async: AsyncFailed},

	BadRequest:          {Name: "bad_request", Status: http.StatusBadRequest},
	Unauthorized:        {Name: "unauthorized", Status: http.StatusUnauthorized, Header: bearerRealm},
	Forbidden:           {Name: "forbidden", Status: http.StatusForbidden},
	NotFound:            {Name: "not_found", Status: http.StatusNotFound},
	MethodNotAllowed:    {Name: "method_not_allowed", Status: http.StatusMethodNotAllowed},
	TooLarge:            {Name: "too_large", Status: http.StatusRequestEntityTooLarge},
	SlowBody:            {Name: "slow_body", Status: http.StatusRequestTimeout},
	Limited:             {Name: "limited", Status: http.StatusTooManyRequests},
	RegistryUnavailable: {Name: "registry_unavailable", Status: http.StatusServiceUnavailable},
	KeyStoreUnavailable: {Name: "key_store_unavailable", Status: http.StatusServiceUnavailable, Header: retryAfter1},
	AsyncDisabled:       {Name: "async_disabled", Status: http.StatusServiceUnavailable},
	QueueUnavailable:    {Name: "queue_unavailable", Status: http.StatusServiceUnavailable, Header: retryAfter1},
	Accepted:            {Name: "accepted", Status: http.StatusAccepted, Async: AsyncQueued},
}

// Row is k's row of the table.
func (k Kind) Row() Row {
	if k >= numKinds {
		return Row{Name: fmt.Sprintf("kind(%d)", k)}
	}
	return table[k]
}

func (k Kind) String() string { return k.Row().Name }

// Kinds lists every kind, in table order.
func Kinds() []Kind {
	ks := make([]Kind, numKinds)
	for i := range ks {
		ks[i] = Kind(i)
	}
	return ks
}

// SetHeader sets the header the row's answer always carries, if any.
func (r Row) SetHeader(h http.Header) {
	if r.Header[0] != "" {
		h.Set(r.Header[0], r.Header[1])
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
