package gateway

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kilnfaas/kiln/gateway/outcome"
	"github.com/kilnfaas/kiln/store/registry"
)

// MaxFunctionBodyBytes bounds what a deploy may set as a function's body
// limit: a request body travels to the node in one gRPC message, and the
// roles allow 64 MiB plus headers.
const MaxFunctionBodyBytes = 64 << 20

// Per-function limits are this gateway's own: counters and token buckets
// live in its memory, so with N gateways behind a balancer a function may
// see up to N times its limits. That keeps the invocation path free of a
// shared store round trip; docs/AUTH.md says so.

// limiter holds the per-function counters of one gateway.
type limiter struct {
	now func() time.Time

	mu  sync.Mutex // guards fns and every fnState in it
	fns map[string]*fnState
}

type fnState struct {
	inflight int
	bucket   *rate.Limiter // nil without a rate limit
}

func newLimiter() *limiter {
	return &limiter{now: time.Now, fns: map[string]*fnState{}}
}

// burstOf is the bucket size of l: RateBurst, else the rate rounded up.
func burstOf(l registry.Limits) int {
	if l.RateBurst > 0 {
		return l.RateBurst
	}
	return max(1, int(math.Ceil(l.RatePerSecond)))
}

// admit takes a slot for an invocation of fn, or says why not and when to
// retry. The limits are read from fn on every call, so a redeploy that
// changes them takes effect at once; invocations already in flight keep
// their slots and count against the new limit.
func (l *limiter) admit(name string, lim registry.Limits) (release func(), retryAfter time.Duration, why string) {
	if lim.MaxConcurrency <= 0 && lim.RatePerSecond <= 0 {
		return func() {}, 0, ""
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.fns[name]
	if st == nil {
		st = &fnState{}
		l.fns[name] = st
	}
	if lim.MaxConcurrency > 0 && st.inflight >= lim.MaxConcurrency {
		// When a slot frees is unknowable here; a second is the usual hint.
		return nil, time.Second, fmt.Sprintf("function at its concurrency limit of %d invocations in flight (per gateway)", lim.MaxConcurrency)
	}
	if lim.RatePerSecond > 0 {
		r, b := rate.Limit(lim.RatePerSecond), burstOf(lim)
		if st.bucket == nil {
			st.bucket = rate.NewLimiter(r, b)
		} else if st.bucket.Limit() != r || st.bucket.Burst() != b {
			st.bucket.SetLimitAt(now, r)
			st.bucket.SetBurstAt(now, b)
		}
		res := st.bucket.ReserveN(now, 1)
		if d := res.DelayFrom(now); !res.OK() || d > 0 {
			res.CancelAt(now)
			return nil, d, fmt.Sprintf("function over its rate limit of %s (burst %d, per gateway)", formatRate(lim.RatePerSecond), b)
		}
	} else {
		st.bucket = nil
	}
	st.inflight++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			st.inflight--
			l.mu.Unlock()
		})
	}, 0, ""
}

// withinLimits takes a slot for an invocation of fn within its limits, or
// refuses it (429, with when to retry) and reports false. On true release
// must run when the invocation ends.
func (g *Gateway) withinLimits(w http.ResponseWriter, fn registry.Function, refuse func(k outcome.Kind, msg string)) (release func(), ok bool) {
	release, wait, why := g.limits.admit(fn.Name, fn.Limits)
	if release == nil {
		w.Header().Set("Retry-After", strconv.FormatInt(retrySeconds(wait), 10))
		refuse(outcome.Limited, why+"; retry after the Retry-After seconds, or ask for a higher limit (kiln deploy --max-concurrency/--rate)")
		return nil, false
	}
	return release, true
}

// bodyLimit is fn's own body limit, else the gateway's.
func (g *Gateway) bodyLimit(fn registry.Function) int64 {
	if fn.MaxBodyBytes > 0 {
		return fn.MaxBodyBytes
	}
	return g.cfg.MaxBodyBytes
}

// readBody reads r's body when it has at most limit bytes and arrives
// within the body timeout (bodyDeadline); else it refuses the request
// (413, worded by tooLarge with what; 408 when it is too slow; 400 when it cannot be
// read) and reports false. A body without Content-Length is read to
// limit+1 bytes at most.
func (g *Gateway) readBody(r *http.Request, limit int64, what string, refuse func(k outcome.Kind, msg string)) ([]byte, bool) {
	if r.ContentLength > limit {
		refuse(outcome.TooLarge, tooLarge(what, limit))
		return nil, false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if bodyTimedOut(err) {
		refuse(outcome.SlowBody, g.slowBody())
		return nil, false
	}
	if err != nil {
		refuse(outcome.BadRequest, "reading the request body: "+err.Error())
		return nil, false
	}
	if int64(len(body)) > limit {
		refuse(outcome.TooLarge, tooLarge(what, limit))
		return nil, false
	}
	return body, true
}

// tooLarge words a 413 for a body over limit; what says for what (" for
// an async invocation", or ""). Worded only when refused: readBody runs on
// every call.
func tooLarge(what string, limit int64) string {
	return fmt.Sprintf("request body too large%s: the limit is %d bytes (%s); send less, or pass a reference to the data instead", what, limit, humanBytes(limit))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d B", n)
	}
}

