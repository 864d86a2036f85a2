// Package openloop drives a running Kiln with an open-loop load for chaos
// tests: sync and async invocations go out at fixed rates whatever the
// answers (a closed loop would slow down with a failing platform and hide
// how many callers a fault hurts), each with a client timeout, so a call
// that hangs shows as one. It then reads the record against a fault's
// window — how long after the fault ended the first call, and every call,
// succeeded again; how many failed; whether each failure was a clear error
// — and follows every async invocation it got an id for to its final
// status, counting the ones lost.
//
// Traffic goes only to the gateways the test names (127.0.0.1). The load
// is bounded: at most MaxInFlight calls at once (a tick that finds them
// all busy records a skipped call rather than waiting), and it runs until
// Stop.
package openloop

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config says what to call and how often.
type Config struct {
	// Gateways are base URLs (http://127.0.0.1:PORT); calls rotate among them.
	Gateways []string
	// Function is the function's name; Query is added to each call's URL
	// (e.g. "ms=50").
	Function, Query string
	// SyncEvery and AsyncEvery are the intervals between two calls of each
	// kind; 0: no calls of that kind.
	SyncEvery, AsyncEvery time.Duration
	// Timeout is each call's client timeout: a sync call not answered by
	// then counts as hung (Call.Err). 0 → 15 s.
	Timeout time.Duration
	// MaxInFlight bounds the calls outstanding at once; 0 → 256.
	MaxInFlight int
}

// Call is one invocation as its caller saw it.
type Call struct {
	Async      bool
	Seq        int
	Start, End time.Time
	// Code and Body are the answer; Err is set instead when there was none
	// (timeout, connection refused or reset).
	Code int
	Body string
	Err  error
	// Skipped: MaxInFlight calls were outstanding at the tick; nothing was sent.
	Skipped bool
	// ID is an accepted async invocation's id.
	ID string
}

// OK reports whether the call got the answer a healthy platform gives:
// 200 for a sync call, 202 with an id for an async one.
func (c Call) OK() bool {
	if c.Async {
		return c.Err == nil && c.Code == http.StatusAccepted && c.ID != ""
	}
	return c.Err == nil && c.Code == http.StatusOK
}

// Load is a running load. Stop it.
type Load struct {
	cfg   Config
	cl    *http.Client
	slots chan struct{}
	stop  chan struct{}
	ticks sync.WaitGroup
	calls sync.WaitGroup

	mu  sync.Mutex
	rec []Call
}

// Start starts sending.
func Start(cfg Config) *Load {
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 256
	}
	l := &Load{cfg: cfg, cl: &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.MaxInFlight}},
		slots: make(chan struct{}, cfg.MaxInFlight), stop: make(chan struct{})}
	for _, k := range []struct {
		async bool
		every time.Duration
	}{{false, cfg.SyncEvery}, {true, cfg.AsyncEvery}} {
		if k.every <= 0 {
			continue
		}
		l.ticks.Add(1)
		go l.tick(k.async, k.every)
	}
	return l
}

// tick sends one call every period, on schedule: a call never waits for
// the one before.
func (l *Load) tick(async bool, every time.Duration) {
	defer l.ticks.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		select {
		case l.slots <- struct{}{}:
		default:
			now := time.Now()
			l.record(Call{Async: async, Seq: seq, Start: now, End: now, Skipped: true})
			continue
		}
		l.calls.Add(1)
		go func() {
			defer l.calls.Done()
			defer func() { <-l.slots }()
			l.record(l.send(async, seq))
		}()
	}
}

