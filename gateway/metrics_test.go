package gateway

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/registry"
)

// newRecorder is a Gateway with nothing but its metrics, on a pedantic
// registry, which refuses inconsistent families at every Gather.
func newRecorder(t *testing.T) (*Gateway, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return &Gateway{metrics: m}, reg
}

func ok(kind kilnv1.StartKind, startMs, execMs, waitMs int64) *kilnv1.InvokeResponse {
	return &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_OK, Status: 200, Start: kind,
		StartNs: startMs * 1e6, ExecNs: execMs * 1e6, WaitNs: waitMs * 1e6}
}

func slaFn(name string, deadlineMs int64, target float64) registry.Function {
	return registry.Function{Name: name, Version: 1, TimeoutMs: 1000, SLA: registry.SLA{DeadlineMs: deadlineMs, Target: target}}
}

// buckets returns the histogram of kiln_invocation_duration_seconds with
// the given labels: upper bound → cumulative count.
func buckets(t *testing.T, reg prometheus.Gatherer, labels map[string]string) map[float64]uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kiln_invocation_duration_seconds" {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			out := map[float64]uint64{}
			for _, b := range m.GetHistogram().GetBucket() {
				out[b.GetUpperBound()] = b.GetCumulativeCount()
			}
			return out
		}
	}
	t.Fatalf("no kiln_invocation_duration_seconds series with %v", labels)
	return nil
}

