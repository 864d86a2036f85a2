// Package asyncq runs invocations later: the gateway answers 202 with an id
// at once, the request waits in a NATS JetStream stream, and workers run it
// through the scheduler exactly as a synchronous call would, retry it with
// exponential backoff on failure, move it to a dead-letter stream when its
// retries are spent, keep its status and result in a JetStream KV bucket
// (GET /system/invocations/ID), and POST the result to the caller's
// callback URL.
//
// Delivery is at least once. A message is acknowledged only after its
// final status is stored, so a worker (or the agent or scheduler under it)
// killed mid-flight leaves the message to be redelivered once AckWait
// passes; a redelivery whose status is already final is acknowledged
// without running the function again. The invocation id reaches the
// function as the x-kiln-invocation-id header, so a function with side
// effects can deduplicate too.
//
// Layout in JetStream (names are fixed so every gateway and worker of a
// cluster agrees on them):
//
//	stream KILN_ASYNC        work queue, file storage
//	  kiln.async.invoke.NAME     invocations waiting or in backoff
//	  kiln.async.callback.NAME   results waiting for their callback
//	stream KILN_ASYNC_DEAD   limits retention, file storage
//	  kiln.async.dead.NAME       invocations whose retries are spent
//	KV kiln-invocations      id → Status (JSON), expires after Config.ResultTTL
package asyncq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
)

// Names in JetStream.
const (
	Stream         = "KILN_ASYNC"
	DeadStream     = "KILN_ASYNC_DEAD"
	Bucket         = "kiln-invocations"
	invokeSubject  = "kiln.async.invoke."
	callbackSubj   = "kiln.async.callback."
	deadSubject    = "kiln.async.dead."
	invokeConsumer = "kiln-async-invoke"
	callbackCons   = "kiln-async-callback"
)

// DefaultRetries is how many times a failed invocation is retried when its
// function names no limit; MaxRetries bounds what a function may ask for.
const (
	DefaultRetries = registry.DefaultAsyncRetries
	MaxRetries     = registry.MaxAsyncRetries
)

// Defaults for Config fields left zero.
const (
	DefaultResultTTL       = 7 * 24 * time.Hour
	DefaultDeadLetterAge   = 14 * 24 * time.Hour
	DefaultResultBodyLimit = 256 << 10
)

// envelope is what a message carries besides the request body: headers,
// protobuf framing. It is kept out of the body a caller may send.
const envelope = 64 << 10

// Sentinel errors of the queue. Wrapped with %w; test with errors.Is.
var (
	// ErrNotFound: no invocation with that id (never accepted, or expired).
	ErrNotFound = errors.New("asyncq: invocation not found")
	// ErrTooLarge: the request does not fit in one message of the NATS
	// server (its max_payload).
	ErrTooLarge = errors.New("asyncq: request too large for the queue")
	// ErrInvalid: an invocation the queue cannot carry (no id, bad
	// callback URL, retries out of range).
	ErrInvalid = errors.New("asyncq: invalid invocation")
	// ErrUnavailable: JetStream could not be reached or refused the write.
	ErrUnavailable = errors.New("asyncq: queue unavailable")
	// ErrConfig: Open or StartWorker was given an incomplete config.
	ErrConfig = errors.New("asyncq: incomplete config")
	// ErrCallbackBlocked: a callback URL names (or its DNS name resolved
	// to, or its answer redirected to) an address the callback policy
	// keeps the platform from reaching. Refused at enqueue when the URL
	// holds the address itself; at delivery it ends the callback at once,
	// never retried.
	ErrCallbackBlocked = errors.New("asyncq: callback blocked")
)

// Config is what Open needs besides the connection. Zero values get the
// defaults named on each field.
type Config struct {
	// Replicas of the streams and the bucket in a JetStream cluster; 0 → 1.
	Replicas int
	// ResultTTL is how long a status stays readable after its last change;
	// 0 → DefaultResultTTL.
	ResultTTL time.Duration
	// DeadLetterMaxAge is how long dead letters are kept; 0 → DefaultDeadLetterAge.
	DeadLetterMaxAge time.Duration
	// ResultBodyLimit bounds the response body kept in a status (the
	// callback gets the whole body); 0 → DefaultResultBodyLimit.
	ResultBodyLimit int
	// CallbackAllow lists the prefixes callbacks may reach although the
	// callback policy (netpolicy) denies them: loopback, link-local,
	// private, shared, multicast, reserved and this host's own addresses.
	// It is the operator's `--callback-allow`; empty, callbacks reach
	// public addresses only. Gateways (which refuse a denied literal
	// address at enqueue) and workers (which refuse it at dial time)
	// should agree; the worker's is the one that holds.
	CallbackAllow []netip.Prefix
	// Registerer receives the queue's metrics; nil registers none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Invocation is one accepted asynchronous call.
type Invocation struct {
	ID       string // also the request's InvocationId; a KV key: [-_.=a-zA-Z0-9]+
	Function string
	Ref      string // as the caller wrote it after '@'; "" for latest
	Version  uint64 // what Ref resolved to when the call was accepted
	// Retries after the first attempt, 0..MaxRetries.
	Retries     int
	CallbackURL string // "" for none; absolute http or https
	Enqueued    time.Time
	Request     *kilnv1.InvokeRequest
}

// Queue is the producer side and the status store; StartWorker adds the
// consumer side. Safe for concurrent use.
type Queue struct {
	cfg  Config
	log  *slog.Logger
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	max  int64 // the server's max_payload
	m    *metrics
	now  func() time.Time
	nc   *nats.Conn
	dead jetstream.Stream

	onResult atomic.Pointer[ResultFunc] // see OnResult
}

// Open connects the queue to JetStream over nc, creating or updating its
// streams and bucket (idempotent: every gateway and worker calls it).
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Queue, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: no NATS connection", ErrConfig)
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.ResultTTL <= 0 {
		cfg.ResultTTL = DefaultResultTTL
	}
	if cfg.DeadLetterMaxAge <= 0 {
		cfg.DeadLetterMaxAge = DefaultDeadLetterAge
	}
	if cfg.ResultBodyLimit <= 0 {
		cfg.ResultBodyLimit = DefaultResultBodyLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "Kiln async invocations and their pending callbacks",
		Subjects:    []string{invokeSubject + ">", callbackSubj + ">"},
		// Work queue: a message is gone once acknowledged, which happens
		// only after its final status is stored.
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Replicas:   cfg.Replicas,
		Duplicates: 2 * time.Minute,
	}); err != nil {
		return nil, fmt.Errorf("%w: stream %s: %v", ErrUnavailable, Stream, err)
	}
	dead, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadStream,
		Description: "Kiln async invocations whose retries are spent",
		Subjects:    []string{deadSubject + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.DeadLetterMaxAge,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: stream %s: %v", ErrUnavailable, DeadStream, err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Kiln async invocation status and results, by id",
		TTL:         cfg.ResultTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s: %v", ErrUnavailable, Bucket, err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Queue{cfg: cfg, log: cfg.Logger, js: js, kv: kv, max: nc.MaxPayload(), m: m, now: time.Now, nc: nc, dead: dead}, nil
}

