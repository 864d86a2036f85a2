package e2e_test

import (
	"net/url"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// Through the whole platform: the first call of a hello-go with min_warm
// boots (taking the snapshot), the pool then fills to min_warm, later
// calls are warm, a fresh function's calls are restores, and /metrics
// shows the pool.
func TestWarmPoolThroughThePlatform(t *testing.T) {
	k := up(t)
	k.mustDeploy("pooled", "examples/hello-go/hello-go", "serve", url.Values{"min_warm": {"2"}})
	k.mustDeploy("fresh", "examples/hello-go/hello-go", "serve", url.Values{"fresh": {"true"}})

	a := k.request("POST", "/function/pooled", []byte("one"))
	if a.code != 200 || a.body != "hello, one" || a.header.Get("X-Kiln-Start") != "boot" {
		t.Fatalf("first call: %d %q start %q", a.code, a.body, a.header.Get("X-Kiln-Start"))
	}
	idle := regexp.MustCompile(`kiln_agent_warm_instances\{function="pooled",state="idle"\} (\d+)`)
	deadline := time.Now().Add(time.Minute)
	for {
		m := idle.FindStringSubmatch(k.request("GET", "/metrics", nil).body)
		if m != nil {
			if n, _ := strconv.Atoi(m[1]); n == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not reach min_warm 2 within a minute: %v", m)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range 3 {
		a = k.request("POST", "/function/pooled", []byte("again"))
		if a.code != 200 || a.body != "hello, again" || a.header.Get("X-Kiln-Start") != "warm" {
			t.Fatalf("call %d: %d %q start %q", i, a.code, a.body, a.header.Get("X-Kiln-Start"))
		}
	}
	for i, want := range []string{"boot", "restore", "restore"} {
		a = k.request("POST", "/function/fresh", []byte("f"))
		if a.code != 200 || a.body != "hello, f" || a.header.Get("X-Kiln-Start") != want {
			t.Fatalf("fresh call %d: %d %q start %q, want %s", i, a.code, a.body, a.header.Get("X-Kiln-Start"), want)
		}
	}
}
