package asyncq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// MaxLostRuns bounds the runs of one invocation that may be lost (their
// worker went away) before it fails anyway: an invocation that kills
// whatever runs it must not circle forever.
const MaxLostRuns = 5

// Defaults for WorkerConfig fields left zero.
const (
	DefaultConcurrency         = 16
	DefaultAckWait             = 30 * time.Second
	DefaultBackoffBase         = time.Second
	DefaultBackoffMax          = 5 * time.Minute
	DefaultCallbackTimeout     = 10 * time.Second
	DefaultCallbackAttempts    = 3
	DefaultCallbackConcurrency = 8
)

// WorkerConfig is what a worker needs. Scheduler is required; zero values
// get the defaults named on each field.
type WorkerConfig struct {
	// Scheduler runs invocations: the same client the gateway's
	// synchronous calls use.
	Scheduler kilnv1.SchedulerClient
	// Concurrency is how many invocations this worker runs at once;
	// 0 → DefaultConcurrency.
	Concurrency int
	// AckWait is how long JetStream waits for word from a worker before it
	// redelivers a message; a running invocation reports progress every
	// AckWait/3, so AckWait bounds how soon a crashed worker's invocation
	// runs again, not how long a function may run. 0 → DefaultAckWait.
	AckWait time.Duration
	// BackoffBase is the delay before the first retry, doubled for each
	// next one (plus up to a quarter of jitter) up to BackoffMax.
	// 0 → DefaultBackoffBase, DefaultBackoffMax.
	BackoffBase, BackoffMax time.Duration
	// CallbackTimeout bounds one POST to a callback URL; CallbackAttempts
	// is how many are made; CallbackConcurrency how many run at once.
	CallbackTimeout     time.Duration
	CallbackAttempts    int
	CallbackConcurrency int
}

// Worker pulls invocations and callbacks from the queue and runs them.
type Worker struct {
	q   *Queue
	cfg WorkerConfig
	log *slog.Logger
	// client POSTs callbacks, under the queue's callback policy.
	client *http.Client

	// ctx ends when in-flight work must be abandoned; fetchCtx when no new
	// work may be taken.
	ctx       context.Context
	abandon   context.CancelFunc
	fetchCtx  context.Context
	stopFetch context.CancelFunc
	loops     sync.WaitGroup
	once      sync.Once
}

