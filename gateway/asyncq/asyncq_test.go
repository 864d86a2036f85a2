package asyncq_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
)

// An accepted invocation runs once, through the scheduler and the agent,
// and its result is stored under its id.
func TestRunsOnceAndStoresResult(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.deploy(t, "fn", nil)
	e.startWorker(t, fastWorker(e.sched))

	id := e.accepted(t, "fn@1/echo?x=1", "hello", http.Header{"X-Kiln-Attempt": {"99"}, "X-Custom": {"c"}})
	st := e.waitStatus(t, id, "success", final)
	if st.State != asyncq.Succeeded || st.Attempts != 1 || st.MaxAttempts != asyncq.DefaultRetries+1 || st.Error != "" {
		t.Fatalf("status: %+v", st)
	}
	r := st.Result
	// The caller's X-Kiln-Attempt was dropped; the worker's is what the function saw.
	want := "POST /echo attempt=1 id=" + id + " body=hello"
	if r == nil || r.StatusCode != 200 || r.Body != want || r.BodyBytes != len(want) || r.Headers["X-Fn"][0] != "yes" || r.Node != "test-node" {
		t.Fatalf("result: %+v, want body %q", r, want)
	}
	if st.Function != "fn" || st.Ref != "1" || st.Version != 1 || st.StartedAt == nil || st.FinishedAt == nil || st.EnqueuedAt.IsZero() ||
		st.FinishedAt.Before(*st.StartedAt) || len(st.History) != 1 || st.History[0].StatusCode != 200 {
		t.Fatalf("bookkeeping: %+v", st)
	}
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })
	time.Sleep(300 * time.Millisecond) // past a redelivery, were the ack lost
	if n := e.runs(t, id); n != 1 {
		t.Fatalf("the function ran %d times", n)
	}
	if n := metric(t, e, "kiln_async_enqueued_total"); n != 1 {
		t.Fatalf("kiln_async_enqueued_total %v", n)
	}
}

func metric(t *testing.T, e *env, name string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// A function that keeps failing is retried with exponential backoff up to
// its retry limit, then dead-lettered with its last error; the callback
// hears of the failure.
func TestRetriesWithBackoffThenDeadLetter(t *testing.T) {
	e := newEnv(t, envConfig{callbackAllow: loopback127})
	e.deploy(t, "flaky", url.Values{"async_retries": {"2"}})
	cfg := fastWorker(e.sched)
	e.startWorker(t, cfg)
	cb := newCallbackServer(t)

	before, err := e.queue.DeadLetters(context.Background())
	if err != nil || before != 0 {
		t.Fatalf("dead letters before: %d %v", before, err)
	}
	id := e.accepted(t, "flaky/status?code=503", "x", http.Header{"X-Callback-Url": {cb.url}})
	st := e.waitStatus(t, id, "failure", final)
	attempts := 3 // the first and the 2 retries the deploy asked for
	if st.State != asyncq.Failed || st.Attempts != attempts || st.MaxAttempts != attempts || st.Error != "the function answered HTTP 503" ||
		st.Result == nil || st.Result.StatusCode != 503 || len(st.History) != attempts {
		t.Fatalf("status: %+v", st)
	}
	if n := e.runs(t, id); n != attempts {
		t.Fatalf("the function ran %d times, want %d", n, attempts)
	}
	// Retry k waited at least base×2^(k-1) after attempt k ended.
	for k := 1; k < attempts; k++ {
		gap := st.History[k].StartedAt.Sub(*st.History[k-1].FinishedAt)
		if min := cfg.BackoffBase << (k - 1); gap < min {
			t.Fatalf("retry %d after %v, want at least %v (history %+v)", k, gap, min, st.History)
		}
	}
	waitFor(t, "the dead letter", func() bool {
		n, err := e.queue.DeadLetters(context.Background())
		return err == nil && n == 1
	})
	js, _ := jetstream.New(e.nc)
	dead, err := js.Stream(context.Background(), asyncq.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dead.GetLastMsgForSubject(context.Background(), "kiln.async.dead.flaky")
	if err != nil || m.Header.Get("Kiln-Id") != id || m.Header.Get("Kiln-Error") != st.Error || m.Header.Get("Kiln-Attempts") != "3" {
		t.Fatalf("dead letter: %+v %v", m, err)
	}

	got := cb.wait(t, 1)[0]
	if got.header.Get(asyncq.CallbackHeaderID) != id || got.header.Get(asyncq.CallbackHeaderStatus) != "failed" ||
		got.header.Get(asyncq.CallbackHeaderCode) != "503" || got.header.Get(asyncq.CallbackHeaderError) != st.Error ||
		!strings.Contains(got.body, "attempt=3") {
		t.Fatalf("callback: %+v", got)
	}
	e.waitStatus(t, id, "callback delivered", func(s *asyncq.Status) bool {
		return s.Callback != nil && s.Callback.State == asyncq.CallbackDelivered && s.Callback.Attempts == 1 && s.Callback.StatusCode == 200
	})
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })
}

