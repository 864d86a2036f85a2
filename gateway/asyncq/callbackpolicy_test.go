package asyncq_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfaas/kiln/gateway/asyncq"
)

// Issue 13, finding 2: `X-Callback-Url: http://127.0.0.1:PORT/system/...`
// on an async call to any public function made the platform POST to its
// own management API from loopback (where, while no API key exists,
// callers may deploy). The callback policy (internal/netpolicy) keeps
// callbacks off loopback, link-local, private and the platform's own
// addresses unless the operator allows them; these tests aim callbacks at
// the real gateway's /system/ URL and watch, on the gateway's side, that
// none arrives.

// The gateway refuses a callback URL naming a forbidden address outright
// (400, saying why, nothing stored); an invocation already in the queue
// with such a URL (accepted by a gateway whose operator allowed loopback,
// or before the allow-list was narrowed) is stopped by the worker's
// dialer: the callback is recorded as blocked, with the reason, once,
// and the function's result is still stored.
func TestCallbackCannotReachThePlatform(t *testing.T) {
	seen := &arrivals{}
	e := newEnv(t, envConfig{seen: seen})
	e.deploy(t, "fn", url.Values{"async_retries": {"0"}})
	e.startWorker(t, fastWorker(e.sched))
	gw := gatewayAddr(t, e)
	self := "http://" + gw.String() + "/system/functions?name=pwned&kind=serve"
	port := gw.Port()

	for _, u := range []string{
		self,
		"http://[::1]:" + itoa(port) + "/system/functions",
		"http://[::ffff:127.0.0.1]:" + itoa(port) + "/system/functions",
		"http://0.0.0.0:" + itoa(port) + "/system/functions",
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://10.0.0.1/",
		"http://[fd00::1]/",
		"http://100.64.0.1/",
	} {
		resp, b := e.async(t, "fn/x", "", http.Header{"X-Callback-Url": {u}})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "bad X-Callback-Url") ||
			!strings.Contains(string(b), "callbacks may not reach") || !strings.Contains(string(b), "--callback-allow") {
			t.Errorf("callback %s: %s %s, want 400 saying why", u, resp.Status, b)
		}
	}
	if !e.drained(t) {
		t.Fatal("a refused invocation reached the stream")
	}

	// Past the gateway: a queue whose operator allowed 127.0.0.1 accepts
	// the URL; this worker, which allows nothing, must not POST to it.
	ctx := context.Background()
	lax, err := asyncq.Open(ctx, e.nc, asyncq.Config{CallbackAllow: loopback127})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.queue.Enqueue(ctx, &asyncq.Invocation{ID: "refused", Function: "fn", Version: 1, CallbackURL: self,
		Enqueued: time.Now(), Request: asyncq.RequestForTest("refused", "fn")}); !errors.Is(err, asyncq.ErrInvalid) || !errors.Is(err, asyncq.ErrCallbackBlocked) {
		t.Fatalf("the gateway's queue took a callback to 127.0.0.1: %v", err)
	}
	const id = "ssrf-literal"
	if err := lax.Enqueue(ctx, &asyncq.Invocation{ID: id, Function: "fn", Version: 1, CallbackURL: self,
		Enqueued: time.Now(), Request: asyncq.RequestForTest(id, "fn")}); err != nil {
		t.Fatal(err)
	}
	st := e.waitStatus(t, id, "the callback to be blocked", callbackEnded)
	want := "callbacks may not reach 127.0.0.1: it is a loopback address"
	if st.Callback.State != asyncq.CallbackBlocked || !strings.HasPrefix(st.Callback.Error, want) || st.Callback.Attempts != 1 ||
		st.Callback.URL != self || !st.State.Final() || st.Result == nil {
		t.Fatalf("status %+v, callback %+v: want blocked with %q, the result kept", st, st.Callback, want)
	}
	noRetry(t, e)
	seen.none(t)
}

// A callback to a name that resolves to loopback passes the gateway (it
// judges addresses, not names) and is stopped where it is dialled.
func TestCallbackNameResolvingToLoopback(t *testing.T) {
	if addrs, err := net.LookupHost("localhost"); err != nil || len(addrs) == 0 {
		t.Fatalf("localhost does not resolve here: %v %v", addrs, err)
	}
	seen := &arrivals{}
	e := newEnv(t, envConfig{seen: seen})
	e.deploy(t, "fn", url.Values{"async_retries": {"0"}})
	e.startWorker(t, fastWorker(e.sched))
	target := "http://localhost:" + itoa(gatewayAddr(t, e).Port()) + "/system/functions?name=pwned&kind=serve"

	id := e.accepted(t, "fn/x", "", http.Header{"X-Callback-Url": {target}})
	st := e.waitStatus(t, id, "the callback to be blocked", callbackEnded)
	if st.Callback.State != asyncq.CallbackBlocked || st.Callback.Attempts != 1 ||
		!strings.Contains(st.Callback.Error, "it is a loopback address") || st.State != asyncq.Succeeded ||
		st.Result == nil || st.Result.StatusCode != 200 {
		t.Fatalf("status %+v, callback %+v, result %+v: want blocked as loopback, the result kept", st, st.Callback, st.Result)
	}
	noRetry(t, e)
	seen.none(t)
}

