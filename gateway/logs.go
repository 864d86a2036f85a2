package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/registry"
)

// Function logs (docs/LOGS.md): every invocation's stderr, sync or async,
// goes to Config.Logs; GET /system/logs/{name} reads and follows it.

// Capture never adds latency to a call: the write happens on a goroutine
// of its own, at most logWriters at a time; an invocation that finds them
// all busy (the store is slow or down) loses its log and is counted.
const (
	logWriters      = 64
	logWriteTimeout = 5 * time.Second
)

// followWriteTimeout bounds how long one batch of a followed log may take
// to reach the caller.
const followWriteTimeout = time.Minute

// Reasons a captured log was dropped, the label of kiln_gateway_logs_dropped_total.
const (
	dropQueueFull  = "queue_full"
	dropStoreError = "store_error"
)

// logCapture is the gateway's writer into the log store.
type logCapture struct {
	store   logstore.Store // nil: logs are not kept
	slots   chan struct{}
	dropped *prometheus.CounterVec
	log     *slog.Logger

	mu       sync.Mutex                     // guards shutdown
	shutdown map[*http.Server]chan struct{} // closed when that server shuts down
}

// shuttingDown is closed when the server serving r shuts down (nil when r
// came some other way). http.Server.Shutdown waits for handlers to return
// and cancels nothing, so a followed stream must end by itself.
func (c *logCapture) shuttingDown(r *http.Request) <-chan struct{} {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.shutdown[srv]
	if !ok {
		ch = make(chan struct{})
		c.shutdown[srv] = ch
		srv.RegisterOnShutdown(func() {
			c.mu.Lock()
			delete(c.shutdown, srv)
			c.mu.Unlock()
			close(ch)
		})
	}
	return ch
}

// registerLogs sets up capture and the logs route; async results reach
// the capture through the queue's hook.
func (g *Gateway) registerLogs() {
	c := &logCapture{store: g.cfg.Logs, slots: make(chan struct{}, logWriters), log: g.log,
		shutdown: map[*http.Server]chan struct{}{},
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_gateway_logs_dropped_total",
			Help: "Invocation logs (stderr) not stored, by reason: queue_full (the store was slow) or store_error.",
		}, []string{"reason"})}
	c.dropped.WithLabelValues(dropQueueFull)
	c.dropped.WithLabelValues(dropStoreError)
	if g.cfg.Registerer != nil {
		if err := g.cfg.Registerer.Register(c.dropped); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				c.dropped = already.ExistingCollector.(*prometheus.CounterVec)
			} else {
				g.log.Warn("kiln_gateway_logs_dropped_total is not exported", "err", err)
			}
		}
	}
	g.logs = c
	if g.cfg.Async != nil && c.store != nil {
		g.cfg.Async.OnResult(func(inv *asyncq.Invocation, attempt int, resp *kilnv1.InvokeResponse) {
			c.capture(logRecord(inv.Function, inv.Version, inv.ID, attempt, resp))
		})
	}
	g.mux.HandleFunc("GET /system/logs/{name}", g.readLogs)
}

func logRecord(function string, version uint64, id string, attempt int, resp *kilnv1.InvokeResponse) logstore.Record {
	return logstore.Record{Function: function, Version: version, InvocationID: id, Attempt: attempt,
		Node: resp.GetNode(), Outcome: outcome.Label(resp, nil), Stderr: resp.GetStderr()}
}

// captureLogs stores what a synchronous invocation wrote to stderr. It
// never blocks; resp may be nil (the platform failed: nothing ran).
func (g *Gateway) captureLogs(fn registry.Function, id string, resp *kilnv1.InvokeResponse) {
	if resp == nil {
		return
	}
	g.logs.capture(logRecord(fn.Name, fn.Version, id, 0, resp))
}

func (c *logCapture) capture(r logstore.Record) {
	if c.store == nil || len(r.Stderr) == 0 {
		return
	}
	select {
	case c.slots <- struct{}{}:
	default:
		c.dropped.WithLabelValues(dropQueueFull).Inc()
		return
	}
	go func() {
		defer func() { <-c.slots }()
		ctx, cancel := context.WithTimeout(context.Background(), logWriteTimeout)
		defer cancel()
		if err := c.store.Append(ctx, r); err != nil {
			c.dropped.WithLabelValues(dropStoreError).Inc()
			c.log.Warn("an invocation's log was not stored", "function", r.Function, "invocation_id", r.InvocationID, "err", err)
		}
	}()
}

