package tracing_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/cctest"
	"github.com/kilnfaas/kiln/internal/teststack"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	"github.com/kilnfaas/kiln/internal/tracing"
)

// TestTraceAcrossRoles runs the three roles in this process on real parts
// (redis-server, nats-server with JetStream, gRPC on 127.0.0.1, the agent's
// process runtime since this host has no /dev/kvm), sends one invocation
// carrying a caller's traceparent, and checks that the spans the SDK
// recorded form one trace under the caller's: gateway HTTP server →
// gateway's gRPC client → scheduler server → placement and the scheduler's
// client → agent server.
func TestTraceAcrossRoles(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts redis-server, NATS and three roles")
	}
	prog := echoProgram(t)
	rec := tracetest.NewSpanRecorder()
	stop, err := tracing.Setup(context.Background(), tracing.Config{SpanProcessor: rec, Service: "kiln-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(context.Background()) })
	if !tracing.Enabled() {
		t.Fatal("Setup with a span processor left tracing off")
	}

	ctx := context.Background()
	gw := teststack.StartRoles(t, teststack.RolesOptions{KernelPath: prog, Node: "node1"}).Gateway

	var out, errb bytes.Buffer
	if code := cli.Main(ctx, []string{"--server", gw.HTTPURL, "deploy", "echo", "--binary", prog, "--kind", "exec", "--mem", "32M"},
		strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("kiln deploy: %d %s %s", code, out.String(), errb.String())
	}
	spansBefore := len(rec.Ended())

	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	const callerSpan = "00f067aa0ba902b7"
	req, _ := http.NewRequest("POST", gw.HTTPURL+"/function/echo", nil)
	req.Header.Set("traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	callTraced(t, gw.HTTPURL+"/function/echo", req.Header.Get("traceparent"), "hello world")
	spans := waitForSpan(rec, spansBefore, callerTrace, "gateway POST /function/{name}")
	// The agent's server span ends when gRPC's stats handler sees the RPC
	// end, after its answer went out: it may be recorded after the
	// gateway's (one CI rehearsal read the spans in between).
	for deadline := time.Now().Add(5 * time.Second); !hasSpan(spans, "kiln.v1.Agent/Invoke", trace.SpanKindServer) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		spans = inTrace(rec.Ended()[spansBefore:], callerTrace)
	}
	for _, s := range spans {
		t.Logf("span %s %s parent %s kind %s", s.SpanContext().SpanID(), s.Name(), s.Parent().SpanID(), s.SpanKind())
	}
	// Everything the invocation caused is in the caller's trace: no span
	// of this period belongs to another one.
	for _, s := range rec.Ended()[spansBefore:] {
		if s.SpanContext().TraceID().String() != callerTrace {
			t.Errorf("span %q is in trace %s, not the caller's %s", s.Name(), s.SpanContext().TraceID(), callerTrace)
		}
	}

	gwSpan := mustFind(t, spans, "gateway POST /function/{name}", trace.SpanKindServer)
	if got := gwSpan.Parent().SpanID().String(); got != callerSpan || !gwSpan.Parent().IsRemote() {
		t.Errorf("gateway span's parent is %s (remote %v), want the caller's span %s", got, gwSpan.Parent().IsRemote(), callerSpan)
	}
	if res := gwSpan.Resource(); res == nil || !strings.Contains(res.String(), "service.name=kiln-test") {
		t.Errorf("resource %v lacks service.name=kiln-test", res)
	}
	gwClient := mustFind(t, spans, "kiln.v1.Scheduler/Invoke", trace.SpanKindClient)
	childOf(t, gwClient, gwSpan)
	schedServer := mustFind(t, spans, "kiln.v1.Scheduler/Invoke", trace.SpanKindServer)
	childOf(t, schedServer, gwClient)
	place := mustFind(t, spans, tracing.SpanPlacement, trace.SpanKindInternal)
	childOf(t, place, schedServer)
	if n, k := attr(place, "kiln.node"), attr(place, "kiln.placement"); n != "node1" || k != "cold" {
		t.Errorf("placement on %q (%q), want node1 and cold (first call, image not cached)", n, k)
	}
	schedClient := mustFind(t, spans, "kiln.v1.Agent/Invoke", trace.SpanKindClient)
	childOf(t, schedClient, schedServer)
	agentServer := mustFind(t, spans, "kiln.v1.Agent/Invoke", trace.SpanKindServer)
	childOf(t, agentServer, schedClient)
	if !(gwSpan.StartTime().Before(agentServer.StartTime()) && agentServer.EndTime().Before(gwSpan.EndTime())) {
		t.Errorf("the agent's span [%v, %v] is not inside the gateway's [%v, %v]",
			agentServer.StartTime(), agentServer.EndTime(), gwSpan.StartTime(), gwSpan.EndTime())
	}
	// The agent's own spans: an exec function boots a VM for the call,
	// then runs it.
	boot := mustFind(t, spans, tracing.SpanBoot, trace.SpanKindInternal)
	childOf(t, boot, agentServer)
	run := mustFind(t, spans, tracing.SpanExecute, trace.SpanKindInternal)
	childOf(t, run, agentServer)
	if boot.EndTime().After(run.StartTime()) || attr(run, "faas.coldstart") != "true" {
		t.Errorf("boot [%v, %v] does not precede the cold execution [%v, %v] (faas.coldstart=%s)",
			boot.StartTime(), boot.EndTime(), run.StartTime(), run.EndTime(), attr(run, "faas.coldstart"))
	}

	// A serve function: the first call boots it (kiln.boot, then
	// kiln.execute with faas.coldstart), the second finds it warm.
	hello := helloServe(t)
	if code := cli.Main(ctx, []string{"--server", gw.HTTPURL, "deploy", "hello", "--binary", hello, "--kind", "serve", "--mem", "32M"},
		strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("kiln deploy hello: %d %s %s", code, out.String(), errb.String())
	}
	for i, want := range []struct {
		start string
		cold  bool
	}{{tracing.SpanBoot, true}, {"", false}} {
		traceID := fmt.Sprintf("%032x", 0xabc0+i)
		n := len(rec.Ended())
		callTraced(t, gw.HTTPURL+"/function/hello", "00-"+traceID+"-"+callerSpan+"-01", "hello, world")
		spans := waitForSpan(rec, n, traceID, "gateway POST /function/{name}")
		agent := mustFind(t, spans, "kiln.v1.Agent/Invoke", trace.SpanKindServer)
		exec := mustFind(t, spans, tracing.SpanExecute, trace.SpanKindInternal)
		childOf(t, exec, agent)
		if got := attr(exec, "faas.coldstart"); got != fmt.Sprint(want.cold) {
			t.Errorf("call %d: faas.coldstart=%s, want %v", i+1, got, want.cold)
		}
		if want.start != "" {
			st := mustFind(t, spans, want.start, trace.SpanKindInternal)
			childOf(t, st, agent)
			if st.EndTime().After(exec.StartTime()) || st.StartTime().Before(agent.StartTime()) {
				t.Errorf("call %d: %s [%v, %v] is not before %s [%v, %v] inside the agent's span", i+1, want.start,
					st.StartTime(), st.EndTime(), tracing.SpanExecute, exec.StartTime(), exec.EndTime())
			}
		} else if find(spans, tracing.SpanBoot) != nil || find(spans, tracing.SpanRestore) != nil {
			t.Errorf("call %d: a warm call has a boot or restore span", i+1)
		}
		if exec.EndTime().After(agent.EndTime()) {
			t.Errorf("call %d: execution ends after the agent's span", i+1)
		}
	}
	// Probes and scrapes make no spans.
	n := len(rec.Ended())
	for _, u := range []string{gw.HTTPURL + "/healthz", gw.HTTPURL + "/readyz", gw.HTTPURL + "/metrics"} {
		if r, err := http.Get(u); err == nil {
			r.Body.Close()
		}
	}
	if extra := rec.Ended()[n:]; len(extra) != 0 {
		t.Errorf("health, readiness and metrics requests made %d spans (%s ...)", len(extra), extra[0].Name())
	}
}

// TestOffByDefault: with no endpoint configured Setup installs nothing and
// the hooks are no-ops.
func TestOffByDefault(t *testing.T) {
	t.Setenv(tracing.EnvEndpoint, "")
	t.Setenv(tracing.EnvTracesEndpoint, "")
	stop, err := tracing.Setup(context.Background(), tracing.Config{Service: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())
	if tracing.Enabled() {
		t.Fatal("tracing is on without an endpoint")
	}
	if n := testing.AllocsPerRun(100, func() {
		tracing.Span(context.Background(), tracing.SpanExecute)(nil)
	}); n != 0 {
		t.Errorf("a span hook with tracing off allocates %v times", n)
	}
	hit := false
	h := tracing.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit = true }), "gateway")
	h.ServeHTTP(nopWriter{}, mustRequest(t))
	if !hit {
		t.Fatal("the HTTP wrapper did not call the handler")
	}
}