func (l *Load) send(async bool, seq int) Call {
	path := "/function/"
	if async {
		path = "/async-function/"
	}
	g := l.cfg.Gateways[seq%len(l.cfg.Gateways)]
	u := g + path + l.cfg.Function
	if l.cfg.Query != "" {
		u += "?" + l.cfg.Query
	}
	c := Call{Async: async, Seq: seq, Start: time.Now()}
	resp, err := l.cl.Post(u, "text/plain", bytes.NewBufferString(fmt.Sprintf("%s-%d", map[bool]string{false: "s", true: "a"}[async], seq)))
	if err != nil {
		c.Err, c.End = err, time.Now()
		return c
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.Code, c.Body, c.Err, c.End = resp.StatusCode, string(b), err, time.Now()
	if async && resp.StatusCode == http.StatusAccepted {
		var acc struct{ ID string }
		json.Unmarshal(b, &acc)
		c.ID = acc.ID
	}
	return c
}

func (l *Load) record(c Call) {
	l.mu.Lock()
	l.rec = append(l.rec, c)
	l.mu.Unlock()
}

// Stop stops sending, waits for the calls outstanding (each ends by its
// timeout) and returns every call, in the order they started.
func (l *Load) Stop() []Call {
	close(l.stop)
	l.ticks.Wait()
	l.calls.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]Call(nil), l.rec...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Fault is what a chaos test did and when: Begin when it struck, End when
// the test stopped acting (the process restarted, or Begin itself for a
// fault the platform must heal alone, such as a killed worker).
type Fault struct {
	Name       string
	Begin, End time.Time
}

// Figures are one run's record read against its fault.
type Figures struct {
	Fault string
	// Sent and Failed count sync calls (skipped ticks included in Failed);
	// FailedBefore are failures answered before the fault struck (a
	// healthy platform has none; a call in flight when it struck may fail).
	Sent, Failed, FailedBefore int
	// FirstOK is from Fault.End to the answer of the first sync call that
	// started after it and succeeded; Steady from Fault.End to the answer
	// of the first call from which every later sync call succeeded, and
	// not before FirstOK (calls held through the fault and answered late
	// count as not yet recovered). -1: never.
	FirstOK, Steady time.Duration
	// Async: calls sent, accepted (an id), refused (an answer other than
	// 202: nothing to lose), and of the accepted, how they ended
	// (Await fills these in).
	AsyncSent, AsyncAccepted, AsyncRefused int
	AsyncSucceeded, AsyncFailed, AsyncLost int
	// Worst is the slowest sync call's answer, failed or not: a call held
	// through the fault shows here, not in Failed.
	Worst time.Duration
	// Statuses counts the failed sync calls by answer ("503", "timeout"…).
	Statuses map[string]int
}

// Measure reads calls against f.
func Measure(calls []Call, f Fault) Figures {
	fig := Figures{Fault: f.Name, FirstOK: -1, Statuses: map[string]int{}}
	lastBad := time.Time{}
	for _, c := range calls {
		if c.Async {
			fig.AsyncSent++
			if c.OK() {
				fig.AsyncAccepted++
			} else {
				fig.AsyncRefused++
			}
			continue
		}
		fig.Sent++
		fig.Worst = max(fig.Worst, c.End.Sub(c.Start))
		if !c.OK() {
			fig.Failed++
			fig.Statuses[statusOf(c)]++
			if c.End.Before(f.Begin) {
				fig.FailedBefore++
			}
			if c.Start.After(lastBad) {
				lastBad = c.Start
			}
			continue
		}
		if fig.FirstOK < 0 && !c.Start.Before(f.End) {
			fig.FirstOK = c.End.Sub(f.End)
		}
	}
	fig.Steady = fig.FirstOK
	if lastBad.After(f.End) {
		fig.Steady = -1
		for _, c := range calls {
			if !c.Async && c.Start.After(lastBad) {
				fig.Steady = max(fig.FirstOK, c.End.Sub(f.End))
				break
			}
		}
	}
	return fig
}

func statusOf(c Call) string {
	switch {
	case c.Skipped:
		return "skipped"
	case c.Err != nil:
		if strings.Contains(c.Err.Error(), "Client.Timeout") || strings.Contains(c.Err.Error(), "deadline") {
			return "timeout"
		}
		return "transport"
	default:
		return fmt.Sprint(c.Code)
	}
}

// ClearError says what is wrong with a failed call's answer, or "" when it
// failed as a platform should: a 5xx or 429 with a JSON body naming the
// error, within the client's timeout. A call with no answer (hung past
// its timeout, refused, reset) or skipped is never clear.
func ClearError(c Call) string {
	if c.OK() {
		return ""
	}
	if c.Skipped {
		return "not sent: every in-flight slot was taken by calls still waiting"
	}
	if c.Err != nil {
		return fmt.Sprintf("no answer after %v: %v", c.End.Sub(c.Start).Round(time.Millisecond), c.Err)
	}
	if c.Code != http.StatusTooManyRequests && c.Code < 500 {
		return fmt.Sprintf("answered %d, want 5xx or 429: %.200s", c.Code, c.Body)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(c.Body), &e) != nil || e.Error == "" {
		return fmt.Sprintf("answered %d without a JSON error: %.200s", c.Code, c.Body)
	}
	return ""
}

// Status is the part of GET /system/invocations/ID that Await reads.
type Status struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Result *struct {
		StatusCode int    `json:"status_code"`
		Body       string `json:"body"`
	} `json:"result"`
}

