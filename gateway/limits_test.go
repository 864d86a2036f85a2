package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/teststack"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/registry"
)

var (
	limitFnOnce sync.Once
	limitFn     []byte
	limitFnErr  error
)

// limitFunction builds testdata/limitfn, a real serve function.
func limitFunction(t *testing.T) []byte {
	t.Helper()
	limitFnOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-limitfn-")
		if err != nil {
			limitFnErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "limitfn")
		cmd := exec.Command("go", "build", "-o", out, "./testdata/limitfn")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			limitFnErr = fmt.Errorf("go build testdata/limitfn: %v: %s", err, b)
			return
		}
		limitFn, limitFnErr = os.ReadFile(out)
	})
	if limitFnErr != nil {
		t.Fatal(limitFnErr)
	}
	return limitFn
}

// startWithAgent is a gateway over a real scheduler and a real node-agent
// (gRPC on 127.0.0.1) whose functions run as host processes, so
// invocations really run on a host without KVM.
func startWithAgent(t *testing.T, cfg gateway.Config) *env {
	t.Helper()
	limitFunction(t) // before anything starts: building loads the CPUs
	return startStack(t, cfg, teststack.Options{HeartbeatInterval: 200 * time.Millisecond, AgentMemory: 1 << 30})
}

func mustDeploy(t *testing.T, e *env, query string, program []byte) gateway.Deployed {
	t.Helper()
	resp, b := deploy(t, e, query, program)
	var d gateway.Deployed
	if resp.StatusCode != 201 || json.Unmarshal(b, &d) != nil {
		t.Fatalf("deploy %s: %d %s", query, resp.StatusCode, b)
	}
	return d
}

// A function limited to 2 invocations in flight, under 6 parallel calls
// while it runs slowly: 2 are served, 4 get 429 with Retry-After at once,
// and the slots come back when the slow calls end.
func TestConcurrencyLimit(t *testing.T) {
	e := startWithAgent(t, gateway.Config{})
	mustDeploy(t, e, "name=slow&kind=serve&max_concurrency=2", limitFunction(t))
	// Warm up one instance so the slow calls below are not cold boots.
	if resp, b := do(t, "POST", e.url+"/function/slow", "", nil); resp.StatusCode != 200 {
		t.Fatalf("warm-up call: %d %s", resp.StatusCode, b)
	}

	type answer struct {
		code       int
		retryAfter string
		body       []byte
		took       time.Duration
	}
	const n = 6
	answers := make([]answer, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			resp, b := do(t, "POST", e.url+"/function/slow/slow", "", nil)
			answers[i] = answer{resp.StatusCode, resp.Header.Get("Retry-After"), b, time.Since(t0)}
		}()
		if i == 1 {
			time.Sleep(300 * time.Millisecond) // the first two are surely in flight
		}
	}
	wg.Wait()
	ok, limited := 0, 0
	for _, a := range answers {
		switch a.code {
		case 200:
			ok++
			if a.took < 2*time.Second {
				t.Errorf("a served slow call took %v, under the function's 2 s sleep", a.took)
			}
		case 429:
			limited++
			if a.retryAfter != "1" || a.took > time.Second {
				t.Errorf("429 after %v with Retry-After %q: want an immediate answer with Retry-After 1", a.took, a.retryAfter)
			}
			if ae := decodeError(t, a.body); !strings.Contains(ae.Error, "concurrency limit of 2") || ae.Function != "slow" {
				t.Errorf("429 body %+v", ae)
			}
		default:
			t.Errorf("unexpected answer %d %s", a.code, a.body)
		}
	}
	if ok != 2 || limited != n-2 {
		t.Fatalf("%d served, %d limited in %v; want 2 and %d", ok, limited, time.Since(start), n-2)
	}
	// Both slots are free again.
	for range 2 {
		if resp, b := do(t, "POST", e.url+"/function/slow", "", nil); resp.StatusCode != 200 {
			t.Fatalf("after the slow calls: %d %s", resp.StatusCode, b)
		}
	}
}

// A private function answers only callers with a key, and never sees the
// key; a function's own Authorization scheme passes through.
func TestPrivateFunction(t *testing.T) {
	keys := openKeys(t)
	e := startWithAgent(t, gateway.Config{Keys: keys})
	prog := limitFunction(t)
	d := mustDeploy(t, e, "name=secret&kind=serve&private=true", prog)
	if !d.Private {
		t.Fatalf("deploy answered %+v, want private", d)
	}
	mustDeploy(t, e, "name=open&kind=serve", prog)
	key := createKey(t, e, "", "caller")
	revoked := createKey(t, e, "Bearer "+key, "gone")
	if resp, b := doKey(t, "Bearer "+key, "DELETE", e.url+"/system/keys/gone", "", nil); resp.StatusCode != 204 {
		t.Fatalf("revoke: %d %s", resp.StatusCode, b)
	}
	wrong, _, _ := apikeys.Generate()
	for _, auth := range []string{"", "Bearer " + wrong, "Bearer " + revoked} {
		resp, b := doKey(t, auth, "POST", e.url+"/function/secret", "", nil)
		if resp.StatusCode != 401 || decodeError(t, b).InvocationID == "" {
			t.Fatalf("private function with %.20q: %d %s", auth, resp.StatusCode, b)
		}
	}
	for _, fn := range []string{"secret", "open"} {
		resp, b := doKey(t, "Bearer "+key, "POST", e.url+"/function/"+fn, "", nil)
		if resp.StatusCode != 200 || string(b) != "authorization=" {
			t.Fatalf("%s with a key: %d %q; want 200 and no Authorization reaching the function", fn, resp.StatusCode, b)
		}
	}
	resp, b := doKey(t, "Bearer their-own-token", "POST", e.url+"/function/open", "", nil)
	if resp.StatusCode != 200 || string(b) != "authorization=Bearer their-own-token" {
		t.Fatalf("a function's own Authorization: %d %q", resp.StatusCode, b)
	}
}

