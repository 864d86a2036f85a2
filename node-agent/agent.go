// Package nodeagent is the Kiln node-agent: it runs invocations in KVM
// virtual machines on one host. It keeps an on-disk image cache keyed by
// digest (verified on every read), boots one VM per invocation for exec
// functions and keeps booted instances of serve functions that it talks to
// in the wire protocol, enforces per-invocation deadlines and the node's
// memory budget, captures each instance's stderr, and reports its capacity
// to the scheduler over a Connect stream (Run).
//
// Kernel choice: an image carries the guest kernel it was built and tested
// with, and its manifest's ABI version is checked against this build, so the
// agent boots the image's kernel. Config.Kernel, when set, overrides it for
// every image — for developing the kernel without rebuilding images.
//
// Lock order: serveSlot.sem (held for a whole invocation) before Agent.mu.
package nodeagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/tracing"
	"github.com/kilnfaas/kiln/node-agent/vmhost"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/proto/wire"
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
	// MaintainEvery is how often idle instances are reaped and pools
	// grown to min_warm; 0 → 250 ms.
	MaintainEvery time.Duration
	// VMsPerWorker is how many VMs each vmhost worker process holds
	// before the next is used (0 → vmhost's default). A process's VMs
	// slow each other's restores and teardowns down (BENCHMARKS.md), and a
	// worker that crashes takes only its own VMs. -1 runs the VMs in the
	// agent's own process. Only with Boot nil.
	VMsPerWorker int
	// MaxColdStarts bounds the starts (restores or boots) for live calls
	// in flight on this node; calls beyond it queue for the first
	// instance to come free or start slot to open. 0 → the number of CPUs,
	// at least 2.
	MaxColdStarts int
	// NoSnapshots makes every cold start a boot. Snapshots need the KVM
	// booter: with another Boot they are always off.
	NoSnapshots bool
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
		if a.snaps, err = newSnapStore(filepath.Join(cfg.CacheDir, "snapshots"), a.log); err != nil {
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
	if a.now == nil {
		a.now = time.Now
	}
	if a.boot == nil && cfg.VMsPerWorker >= 0 {
		h, err := vmhost.New(vmhost.Config{PerWorker: cfg.VMsPerWorker, Logger: a.log.With("part", "vmhost")})
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
	buckets := prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5 ms … 16 s
	a.m = metrics{
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
		memUsed:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_agent_memory_bytes_used", Help: "Guest memory of live VMs."}),
		memBudget: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_agent_memory_bytes_budget", Help: "Guest memory this node may hand out."}),
		exits:     prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_agent_vm_exits_total", Help: "VM exits taken during invocations."}),
	}
	a.m.memBudget.Set(float64(cfg.MemoryBytes))
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.m.invocations, a.m.boot, a.m.restore, a.m.exec, a.m.total, a.m.vms, a.m.warm,
			a.m.memUsed, a.m.memBudget, a.m.exits, a.m.snapshots, a.m.evictions, a.m.reaped, a.m.prewarmed, a.m.queued} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("nodeagent: registering metrics: %w", err)
			}
		}
	}
	go a.maintain(a.stop)
	return a, nil
}

// reserve books mem against the budget; false means it does not fit.
func (a *Agent) reserve(mem uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reserveLocked(mem)
}

func (a *Agent) reserveLocked(mem uint64) error {
	if a.closed {
		return ErrClosed
	}
	if a.used+mem > a.cfg.MemoryBytes {
		return a.noMemoryLocked(mem)
	}
	a.used += mem
	a.m.memUsed.Set(float64(a.used))
	a.m.vms.Inc()
	return nil
}

// noMemoryLocked is the error for mem that does not fit in the budget.
func (a *Agent) noMemoryLocked(mem uint64) error {
	return fmt.Errorf("%w: needs %d MiB, %d of %d MiB in use", ErrNoCapacity, mem>>20, a.used>>20, a.cfg.MemoryBytes>>20)
}

func (a *Agent) releaseMem(mem uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.used -= mem
	a.m.memUsed.Set(float64(a.used))
	a.m.vms.Dec()
}

// spec is one invocation's function, resolved against its image.
type spec struct {
	name, digest string
	kind         string
	mem          uint64
	timeout      time.Duration
	args, env    []string
	img          *image.Image
	deadline     time.Time

	minWarm, maxInstances int
	keepAlive             time.Duration
	fresh                 bool
}

