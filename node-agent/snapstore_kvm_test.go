package nodeagent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// snapDir is the harness's snapshot store.
func (h *harness) snapDir() string { return filepath.Join(h.dir, "cache", "snapshots") }

// snapFileOf is the snapshot file of fn's shape, as the agent names it.
func (h *harness) snapFileOf(t *testing.T, fn *kilnv1.FunctionSpec) string {
	t.Helper()
	cfg := h.a.vmConfig(h.spec(t, fn))
	return filepath.Join(h.snapDir(), snapKey(fn.ImageDigest, h.a.kernelSum, &cfg)+".snap")
}

func (h *harness) spec(t *testing.T, fn *kilnv1.FunctionSpec) *spec {
	t.Helper()
	s, resp := h.a.resolve(t.Context(), &kilnv1.InvokeRequest{Function: fn})
	if resp != nil {
		t.Fatalf("resolve: %v", resp.Error)
	}
	return s
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// snapClock gives the harness's snapshot store a clock the test moves.
func (h *harness) snapClock() *testClock {
	c := &testClock{t: time.Now()}
	h.a.snaps.mu.Lock()
	h.a.snaps.now = c.now
	h.a.snaps.mu.Unlock()
	return c
}

// Under its bound the store removes the least recently used snapshot —
// but never that of a shape with a live instance, which keeps restoring —
// and a snapshot unused for the maximum idle time goes whatever the room.
func TestKVMSnapshotLRU(t *testing.T) {
	h, kernel := kvmHarness(t)
	clock := h.snapClock()
	hello := kvmtest.Artifact(t, "examples/hello-c/hello")
	fn := map[string]*kilnv1.FunctionSpec{}
	for _, n := range []string{"a", "b", "c"} {
		d := h.add(t, n, image.KindServe, kernel, hello, 20*time.Second, "hello-"+n)
		fn[n] = &kilnv1.FunctionSpec{Name: n, ImageDigest: d, Fresh: n != "a"} // a keeps a live instance
	}
	file := map[string]string{}
	for _, n := range []string{"a", "b"} {
		file[n] = h.snapFileOf(t, fn[n])
		expect(t, h.invokeFn(t, fn[n], "/", n), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
		clock.add(time.Second)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(file["a"], &st); err != nil {
		t.Fatal(err)
	}
	size := st.Blocks * 512
	h.a.snaps.mu.Lock()
	h.a.snaps.maxBytes = 2*size + size/2 // room for two
	h.a.snaps.mu.Unlock()
	t.Logf("a snapshot takes %d KiB of disk; the bound is %d KiB", size>>10, (2*size+size/2)>>10)

	// c's new snapshot pushes the store over: a is the least recently
	// used but has a live instance, so b goes.
	file["c"] = h.snapFileOf(t, fn["c"])
	expect(t, h.invokeFn(t, fn["c"], "/", "c"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	waitFor(t, func() bool { return !exists(file["b"]) })
	if !exists(file["a"]) || !exists(file["c"]) {
		t.Fatalf("after c: a %v, c %v; want both kept", exists(file["a"]), exists(file["c"]))
	}
	// a's live instance answers, and a fresh call of a restores from the
	// snapshot that was kept.
	expect(t, h.invokeFn(t, fn["a"], "/", "a"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	r := h.invokeFn(t, &kilnv1.FunctionSpec{Name: "a", ImageDigest: fn["a"].ImageDigest, Fresh: true}, "/", "a2")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)
	if string(r.Body) != "hello, a2" {
		t.Fatalf("restore of a: %q", r.Body)
	}
	// b boots again (its snapshot is gone) and takes a new one; now c, the
	// least recently used without a live instance, goes.
	clock.add(time.Second)
	expect(t, h.invokeFn(t, fn["b"], "/", "b"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	deleted := func(reason string) float64 { return testutil.ToFloat64(h.a.m.snapshotsDeleted.WithLabelValues(reason)) }
	waitFor(t, func() bool { return !exists(file["c"]) && deleted("size") == 2 })
	if !exists(file["a"]) || !exists(file["b"]) {
		t.Fatalf("after b again: a %v, b %v; want both kept", exists(file["a"]), exists(file["b"]))
	}
	// A day later nobody used b: it goes; a's instance is still alive.
	// (b's fresh instance is destroyed after its answer: wait for that.)
	waitFor(t, func() bool {
		live := h.a.liveShapes()
		return len(live) == 1 && live[filepath.Base(file["a"][:len(file["a"])-5])]
	})
	clock.add(DefaultSnapshotMaxIdle)
	h.a.snaps.trim("")
	if exists(file["b"]) || !exists(file["a"]) {
		t.Fatalf("a day later: a %v, b %v; want a only", exists(file["a"]), exists(file["b"]))
	}
	if n := deleted("idle"); n != 1 {
		t.Fatalf("kiln_agent_snapshots_deleted_total{reason=idle} = %v, want 1", n)
	}
}

// A disk too full for a snapshot (a tmpfs of 64 KiB under the store): the
// cold start that tried is served by its boot, the failure is counted and
// logged, the next cold starts boot without writing again until the
// backoff ends, and once there is room the snapshot is taken and restored.
func TestKVMSnapshotDiskFull(t *testing.T) {
	h, kernel := kvmHarness(t)
	clock := h.snapClock()
	dir := h.snapDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Fatalf("mounting a small tmpfs on the snapshot store (the test needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	d := h.add(t, "hello", image.KindServe, kernel, kvmtest.Artifact(t, "examples/hello-c/hello"), 20*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "hello", ImageDigest: d, Fresh: true}
	failures := func() float64 { return testutil.ToFloat64(h.a.m.snapshotFailures.WithLabelValues("no_space")) }
	call := func(want kilnv1.StartKind, body string) {
		t.Helper()
		r := h.invokeFn(t, fn, "/", body)
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, want)
		if string(r.Body) != "hello, "+body {
			t.Fatalf("answered %q", r.Body)
		}
	}
	call(kilnv1.StartKind_START_BOOT, "1") // tries, fails, still answers
	if failures() != 1 {
		t.Fatalf("no_space failures %v after the first cold start, want 1", failures())
	}
	for _, b := range []string{"2", "3", "4"} { // within the backoff: boots, no write
		call(kilnv1.StartKind_START_BOOT, b)
	}
	if failures() != 1 {
		t.Fatalf("no_space failures %v within the backoff, want still 1 (a write was tried)", failures())
	}
	clock.add(snapRetryAfter(1))
	call(kilnv1.StartKind_START_BOOT, "5") // tries again: fails again
	if failures() != 2 {
		t.Fatalf("no_space failures %v after the first backoff, want 2", failures())
	}
	clock.add(snapRetryAfter(1)) // the second backoff is twice as long
	call(kilnv1.StartKind_START_BOOT, "6")
	if failures() != 2 {
		t.Fatalf("no_space failures %v half-way through the second backoff, want 2", failures())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Fatalf("failed writes left %v", left)
	}
	// Space comes back.
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT, "size=64m,mode=0700"); err != nil {
		t.Fatal(err)
	}
	clock.add(snapRetryAfter(2))
	call(kilnv1.StartKind_START_BOOT, "7") // takes it
	if n := testutil.ToFloat64(h.a.m.snapshots.WithLabelValues("taken")); n != 1 || failures() != 2 {
		t.Fatalf("after space came back: taken %v, failures %v", n, failures())
	}
	call(kilnv1.StartKind_START_RESTORE, "8")
}

// A snapshot file changed after the agent opened it — every page it holds
// overwritten in place, its modification time put back — changes nothing
// a guest sees: the instance restored before the write answers, and so
// does a new restore. (With restores mapping the file, both read the
// attacker's bytes.) A restarted agent finds the file corrupt and rebuilds.
func TestKVMSnapshotSealed(t *testing.T) {
	h, kernel := kvmHarness(t)
	d := h.add(t, "hello", image.KindServe, kernel, kvmtest.Artifact(t, "examples/hello-c/hello"), 20*time.Second)
	fresh := &kilnv1.FunctionSpec{Name: "hello", ImageDigest: d, Fresh: true}
	pooled := &kilnv1.FunctionSpec{Name: "hello", ImageDigest: d}
	expect(t, h.invokeFn(t, fresh, "/", "boot"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	expect(t, h.invokeFn(t, pooled, "/", "restored"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_RESTORE)

	path := h.snapFileOf(t, fresh)
	n := scribble(t, path)
	t.Logf("overwrote %d pages of %s", n, filepath.Base(path))

	for i, c := range []struct {
		fn   *kilnv1.FunctionSpec
		body string
		want kilnv1.StartKind
	}{
		{pooled, "running", kilnv1.StartKind_START_WARM},
		{fresh, "new", kilnv1.StartKind_START_RESTORE},
		{pooled, "running again", kilnv1.StartKind_START_WARM},
	} {
		r := h.invokeFn(t, c.fn, "/", c.body)
		expect(t, r, kilnv1.Outcome_OUTCOME_OK, c.want)
		if string(r.Body) != "hello, "+c.body {
			t.Fatalf("call %d after the write: %q", i, r.Body)
		}
	}
	h.reopen(t, Config{MemoryBytes: 1 << 30})
	expect(t, h.invokeFn(t, fresh, "/", "x"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if n := testutil.ToFloat64(h.a.m.snapshots.WithLabelValues("corrupt")); n != 1 {
		t.Fatalf("corrupt snapshots counted %v after the restart, want 1", n)
	}
}

// scribble overwrites every non-zero page of the snapshot's memory image
// with 0xcc (int3) in place, keeps its modification time, and returns how
// many pages.
func scribble(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const memOff, page = 2 << 20, 4096
	pg := make([]byte, page)
	evil := bytes.Repeat([]byte{0xcc}, page)
	n := 0
	for off := int64(memOff); off < fi.Size(); off += page {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		off = data - data%page
		if _, err := f.ReadAt(pg, off); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(pg, make([]byte, page)) {
			continue
		}
		if _, err := f.WriteAt(evil, off); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no page to overwrite")
	}
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
	return n
}
