// Package e2e_test drives the whole platform the way a user does: real
// gateway, scheduler and node-agent talking gRPC over 127.0.0.1 (started by
// platform.Up, as `kiln up` does), embedded NATS, functions booted as KVM
// guests, and the requests of curl and the kiln CLI.
//
// The tests need /dev/kvm and the built guests (`make build-guest`); on a
// host without KVM, `make test` runs them inside scripts/kvmbox.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/store/registry"
)

type kiln struct {
	t   *testing.T
	url string
}

func up(t *testing.T) *kiln {
	t.Helper()
	kvmtest.Require(t)
	kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The platform's log is printed only for a failed test: it says what
	// the agent saw (a timed-out guest's registers, a crashed init).
	logPath := filepath.Join(t.TempDir(), "platform.log")
	logs, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logs.Close()
		if b, _ := os.ReadFile(logPath); t.Failed() {
			t.Logf("platform log:\n%s", b)
		}
	})
	p, err := platform.Up(ctx, platform.Config{
		Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		DataDir:     t.TempDir(),
		HTTPAddr:    "127.0.0.1:0",
		MemoryBytes: 1 << 30,
		KernelPath:  filepath.Join(kvmtest.BuildDir(t), "kernel", "kiln-kernel.elf"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if !p.Agent {
		t.Fatal("platform started without a node-agent although /dev/kvm works")
	}
	k := &kiln{t: t, url: p.URL}
	k.waitForNode()
	return k
}

// waitForNode waits until the agent has registered with the scheduler:
// until then invocations answer 503.
func (k *kiln) waitForNode() {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(k.url + "/metrics")
		if err != nil {
			k.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "\nkiln_scheduler_nodes 1\n") {
			return
		}
		if time.Now().After(deadline) {
			k.t.Fatal("the node-agent did not register with the scheduler within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type answer struct {
	code   int
	header http.Header
	body   string
}

func (k *kiln) request(method, path string, body []byte) answer {
	k.t.Helper()
	req, err := http.NewRequest(method, k.url+path, bytes.NewReader(body))
	if err != nil {
		k.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		k.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		k.t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// deploy uploads a built artifact through the HTTP API.
func (k *kiln) deploy(name, artifact, kind string, extra url.Values) answer {
	k.t.Helper()
	q := url.Values{"name": {name}, "kind": {kind}}
	for key, vs := range extra {
		q[key] = vs
	}
	return k.request("POST", "/system/functions?"+q.Encode(), kvmtest.Artifact(k.t, artifact))
}

func (k *kiln) mustDeploy(name, artifact, kind string, extra url.Values) {
	k.t.Helper()
	if a := k.deploy(name, artifact, kind, extra); a.code != 201 {
		k.t.Fatalf("deploy %s: %d %s", name, a.code, a.body)
	}
}

func errorOf(t *testing.T, a answer) map[string]any {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal([]byte(a.body), &e); err != nil || e["error"] == "" {
		t.Fatalf("answer %d %q is not the JSON error shape: %v", a.code, a.body, err)
	}
	if e["invocation_id"] != a.header.Get("X-Kiln-Invocation-Id") {
		t.Fatalf("error body invocation_id %v != header %q", e["invocation_id"], a.header.Get("X-Kiln-Invocation-Id"))
	}
	return e
}

func TestServeHelloWarm(t *testing.T) {
	k := up(t)
	k.mustDeploy("hello", "examples/hello-c/hello", "serve", nil)

	first := k.request("POST", "/function/hello", []byte("world"))
	if first.code != 200 || first.body != "hello, world" {
		t.Fatalf("first call: %d %q, want 200 \"hello, world\"", first.code, first.body)
	}
	if s := first.header.Get("X-Kiln-Start"); s != "boot" {
		t.Errorf("first call X-Kiln-Start = %q, want boot", s)
	}
	if first.header.Get("X-Kiln-Invocation-Id") == "" || first.header.Get("X-Kiln-Node") == "" {
		t.Errorf("first call lacks X-Kiln-Invocation-Id or X-Kiln-Node: %v", first.header)
	}
	second := k.request("POST", "/function/hello", []byte("again"))
	if second.code != 200 || second.body != "hello, again" {
		t.Fatalf("second call: %d %q", second.code, second.body)
	}
	if s := second.header.Get("X-Kiln-Start"); s != "warm" {
		t.Errorf("second call X-Kiln-Start = %q, want warm", s)
	}
	if first.header.Get("X-Kiln-Invocation-Id") == second.header.Get("X-Kiln-Invocation-Id") {
		t.Error("two invocations share an invocation id")
	}

	// Errors that never reach a VM.
	a := k.request("POST", "/function/nobody", []byte("x"))
	if a.code != 404 || errorOf(t, a)["function"] != "nobody" {
		t.Fatalf("unknown function: %d %s", a.code, a.body)
	}
	a = k.request("POST", "/function/hello", make([]byte, 6<<20+1))
	if a.code != 413 || !strings.Contains(errorOf(t, a)["error"].(string), "too large") {
		t.Fatalf("oversized body: %d %s", a.code, a.body)
	}
	// At the limit is fine.
	a = k.request("POST", "/function/hello", bytes.Repeat([]byte("x"), 6<<20))
	if a.code != 200 || len(a.body) != len("hello, ")+6<<20 {
		t.Fatalf("body at the limit: %d, %d bytes: %.400s", a.code, len(a.body), a.body)
	}
}

func TestExecFunctions(t *testing.T) {
	k := up(t)
	k.mustDeploy("cat", "guests/cat", "exec", nil)
	a := k.request("POST", "/function/cat", []byte("echo me back"))
	if a.code != 200 || a.body != "echo me back" {
		t.Fatalf("cat: %d %q", a.code, a.body)
	}

	k.mustDeploy("crash", "guests/faults", "exec", url.Values{"args": {"null"}})
	a = k.request("POST", "/function/crash", nil)
	if a.code != 502 {
		t.Fatalf("crashing function: %d %s, want 502", a.code, a.body)
	}
	if msg := errorOf(t, a)["error"].(string); !strings.Contains(msg, "crashed") {
		t.Fatalf("crash error %q does not say it crashed", msg)
	}

	k.mustDeploy("spin", "vmmguests/spin", "exec", url.Values{"timeout": {"300ms"}})
	start := time.Now()
	a = k.request("POST", "/function/spin", nil)
	if a.code != 504 {
		t.Fatalf("spinning function: %d %s, want 504", a.code, a.body)
	}
	if msg := errorOf(t, a)["error"].(string); !strings.Contains(msg, "300ms") {
		t.Fatalf("timeout error %q does not name the timeout", msg)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the 300ms timeout took %v to answer", d)
	}
	// The platform keeps serving after a timeout.
	if a := k.request("POST", "/function/cat", []byte("still here")); a.code != 200 || a.body != "still here" {
		t.Fatalf("after the timeout cat answers %d %q", a.code, a.body)
	}
}

func TestBadUploads(t *testing.T) {
	k := up(t)
	for _, tc := range []struct{ artifact, want string }{
		{"vmmguests/bad_notelf", "not an ELF file (starts with #!/bin/sh)"},
		{"vmmguests/bad_dynamic", "dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2): build with -static"},
		{"vmmguests/bad_aarch64", "built for aarch64, Kiln runs x86-64"},
		{"vmmguests/bad_32bit", "32-bit"},
	} {
		a := k.deploy("bad", tc.artifact, "exec", nil)
		if a.code != 400 || !strings.Contains(a.body, tc.want) {
			t.Errorf("deploy %s: %d %s, want 400 saying %q", tc.artifact, a.code, a.body, tc.want)
		}
	}
	if a := k.request("GET", "/system/functions/bad", nil); a.code != 404 {
		t.Fatalf("a rejected upload was registered: %d %s", a.code, a.body)
	}
}

func TestCLI(t *testing.T) {
	k := up(t)
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"--server", k.url}, args...), strings.NewReader(""), &out, &errb)
		return code, out.String(), errb.String()
	}
	hello := filepath.Join(kvmtest.BuildDir(t), "examples", "hello-c", "hello")
	if code, out, errs := run("deploy", "hello", "--binary", hello, "--kind", "serve"); code != 0 || !strings.Contains(out, "deployed hello version 1") {
		t.Fatalf("kiln deploy: %d %q %q", code, out, errs)
	}
	if code, out, errs := run("invoke", "hello", "-d", "cli"); code != 0 || out != "hello, cli" {
		t.Fatalf("kiln invoke: %d %q %q", code, out, errs)
	}
	code, out, errs := run("invoke", "ghost", "-d", "x")
	if code != 1 || out != "" || !strings.Contains(errs, `"function": "ghost"`) {
		t.Fatalf("kiln invoke of an unknown function: %d %q %q, want exit 1 and the JSON error on stderr", code, out, errs)
	}
	code, out, errs = run("list", "-o", "json")
	var fs []registry.Function
	if code != 0 || json.Unmarshal([]byte(out), &fs) != nil || len(fs) != 1 || fs[0].Name != "hello" || fs[0].Kind != "serve" {
		t.Fatalf("kiln list -o json: %d %q %q", code, out, errs)
	}
	code, out, _ = run("list")
	if code != 0 || !strings.Contains(out, "NAME") || !strings.Contains(out, "hello") {
		t.Fatalf("kiln list: %d %q", code, out)
	}
}