// key identifies the serve instances that can answer this spec: the same
// image booted the same way.
func (s *spec) key() string {
	return fmt.Sprintf("%s|%s|%d|%q|%q|%v", s.name, s.digest, s.mem, s.args, s.env, s.fresh)
}

func (a *Agent) vmConfig(s *spec) vmm.Config {
	kernel := s.img.Kernel
	if len(a.cfg.Kernel) > 0 {
		kernel = a.cfg.Kernel
	}
	return vmm.Config{
		Kernel:   kernel,
		Program:  s.img.Program,
		Args:     append([]string{s.name}, s.args...),
		Env:      s.env,
		MemSize:  s.mem,
		Hostname: s.name,
	}
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
	resp, start := a.invoke(ctx, req)
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

func (a *Agent) invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, kilnv1.StartKind) {
	s, resp := a.resolve(ctx, req)
	if resp != nil {
		return resp, kilnv1.StartKind_START_UNSPECIFIED
	}
	ctx, cancel := context.WithDeadline(ctx, s.deadline)
	defer cancel()
	if s.kind == image.KindExec {
		return a.runExec(ctx, s, req)
	}
	return a.runServe(ctx, s, req)
}

func fail(o kilnv1.Outcome, format string, args ...any) *kilnv1.InvokeResponse {
	return &kilnv1.InvokeResponse{Outcome: o, Error: fmt.Sprintf(format, args...)}
}

// resolve fetches the image and merges the request's function spec over
// its manifest: the registry may override memory, timeout, env and args at
// deploy time; the kind must agree with what the image was built as.
func (a *Agent) resolve(ctx context.Context, req *kilnv1.InvokeRequest) (*spec, *kilnv1.InvokeResponse) {
	fn := req.Function
	img, err := a.cache.get(ctx, fn.ImageDigest)
	if err != nil {
		return nil, fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "%v", err)
	}
	m := &img.Manifest
	s := &spec{name: fn.Name, digest: fn.ImageDigest, kind: m.Kind, mem: m.MemoryBytes, timeout: m.Timeout(),
		args: m.Args, env: m.Env, img: img}
	if s.name == "" {
		s.name = m.Name
	}
	switch fn.Kind {
	case kilnv1.Kind_KIND_EXEC, kilnv1.Kind_KIND_SERVE:
		if want := strings.ToLower(strings.TrimPrefix(fn.Kind.String(), "KIND_")); want != m.Kind {
			return nil, fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "function is deployed as %s but its image is %s", want, m.Kind)
		}
	}
	if fn.MemoryBytes != 0 {
		s.mem = fn.MemoryBytes
		if s.mem%image.MemAlign != 0 || s.mem < image.MinMemory || s.mem > image.MaxMemory {
			return nil, fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "memory_bytes %d is not a multiple of 2 MiB between 4 MiB and 3 GiB", s.mem)
		}
	}
	if fn.TimeoutMs > 0 {
		s.timeout = min(time.Duration(fn.TimeoutMs)*time.Millisecond, image.MaxTimeout)
	}
	if len(fn.Args) > 0 {
		s.args = fn.Args
	}
	if len(fn.Env) > 0 {
		// Later entries win in getenv implementations that scan from the
		// end, and musl/Go both take the first: drop overridden keys.
		s.env = mergeEnv(m.Env, fn.Env)
	}
	s.minWarm, s.maxInstances = int(fn.MinWarm), int(fn.MaxInstances)
	s.keepAlive = time.Duration(fn.KeepAliveMs) * time.Millisecond
	s.fresh = fn.Fresh || s.kind == image.KindExec
	if s.fresh {
		s.minWarm = 0
	}
	s.deadline = a.now().Add(s.timeout)
	if req.DeadlineUnixMs > 0 {
		if d := time.UnixMilli(req.DeadlineUnixMs); d.Before(s.deadline) {
			s.deadline = d
		}
	}
	return s, nil
}

func mergeEnv(base, over []string) []string {
	keys := map[string]bool{}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		keys[k] = true
	}
	var out []string
	for _, e := range base {
		if k, _, _ := strings.Cut(e, "="); !keys[k] {
			out = append(out, e)
		}
	}
	return append(out, over...)
}

