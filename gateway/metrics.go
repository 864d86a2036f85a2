package gateway

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_gateway_requests_total",
			Help: "Invocation requests answered by the gateway, by function and HTTP status.",
		}, []string{"function", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kiln_invocation_duration_seconds",
			Help: "End-to-end invocation time seen by the gateway, by start kind and outcome.",
			// From a warm call (well under a millisecond on real hardware)
			// to a timeout of many seconds.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"function", "start", "outcome"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration} {
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