// StartWorker creates (or updates) the durable consumers and starts
// pulling. The worker runs until Stop; ctx only bounds the start.
func (q *Queue) StartWorker(ctx context.Context, cfg WorkerConfig) (*Worker, error) {
	if cfg.Scheduler == nil {
		return nil, fmt.Errorf("%w: a worker needs the scheduler client", ErrConfig)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	defInt(&cfg.Concurrency, DefaultConcurrency)
	def(&cfg.AckWait, DefaultAckWait)
	def(&cfg.BackoffBase, DefaultBackoffBase)
	def(&cfg.BackoffMax, DefaultBackoffMax)
	def(&cfg.CallbackTimeout, DefaultCallbackTimeout)
	defInt(&cfg.CallbackAttempts, DefaultCallbackAttempts)
	defInt(&cfg.CallbackConcurrency, DefaultCallbackConcurrency)

	invoke, err := q.js.CreateOrUpdateConsumer(ctx, Stream, jetstream.ConsumerConfig{
		Durable:       invokeConsumer,
		Description:   "Kiln async workers: invocations",
		FilterSubject: invokeSubject + ">",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		// Attempts are counted in the status, which knows a retry from a
		// redelivery after a crash; JetStream's own count does not.
		MaxDeliver: -1,
		// Invocations in backoff are pending acks too: leave room for many.
		MaxAckPending: 100000,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: consumer %s: %v", ErrUnavailable, invokeConsumer, err)
	}
	callbacks, err := q.js.CreateOrUpdateConsumer(ctx, Stream, jetstream.ConsumerConfig{
		Durable:       callbackCons,
		Description:   "Kiln async workers: callbacks",
		FilterSubject: callbackSubj + ">",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.CallbackTimeout + 30*time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 100000,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: consumer %s: %v", ErrUnavailable, callbackCons, err)
	}

	w := &Worker{q: q, cfg: cfg, log: q.log.With("part", "async-worker"), client: q.newCallbackClient(cfg.CallbackTimeout)}
	w.ctx, w.abandon = context.WithCancel(context.Background())
	w.fetchCtx, w.stopFetch = context.WithCancel(w.ctx)
	for i := 0; i < cfg.Concurrency; i++ {
		w.loops.Add(1)
		go w.pull(invoke, w.run)
	}
	for i := 0; i < cfg.CallbackConcurrency; i++ {
		w.loops.Add(1)
		go w.pull(callbacks, w.deliver)
	}
	return w, nil
}

// Stop takes no new work and waits for what runs until ctx ends; what is
// still running then is abandoned unacknowledged (told to JetStream with a
// NAK when the connection still works), to run again on some worker.
func (w *Worker) Stop(ctx context.Context) {
	w.once.Do(func() {
		w.stopFetch()
		done := make(chan struct{})
		go func() { w.loops.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			w.abandon()
			<-done
		}
		w.abandon()
	})
}

// pull takes one message at a time, so that no message waits in a local
// buffer while its AckWait runs out.
func (w *Worker) pull(c jetstream.Consumer, handle func(jetstream.Msg)) {
	defer w.loops.Done()
	for w.fetchCtx.Err() == nil {
		batch, err := c.Fetch(1, jetstream.FetchContext(w.fetchCtx))
		if err != nil {
			if w.fetchCtx.Err() != nil {
				return
			}
			w.log.Warn("fetching from JetStream failed; retrying", "err", err)
			sleep(w.fetchCtx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			handle(msg)
		}
		if err := batch.Error(); err != nil && w.fetchCtx.Err() == nil &&
			!errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			w.log.Warn("fetching from JetStream failed; retrying", "err", err)
			sleep(w.fetchCtx, time.Second)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// errFinal from a status change: the invocation is already final.
var errFinal = errors.New("already final")

// opTimeout bounds one JetStream operation of a worker. Those run on a
// context of their own, not the worker's, so that a result that arrives
// as Stop abandons the run is still recorded.
const opTimeout = 10 * time.Second

// run handles one delivery of an invocation.
func (w *Worker) run(msg jetstream.Msg) {
	q := w.q
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	inv, err := decode(msg.Headers(), msg.Data())
	if err != nil {
		w.log.Error("undecodable invocation message: moved to the dead letters", "subject", msg.Subject(), "err", err)
		dead := nats.NewMsg(deadSubject + "_invalid")
		dead.Header, dead.Data = msg.Headers(), msg.Data()
		if dead.Header == nil {
			dead.Header = nats.Header{}
		}
		dead.Header.Set(hError, err.Error())
		if _, err := q.js.PublishMsg(ctx, dead); err != nil {
			msg.NakWithDelay(w.cfg.BackoffMax)
			return
		}
		msg.TermWithReason("undecodable")
		return
	}

	var attempt int
	var lost bool
	st, err := q.update(ctx, inv, func(s *Status) error {
		attempt, lost = 0, false
		if s.State.Final() {
			return errFinal
		}
		now := q.now()
		if s.State == Running && len(s.History) > 0 {
			// The previous delivery started a run and never reported: its
			// worker is gone. That run does not spend a retry.
			last := &s.History[len(s.History)-1]
			if last.FinishedAt == nil {
				last.FinishedAt, last.Error = timePtr(now), "lost: the worker running this attempt went away before it ended"
			}
			s.LostRuns++
			if s.LostRuns > MaxLostRuns {
				lost = true
				return nil
			}
		}
		s.State = Running
		s.Attempts++
		attempt = s.Attempts
		if s.StartedAt == nil {
			s.StartedAt = timePtr(now)
		}
		s.NextAttemptAt = nil
		s.History = append(s.History, Attempt{Attempt: s.Attempts, StartedAt: now.UTC()})
		return nil
	})
	switch {
	case errors.Is(err, errFinal):
		q.m.duplicates.Inc()
		w.log.Debug("duplicate delivery of a final invocation: acknowledged", "invocation_id", inv.ID)
		w.ack(msg)
		return
	case err != nil:
		w.log.Warn("cannot record the start of an invocation; it will be redelivered", "invocation_id", inv.ID, "err", err)
		msg.NakWithDelay(time.Second)
		return
	case lost:
		w.finish(msg, inv, st.Attempts, outcome.With(outcome.Lost, fmt.Sprintf("%d runs were lost (their worker went away each time); giving up", st.LostRuns)))
		return
	}

	stop := w.keepAlive(msg)
	resp, err := w.invoke(inv, attempt)
	stop()
	if f := q.onResult.Load(); f != nil && err == nil {
		(*f)(inv, attempt, resp)
	}
	if err != nil && w.ctx.Err() != nil {
		// Abandoned by Stop: the next delivery counts this run as lost.
		msg.Nak()
		return
	}
	ctx, cancel = context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	// The same table as the gateway's synchronous answers: a 5xx (the
	// function's own, or the platform's for a crash, a timeout, no
	// capacity) is a failure, retried while the function's retries last.
	out := outcome.Of(w.ctx, resp, err, functionTimeout(inv.Request))
	q.m.attempts.WithLabelValues(inv.Function, out.Label).Inc()
	if !out.Retry || attempt-st.LostRuns >= inv.Retries+1 {
		w.finish(msg, inv, attempt, out)
		return
	}
	delay := backoff(attempt-st.LostRuns, w.cfg.BackoffBase, w.cfg.BackoffMax)
	_, err = q.update(ctx, inv, func(s *Status) error {
		if s.State.Final() {
			return errFinal
		}
		now := q.now()
		s.State, s.Error, s.NextAttemptAt = Queued, out.Message, timePtr(now.Add(delay))
		s.Result = resultOf(out, q.cfg.ResultBodyLimit)
		endAttempt(s, attempt, now, out)
		return nil
	})
	if err != nil && !errors.Is(err, errFinal) {
		w.log.Warn("cannot record a failed attempt", "invocation_id", inv.ID, "err", err)
	}
	w.log.Info("async invocation failed; retrying", "function", inv.Function, "invocation_id", inv.ID,
		"attempt", attempt, "retry_in", delay, "error", out.Message)
	msg.NakWithDelay(delay)
}

// finish makes the invocation final: dead letter (when failed), callback
// message, status, in that order, and only then the acknowledgement. A
// crash between two steps redelivers the message; the message ids make
// the repeated publishes no-ops within JetStream's duplicate window.
func (w *Worker) finish(msg jetstream.Msg, inv *Invocation, attempt int, out outcome.Result) {
	q := w.q
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	state := Succeeded
	if out.Async != outcome.AsyncSucceeded {
		state = Failed
		dead := nats.NewMsg(deadSubject + inv.Function)
		dead.Header, dead.Data = copyHeader(msg.Headers()), msg.Data()
		dead.Header.Set(hError, oneLine(out.Message))
		dead.Header.Set(hAttempts, strconv.Itoa(attempt))
		if _, err := q.js.PublishMsg(ctx, dead, jetstream.WithMsgID("dead-"+inv.ID)); err != nil {
			w.log.Warn("cannot store a dead letter; the invocation will be redelivered", "invocation_id", inv.ID, "err", err)
			msg.NakWithDelay(time.Second)
			return
		}
	}
	if inv.CallbackURL != "" {
		cb := nats.NewMsg(callbackSubj + inv.Function)
		cb.Data = marshalResponse(callbackResponse(inv, out, int(q.MaxBodyBytes())))
		cb.Header.Set(hID, inv.ID)
		cb.Header.Set(hFunction, inv.Function)
		cb.Header.Set(hCallback, inv.CallbackURL)
		cb.Header.Set(hState, string(state))
		cb.Header.Set(hAttempts, strconv.Itoa(attempt))
		if out.Message != "" {
			cb.Header.Set(hError, oneLine(out.Message))
		}
		if _, err := q.js.PublishMsg(ctx, cb, jetstream.WithMsgID("cb-"+inv.ID)); err != nil {
			w.log.Warn("cannot queue a callback; the invocation will be redelivered", "invocation_id", inv.ID, "err", err)
			msg.NakWithDelay(time.Second)
			return
		}
	}
	var enqueued time.Time
	_, err := q.update(ctx, inv, func(s *Status) error {
		if s.State.Final() {
			return errFinal
		}
		now := q.now()
		s.State, s.Error, s.NextAttemptAt, s.FinishedAt = state, out.Message, nil, timePtr(now)
		s.Result = resultOf(out, q.cfg.ResultBodyLimit)
		endAttempt(s, attempt, now, out)
		enqueued = s.EnqueuedAt
		return nil
	})
	if err != nil && !errors.Is(err, errFinal) {
		w.log.Warn("cannot record an invocation's result; it will be redelivered", "invocation_id", inv.ID, "err", err)
		msg.NakWithDelay(time.Second)
		return
	}
	if err == nil {
		q.m.completed.WithLabelValues(inv.Function, string(state)).Inc()
		q.m.latency.WithLabelValues(inv.Function).Observe(q.now().Sub(enqueued).Seconds())
		w.log.Debug("async invocation final", "function", inv.Function, "invocation_id", inv.ID, "status", state, "attempts", attempt)
		if state == Failed {
			w.log.Warn("async invocation failed for good: moved to the dead letters", "function", inv.Function,
				"invocation_id", inv.ID, "attempts", attempt, "error", out.Message)
		}
	}
	w.ack(msg)
}

func endAttempt(s *Status, attempt int, now time.Time, out outcome.Result) {
	for i := range s.History {
		if h := &s.History[i]; h.Attempt == attempt && h.FinishedAt == nil {
			h.FinishedAt, h.StatusCode, h.Error = timePtr(now), out.Code, out.Message
		}
	}
}

// ack waits for JetStream to confirm, so a lost acknowledgement shows up
// here as a log line rather than as a silent redelivery.
func (w *Worker) ack(msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := msg.DoubleAck(ctx); err != nil {
		w.log.Warn("acknowledgement not confirmed; the message may be redelivered (and then acknowledged as a duplicate)", "err", err)
	}
}

// keepAlive tells JetStream the message is still being worked on, every
// AckWait/3, until the returned stop is called.
func (w *Worker) keepAlive(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(w.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-w.ctx.Done():
				return
			case <-t.C:
				msg.InProgress()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// ResultFunc sees the agent's answer to each run of an async invocation
// (attempt counts from 1), as the gateway's log capture does. It runs on
// the worker's goroutine and must not block.
type ResultFunc func(inv *Invocation, attempt int, resp *kilnv1.InvokeResponse)

// OnResult makes f see every answer this queue's workers get from the
// scheduler. It is set after StartWorker because whoever consumes the
// answers (the gateway) is built after the queue it is given.
func (q *Queue) OnResult(f ResultFunc) { q.onResult.Store(&f) }

func (w *Worker) invoke(inv *Invocation, attempt int) (*kilnv1.InvokeResponse, error) {
	req := proto.Clone(inv.Request).(*kilnv1.InvokeRequest)
	req.InvocationId = inv.ID
	req.Headers = append(req.Headers,
		&kilnv1.Header{Name: "x-kiln-invocation-id", Value: inv.ID},
		&kilnv1.Header{Name: "x-kiln-attempt", Value: strconv.Itoa(attempt)})
	timeout := functionTimeout(req)
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(w.ctx, timeout+outcome.SchedulerSlack)
	defer cancel()
	return w.cfg.Scheduler.Invoke(ctx, req)
}

func functionTimeout(req *kilnv1.InvokeRequest) time.Duration {
	return time.Duration(req.GetFunction().GetTimeoutMs()) * time.Millisecond
}

// backoff is the delay before retry n (1 for the first): base doubled
// n-1 times, at most max, plus up to a quarter of jitter so that retries
// of many invocations that failed together spread out.
func backoff(n int, base, max time.Duration) time.Duration {
	d := max
	if n >= 1 && n < 40 {
		if b := base << (n - 1); b > 0 && b < max {
			d = b
		}
	}
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}

// oneLine makes s fit in a message or HTTP header value.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1024 {
		s = s[:1024]
	}
	return strings.ToValidUTF8(s, "?")
}

func copyHeader(h nats.Header) nats.Header {
	c := nats.Header{}
	for k, vs := range h {
		if k == "Nats-Msg-Id" {
			continue
		}
		c[k] = append([]string(nil), vs...)
	}
	return c
}
