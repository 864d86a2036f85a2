package tracing

import (
	"context"
	"net/http"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// HTTPHandler traces the requests h serves as server spans, continuing the
// caller's trace when the request carries a W3C traceparent. Health,
// readiness and metrics requests are not traced: a scraper or probe would
// bury the invocations. Without tracing, requests go straight to h.
func HTTPHandler(h http.Handler, server string) http.Handler {
	traced := otelhttp.NewHandler(h, server,
		otelhttp.WithPropagators(propagator),
		otelhttp.WithFilter(func(r *http.Request) bool {
			switch r.URL.Path {
			case "/healthz", "/readyz", "/metrics":
				return false
			}
			return true
		}),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return server + " " + r.Method + " " + route(r.URL.Path)
		}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if enabled.Load() {
			traced.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// route keeps span names few: the function's name and the invocation id
// are attributes of the request (url.path), not part of the name.
func route(path string) string {
	for _, prefix := range []string{"/function/", "/async-function/", "/system/functions/", "/system/invocations/"} {
		if strings.HasPrefix(path, prefix) {
			return prefix + "{name}"
		}
	}
	return path
}

// ServerHandler is the stats handler for a gRPC server: a server span per
// RPC, child of the caller's span carried in the request metadata.
func ServerHandler() stats.Handler {
	return &gate{h: otelgrpc.NewServerHandler(otelgrpc.WithPropagators(propagator), otelgrpc.WithFilter(traced))}
}

// ClientHandler is the stats handler for a gRPC client: a client span per
// RPC, whose context travels to the server in the metadata.
func ClientHandler() stats.Handler {
	return &gate{h: otelgrpc.NewClientHandler(otelgrpc.WithPropagators(propagator), otelgrpc.WithFilter(traced))}
}

// ServerOption and DialOption install the handlers.
func ServerOption() grpc.ServerOption { return grpc.StatsHandler(ServerHandler()) }
func DialOption() grpc.DialOption     { return grpc.WithStatsHandler(ClientHandler()) }

// traced leaves out the agents' Connect stream (one span as long as the
// agent lives) and health checks.
func traced(info *stats.RPCTagInfo) bool {
	return !strings.HasSuffix(info.FullMethodName, "/Connect") && !strings.HasPrefix(info.FullMethodName, "/grpc.health.")
}

// gate hands an RPC to otelgrpc only while tracing is on. The decision is
// taken once per RPC, in TagRPC, and remembered in its context, so an RPC
// that began untraced is never half-handled.
type gate struct{ h stats.Handler }

type gatedKey struct{}

func (g *gate) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if !enabled.Load() {
		return ctx
	}
	return g.h.TagRPC(context.WithValue(ctx, gatedKey{}, true), info)
}

func (g *gate) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if ctx.Value(gatedKey{}) != nil {
		g.h.HandleRPC(ctx, s)
	}
}

func (g *gate) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	return g.h.TagConn(ctx, info)
}

func (g *gate) HandleConn(ctx context.Context, s stats.ConnStats) { g.h.HandleConn(ctx, s) }