// MaxBodyBytes is the largest request body an invocation may carry: the
// NATS server's max_payload less room for the envelope.
func (q *Queue) MaxBodyBytes() int64 {
	if n := q.max - envelope; n > 0 {
		return n
	}
	return 0
}

// Enqueue stores inv's status as queued, then the invocation itself; it
// returns once JetStream has both on disk, so an accepted invocation
// survives any crash after Enqueue returns. On error nothing is left behind.
func (q *Queue) Enqueue(ctx context.Context, inv *Invocation) error {
	if err := inv.check(); err != nil {
		return err
	}
	if inv.CallbackURL != "" {
		if err := q.CheckCallback(inv.CallbackURL); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	msg, err := encode(inv)
	if err != nil {
		return err
	}
	if size := int64(len(msg.Data) + headerBytes(msg.Header)); size > q.max {
		return fmt.Errorf("%w: %d bytes, the server's max_payload is %d", ErrTooLarge, size, q.max)
	}
	st := newStatus(inv)
	b, _ := json.Marshal(st)
	if _, err := q.kv.Create(ctx, inv.ID, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: id %q is taken", ErrInvalid, inv.ID)
		}
		return fmt.Errorf("%w: status: %v", ErrUnavailable, err)
	}
	if _, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(inv.ID)); err != nil {
		// Best effort with a fresh context: the caller's may be what ended.
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.kv.Purge(dctx, inv.ID)
		return fmt.Errorf("%w: publish: %v", ErrUnavailable, err)
	}
	q.m.enqueued.WithLabelValues(inv.Function).Inc()
	return nil
}

// Status returns what is known about invocation id.
func (q *Queue) Status(ctx context.Context, id string) (*Status, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	st, _, err := q.load(ctx, id)
	return st, err
}

// DeadLetters returns how many invocations wait in the dead-letter stream.
func (q *Queue) DeadLetters(ctx context.Context) (uint64, error) {
	info, err := q.dead.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return info.State.Msgs, nil
}

func (inv *Invocation) check() error {
	switch {
	case !validID(inv.ID):
		return fmt.Errorf("%w: id %q", ErrInvalid, inv.ID)
	case inv.Function == "":
		return fmt.Errorf("%w: no function", ErrInvalid)
	case inv.Retries < 0 || inv.Retries > MaxRetries:
		return fmt.Errorf("%w: %d retries: use 0 to %d", ErrInvalid, inv.Retries, MaxRetries)
	case inv.Request == nil:
		return fmt.Errorf("%w: no request", ErrInvalid)
	}
	if inv.CallbackURL != "" {
		if err := CheckCallbackURL(inv.CallbackURL); err != nil {
			return err
		}
	}
	return nil
}

// CheckCallbackURL returns ErrInvalid, saying why, unless u is an absolute
// http or https URL with a host. It judges the form only; CheckCallback
// judges the address too.
func CheckCallbackURL(u string) error {
	_, err := parseCallbackURL(u)
	return err
}

func parseCallbackURL(u string) (*url.URL, error) {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || len(u) > 2048 {
		return nil, fmt.Errorf("%w: callback URL %q: use an absolute http:// or https:// URL of at most 2048 characters", ErrInvalid, u)
	}
	return p, nil
}

// CheckCallback is what a gateway asks before it accepts callback URL u:
// ErrInvalid when u is malformed (CheckCallbackURL), an error matching
// ErrCallbackBlocked, whose text says why to the caller, when u's host is
// an address the queue's callback policy denies (127.0.0.1, [::1],
// 169.254.169.254...). A host name passes: what it resolves to is judged
// when the worker dials, which is the check that holds (a name may
// resolve to another address by then).
func (q *Queue) CheckCallback(u string) error {
	p, err := parseCallbackURL(u)
	if err != nil {
		return err
	}
	a, err := netip.ParseAddr(p.Hostname())
	if err != nil {
		return nil // a name, judged at dial time
	}
	return callbackAddrAllowed(q.callbackPolicy(nil), a)
}

// validID reports whether id can be a KV key and a message id.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '=') {
			return false
		}
	}
	return true
}

func headerBytes(h nats.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n + 16
}

// marshalResponse is proto.Marshal for what a callback message carries.
func marshalResponse(r *kilnv1.InvokeResponse) []byte {
	b, _ := proto.Marshal(r)
	return b
}