// TestBadEndpoint: an endpoint that is not an http(s) URL is refused at
// start-up with what is accepted, and tracing stays off.
func TestBadEndpoint(t *testing.T) {
	for _, ep := range []string{"jaeger:4318", "grpc://jaeger:4317", "http://"} {
		_, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: ep})
		if err == nil || !strings.Contains(err.Error(), "want an http:// or https:// URL") {
			t.Errorf("endpoint %q: %v", ep, err)
		}
	}
	t.Setenv(tracing.EnvProtocol, "grpc")
	if _, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: "http://127.0.0.1:4318"}); err == nil || !strings.Contains(err.Error(), "OTLP over HTTP only") {
		t.Errorf("protocol grpc: %v", err)
	}
	if tracing.Enabled() {
		t.Fatal("a refused configuration turned tracing on")
	}
}

// TestEndpointFromEnvironment: the standard variable alone turns tracing on
// (the exporter connects lazily, so nothing needs to listen), and the
// returned function turns it off again.
func TestEndpointFromEnvironment(t *testing.T) {
	t.Setenv(tracing.EnvEndpoint, "http://127.0.0.1:1")
	stop, err := tracing.Setup(context.Background(), tracing.Config{Service: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if !tracing.Enabled() {
		t.Fatal("OTEL_EXPORTER_OTLP_ENDPOINT did not turn tracing on")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	stop(ctx) // the export to a closed port fails; what matters is the state after
	if tracing.Enabled() {
		t.Fatal("tracing still on after its shutdown")
	}
}

// callTraced invokes url with body "world" and the traceparent header, and
// wants the answer want.
func callTraced(t *testing.T, url, traceparent, want string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader("world"))
	req.Header.Set("traceparent", traceparent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("invocation of %s: %d %q, want 200 %q", url, resp.StatusCode, body, want)
	}
}

// waitForSpan returns the spans of trace traceID ended since the from-th,
// once the one named last has ended: the gateway's server span ends after
// the response is written.
func waitForSpan(rec *tracetest.SpanRecorder, from int, traceID, last string) []sdktrace.ReadOnlySpan {
	deadline := time.Now().Add(5 * time.Second)
	for {
		spans := inTrace(rec.Ended()[from:], traceID)
		if find(spans, last) != nil || time.Now().After(deadline) {
			return spans
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasSpan(spans []sdktrace.ReadOnlySpan, name string, kind trace.SpanKind) bool {
	for _, s := range spans {
		if s.Name() == name && s.SpanKind() == kind {
			return true
		}
	}
	return false
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// helloServe builds examples/hello-c, the C serve function on sdk/c, with
// musl-gcc as its Makefile does.
func helloServe(t *testing.T) string {
	t.Helper()
	return cctest.BuildFile(t, "musl-gcc", "../../examples/hello-c/hello.c",
		"-static", "-O2", "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-I", "../../sdk/c")
}

type nopWriter struct{}

func (nopWriter) Header() http.Header         { return http.Header{} }
func (nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (nopWriter) WriteHeader(int)             {}

func mustRequest(t *testing.T) *http.Request {
	r, err := http.NewRequest("GET", "http://x/function/f", nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func inTrace(spans []sdktrace.ReadOnlySpan, traceID string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.SpanContext().TraceID().String() == traceID {
			out = append(out, s)
		}
	}
	return out
}

func find(spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

func mustFind(t *testing.T, spans []sdktrace.ReadOnlySpan, name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name && s.SpanKind() == kind {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s span %q in the trace, found %d", kind, name, len(found))
	}
	return found[0]
}

func childOf(t *testing.T, child, parent sdktrace.ReadOnlySpan) {
	t.Helper()
	if child.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("span %q (%s) has parent %s, want %q (%s)", child.Name(), child.SpanKind(), child.Parent().SpanID(),
			parent.Name(), parent.SpanContext().SpanID())
	}
}

// echoProgram builds a static program that answers "hello " and its input:
// the function the test deploys, and the stand-in guest kernel the gateway
// packs into images (the process runtime boots none).
func echoProgram(t *testing.T) string {
	t.Helper()
	return cctest.Build(t, "gcc", `#include <stdio.h>
int main(void){char b[256];size_t n=fread(b,1,sizeof b,stdin);printf("hello %.*s",(int)n,b);return 0;}
`, "-static", "-O2", "-s")
}

// TestSetupAgain: the HTTP and gRPC hooks are built once (platform builds
// its gRPC options when the process starts), yet each Setup's provider gets
// the spans of the calls made while it is the active one — a second
// `kiln up` in one process, or a test after another, is traced too.
func TestSetupAgain(t *testing.T) {
	addr := testnet.ServeGRPC(t, func(srv *grpc.Server) {
		healthpb.RegisterHealthServer(srv, health.NewServer())
		// Health checks are not traced: serve a second name for the test.
		srv.RegisterService(&grpc.ServiceDesc{ServiceName: "kiln.test.Echo", HandlerType: (*any)(nil),
			Methods: []grpc.MethodDesc{{MethodName: "Ping", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(healthpb.HealthCheckRequest)
				return &healthpb.HealthCheckResponse{}, dec(in)
			}}}}, struct{}{})
	}, tracing.ServerOption())
	conn := testnet.Dial(t, addr, tracing.DialOption())
	web := httptest.NewServer(tracing.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := new(healthpb.HealthCheckResponse)
		if err := conn.Invoke(r.Context(), "/kiln.test.Echo/Ping", &healthpb.HealthCheckRequest{}, out); err != nil {
			http.Error(w, err.Error(), 500)
		}
	}), "gateway"))
	defer web.Close()

	for round := 1; round <= 2; round++ {
		rec := tracetest.NewSpanRecorder()
		stop, err := tracing.Setup(context.Background(), tracing.Config{SpanProcessor: rec})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post(web.URL+"/function/x", "text/plain", nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("round %d: %v %v", round, resp, err)
		}
		resp.Body.Close()
		stop(context.Background())
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.SpanKind().String()+" "+s.Name())
		}
		slices.Sort(names)
		want := []string{"client kiln.test.Echo/Ping", "server gateway POST /function/{name}", "server kiln.test.Echo/Ping"}
		if !slices.Equal(names, want) {
			t.Errorf("round %d: spans %q, want %q", round, names, want)
		}
	}
}
