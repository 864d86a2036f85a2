package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/teststack"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/store/registry"
)

// env is the gateway of a test stack (internal/teststack): a bbolt
// registry, an embedded NATS image store and async queue, a real scheduler
// reached over gRPC on 127.0.0.1, and a node-agent when asked.
type env struct {
	url    string
	images *imagestore.Store
	reg    registry.Store
	stack  *teststack.Stack
}

// start is a gateway with no nodes: invocations find no capacity.
func start(t *testing.T, cfg gateway.Config) *env {
	t.Helper()
	return startStack(t, cfg, teststack.Options{NoAgent: true})
}

// startStack starts a stack with o, the gateway configured by cfg.
func startStack(t *testing.T, cfg gateway.Config, o teststack.Options) *env {
	t.Helper()
	if cfg.Kernel == nil {
		cfg.Kernel = staticELF(t) // any ELF stands in for the guest kernel here
	}
	o.Gateway = cfg
	s := teststack.Start(t, o)
	return &env{url: s.URL, images: s.Images, reg: s.Stores.Registry, stack: s}
}

func compile(t *testing.T, flags ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("gcc not installed (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "p.c")
	os.WriteFile(src, []byte("int main(void){return 0;}\n"), 0o644)
	out := filepath.Join(dir, "p")
	if b, err := exec.Command("gcc", append(flags, "-o", out, src)...).CombinedOutput(); err != nil {
		t.Skipf("gcc %v: %v\n%s", flags, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var staticCache []byte

func staticELF(t *testing.T) []byte {
	if staticCache == nil {
		staticCache = compile(t, "-static", "-s")
	}
	return staticCache
}

type apiError struct {
	Error        string `json:"error"`
	Function     string `json:"function"`
	InvocationID string `json:"invocation_id"`
}

func do(t *testing.T, method, url, ctype string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func decodeError(t *testing.T, b []byte) apiError {
	t.Helper()
	var e apiError
	if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not the JSON error shape: %v", b, err)
	}
	return e
}

func deploy(t *testing.T, e *env, query string, program []byte) (*http.Response, []byte) {
	return do(t, "POST", e.url+"/system/functions?"+query, "application/octet-stream", bytes.NewReader(program))
}

func TestInvokeUnknownFunction(t *testing.T) {
	e := start(t, gateway.Config{})
	resp, b := do(t, "POST", e.url+"/function/nope", "", strings.NewReader("x"))
	if resp.StatusCode != 404 {
		t.Fatalf("status %d, want 404: %s", resp.StatusCode, b)
	}
	ae := decodeError(t, b)
	id := resp.Header.Get(gateway.HeaderInvocationID)
	if ae.Function != "nope" || ae.InvocationID == "" || ae.InvocationID != id || !strings.Contains(ae.Error, "kiln deploy nope") {
		t.Fatalf("404 body %+v (header id %q): want the function, the invocation id and what to do", ae, id)
	}
	// A name that could never be deployed is just as unknown.
	if resp, _ := do(t, "GET", e.url+"/function/Not_Valid", "", nil); resp.StatusCode != 404 {
		t.Fatalf("invalid name: status %d, want 404", resp.StatusCode)
	}
}

func TestDeployListDescribeDelete(t *testing.T) {
	e := start(t, gateway.Config{})
	prog := staticELF(t)
	resp, b := deploy(t, e, "name=hello&kind=exec&memory=32M&timeout=2s&env=A%3D1&args=x", prog)
	if resp.StatusCode != 201 {
		t.Fatalf("deploy status %d: %s", resp.StatusCode, b)
	}
	var d gateway.Deployed
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "hello" || d.Version != 1 || d.Kind != "exec" || d.MemoryBytes != 32<<20 || d.TimeoutMs != 2000 || imagestore.CheckDigest(d.Digest) != nil {
		t.Fatalf("deploy answered %+v", d)
	}
	// The image really is in the store, under the digest the registry holds.
	if _, err := e.images.Fetch(context.Background(), d.Digest); err != nil {
		t.Fatalf("deployed image not in the store: %v", err)
	}
	f, err := e.reg.GetFunction(context.Background(), "hello", "")
	if err != nil || f.ImageDigest != d.Digest || f.Env[0] != "A=1" || f.Args[0] != "x" {
		t.Fatalf("registry holds %+v, %v", f, err)
	}

	// A second deploy of a multipart upload makes version 2.
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("name", "hello")
	mw.WriteField("kind", "serve")
	fw, _ := mw.CreateFormFile("binary", "hello")
	fw.Write(prog)
	mw.Close()
	resp, b = do(t, "POST", e.url+"/system/functions", mw.FormDataContentType(), &body)
	if resp.StatusCode != 201 {
		t.Fatalf("multipart deploy status %d: %s", resp.StatusCode, b)
	}
	json.Unmarshal(b, &d)
	if d.Version != 2 || d.Kind != "serve" {
		t.Fatalf("multipart deploy answered %+v, want version 2, serve", d)
	}

	resp, b = do(t, "GET", e.url+"/system/functions", "", nil)
	var list []registry.Function
	if err := json.Unmarshal(b, &list); err != nil || resp.StatusCode != 200 || len(list) != 1 || list[0].Version != 2 {
		t.Fatalf("list = %d %s", resp.StatusCode, b)
	}
	resp, b = do(t, "GET", e.url+"/system/functions/hello", "", nil)
	var desc gateway.Described
	if err := json.Unmarshal(b, &desc); err != nil || resp.StatusCode != 200 || desc.Version != 2 || len(desc.Versions) != 2 {
		t.Fatalf("describe = %d %s", resp.StatusCode, b)
	}
	if resp, b := do(t, "DELETE", e.url+"/system/functions/hello", "", nil); resp.StatusCode != 204 {
		t.Fatalf("delete = %d %s", resp.StatusCode, b)
	}
	if resp, b := do(t, "GET", e.url+"/system/functions/hello", "", nil); resp.StatusCode != 404 {
		t.Fatalf("describe after delete = %d %s", resp.StatusCode, b)
	}
	if resp, _ := do(t, "POST", e.url+"/function/hello", "", nil); resp.StatusCode != 404 {
		t.Fatalf("invoke after delete = %d", resp.StatusCode)
	}
}

func TestDeployRejects(t *testing.T) {
	e := start(t, gateway.Config{MaxUploadBytes: 2 << 20})
	static := staticELF(t)
	for _, tc := range []struct {
		name, query string
		program     []byte
		code        int
		want        string
	}{
		{"script", "name=s", []byte("#!/bin/sh\necho hi\n"), 400, "not an ELF file (starts with #!/bin/sh)"},
		{"dynamic", "name=d", compile(t), 400, "dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2): build with -static"},
		{"no name", "", static, 400, "missing function name"},
		{"bad name", "name=Bad_Name", static, 400, "bad function name"},
		{"bad kind", "name=k&kind=daemon", static, 400, "bad kind"},
		{"bad memory", "name=m&memory=lots", static, 400, "bad memory size"},
		{"huge memory", "name=m&memory=8G", static, 400, "memory_bytes"},
		{"bad timeout", "name=t&timeout=soon", static, 400, "bad timeout"},
		{"empty", "name=e", nil, 400, "no program uploaded"},
		{"too big", "name=big", make([]byte, 3<<20), 413, "program too big: the limit is 2 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := deploy(t, e, tc.query, tc.program)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.code, b)
			}
			if ae := decodeError(t, b); !strings.Contains(ae.Error, tc.want) {
				t.Fatalf("error %q, want it to contain %q", ae.Error, tc.want)
			}
		})
	}
	resp, b := do(t, "GET", e.url+"/system/functions", "", nil)
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("rejected deploys left functions behind: %s", b)
	}
}

func TestInvokeBodyLimitAndNoCapacity(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := start(t, gateway.Config{MaxBodyBytes: 1024, Registerer: reg})
	if resp, b := deploy(t, e, "name=fn", staticELF(t)); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}

	resp, b := do(t, "POST", e.url+"/function/fn", "", bytes.NewReader(make([]byte, 1025)))
	if resp.StatusCode != 413 || !strings.Contains(decodeError(t, b).Error, "limit is 1024 bytes") {
		t.Fatalf("oversized body: %d %s", resp.StatusCode, b)
	}
	// Without Content-Length the gateway must still stop at limit+1 bytes.
	pr, pw := io.Pipe()
	go func() { pw.Write(make([]byte, 4096)); pw.Close() }()
	resp, b = do(t, "POST", e.url+"/function/fn", "", pr)
	if resp.StatusCode != 413 {
		t.Fatalf("chunked oversized body: %d %s", resp.StatusCode, b)
	}

	// A body at the limit goes to the scheduler, which has no nodes.
	resp, b = do(t, "POST", e.url+"/function/fn/sub/path?x=1", "", bytes.NewReader(make([]byte, 1024)))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("no nodes: %d %s, want 503 with Retry-After", resp.StatusCode, b)
	}
	if ae := decodeError(t, b); !strings.Contains(ae.Error, "no node has capacity") || ae.Function != "fn" {
		t.Fatalf("no nodes: %+v", ae)
	}

	resp, b = do(t, "GET", e.url+"/metrics", "", nil)
	for _, want := range []string{
		`kiln_gateway_requests_total{code="413",function="fn"} 2`,
		`kiln_gateway_requests_total{code="503",function="fn"} 1`,
		`kiln_invocation_duration_seconds_count{function="fn",outcome="no_capacity",start="none"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics status %d", resp.StatusCode)
	}
}

func TestHealthzAndUnknownEndpoint(t *testing.T) {
	e := start(t, gateway.Config{})
	if resp, b := do(t, "GET", e.url+"/healthz", "", nil); resp.StatusCode != 200 || string(b) != "ok\n" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, b)
	}
	resp, b := do(t, "GET", e.url+"/nothing/here", "", nil)
	if resp.StatusCode != 404 || !strings.Contains(decodeError(t, b).Error, "/function/NAME") {
		t.Fatalf("unknown endpoint: %d %s", resp.StatusCode, b)
	}
	// The registry going away turns health red.
	e.reg.Close()
	if resp, _ := do(t, "GET", e.url+"/healthz", "", nil); resp.StatusCode != 503 {
		t.Fatalf("healthz with a closed registry: %d, want 503", resp.StatusCode)
	}
}

func TestParseMemoryAndTimeout(t *testing.T) {
	for in, want := range map[string]uint64{"64M": 64 << 20, "64MiB": 64 << 20, "64mb": 64 << 20, "1G": 1 << 30, "4096": 4096, "512K": 512 << 10} {
		if got, err := gateway.ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1M", "1T", "0", "1.5G", "99999999999G"} {
		if _, err := gateway.ParseMemory(in); err == nil {
			t.Errorf("ParseMemory(%q) accepted", in)
		}
	}
	for in, want := range map[string]time.Duration{"300ms": 300 * time.Millisecond, "5s": 5 * time.Second, "250": 250 * time.Millisecond} {
		if got, err := gateway.ParseTimeout(in); err != nil || got != want {
			t.Errorf("ParseTimeout(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "soon", "-5s", "0", "1us"} {
		if _, err := gateway.ParseTimeout(in); err == nil {
			t.Errorf("ParseTimeout(%q) accepted", in)
		}
	}
}

func FuzzParseMemory(f *testing.F) {
	for _, s := range []string{"64M", "1G", "12", "kb", "18446744073709551615"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := gateway.ParseMemory(s)
		if err == nil && (n == 0 || n > 1<<40) {
			t.Fatalf("ParseMemory(%q) = %d", s, n)
		}
		_ = fmt.Sprint(n)
	})
}
