// Package slapolicy sizes warm pools from each function's SLA and orders
// queued invocations by deadline. It is pure: observations and the current
// time come in as arguments, decisions go out, so the scheduler calls it on
// each heartbeat and tests drive it with tables and a simulated clock.
//
// The model (docs/SLA.md): arrivals are Poisson at the rate measured over
// the last minute or ten minutes, whichever is higher; an arrival that
// finds none of c warm instances idle is cold-started (Erlang B, M/G/c/c);
// attainment = P(idle)·P(exec ≤ d) + P(busy)·P(cold + exec ≤ d).
package slapolicy

import (
	"sort"
	"sync"
	"time"

	"github.com/kilnfaas/kiln/store/registry"
)

// StartKind is how an invocation's instance came to be.
type StartKind int

// Start kinds, as the agent reports them.
const (
	StartWarm StartKind = iota
	StartRestore
	StartBoot
)

// Observation is one finished invocation as the scheduler saw it.
type Observation struct {
	Function  string
	At        time.Time // when it arrived
	Start     StartKind
	StartTime time.Duration // restore or boot time; 0 when warm
	Exec      time.Duration
}

// Spec is what the policy needs of a function's registry entry.
type Spec struct {
	Deadline     time.Duration // 0: no SLA
	Target       float64
	MinWarm      int
	MaxInstances int // 0: unbounded (the policy's Cap)
}

// SpecOf is the Spec of a registry function.
func SpecOf(f registry.Function) Spec {
	return Spec{Deadline: time.Duration(f.SLA.DeadlineMs) * time.Millisecond, Target: f.SLA.Target,
		MinWarm: f.Scaling.MinWarm, MaxInstances: f.Scaling.MaxInstances}
}

// Config tunes a Policy; zero fields take the defaults.
type Config struct {
	// Short and Long are the rate windows; the sizing uses the higher
	// rate, so a burst raises the pool within seconds and a lull lowers it
	// only after Long. Distributions use Long. Defaults 1 and 10 minutes.
	Short, Long time.Duration
	// ScaleDownAfter is how long the model must keep asking for fewer
	// instances before Desired drops (to the most it asked for meanwhile),
	// so the pool does not flap. Default 2 minutes.
	ScaleDownAfter time.Duration
	// Cap bounds a pool with no max_instances; 0 → DefaultCap.
	Cap int
}

// Policy keeps per-function windows and the pool size each function needs.
// It is safe for concurrent use: the scheduler observes from invocation
// goroutines and plans from its heartbeat loop.
type Policy struct {
	cfg Config

	mu  sync.Mutex // guards fns
	fns map[string]*fnState
}

type fnState struct {
	spec    Spec
	w       *windows
	desired int
	last    Sizing
	// lowSince is when the model first asked for fewer than desired in
	// the current run of such asks; lowMax the most it asked for since.
	lowSince time.Time
	lowMax   int
}

// New is a Policy with no functions.
func New(cfg Config) *Policy {
	if cfg.Short <= 0 {
		cfg.Short = time.Minute
	}
	if cfg.Long <= 0 {
		cfg.Long = 10 * time.Minute
	}
	if cfg.Long < distSlot {
		cfg.Long = distSlot
	}
	if cfg.ScaleDownAfter <= 0 {
		cfg.ScaleDownAfter = 2 * time.Minute
	}
	if cfg.Cap <= 0 {
		cfg.Cap = DefaultCap
	}
	return &Policy{cfg: cfg, fns: map[string]*fnState{}}
}

func (p *Policy) state(fn string) *fnState {
	s := p.fns[fn]
	if s == nil {
		s = &fnState{w: newWindows(p.cfg.Long)}
		p.fns[fn] = s
	}
	return s
}

// SetSpec records fn's SLA and scaling bounds (on deploy, or when the
// scheduler learns of the function). A new function starts at min_warm.
func (p *Policy) SetSpec(fn string, s Spec) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.fns[fn]
	if !ok {
		st = p.state(fn)
		st.desired = s.MinWarm
	}
	st.spec = s
}

// Forget drops fn (deleted): Plan no longer lists it.
func (p *Policy) Forget(fn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.fns, fn)
}

// Observe feeds one finished invocation into fn's windows.
func (p *Policy) Observe(o Observation) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state(o.Function).w.observe(o)
}

// Target is the warm pool Plan wants for one function.
type Target struct {
	Function  string
	Warm      int
	Predicted float64 // the model's attainment at Warm
	Reason    string  // see Sizing.Reason; "holding" while a scale-down waits
}

// estimate reads st's windows at now.
func (p *Policy) estimate(st *fnState, now time.Time) (lambda float64, exec, cold Dist) {
	lambda = max(st.w.rate(now, p.cfg.Short), st.w.rate(now, p.cfg.Long))
	e, r, b := st.w.dists(now)
	return lambda, e, mixture{r, b}
}

// Plan recomputes every function's pool at now and returns them sorted by
// name. Scaling up takes effect at once; scaling down only after the model
// has asked for less for ScaleDownAfter.
func (p *Policy) Plan(now time.Time) []Target {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Target, 0, len(p.fns))
	for name, st := range p.fns {
		lambda, exec, cold := p.estimate(st, now)
		sz := Size(SizeInput{Lambda: lambda, Exec: exec, Cold: cold, Deadline: st.spec.Deadline, Target: st.spec.Target,
			MinWarm: st.spec.MinWarm, MaxInstances: st.spec.MaxInstances, Cap: p.cfg.Cap})
		st.last = sz
		reason := sz.Reason
		switch {
		case sz.Warm >= st.desired:
			st.desired, st.lowSince = sz.Warm, time.Time{}
		case st.lowSince.IsZero():
			st.lowSince, st.lowMax = now, sz.Warm
			reason = "holding"
		default:
			st.lowMax = max(st.lowMax, sz.Warm)
			reason = "holding"
			if now.Sub(st.lowSince) >= p.cfg.ScaleDownAfter {
				st.desired, st.lowSince, reason = st.lowMax, time.Time{}, sz.Reason
			}
		}
		// A lowered max_instances or raised min_warm applies at once.
		st.desired = max(st.desired, st.spec.MinWarm)
		if st.spec.MaxInstances > 0 {
			st.desired = min(st.desired, st.spec.MaxInstances)
		}
		out = append(out, Target{Function: name, Warm: st.desired, Predicted: sz.Predicted, Reason: reason})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Function < out[j].Function })
	return out
}

// Desired is fn's pool as of the last Plan (min_warm before the first;
// 0 for a function the policy does not know).
func (p *Policy) Desired(fn string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.fns[fn]; ok {
		return st.desired
	}
	return 0
}

// ExpectedService is how long fn's invocation is expected to take on a
// warm instance: the median execution time over the long window, 0 when
// none was seen. The admission queue uses it to tell which queued calls
// can still meet their deadline.
func (p *Policy) ExpectedService(fn string, now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.fns[fn]
	if !ok {
		return 0
	}
	e, _, _ := st.w.dists(now)
	return e.Quantile(0.5)
}

// Rate is fn's arrival rate (per second) at now as Plan sees it.
func (p *Policy) Rate(fn string, now time.Time) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.fns[fn]
	if !ok {
		return 0
	}
	l, _, _ := p.estimate(st, now)
	return l
}
