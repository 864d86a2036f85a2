package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/builder/image"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

func (h *harness) warm(name, state string) int {
	return int(testutil.ToFloat64(h.a.m.warm.WithLabelValues(name, state)))
}

// A pool grows to min_warm after the function's first call on the node,
// keeps min_warm through keep_alive, and instances above it are reaped
// once idle for keep_alive.
func TestPoolGrowsToMinWarmAndShrinks(t *testing.T) {
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: ProcessBooter(t.TempDir()), MaintainEvery: 20 * time.Millisecond})
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, MinWarm: 3, KeepAliveMs: 1500}
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	waitFor(t, func() bool { return h.warm("sv", "idle") == 3 })
	if n := testutil.ToFloat64(h.a.m.prewarmed.WithLabelValues("boot")); n != 2 {
		t.Fatalf("prewarmed %v instances, want 2", n)
	}
	// Five overlapping calls: three warm instances and two new ones.
	done := make(chan *kilnv1.InvokeResponse, 5)
	for range 5 {
		go func() { done <- h.invokeFn(t, fn, "/hold", "") }()
	}
	starts := map[kilnv1.StartKind]int{}
	for range 5 {
		r := <-done
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, r.Start)
		starts[r.Start]++
	}
	if starts[kilnv1.StartKind_START_WARM] != 3 || starts[kilnv1.StartKind_START_BOOT] != 2 {
		t.Fatalf("starts %v, want 3 warm and 2 boots", starts)
	}
	if h.warm("sv", "idle") != 5 {
		t.Fatalf("%d idle, want 5", h.warm("sv", "idle"))
	}
	// Idle past keep_alive: back down to min_warm, never below.
	waitFor(t, func() bool { return h.warm("sv", "idle") == 3 })
	time.Sleep(2 * time.Second)
	if n := h.warm("sv", "idle"); n != 3 {
		t.Fatalf("%d idle after keep_alive, want min_warm 3", n)
	}
	if n := testutil.ToFloat64(h.a.m.reaped); n != 2 {
		t.Fatalf("reaped %v, want 2", n)
	}
	if v := testutil.ToFloat64(h.a.m.memUsed); v != 3*64<<20 {
		t.Fatalf("memory used %v, want three instances' worth", v)
	}
}

// Without min_warm, an idle instance lives keep_alive and then goes, with
// its memory.
func TestPoolKeepAliveReapsToZero(t *testing.T) {
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: ProcessBooter(t.TempDir()), MaintainEvery: 20 * time.Millisecond})
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, KeepAliveMs: 200}
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	waitFor(t, func() bool { return testutil.ToFloat64(h.a.m.memUsed) == 0 })
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
}

// Fresh: every call starts its own instance, which is gone afterwards.
func TestPoolFresh(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, Fresh: true}
	for range 3 {
		r := h.invokeFn(t, fn, "/p", "")
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
		if r.Headers[0].Value != "1" {
			t.Fatalf("a fresh instance served %s calls", r.Headers[0].Value)
		}
	}
	waitFor(t, func() bool { return testutil.ToFloat64(h.a.m.memUsed) == 0 && h.warm("sv", "idle") == 0 })
}

// A call that times out destroys its instance only: the pool's other
// instances keep serving, warm, and the pool refills to min_warm.
func TestPoolTimeoutLeavesPoolHealthy(t *testing.T) {
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: ProcessBooter(t.TempDir()), MaintainEvery: 20 * time.Millisecond})
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 500*time.Millisecond)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, MinWarm: 2}
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	waitFor(t, func() bool { return h.warm("sv", "idle") == 2 })
	r := h.invokeFn(t, fn, "/sleep", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, kilnv1.StartKind_START_WARM)
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	waitFor(t, func() bool {
		return h.warm("sv", "idle") == 2 && h.warm("sv", "busy") == 0 && testutil.ToFloat64(h.a.m.memUsed) == 2*64<<20
	})
}

