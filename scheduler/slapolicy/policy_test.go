package slapolicy

import (
	"math"
	"strings"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestErlangB(t *testing.T) {
	// Values from published Erlang-B tables.
	for _, tc := range []struct {
		c    int
		a, b float64
	}{
		{0, 3, 1}, {1, 1, 0.5}, {2, 1, 0.2}, {10, 5, 0.018385}, {5, 5, 0.284868}, {3, 0.2, 0.0010915},
		{1, 0, 0},
	} {
		if got := ErlangB(tc.c, tc.a); math.Abs(got-tc.b) > 1e-5 {
			t.Errorf("ErlangB(%d, %v) = %v, want %v", tc.c, tc.a, got, tc.b)
		}
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		name       string
		lambda     float64
		exec, cold Dist
		deadline   time.Duration
		target     float64
		minWarm    int
		maxInst    int
		want       int
		reason     string // prefix
	}{
		{"no sla", 10, Fixed(20 * ms), Fixed(300 * ms), 0, 0, 2, 0, 2, "no sla"},
		{"no traffic", 0, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.99, 0, 0, 0, "no traffic"},
		{"no traffic keeps min_warm", 0, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.99, 3, 0, 3, "no traffic"},
		// a = 10/s × 20 ms = 0.2; a cold start always misses, so the
		// pool must make B(c, 0.2) ≤ 1−target: B(1)=0.167, B(2)=0.0164,
		// B(3)=0.00109, B(4)=0.0000546.
		{"a=0.2 target 90%", 10, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.90, 0, 0, 2, ""},
		{"a=0.2 target 99%", 10, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.99, 0, 0, 3, ""},
		{"a=0.2 target 99.9%", 10, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.999, 0, 0, 4, ""},
		// a = 100/s × 50 ms = 5: B(10,5)=0.0184, B(11,5)=0.0083.
		{"a=5 target 99%", 100, Fixed(50 * ms), Fixed(300 * ms), 100 * ms, 0.99, 0, 0, 11, ""},
		{"cold start fits the deadline", 10, Fixed(20 * ms), Fixed(30 * ms), 100 * ms, 0.999, 0, 0, 0, ""},
		{"cold start fits, min_warm", 10, Fixed(20 * ms), Fixed(30 * ms), 100 * ms, 0.999, 2, 0, 2, "min_warm"},
		{"bounded by max_instances", 10, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.999, 0, 2, 2, "bounded by max_instances"},
		{"exec alone misses: nothing helps", 10, Fixed(150 * ms), Fixed(300 * ms), 100 * ms, 0.99, 0, 0, 0, "target unreachable"},
		{"min_warm above the need", 10, Fixed(20 * ms), Fixed(300 * ms), 100 * ms, 0.99, 7, 8, 7, "min_warm"},
		{"unknown cold start counts as a miss", 10, Fixed(20 * ms), new(Histogram), 100 * ms, 0.99, 0, 0, 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Size(SizeInput{Lambda: tc.lambda, Exec: tc.exec, Cold: tc.cold, Deadline: tc.deadline, Target: tc.target,
				MinWarm: tc.minWarm, MaxInstances: tc.maxInst})
			if s.Warm != tc.want || !strings.HasPrefix(s.Reason, tc.reason) || (tc.reason == "" && s.Reason != "") {
				t.Fatalf("Size = %+v, want %d warm, reason %q", s, tc.want, tc.reason)
			}
			if tc.reason == "" && s.Predicted < tc.target {
				t.Fatalf("predicted %v below target %v", s.Predicted, tc.target)
			}
		})
	}
}