// A callback to an allowed address that answers with a redirect to the
// platform is not followed: blocked, once, saying so. The redirector
// (127.0.0.2) is allowed and the target (127.0.0.1) is not, so even a
// client that followed redirects and re-checked them would stop there;
// this one follows none.
func TestCallbackRedirectNotFollowed(t *testing.T) {
	seen := &arrivals{}
	e := newEnv(t, envConfig{seen: seen, callbackAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	e.deploy(t, "fn", url.Values{"async_retries": {"0"}})
	e.startWorker(t, fastWorker(e.sched))
	self := "http://" + gatewayAddr(t, e).String() + "/system/functions?name=pwned&kind=serve"

	lis, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatalf("127.0.0.2 (loopback) cannot be bound: %v", err)
	}
	var mu sync.Mutex
	hits := 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		http.Redirect(w, r, self, http.StatusTemporaryRedirect)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })

	id := e.accepted(t, "fn/x", "", http.Header{"X-Callback-Url": {"http://" + lis.Addr().String() + "/hook"}})
	st := e.waitStatus(t, id, "the callback to be blocked", callbackEnded)
	want := "the callback answered HTTP 307 with a redirect to " + self + ": callbacks follow no redirects"
	if st.Callback.State != asyncq.CallbackBlocked || st.Callback.Error != want || st.Callback.StatusCode != 307 ||
		st.Callback.Attempts != 1 || st.State != asyncq.Succeeded {
		t.Fatalf("callback %+v, want blocked with %q", st.Callback, want)
	}
	noRetry(t, e)
	mu.Lock()
	defer mu.Unlock()
	if hits != 1 {
		t.Fatalf("the redirector was asked %d times, want once", hits)
	}
	seen.none(t)
}

// With the operator's allow-list naming 127.0.0.1, the same callback to
// the gateway's own URL does arrive: what the tests above watch for is
// what the policy prevents, not something that could never happen.
func TestCallbackAllowListLetsThrough(t *testing.T) {
	seen := &arrivals{}
	e := newEnv(t, envConfig{seen: seen, callbackAllow: loopback127})
	e.deploy(t, "fn", url.Values{"async_retries": {"0"}})
	e.startWorker(t, fastWorker(e.sched))
	self := "http://" + gatewayAddr(t, e).String() + "/system/functions?name=pwned&kind=serve"

	id := e.accepted(t, "fn/x", "", http.Header{"X-Callback-Url": {self}})
	e.waitStatus(t, id, "the callback to end", callbackEnded)
	if got := seen.all(); len(got) == 0 || got[0] != id+" POST /system/functions?name=pwned&kind=serve" {
		t.Fatalf("the allowed callback did not reach the gateway: %q", got)
	}
}

// gatewayAddr is the gateway's address, 127.0.0.1:PORT.
func gatewayAddr(t *testing.T, e *env) netip.AddrPort {
	t.Helper()
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(u.Host)
	if err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("gateway at %q, want 127.0.0.1:PORT", u.Host)
	}
	return ap
}

// callbackEnded: the invocation is final and its callback too. The
// callback message is queued before the final status is stored, so the
// callback's verdict may be recorded first.
func callbackEnded(s *asyncq.Status) bool {
	return s.State.Final() && s.Callback != nil && s.Callback.State != asyncq.CallbackPending
}

// noRetry checks that a blocked callback is not tried again: the stream
// drains, no attempt is counted as retried, and one as blocked.
func noRetry(t *testing.T, e *env) {
	t.Helper()
	waitFor(t, "the stream to drain", func() bool { return e.drained(t) })
	time.Sleep(500 * time.Millisecond) // past fastWorker's first backoff, were it retried
	if !e.drained(t) {
		t.Fatal("the blocked callback went back to the stream")
	}
	if b, r := callbackOutcomes(t, e.workerReg, "blocked"), callbackOutcomes(t, e.workerReg, "retried"); b != 1 || r != 0 {
		t.Fatalf("kiln_async_callbacks_total: blocked %v retried %v, want 1 and 0", b, r)
	}
}

// callbackOutcomes sums kiln_async_callbacks_total{outcome} over reg.
func callbackOutcomes(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "kiln_async_callbacks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// arrivals records the callbacks that reach the gateway: requests that
// carry an invocation id header, as "ID METHOD URI".
type arrivals struct {
	mu  sync.Mutex
	got []string
}

func (a *arrivals) wrap(h http.Handler) http.Handler {
	if a == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id := r.Header.Get(asyncq.CallbackHeaderID); id != "" {
			a.mu.Lock()
			a.got = append(a.got, id+" "+r.Method+" "+r.URL.RequestURI())
			a.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

func (a *arrivals) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.got...)
}

func (a *arrivals) none(t *testing.T) {
	t.Helper()
	if got := a.all(); len(got) > 0 {
		t.Fatalf("callbacks reached the gateway: %q", got)
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
