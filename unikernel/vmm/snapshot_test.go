package vmm_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// served is a serve-function VM driven over its stdin/stdout pipes.
type served struct {
	t    *testing.T
	vm   *vmm.VM
	in   *io.PipeWriter
	out  *bufio.Reader
	errb *bytes.Buffer
	done chan *vmm.Result
}

func startServed(t *testing.T, cfg vmm.Config) *served {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &served{t: t, in: inW, out: bufio.NewReader(outR), errb: &bytes.Buffer{}, done: make(chan *vmm.Result, 1)}
	cfg.Stdin, cfg.Stdout, cfg.Stderr = inR, outW, s.errb
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.vm = vm
	t.Cleanup(func() { vm.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	go func() {
		res, err := vm.Run(ctx)
		if res == nil {
			res = &vmm.Result{Message: err.Error()}
		}
		outW.Close()
		s.done <- res
	}()
	return s
}

func (s *served) call(id uint64, body string) string {
	s.t.Helper()
	// One Write per frame: the guest then gets it in one read (one exit).
	var frame bytes.Buffer
	if err := wire.WriteRequest(&frame, &wire.Request{ID: id, Method: "POST", Path: "/", Body: []byte(body)}); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.in.Write(frame.Bytes()); err != nil {
		s.t.Fatal(err)
	}
	resp, err := wire.ReadResponse(s.out, 0)
	if err != nil {
		s.t.Fatalf("request %d: %v; stderr %q", id, err, s.errb.String())
	}
	if resp.ID != id || resp.Status != 200 {
		s.t.Fatalf("request %d: id %d status %d body %q", id, resp.ID, resp.Status, resp.Body)
	}
	return string(resp.Body)
}

func (s *served) end() *vmm.Result {
	s.t.Helper()
	s.in.Close()
	r := <-s.done
	if r.Reason != vmm.ReasonExited || r.Status != 0 {
		s.t.Fatalf("end: %+v; stderr %q", r, s.errb.String())
	}
	return r
}

// probe parses snap-probe's answer.
func probe(t *testing.T, s string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			t.Fatalf("bad probe answer %q", s)
		}
		m[k] = v
	}
	return m
}

func probeInt(t *testing.T, m map[string]string, k string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(m[k], 10, 64)
	if err != nil {
		t.Fatalf("probe %s=%q: %v", k, m[k], err)
	}
	return v
}

func snapConfig(t *testing.T, prog string) vmm.Config {
	return vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, prog),
		Args:    []string{filepath.Base(prog)},
		Env:     []string{"KILN=1"},
	}
}

// bootAndSnapshot boots cfg with a snapshot path, answers one request
// (returned), ends the VM and opens the snapshot.
func bootAndSnapshot(t *testing.T, cfg vmm.Config, body string) (string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fn.snap")
	snapErr := make(chan error, 1)
	var waits []string // OnFirstWait and OnSnapshot, in the order they came
	cfg.SnapshotPath = path
	cfg.OnSnapshot = func(err error) { waits = append(waits, "snapshot"); snapErr <- err }
	cfg.OnFirstWait = func() { waits = append(waits, "first wait") }
	s := startServed(t, cfg)
	first := s.call(1, body)
	select {
	case err := <-snapErr:
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
	default:
		t.Fatal("the VM answered without taking its snapshot")
	}
	s.call(2, body)
	s.end()
	if fmt.Sprint(waits) != "[snapshot first wait]" {
		t.Errorf("callbacks %v: want the snapshot, then one first wait", waits)
	}
	return path, first
}