// The on-disk image cache stays within its bound, dropping the least
// recently used image; a dropped image is fetched again when called.
func TestImageCacheBound(t *testing.T) {
	prog := fnProgram(t)
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: ProcessBooter(t.TempDir()), CacheBytes: int64(len(prog)) * 5 / 2})
	var ds []string
	for i, k := range []string{"k1", "k2", "k3"} {
		ds = append(ds, h.add(t, fmt.Sprintf("f%d", i), image.KindExec, []byte(k), prog, 5*time.Second, "exec"))
	}
	for i, d := range ds {
		expect(t, h.invoke(t, fmt.Sprintf("f%d", i), d, "/", "x"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
		time.Sleep(20 * time.Millisecond) // distinct modification times
	}
	files, _ := filepath.Glob(filepath.Join(h.dir, "cache", "*.img"))
	var total int64
	for _, f := range files {
		st, _ := os.Stat(f)
		total += st.Size()
	}
	if len(files) != 2 || total > h.a.cache.maxBytes {
		t.Fatalf("%d files, %d bytes in a cache bounded at %d", len(files), total, h.a.cache.maxBytes)
	}
	// The oldest went; a fresh agent on the cache fetches it again.
	h.reopen(t, Config{MemoryBytes: 1 << 30, Boot: ProcessBooter(t.TempDir()), CacheBytes: int64(len(prog)) * 5 / 2})
	before := h.store.count()
	expect(t, h.invoke(t, "f0", ds[0], "/", "x"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	expect(t, h.invoke(t, "f2", ds[2], "/", "x"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if n := h.store.count() - before; n != 1 {
		t.Fatalf("%d fetches, want 1 (only the trimmed image)", n)
	}
}

// The scheduler's SLA target grows a pool this node runs beyond min_warm;
// when the target goes, the extra instances are reaped after keep_alive.
func TestPoolFollowsSLATarget(t *testing.T) {
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: ProcessBooter(t.TempDir()), MaintainEvery: 20 * time.Millisecond})
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, KeepAliveMs: 300}
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	h.a.setWarmTargets(context.Background(), []*kilnv1.WarmTarget{{Function: fn, Warm: 4}})
	waitFor(t, func() bool { return h.warm("sv", "idle") == 4 })
	time.Sleep(500 * time.Millisecond) // past keep_alive: the target holds them
	if n := h.warm("sv", "idle"); n != 4 {
		t.Fatalf("%d idle under a target of 4", n)
	}
	h.a.setWarmTargets(context.Background(), nil)
	waitFor(t, func() bool { return h.warm("sv", "idle") == 0 })
}

// An agent lifts its open-file limit: thousands of VMs need descriptors.
func TestRaiseOpenFiles(t *testing.T) {
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	got := RaiseOpenFiles(slog.New(slog.DiscardHandler))
	var after unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &after)
	if got != after.Cur || after.Cur < before.Cur || after.Cur < before.Max {
		t.Fatalf("limit %d → %d (hard %d → %d), reported %d", before.Cur, after.Cur, before.Max, after.Max, got)
	}
	// Raising the hard limit needs CAP_SYS_RESOURCE, which a container's
	// root may lack: then the soft limit reaching the hard one is all.
}

// slowBooter delays every start by delay (a restore that costs more than a
// warm call, as on a busy node) and records how many ran at once.
type slowBooter struct {
	boot      Booter
	delay     time.Duration
	mu        sync.Mutex
	now, most int
	starts    int
}

func (b *slowBooter) Boot(cfg vmm.Config) (Machine, error) {
	b.mu.Lock()
	b.now++
	b.starts++
	b.most = max(b.most, b.now)
	b.mu.Unlock()
	time.Sleep(b.delay)
	b.mu.Lock()
	b.now--
	b.mu.Unlock()
	return b.boot(cfg)
}

// A burst of short calls against one busy instance whose calls are far
// shorter than a start queues for it instead of starting an instance per
// call: the restore storm that made the open-loop bench collapse.
func TestBurstQueuesForBusyInstance(t *testing.T) {
	b := &slowBooter{boot: ProcessBooter(t.TempDir()), delay: 500 * time.Millisecond}
	h := newHarness(t, 1<<30, b.Boot)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 10*time.Second)
	expect(t, h.invoke(t, "sv", d, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	expect(t, h.invoke(t, "sv", d, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	resps := make(chan *kilnv1.InvokeResponse, 6)
	for range 6 {
		go func() { resps <- h.invoke(t, "sv", d, "/p", "") }()
	}
	for range 6 {
		if r := <-resps; r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Start != kilnv1.StartKind_START_WARM {
			t.Errorf("got %v/%v (%s), want OK/WARM", r.Outcome, r.Start, r.Error)
		}
	}
	if b.starts != 1 || h.warm("sv", "idle") != 1 {
		t.Fatalf("%d starts, %d idle instances after the burst; want the one instance to have served it", b.starts, h.warm("sv", "idle"))
	}
	if n := testutil.ToFloat64(h.a.m.queued.WithLabelValues("busy_sooner")); n < 1 {
		t.Fatalf("kiln_agent_queued_total{reason=busy_sooner} = %v, want the burst counted", n)
	}
}

// Starts for live calls never exceed MaxColdStarts; a call over the limit
// waits for a start to end and then starts its own instance when no busy
// one is expected to free sooner (here none has finished a call yet: each
// /hold lasts 300 ms, each start 100 ms).
func TestColdStartLimit(t *testing.T) {
	b := &slowBooter{boot: ProcessBooter(t.TempDir()), delay: 100 * time.Millisecond}
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: b.Boot, MaxColdStarts: 1})
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 10*time.Second)
	// Each call holds its instance far longer than a start takes, even on a
	// loaded machine: with /hold (300 ms) a start slowed past it let the
	// third call find the first instance idle and take it warm (right for
	// the agent, wrong for what this test counts).
	resps := make(chan *kilnv1.InvokeResponse, 3)
	for range 3 {
		go func() { resps <- h.invoke(t, "sv", d, "/hold3s", "") }()
	}
	for range 3 {
		if r := <-resps; r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Start != kilnv1.StartKind_START_BOOT {
			t.Errorf("got %v/%v (%s), want OK/BOOT", r.Outcome, r.Start, r.Error)
		}
	}
	if b.most != 1 || b.starts != 3 {
		t.Fatalf("%d starts, at most %d at once; want 3 one at a time", b.starts, b.most)
	}
	if n := testutil.ToFloat64(h.a.m.queued.WithLabelValues("start_limit")); n < 2 {
		t.Fatalf("kiln_agent_queued_total{reason=start_limit} = %v, want at least 2", n)
	}
}

// Calls that take longer than the pool expected make its queue outlast a
// start's time; while the busy instance keeps coming free, the waiters keep
// their places instead of each starting an instance of its own.
func TestQueueKeepsWaitingWhileItMoves(t *testing.T) {
	b := &slowBooter{boot: ProcessBooter(t.TempDir()), delay: 300 * time.Millisecond}
	h := newHarness(t, 1<<30, b.Boot)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 10*time.Second)
	expect(t, h.invoke(t, "sv", d, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	for range 3 { // the pool learns that a call takes a few ms
		expect(t, h.invoke(t, "sv", d, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	}
	// Twenty calls of 20 ms each: 400 ms of queue on the one instance,
	// past the 300 ms a start takes.
	resps := make(chan *kilnv1.InvokeResponse, 20)
	for range 20 {
		go func() { resps <- h.invoke(t, "sv", d, "/hold20", "") }()
	}
	for range 20 {
		if r := <-resps; r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Start != kilnv1.StartKind_START_WARM {
			t.Errorf("got %v/%v (%s), want OK/WARM", r.Outcome, r.Start, r.Error)
		}
	}
	if b.starts != 1 {
		t.Fatalf("%d starts: waiters started instances while the queue was moving", b.starts)
	}
}
