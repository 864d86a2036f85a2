package scheduler

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/scheduler/slapolicy"
)

// DefaultQueueWait is how long an invocation waits for capacity when every
// node is full, unless its deadline ends the wait sooner.
const DefaultQueueWait = 5 * time.Second

// slaState is the scheduler's side of the SLA policy (slapolicy, pure): it
// feeds every invocation's outcome in, turns the policy's warm-pool plan
// into per-node targets sent over the agents' Connect streams, and queues
// invocations that find no capacity, earliest deadline first.
type slaState struct {
	policy    *slapolicy.Policy
	queueWait time.Duration

	mu    sync.Mutex
	specs map[string]*kilnv1.FunctionSpec // newest spec seen per function
	sent  map[string]string               // node/session → the targets last sent there

	// Under Scheduler.mu: the admission queue and its waiters.
	queue   *slapolicy.Queue
	waiters map[string]chan string // id → "" to try again, or why it cannot run
	nextID  uint64

	target    *prometheus.GaugeVec
	predicted *prometheus.GaugeVec
	depth     prometheus.Gauge
	rejected  prometheus.Counter
}

func newSLAState(s *Scheduler, cfg Config) *slaState {
	st := &slaState{policy: cfg.SLAPolicy, queueWait: cfg.QueueWait, specs: map[string]*kilnv1.FunctionSpec{},
		sent: map[string]string{}, waiters: map[string]chan string{}}
	if st.policy == nil {
		st.policy = slapolicy.New(slapolicy.Config{})
	}
	if st.queueWait <= 0 {
		st.queueWait = DefaultQueueWait
	}
	st.queue = slapolicy.NewQueue(func(fn string) time.Duration { return st.policy.ExpectedService(fn, s.now()) })
	st.target = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kiln_scheduler_warm_target", Help: "Warm instances the SLA policy wants per function, across all nodes.",
	}, []string{"function"})
	st.predicted = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kiln_scheduler_sla_predicted_ratio", Help: "The SLA attainment the policy's model predicts at the warm target.",
	}, []string{"function"})
	st.depth = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_scheduler_queue_depth", Help: "Invocations waiting for capacity (every node full), earliest deadline first.",
	})
	st.rejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kiln_scheduler_queue_rejected_total", Help: "Queued invocations refused because they could no longer meet their deadline, or waited too long.",
	})
	return st
}

func (st *slaState) collectors() []prometheus.Collector {
	return []prometheus.Collector{st.target, st.predicted, st.depth, st.rejected}
}

// note records fn's newest spec and hands its SLA to the policy.
func (st *slaState) note(fn *kilnv1.FunctionSpec) {
	st.mu.Lock()
	old := st.specs[fn.Name]
	st.specs[fn.Name] = fn
	st.mu.Unlock()
	if old != nil && old.DeadlineMs == fn.DeadlineMs && old.SlaTarget == fn.SlaTarget &&
		old.MinWarm == fn.MinWarm && old.MaxInstances == fn.MaxInstances {
		return
	}
	st.policy.SetSpec(fn.Name, slapolicy.Spec{Deadline: time.Duration(fn.DeadlineMs) * time.Millisecond, Target: fn.SlaTarget,
		MinWarm: int(fn.MinWarm), MaxInstances: int(fn.MaxInstances)})
}

// observe feeds one finished invocation to the policy: only calls that
// ran the function say something about its start and execution times.
func (st *slaState) observe(fn *kilnv1.FunctionSpec, arrived time.Time, resp *kilnv1.InvokeResponse) {
	switch resp.GetOutcome() {
	case kilnv1.Outcome_OUTCOME_OK, kilnv1.Outcome_OUTCOME_FUNCTION_ERROR:
	default:
		return
	}
	kind := slapolicy.StartWarm
	switch resp.Start {
	case kilnv1.StartKind_START_RESTORE:
		kind = slapolicy.StartRestore
	case kilnv1.StartKind_START_BOOT:
		kind = slapolicy.StartBoot
	}
	st.policy.Observe(slapolicy.Observation{Function: fn.Name, At: arrived, Start: kind,
		StartTime: time.Duration(resp.StartNs), Exec: time.Duration(resp.ExecNs)})
}

