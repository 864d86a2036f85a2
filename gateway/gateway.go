// Package gateway is Kiln's only public surface: the HTTP API that invokes
// functions (/function/{name}), manages them (/system/functions), and
// reports health and metrics. It owns what a caller is allowed to send
// (body limits) and turns every platform outcome into an HTTP answer with a
// JSON error that says what happened and what to do.
//
// The gateway keeps no state of its own: the registry says what a name
// means, the image store keeps deployed images, the scheduler runs
// invocations. Its dependencies are passed to New.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/apikeys"
	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/registry"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxBodyBytes   = 6 << 20
	DefaultMaxUploadBytes = 64 << 20
	// DefaultBodyTimeout carries the largest upload (64 MiB) at about
	// 1 MB/s, and an invocation's 6 MiB at 100 KB/s.
	DefaultBodyTimeout = time.Minute
)

// MaxAnswerTime bounds how long the gateway may take to answer a request:
// the longest timeout a function may have (image.MaxTimeout), the
// scheduler's slack beyond it, and a minute to send the answer. A server
// of the gateway sets it as its WriteTimeout; an invocation tightens it to
// its own function's timeout, a followed log lifts it line by line.
const MaxAnswerTime = image.MaxTimeout + outcome.SchedulerSlack + answerSendTime

// answerSendTime is what an answer may take to send once it is ready: a
// 64 MiB body at about 1 MB/s.
const answerSendTime = time.Minute

// Images is the part of the image store a deploy needs.
type Images interface {
	Put(ctx context.Context, data []byte) (digest string, err error)
}

// Config is what New needs. Registry, Images and Scheduler are required.
type Config struct {
	Registry  registry.Store
	Images    Images
	Scheduler kilnv1.SchedulerClient
	// Async queues POST /async-function/NAME; nil answers those with 503.
	Async *asyncq.Queue
	// RandN picks the version of a split alias per invocation: uniform in
	// [0, n); nil → math/rand/v2. Tests make it deterministic.
	RandN func(n int) int
	// Kernel is the guest kernel ELF that deploys pack into images.
	Kernel []byte
	// MaxBodyBytes bounds an invocation's request body; 0 → 6 MiB.
	MaxBodyBytes int64
	// MaxUploadBytes bounds a deployed program; 0 → 64 MiB.
	MaxUploadBytes int64
	// BodyTimeout bounds how long a request's body may take to arrive,
	// from when its headers are in; 0 → DefaultBodyTimeout. A slower
	// caller is answered 408 and its connection closed.
	BodyTimeout time.Duration
	// Registerer receives the gateway's metrics; Gatherer is what /metrics
	// serves. When only Registerer is set and it is a *prometheus.Registry it
	// serves both; when neither is set the gateway uses a registry of its own.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	// Keys holds the API keys (docs/AUTH.md). nil means no key exists:
	// only loopback callers may manage functions or call private ones.
	Keys apikeys.Store
	// Logs keeps what invocations write to stderr (docs/LOGS.md); nil keeps none.
	Logs logstore.Store
	// SLA: the ledger behind /system/sla and the view of warm pools (docs/SLA.md).
	SLA SLAConfig
}

// Gateway is the http.Handler of the public API.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	auth    *auth
	limits  *limiter
	logs    *logCapture
}

// ErrConfig: New was given an incomplete Config.
var ErrConfig = errors.New("gateway: incomplete config")

// New builds the gateway and registers its metrics.
func New(cfg Config) (*Gateway, error) {
	if cfg.Registry == nil || cfg.Images == nil || cfg.Scheduler == nil {
		return nil, errors.Join(ErrConfig, errors.New("gateway: Registry, Images and Scheduler are required"))
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxUploadBytes <= 0 {
		cfg.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.Registerer == nil && cfg.Gatherer == nil {
		r := prometheus.NewRegistry()
		cfg.Registerer, cfg.Gatherer = r, r
	}
	if cfg.Gatherer == nil {
		if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
			cfg.Gatherer = g
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), metrics: m,
		auth: newAuth(cfg.Keys, cfg.Logger), limits: newLimiter()}
	g.registerKeyRoutes()
	g.mux.HandleFunc("/function/{name}", g.invoke)
	g.mux.HandleFunc("/function/{name}/{rest...}", g.invoke)
	g.mux.HandleFunc("POST /system/functions", g.deploy)
	g.mux.HandleFunc("GET /system/functions", g.list)
	g.mux.HandleFunc("GET /system/functions/{name}", g.describe)
	g.mux.HandleFunc("DELETE /system/functions/{name}", g.remove)
	g.registerVersionRoutes()
	g.registerAsync()
	g.registerLogs()
	g.registerSLA()
	g.mux.HandleFunc("GET /healthz", g.healthz)
	if cfg.Gatherer != nil {
		g.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	g.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, apiError{
			Error: "no such endpoint " + r.URL.Path + ": invoke functions at /function/NAME, manage them at /system/functions",
		})
	})
	return g, nil
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.bodyDeadline(w, r)
	g.serveAuthorized(w, r)
}

// bodyDeadline gives r's body BodyTimeout to arrive, so that a caller who
// dribbles it holds a connection for that long at most. net/http lifts the
// deadline by itself once the body has been read to its end (it then
// watches the connection for the caller going away), so the handler's own
// run is not cut short; a request without a body keeps no deadline at all.
// A ResponseWriter that cannot set deadlines (a test's recorder) is served
// without one: that is no network connection.
func (g *Gateway) bodyDeadline(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout))
}

// bodyTimedOut reports whether err is the body deadline passing.
func bodyTimedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// slowBody is the sentence of a 408.
func (g *Gateway) slowBody() string {
	return fmt.Sprintf("the request body did not arrive within %s: send it faster, or send less", g.cfg.BodyTimeout)
}

func (g *Gateway) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := g.cfg.Registry.ListFunctions(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, apiError{Error: "registry unavailable: " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

// apiError is the body of every error the gateway answers: the outcome
// table's, so that invocation errors and the management API's look alike.
type apiError = outcome.ErrorBody

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, e apiError) { writeJSON(w, code, e) }
