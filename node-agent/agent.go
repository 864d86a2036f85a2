// Package nodeagent is the Kiln node-agent: it runs invocations in KVM
// virtual machines on one host. It keeps an on-disk image cache keyed by
// digest (verified on every read), boots one VM per invocation for exec
// functions and keeps booted instances of serve functions that it talks to
// in the wire protocol, enforces per-invocation deadlines and the node's
// memory budget, captures each instance's stderr, and reports its capacity
// to the scheduler over a Connect stream (Run). Which instance a serve call
// runs on — an idle one, a new one, or a busy one it queues for — is the
// pure admission policy's decision (admitPolicy, admission.go).
//
// Kernel choice: an image carries the guest kernel it was built and tested
// with, and its manifest's ABI version is checked against this build, so the
// agent boots the image's kernel. Config.Kernel, when set, overrides it for
// every image — for developing the kernel without rebuilding images.
//
// Lock order: snapStore.mu before snapEntry.mu. Agent.mu, imageCache.mu
// and ring.mu are innermost: no other lock of this package or of vmhost is
// taken while one is held, and Agent.mu is never held across a VM's start
// or destroy, image I/O, or a send that can block (release hands an
// instance to its waiter after unlocking).
package nodeagent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/node-agent/vmhost"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// Config is the agent's dependencies.
type Config struct {
	Node        string // this node's name, as the scheduler knows it
	MemoryBytes uint64 // the budget for guest memory of all VMs together
	Kernel      []byte // overrides every image's kernel when non-empty (see package doc)
	Images      ImageFetcher
	CacheDir    string
	CacheBytes  int64                 // bound of the on-disk image cache; 0 → DefaultCacheBytes
	Registerer  prometheus.Registerer // nil: metrics are kept but not exported
	Logger      *slog.Logger          // nil: discard
	Boot        Booter                // nil: KVM, in vmhost worker processes (VMsPerWorker)
	Clock       func() time.Time      // nil: time.Now
	// KeepAlive is how long an idle instance above min_warm lives when the
	// function names none; 0 → DefaultKeepAlive.
	KeepAlive time.Duration
	// MaintainEvery is how often idle instances are reaped, charged their
	// guest CPU and pools grown to min_warm; 0 → 250 ms.
	MaintainEvery time.Duration
	// IdleCPUBurst and IdleCPUShare are the guest CPU an idle (parked)
	// serve instance may use: IdleCPUBurst at once, refilled at
	// IdleCPUShare of one CPU, over each idle period (idlecpu.go says
	// why). An instance past it is destroyed and counted in
	// kiln_agent_instances_killed_total{reason="idle_spin"}; min_warm
	// starts another. 0 → DefaultIdleCPUBurst, DefaultIdleCPUShare; a
	// negative IdleCPUBurst charges nothing.
	IdleCPUBurst time.Duration
	IdleCPUShare float64
	// VMsPerWorker is how many VMs each vmhost worker process holds
	// before the next is used (0 → vmhost's default). A process's VMs
	// slow each other's restores and teardowns down (BENCHMARKS.md), and a
	// worker that crashes takes only its own VMs. -1 runs the VMs in the
	// agent's own process. Only with Boot nil.
	VMsPerWorker int
	// WorkerAnswerWithin and WorkerWorkWithin override the deadlines of
	// vmhost's watchdog (vmhost.Config.AnswerWithin, WorkWithin), past
	// which a worker process that stopped answering is killed with its
	// VMs; 0 → vmhost's defaults. Only with Boot nil.
	WorkerAnswerWithin, WorkerWorkWithin time.Duration
	// NoJail runs the vmhost workers unjailed (vmhost.Config.NoJail):
	// for debugging only. Jailed (the default), New fails unless the
	// agent is root. Only with Boot nil.
	NoJail bool
	// MaxColdStarts bounds the starts (restores or boots) for live calls
	// in flight on this node; calls beyond it queue for the first
	// instance to come free or start slot to open. 0 → the number of CPUs,
	// at least 2.
	MaxColdStarts int
	// NoSnapshots makes every cold start a boot. Snapshots need the KVM
	// booter: with another Boot they are always off.
	NoSnapshots bool
	// SnapshotBytes bounds the disk the snapshot store (CacheDir/snapshots)
	// may use; the least recently used snapshots without a live instance go
	// first. 0 → DefaultSnapshotBytes.
	SnapshotBytes int64
	// SnapshotMaxIdle removes a snapshot no cold start used for this long
	// (what removes the snapshots of redeployed and deleted functions);
	// 0 → DefaultSnapshotMaxIdle.
	SnapshotMaxIdle time.Duration
}