// A function that crashes is a failure like a 5xx: retried, then failed
// with the crash and the function's last log lines in the status.
func TestCrashIsAFailure(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.deploy(t, "fn", nil)
	e.startWorker(t, fastWorker(e.sched))
	id := e.accepted(t, "fn/crash", "", nil)
	st := e.waitStatus(t, id, "failure", final)
	if st.State != asyncq.Failed || !strings.Contains(st.Error, "crashed") || st.Result.StatusCode != 502 ||
		!strings.Contains(st.Result.Log, "crashing on purpose") {
		t.Fatalf("crashing function: %+v %+v", st, st.Result)
	}
}

// The callback gets the function's answer, with the invocation's id.
func TestCallbackDelivered(t *testing.T) {
	e := newEnv(t, envConfig{callbackAllow: loopback127})
	e.deploy(t, "fn", nil)
	e.startWorker(t, fastWorker(e.sched))
	cb := newCallbackServer(t)

	id := e.accepted(t, "fn/cb", "payload", http.Header{"X-Callback-Url": {cb.url + "/hook?k=v"}})
	got := cb.wait(t, 1)[0]
	if got.path != "/hook?k=v" || got.body != "POST /cb attempt=1 id="+id+" body=payload" ||
		got.header.Get(asyncq.CallbackHeaderID) != id || got.header.Get(asyncq.CallbackHeaderStatus) != "succeeded" ||
		got.header.Get(asyncq.CallbackHeaderCode) != "200" || got.header.Get(asyncq.CallbackHeaderFunction) != "fn" ||
		got.header.Get("X-Fn") != "yes" || got.header.Get(asyncq.CallbackHeaderError) != "" {
		t.Fatalf("callback: %+v", got)
	}
	st := e.waitStatus(t, id, "callback recorded", func(s *asyncq.Status) bool {
		return s.Callback != nil && s.Callback.State == asyncq.CallbackDelivered
	})
	if st.State != asyncq.Succeeded || st.Callback.URL != cb.url+"/hook?k=v" || st.Callback.DeliveredAt == nil {
		t.Fatalf("status: %+v %+v", st, st.Callback)
	}
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })
	time.Sleep(300 * time.Millisecond)
	if n := len(cb.all()); n != 1 {
		t.Fatalf("%d callbacks", n)
	}
}

// A callback that never answers is given up after its attempts, each cut
// off at the timeout, and recorded as failed; meanwhile invocations keep
// running.
func TestCallbackNeverAnswers(t *testing.T) {
	e := newEnv(t, envConfig{callbackAllow: loopback127})
	e.deploy(t, "fn", nil)
	cfg := fastWorker(e.sched)
	// Three attempts of a second each: time for another invocation to run
	// start to end while the callback hangs, even on a loaded host.
	cfg.CallbackTimeout = time.Second
	e.startWorker(t, cfg)

	hang := testnet.Hanging(t) // accepts connections, never answers
	id := e.accepted(t, "fn/x", "", http.Header{"X-Callback-Url": {"http://" + hang + "/never"}})
	e.waitStatus(t, id, "success", func(s *asyncq.Status) bool { return s.State == asyncq.Succeeded })
	// While the callback hangs, another invocation runs to the end.
	other := e.accepted(t, "fn/y", "", nil)
	e.waitStatus(t, other, "the second invocation", final)
	st, _ := e.queue.Status(context.Background(), id)
	if st.Callback.State == asyncq.CallbackFailed {
		t.Fatalf("callback already failed: the attempts did not take their time? %+v", st.Callback)
	}

	st = e.waitStatus(t, id, "the callback to fail", func(s *asyncq.Status) bool {
		return s.Callback != nil && s.Callback.State == asyncq.CallbackFailed
	})
	if st.State != asyncq.Succeeded || st.Callback.Attempts != cfg.CallbackAttempts ||
		st.Callback.Error != "the callback did not answer within 1s" {
		t.Fatalf("status: %+v callback %+v", st, st.Callback)
	}
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })
}

