package slapolicy

import (
	"fmt"
	"time"
)

// ErlangB is the probability that a Poisson arrival finds all c servers
// busy when the offered load is a = λ·E[S] (M/G/c/c, which depends on the
// service time only through its mean). It is the model of a warm pool: an
// arrival that finds no idle instance is not queued but cold-started.
func ErlangB(c int, a float64) float64 {
	b := 1.0
	for k := 1; k <= c; k++ {
		b = a * b / (float64(k) + a*b)
	}
	return b
}

// Attainment is the predicted fraction of calls within deadline d with c
// warm instances: an arrival finds an idle instance with probability
// 1−B(c, a) and then takes exec, else it pays a cold start too.
func Attainment(c int, lambda float64, exec, cold Dist, d time.Duration) float64 {
	b := ErlangB(c, lambda*exec.Mean().Seconds())
	return (1-b)*exec.CDF(d) + b*SumCDF(cold, exec, d)
}

// SizeInput is what Size needs for one function.
type SizeInput struct {
	Lambda   float64 // arrivals per second
	Exec     Dist    // execution time on a warm instance
	Cold     Dist    // cold-start time (restore or boot) before the execution
	Deadline time.Duration
	Target   float64 // 0.999 for 99.9 %; 0: no SLA
	MinWarm  int
	// MaxInstances bounds the answer; 0: Cap does.
	MaxInstances int
	// Cap bounds the search when MaxInstances is 0; 0 → DefaultCap.
	Cap int
}

// DefaultCap bounds the pool Size proposes when a function sets no
// max_instances: past it the scheduler's memory accounting decides.
const DefaultCap = 1000

// Sizing is Size's answer.
type Sizing struct {
	Warm      int
	Predicted float64 // the model's attainment at Warm (1 when there is no traffic)
	// Reason says why Warm is not simply the smallest pool meeting the
	// target: "", "no sla", "no traffic", "target unreachable: …",
	// "bounded by max_instances", "min_warm".
	Reason string
}

// saturated: past this Erlang-B value another instance changes the
// attainment by less than the model's own precision.
const saturated = 1e-6

// Size chooses the smallest c whose predicted attainment meets the target,
// then applies min_warm and max_instances. Without an SLA or without
// traffic it answers min_warm. When even all-warm calls miss the target
// (exec alone is too slow) it keeps enough instances that arrivals almost
// never cold-start, since that is the most the pool can do.
func Size(in SizeInput) Sizing {
	if in.Target <= 0 || in.Deadline <= 0 {
		return Sizing{Warm: in.MinWarm, Predicted: 1, Reason: "no sla"}
	}
	if in.Lambda <= 0 {
		return Sizing{Warm: in.MinWarm, Predicted: 1, Reason: "no traffic"}
	}
	limit := in.MaxInstances
	if limit <= 0 {
		limit = in.Cap
		if limit <= 0 {
			limit = DefaultCap
		}
	}
	a := in.Lambda * in.Exec.Mean().Seconds()
	warmOK, coldOK := in.Exec.CDF(in.Deadline), SumCDF(in.Cold, in.Exec, in.Deadline)
	attain := func(b float64) float64 { return (1-b)*warmOK + b*coldOK }

	c, b := 0, 1.0
	s := Sizing{}
	for {
		if attain(b) >= in.Target {
			break
		}
		if b < saturated || warmOK <= coldOK {
			s.Reason = fmt.Sprintf("target unreachable: %.4f of calls finish within %v even on a warm instance", warmOK, in.Deadline)
			if warmOK <= coldOK {
				// A warm instance does not help: keep none beyond min_warm.
				c, b = 0, 1
			}
			break
		}
		if c >= limit {
			s.Reason = "bounded by max_instances"
			if in.MaxInstances <= 0 {
				s.Reason = fmt.Sprintf("bounded by the policy's cap of %d", limit)
			}
			break
		}
		c++
		b = a * b / (float64(c) + a*b)
	}
	if c < in.MinWarm {
		c, s.Reason = in.MinWarm, "min_warm"
		b = ErlangB(c, a)
	}
	s.Warm, s.Predicted = c, attain(b)
	return s
}