// A warm instance that meets the deadline only 99.5 % of the time cannot
// reach 99.9 %: Size keeps just enough instances that cold starts vanish.
func TestSizeUnreachableSaturates(t *testing.T) {
	exec := new(Histogram)
	for i := 0; i < 995; i++ {
		exec.Add(20 * ms)
	}
	for i := 0; i < 5; i++ {
		exec.Add(500 * ms)
	}
	s := Size(SizeInput{Lambda: 10, Exec: exec, Cold: Fixed(300 * ms), Deadline: 100 * ms, Target: 0.999})
	if !strings.HasPrefix(s.Reason, "target unreachable") || s.Warm < 4 || s.Warm > 10 {
		t.Fatalf("Size = %+v", s)
	}
	if math.Abs(s.Predicted-0.995) > 0.001 {
		t.Fatalf("predicted %v, want ≈ 0.995", s.Predicted)
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100; i++ {
		h.Add(time.Duration(i) * ms)
	}
	for _, tc := range []struct {
		d    time.Duration
		want float64
	}{{0, 0}, {50 * ms, 0.5}, {100 * ms, 1}, {time.Hour, 1}, {10 * ms, 0.1}} {
		if got := h.CDF(tc.d); math.Abs(got-tc.want) > 0.03 {
			t.Errorf("CDF(%v) = %v, want %v", tc.d, got, tc.want)
		}
	}
	if m := h.Mean(); m != 50500*time.Microsecond {
		t.Errorf("Mean = %v", m)
	}
	if q := h.Quantile(0.5); q < 50*ms || q > 60*ms {
		t.Errorf("Quantile(0.5) = %v", q)
	}
	var sum float64
	for _, p := range h.Points() {
		sum += p.P
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("points sum to %v", sum)
	}
	// P(A+B ≤ d) for A = 50 ms and B uniform 1..100 ms.
	if got := SumCDF(Fixed(50*ms), &h, 100*ms); math.Abs(got-0.5) > 0.03 {
		t.Errorf("SumCDF = %v, want 0.5", got)
	}
	for _, d := range []time.Duration{0, histMin, histMin + 1, time.Second, 15 * time.Minute, 100 * time.Hour} {
		b := histBucket(d)
		inside := (b == 0 || d > histLower(b)) && (d <= histUpper(b) || b == histBuckets-1)
		if !inside {
			t.Errorf("histBucket(%v) = %d: [%v, %v]", d, b, histLower(b), histUpper(b))
		}
	}
	if histUpper(histBuckets-1) < 15*time.Minute {
		t.Errorf("the histogram ends at %v, below the longest deadline", histUpper(histBuckets-1))
	}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestRateWindows(t *testing.T) {
	p := New(Config{})
	p.SetSpec("f", Spec{Deadline: 100 * ms, Target: 0.99})
	// A new function: 50 calls in its first 10 s are 5/s, not 50/600.
	for i := 0; i < 50; i++ {
		p.Observe(Observation{Function: "f", At: t0.Add(time.Duration(i) * 200 * ms), Exec: 10 * ms})
	}
	if r := p.Rate("f", t0.Add(10*time.Second)); r < 4.5 || r > 5.6 {
		t.Fatalf("rate after 10 s = %v, want ≈ 5", r)
	}
	// Five minutes later the short window is empty, the long one still
	// remembers 50 calls over five minutes.
	if r := p.Rate("f", t0.Add(5*time.Minute)); r < 0.15 || r > 0.18 {
		t.Fatalf("rate after 5 min = %v, want ≈ 50/300", r)
	}
	if r := p.Rate("f", t0.Add(11*time.Minute)); r != 0 {
		t.Fatalf("rate after 11 min = %v, want 0", r)
	}
	if r := p.Rate("nobody", t0); r != 0 {
		t.Fatalf("unknown function rate %v", r)
	}
}

// feed gives f n calls per second for d from start, cold every coldEvery-th.
func feed(p *Policy, fn string, start time.Time, d time.Duration, perSec int, exec, cold time.Duration) {
	for s := time.Duration(0); s < d; s += time.Second {
		for i := 0; i < perSec; i++ {
			o := Observation{Function: fn, At: start.Add(s + time.Duration(i)*time.Second/time.Duration(perSec)), Exec: exec}
			if i == 0 {
				o.Start, o.StartTime = StartRestore, cold
			}
			p.Observe(o)
		}
	}
}

func TestPlanScalesUpAtOnceAndDownAfterHold(t *testing.T) {
	p := New(Config{})
	p.SetSpec("f", Spec{Deadline: 100 * ms, Target: 0.99, MaxInstances: 50})
	p.SetSpec("plain", Spec{MinWarm: 2})
	if d := p.Desired("f"); d != 0 {
		t.Fatalf("before any plan: %d", d)
	}
	// 40 calls/s of 50 ms: a = 2; cold starts (300 ms) always miss.
	feed(p, "f", t0, 2*time.Minute, 40, 50*ms, 300*ms)
	now := t0.Add(2 * time.Minute)
	plan := p.Plan(now)
	if len(plan) != 2 || plan[0].Function != "f" || plan[1].Function != "plain" || plan[1].Warm != 2 {
		t.Fatalf("plan %+v", plan)
	}
	up := plan[0].Warm
	// B(c, 2) ≤ 0.01 first at c = 7 (B(6,2)=0.0121, B(7,2)=0.0034).
	if up != 7 || plan[0].Predicted < 0.99 {
		t.Fatalf("busy f: %+v, want 7 warm", plan[0])
	}
	// Traffic stops. The long window still remembers it, so the pool
	// shrinks only as that rate decays, never within ScaleDownAfter of
	// the first lower ask, and never flapping back up.
	prev, changes, firstLow := up, 0, time.Time{}
	for s := time.Second; s <= 15*time.Minute; s += time.Second {
		at := now.Add(s)
		tg := p.Plan(at)[0]
		if tg.Warm > prev {
			t.Fatalf("at +%v the pool grew from %d to %d without traffic", s, prev, tg.Warm)
		}
		if tg.Reason == "holding" && firstLow.IsZero() {
			firstLow = at
		}
		if tg.Warm < prev {
			changes++
			if at.Sub(firstLow) < 2*time.Minute {
				t.Fatalf("scaled down at +%v, %v after the first lower ask", s, at.Sub(firstLow))
			}
			firstLow = time.Time{}
		}
		prev = tg.Warm
	}
	if prev != 0 || changes > 6 {
		t.Fatalf("after 15 idle minutes: %d warm after %d changes", prev, changes)
	}
	if d := p.Desired("plain"); d != 2 {
		t.Fatalf("plain: %d", d)
	}
	p.Forget("plain")
	if len(p.Plan(now)) != 1 {
		t.Fatal("Forget kept the function")
	}
}

func TestPlanMaxInstancesLoweredAppliesAtOnce(t *testing.T) {
	p := New(Config{})
	p.SetSpec("f", Spec{Deadline: 100 * ms, Target: 0.99})
	feed(p, "f", t0, time.Minute, 40, 50*ms, 300*ms)
	if w := p.Plan(t0.Add(time.Minute))[0].Warm; w != 7 {
		t.Fatalf("warm %d", w)
	}
	p.SetSpec("f", Spec{Deadline: 100 * ms, Target: 0.99, MaxInstances: 3})
	if w := p.Plan(t0.Add(time.Minute))[0].Warm; w != 3 {
		t.Fatalf("after max_instances 3: warm %d", w)
	}
}

func TestExpectedService(t *testing.T) {
	p := New(Config{})
	feed(p, "f", t0, 10*time.Second, 10, 40*ms, 300*ms)
	if e := p.ExpectedService("f", t0.Add(10*time.Second)); e < 40*ms || e > 48*ms {
		t.Fatalf("expected service %v, want ≈ 40 ms", e)
	}
	if e := p.ExpectedService("g", t0); e != 0 {
		t.Fatalf("unknown: %v", e)
	}
}

func TestQueueEDF(t *testing.T) {
	svc := map[string]time.Duration{"fast": 5 * ms, "slow": 80 * ms}
	q := NewQueue(func(fn string) time.Duration { return svc[fn] })
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, inv := range []Invocation{
		{ID: "nosla-1", Function: "fast", Arrived: at(0)},
		{ID: "late", Function: "fast", Arrived: at(0), Deadline: at(40 * ms)},
		{ID: "d300", Function: "fast", Arrived: at(1 * ms), Deadline: at(300 * ms)},
		{ID: "d100", Function: "fast", Arrived: at(2 * ms), Deadline: at(100 * ms)},
		{ID: "slow-d120", Function: "slow", Arrived: at(3 * ms), Deadline: at(120 * ms)},
		{ID: "d100b", Function: "fast", Arrived: at(4 * ms), Deadline: at(100 * ms)},
		{ID: "nosla-2", Function: "slow", Arrived: at(5 * ms)},
		{ID: "slow-d500", Function: "slow", Arrived: at(6 * ms), Deadline: at(500 * ms)},
	} {
		q.Push(inv)
	}
	if q.Len() != 8 {
		t.Fatalf("len %d", q.Len())
	}
	now := at(50 * ms)
	type step struct {
		id  string
		bad []string
	}
	var got []step
	for {
		inv, bad, ok := q.Next(now)
		var ids []string
		for _, b := range bad {
			ids = append(ids, b.ID)
			if b.Reason == "" || b.Left != b.Deadline.Sub(now) {
				t.Errorf("infeasible %+v", b)
			}
		}
		if !ok {
			got = append(got, step{"", ids})
			break
		}
		got = append(got, step{inv.ID, ids})
		now = now.Add(svc[inv.Function])
	}
	// At 50 ms "late" (deadline 40 ms) has passed; d100 and d100b run in
	// arrival order; at 60 ms slow-d120 needs 80 ms with 60 left: refused.
	want := []step{{"d100", []string{"late"}}, {"d100b", nil}, {"d300", []string{"slow-d120"}}, {"slow-d500", nil},
		{"nosla-1", nil}, {"nosla-2", nil}, {"", nil}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].id != want[i].id || strings.Join(got[i].bad, ",") != strings.Join(want[i].bad, ",") {
			t.Fatalf("step %d: got %+v, want %+v (all: %+v)", i, got[i], want[i], got)
		}
	}
	if q.Len() != 0 {
		t.Fatal("queue not empty")
	}
}

func TestQueueInfeasibleReasons(t *testing.T) {
	q := NewQueue(func(string) time.Duration { return 30 * ms })
	q.Push(Invocation{ID: "passed", Function: "f", Deadline: t0})
	q.Push(Invocation{ID: "tight", Function: "f", Deadline: t0.Add(20 * ms)})
	_, bad, ok := q.Next(t0.Add(time.Millisecond))
	if ok || len(bad) != 2 {
		t.Fatalf("ok %v bad %+v", ok, bad)
	}
	if !strings.HasPrefix(bad[0].Reason, "deadline passed 1ms ago") || bad[0].ID != "passed" {
		t.Fatalf("passed: %+v", bad[0])
	}
	if bad[1].Reason != "cannot meet its deadline: needs about 30ms, 19ms left" || bad[1].Expected != 30*ms {
		t.Fatalf("tight: %+v", bad[1])
	}
	// Without an expectation only a passed deadline is infeasible.
	q = NewQueue(nil)
	q.Push(Invocation{ID: "a", Deadline: t0.Add(ms)})
	if inv, bad, ok := q.Next(t0); !ok || inv.ID != "a" || len(bad) != 0 {
		t.Fatalf("nil expect: %+v %+v %v", inv, bad, ok)
	}
}