// retrySeconds rounds a wait up to whole seconds, at least 1: Retry-After
// has no fractions, and 0 would invite an immediate retry into the same wall.
func retrySeconds(d time.Duration) int64 {
	s := int64(math.Ceil(d.Seconds()))
	if s < 1 {
		return 1
	}
	return s
}

func formatRate(perSecond float64) string {
	switch {
	case perSecond >= 1:
		return strconv.FormatFloat(perSecond, 'f', -1, 64) + "/s"
	case perSecond*60 >= 1:
		return strconv.FormatFloat(perSecond*60, 'f', -1, 64) + "/m"
	default:
		return strconv.FormatFloat(perSecond*3600, 'f', -1, 64) + "/h"
	}
}

// LimitParams are a deploy's access and limit settings, as text from the
// query string, form fields or the "spec" JSON part.
type LimitParams struct {
	Private        string `json:"private,omitempty"`         // "true" or "false"
	MaxConcurrency string `json:"max_concurrency,omitempty"` // invocations in flight
	Rate           string `json:"rate,omitempty"`            // "10", "10/s", "600/m", "100/h"
	Burst          string `json:"burst,omitempty"`           // requests
	MaxBody        string `json:"max_body,omitempty"`        // "1M", "512K" or bytes
}

var limitFields = []string{"private", "max_concurrency", "rate", "burst", "max_body"}

func (p *LimitParams) fields() []*string {
	return []*string{&p.Private, &p.MaxConcurrency, &p.Rate, &p.Burst, &p.MaxBody}
}

func (p *LimitParams) fromValues(v url.Values) {
	for i, f := range p.fields() {
		if s := v.Get(limitFields[i]); s != "" {
			*f = s
		}
	}
}

func (p LimitParams) addValues(v url.Values) {
	for i, f := range p.fields() {
		if *f != "" {
			v.Set(limitFields[i], *f)
		}
	}
}

// limits validates the settings; every error says what would be accepted.
func (p LimitParams) limits() (registry.Limits, error) {
	var l registry.Limits
	if p.Private != "" {
		b, err := strconv.ParseBool(p.Private)
		if err != nil {
			return l, fmt.Errorf("bad private %q: use true or false", p.Private)
		}
		l.Private = b
	}
	if p.MaxConcurrency != "" {
		n, err := strconv.Atoi(p.MaxConcurrency)
		if err != nil || n < 0 || n > 1<<20 {
			return l, fmt.Errorf("bad max_concurrency %q: use a whole number of invocations in flight, 0 for no limit", p.MaxConcurrency)
		}
		l.MaxConcurrency = n
	}
	if p.Rate != "" {
		r, err := ParseRate(p.Rate)
		if err != nil {
			return l, err
		}
		l.RatePerSecond = r
	}
	if p.Burst != "" {
		n, err := strconv.Atoi(p.Burst)
		if err != nil || n < 0 || n > 1<<20 {
			return l, fmt.Errorf("bad burst %q: use a whole number of requests", p.Burst)
		}
		if l.RatePerSecond == 0 && n > 0 {
			return l, fmt.Errorf("burst %d without a rate: set a rate too (e.g. rate=10/s)", n)
		}
		l.RateBurst = n
	}
	if p.MaxBody != "" {
		n, err := ParseMemory(p.MaxBody)
		if err != nil || n > MaxFunctionBodyBytes {
			return l, fmt.Errorf("bad max_body %q: use a size from 1 byte to %s, such as 256K or 1M", p.MaxBody, humanBytes(MaxFunctionBodyBytes))
		}
		l.MaxBodyBytes = int64(n)
	}
	return l, nil
}

// ParseRate reads a request rate: a number of requests per second, or a
// number per unit ("10/s", "600/m", "100/h"). "0" means no limit.
func ParseRate(s string) (float64, error) {
	num, unit, _ := strings.Cut(strings.TrimSpace(s), "/")
	per := map[string]float64{"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}[strings.ToLower(unit)]
	n, err := strconv.ParseFloat(num, 64)
	if per == 0 || err != nil || !(n >= 0 && n <= 1e6) {
		return 0, fmt.Errorf("bad rate %q: use requests per second or per unit, such as 10, 10/s, 600/m or 100/h", s)
	}
	return n / per, nil
}