// classify maps how a VM ended to an outcome.
func classify(res *vmm.Result, err error) (kilnv1.Outcome, string) {
	if res == nil {
		return kilnv1.Outcome_OUTCOME_CRASHED, fmt.Sprint(err)
	}
	switch res.Reason {
	case vmm.ReasonExited:
		if res.Status == 0 {
			return kilnv1.Outcome_OUTCOME_OK, ""
		}
		return kilnv1.Outcome_OUTCOME_FUNCTION_ERROR, fmt.Sprintf("exit status %d", res.Status)
	case vmm.ReasonTimeout:
		return kilnv1.Outcome_OUTCOME_TIMEOUT, "ran past its deadline; VM destroyed"
	}
	msg := res.Message
	if msg == "" && err != nil {
		msg = err.Error()
	}
	if errors.Is(err, vmm.ErrTimeout) {
		return kilnv1.Outcome_OUTCOME_TIMEOUT, "ran past its deadline; VM destroyed"
	}
	return kilnv1.Outcome_OUTCOME_CRASHED, msg
}

// bootOutcome maps a failure of Booter to an outcome.
func bootOutcome(err error) *kilnv1.InvokeResponse {
	if errors.Is(err, vmm.ErrBadELF) || errors.Is(err, vmm.ErrMemSize) {
		return fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "cannot boot: %v", err)
	}
	return fail(kilnv1.Outcome_OUTCOME_CRASHED, "cannot boot: %v", err)
}