// Agent implements kilnv1.AgentServer.
type Agent struct {
	kilnv1.UnimplementedAgentServer

	cfg   Config
	cache *imageCache
	snaps *snapStore // nil: no snapshots
	log   *slog.Logger
	now   func() time.Time
	boot  Booter
	m     metrics

	vmhost       *vmhost.Host // nil: VMs run in this process (or Config.Boot)
	kernelSum    string       // sha256 of Config.Kernel ("" when images boot their own)
	registered   atomic.Bool  // the Connect stream is up (Run)
	maintainKick chan struct{}
	stop         chan struct{}

	mu         sync.Mutex
	closed     bool
	used       uint64                 // guest memory of live VMs
	pools      map[string]*pool       // serve instances by spec.key()
	prewarming int                    // min_warm starts in flight
	coldStarts int                    // starts for live calls in flight (Config.MaxColdStarts)
	startEnded chan struct{}          // closed and replaced when one of them ends
	instances  map[*instance]struct{} // every serve instance alive
	machines   map[Machine]struct{}   // exec VMs running now
}

// New returns an agent; it boots nothing until invoked.
func New(cfg Config) (*Agent, error) {
	if cfg.Node == "" || cfg.MemoryBytes == 0 || cfg.Images == nil || cfg.CacheDir == "" {
		return nil, fmt.Errorf("%w: Node, MemoryBytes, Images and CacheDir are required", ErrConfig)
	}
	cache, err := newImageCache(cfg.CacheDir, cfg.Images, cfg.CacheBytes)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, cache: cache, log: cfg.Logger, now: cfg.Clock, boot: cfg.Boot,
		pools: map[string]*pool{}, instances: map[*instance]struct{}{}, machines: map[Machine]struct{}{},
		maintainKick: make(chan struct{}, 1), stop: make(chan struct{})}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	RaiseOpenFiles(a.log)
	if len(cfg.Kernel) > 0 {
		a.kernelSum = fmt.Sprintf("%x", sha256.Sum256(cfg.Kernel))
	}
	if cfg.Boot == nil && !cfg.NoSnapshots {
		now := func() time.Time { return a.now() } // a.now is set below
		if a.snaps, err = newSnapStore(filepath.Join(cfg.CacheDir, "snapshots"), a.log, now, cfg.SnapshotBytes, cfg.SnapshotMaxIdle); err != nil {
			return nil, err
		}
	}
	if a.cfg.KeepAlive <= 0 {
		a.cfg.KeepAlive = DefaultKeepAlive
	}
	if a.cfg.MaxColdStarts <= 0 {
		a.cfg.MaxColdStarts = max(2, runtime.NumCPU())
	}
	a.startEnded = make(chan struct{})
	if a.cfg.MaintainEvery <= 0 {
		a.cfg.MaintainEvery = 250 * time.Millisecond
	}
	if a.cfg.IdleCPUBurst == 0 {
		a.cfg.IdleCPUBurst = DefaultIdleCPUBurst
	}
	if a.cfg.IdleCPUShare <= 0 {
		a.cfg.IdleCPUShare = DefaultIdleCPUShare
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.boot == nil && cfg.VMsPerWorker >= 0 {
		h, err := vmhost.New(vmhost.Config{PerWorker: cfg.VMsPerWorker, Logger: a.log.With("part", "vmhost"),
			AnswerWithin: cfg.WorkerAnswerWithin, WorkWithin: cfg.WorkerWorkWithin, NoJail: cfg.NoJail,
			// a.m is set below, before any VM boots.
			OnKill: func(reason string) { a.m.workersKilled.WithLabelValues(reason).Inc() }})
		if err != nil {
			return nil, err
		}
		a.vmhost = h
		a.boot = func(c vmm.Config) (Machine, error) {
			vm, err := h.Boot(c)
			if err != nil {
				return nil, err
			}
			return vm, nil
		}
	}
	if a.boot == nil {
		a.boot = BootVM
	}
	if a.m, err = newMetrics(cfg.MemoryBytes, cfg.Registerer); err != nil {
		return nil, err
	}
	if a.snaps != nil {
		a.startSnapshots(a.stop)
	}
	go a.maintain(a.stop)
	return a, nil
}

