package tracing

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// HTTPHandler traces the requests h serves as server spans, continuing the
// caller's trace when the request carries a W3C traceparent. Health,
// readiness and metrics requests are not traced: a scraper or probe would
// bury the invocations. Without tracing, requests go straight to h.
func HTTPHandler(h http.Handler, server string) http.Handler {
	type wrapped struct {
		act *active
		h   http.Handler
	}
	var last atomic.Pointer[wrapped]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		act := current.Load()
		if act == nil {
			h.ServeHTTP(w, r)
			return
		}
		// otelhttp keeps the tracer it was built with: build it again
		// when Setup has installed another provider.
		wr := last.Load()
		if wr == nil || wr.act != act {
			wr = &wrapped{act: act, h: otelhttp.NewHandler(h, server,
				otelhttp.WithTracerProvider(act.tp),
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
				}))}
			last.Store(wr)
		}
		wr.h.ServeHTTP(w, r)
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
func ServerHandler() stats.Handler { return gate{client: false} }

// ClientHandler is the stats handler for a gRPC client: a client span per
// RPC, whose context travels to the server in the metadata.
func ClientHandler() stats.Handler { return gate{client: true} }

// ServerOption and DialOption install the handlers.
func ServerOption() grpc.ServerOption { return grpc.StatsHandler(ServerHandler()) }
func DialOption() grpc.DialOption     { return grpc.WithStatsHandler(ClientHandler()) }

// traced leaves out the agents' Connect stream (one span as long as the
// agent lives) and health checks.
func traced(info *stats.RPCTagInfo) bool {
	return !strings.HasSuffix(info.FullMethodName, "/Connect") && !strings.HasPrefix(info.FullMethodName, "/grpc.health.")
}

// gate hands an RPC to the otelgrpc handler of the active Setup, if any.
// The choice is made once per RPC, in TagRPC, and remembered in its
// context, so an RPC that began untraced (or under an earlier provider) is
// never half-handled by another.
type gate struct{ client bool }

type gatedKey struct{}

func (g gate) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	act := current.Load()
	if act == nil {
		return ctx
	}
	h := act.server
	if g.client {
		h = act.client
	}
	return h.TagRPC(context.WithValue(ctx, gatedKey{}, h), info)
}

func (g gate) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if h, ok := ctx.Value(gatedKey{}).(stats.Handler); ok {
		h.HandleRPC(ctx, s)
	}
}

// Connections carry no spans (otelgrpc ignores them too).
func (gate) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (gate) HandleConn(context.Context, stats.ConnStats)                       {}