// The SLI counts exactly what the deadline's histogram bucket counts: a
// call that takes the deadline to the nanosecond is good, one a millisecond
// over is a miss, a fast error is neither good nor a miss, and a platform
// failure counts against the SLA.
func TestRecordSLA(t *testing.T) {
	g, reg := newRecorder(t)
	fn := slaFn("api", 40, 0.99) // 40 ms is not a standard bound
	calls := []struct {
		total time.Duration
		resp  *kilnv1.InvokeResponse
		err   error
	}{
		{10 * time.Millisecond, ok(kilnv1.StartKind_START_WARM, 0, 8, 0), nil},
		{40 * time.Millisecond, ok(kilnv1.StartKind_START_WARM, 0, 38, 1), nil},
		{41 * time.Millisecond, ok(kilnv1.StartKind_START_BOOT, 30, 9, 0), nil},
		{300 * time.Millisecond, ok(kilnv1.StartKind_START_RESTORE, 250, 40, 5), nil},
		{5 * time.Millisecond, &kilnv1.InvokeResponse{Outcome: kilnv1.Outcome_OUTCOME_FUNCTION_ERROR, Start: kilnv1.StartKind_START_WARM, ExecNs: 4e6}, nil},
		{2 * time.Second, nil, status.Error(codes.DeadlineExceeded, "context deadline exceeded")},
	}
	for i, c := range calls {
		g.finished(&invocation{ID: strconv.Itoa(i), Fn: fn, Resp: c.resp, Err: c.err, Total: c.total})
	}
	// A function without an SLA is in no SLA series.
	g.finished(&invocation{Fn: registry.Function{Name: "plain"}, Resp: ok(kilnv1.StartKind_START_WARM, 0, 1, 0), Total: time.Millisecond})

	want := `
# HELP kiln_sla_deadline_misses_total Invocations of functions with an SLA that took longer than the deadline, whatever their outcome, by start kind.
# TYPE kiln_sla_deadline_misses_total counter
kiln_sla_deadline_misses_total{function="api",start="boot"} 1
kiln_sla_deadline_misses_total{function="api",start="none"} 1
kiln_sla_deadline_misses_total{function="api",start="restore"} 1
# HELP kiln_sla_good_total Invocations of functions with an SLA that ended ok within the deadline: the SLI's numerator.
# TYPE kiln_sla_good_total counter
kiln_sla_good_total{function="api"} 2
# HELP kiln_sla_invocations_total Invocations of functions with an SLA: the SLI's denominator.
# TYPE kiln_sla_invocations_total counter
kiln_sla_invocations_total{function="api"} 6
# HELP kiln_sla_target SLA target of the function (0.999 for 99.9 %): the share of invocations that must end ok within the deadline.
# TYPE kiln_sla_target gauge
kiln_sla_target{function="api"} 0.99
# HELP kiln_sla_deadline_seconds SLA deadline of the function.
# TYPE kiln_sla_deadline_seconds gauge
kiln_sla_deadline_seconds{function="api"} 0.04
# HELP kiln_faas_coldstarts_total Invocations that needed a new instance, by start kind restore or boot (OpenTelemetry faas.coldstarts).
# TYPE kiln_faas_coldstarts_total counter
kiln_faas_coldstarts_total{function="api",start="boot"} 1
kiln_faas_coldstarts_total{function="api",start="restore"} 1
# HELP kiln_faas_errors_total Invocations that did not end ok, by outcome as type (OpenTelemetry faas.errors with error.type); timeouts included.
# TYPE kiln_faas_errors_total counter
kiln_faas_errors_total{function="api",type="function_error"} 1
kiln_faas_errors_total{function="api",type="timeout"} 1
# HELP kiln_faas_timeouts_total Invocations stopped at their function's timeout, or never answered within it (OpenTelemetry faas.timeouts).
# TYPE kiln_faas_timeouts_total counter
kiln_faas_timeouts_total{function="api"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"kiln_sla_deadline_misses_total", "kiln_sla_good_total", "kiln_sla_invocations_total", "kiln_sla_target",
		"kiln_sla_deadline_seconds", "kiln_faas_coldstarts_total", "kiln_faas_errors_total", "kiln_faas_timeouts_total"); err != nil {
		t.Fatal(err)
	}

	// The deadline is a bound of api's histogram, and its ok-bucket holds
	// exactly the good invocations.
	hOK := buckets(t, reg, map[string]string{"function": "api", "start": "warm", "outcome": "ok"})
	if got, has := hOK[0.04]; !has || got != 2 {
		t.Fatalf("api warm ok: bucket le=0.04 = %d (present %v), want 2; buckets %v", got, has, hOK)
	}
	var good uint64
	for _, start := range []string{"warm", "boot", "restore"} {
		good += buckets(t, reg, map[string]string{"function": "api", "start": start, "outcome": "ok"})[0.04]
	}
	if sla := testutil.ToFloat64(g.metrics.slaGood.WithLabelValues("api")); float64(good) != sla {
		t.Fatalf("le=0.04 buckets of ok calls hold %d, kiln_sla_good_total %v", good, sla)
	}
	// Other functions keep the standard bounds only.
	plain := buckets(t, reg, map[string]string{"function": "plain"})
	if _, has := plain[0.04]; has || len(plain) != len(DurationBuckets) {
		t.Fatalf("plain has bounds %v, want DurationBuckets only", plain)
	}

	// Cold-start time and queue wait come from the node's answer.
	if n := testutil.CollectAndCount(g.metrics.init); n != 2 {
		t.Fatalf("init duration series: %d, want boot and restore", n)
	}
	if got := histSum(t, g.metrics.init.WithLabelValues("api", "restore")); got != 0.25 {
		t.Fatalf("restore init duration sum %v, want 0.25", got)
	}
	if got := histSum(t, g.metrics.wait.WithLabelValues("api")); got < 0.0059 || got > 0.0061 {
		t.Fatalf("queue wait sum %v, want 0.006", got)
	}
}

func histSum(t *testing.T, o prometheus.Observer) float64 {
	t.Helper()
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleSum()
}

// A redeploy with a new deadline adds its bound (the function's series
// restart); a deadline that is a standard bound adds none; and the number
// of extra bounds one function collects is capped.
func TestDurationBucketsFollowDeadline(t *testing.T) {
	g, reg := newRecorder(t)
	call := func(deadlineMs int64) {
		g.finished(&invocation{Fn: slaFn("f", deadlineMs, 0.9), Resp: ok(kilnv1.StartKind_START_WARM, 0, 1, 0), Total: 2 * time.Millisecond})
	}
	call(50) // standard
	if b := buckets(t, reg, map[string]string{"function": "f"}); len(b) != len(DurationBuckets) {
		t.Fatalf("deadline 50 ms (a standard bound) gave %d bounds, want %d", len(b), len(DurationBuckets))
	}
	call(75)
	b := buckets(t, reg, map[string]string{"function": "f"})
	if _, has := b[0.075]; !has || len(b) != len(DurationBuckets)+1 {
		t.Fatalf("after deadline 75 ms: bounds %v", b)
	}
	if b[0.075] != 1 {
		t.Fatalf("the new vector starts afresh: le=0.075 = %d, want 1", b[0.075])
	}
	call(50) // an earlier deadline again: nothing changes, counting goes on
	if b := buckets(t, reg, map[string]string{"function": "f"}); b[0.075] != 2 {
		t.Fatalf("le=0.075 = %d after a second call, want 2", b[0.075])
	}
	for ms := int64(101); ms < 101+2*maxDeadlineBuckets; ms++ {
		call(ms)
	}
	if b := buckets(t, reg, map[string]string{"function": "f"}); len(b) != len(DurationBuckets)+maxDeadlineBuckets {
		t.Fatalf("%d bounds after many deadlines, want the cap %d + %d", len(b), len(DurationBuckets), maxDeadlineBuckets)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// Functions with different bounds are one metric family to a registry
// (the pedantic one checks every series against the described Desc).
func TestDurationsOneFamily(t *testing.T) {
	g, reg := newRecorder(t)
	for i, d := range []int64{0, 33, 77} {
		fn := slaFn("fn"+strconv.Itoa(i), d, 0.99)
		g.finished(&invocation{Fn: fn, Resp: ok(kilnv1.StartKind_START_WARM, 0, 1, 0), Total: time.Millisecond})
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "kiln_invocation_duration_seconds" {
			n++
			if len(mf.GetMetric()) != 3 {
				t.Fatalf("%d series, want 3", len(mf.GetMetric()))
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d families named kiln_invocation_duration_seconds, want 1", n)
	}
	if problems, err := testutil.GatherAndLint(reg, "kiln_invocation_duration_seconds"); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// Invocations finish concurrently, with scrapes in between and a deadline
// that changes under them; run with -race. Every call is counted once in
// the SLA counters, whatever vector its histogram series landed in.
func TestRecordConcurrently(t *testing.T) {
	g, reg := newRecorder(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				fn := slaFn("f", int64(40+(w+i)%3), 0.99)
				g.finished(&invocation{Fn: fn, Resp: ok(kilnv1.StartKind_START_WARM, 0, 1, 0), Total: time.Millisecond})
				if i%50 == 0 {
					if _, err := reg.Gather(); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if got := testutil.ToFloat64(g.metrics.slaTotal.WithLabelValues("f")); got != 8*200 {
		t.Fatalf("kiln_sla_invocations_total = %v, want %d", got, 8*200)
	}
	if got := testutil.ToFloat64(g.metrics.slaGood.WithLabelValues("f")); got != 8*200 {
		t.Fatalf("kiln_sla_good_total = %v, want %d", got, 8*200)
	}
}
