package nodeagent

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/proto/wire"
)

// The hostile-guest suite (issue 13): real guests that attack their host
// in every way a function can — memory, threads, descriptors, output,
// logs, hypercalls, faults, CPU during and after a call, input never read
// — run one after another through a real agent whose VMs all live in ONE
// vmhost worker process, beside a healthy function that a caller keeps
// calling the whole time. Each hostile guest must end with a clear reason
// (an outcome and a message naming what happened, or its output cut with
// a clear error), the healthy function must answer every call correctly
// during and after, the worker must never be killed or replaced, and the
// agent's memory reservations must come back to what the healthy
// function holds.
func TestHostileGuests(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	guest := func(name string) []byte { return kvmtest.Artifact(t, "guests/"+name) }
	// One worker for everything: far more VMs per worker than the suite
	// ever has alive.
	h := newHarnessConfig(t, Config{MemoryBytes: 2 << 30, VMsPerWorker: 64, MaintainEvery: 50 * time.Millisecond})
	if h.a.vmhost == nil {
		t.Fatal("the agent runs no vmhost workers")
	}

	healthy := &kilnv1.FunctionSpec{Name: "healthy", ImageDigest: h.add(t, "healthy", image.KindServe, kernel, guest("echo-serve"), 10*time.Second)}
	expect(t, h.invokeFn(t, healthy, "/", "first"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	workers := h.a.vmhost.Workers()
	if len(workers) != 1 {
		t.Fatalf("workers %v after the first VM, want one", workers)
	}
	baseline := h.a.capacity().MemoryBytesUsed

	caller := startHealthyCaller(h, healthy)
	defer caller.stop()

	// Each hostile function gets a short keep-alive, so that once the
	// suite is over only the healthy function's instance is left.
	const keep = 300
	fn := func(name, kind string, program []byte, timeout time.Duration, edit func(*kilnv1.FunctionSpec)) *kilnv1.FunctionSpec {
		f := &kilnv1.FunctionSpec{Name: name, ImageDigest: h.add(t, name, kind, kernel, program, timeout), KeepAliveMs: keep}
		if edit != nil {
			edit(f)
		}
		return f
	}
	call := func(t *testing.T, f *kilnv1.FunctionSpec, body string) *kilnv1.InvokeResponse {
		t.Helper()
		t0 := time.Now()
		r := h.invokeFn(t, f, "/", body)
		t.Logf("%s %.20q: %v/%v in %v, status %d, %d exits, error %q, body %.80q, %d bytes of stderr",
			f.Name, body, r.Outcome, r.Start, time.Since(t0).Round(time.Millisecond), r.Status, r.VmExits, r.Error, r.Body, len(r.Stderr))
		return r
	}
	want := func(t *testing.T, r *kilnv1.InvokeResponse, o kilnv1.Outcome, msg string) {
		t.Helper()
		if r.Outcome != o || !strings.Contains(r.Error, msg) {
			t.Fatalf("%v %q (log %q), want %v with an error naming %q", r.Outcome, r.Error, r.LogTail, o, msg)
		}
	}
	killed := func() float64 { return testutil.ToFloat64(h.a.m.instancesKilled.WithLabelValues(killIdleSpin)) }

	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"discard storm", func(t *testing.T) {
			// One-page madvise(MADV_DONTNEED) calls over a region filled
			// after the snapshot point, every other page: booted, then on a
			// restore of that snapshot (where each once split the worker's
			// mapping of guest RAM, issue 13 finding 1). 400 MiB by default:
			// the 51,200 discards (~30 s here), which a restore
			// survives in the jailed worker since restores map only the
			// snapshot's pages from its memfd (vmm.mapSnapshotMemory);
			// KILN_HOSTILE_DISCARD_MIB sets another size.
			mib := 400
			if v, err := strconv.Atoi(os.Getenv("KILN_HOSTILE_DISCARD_MIB")); err == nil && v > 0 && v <= 1024 {
				mib = v
			}
			// A quarter more, and room for the kernel, image and stack; a
			// multiple of 2 MiB.
			vmMem := uint64((mib+mib/4+54)/2*2) << 20
			f := fn("discard-storm", image.KindExec, guest("discard-storm"), 120*time.Second, func(f *kilnv1.FunctionSpec) {
				f.Args, f.MemoryBytes = []string{strconv.Itoa(mib), "post"}, vmMem
			})
			input := strings.Repeat("x", 255) + "\n" + "go\n" // the first read takes 256 bytes, the second the rest
			for _, start := range []kilnv1.StartKind{kilnv1.StartKind_START_BOOT, kilnv1.StartKind_START_RESTORE} {
				r := call(t, f, input)
				expect(t, r, kilnv1.Outcome_OUTCOME_OK, start)
				if !strings.Contains(string(r.Body), fmt.Sprintf("SUCCESS discards=%d ", mib<<20/8192)) {
					t.Fatalf("stdout %q", r.Body)
				}
			}
		}},
		{"fd storm", func(t *testing.T) {
			r := call(t, fn("fd-storm", image.KindExec, guest("fd-storm"), 30*time.Second, nil), "")
			want(t, r, kilnv1.Outcome_OUTCOME_OK, "")
			m := regexp.MustCompile(`SUCCESS fds=(\d+) pipes=\d+ eventfds=\d+ epolls=\d+ dups=\d+ refused=(EMFILE|ENFILE)`).FindSubmatch(r.Body)
			if m == nil {
				t.Fatalf("stdout %q", r.Body)
			}
			// The guest kernel's table holds 256, three of them stdio.
			if n, _ := strconv.Atoi(string(m[1])); n < 200 {
				t.Fatalf("only %d descriptors before the refusal: %q", n, r.Body)
			}
		}},
		{"output flood exec", func(t *testing.T) {
			// 96 MiB of stdout against a 64 MiB cap.
			r := call(t, fn("out-flood", image.KindExec, guest("out-flood"), 60*time.Second, nil), "")
			want(t, r, kilnv1.Outcome_OUTCOME_CRASHED, fmt.Sprintf("stdout exceeded %d bytes", wire.MaxBody))
			if len(r.Body) != 0 || !strings.Contains(string(r.Stderr), fmt.Sprintf("wrote %d bytes", 96<<20)) {
				t.Fatalf("%d bytes of body; stderr %q", len(r.Body), r.Stderr)
			}
		}},
		{"output flood serve", func(t *testing.T) {
			// A response frame announcing an 80 MiB body.
			f := fn("out-flood-serve", image.KindServe, guest("out-flood"), 30*time.Second, func(f *kilnv1.FunctionSpec) { f.Args = []string{"serve"} })
			expect(t, call(t, f, "ok"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
			r := call(t, f, "flood")
			want(t, r, kilnv1.Outcome_OUTCOME_CRASHED, "malformed response")
			if !strings.Contains(r.Error, fmt.Sprintf("body is %d bytes, limit %d", 80<<20, wire.MaxBody)) || r.Start != kilnv1.StartKind_START_WARM {
				t.Fatalf("%v: %q", r.Start, r.Error)
			}
			// That instance is gone; the next call gets a new one.
			if r := call(t, f, "ok"); r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Start == kilnv1.StartKind_START_WARM {
				t.Fatalf("after the flood: %v/%v %q", r.Outcome, r.Start, r.Error)
			}
		}},
		{"log flood", func(t *testing.T) {
			// 16 MiB of numbered stderr lines against a 64 KiB ring.
			f := fn("log-flood", image.KindServe, guest("log-flood"), 60*time.Second, nil)
			r := call(t, f, "16")
			lines := (16 << 20) / 24
			expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
			if string(r.Body) != fmt.Sprintf("lines=%d", lines) {
				t.Fatalf("body %q", r.Body)
			}
			// What the call carries is the ring's worth at most: a run of
			// consecutive lines, in order. How recent they are is not
			// asserted: vmhost pumps stderr apart from the answer, and in a
			// CI rehearsal the call's answer came ~6,800 lines (160 KiB)
			// ahead of its stderr — an open bug (the note of issue 13), not
			// a property to pin here.
			got := strings.Split(strings.TrimSuffix(string(r.Stderr), "\n"), "\n")
			var first, final int
			fmt.Sscanf(got[min(1, len(got)-1)], "log-flood line %d", &first)
			fmt.Sscanf(got[len(got)-1], "log-flood line %d", &final)
			if len(r.Stderr) > StderrRing || len(got) < 100 || final-first != len(got)-2 || final > lines {
				t.Fatalf("%d bytes of stderr (ring %d): lines %d to %d of %d", len(r.Stderr), StderrRing, first, final, lines)
			}
			// The instance survives its flood and keeps answering.
			r = call(t, f, "1")
			expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
		}},
		{"hypercall storm", func(t *testing.T) {
			f := fn("hc-storm", image.KindServe, guest("hc-storm"), 30*time.Second, nil)
			// Counted: each no-op HC_IO is one exit the VMM serves (a few
			// thousand a second on a nested host).
			r := call(t, f, "io 5000")
			expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
			if string(r.Body) != "hypercalls=5000" || r.VmExits < 5000 {
				t.Fatalf("body %q after %d exits", r.Body, r.VmExits)
			}
			// Without end: the deadline stops it.
			t0 := time.Now()
			f.TimeoutMs = 2000
			r = call(t, f, "io")
			want(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, "no response before the deadline")
			if r.VmExits < 100 || time.Since(t0) > 10*time.Second {
				t.Fatalf("%d exits in %v", r.VmExits, time.Since(t0))
			}
			// A doorbell no hypercall owns, and a flush from past RAM.
			want(t, call(t, f, "bad"), kilnv1.Outcome_OUTCOME_CRASHED, "hypercall")
			r = call(t, f, "range")
			want(t, r, kilnv1.Outcome_OUTCOME_CRASHED, "")
			if !strings.Contains(r.Error, "outside") && !strings.Contains(r.Error, "past") && !strings.Contains(r.Error, "bounds") {
				t.Fatalf("a flush from past RAM ended with %q", r.Error)
			}
		}},
		{"spin after answering", func(t *testing.T) {
			f := fn("spin-after", image.KindServe, guest("spin-after"), 10*time.Second, func(f *kilnv1.FunctionSpec) { f.MinWarm = 1 })
			before := killed()
			r := call(t, f, "then-spin")
			expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
			if string(r.Body) != "answered, now spinning" {
				t.Fatalf("body %q", r.Body)
			}
			// Parked idle and spinning: destroyed past the budget, and
			// min_warm starts another.
			t0 := time.Now()
			waitLong(t, 20*time.Second, func() bool { return killed() == before+1 })
			t.Logf("destroyed %v after it answered", time.Since(t0).Round(time.Millisecond))
			waitLong(t, 20*time.Second, func() bool { return h.warm("spin-after", "idle") == 1 })
			expect(t, call(t, f, "ok"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)

			// A call that is busy for three times the budget is the call's
			// CPU, not idle time: its instance is parked afterwards and
			// lives on.
			r = call(t, f, "burn 1500")
			expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
			if string(r.Body) != "burned 1500" {
				t.Fatalf("body %q", r.Body)
			}
			time.Sleep(1500 * time.Millisecond)
			if k := killed(); k != before+1 {
				t.Fatalf("%v instances killed for spinning after a busy call, want %v", k, before+1)
			}
			// Back to no min_warm: the pool empties after its keep-alive.
			f.MinWarm = 0
			expect(t, call(t, f, "ok"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
		}},
		{"never reads its input", func(t *testing.T) {
			f := fn("no-read", image.KindServe, guest("no-read"), 1500*time.Millisecond, nil)
			// A body larger than the pipe: the agent's writer blocks too.
			for _, body := range []string{strings.Repeat("r", 1<<20), "small"} {
				r := call(t, f, body)
				want(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, "no response before the deadline")
				if r.Start == kilnv1.StartKind_START_WARM || !strings.Contains(string(r.LogTail), "never read fd 0") {
					t.Fatalf("%v, log %q", r.Start, r.LogTail)
				}
			}
		}},
		{"membomb", func(t *testing.T) {
			r := call(t, fn("membomb", image.KindExec, guest("membomb"), 30*time.Second, nil), "")
			want(t, r, kilnv1.Outcome_OUTCOME_OK, "")
			var n int
			if i := strings.Index(string(r.Body), "SUCCESS"); i < 0 {
				t.Fatalf("stdout %q", r.Body)
			} else if _, err := fmt.Sscanf(string(r.Body[i:]), "SUCCESS: %d chunks", &n); err != nil || n < 40 || n > 60 {
				t.Fatalf("%d MiB allocated in a 64 MiB VM (%v)", n, err)
			}
		}},
		{"thread bomb", func(t *testing.T) {
			r := call(t, fn("thr-bomb", image.KindExec, guest("thr-bomb"), 30*time.Second, func(f *kilnv1.FunctionSpec) { f.Args = []string{"bomb"} }), "")
			want(t, r, kilnv1.Outcome_OUTCOME_OK, "")
			if !strings.Contains(string(r.Body), "SUCCESS") || !strings.Contains(string(r.Body), "threads=") {
				t.Fatalf("stdout %q", r.Body)
			}
		}},
		{"triple fault", func(t *testing.T) {
			r := call(t, fn("idt-smash", image.KindExec, kvmtest.Artifact(t, "vmmguests/idt_smash"), 30*time.Second, nil), "")
			want(t, r, kilnv1.Outcome_OUTCOME_CRASHED, "triple fault")
		}},
		{"segfault", func(t *testing.T) {
			r := call(t, fn("faults", image.KindExec, guest("faults"), 30*time.Second, func(f *kilnv1.FunctionSpec) { f.Args = []string{"null"} }), "")
			want(t, r, kilnv1.Outcome_OUTCOME_CRASHED, "SIGSEGV")
		}},
		{"bad pointers", func(t *testing.T) {
			r := call(t, fn("efault", image.KindExec, guest("efault"), 30*time.Second, nil), "some input")
			want(t, r, kilnv1.Outcome_OUTCOME_OK, "")
			if !strings.Contains(string(r.Body), "SUCCESS") {
				t.Fatalf("stdout %q", r.Body)
			}
		}},
		{"infinite loop", func(t *testing.T) {
			r := call(t, fn("spin", image.KindExec, kvmtest.Artifact(t, "vmmguests/spin"), 1500*time.Millisecond, nil), "")
			want(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, "deadline")
			f := fn("looper", image.KindServe, guest("echo-serve"), 1500*time.Millisecond, nil)
			expect(t, call(t, f, "hi"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
			r = call(t, f, "spin")
			want(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, "no response before the deadline")
		}},
	}
	for _, c := range cases {
		n0 := caller.answered()
		t0 := time.Now()
		if !t.Run(c.name, c.run) {
			continue
		}
		took, during := time.Since(t0), caller.answered()-n0
		t.Logf("%s: %v, the healthy function answered %d calls meanwhile", c.name, took.Round(time.Millisecond), during)
		// Long enough for many calls: the healthy function must have
		// answered some of them, not waited for the hostile one to end.
		if took > 2*time.Second && during == 0 {
			t.Errorf("%s: the healthy function answered nothing in %v", c.name, took)
		}
		// And right after: answered.
		if r := h.invokeFn(t, healthy, "/", "after "+c.name); r.Outcome != kilnv1.Outcome_OUTCOME_OK || string(r.Body) != "after "+c.name {
			t.Errorf("after %s the healthy function answered %v %q %q", c.name, r.Outcome, r.Error, r.Body)
		}
	}
	n, failures, worst := caller.stop()
	t.Logf("healthy function: %d calls answered during the suite, slowest %v", n, worst.Round(time.Millisecond))
	for _, f := range failures {
		t.Error(f)
	}

	// The one worker is the one from the start: never killed or replaced.
	if w := h.a.vmhost.Workers(); !slices.Equal(w, workers) {
		t.Errorf("workers %v at the end, %v at the start", w, workers)
	}
	if v := testutil.CollectAndCount(h.a.m.workersKilled); v != 0 {
		t.Errorf("kiln_agent_workers_killed_total has %d series, want none", v)
	}
	for _, name := range []string{"healthy", "discard-storm", "fd-storm", "out-flood", "out-flood-serve", "log-flood", "hc-storm", "spin-after", "no-read"} {
		for _, start := range []string{"boot", "restore", "warm"} {
			if v := testutil.ToFloat64(h.a.m.invocations.WithLabelValues(name, start, "platform_error")); v != 0 {
				t.Errorf("%s: %v invocations lost with a worker", name, v)
			}
		}
	}
	// Reservations back to the healthy function's instance alone.
	waitLong(t, 30*time.Second, func() bool {
		h.a.mu.Lock()
		defer h.a.mu.Unlock()
		return h.a.used == baseline && len(h.a.instances) == 1 && len(h.a.machines) == 0
	})
	if r := h.invokeFn(t, healthy, "/", "last"); r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Start != kilnv1.StartKind_START_WARM {
		t.Fatalf("the healthy function at the end: %v/%v %q", r.Outcome, r.Start, r.Error)
	}
}

// healthyCaller calls a function over and over, one call at a time, and
// checks every answer: the neighbour the hostile guests must not disturb.
type healthyCaller struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	n        int
	failures []string
	worst    time.Duration
}

func startHealthyCaller(h *harness, f *kilnv1.FunctionSpec) *healthyCaller {
	c := &healthyCaller{done: make(chan struct{})}
	c.wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-c.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			body := fmt.Sprintf("healthy %d", i)
			t0 := time.Now()
			r, err := h.a.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: body, Function: f, Method: "POST", Path: "/", Body: []byte(body)})
			took := time.Since(t0)
			c.mu.Lock()
			switch {
			case err != nil:
				c.failures = append(c.failures, fmt.Sprintf("healthy call %d: %v", i, err))
			case r.Outcome != kilnv1.Outcome_OUTCOME_OK || string(r.Body) != body:
				c.failures = append(c.failures, fmt.Sprintf("healthy call %d: %v %q, body %q", i, r.Outcome, r.Error, r.Body))
			default:
				c.n++
				c.worst = max(c.worst, took)
			}
			c.mu.Unlock()
		}
	})
	return c
}

func (c *healthyCaller) answered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// stop ends the calls (again: nothing) and says how they went.
func (c *healthyCaller) stop() (int, []string, time.Duration) {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.failures, c.worst
}

func waitLong(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("condition not met within %v", d)
}