// A rate limit of one call a minute: the second call gets 429 with a
// Retry-After close to a minute; a redeploy without the limit lifts it.
func TestRateLimit(t *testing.T) {
	e := start(t, gateway.Config{})
	prog := staticELF(t)
	mustDeploy(t, e, "name=fn&rate=1/m", prog)
	// No node runs functions here: an admitted call is the scheduler's 503.
	if resp, b := do(t, "POST", e.url+"/function/fn", "", nil); resp.StatusCode != 503 {
		t.Fatalf("first call: %d %s", resp.StatusCode, b)
	}
	resp, b := do(t, "POST", e.url+"/function/fn", "", nil)
	ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != 429 || ra < 55 || ra > 60 {
		t.Fatalf("second call: %d Retry-After %q %s; want 429 with about 60 s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if ae := decodeError(t, b); !strings.Contains(ae.Error, "rate limit of 1/m") {
		t.Fatalf("429 body %+v", ae)
	}
	// A burst of 3 at 2/s: three pass at once, the fourth waits about half a second.
	mustDeploy(t, e, "name=burst&rate=2&burst=3", prog)
	for i := range 3 {
		if resp, b := do(t, "POST", e.url+"/function/burst", "", nil); resp.StatusCode != 503 {
			t.Fatalf("burst call %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if resp, _ := do(t, "POST", e.url+"/function/burst", "", nil); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("over the burst: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	mustDeploy(t, e, "name=fn", prog)
	if resp, b := do(t, "POST", e.url+"/function/fn", "", nil); resp.StatusCode != 503 {
		t.Fatalf("after redeploying without a rate: %d %s", resp.StatusCode, b)
	}
}

func TestFunctionBodyLimit(t *testing.T) {
	e := start(t, gateway.Config{MaxBodyBytes: 1024})
	prog := staticELF(t)
	d := mustDeploy(t, e, "name=small&max_body=100", prog)
	if d.MaxBodyBytes != 100 {
		t.Fatalf("deploy answered %+v", d)
	}
	mustDeploy(t, e, "name=big&max_body=4K", prog)
	mustDeploy(t, e, "name=plain", prog)
	for _, tc := range []struct {
		fn   string
		size int
		code int
	}{
		{"small", 100, 503}, {"small", 101, 413},
		{"big", 4096, 503}, {"big", 4097, 413},
		{"plain", 1024, 503}, {"plain", 1025, 413},
	} {
		resp, b := do(t, "POST", e.url+"/function/"+tc.fn, "", bytes.NewReader(make([]byte, tc.size)))
		if resp.StatusCode != tc.code {
			t.Fatalf("%s with %d bytes: %d %s, want %d", tc.fn, tc.size, resp.StatusCode, b, tc.code)
		}
		if tc.code == 413 && !strings.Contains(decodeError(t, b).Error, fmt.Sprintf("the limit is %d bytes", tc.size-1)) {
			t.Fatalf("413 body %s", b)
		}
	}
}

func TestDeployRejectsBadLimits(t *testing.T) {
	e := start(t, gateway.Config{})
	prog := staticELF(t)
	for query, want := range map[string]string{
		"name=a&private=maybe":      "bad private",
		"name=a&max_concurrency=-1": "bad max_concurrency",
		"name=a&max_concurrency=x":  "bad max_concurrency",
		"name=a&rate=fast":          "bad rate",
		"name=a&rate=10/d":          "bad rate",
		"name=a&rate=-1":            "bad rate",
		"name=a&rate=NaN":           "bad rate",
		"name=a&burst=5":            "burst 5 without a rate",
		"name=a&max_body=65M":       "bad max_body",
		"name=a&max_body=0":         "bad max_body",
	} {
		resp, b := deploy(t, e, query, prog)
		if resp.StatusCode != 400 || !strings.Contains(decodeError(t, b).Error, want) {
			t.Errorf("%s: %d %s; want 400 with %q", query, resp.StatusCode, b, want)
		}
	}
	if fs, _ := e.reg.ListFunctions(context.Background()); len(fs) != 0 {
		t.Fatalf("rejected deploys stored functions: %+v", fs)
	}
	d := mustDeploy(t, e, "name=ok&private=1&max_concurrency=4&rate=600/m&burst=20&max_body=1M", prog)
	f, err := e.reg.GetFunction(context.Background(), "ok", "")
	want := registry.Limits{Private: true, MaxConcurrency: 4, RatePerSecond: 10, RateBurst: 20, MaxBodyBytes: 1 << 20}
	if err != nil || f.Limits != want || d.Limits != want {
		t.Fatalf("stored %+v, answered %+v, %v; want %+v", f.Limits, d.Limits, err, want)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"10": 10, "10/s": 10, "600/m": 10, "36/h": 0.01, "0.5": 0.5, "0": 0, "1/min": 1.0 / 60} {
		if got, err := gateway.ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "10/d", "-1", "Inf", "1e7", "10/s/s"} {
		if _, err := gateway.ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"10", "10/s", "600/m", "1/h", "0.5", "NaN", "1e6/s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := gateway.ParseRate(s)
		if err == nil && !(r >= 0 && r <= 1e6) {
			t.Fatalf("ParseRate(%q) = %v", s, r)
		}
	})
}
