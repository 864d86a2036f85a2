package outcome

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// TestTable pins every row: a change to what an outcome means to callers,
// metrics or async invocations shows up here first.
func TestTable(t *testing.T) {
	ra, www := retryAfter1, bearerRealm
	const (
		q, s, f = AsyncQueued, AsyncSucceeded, AsyncFailed
	)
	want := []struct {
		kind       Kind
		name       string
		label      string
		status     int
		header     [2]string
		exitStatus bool
		async      AsyncState
		retry      bool
	}{
		{OK, "ok", "ok", 0, [2]string{}, false, s, false},
		{ServerError, "server_error", "ok", 0, [2]string{}, false, f, true},
		{BadStatus, "bad_status", "ok", 502, [2]string{}, false, f, true},
		{FunctionError, "function_error", "function_error", 500, [2]string{}, true, f, true},
		{Crashed, "crashed", "crashed", 502, [2]string{}, false, f, true},
		{Timeout, "timeout", "timeout", 504, [2]string{}, false, f, true},
		{NoCapacity, "no_capacity", "no_capacity", 503, ra, false, f, true},
		{BadImage, "bad_image", "bad_image", 502, [2]string{}, false, f, true},
		{NotStarted, "not_started", "platform_error", 503, ra, false, f, true},
		{UnknownOutcome, "unknown_outcome", "unknown", 502, [2]string{}, false, f, true},
		{NoAnswer, "no_answer", "timeout", 504, [2]string{}, false, f, true},
		{Unavailable, "unavailable", "platform_error", 503, [2]string{}, false, f, true},
		{Exhausted, "exhausted", "no_capacity", 503, [2]string{}, false, f, true},
		{CannotRun, "cannot_run", "platform_error", 503, [2]string{}, false, f, true},
		{PlatformFailed, "platform_failed", "platform_error", 502, [2]string{}, false, f, true},
		{CallerGone, "caller_gone", "canceled", 499, [2]string{}, false, f, true},
		{Lost, "lost", "platform_error", 502, [2]string{}, false, f, false},
		{BadRequest, "bad_request", "", 400, [2]string{}, false, "", false},
		{Unauthorized, "unauthorized", "", 401, www, false, "", false},
		{Forbidden, "forbidden", "", 403, [2]string{}, false, "", false},
		{NotFound, "not_found", "", 404, [2]string{}, false, "", false},
		{MethodNotAllowed, "method_not_allowed", "", 405, [2]string{}, false, "", false},
		{TooLarge, "too_large", "", 413, [2]string{}, false, "", false},
		{SlowBody, "slow_body", "", 408, [2]string{}, false, "", false},
		{Limited, "limited", "", 429, [2]string{}, false, "", false},
		{RegistryUnavailable, "registry_unavailable", "", 503, [2]string{}, false, "", false},
		{KeyStoreUnavailable, "key_store_unavailable", "", 503, ra, false, "", false},
		{AsyncDisabled, "async_disabled", "", 503, [2]string{}, false, "", false},
		{QueueUnavailable, "queue_unavailable", "", 503, ra, false, "", false},
		{Accepted, "accepted", "", 202, [2]string{}, false, q, false},
	}
	if len(want) != len(Kinds()) {
		t.Fatalf("the test pins %d rows, the table has %d", len(want), len(Kinds()))
	}
	for i, w := range want {
		if w.kind != Kind(i) {
			t.Fatalf("row %d of the test is %v, want the table's order", i, w.kind)
		}
		r := w.kind.Row()
		got := [...]any{r.Name, r.Label, r.Status, r.Header, r.ExitStatus, r.Async, r.Retry}
		exp := [...]any{w.name, w.label, w.status, w.header, w.exitStatus, w.async, w.retry}
		if got != exp {
			t.Errorf("%v: got %v, want %v", w.kind, got, exp)
		}
	}
}