// planWarm asks the policy for every function's pool and sends each node
// its share: the functions' targets above their own min_warm (which every
// node keeps anyway) split evenly over the nodes that already run the
// function. A node hears from the scheduler only when its share changed.
func (s *Scheduler) planWarm() {
	st := s.sla
	now := s.now()
	targets := st.policy.Plan(now)
	st.mu.Lock()
	specs := make(map[string]*kilnv1.FunctionSpec, len(st.specs))
	for k, v := range st.specs {
		specs[k] = v
	}
	st.mu.Unlock()

	type send struct {
		n   *node
		key string
		msg *kilnv1.WarmTargets
		fp  string
	}
	s.mu.Lock()
	share := map[string]*kilnv1.WarmTargets{}
	for _, t := range targets {
		st.target.WithLabelValues(t.Function).Set(float64(t.Warm))
		st.predicted.WithLabelValues(t.Function).Set(t.Predicted)
		spec := specs[t.Function]
		if spec == nil || t.Warm <= int(spec.MinWarm) {
			continue
		}
		var hosts []string
		for name, n := range s.nodes {
			if w := n.Warm[spec.ImageDigest]; w.Idle+w.Busy > 0 {
				hosts = append(hosts, name)
			}
		}
		if len(hosts) == 0 {
			continue // the first call places it; the next plan sizes it
		}
		per := uint32(math.Ceil(float64(t.Warm) / float64(len(hosts))))
		for _, h := range hosts {
			if share[h] == nil {
				share[h] = &kilnv1.WarmTargets{}
			}
			share[h].Targets = append(share[h].Targets, &kilnv1.WarmTarget{Function: spec, Warm: per})
		}
	}
	var sends []send
	for name, n := range s.nodes {
		msg := share[name]
		if msg == nil {
			msg = &kilnv1.WarmTargets{}
		}
		var parts []string
		for _, t := range msg.Targets {
			parts = append(parts, fmt.Sprintf("%s=%d", t.Function.Name, t.Warm))
		}
		slices.Sort(parts)
		key, fp := fmt.Sprintf("%s/%d", name, n.session), strings.Join(parts, ",")
		st.mu.Lock()
		last, seen := st.sent[key]
		st.mu.Unlock()
		if (seen && last == fp) || (!seen && fp == "") {
			continue
		}
		sends = append(sends, send{n, key, msg, fp})
	}
	s.mu.Unlock()
	for _, x := range sends {
		if err := x.n.send(&kilnv1.SchedulerMessage{Msg: &kilnv1.SchedulerMessage_WarmTargets{WarmTargets: x.msg}}); err != nil {
			continue // the stream is breaking; its Connect notices
		}
		st.mu.Lock()
		st.sent[x.key] = x.fp
		st.mu.Unlock()
	}
}

// awaitCapacity queues an invocation that found every node full until
// capacity frees up (heartbeats and finished calls wake the queue, most
// urgent first), its deadline can no longer be met, or it has waited
// queueWait. It returns "" to try placing again, else why not.
func (s *Scheduler) awaitCapacity(ctx context.Context, fn *kilnv1.FunctionSpec, arrived time.Time) string {
	st := s.sla
	inv := slapolicy.Invocation{Function: fn.Name, Arrived: arrived}
	if fn.DeadlineMs > 0 {
		inv.Deadline = arrived.Add(time.Duration(fn.DeadlineMs) * time.Millisecond)
	}
	ch := make(chan string, 1)
	s.mu.Lock()
	st.nextID++
	inv.ID = fmt.Sprint(st.nextID)
	st.queue.Push(inv)
	st.waiters[inv.ID] = ch
	st.depth.Set(float64(st.queue.Len()))
	s.mu.Unlock()
	wait := time.NewTimer(st.queueWait)
	defer wait.Stop()
	select {
	case why := <-ch:
		return why
	case <-ctx.Done():
		s.forget(inv.ID)
		return "the caller's deadline passed while it waited for capacity"
	case <-wait.C:
		s.forget(inv.ID)
		st.rejected.Inc()
		return fmt.Sprintf("no node had room for %v (every node is full)", st.queueWait)
	}
}

// forget drops a waiter that gave up; its queue entry is skipped when it
// reaches the front.
func (s *Scheduler) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sla.waiters, id)
}

// wakeLocked lets the most urgent queued invocation try again, and tells
// those that can no longer meet their deadline.
func (s *Scheduler) wakeLocked() {
	st := s.sla
	for st.queue.Len() > 0 {
		inv, infeasible, ok := st.queue.Next(s.now())
		for _, x := range infeasible {
			if ch, live := st.waiters[x.ID]; live {
				delete(st.waiters, x.ID)
				st.rejected.Inc()
				ch <- x.Reason
			}
		}
		if !ok {
			break
		}
		if ch, live := st.waiters[inv.ID]; live {
			delete(st.waiters, inv.ID)
			ch <- ""
			break
		}
	}
	st.depth.Set(float64(st.queue.Len()))
}

// ListNodes implements kilnv1.SchedulerServer: every registered node as its
// last capacity report said, for gateways that show warm instances.
func (s *Scheduler) ListNodes(context.Context, *kilnv1.ListNodesRequest) (*kilnv1.ListNodesResponse, error) {
	out := &kilnv1.ListNodesResponse{}
	for _, n := range s.Nodes() {
		c := &kilnv1.CapacityResponse{Node: n.Name, MemoryBytesTotal: n.MemoryTotal, MemoryBytesUsed: n.MemoryUsed, MemoryBytesIdle: n.MemoryIdle}
		for d, w := range n.Warm {
			c.Warm = append(c.Warm, &kilnv1.WarmInstances{ImageDigest: d, Idle: w.Idle, Busy: w.Busy})
		}
		slices.SortFunc(c.Warm, func(a, b *kilnv1.WarmInstances) int { return strings.Compare(a.ImageDigest, b.ImageDigest) })
		for d := range n.Cached {
			c.CachedImages = append(c.CachedImages, d)
		}
		slices.Sort(c.CachedImages)
		out.Nodes = append(out.Nodes, c)
	}
	return out, nil
}

// NodesFrom turns a ListNodes answer back into the scheduler's Node view.
func NodesFrom(r *kilnv1.ListNodesResponse) []Node {
	var out []Node
	for _, c := range r.GetNodes() {
		n := Node{Name: c.Node, MemoryTotal: c.MemoryBytesTotal, MemoryUsed: c.MemoryBytesUsed, MemoryIdle: c.MemoryBytesIdle,
			Warm: map[string]Warm{}, Cached: map[string]bool{}}
		for _, w := range c.Warm {
			n.Warm[w.ImageDigest] = Warm{Idle: w.Idle, Busy: w.Busy}
		}
		for _, d := range c.CachedImages {
			n.Cached[d] = true
		}
		out = append(out, n)
	}
	return out
}