// TestSnapshotRestore: a restored instance carries on from the snapshot
// (init not rerun, its state as at the first wait) and answers as the
// booted one did, while each clone gets its own entropy and the host's wall
// clock.
func TestSnapshotRestore(t *testing.T) {
	kvmtest.Require(t)
	cfg := snapConfig(t, "guests/snap-probe")
	path, first := bootAndSnapshot(t, cfg, "x")
	booted := probe(t, first)
	st, _ := os.Stat(path)
	snap, err := vmm.OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if err := snap.Matches(cfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %d non-zero pages (%d KiB) of %d MiB RAM; file %d MiB apparent", snap.Pages(), snap.Pages()*4, snap.MemSize()>>20, st.Size()>>20)

	rands := map[string]bool{booted["rand"]: true}
	for i := 0; i < 3; i++ {
		rc := cfg
		rc.Snapshot = snap
		var firstWaits atomic.Int32
		rc.OnFirstWait = func() { firstWaits.Add(1) }
		// Its counters in shared memory of ours, as vmhost keeps them;
		// unmapped after the VM is closed (cleanups run last first).
		page, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Munmap(page) })
		rc.StatsPage = page[:vmm.StatsSize]
		start := time.Now()
		s := startServed(t, rc)
		sent := time.Now()
		got := probe(t, s.call(7, "y"))
		recv := time.Now()
		if got["inits"] != "1" || got["served"] != "1" {
			t.Errorf("restore %d: inits=%s served=%s, want 1 and 1 (the state at the first wait)", i, got["inits"], got["served"])
		}
		if rands[got["rand"]] {
			t.Errorf("restore %d: getrandom output %s repeats another instance's", i, got["rand"])
		}
		rands[got["rand"]] = true
		// The guest read its wall clock between our send and our receive.
		wall := time.Unix(0, probeInt(t, got, "wall"))
		if wall.Before(sent.Add(-time.Millisecond)) || wall.After(recv.Add(time.Millisecond)) {
			t.Errorf("restore %d: guest wall clock %v outside [%v, %v] ± 1 ms", i, wall, sent, recv)
		}
		if mono, bmono := probeInt(t, got, "mono"), probeInt(t, booted, "mono"); mono <= 0 || mono > bmono+int64(time.Minute) {
			t.Errorf("restore %d: monotonic %d, booted instance's first answer %d", i, mono, bmono)
		}
		if second := probe(t, s.call(8, "z")); second["served"] != "2" {
			t.Errorf("restore %d: second answer served=%s, want 2", i, second["served"])
		}
		r := s.end()
		if got := vmm.ReadStats(page); got != r.Stats {
			t.Errorf("restore %d: counters in the StatsPage %+v, Run reported %+v", i, got, r.Stats)
		}
		if n := firstWaits.Load(); n != 1 {
			t.Errorf("restore %d: OnFirstWait called %d times, want once (as it resumed in its wait)", i, n)
		}
		t.Logf("restore %d: first answer %v after New; exits %d, syscalls %d", i, recv.Sub(start), r.Stats.Exits, r.Syscalls)
	}
}