// dropLogs forgets a deleted function's logs, so a function deployed
// again under the name starts with an empty log.
func (g *Gateway) dropLogs(ctx context.Context, name string) {
	if g.cfg.Logs == nil {
		return
	}
	if err := g.cfg.Logs.Delete(ctx, name); err != nil {
		g.log.Warn("the deleted function's logs were not deleted", "function", name, "err", err)
	}
}

// logsQuery is what GET /system/logs/{name} accepts, with the sentence a
// 400 answers for each.
func logsQuery(r *http.Request, now time.Time) (q logstore.Query, follow bool, msg string) {
	v := r.URL.Query()
	if s := v.Get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			q.Since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			q.Since = t
		} else {
			return q, false, fmt.Sprintf("since=%q: give a positive duration such as 10m or 2h30m, or an RFC 3339 time such as 2026-12-05T14:00:00Z", s)
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > logstore.MaxLimit {
			return q, false, fmt.Sprintf("limit=%q: give a whole number from 1 to %d", s, logstore.MaxLimit)
		}
		q.Limit = n
	}
	if s := v.Get("follow"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return q, false, fmt.Sprintf("follow=%q: give 1 or 0 (true or false)", s)
		}
		follow = b
	}
	q.Invocation, q.After = v.Get("invocation"), v.Get("after")
	return q, follow, ""
}

// readLogs answers GET /system/logs/{name} with JSON lines, one entry
// each, oldest first; with follow=1 it keeps the response open and sends
// each new entry as it is stored, until the caller goes away.
func (g *Gateway) readLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if g.cfg.Logs == nil {
		writeError(w, http.StatusNotImplemented, apiError{Error: "this gateway keeps no function logs (it was started without a log store)", Function: name})
		return
	}
	if err := registry.CheckName(name); err != nil {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: name})
		return
	}
	q, follow, msg := logsQuery(r, time.Now())
	if msg != "" {
		writeError(w, http.StatusBadRequest, apiError{Error: msg, Function: name})
		return
	}
	if _, err := g.cfg.Registry.GetFunction(r.Context(), name, ""); err != nil {
		g.registryError(w, name, err)
		return
	}
	page, err := g.cfg.Logs.Read(r.Context(), name, q)
	if err != nil {
		g.logStoreError(w, name, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Before the status goes out, so a caller who saw it and then stops
	// the server cannot slip between.
	if follow {
		if down := g.logs.shuttingDown(r); down != nil {
			go func() {
				select {
				case <-down:
					cancel()
				case <-ctx.Done():
				}
			}()
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	send := func(es []logstore.Entry) bool {
		if follow {
			// A followed log may stream for longer than the server's
			// write timeout, so each batch gets its own: a caller who
			// stops reading is let go after followWriteTimeout.
			_ = rc.SetWriteDeadline(time.Now().Add(followWriteTimeout))
		}
		for _, e := range es {
			if enc.Encode(e) != nil {
				return false
			}
		}
		return rc.Flush() == nil || !follow
	}
	if !send(page.Entries) || !follow {
		return
	}
	for q.After = page.Cursor; ; q.After = page.Cursor {
		page, err = g.cfg.Logs.Follow(ctx, name, q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The status is long sent: say why the stream ends in its last line.
			enc.Encode(apiError{Error: "following the log stopped: " + err.Error(), Function: name})
			g.log.Warn("following a function's log stopped", "function", name, "err", err)
			return
		}
		if !send(page.Entries) {
			return
		}
	}
}

func (g *Gateway) logStoreError(w http.ResponseWriter, name string, err error) {
	if errors.Is(err, logstore.ErrInvalid) {
		writeError(w, http.StatusBadRequest, apiError{Error: err.Error(), Function: name})
		return
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, apiError{Error: "the log store is unavailable: " + err.Error() + "; retry shortly", Function: name})
}
