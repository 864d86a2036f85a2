package asyncq

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	enqueued   *prometheus.CounterVec
	attempts   *prometheus.CounterVec
	completed  *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	duplicates prometheus.Counter
	callbacks  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_async_enqueued_total", Help: "Async invocations accepted, by function.",
		}, []string{"function"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_async_attempts_total", Help: "Runs of async invocations, by function and outcome.",
		}, []string{"function", "outcome"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_async_completed_total", Help: "Async invocations that reached a final status (succeeded, failed), by function.",
		}, []string{"function", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kiln_async_latency_seconds", Help: "Enqueue to final status of async invocations, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 22), // 1 ms .. ~35 min
		}, []string{"function"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_async_duplicates_total", Help: "Redeliveries of invocations already final, acknowledged without running.",
		}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_async_callbacks_total", Help: "Callback deliveries by outcome (delivered, retried, failed, blocked: the callback policy refused the address or a redirect).",
		}, []string{"outcome"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.enqueued, m.attempts, m.completed, m.latency, m.duplicates, m.callbacks} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