// TestSnapshotRejects: a corrupt, truncated, foreign or mismatched snapshot
// is refused with ErrSnapshot, never restored.
func TestSnapshotRejects(t *testing.T) {
	kvmtest.Require(t)
	cfg := snapConfig(t, "guests/snap-probe")
	path, _ := bootAndSnapshot(t, cfg, "x")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A byte of guest RAM the snapshot holds: the kernel image, 2 MiB
	// into the memory image, which starts 2 MiB into the file.
	ramByte := 2<<20 + 0x210000 + 100
	if orig[ramByte] == 0 {
		t.Fatalf("expected kernel bytes at file offset %#x", ramByte)
	}
	dir := t.TempDir()
	for name, mutate := range map[string]func([]byte) []byte{
		"flipped RAM byte":   func(b []byte) []byte { b[ramByte] ^= 0x40; return b },
		"flipped state byte": func(b []byte) []byte { b[4096+8] ^= 1; return b },
		"flipped header":     func(b []byte) []byte { b[20] ^= 1; return b },
		"truncated":          func(b []byte) []byte { return b[:len(b)-4096] },
		"not a snapshot":     func(b []byte) []byte { return bytes.Repeat([]byte("kiln"), 4096) },
		"empty":              func(b []byte) []byte { return nil },
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, mutate(bytes.Clone(orig)), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := vmm.OpenSnapshot(p)
		if !errors.Is(err, vmm.ErrSnapshot) {
			if s != nil {
				s.Close()
			}
			t.Errorf("%s: OpenSnapshot = %v, want ErrSnapshot", name, err)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	snap, err := vmm.OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	for name, edit := range map[string]func(*vmm.Config){
		"other program": func(c *vmm.Config) { c.Program = kvmtest.Artifact(t, "guests/echo-serve") },
		"other kernel":  func(c *vmm.Config) { c.Kernel = append(bytes.Clone(c.Kernel), 0) },
		"other env":     func(c *vmm.Config) { c.Env = []string{"KILN=2"} },
		"other memory":  func(c *vmm.Config) { c.MemSize = 128 << 20 },
	} {
		c := cfg
		edit(&c)
		if err := snap.Matches(c); !errors.Is(err, vmm.ErrSnapshot) {
			t.Errorf("%s: Matches = %v, want ErrSnapshot", name, err)
		}
	}
}

// TestSnapshotGo: the Go hello example, restored, answers exactly as the
// booted instance does — the Go runtime's threads, timers and heap all
// come back from the file.
func TestSnapshotGo(t *testing.T) {
	kvmtest.Require(t)
	cfg := snapConfig(t, "examples/hello-go/hello-go")
	cfg.Args = []string{"hello-go"}
	path, first := bootAndSnapshot(t, cfg, "world")
	snap, err := vmm.OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	rc := cfg
	rc.Snapshot = snap
	s := startServed(t, rc)
	for i := uint64(1); i <= 20; i++ {
		if got := s.call(i, "world"); got != first {
			t.Fatalf("restored answer %d %q, booted %q", i, got, first)
		}
	}
	// The request/response path of a warm call is one exit (the echo
	// guest asserts exactly that); a Go guest adds one whenever its sysmon
	// thread's timed sleep ends during the wait, which under emulation is
	// most calls. At least some calls must take the single-exit path, and
	// none may take more than that plus the timer wake-ups.
	var exits []int
	for i := uint64(21); i <= 41; i++ {
		before := s.vm.Stats().Exits
		s.call(i, "world")
		exits = append(exits, int(s.vm.Stats().Exits-before))
	}
	sort.Ints(exits)
	if exits[0] != 1 || exits[len(exits)-1] > 3 {
		t.Errorf("warm calls on the restored VM cost %v exits, want 1 for some and never more than 3", exits)
	}
	t.Logf("exits per warm call on the restored VM: %v", exits)
	r := s.end()
	t.Logf("hello-go restored: %q; %d pages in the snapshot; syscalls %d", first, snap.Pages(), r.Syscalls)
}

// TestSnapshotLayouts: how restores lay out the snapshots of real
// programs (planSnapLayout), the figures behind its bounds: each fits in
// the mappings allowed without copying a page.
func TestSnapshotLayouts(t *testing.T) {
	kvmtest.Require(t)
	for _, prog := range []string{"examples/hello-go/hello-go", "examples/hello-c/hello", "examples/sha256/sha256", "examples/json-echo/json-echo", "guests/snap-probe"} {
		cfg := snapConfig(t, prog)
		path, _ := bootAndSnapshot(t, cfg, `{"x":1}`)
		snap, err := vmm.OpenSnapshot(path)
		if err != nil {
			t.Fatal(err)
		}
		l := vmm.SnapshotLayout(snap)
		snap.Close()
		t.Logf("%s: %s", filepath.Base(prog), l)
		if !strings.Contains(l, " 0 runs copied") {
			t.Errorf("%s: a restore copies pages: %s", prog, l)
		}
	}
}
