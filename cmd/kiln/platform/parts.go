package platform

// Parts: the lifecycle every assembly of Kiln shares (Up, each cluster
// role, internal/teststack), and how its servers are served and stopped.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/rolecert"
	"github.com/kilnfaas/kiln/internal/tracing"
)

// maxMessage bounds one gRPC message between the roles. gRPC's default of
// 4 MiB is below the gateway's 6 MiB request bodies and the wire protocol's
// 64 MiB response bodies; the margin is for headers and metadata.
const maxMessage = 64<<20 + 1<<20

// grace bounds how long a part waits for requests in flight when it stops.
const grace = 10 * time.Second

// Timeouts of every HTTP server of the parts (the gateway's, each role's
// metrics and health), so that a caller who sends or reads slowly, or
// keeps an idle connection, holds it for a bounded time.
const (
	// httpReadHeaderTimeout: a request's headers.
	httpReadHeaderTimeout = 10 * time.Second
	// httpReadTimeout: a whole request, body included, as a backstop: the
	// largest upload (64 MiB) at about 0.5 MB/s. The gateway gives a body
	// its own, shorter deadline (gateway.Config.BodyTimeout). net/http
	// lifts the read deadline once a body has been read, so a handler
	// that runs longer than this is not cut off.
	httpReadTimeout = 2 * time.Minute
	// httpWriteTimeout: from the end of a request's headers to the end of
	// its answer: the longest sync invocation there may be, and a minute
	// to send the answer (gateway.MaxAnswerTime). The gateway tightens it
	// per invocation and lifts it for a followed log.
	httpWriteTimeout = gateway.MaxAnswerTime
	// httpIdleTimeout: a kept-alive connection between requests.
	httpIdleTimeout = 2 * time.Minute
)

var (
	serverOpts = []grpc.ServerOption{grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage), tracing.ServerOption()}
	// dialOpts are every role's client options but the transport
	// credentials, which depend on whom it dials (transportFor).
	dialOpts = []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
		tracing.DialOption(),
	}
	// roleDialOpts are how the roles dial each other: the message bounds
	// of dialOpts and a short reconnect backoff, because a restarted
	// scheduler is back in a second and gRPC's default backoff grows to
	// two minutes.
	roleDialOpts = append(dialOpts[:len(dialOpts):len(dialOpts)], grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: 2 * time.Second,
	}))
)

// grpcServer is a role's gRPC server: mTLS and the role checks of policy
// when creds are given (rolecert.ServerOptions), plaintext otherwise
// (`kiln up` on its 0600 unix sockets, --insecure-grpc).
func grpcServer(creds *rolecert.Credentials, policy rolecert.Policy) *grpc.Server {
	opts := serverOpts
	if creds != nil {
		opts = append(opts[:len(opts):len(opts)], rolecert.ServerOptions(creds, policy)...)
	}
	return grpc.NewServer(opts...)
}

// transportFor is how a role with creds dials the role want: mTLS that
// accepts only want's certificate, or plaintext without creds.
func transportFor(creds *rolecert.Credentials, want rolecert.Identity) grpc.DialOption {
	if creds == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(creds.Client(want))
}

// Parts are the running pieces of one process (stores, servers, roles) and
// what stops them. Up, each cluster role and the test stack
// (internal/teststack) build Kiln with the same methods of Parts, so each
// role is assembled in one place. Close stops every piece, newest first,
// and waits for their goroutines.
type Parts struct {
	// Metrics is the registry every piece registers its metrics in, the
	// one /metrics serves.
	Metrics *prometheus.Registry

	log     *slog.Logger
	closers []func() error // run newest first
	wg      sync.WaitGroup
	once    sync.Once
}

// NewParts starts an empty assembly logging to log (nil: discard), its
// registry holding the Go runtime and process collectors.
func NewParts(log *slog.Logger) *Parts {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Parts{log: log, Metrics: prometheus.NewRegistry()}
	p.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return p
}

// OnClose runs f when the parts stop, before everything added earlier.
func (p *Parts) OnClose(f func() error) { p.closers = append(p.closers, f) }

// Close stops every part, newest first, and waits for their goroutines.
func (p *Parts) Close() error {
	var errs []error
	p.once.Do(func() {
		for i := len(p.closers) - 1; i >= 0; i-- {
			if err := p.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		p.wg.Wait()
	})
	return errors.Join(errs...)
}

// go runs f until the parts stop; Close waits for it.
func (p *Parts) goroutine(f func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
}

// StartTracing exports spans to endpoint (or $OTEL_EXPORTER_OTLP_ENDPOINT;
// neither: off) as service until the last part added after it has stopped.
func (p *Parts) StartTracing(ctx context.Context, service, endpoint string) error {
	stop, err := tracing.Setup(ctx, tracing.Config{Endpoint: endpoint, Service: service})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStart, err)
	}
	p.OnClose(func() error { return stop(context.Background()) })
	return nil
}

// ServeHTTP serves h on lis until Close, which gives requests in flight
// the grace period. It returns the base URL, e.g. http://127.0.0.1:8080.
func (p *Parts) ServeHTTP(lis net.Listener, h http.Handler) string {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: httpReadHeaderTimeout, ReadTimeout: httpReadTimeout,
		WriteTimeout: httpWriteTimeout, IdleTimeout: httpIdleTimeout}
	p.goroutine(func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("HTTP server stopped", "err", err)
		}
	})
	p.OnClose(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		return hs.Shutdown(ctx)
	})
	return "http://" + lis.Addr().String()
}

// serveHTTP listens on addr and serves h there until Close.
func (p *Parts) serveHTTP(addr string, h http.Handler) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%w: HTTP: %v", ErrStart, err)
	}
	return p.ServeHTTP(lis, h), nil
}

// serveGRPC serves srv on lis; whoever added srv stops it.
func (p *Parts) serveGRPC(lis net.Listener, srv *grpc.Server) {
	p.goroutine(func() {
		if err := srv.Serve(lis); err != nil {
			p.log.Error("gRPC server stopped", "err", err)
		}
	})
}

// gracefulStop lets RPCs in flight finish for up to d, then ends the rest.
func gracefulStop(srv *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		srv.Stop()
		<-done
	}
}

// DialScheduler opens the long-lived client connection to the scheduler's
// gRPC address (HOST:PORT, or unix:///PATH), presenting creds and
// accepting only a scheduler's certificate (nil: plaintext); Close closes
// it.
func (p *Parts) DialScheduler(addr string, creds *rolecert.Credentials) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: no scheduler address (--scheduler, $KILN_SCHEDULER)", ErrStart)
	}
	opts := append(roleDialOpts[:len(roleDialOpts):len(roleDialOpts)], transportFor(creds, rolecert.Identity{Role: rolecert.RoleScheduler}))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: scheduler %s: %v", ErrStart, addr, err)
	}
	p.OnClose(conn.Close)
	return conn, nil
}
