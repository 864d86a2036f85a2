package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// These boot real unikernels with the production Booter (BootVM): the
// kernel and guests built by `make build-guest`.

func kvmHarness(t *testing.T) (*harness, []byte) {
	t.Helper()
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	return newHarnessConfig(t, Config{MemoryBytes: 1 << 30}), kernel
}

func TestKVMExecCat(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "cat", image.KindExec, kernel, kvmtest.Artifact(t, "guests/cat"), 10*time.Second)
	body := strings.Repeat("kiln ", 20000) // 100 KB: more than one input exit
	r := h.invoke(t, "cat", d, "/", body)
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if string(r.Body) != body || r.VmExits == 0 || r.StartNs <= 0 || r.ExecNs <= 0 {
		t.Fatalf("cat: %d bytes back, exits %d, start %d ns, exec %d ns", len(r.Body), r.VmExits, r.StartNs, r.ExecNs)
	}
	t.Logf("exec cat: boot %.2f ms, exec %.2f ms, %d exits", float64(r.StartNs)/1e6, float64(r.ExecNs)/1e6, r.VmExits)
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 0 })
}

func TestKVMExecTimeout(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "spin", image.KindExec, kernel, kvmtest.Artifact(t, "vmmguests/spin"), 500*time.Millisecond)
	t0 := time.Now()
	r := h.invoke(t, "spin", d, "/", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, kilnv1.StartKind_START_BOOT)
	if el := time.Since(t0); el > 10*time.Second {
		t.Fatalf("a 500 ms timeout took %v", el)
	}
}

func TestKVMServeHello(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "hello", image.KindServe, kernel, kvmtest.Artifact(t, "examples/hello-c/hello"), 10*time.Second)
	r := h.invoke(t, "hello", d, "/", "kiln")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if r.Status != 200 || string(r.Body) != "hello, kiln" || r.StartNs <= 0 {
		t.Fatalf("first: %+v", r)
	}
	t.Logf("serve hello boot: start %.2f ms, exec %.2f ms, %d exits", float64(r.StartNs)/1e6, float64(r.ExecNs)/1e6, r.VmExits)
	for i := 0; i < 5; i++ {
		r = h.invoke(t, "hello", d, "/", "again")
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
		if string(r.Body) != "hello, again" || r.StartNs != 0 || r.VmExits == 0 {
			t.Fatalf("warm: %+v", r)
		}
	}
	t.Logf("serve hello warm: exec %.3f ms, %d exits", float64(r.ExecNs)/1e6, r.VmExits)
	if c := h.a.capacity(); len(c.Warm) != 1 || c.Warm[0].Idle != 1 || c.MemoryBytesUsed != 64<<20 {
		t.Fatalf("capacity: %v", c)
	}
}