// TestRowsAgree checks rules that hold across the table.
func TestRowsAgree(t *testing.T) {
	names := map[string]bool{}
	for _, k := range Kinds() {
		r := k.Row()
		if names[r.Name] {
			t.Errorf("%v: name used twice", k)
		}
		names[r.Name] = true
		ran := r.Label != ""
		switch {
		case r.Status == 0 && k != OK && k != ServerError:
			t.Errorf("%v: only a function's own answer has no status of the platform's", k)
		case r.Retry && r.Async != AsyncFailed:
			t.Errorf("%v: retried but not a failure", k)
		case !ran && r.Async != "" && k != Accepted:
			t.Errorf("%v: a refusal stores nothing, yet its async state is %q", k, r.Async)
		case ran && r.Async == "":
			t.Errorf("%v: ran without an async state", k)
		case r.Status >= 500 && ran && r.Async != AsyncFailed:
			t.Errorf("%v: a 5xx is an async failure", k)
		}
	}
}

func TestOf(t *testing.T) {
	live, gone := context.Background(), canceled()
	resp := func(o kilnv1.Outcome, st int32, why string) *kilnv1.InvokeResponse {
		return &kilnv1.InvokeResponse{Outcome: o, Status: st, Error: why, LogTail: []byte("a\nb\n")}
	}
	grpc := func(c codes.Code, msg string) error { return status.Error(c, msg) }
	for _, c := range []struct {
		ctx  context.Context
		resp *kilnv1.InvokeResponse
		err  error
		kind Kind
		code int
		msg  string
	}{
		{live, resp(kilnv1.Outcome_OUTCOME_OK, 0, ""), nil, OK, 200, ""},
		{live, resp(kilnv1.Outcome_OUTCOME_OK, 404, ""), nil, OK, 404, ""},
		{live, resp(kilnv1.Outcome_OUTCOME_OK, 503, ""), nil, ServerError, 503, "the function answered HTTP 503"},
		{live, resp(kilnv1.Outcome_OUTCOME_OK, 1000, ""), nil, BadStatus, 502,
			"the function answered with HTTP status 1000, which is not a valid status code"},
		{live, resp(kilnv1.Outcome_OUTCOME_FUNCTION_ERROR, 3, "exit"), nil, FunctionError, 500,
			`the function exited with status 3: exit; its last log lines are in "log"`},
		{live, resp(kilnv1.Outcome_OUTCOME_CRASHED, 0, ""), nil, Crashed, 502,
			`the function crashed: without a reason; the instance was replaced, see "log" and fix the program`},
		{live, resp(kilnv1.Outcome_OUTCOME_TIMEOUT, 0, ""), nil, Timeout, 504,
			"the function ran past its timeout of 2s and was stopped; make it faster or redeploy with a longer --timeout"},
		{live, resp(kilnv1.Outcome_OUTCOME_NO_CAPACITY, 0, "scheduler: all full"), nil, NoCapacity, 503,
			"no node has capacity for this function right now: scheduler: all full; retry shortly, or start more agents"},
		{live, resp(kilnv1.Outcome_OUTCOME_BAD_IMAGE, 0, "corrupt"), nil, BadImage, 502,
			"the function's image could not be loaded: corrupt; redeploy it with `kiln deploy`"},
		{live, resp(kilnv1.Outcome_OUTCOME_PLATFORM_ERROR, 0, "image store down"), nil, NotStarted, 503,
			"the platform could not start the function: image store down; nothing ran, retry shortly"},
		{live, resp(kilnv1.Outcome_OUTCOME_UNSPECIFIED, 0, ""), nil, UnknownOutcome, 502,
			"the platform returned an unknown outcome OUTCOME_UNSPECIFIED"},
		{live, nil, grpc(codes.DeadlineExceeded, "late"), NoAnswer, 504,
			"no answer within the function's timeout of 2s plus 10s for placement"},
		{live, nil, grpc(codes.Unavailable, "scheduler: node n1 was drained"), Unavailable, 503, "node n1 was drained; retry shortly"},
		{live, nil, grpc(codes.Unavailable, "connection refused"), Unavailable, 503,
			"the scheduler is unreachable (connection refused); retry shortly"},
		{live, nil, grpc(codes.ResourceExhausted, "too big"), Exhausted, 503,
			"the platform refused the invocation for lack of resources: too big"},
		{live, nil, grpc(codes.NotFound, "x"), CannotRun, 503, "the platform cannot run the function now: x"},
		{live, nil, grpc(codes.FailedPrecondition, "x"), CannotRun, 503, "the platform cannot run the function now: x"},
		{live, nil, grpc(codes.InvalidArgument, "x"), PlatformFailed, 502, "the platform failed to run the function: x"},
		{live, nil, grpc(codes.Canceled, "x"), CallerGone, 499, "the caller went away"},
		{live, nil, errors.New("not gRPC"), PlatformFailed, 502, "the platform failed to run the function: not gRPC"},
		{gone, nil, grpc(codes.Canceled, "x"), CallerGone, 499, "the caller went away"},
		{gone, nil, grpc(codes.Unavailable, "x"), CallerGone, 499, "the caller went away"},
	} {
		r := Of(c.ctx, c.resp, c.err, 2*time.Second)
		if r.Kind != c.kind || r.Code != c.code || r.Message != c.msg || r.Name != c.kind.Row().Name || r.Resp != c.resp {
			t.Errorf("Of(%v, %v): got %v %d %q, want %v %d %q", c.resp, c.err, r.Kind, r.Code, r.Message, c.kind, c.code, c.msg)
		}
		if r.Passed() != (c.kind == OK || c.kind == ServerError) {
			t.Errorf("%v: Passed %v", c.kind, r.Passed())
		}
		if c.ctx == live && Label(c.resp, c.err) != r.Label {
			t.Errorf("%v: Label %q, Of's %q", c.kind, Label(c.resp, c.err), r.Label)
		}
	}
}

