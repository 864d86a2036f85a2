// Package tracing is Kiln's OpenTelemetry tracing: one trace per invocation
// across gateway → scheduler → agent, with spans for placement, queue wait,
// boot/restore and execution (docs/TRACING.md).
//
// Tracing is off unless an OTLP endpoint is configured (Config.Endpoint, the
// --otlp-endpoint flag, or the standard OTEL_EXPORTER_OTLP_ENDPOINT /
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables). Off means off: the HTTP and
// gRPC wrappers of this package pass calls straight through and Span returns
// a shared no-op, so an untraced Kiln pays one atomic load per hook.
//
// The tracer provider and propagator are process-wide (OpenTelemetry's
// globals), because the hooks sit deep inside the scheduler and the agent,
// which should not carry a provider around. One process runs one role in a
// cluster; `kiln up` and the tests run several roles under one provider,
// which is what a trace across them needs anyway.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/stats"
)

// ScopeName is the instrumentation scope of Kiln's own spans.
const ScopeName = "github.com/kilnfaas/kiln"

// Names of Kiln's own spans (the HTTP and gRPC spans are named by otelhttp
// and otelgrpc: "gateway POST /function/{name}", "kiln.v1.Scheduler/Invoke").
const (
	SpanPlacement = "kiln.placement"  // scheduler: choosing a node (one per attempt)
	SpanQueueWait = "kiln.queue_wait" // agent: waiting for the function's busy instance
	SpanBoot      = "kiln.boot"       // agent: booting a VM (cold start)
	SpanRestore   = "kiln.restore"    // agent: restoring a VM from a snapshot
	SpanExecute   = "kiln.execute"    // agent: the function handling the request
)

// Environment variables of the OpenTelemetry specification that Setup reads.
const (
	EnvEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
)

// ErrConfig: the tracing configuration is unusable.
var ErrConfig = errors.New("tracing: bad configuration")

// Config configures Setup.
type Config struct {
	// Endpoint is the OTLP/HTTP collector's base URL, e.g.
	// http://jaeger:4318 (traces go to its /v1/traces). "" → the
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT
	// variable; none of them → tracing stays off.
	Endpoint string
	// Service is the resource's service.name ("kiln-gateway", ...);
	// OTEL_SERVICE_NAME overrides it.
	Service string
	// SpanProcessor, when set, receives the spans instead of an OTLP
	// exporter (tests: tracetest.NewSpanRecorder()).
	SpanProcessor sdktrace.SpanProcessor
}

// active is what the last Setup installed, nil while tracing is off. The
// hooks read it on every call and take their tracer from it, not from a
// tracer they were built with: they are built once, when the process
// starts (platform's gRPC options), and a provider set up later — or set
// up again, in tests — must still get their spans.
type active struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	server stats.Handler // otelgrpc, for gRPC servers
	client stats.Handler // otelgrpc, for gRPC clients
}

var (
	current atomic.Pointer[active]
	mu      sync.Mutex // serialises Setup and shutdown
)

// Enabled reports whether a tracer provider installed by Setup is active.
func Enabled() bool { return current.Load() != nil }

// Setup installs a tracer provider exporting to cfg's endpoint and the W3C
// trace-context propagator, and returns the function that flushes and
// removes it. With nothing configured it changes nothing and returns a
// no-op: a process whose tracing another caller set up (a test, `kiln up`'s
// first role) keeps it.
func Setup(ctx context.Context, cfg Config) (shutdown func(context.Context) error, err error) {
	off := func(context.Context) error { return nil }
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = firstEnv(EnvTracesEndpoint, EnvEndpoint)
	}
	if endpoint == "" && cfg.SpanProcessor == nil {
		return off, nil
	}
	sp := cfg.SpanProcessor
	if sp == nil {
		if err := checkEndpoint(endpoint); err != nil {
			return off, err
		}
		if p := firstEnv(EnvTracesProtocol, EnvProtocol); p != "" && p != "http/protobuf" {
			return off, fmt.Errorf("%w: %s=%q: Kiln exports OTLP over HTTP only (http/protobuf; a collector's port 4318)", ErrConfig, EnvProtocol, p)
		}
		// The exporter connects lazily and retries on its own: a collector
		// that is down costs dropped spans, never a role that fails to start.
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
		if err != nil {
			return off, fmt.Errorf("%w: OTLP exporter for %s: %v", ErrConfig, endpoint, err)
		}
		sp = sdktrace.NewBatchSpanProcessor(exp)
	}
	service := cfg.Service
	if service == "" {
		service = "kiln"
	}
	// Environment last, so OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
	res, err := resource.New(ctx, resource.WithAttributes(attribute.String("service.name", service)), resource.WithFromEnv())
	if err != nil {
		return off, fmt.Errorf("%w: resource: %v", ErrConfig, err)
	}
	// No sampler option: the SDK then honours OTEL_TRACES_SAMPLER and
	// defaults to parent-based always-on, so a caller's traceparent decides.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sp), sdktrace.WithResource(res))
	act := &active{tp: tp, tracer: tp.Tracer(ScopeName),
		server: otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagator), otelgrpc.WithFilter(traced)),
		client: otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagator), otelgrpc.WithFilter(traced)),
	}
	mu.Lock()
	// The globals too, for any other instrumentation in the process.
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagator)
	current.Store(act)
	mu.Unlock()
	var once sync.Once
	return func(ctx context.Context) error {
		var err error
		once.Do(func() {
			mu.Lock()
			if current.CompareAndSwap(act, nil) {
				otel.SetTracerProvider(noop.NewTracerProvider())
			}
			mu.Unlock()
			err = tp.Shutdown(ctx)
		})
		return err
	}, nil
}