// Await follows each accepted async invocation of calls to a final status
// through gateway, for up to within, and fills in fig's async counts. An
// invocation still not final then, or unknown to the gateway (404), is
// lost. final receives each final status (for the test's own checks).
func Await(gateway string, calls []Call, within time.Duration, fig *Figures, final func(id string, st Status)) (lost []string, err error) {
	cl := &http.Client{Timeout: 5 * time.Second}
	pending := map[string]bool{}
	for _, c := range calls {
		if c.Async && c.OK() {
			pending[c.ID] = true
		}
	}
	deadline := time.Now().Add(within)
	for len(pending) > 0 {
		for id := range pending {
			resp, err := cl.Get(gateway + "/system/invocations/" + id)
			if err != nil {
				if time.Now().After(deadline) {
					return nil, fmt.Errorf("status of %s: %w", id, err)
				}
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				lost = append(lost, id+": 404 "+strings.TrimSpace(string(b)))
				delete(pending, id)
				continue
			}
			var st Status
			if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &st) != nil {
				continue // the gateway may be recovering; asked again below
			}
			switch st.Status {
			case "succeeded":
				fig.AsyncSucceeded++
			case "failed":
				fig.AsyncFailed++
			default:
				continue
			}
			delete(pending, id)
			if final != nil {
				final(id, st)
			}
		}
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for id := range pending {
				lost = append(lost, id+": not final after "+within.String())
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	sort.Strings(lost)
	fig.AsyncLost = len(lost)
	return lost, nil
}

// Median returns the median of each figure over runs of one fault (the
// lower middle for an even count), for BENCHMARKS.md.
func Median(runs []Figures) Figures {
	if len(runs) == 0 {
		return Figures{}
	}
	m := Figures{Fault: runs[0].Fault, Statuses: map[string]int{}}
	d := func(get func(Figures) time.Duration) time.Duration {
		v := make([]time.Duration, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[(len(v)-1)/2]
	}
	n := func(get func(Figures) int) int {
		v := make([]int, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		sort.Ints(v)
		return v[(len(v)-1)/2]
	}
	m.FirstOK = d(func(f Figures) time.Duration { return f.FirstOK })
	m.Steady = d(func(f Figures) time.Duration { return f.Steady })
	m.Worst = d(func(f Figures) time.Duration { return f.Worst })
	m.Sent = n(func(f Figures) int { return f.Sent })
	m.Failed = n(func(f Figures) int { return f.Failed })
	m.AsyncAccepted = n(func(f Figures) int { return f.AsyncAccepted })
	m.AsyncRefused = n(func(f Figures) int { return f.AsyncRefused })
	m.AsyncSucceeded = n(func(f Figures) int { return f.AsyncSucceeded })
	m.AsyncFailed = n(func(f Figures) int { return f.AsyncFailed })
	for _, r := range runs {
		m.AsyncLost = max(m.AsyncLost, r.AsyncLost) // the worst, not the median: it must be 0
	}
	return m
}

// String is one line of figures for a test's log.
func (f Figures) String() string {
	return fmt.Sprintf("%s: first success %v and steady %v after the fault ended; sync %d sent, %d failed %v, slowest %v; async %d accepted, %d refused, %d succeeded, %d failed, %d lost",
		f.Fault, round(f.FirstOK), round(f.Steady), f.Sent, f.Failed, f.Statuses, round(f.Worst), f.AsyncAccepted, f.AsyncRefused,
		f.AsyncSucceeded, f.AsyncFailed, f.AsyncLost)
}

func round(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(10 * time.Millisecond).String()
}

// Metric sums the samples of the metric name in a Prometheus text page
// (GET /metrics) whose labels contain every one of labels (e.g.
// `state="busy"`); found is false when no sample matched.
func Metric(page, name string, labels ...string) (sum float64, found bool) {
	for _, line := range strings.Split(page, "\n") {
		if !strings.HasPrefix(line, name) || len(line) == len(name) {
			continue
		}
		rest := line[len(name):]
		if rest[0] != ' ' && rest[0] != '{' {
			continue // another metric whose name starts with this one
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		fields := strings.Fields(rest)
		if !ok || len(fields) == 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(fields[len(fields)-1], &v); err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}