func TestBody(t *testing.T) {
	r := Of(context.Background(), &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_FUNCTION_ERROR, Status: 2,
		LogTail: []byte("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\n19\n20\n21\n\xff\n")}, nil, time.Second)
	b := r.Body("fn", "id")
	if b.Function != "fn" || b.InvocationID != "id" || b.ExitStatus == nil || *b.ExitStatus != 2 || b.Error != r.Message ||
		b.Log != "3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\n19\n20\n21\n\uFFFD" {
		t.Fatalf("body: %+v", b)
	}
	if b := With(Lost, "gave up").Body("fn", ""); b.Error != "gave up" || b.ExitStatus != nil || b.Log != "" {
		t.Fatalf("worded body: %+v", b)
	}
	if r := With(Limited, "slow down"); r.Code != 429 || r.Message != "slow down" {
		t.Fatalf("With: %+v", r)
	}
}

func TestHeaders(t *testing.T) {
	h := ResponseHeaders([]*kilnv1.Header{
		{Name: "content-type", Value: "text/plain"}, {Name: "x-kiln-node", Value: "forged"},
		{Name: "connection", Value: "close"}, {Name: "Content-Length", Value: "9"}, {Name: "x-a", Value: "1"}, {Name: "X-A", Value: "2"},
	})
	want := http.Header{"Content-Type": {"text/plain"}, "X-A": {"1", "2"}}
	if len(h) != len(want) || h.Get("Content-Type") != "text/plain" || len(h["X-A"]) != 2 {
		t.Fatalf("ResponseHeaders: %v, want %v", h, want)
	}
	if !HopByHop("Transfer-Encoding") || HopByHop("Content-Type") {
		t.Fatal("HopByHop")
	}
	got := http.Header{}
	NoCapacity.Row().SetHeader(got)
	OK.Row().SetHeader(got)
	if len(got) != 1 || got.Get("Retry-After") != "1" {
		t.Fatalf("SetHeader: %v", got)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestEveryOutcomeHasARow fails when proto/kiln/v1 grows an Outcome the
// table does not place.
func TestEveryOutcomeHasARow(t *testing.T) {
	for v, name := range kilnv1.Outcome_name {
		if o := kilnv1.Outcome(v); o != kilnv1.Outcome_OUTCOME_UNSPECIFIED {
			if _, ok := byOutcome[o]; !ok {
				t.Errorf("%s has no row", name)
			}
		}
	}
}