// A callback that answers 500 is retried, and counts as delivered once it
// answers 2xx.
func TestCallbackRetried(t *testing.T) {
	e := newEnv(t, envConfig{callbackAllow: loopback127})
	e.deploy(t, "fn", nil)
	e.startWorker(t, fastWorker(e.sched))
	cb := newCallbackServer(t)
	cb.failFirst = 1

	id := e.accepted(t, "fn/x", "", http.Header{"X-Callback-Url": {cb.url}})
	st := e.waitStatus(t, id, "callback delivered", func(s *asyncq.Status) bool {
		return s.Callback != nil && s.Callback.State == asyncq.CallbackDelivered
	})
	if st.Callback.Attempts != 2 || st.Callback.StatusCode != 200 || len(cb.all()) != 2 {
		t.Fatalf("callback: %+v, %d posts", st.Callback, len(cb.all()))
	}
}

// A worker killed mid-flight (its connection gone, nothing acknowledged)
// loses nothing: the message is redelivered after AckWait, run again, and
// completes. The lost run does not spend a retry.
func TestWorkerKilledMidFlight(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.deploy(t, "fn", nil)
	cfg := fastWorker(e.sched)
	w1, nc1 := e.startWorker(t, cfg)

	id := e.accepted(t, "fn/sleep?ms=1500", "", nil)
	waitFor(t, "the first run to start", func() bool { return e.runs(t, id) == 1 })
	if _, st, _ := e.status(t, id); st.State != asyncq.Running || st.Attempts != 1 {
		t.Fatalf("mid-flight status: %+v", st)
	}
	// The crash: the connection goes first, so nothing can be acknowledged.
	nc1.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w1.Stop(ctx)

	e.startWorker(t, cfg)
	st := e.waitStatus(t, id, "completion on the second worker", final)
	if st.State != asyncq.Succeeded || st.Attempts != 2 || st.LostRuns != 1 || len(st.History) != 2 ||
		!strings.HasPrefix(st.History[0].Error, "lost") || !strings.Contains(st.Result.Body, "attempt=2") {
		t.Fatalf("status: %+v %+v", st, st.History)
	}
	if n := e.runs(t, id); n != 2 {
		t.Fatalf("the function ran %d times, want 2 (at least once)", n)
	}
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })
}

// Stop with a grace period lets the run in progress finish and records
// it: the status is final when Stop returns, and nothing runs twice.
func TestGracefulStopFinishesInFlight(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.deploy(t, "fn", nil)
	w, _ := e.startWorker(t, fastWorker(e.sched))

	id := e.accepted(t, "fn/sleep?ms=1000", "", nil)
	waitFor(t, "the run to start", func() bool { return e.runs(t, id) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w.Stop(ctx)
	st, err := e.queue.Status(context.Background(), id)
	if err != nil || st.State != asyncq.Succeeded || st.Attempts != 1 {
		t.Fatalf("status when Stop returned: %+v %v", st, err)
	}
	if !e.drained(t) {
		t.Fatal("the message is still in the stream after a graceful stop")
	}
}

// An agent killed mid-flight fails the run in progress (the scheduler's
// call to it breaks); the invocation is retried and completes on another
// node.
func TestAgentKilledMidFlight(t *testing.T) {
	e := newEnv(t, envConfig{noAgent: true})
	kill := e.startAgent(t, "node-1")
	e.deploy(t, "fn", nil)
	e.startWorker(t, fastWorker(e.sched))

	id := e.accepted(t, "fn/sleep?ms=3000", "", nil)
	waitFor(t, "the first run to start", func() bool { return e.runs(t, id) == 1 })
	kill()
	e.startAgent(t, "node-2")
	st := e.waitStatus(t, id, "completion on the second node", final)
	if st.State != asyncq.Succeeded || st.Attempts < 2 || st.Result.Node != "node-2" || st.History[0].StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status: %+v %+v %+v", st, st.Result, st.History)
	}
	if n := e.runs(t, id); n < 2 {
		t.Fatalf("the function ran %d times", n)
	}
}

// A redelivery of an invocation that is already final is acknowledged
// without running the function again.
func TestDuplicateDelivery(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.deploy(t, "fn", nil)
	e.startWorker(t, fastWorker(e.sched))

	id := e.accepted(t, "fn/once", "x", nil)
	st := e.waitStatus(t, id, "success", final)
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })

	// The same invocation once more, as JetStream would redeliver it after
	// an acknowledgement was lost (past the duplicate window of the publish).
	inv := &asyncq.Invocation{ID: id, Function: "fn", Version: 1, Retries: 3, Enqueued: time.Now(), Request: asyncq.RequestForTest(id, "fn")}
	if err := asyncq.PublishForTest(context.Background(), e.nc, inv); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the duplicate to be acknowledged", func() bool { return e.drained(t) })
	time.Sleep(200 * time.Millisecond)
	if n := e.runs(t, id); n != 1 {
		t.Fatalf("the function ran %d times", n)
	}
	_, again, _ := e.status(t, id)
	if again.Attempts != 1 || again.State != asyncq.Succeeded || !again.FinishedAt.Equal(*st.FinishedAt) {
		t.Fatalf("status changed by the duplicate: %+v", again)
	}
}

