package nodeagent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kilnfaas/kiln/builder/image"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/unikernel/abi"
)

// store is an in-memory ImageFetcher that counts fetches and can be told
// to lie.
type store struct {
	mu      sync.Mutex
	images  map[string][]byte
	fetches int
}

func (s *store) Fetch(ctx context.Context, digest string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetches++
	b, ok := s.images[digest]
	if !ok {
		return nil, fmt.Errorf("%w: %s", imagestore.ErrNotFound, digest)
	}
	return b, nil
}

func (s *store) count() int { s.mu.Lock(); defer s.mu.Unlock(); return s.fetches }

var (
	fnOnce sync.Once
	fnPath string
	fnErr  error
)

// fnProgram builds testdata/fn, a real program run as a host process by
// ProcessBooter: the agent's logic is tested for real on hosts without KVM.
func fnProgram(t *testing.T) []byte {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("host-process tests need the go tool to build testdata/fn")
	}
	fnOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-fn-")
		if err != nil {
			fnErr = err
			return
		}
		fnPath = filepath.Join(dir, "fn")
		out, err := exec.Command("go", "build", "-o", fnPath, "./testdata/fn").CombinedOutput()
		if err != nil {
			fnErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if fnErr != nil {
		t.Fatal(fnErr)
	}
	b, err := os.ReadFile(fnPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type harness struct {
	a     *Agent
	store *store
	reg   *prometheus.Registry
	dir   string
}

func newHarness(t *testing.T, budget uint64, boot Booter) *harness {
	t.Helper()
	if boot == nil {
		boot = ProcessBooter(t.TempDir())
	}
	return newHarnessConfig(t, Config{MemoryBytes: budget, Boot: boot})
}

// newHarnessConfig fills in the node, images, cache and metrics of cfg;
// Boot nil is the KVM booter with snapshots.
func newHarnessConfig(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{store: &store{images: map[string][]byte{}}, reg: prometheus.NewRegistry(), dir: t.TempDir()}
	cfg.Node, cfg.Images, cfg.CacheDir, cfg.Registerer = "test-node", h.store, filepath.Join(h.dir, "cache"), h.reg
	var err error
	h.a, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.a.Close() })
	return h
}

// reopen closes the agent and starts another on the same cache directory
// (images and snapshots), as a restarted node-agent would.
func (h *harness) reopen(t *testing.T, cfg Config) {
	t.Helper()
	h.a.Close()
	h.reg = prometheus.NewRegistry()
	cfg.Node, cfg.Images, cfg.CacheDir, cfg.Registerer = "test-node", h.store, filepath.Join(h.dir, "cache"), h.reg
	var err error
	if h.a, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.a.Close() })
}

// add builds an image of program and puts it in the store.
func (h *harness) add(t *testing.T, name, kind string, kernel, program []byte, timeout time.Duration, args ...string) string {
	t.Helper()
	data, digest, err := image.Build(image.Manifest{ABIVersion: abi.Version, Name: name, Kind: kind, MemoryBytes: 64 << 20,
		TimeoutMS: timeout.Milliseconds(), Env: []string{"GREETING=hi"}, Args: args}, kernel, program)
	if err != nil {
		t.Fatal(err)
	}
	h.store.mu.Lock()
	h.store.images[digest] = data
	h.store.mu.Unlock()
	return digest
}

func (h *harness) invoke(t *testing.T, name, digest, path string, body string) *kilnv1.InvokeResponse {
	t.Helper()
	return h.invokeFn(t, &kilnv1.FunctionSpec{Name: name, ImageDigest: digest}, path, body)
}

