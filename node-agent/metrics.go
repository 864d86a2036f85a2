package nodeagent

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// metrics are the agent's Prometheus series, kiln_agent_* (newMetrics).
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
	// workersKilled: vmhost worker processes its watchdog killed for not
	// answering, by what they left unanswered (vmhost.Kill*).
	workersKilled *prometheus.CounterVec
	// instancesKilled: instances the agent destroyed for what their guest
	// did, by reason (killIdleSpin).
	instancesKilled *prometheus.CounterVec
	// snapshotFailures: snapshots that could not be written, by reason
	// (snapFailReason); snapshotsDeleted: files the store removed, by
	// reason (size, idle); snapshotBytes: the store's disk after its
	// last trim.
	snapshotFailures *prometheus.CounterVec
	snapshotsDeleted *prometheus.CounterVec
	snapshotBytes    prometheus.Gauge
}

// newMetrics creates the agent's metrics, with the memory budget set, and
// registers them with reg unless it is nil.
func newMetrics(budget uint64, reg prometheus.Registerer) (metrics, error) {
	buckets := prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5 ms … 16 s
	m := metrics{
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_invocations_total", Help: "Invocations by function, start kind and outcome.",
		}, []string{"function", "start", "outcome"}),
		boot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kiln_agent_vm_boot_seconds", Help: "From VM creation until the function is ready for input.", Buckets: buckets,
		}),
		restore: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kiln_agent_restore_seconds", Help: "From the start of a snapshot restore until the function is ready for input.", Buckets: buckets,
		}),
		exec: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kiln_agent_exec_seconds", Help: "Time inside the function per invocation.", Buckets: buckets,
		}),
		total: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kiln_agent_invocation_seconds", Help: "Time the agent spent on an invocation (wait, start, exec), by start kind.", Buckets: buckets,
		}, []string{"start"}),
		vms: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_agent_vms", Help: "VMs alive on this node."}),
		warm: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_agent_warm_instances", Help: "Serve instances on this node by function and state (idle: parked waiting for a request; busy: running one or starting).",
		}, []string{"function", "state"}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_snapshots_total", Help: "Snapshot events: taken, restored, corrupt (found unusable and rebuilt).",
		}, []string{"event"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_agent_evictions_total", Help: "Idle instances destroyed to make memory for an invocation of another function."}),
		reaped:    prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_agent_reaped_total", Help: "Idle instances destroyed after their keep-alive."}),
		prewarmed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_prewarmed_total", Help: "Instances started ahead of demand for min_warm, by start kind.",
		}, []string{"start"}),
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_queued_total",
			Help: "Invocations queued for an instance to come free instead of starting one, by reason: busy_sooner (a busy instance was expected to free sooner than a start), start_limit (MaxColdStarts), max_instances, memory.",
		}, []string{"reason"}),
		workersKilled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_workers_killed_total",
			Help: "VM worker processes killed for not answering, with their VMs, by what they left unanswered: heartbeat, boot, close, stats, cancel, send.",
		}, []string{"reason"}),
		instancesKilled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_instances_killed_total",
			Help: "Instances the agent destroyed for what their guest did, by reason: idle_spin (a parked serve instance used more guest CPU than its idle budget).",
		}, []string{"reason"}),
		snapshotFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_snapshot_failures_total",
			Help: "Snapshots that could not be written, by reason: no_space (disk full or quota), too_large (file-size limit), write (any other error). The shape's cold starts boot, and its snapshot is not tried again for a growing interval.",
		}, []string{"reason"}),
		snapshotsDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_agent_snapshots_deleted_total",
			Help: "Snapshot files removed by the store, by reason: size (least recently used, past the store's bound), idle (not used for the maximum idle time).",
		}, []string{"reason"}),
		snapshotBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_agent_snapshot_bytes", Help: "Disk used by the snapshot store's files (allocated blocks), as of its last trim."}),
		memUsed:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_agent_memory_bytes_used", Help: "Guest memory of live VMs."}),
		memBudget:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_agent_memory_bytes_budget", Help: "Guest memory this node may hand out."}),
		exits:         prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_agent_vm_exits_total", Help: "VM exits taken during invocations."}),
	}
	m.memBudget.Set(float64(budget))
	if reg != nil {
		for _, c := range []prometheus.Collector{m.invocations, m.boot, m.restore, m.exec, m.total, m.vms, m.warm,
			m.memUsed, m.memBudget, m.exits, m.snapshots, m.evictions, m.reaped, m.prewarmed, m.queued, m.workersKilled, m.instancesKilled,
			m.snapshotFailures, m.snapshotsDeleted, m.snapshotBytes} {
			if err := reg.Register(c); err != nil {
				return metrics{}, fmt.Errorf("nodeagent: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}

// observeStart records how long a start of kind took to be ready for input.
func (a *Agent) observeStart(kind kilnv1.StartKind, d time.Duration) {
	if kind == kilnv1.StartKind_START_RESTORE {
		a.m.restore.Observe(d.Seconds())
	} else {
		a.m.boot.Observe(d.Seconds())
	}
}