// capped keeps at most limit bytes and remembers that it dropped some.
type capped struct {
	buf      bytes.Buffer
	limit    int
	overflow bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.limit - c.buf.Len(); len(p) > room {
		c.overflow = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

// runExec runs an exec function on a VM of its own: a restore of its
// snapshot (taken at its first read of stdin, so its start-up work is done
// once per node) or a boot that takes it.
func (a *Agent) runExec(ctx context.Context, s *spec, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, kilnv1.StartKind) {
	if err := a.reserve(s.mem); err != nil {
		return fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", err), kilnv1.StartKind_START_UNSPECIFIED
	}
	handedOff := false // to the teardown goroutine, which releases the memory
	defer func() {
		if !handedOff {
			a.releaseMem(s.mem)
		}
	}()
	stdout := &capped{limit: wire.MaxBody}
	stderr := newRing(StderrRing)
	cfg := a.vmConfig(s)
	var first firstWait
	cfg.OnFirstWait = func() { first.stamp(a.now()) }
	cfg.Stdin, cfg.Stdout, cfg.Stderr = bytes.NewReader(req.Body), stdout, stderr
	plan := a.plan(s, &cfg, func() string {
		if stdout.buf.Len() > 0 {
			return "it writes to stdout before it reads stdin, and a restore would not repeat that output"
		}
		return ""
	})
	kind := plan.kind()
	t0 := a.now()
	m, err := a.boot(cfg)
	if err != nil && plan.restore != nil {
		a.log.Warn("restore failed; booting", "function", s.name, "err", err)
		a.snaps.drop(plan.key)
		cfg.Snapshot, kind, t0 = nil, kilnv1.StartKind_START_BOOT, a.now()
		m, err = a.boot(cfg)
	}
	if err != nil {
		if plan.take != "" {
			a.snaps.abandon(plan.key)
		}
		return bootOutcome(err), kind
	}
	if !a.trackMachine(m) {
		m.Close()
		return fail(kilnv1.Outcome_OUTCOME_NO_CAPACITY, "%v", ErrClosed), kind
	}
	res, runErr := m.Run(ctx)
	// Tearing a VM down (unmapping its memory, closing its KVM objects)
	// is not the caller's wait: the answer leaves first.
	handedOff = true
	go func() {
		m.Close()
		a.untrackMachine(m)
		a.releaseMem(s.mem)
	}()
	done := a.now()
	ready := done
	if at := first.at(); at != 0 {
		ready = time.Unix(0, at)
	} else if plan.take != "" {
		a.snaps.abandon(plan.key) // it never asked for input
	}
	bootNS, execNS := ready.Sub(t0), done.Sub(ready)
	a.observeStart(kind, bootNS)
	var exits uint64
	if res != nil {
		exits = res.Stats.Exits
	}
	outcome, msg := classify(res, runErr)
	resp := &kilnv1.InvokeResponse{Outcome: outcome, Error: msg, StartNs: bootNS.Nanoseconds(), ExecNs: execNS.Nanoseconds(), VmExits: exits}
	switch outcome {
	case kilnv1.Outcome_OUTCOME_OK:
		if stdout.overflow {
			resp.Outcome, resp.Error = kilnv1.Outcome_OUTCOME_CRASHED, fmt.Sprintf("stdout exceeded %d bytes", wire.MaxBody)
			break
		}
		resp.Status, resp.Body = http.StatusOK, stdout.buf.Bytes()
	case kilnv1.Outcome_OUTCOME_FUNCTION_ERROR:
		resp.Status = int32(res.Status)
	}
	if resp.Outcome != kilnv1.Outcome_OUTCOME_OK {
		resp.LogTail = stderr.tail(TailLines, 0)
	}
	resp.Stderr = stderr.since(0)
	tracing.Invocation(ctx, kind.Label(), 0, resp.StartNs, resp.ExecNs, resp.Error)
	return resp, kind
}

// kind is the start a plan makes.
func (p snapPlan) kind() kilnv1.StartKind {
	if p.restore != nil {
		return kilnv1.StartKind_START_RESTORE
	}
	return kilnv1.StartKind_START_BOOT
}

// plan picks a restore or a boot for cfg and sets cfg up for it. veto,
// called once a snapshot is written, may say why this shape must never be
// restored (and the snapshot is then removed).
func (a *Agent) plan(s *spec, cfg *vmm.Config, veto func() string) snapPlan {
	if a.snaps == nil {
		return snapPlan{}
	}
	p := a.snaps.plan(snapKey(s.digest, a.kernelSum, cfg), cfg)
	if p.corrupt != nil {
		a.m.snapshots.WithLabelValues("corrupt").Inc()
	}
	switch {
	case p.restore != nil:
		cfg.Snapshot = p.restore
		a.m.snapshots.WithLabelValues("restored").Inc()
	case p.take != "":
		cfg.SnapshotPath = p.take
		cfg.OnSnapshot = func(err error) {
			why := ""
			if err == nil && veto != nil {
				why = veto()
			}
			if err == nil && why == "" {
				a.m.snapshots.WithLabelValues("taken").Inc()
			}
			a.snaps.taken(p.key, err, why)
		}
	}
	return p
}

func (a *Agent) observeStart(kind kilnv1.StartKind, d time.Duration) {
	if kind == kilnv1.StartKind_START_RESTORE {
		a.m.restore.Observe(d.Seconds())
	} else {
		a.m.boot.Observe(d.Seconds())
	}
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

// Capacity implements kilnv1.AgentServer.
func (a *Agent) Capacity(context.Context, *kilnv1.CapacityRequest) (*kilnv1.CapacityResponse, error) {
	return a.capacity(), nil
}

func (a *Agent) capacity() *kilnv1.CapacityResponse {
	cached := a.cache.digests() // disk I/O: outside a.mu
	a.mu.Lock()
	defer a.mu.Unlock()
	warm := map[string]*kilnv1.WarmInstances{}
	var idleMem uint64
	for _, p := range a.pools {
		for _, in := range p.idle {
			idleMem += in.mem
		}
		if p.total() == 0 {
			continue
		}
		w := warm[p.digest]
		if w == nil {
			w = &kilnv1.WarmInstances{ImageDigest: p.digest}
			warm[p.digest] = w
		}
		w.Idle += uint32(len(p.idle))
		w.Busy += uint32(p.busy + p.starting)
	}
	c := &kilnv1.CapacityResponse{Node: a.cfg.Node, MemoryBytesTotal: a.cfg.MemoryBytes, MemoryBytesUsed: a.used,
		MemoryBytesIdle: idleMem, CachedImages: cached}
	for _, d := range slices.Sorted(maps.Keys(warm)) {
		c.Warm = append(c.Warm, warm[d])
	}
	return c
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

func toHTTPHeader(hs []*kilnv1.Header) http.Header {
	h := http.Header{}
	for _, x := range hs {
		h.Add(x.Name, x.Value)
	}
	return h
}

func fromHTTPHeader(h http.Header) []*kilnv1.Header {
	var out []*kilnv1.Header
	names := make([]string, 0, len(h))
	for n := range h {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, v := range h[n] {
			out = append(out, &kilnv1.Header{Name: strings.ToLower(n), Value: v})
		}
	}
	return out
}