func (h *harness) invokeFn(t *testing.T, fn *kilnv1.FunctionSpec, path string, body string) *kilnv1.InvokeResponse {
	t.Helper()
	resp, err := h.a.Invoke(context.Background(), &kilnv1.InvokeRequest{
		InvocationId: fn.Name + path,
		Function:     fn,
		Method:       "POST", Path: path, Query: "q=1",
		Headers: []*kilnv1.Header{{Name: "content-type", Value: "text/plain"}},
		Body:    []byte(body),
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Node != "test-node" {
		t.Fatalf("node %q", resp.Node)
	}
	return resp
}

func expect(t *testing.T, resp *kilnv1.InvokeResponse, o kilnv1.Outcome, start kilnv1.StartKind) {
	t.Helper()
	if resp.Outcome != o || resp.Start != start {
		t.Fatalf("got %v/%v (error %q, log %q), want %v/%v", resp.Outcome, resp.Start, resp.Error, resp.LogTail, o, start)
	}
}

func TestExecHost(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "ex", image.KindExec, []byte("kernel"), fnProgram(t), 2*time.Second, "exec")

	r := h.invoke(t, "ex", d, "/", "payload")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if string(r.Body) != "exec:payload" || r.Status != 200 || r.ExecNs <= 0 || r.StartNs <= 0 {
		t.Fatalf("%+v", r)
	}

	r = h.invoke(t, "ex", d, "/", "fail")
	expect(t, r, kilnv1.Outcome_OUTCOME_FUNCTION_ERROR, kilnv1.StartKind_START_BOOT)
	wantTail := ""
	for i := 11; i <= 30; i++ {
		wantTail += fmt.Sprintf("line %d\n", i)
	}
	if r.Status != 7 || r.Error != "exit status 7" || string(r.LogTail) != wantTail {
		t.Fatalf("function error: status %d error %q tail %q", r.Status, r.Error, r.LogTail)
	}

	r = h.invoke(t, "ex", d, "/", "kill")
	expect(t, r, kilnv1.Outcome_OUTCOME_CRASHED, kilnv1.StartKind_START_BOOT)
	if !strings.Contains(r.Error, "killed") {
		t.Fatalf("crash message %q", r.Error)
	}

	t0 := time.Now()
	r = h.invoke(t, "ex", d, "/", "sleep")
	expect(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, kilnv1.StartKind_START_BOOT)
	if el := time.Since(t0); el < 2*time.Second || el > 10*time.Second {
		t.Fatalf("timeout after %v, function timeout is 2s", el)
	}
	// Every VM is gone and its memory back (torn down after the answer).
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 0 })
	if v := testutil.ToFloat64(h.a.m.invocations.WithLabelValues("ex", "boot", "timeout")); v != 1 {
		t.Fatalf("invocations{timeout} = %v", v)
	}
	if v := testutil.ToFloat64(h.a.m.invocations.WithLabelValues("ex", "boot", "ok")); v != 1 {
		t.Fatalf("invocations{ok} = %v", v)
	}
}

func TestServeHost(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 2*time.Second)

	r := h.invoke(t, "sv", d, "/a", "one")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if r.Status != 201 || string(r.Body) != "POST /a?q=1 env=hi one" || r.StartNs <= 0 {
		t.Fatalf("first: %+v", r)
	}
	if len(r.Headers) != 1 || r.Headers[0].Name != "x-served" || r.Headers[0].Value != "1" {
		t.Fatalf("headers %v", r.Headers)
	}
	c := h.a.capacity()
	if c.MemoryBytesUsed != 64<<20 || len(c.Warm) != 1 || c.Warm[0].ImageDigest != d || c.Warm[0].Idle != 1 || c.Warm[0].Busy != 0 {
		t.Fatalf("capacity after boot: %v", c)
	}
	// The same instance answers: its own count of requests goes up.
	r = h.invoke(t, "sv", d, "/b", "two")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	if r.Headers[0].Value != "2" || r.StartNs != 0 {
		t.Fatalf("warm: %+v", r)
	}

	// A crash mid-request fails that request with the log, and the next
	// one boots a fresh instance.
	r = h.invoke(t, "sv", d, "/crash", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_CRASHED, kilnv1.StartKind_START_WARM)
	if !strings.Contains(r.Error, "exited (status 3)") || !strings.Contains(string(r.LogTail), "about to crash") {
		t.Fatalf("crash: error %q tail %q", r.Error, r.LogTail)
	}
	r = h.invoke(t, "sv", d, "/c", "three")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if r.Headers[0].Value != "1" {
		t.Fatalf("after crash the instance must be new: %v", r.Headers)
	}

	// A response that never comes: timeout, instance destroyed.
	t0 := time.Now()
	r = h.invoke(t, "sv", d, "/sleep", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, kilnv1.StartKind_START_WARM)
	if el := time.Since(t0); el < 2*time.Second || el > 10*time.Second {
		t.Fatalf("timeout after %v", el)
	}
	waitFor(t, func() bool { c := h.a.capacity(); return c.MemoryBytesUsed == 0 && len(c.Warm) == 0 })
	r = h.invoke(t, "sv", d, "/d", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)

	// Bytes that are not a frame: crashed.
	r = h.invoke(t, "sv", d, "/garbage", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_CRASHED, kilnv1.StartKind_START_WARM)
	if !strings.Contains(r.Error, "malformed response") {
		t.Fatalf("garbage: %q", r.Error)
	}
	r = h.invoke(t, "sv", d, "/e", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
}