// Invoke implements kilnv1.AgentServer.
func (a *Agent) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	fn := req.GetFunction()
	if fn == nil || fn.ImageDigest == "" {
		return nil, status.Error(codes.InvalidArgument, "nodeagent: the request needs a function with an image_digest")
	}
	name := fn.Name
	if name == "" {
		name = "unnamed"
	}
	resp, start, lost := a.invoke(ctx, req)
	if lost != nil {
		// Not the function's failure: the platform's, answered as one
		// (the scheduler passes Unavailable on; the gateway says
		// platform_error, 503, retry).
		a.m.invocations.WithLabelValues(name, start.Label(), "platform_error").Inc()
		a.log.Warn("invocation failed: its VM's worker process failed", "function", name, "id", req.InvocationId, "error", lost)
		return nil, status.Errorf(codes.Unavailable, "nodeagent: the invocation's VM was lost with its worker process: %v", lost)
	}
	resp.Node = a.cfg.Node
	resp.Start = start
	outcome := strings.ToLower(strings.TrimPrefix(resp.Outcome.String(), "OUTCOME_"))
	startLabel := start.Label()
	a.m.invocations.WithLabelValues(name, startLabel, outcome).Inc()
	a.m.total.WithLabelValues(startLabel).Observe(float64(resp.WaitNs+resp.StartNs+resp.ExecNs) / 1e9)
	if resp.ExecNs > 0 {
		a.m.exec.Observe(float64(resp.ExecNs) / 1e9)
	}
	a.m.exits.Add(float64(resp.VmExits))
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK {
		a.log.Info("invocation failed", "function", name, "id", req.InvocationId, "outcome", outcome, "error", resp.Error)
	}
	return resp, nil
}

// invoke runs req; lost is not nil when its VM was lost with its worker
// process (vmhost.ErrWorker), and then resp is nil.
func (a *Agent) invoke(ctx context.Context, req *kilnv1.InvokeRequest) (resp *kilnv1.InvokeResponse, start kilnv1.StartKind, lost error) {
	s, resp := a.resolve(ctx, req)
	if resp != nil {
		return resp, kilnv1.StartKind_START_UNSPECIFIED, nil
	}
	ctx, cancel := context.WithDeadline(ctx, s.deadline)
	defer cancel()
	if s.kind == image.KindExec {
		return a.runExec(ctx, s, req)
	}
	return a.runServe(ctx, s, req)
}

func (a *Agent) trackMachine(m Machine) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.machines[m] = struct{}{}
	return true
}

func (a *Agent) untrackMachine(m Machine) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.machines, m)
}

func (a *Agent) track(in *instance) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.instances[in] = struct{}{}
}

func (a *Agent) untrack(in *instance) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.instances, in)
}

// Close destroys every VM; invocations in flight end as crashed or timed
// out, and later ones are refused.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.stop)
	a.closePoolsLocked()
	insts := make([]*instance, 0, len(a.instances))
	for in := range a.instances {
		insts = append(insts, in)
	}
	machines := make([]Machine, 0, len(a.machines))
	for m := range a.machines {
		machines = append(machines, m)
	}
	a.mu.Unlock()
	// In parallel: closing a VM waits in the host kernel (unregistering
	// its MMU notifier waits out an SRCU grace period), and thousands of
	// idle instances closed one after another took minutes.
	var wg sync.WaitGroup
	work := make(chan func())
	for range min(16, len(machines)+len(insts)) {
		wg.Go(func() {
			for f := range work {
				f()
			}
		})
	}
	for _, m := range machines {
		work <- func() { m.Close() }
	}
	for _, in := range insts {
		work <- in.destroy
	}
	close(work)
	wg.Wait()
	if a.vmhost != nil {
		a.vmhost.Close()
	}
	if a.snaps != nil {
		a.snaps.close()
	}
	return nil
}
