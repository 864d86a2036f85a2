package gateway

import (
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfaas/kiln/gateway/outcome"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// DurationBuckets are the upper bounds (seconds) of every invocation
// duration histogram the gateway exports. A 1-2.5-5 series, so the
// deadlines people usually write (10 ms, 50 ms, 100 ms, 1 s) are already
// bounds; any other deadline becomes an extra bound of its function's
// histogram only (see durations).
var DurationBuckets = []float64{
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
}

// maxDeadlineBuckets bounds the extra bounds one function's histogram
// collects as its deadline changes between versions; later deadlines are
// still counted exactly by kiln_sla_good_total.
const maxDeadlineBuckets = 8

// metrics are the gateway's Prometheus series. Names follow DESIGN.md and,
// where one exists, the OpenTelemetry FaaS metric of the same meaning
// (docs/METRICS.md has the table).
type metrics struct {
	requests  *prometheus.CounterVec
	duration  *durations
	exec      *prometheus.HistogramVec
	init      *prometheus.HistogramVec
	coldstart *prometheus.CounterVec
	wait      *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	timeouts  *prometheus.CounterVec
	slaTotal  *prometheus.CounterVec
	slaGood   *prometheus.CounterVec
	slaMisses *prometheus.CounterVec
	// The SLA of the version each function's latest invocation ran, so
	// rules can compute the error budget (1 − target) without a list of
	// functions. Set on invocation: a function nobody called since the
	// gateway started has no SLI to judge either.
	slaTarget   *prometheus.GaugeVec
	slaDeadline *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_gateway_requests_total",
			Help: "Invocation requests answered by the gateway, by function and HTTP status.",
		}, []string{"function", "code"}),
		duration: newDurations(),
		exec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_faas_invoke_duration_seconds",
			Help:    "Time inside the function per invocation, as its node measured it (OpenTelemetry faas.invoke_duration).",
			Buckets: DurationBuckets,
		}, []string{"function", "start"}),
		init: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_faas_init_duration_seconds",
			Help:    "Cold-start time (snapshot restore or boot) of invocations that had one (OpenTelemetry faas.init_duration).",
			Buckets: DurationBuckets,
		}, []string{"function", "start"}),
		coldstart: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_faas_coldstarts_total",
			Help: "Invocations that needed a new instance, by start kind restore or boot (OpenTelemetry faas.coldstarts).",
		}, []string{"function", "start"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_invocation_queue_wait_seconds",
			Help:    "Time an invocation waited at its node for an instance before it started.",
			Buckets: DurationBuckets,
		}, []string{"function"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_faas_errors_total",
			Help: "Invocations that did not end ok, by outcome as type (OpenTelemetry faas.errors with error.type); timeouts included.",
		}, []string{"function", "type"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_faas_timeouts_total",
			Help: "Invocations stopped at their function's timeout, or never answered within it (OpenTelemetry faas.timeouts).",
		}, []string{"function"}),
		slaTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_sla_invocations_total",
			Help: "Invocations of functions with an SLA: the SLI's denominator.",
		}, []string{"function"}),
		slaGood: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_sla_good_total",
			Help: "Invocations of functions with an SLA that ended ok within the deadline: the SLI's numerator.",
		}, []string{"function"}),
		slaMisses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_sla_deadline_misses_total",
			Help: "Invocations of functions with an SLA that took longer than the deadline, whatever their outcome, by start kind.",
		}, []string{"function", "start"}),
		slaTarget: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_sla_target",
			Help: "SLA target of the function (0.999 for 99.9 %): the share of invocations that must end ok within the deadline.",
		}, []string{"function"}),
		slaDeadline: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_sla_deadline_seconds",
			Help: "SLA deadline of the function.",
		}, []string{"function"}),
	}
	if reg != nil {
		cs := []prometheus.Collector{m.requests, m.duration, m.exec, m.init, m.coldstart, m.wait,
			m.errors, m.timeouts, m.slaTotal, m.slaGood, m.slaMisses, m.slaTarget, m.slaDeadline}
		for _, c := range cs {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// unknownFunction labels requests for names that are not deployed, so that
// callers cannot grow the metric's cardinality with made-up names.
const unknownFunction = "_unknown"

func (m *metrics) answered(function string, code int) {
	m.requests.WithLabelValues(function, strconv.Itoa(code)).Inc()
}

// record counts one finished synchronous invocation under its outcome
// label. start is "none" and resp nil when the platform failed before a
// node answered.
func (m *metrics) record(inv *invocation, start, label string) {
	fn := inv.Fn
	total := inv.Total.Seconds()
	deadline := time.Duration(fn.DeadlineMs) * time.Millisecond
	m.duration.observe(fn.Name, deadline, start, label, total)
	if resp := inv.Resp; resp != nil {
		if resp.GetExecNs() > 0 {
			m.exec.WithLabelValues(fn.Name, start).Observe(float64(resp.GetExecNs()) / 1e9)
		}
		m.wait.WithLabelValues(fn.Name).Observe(float64(resp.GetWaitNs()) / 1e9)
		if k := resp.GetStart(); k == kilnv1.StartKind_START_RESTORE || k == kilnv1.StartKind_START_BOOT {
			m.coldstart.WithLabelValues(fn.Name, start).Inc()
			m.init.WithLabelValues(fn.Name, start).Observe(float64(resp.GetStartNs()) / 1e9)
		}
	}
	if label != outcome.LabelOK {
		m.errors.WithLabelValues(fn.Name, label).Inc()
	}
	if label == outcome.LabelTimeout {
		m.timeouts.WithLabelValues(fn.Name).Inc()
	}
	if deadline > 0 && fn.Target > 0 {
		m.slaTarget.WithLabelValues(fn.Name).Set(fn.Target)
		m.slaDeadline.WithLabelValues(fn.Name).Set(deadline.Seconds())
		m.slaTotal.WithLabelValues(fn.Name).Inc()
		// The same comparison as the histogram's le bound, so that
		// bucket{le=deadline, outcome="ok"} and kiln_sla_good_total agree.
		if total <= deadline.Seconds() {
			if label == outcome.LabelOK {
				m.slaGood.WithLabelValues(fn.Name).Inc()
			}
		} else {
			m.slaMisses.WithLabelValues(fn.Name, start).Inc()
		}
	}
}

// durations is kiln_invocation_duration_seconds{function,start,outcome}:
// one HistogramVec per function, each with DurationBuckets plus that
// function's deadlines as bounds, so the share of invocations within the
// deadline is read from a bucket exactly instead of interpolated.
//
// client_golang gives every series of one HistogramVec the same bounds, so
// one vector cannot do this. All the vectors share one Desc (same name,
// help and variable labels, function among them), which durations
// describes once; the registry then accepts what they collect as one
// family, and their function labels keep the series apart.
type durations struct {
	desc *prometheus.Desc
	opts prometheus.HistogramOpts

	mu  sync.RWMutex
	fns map[string]*fnDurations
}

type fnDurations struct {
	deadlines []float64 // extra bounds, seconds, sorted
	vec       *prometheus.HistogramVec
}

var durationLabels = []string{"function", "start", "outcome"}

func newDurations() *durations {
	d := &durations{
		opts: prometheus.HistogramOpts{
			Name: "kiln_invocation_duration_seconds",
			Help: "End-to-end invocation time seen by the gateway, by start kind and outcome; each function's buckets include its SLA deadline.",
		},
		fns: map[string]*fnDurations{},
	}
	// The Desc every per-function vector builds from these options.
	d.desc = prometheus.NewDesc(d.opts.Name, d.opts.Help, durationLabels, nil)
	return d
}

func (d *durations) newVec(buckets []float64) *prometheus.HistogramVec {
	o := d.opts
	o.Buckets = buckets
	return prometheus.NewHistogramVec(o, durationLabels)
}

// Describe implements prometheus.Collector.
func (d *durations) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

// Collect implements prometheus.Collector.
func (d *durations) Collect(ch chan<- prometheus.Metric) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, f := range d.fns {
		f.vec.Collect(ch)
	}
}

// observe records one invocation of function fn whose version has the
// given deadline (0: none).
func (d *durations) observe(fn string, deadline time.Duration, start, outcome string, seconds float64) {
	d.forFunction(fn, deadline.Seconds()).WithLabelValues(fn, start, outcome).Observe(seconds)
}

func (d *durations) forFunction(fn string, deadline float64) *prometheus.HistogramVec {
	d.mu.RLock()
	f := d.fns[fn]
	d.mu.RUnlock()
	if f != nil && !f.lacks(deadline) {
		return f.vec
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f = d.fns[fn]
	if f == nil {
		f = &fnDurations{}
	} else if !f.lacks(deadline) {
		return f.vec
	}
	// A new bound means a new vector: its series restart from zero, which
	// rate() reads as a counter reset. Deadlines change only on deploys.
	next := &fnDurations{deadlines: f.deadlines}
	if deadline > 0 && !slices.Contains(DurationBuckets, deadline) && len(f.deadlines) < maxDeadlineBuckets {
		next.deadlines = append(slices.Clone(f.deadlines), deadline)
		slices.Sort(next.deadlines)
	}
	buckets := slices.Concat(DurationBuckets, next.deadlines)
	slices.Sort(buckets)
	next.vec = d.newVec(buckets)
	d.fns[fn] = next
	return next.vec
}

// lacks reports whether deadline needs a bound f does not have.
func (f *fnDurations) lacks(deadline float64) bool {
	if f.vec == nil {
		return true
	}
	return deadline > 0 && !slices.Contains(DurationBuckets, deadline) && !slices.Contains(f.deadlines, deadline) &&
		len(f.deadlines) < maxDeadlineBuckets
}