// With max_instances 1, concurrent calls queue for the one instance and
// it serves them one at a time.
func TestServeMaxInstancesSerializes(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, MaxInstances: 1}
	var wg sync.WaitGroup
	seen := make(chan string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := h.invokeFn(t, fn, "/p", fmt.Sprint(i))
			if r.Outcome != kilnv1.Outcome_OUTCOME_OK {
				t.Errorf("%v %s", r.Outcome, r.Error)
				return
			}
			seen <- r.Headers[0].Value
		}()
	}
	wg.Wait()
	close(seen)
	got := map[string]bool{}
	for v := range seen {
		got[v] = true
	}
	if len(got) != 8 || !got["1"] || !got["8"] {
		t.Fatalf("served counts %v", got)
	}
}

// Without a bound, concurrent calls get instances of their own, each
// serving one call at a time, and they all stay warm afterwards.
func TestServeScalesOut(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// /hold answers after 300 ms: the four calls overlap.
			if r := h.invoke(t, "sv", d, "/hold", ""); r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Headers[0].Value != "1" {
				t.Errorf("%v %s served=%v", r.Outcome, r.Error, r.Headers)
			}
		}()
	}
	wg.Wait()
	idle := testutil.ToFloat64(h.a.m.warm.WithLabelValues("sv", "idle"))
	if idle != 4 {
		t.Fatalf("%v idle instances after four overlapping calls, want 4", idle)
	}
	expect(t, h.invoke(t, "sv", d, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
}

func TestMemoryBudget(t *testing.T) {
	h := newHarness(t, 100<<20, nil)
	prog := fnProgram(t)
	d1 := h.add(t, "one", image.KindServe, []byte("kernel"), prog, 3*time.Second)
	d2 := h.add(t, "two", image.KindServe, []byte("kernel-2"), prog, 3*time.Second)
	expect(t, h.invoke(t, "one", d1, "/", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	// 64 MiB idle + 64 MiB more > 100 MiB: the idle instance of "one" makes
	// way for a live call of "two".
	expect(t, h.invoke(t, "two", d2, "/", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if v := testutil.ToFloat64(h.a.m.evictions); v != 1 {
		t.Fatalf("kiln_agent_evictions_total = %v, want 1", v)
	}
	if v := testutil.ToFloat64(h.a.m.memUsed); v != 64<<20 {
		t.Fatalf("kiln_agent_memory_bytes_used = %v", v)
	}
	// A busy instance is never evicted: while "one" runs, "two" finds no room.
	busy := make(chan *kilnv1.InvokeResponse, 1)
	go func() { busy <- h.invoke(t, "one", d1, "/hold", "") }()
	waitFor(t, func() bool { return testutil.ToFloat64(h.a.m.warm.WithLabelValues("one", "busy")) == 1 })
	r := h.invoke(t, "two", d2, "/", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_NO_CAPACITY, kilnv1.StartKind_START_UNSPECIFIED)
	if !strings.Contains(r.Error, "needs 64 MiB, 64 of 100 MiB in use") {
		t.Fatalf("%q", r.Error)
	}
	expect(t, <-busy, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 5 s")
}

func TestImageCache(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "ex", image.KindExec, []byte("kernel"), fnProgram(t), 2*time.Second, "exec")
	expect(t, h.invoke(t, "ex", d, "/", "a"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	expect(t, h.invoke(t, "ex", d, "/", "b"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if n := h.store.count(); n != 1 {
		t.Fatalf("fetched %d times", n)
	}
	// A fresh agent on the same cache dir reads the disk, not the store.
	a2, err := New(Config{Node: "n2", MemoryBytes: 1 << 30, Images: h.store, CacheDir: filepath.Join(h.dir, "cache"), Boot: ProcessBooter(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if _, err := a2.cache.get(context.Background(), d); err != nil || h.store.count() != 1 {
		t.Fatalf("from disk: %v, fetches %d", err, h.store.count())
	}
	// A corrupt cache file is deleted and fetched again.
	p := a2.cache.path(d)
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0xff
	os.WriteFile(p, b, 0o644)
	a3, _ := New(Config{Node: "n3", MemoryBytes: 1 << 30, Images: h.store, CacheDir: filepath.Join(h.dir, "cache"), Boot: ProcessBooter(t.TempDir())})
	defer a3.Close()
	if _, err := a3.cache.get(context.Background(), d); err != nil || h.store.count() != 2 {
		t.Fatalf("after corruption: %v, fetches %d", err, h.store.count())
	}
	if b2, _ := os.ReadFile(p); image.Verify(b2, d) != nil {
		t.Fatal("the cache file was not replaced by a good copy")
	}

	// A store that returns other bytes than asked for: bad image.
	other := image.Digest([]byte("something else"))
	h.store.mu.Lock()
	h.store.images[other] = h.store.images[d]
	h.store.mu.Unlock()
	r := h.invoke(t, "ex", other, "/", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_BAD_IMAGE, kilnv1.StartKind_START_UNSPECIFIED)
	if !strings.Contains(r.Error, "digest mismatch") {
		t.Fatalf("%q", r.Error)
	}
	for _, bad := range []string{"sha256:nothex", "../../etc/passwd", image.Digest([]byte("missing"))} {
		r := h.invoke(t, "ex", bad, "/", "")
		expect(t, r, kilnv1.Outcome_OUTCOME_BAD_IMAGE, kilnv1.StartKind_START_UNSPECIFIED)
	}
	// Kind mismatch between the deployment and the image.
	resp, _ := h.a.Invoke(context.Background(), &kilnv1.InvokeRequest{Function: &kilnv1.FunctionSpec{Name: "ex", ImageDigest: d, Kind: kilnv1.Kind_KIND_SERVE}})
	if resp.Outcome != kilnv1.Outcome_OUTCOME_BAD_IMAGE {
		t.Fatalf("kind mismatch: %v", resp)
	}
}

func TestRingTail(t *testing.T) {
	r := newRing(16)
	r.Write([]byte("aaaa\nbbbb\n"))
	r.Write([]byte("cccc\ndddd\n"))
	if got := string(r.tail(2, 0)); got != "cccc\ndddd\n" {
		t.Fatalf("%q", got)
	}
	// Only 16 bytes are kept: the first line is cut.
	if got := string(r.tail(10, 0)); got != "\nbbbb\ncccc\ndddd\n" {
		t.Fatalf("%q", got)
	}
	mark := r.written()
	r.Write([]byte("eeee"))
	if got := string(r.tail(10, mark)); got != "eeee" {
		t.Fatalf("since mark: %q", got)
	}
	if got := string(lastLines([]byte("x\ny"), 1)); got != "y" {
		t.Fatalf("%q", got)
	}
}

func TestCloseRefuses(t *testing.T) {
	h := newHarness(t, 1<<30, nil)
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 2*time.Second)
	expect(t, h.invoke(t, "sv", d, "/", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	h.a.Close()
	if c := h.a.capacity(); c.MemoryBytesUsed != 0 {
		t.Fatalf("after Close: %v", c)
	}
	r := h.invoke(t, "sv", d, "/", "")
	if r.Outcome != kilnv1.Outcome_OUTCOME_NO_CAPACITY || !strings.Contains(r.Error, "closed") {
		t.Fatalf("%+v", r)
	}
}
