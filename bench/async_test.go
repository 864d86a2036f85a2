package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/teststack"
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestAsyncReport measures async invocations end to end on real parts: an
// embedded NATS JetStream server (file store), the gateway's HTTP API, the
// worker, the scheduler and a node-agent over gRPC on 127.0.0.1, the
// function (gateway/asyncq/testdata/fn, a serve function) run as a host process
// by the agent's ProcessBooter, so no KVM is needed and the figures are
// the platform's own overhead. Invocations are offered at a fixed rate
// for a fixed time (KILN_BENCH_ASYNC_RATE per second, default 50, for
// KILN_BENCH_ASYNC_SECONDS, default 10), each with a callback to a local
// server. It reports the completed throughput and the latency from the
// POST to the stored result and to the callback's arrival.
func TestAsyncReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (make bench)")
	}
	rate, seconds := envInt("KILN_BENCH_ASYNC_RATE", 50), envInt("KILN_BENCH_ASYNC_SECONDS", 10)
	prog := buildAsyncFn(t)
	a := startAsyncPlatform(t, prog)

	var mu sync.Mutex
	sent := map[string]time.Time{}     // id → POST sent
	accepted := map[string]time.Time{} // id → 202 received
	called := map[string]time.Time{}   // id → callback arrived
	allIn := make(chan struct{})
	want := -1
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		now := time.Now()
		mu.Lock()
		called[r.Header.Get(asyncq.CallbackHeaderID)] = now
		if len(called) == want {
			close(allIn)
		}
		mu.Unlock()
	}))
	defer cb.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	post := func() (string, time.Time, time.Time, error) {
		req, _ := http.NewRequest(http.MethodPost, a.url+"/async-function/fn/bench", bytes.NewReader([]byte("payload")))
		req.Header.Set("X-Callback-Url", cb.URL)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return "", start, start, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var acc gateway.Accepted
		if resp.StatusCode != http.StatusAccepted || json.Unmarshal(b, &acc) != nil {
			return "", start, start, fmt.Errorf("%s %s", resp.Status, b)
		}
		return acc.ID, start, time.Now(), nil
	}

	// Warm-up: boot the instances the measured part will use.
	fmt.Fprintf(os.Stderr, "bench: async warm-up\n")
	for i := 0; i < 16; i++ {
		if _, _, _, err := post(); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 60*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(called) == 16 })
	mu.Lock()
	called = map[string]time.Time{}
	mu.Unlock()

	n := rate * seconds
	fmt.Fprintf(os.Stderr, "bench: async %d/s for %ds (%d invocations)\n", rate, seconds, n)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var errs []error
	begin := time.Now()
	for i := 0; i < n; i++ {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, s, acc, err := post()
			if err != nil {
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
				return
			}
			mu.Lock()
			sent[id], accepted[id] = s, acc
			mu.Unlock()
		}()
	}
	tick.Stop()
	offered := time.Since(begin)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d POSTs failed, the first: %v", len(errs), n, errs[0])
	}
	mu.Lock()
	want = n
	done := len(called) == n
	mu.Unlock()
	if !done {
		select {
		case <-allIn:
		case <-time.After(120 * time.Second):
			mu.Lock()
			got := len(called)
			mu.Unlock()
			t.Fatalf("only %d of %d callbacks after 2 minutes", got, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var last time.Time
	var toAccept, toCallback, toResult []time.Duration
	for id, s := range sent {
		c := called[id]
		if c.After(last) {
			last = c
		}
		toAccept = append(toAccept, accepted[id].Sub(s))
		toCallback = append(toCallback, c.Sub(s))
		st, err := a.queue.Status(context.Background(), id)
		if err != nil || st.State != asyncq.Succeeded || st.Attempts != 1 {
			t.Fatalf("status of %s: %+v %v", id, st, err)
		}
		toResult = append(toResult, st.FinishedAt.Sub(s))
	}
	elapsed := last.Sub(begin)

	fmt.Printf("\n== Kiln async invocations (%d offered at %d/s over %v; process runtime, embedded NATS JetStream) ==\n", n, rate, offered.Round(time.Millisecond))
	fmt.Printf("%-52s %12s\n", "what", "figure")
	fmt.Printf("%-52s %10.1f/s\n", "completed throughput (first POST → last callback)", float64(n)/elapsed.Seconds())
	fmt.Printf("%-52s %12v\n", "POST → 202 accepted, p50", median(toAccept).Round(time.Microsecond))
	fmt.Printf("%-52s %12v\n", "POST → 202 accepted, p99", quantile(toAccept, 0.99).Round(time.Microsecond))
	fmt.Printf("%-52s %12v\n", "POST → result stored (status final), p50", median(toResult).Round(time.Microsecond))
	fmt.Printf("%-52s %12v\n", "POST → result stored (status final), p99", quantile(toResult, 0.99).Round(time.Microsecond))
	fmt.Printf("%-52s %12v\n", "POST → callback received, p50", median(toCallback).Round(time.Microsecond))
	fmt.Printf("%-52s %12v\n", "POST → callback received, p99", quantile(toCallback, 0.99).Round(time.Microsecond))
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("timed out")
}

// buildAsyncFn builds the async tests' serve function as a static program.
func buildAsyncFn(t *testing.T) []byte {
	out := filepath.Join(t.TempDir(), "fn")
	cmd := exec.Command("go", "build", "-o", out, "./gateway/asyncq/testdata/fn")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building gateway/asyncq/testdata/fn: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type asyncPlatform struct {
	url   string
	queue *asyncq.Queue
}

// startAsyncPlatform starts a test stack (teststack: what kiln up builds,
// with an agent running functions as host processes in place of the KVM
// one) and deploys prog as "fn".
func startAsyncPlatform(t *testing.T, prog []byte) *asyncPlatform {
	// The callbacks go to a test server on 127.0.0.1, which the callback
	// policy lets through only when the operator allows it.
	s := teststack.Start(t, teststack.Options{AgentMemory: 8 << 30, Gateway: gateway.Config{Kernel: prog},
		CallbackAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	v := url.Values{"name": {"fn"}, "kind": {"serve"}, "timeout": {"5s"}, "env": {"TRACE=/dev/null"}}
	resp, err := http.Post(s.URL+"/system/functions?"+v.Encode(), "application/octet-stream", bytes.NewReader(prog))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("deploy: %s %s", resp.Status, b)
	}
	return &asyncPlatform{url: s.URL, queue: s.Queue}
}
