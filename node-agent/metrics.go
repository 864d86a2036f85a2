package nodeagent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

type metrics struct {
	invocations *prometheus.CounterVec
	boot        prometheus.Histogram
	restore     prometheus.Histogram
	exec        prometheus.Histogram
	total       *prometheus.HistogramVec
	vms         prometheus.Gauge
	warm        *prometheus.GaugeVec
	memUsed     prometheus.Gauge
	memBudget   prometheus.Gauge
	exits       prometheus.Counter
	snapshots   *prometheus.CounterVec
	evictions   prometheus.Counter
	reaped      prometheus.Counter
	prewarmed   *prometheus.CounterVec
	queued      *prometheus.CounterVec
}

func (a *Agent) observeStart(kind kilnv1.StartKind, d time.Duration) {
	if kind == kilnv1.StartKind_START_RESTORE {
		a.m.restore.Observe(d.Seconds())
	} else {
		a.m.boot.Observe(d.Seconds())
	}
}