// The first cold start of a shape boots and takes its snapshot; every later
// one restores it, answers exactly as the boot did, and is faster.
func TestKVMServeRestore(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "hello", image.KindServe, kernel, kvmtest.Artifact(t, "examples/hello-c/hello"), 20*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "hello", ImageDigest: d, Fresh: true}
	boot := h.invokeFn(t, fn, "/", "kiln")
	expect(t, boot, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if n := testutil.ToFloat64(h.a.m.snapshots.WithLabelValues("taken")); n != 1 {
		t.Fatalf("%v snapshots taken, want 1", n)
	}
	for i := range 3 {
		r := h.invokeFn(t, fn, "/", "kiln")
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
		if string(r.Body) != string(boot.Body) || r.Status != boot.Status {
			t.Fatalf("restore %d answered %d %q, the boot %d %q", i, r.Status, r.Body, boot.Status, boot.Body)
		}
		t.Logf("restore %d: start %.2f ms (boot %.2f ms), exec %.2f ms, %d exits", i, float64(r.StartNs)/1e6,
			float64(boot.StartNs)/1e6, float64(r.ExecNs)/1e6, r.VmExits)
	}
	// A pooled function: the second overlapping call restores; both stay warm.
	pooled := &kilnv1.FunctionSpec{Name: "hello", ImageDigest: d}
	expect(t, h.invokeFn(t, pooled, "/", "a"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
	expect(t, h.invokeFn(t, pooled, "/", "b"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	waitFor(t, func() bool { return h.warm("hello", "idle") == 1 })
}

// Exec functions run on a restore of the snapshot taken at their first read
// of stdin, each with its own input.
func TestKVMExecRestore(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "cat", image.KindExec, kernel, kvmtest.Artifact(t, "guests/cat"), 20*time.Second)
	expect(t, h.invoke(t, "cat", d, "/", "first"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	for _, body := range []string{"second", strings.Repeat("kiln ", 20000), ""} {
		r := h.invoke(t, "cat", d, "/", body)
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
		if string(r.Body) != body {
			t.Fatalf("restored cat gave %d bytes, want %d", len(r.Body), len(body))
		}
	}
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 0 })
}

// A corrupt snapshot file is found when a restarted agent opens it: never
// restored, removed, and a boot takes a good one again.
func TestKVMSnapshotCorruptRebuilt(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "hello", image.KindServe, kernel, kvmtest.Artifact(t, "examples/hello-c/hello"), 20*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "hello", ImageDigest: d, Fresh: true}
	expect(t, h.invokeFn(t, fn, "/", "a"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	files, _ := filepath.Glob(filepath.Join(h.dir, "cache", "snapshots", "*.snap"))
	if len(files) != 1 {
		t.Fatalf("snapshot files %v, want one", files)
	}
	h.a.Close()
	f, err := os.OpenFile(files[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// One flipped byte in guest RAM (the RAM starts at 2 MiB in the file).
	var b [1]byte
	off := int64(2<<20 + 4096*3 + 17)
	f.ReadAt(b[:], off)
	b[0] ^= 0x40
	f.WriteAt(b[:], off)
	f.Close()

	h.reopen(t, Config{MemoryBytes: 1 << 30})
	r := h.invokeFn(t, fn, "/", "b")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if string(r.Body) != "hello, b" {
		t.Fatalf("after the corrupt snapshot: %q", r.Body)
	}
	if n := testutil.ToFloat64(h.a.m.snapshots.WithLabelValues("corrupt")); n != 1 {
		t.Fatalf("corrupt snapshots counted %v, want 1", n)
	}
	r = h.invokeFn(t, fn, "/", "c")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
	if string(r.Body) != "hello, c" {
		t.Fatalf("restore of the rebuilt snapshot: %q", r.Body)
	}
}

// A serve function that exits before it ever asks for input is reported
// with its output and not booted again during its backoff, min_warm or not.
func TestKVMInitCrashBackoff(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	var boots atomic.Int64
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: func(cfg vmm.Config) (Machine, error) {
		boots.Add(1)
		return BootVM(cfg)
	}})
	d := h.add(t, "quits", image.KindServe, kernel, kvmtest.Artifact(t, "guests/hello"), 20*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "quits", ImageDigest: d, MinWarm: 2}
	r := h.invokeFn(t, fn, "/", "")
	expect(t, r, kilnv1.Outcome_OUTCOME_CRASHED, kilnv1.StartKind_START_BOOT)
	for range 5 {
		r = h.invokeFn(t, fn, "/", "")
		if r.Outcome != kilnv1.Outcome_OUTCOME_CRASHED || !strings.Contains(r.Error, "crashed during initialisation") {
			t.Fatalf("during the backoff: %v %q", r.Outcome, r.Error)
		}
	}
	if !strings.Contains(r.Error, "exited (status 0)") {
		t.Fatalf("the error does not say how it ended: %q", r.Error)
	}
	time.Sleep(300 * time.Millisecond) // nor does min_warm boot it
	if n := boots.Load(); n != 1 {
		t.Fatalf("%d boots within the backoff, want 1", n)
	}
	// After the backoff the next call boots it again (min_warm does not:
	// the function never got through its init).
	time.Sleep(initBackoffMin)
	expect(t, h.invokeFn(t, fn, "/", ""), kilnv1.Outcome_OUTCOME_CRASHED, kilnv1.StartKind_START_BOOT)
	if n := boots.Load(); n != 2 {
		t.Fatalf("%d boots after the backoff, want 2", n)
	}
}

// A spinning invocation is stopped at its deadline and only its instance
// dies: the warm pool keeps serving and refills to min_warm.
func TestKVMSpinUnderWarmPool(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	// Set before New: the maintain loop reads it from its own goroutine.
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, MaintainEvery: 50 * time.Millisecond})
	d := h.add(t, "echo", image.KindServe, kernel, kvmtest.Artifact(t, "guests/echo-serve"), time.Second)
	fn := &kilnv1.FunctionSpec{Name: "echo", ImageDigest: d, MinWarm: 2}
	expect(t, h.invokeFn(t, fn, "/", "x"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	waitFor(t, func() bool { return h.warm("echo", "idle") == 2 })
	t0 := time.Now()
	r := h.invokeFn(t, fn, "/", "spin")
	expect(t, r, kilnv1.Outcome_OUTCOME_TIMEOUT, kilnv1.StartKind_START_WARM)
	if el := time.Since(t0); el > 10*time.Second {
		t.Fatalf("a 1 s deadline took %v", el)
	}
	r = h.invokeFn(t, fn, "/", "still here")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	if string(r.Body) != "still here" {
		t.Fatalf("after the spinner: %q", r.Body)
	}
	waitFor(t, func() bool { return h.warm("echo", "idle") == 2 && h.warm("echo", "busy") == 0 })
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 2*64<<20 })
}

// The Go examples answer the same after a snapshot restore as after a
// boot: each call runs once on a boot (an agent without snapshots) and
// once on a restore.
func TestKVMGoRestoreMatchesBoot(t *testing.T) {
	h, kernel := kvmHarness(t)
	booted := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, NoSnapshots: true})
	calls := []struct{ fn, query, body string }{
		{"hello-go", "", "world"},
		{"json-echo", "", `{"n":1.50,"list":["a",{"b":null}]}`},
		{"json-echo", "", `{"n":`},
		{"sha256", "", strings.Repeat("kiln ", 50000)},
		{"fanout", "n=100000&workers=8", ""},
		{"wordcount-exec", "", "one two\nthree four five\n"},
	}
	digests := map[*harness]map[string]string{h: {}, booted: {}}
	for _, c := range calls {
		if digests[h][c.fn] != "" {
			continue
		}
		kind := image.KindServe
		if strings.HasSuffix(c.fn, "-exec") {
			kind = image.KindExec
		}
		prog := kvmtest.Artifact(t, filepath.Join("examples", c.fn, c.fn))
		digests[h][c.fn] = h.add(t, c.fn, kind, kernel, prog, 30*time.Second)
		digests[booted][c.fn] = booted.add(t, c.fn, kind, kernel, prog, 30*time.Second)
		// Take the snapshot with a first call.
		expect(t, h.invokeFn(t, &kilnv1.FunctionSpec{Name: c.fn, ImageDigest: digests[h][c.fn], Fresh: true}, "/", c.body),
			kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	}
	call := func(h *harness, c struct{ fn, query, body string }) *kilnv1.InvokeResponse {
		resp, err := h.a.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "x",
			Function: &kilnv1.FunctionSpec{Name: c.fn, ImageDigest: digests[h][c.fn], Fresh: true},
			Method:   "POST", Path: "/", Query: c.query, Body: []byte(c.body)})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for _, c := range calls {
		b, r := call(booted, c), call(h, c)
		expect(t, b, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
		if b.Status != r.Status || string(b.Body) != string(r.Body) {
			t.Errorf("%s?%s: boot %d %.200q, restore %d %.200q", c.fn, c.query, b.Status, b.Body, r.Status, r.Body)
		}
		t.Logf("%s: boot start %.1f ms, restore start %.1f ms", c.fn, float64(b.StartNs)/1e6, float64(r.StartNs)/1e6)
	}
}