// propagator carries W3C traceparent/tracestate and baggage.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// checkEndpoint refuses an endpoint that is not an http(s) URL with a host,
// naming what is accepted: otlptracehttp would otherwise fail on every export
// long after start-up.
func checkEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: OTLP endpoint %q: want an http:// or https:// URL such as http://jaeger:4318", ErrConfig, endpoint)
	}
	return nil
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(os.Getenv(n)); v != "" {
			return v
		}
	}
	return ""
}

// End finishes a span started by Span, marking it failed when err is not
// nil; attrs are added first.
type End func(err error, attrs ...attribute.KeyValue)

func noEnd(error, ...attribute.KeyValue) {}

// Span starts a span named name as a child of ctx's span and returns the
// function that ends it. Its context is not returned: the spans Kiln's
// hooks open (placement, queue wait, boot, execute) have no children.
// Without tracing it costs an atomic load.
func Span(ctx context.Context, name string, attrs ...attribute.KeyValue) End {
	act := current.Load()
	if act == nil {
		return noEnd
	}
	_, sp := act.tracer.Start(ctx, name, trace.WithAttributes(attrs...))
	return func(err error, attrs ...attribute.KeyValue) {
		sp.SetAttributes(attrs...)
		if err != nil {
			sp.RecordError(err)
			sp.SetStatus(codes.Error, err.Error())
		}
		sp.End()
	}
}

// Invocation records, under ctx's span, how an agent served one
// invocation, from the durations its response reports: a start span
// (kiln.boot or kiln.restore, for start "boot" or "restore") or, for a warm
// instance, a kiln.queue_wait span when the call waited; then kiln.execute,
// ending now. The agent measures these intervals anyway; laying them out
// backwards from the end keeps the hook to one line after the work is done.
func Invocation(ctx context.Context, start string, waitNs, startNs, execNs int64, errMsg string) {
	act := current.Load()
	if act == nil {
		return
	}
	tr := act.tracer
	end := time.Now()
	execFrom := end.Add(-time.Duration(execNs))
	cold := start == "boot" || start == "restore"
	switch {
	case cold:
		name := SpanBoot
		if start == "restore" {
			name = SpanRestore
		}
		_, sp := tr.Start(ctx, name, trace.WithTimestamp(execFrom.Add(-time.Duration(startNs))))
		sp.End(trace.WithTimestamp(execFrom))
	case waitNs > 0:
		_, sp := tr.Start(ctx, SpanQueueWait, trace.WithTimestamp(execFrom.Add(-time.Duration(waitNs))))
		sp.End(trace.WithTimestamp(execFrom))
	}
	_, sp := tr.Start(ctx, SpanExecute, trace.WithTimestamp(execFrom), trace.WithAttributes(Coldstart(cold)))
	if errMsg != "" {
		sp.SetStatus(codes.Error, errMsg)
	}
	sp.End(trace.WithTimestamp(end))
}

// Failure turns an invocation's error message into an error for End: nil
// for "".
func Failure(msg string) error {
	if msg == "" {
		return nil
	}
	return errors.New(msg)
}

// Attributes of Kiln's spans. The faas.* ones follow OpenTelemetry's FaaS
// semantic conventions.

// Node names the node an invocation was placed on or ran on.
func Node(name string) attribute.KeyValue { return attribute.String("kiln.node", name) }

// Decision describes a placement: the node and what the placer found there
// ("warm": an idle instance, "cached": the image, "cold": only room).
func Decision(node string, warm, cached bool) []attribute.KeyValue {
	kind := "cold"
	switch {
	case node == "":
		kind = "none"
	case warm:
		kind = "warm"
	case cached:
		kind = "cached"
	}
	return []attribute.KeyValue{Node(node), attribute.String("kiln.placement", kind)}
}

// Coldstart marks an execution that followed a boot or restore.
func Coldstart(cold bool) attribute.KeyValue { return attribute.Bool("faas.coldstart", cold) }

// InvocationID is the gateway's invocation id.
func InvocationID(id string) attribute.KeyValue { return attribute.String("faas.invocation_id", id) }

// Function names the function.
func Function(name string) attribute.KeyValue { return attribute.String("faas.name", name) }