// Bad requests are refused with a JSON error before anything is stored.
func TestRefusals(t *testing.T) {
	e := newEnv(t, envConfig{maxBody: 1024, noAgent: true})
	e.deploy(t, "fn", nil)

	cases := []struct {
		target, body string
		header       http.Header
		code         int
		want         string
	}{
		{"nope", "", nil, 404, `function \"nope\" is not deployed`},
		{"fn@7", "", nil, 404, `function \"fn\" has no version 7`},
		{"fn@prod", "", nil, 404, `function \"fn\" has no alias \"prod\"`},
		{"fn@", "", nil, 400, "names nothing after '@'"},
		{"fn@Prod_1", "", nil, 400, "is not an alias name"},
		{"Bad_Name", "", nil, 404, "is not deployed"},
		{"fn", strings.Repeat("x", 1025), nil, 413, "the limit is 1024 bytes"},
		{"fn", "", http.Header{"X-Callback-Url": {"ftp://example.com/x"}}, 400, "bad X-Callback-Url"},
		{"fn", "", http.Header{"X-Callback-Url": {"/relative"}}, 400, "bad X-Callback-Url"},
	}
	for _, c := range cases {
		resp, b := e.async(t, c.target, c.body, c.header)
		var je struct{ Error string }
		if resp.StatusCode != c.code || json.Unmarshal(b, &je) != nil || !strings.Contains(string(b), c.want) ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("POST /async-function/%s: %s %s, want %d with %q", c.target, resp.Status, b, c.code, c.want)
		}
	}
	resp, err := e.client.Get(e.url + "/async-function/fn")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" || !strings.Contains(string(b), "POST requests") {
		t.Errorf("GET /async-function/fn: %s %s", resp.Status, b)
	}
	for _, id := range []string{"00000000-0000-0000-0000-000000000000", "no.such", "x%2Fy"} {
		code, _, b := e.status(t, id)
		if code != 404 || !strings.Contains(string(b), `"error": "no invocation`) {
			t.Errorf("GET /system/invocations/%s: %d %s", id, code, b)
		}
	}

	// A deploy asking for more retries than allowed is refused.
	resp, err = e.client.Post(e.url+"/system/functions?name=fn&kind=serve&async_retries=21", "application/octet-stream", strings.NewReader(string(e.prog)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `bad async_retries \"21\": use a whole number from 0 (never retry) to 20`) {
		t.Errorf("deploy with 21 retries: %s %s", resp.Status, b)
	}

	// Nothing stored: no message, no status.
	if !e.drained(t) {
		t.Fatal("a refused invocation reached the stream")
	}
	js, _ := jetstream.New(e.nc)
	kv, err := js.KeyValue(context.Background(), asyncq.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := kv.ListKeys(context.Background()); err == nil {
		for k := range keys.Keys() {
			t.Fatalf("a refused invocation left status %q", k)
		}
	}

	// A 1024-byte body is within the limit: accepted (and, with no agent
	// and no worker here, queued).
	id := e.accepted(t, "fn", strings.Repeat("x", 1024), nil)
	if _, st, _ := e.status(t, id); st.State != asyncq.Queued || st.Attempts != 0 {
		t.Fatalf("fresh status: %+v", st)
	}
}

// callbackServer records the callbacks it receives.
type callbackServer struct {
	url       string
	failFirst int

	mu  sync.Mutex
	got []callback
}

type callback struct {
	path   string
	header http.Header
	body   string
}

func newCallbackServer(t *testing.T) *callbackServer {
	c := &callbackServer{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		c.got = append(c.got, callback{path: r.URL.RequestURI(), header: r.Header.Clone(), body: string(b)})
		fail := len(c.got) <= c.failFirst
		c.mu.Unlock()
		if fail {
			http.Error(w, "not now", 500)
		}
	}))
	t.Cleanup(hs.Close)
	c.url = hs.URL
	return c
}

func (c *callbackServer) all() []callback {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]callback(nil), c.got...)
}

func (c *callbackServer) wait(t *testing.T, n int) []callback {
	t.Helper()
	waitFor(t, "callbacks", func() bool { return len(c.all()) >= n })
	return c.all()
}
