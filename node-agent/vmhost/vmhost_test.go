package vmhost

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// newHost returns a Host closed at the end of the test, which then checks
// that none of its worker processes is left.
// A data race found in a worker (a test binary built with -race) fails the
// test too.
func newHost(t *testing.T, cfg Config) *Host {
	t.Helper()
	logs := &logRecorder{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(logs)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pids := h.Workers()
		h.Close()
		for _, p := range pids {
			if alive(p) {
				t.Errorf("worker %d still exists after Host.Close", p)
			}
		}
		if logs.contains("DATA RACE") {
			t.Error("a worker reported a data race (see its output above)")
		}
	})
	return h
}

// logRecorder keeps the Host's log lines and echoes them to stderr.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	if r.Level >= slog.LevelWarn {
		fmt.Fprintln(os.Stderr, line)
	}
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return nil
}

func (l *logRecorder) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func (l *logRecorder) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// alive says whether pid exists (a zombie counts: it was not reaped).
func alive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func echoCfg() vmm.Config { return vmm.Config{Args: []string{"echo"}} }

func run(t *testing.T, v *VM, d time.Duration) (*vmm.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return v.Run(ctx)
}

// lines makes n lines of printable text (never starting with '!').
func lines(n int) []byte {
	var b bytes.Buffer
	r := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		fmt.Fprintf(&b, "line %d ", i)
		for range r.IntN(300) {
			b.WriteByte(byte('a' + r.IntN(26)))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Plain readers and writers (exec style): the whole input then EOF, and
// every byte of output is in the writers when Run returns.
func TestStreamsReadersWriters(t *testing.T) {
	h := newHost(t, Config{})
	in := lines(8000) // ~1.2 MiB
	in = append(in, "!stderr to the log\n"...)
	var out, errb bytes.Buffer
	cfg := echoCfg()
	// A slow writer: the worker is done long before its output is.
	cfg.Stdin, cfg.Stdout, cfg.Stderr = bytes.NewReader(in), slowWriter{&out}, &errb
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	r, err := run(t, v, time.Minute)
	if err != nil || r.Reason != vmm.ReasonExited || r.Status != 0 {
		t.Fatalf("run: %+v, %v", r, err)
	}
	want := in[:len(in)-len("!stderr to the log\n")]
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("stdout: %d bytes, want %d (first difference matters)", out.Len(), len(want))
	}
	if errb.String() != "to the log\n" {
		t.Fatalf("stderr %q", errb.String())
	}
	if r.Stats.Discarded != uint64(len(in)) || r.Stats.Hypercalls != 8002 {
		t.Fatalf("result stats %+v", r.Stats)
	}
}

// The caller's own pipes go to the worker as they are: requests in,
// answers out, interleaved, and EOF on stdin ends the program.
func TestStreamsFiles(t *testing.T) {
	h := newHost(t, Config{})
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	defer inR.Close()
	defer outR.Close()
	defer errR.Close()
	cfg := echoCfg()
	cfg.Stdin, cfg.Stdout, cfg.Stderr = inR, outW, errW
	var waits atomic.Int32
	cfg.OnFirstWait = func() { waits.Add(1) }
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// As in process, the caller keeps its ends; closing the copies it
	// gave the VM is its business, and EOF must still work once it does.
	outW.Close()
	errW.Close()
	done := make(chan error, 1)
	var res *vmm.Result
	go func() {
		var err error
		res, err = run(t, v, time.Minute)
		done <- err
	}()
	br := bufio.NewReader(outR)
	for i := range 100 {
		msg := fmt.Sprintf("request %d\n", i)
		if _, err := inW.WriteString(msg); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("answer %d: %q, %v", i, got, err)
		}
	}
	inW.WriteString("!stderr bye\n")
	inW.Close()
	if err := <-done; err != nil || res.Reason != vmm.ReasonExited {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("stdout after the answers: %q, %v (EOF expected)", rest, err)
	}
	if b, err := io.ReadAll(errR); err != nil || string(b) != "bye\n" {
		t.Fatalf("stderr %q, %v", b, err)
	}
	if n := waits.Load(); n != 1 {
		t.Fatalf("OnFirstWait ran %d times", n)
	}
	v.Close()
}

// The kernel, program, arguments and environment arrive intact, including
// an environment too large for one control message.
func TestConfigArrives(t *testing.T) {
	h := newHost(t, Config{})
	kernel := bytes.Repeat([]byte("K"), 300<<10)
	program := make([]byte, 5<<20)
	for i := range program {
		program[i] = byte(i * 7)
	}
	for _, envBytes := range []int{100, 200 << 10} {
		env := []string{"A=1", "BIG=" + strings.Repeat("x", envBytes)}
		var out bytes.Buffer
		cfg := vmm.Config{Kernel: kernel, Program: program, Args: []string{"echo", "arg one"}, Env: env,
			Hostname: "h1", MemSize: 128 << 20, TraceSyscalls: true, PortIO: true,
			Stdin: strings.NewReader("!image\n"), Stdout: &out}
		v, err := h.Boot(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run(t, v, time.Minute); err != nil {
			t.Fatal(err)
		}
		v.Close()
		want := fmt.Sprintf("kernel %d %x program %d %x env 2/%d args %q host \"h1\" mem %d trace true portio true\n",
			len(kernel), sha256.Sum256(kernel), len(program), sha256.Sum256(program), 3+4+envBytes,
			[]string{"echo", "arg one"}, 128<<20)
		if out.String() != want {
			t.Fatalf("env of %d bytes:\n got %s\nwant %s", envBytes, out.String(), want)
		}
	}
}

// A stdin reader is only read once the guest reads, as in process.
func TestStdinReadLazily(t *testing.T) {
	h := newHost(t, Config{})
	var reads atomic.Int32
	cfg := echoCfg()
	cfg.Stdin = readerFunc(func(p []byte) (int, error) { reads.Add(1); return 0, io.EOF })
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := reads.Load(); n != 0 {
		t.Fatalf("stdin read %d times before Run", n)
	}
	if r, err := run(t, v, time.Minute); err != nil || r.Reason != vmm.ReasonExited {
		t.Fatalf("run: %+v, %v", r, err)
	}
	if reads.Load() == 0 {
		t.Fatal("stdin never read")
	}
	v.Close()
}

// As in process, the guest goes on only once the agent's callback
// returned: nothing is echoed before OnFirstWait is done.
func TestCallbacksHoldTheGuest(t *testing.T) {
	h := newHost(t, Config{})
	var returned atomic.Int64
	var firstByte atomic.Int64
	cfg := echoCfg()
	cfg.Stdin = strings.NewReader("x\n")
	cfg.Stdout = writerFunc(func(p []byte) (int, error) {
		firstByte.CompareAndSwap(0, time.Now().UnixNano())
		return len(p), nil
	})
	cfg.OnFirstWait = func() {
		time.Sleep(200 * time.Millisecond)
		returned.Store(time.Now().UnixNano())
	}
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := run(t, v, time.Minute); err != nil {
		t.Fatal(err)
	}
	if f, r := firstByte.Load(), returned.Load(); f == 0 || f < r {
		t.Fatalf("output at %d, OnFirstWait returned at %d", f, r)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type slowWriter struct{ w io.Writer }

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(5 * time.Millisecond)
	return s.w.Write(p)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestRunCancelledByContext(t *testing.T) {
	h := newHost(t, Config{})
	inR, inW, _ := os.Pipe()
	defer inR.Close()
	defer inW.Close()
	cfg := echoCfg()
	cfg.Stdin = inR
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	start := time.Now()
	r, err := run(t, v, 300*time.Millisecond)
	if !errors.Is(err, vmm.ErrTimeout) || r == nil || r.Reason != vmm.ReasonTimeout {
		t.Fatalf("run: %+v, %v", r, err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 10*time.Second {
		t.Fatalf("a 300 ms context ended Run after %v", el)
	}
	if _, err := run(t, v, time.Second); !errors.Is(err, vmm.ErrConfig) {
		t.Fatalf("second Run: %v, want vmm.ErrConfig", err)
	}
}

// Close stops a Run in progress, which reports ReasonTimeout; the final
// counters stay readable.
func TestCloseDuringRun(t *testing.T) {
	h := newHost(t, Config{})
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	defer inR.Close()
	defer inW.Close()
	defer outR.Close()
	cfg := echoCfg()
	cfg.Stdin, cfg.Stdout = inR, outW
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outW.Close()
	type ran struct {
		r   *vmm.Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		r, err := run(t, v, time.Minute)
		done <- ran{r, err}
	}()
	inW.WriteString("one\n")
	br := bufio.NewReader(outR)
	if l, err := br.ReadString('\n'); l != "one\n" {
		t.Fatalf("echo %q, %v", l, err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got.r == nil || got.r.Reason != vmm.ReasonTimeout || !errors.Is(got.err, vmm.ErrTimeout) {
			t.Fatalf("run after Close: %+v, %v", got.r, got.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop the Run")
	}
	if s := v.Stats(); s.Hypercalls != 2 || s.Discarded != 4 {
		t.Fatalf("stats after Close: %+v", s)
	}
	if _, err := br.ReadString('\n'); err != io.EOF {
		t.Fatalf("stdout after Close: %v, want EOF", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, v, time.Second); !errors.Is(err, vmm.ErrConfig) {
		t.Fatalf("Run after Close: %v", err)
	}
}

func TestStatsRoundTrip(t *testing.T) {
	h := newHost(t, Config{})
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	defer inR.Close()
	defer outR.Close()
	cfg := echoCfg()
	cfg.Stdin, cfg.Stdout = inR, outW
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outW.Close()
	defer v.Close()
	if s := v.Stats(); s != (vmm.Stats{Hypercalls: 1, Discards: 3}) {
		t.Fatalf("stats before Run: %+v", s)
	}
	done := make(chan *vmm.Result, 1)
	go func() {
		r, _ := run(t, v, time.Minute)
		done <- r
	}()
	br := bufio.NewReader(outR)
	for i := range 10 {
		fmt.Fprintf(inW, "%d\n", i)
		br.ReadString('\n')
	}
	want := vmm.Stats{Exits: 20, IOExits: 10, Hypercalls: 11, InputWaits: 10, Discards: 3, Discarded: 20,
		GuestTime: 10 * time.Millisecond}
	if s := v.Stats(); s != want {
		t.Fatalf("stats: %+v, want %+v", s, want)
	}
	start := time.Now()
	for range 1000 {
		v.Stats()
	}
	t.Logf("Stats round trip: %v", time.Since(start)/1000)
	inW.Close()
	if r := <-done; r.Stats != want {
		t.Fatalf("result stats: %+v, want %+v", r.Stats, want)
	}
}

// Errors keep their text and their vmm sentinels across the process
// boundary, from the real vmm.New, from Run, and from callbacks.
func TestErrorSentinels(t *testing.T) {
	h := newHost(t, Config{})
	for _, c := range []struct {
		name string
		cfg  vmm.Config
		want error
	}{
		{"no kernel (real vmm)", vmm.Config{Program: []byte("x")}, vmm.ErrConfig},
		{"bad ELF (real vmm)", vmm.Config{Kernel: []byte("not an elf"), Program: []byte("nor this")}, vmm.ErrBadELF},
		{"memory size (real vmm)", vmm.Config{Kernel: []byte("k"), Program: []byte("p"), MemSize: 3}, vmm.ErrMemSize},
		{"stand-in", vmm.Config{Args: []string{"echo"}, Hostname: "refuse"}, vmm.ErrMemSize},
	} {
		_, err := h.Boot(c.cfg)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
			continue
		}
		// The same text as in process.
		if c.cfg.Args == nil {
			_, local := vmm.New(c.cfg)
			if local == nil || err.Error() != local.Error() {
				t.Errorf("%s: %q, in process %q", c.name, err, local)
			}
		}
	}

	// Restores the worker cannot open: missing and corrupt files.
	missing := filepath.Join(t.TempDir(), "missing.snap")
	_, err := h.boot(echoCfg(), missing)
	if !errors.Is(err, vmm.ErrSnapshot) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("restore of a missing file: %v", err)
	}
	corrupt := filepath.Join(t.TempDir(), "corrupt.snap")
	os.WriteFile(corrupt, bytes.Repeat([]byte("junk"), 5000), 0o644)
	if _, err := h.boot(echoCfg(), corrupt); !errors.Is(err, vmm.ErrSnapshot) || !strings.Contains(err.Error(), corrupt) {
		t.Fatalf("restore of a corrupt file: %v", err)
	}

	// Run's errors and the full Result; OnSnapshot's error, before OnFirstWait.
	var order []string
	var snapErr error
	cfg := echoCfg()
	cfg.SnapshotPath = filepath.Join(t.TempDir(), "x.snap")
	cfg.OnSnapshot = func(err error) { order = append(order, "snapshot"); snapErr = err }
	cfg.OnFirstWait = func() { order = append(order, "wait") }
	cfg.Stdin = strings.NewReader("!fail\n")
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := run(t, v, time.Minute)
	v.Close()
	if !errors.Is(err, vmm.ErrGuest) || errors.Is(err, vmm.ErrTimeout) || err.Error() != "vmm: guest failed: stand-in kernel panic" {
		t.Fatalf("run error %v", err)
	}
	want := vmm.Result{Reason: vmm.ReasonPanic, Status: -1, Message: "stand-in kernel panic", Regs: "rip=0x1000",
		Syscalls: 42, Enosys: 2, EnosysByNr: map[uint32]uint32{999: 2}, Ring0Entries: 7, MemUsed: 1 << 20, MemPeak: 2 << 20,
		Stats: vmm.Stats{Exits: 2, IOExits: 1, Hypercalls: 2, InputWaits: 1, Discards: 3, Discarded: 6, GuestTime: time.Millisecond}}
	if fmt.Sprintf("%+v", *r) != fmt.Sprintf("%+v", want) {
		t.Fatalf("result\n got %+v\nwant %+v", *r, want)
	}
	if strings.Join(order, ",") != "snapshot,wait" || !errors.Is(snapErr, vmm.ErrSnapshot) {
		t.Fatalf("callbacks %v, snapshot error %v", order, snapErr)
	}

	// Exit statuses are the program's, not errors.
	cfg = echoCfg()
	cfg.Stdin = strings.NewReader("!exit 3\n")
	v, _ = h.Boot(cfg)
	r, err = run(t, v, time.Minute)
	v.Close()
	if err != nil || r.Reason != vmm.ReasonExited || r.Status != 3 {
		t.Fatalf("exit 3: %+v, %v", r, err)
	}
}

// A worker that dies ends every VM on it with ErrWorker; the next Boot
// starts a new worker.
func TestWorkerCrash(t *testing.T) {
	logs := &logRecorder{}
	h := newHost(t, Config{Logger: slog.New(logs)})
	var vms []*VM
	var ins []*os.File
	for range 3 {
		inR, inW, _ := os.Pipe()
		defer inR.Close()
		defer inW.Close()
		cfg := echoCfg()
		cfg.Stdin = inR
		v, err := h.Boot(cfg)
		if err != nil {
			t.Fatal(err)
		}
		vms, ins = append(vms, v), append(ins, inW)
	}
	pids := h.Workers()
	if len(pids) != 1 {
		t.Fatalf("workers %v, want one", pids)
	}
	type ran struct {
		r   *vmm.Result
		err error
	}
	done := make(chan ran, 3)
	for _, v := range vms[:2] {
		go func() {
			r, err := run(t, v, time.Minute)
			done <- ran{r, err}
		}()
	}
	ins[0].WriteString("!crash\n")
	for range 2 {
		got := <-done
		if !errors.Is(got.err, ErrWorker) || got.r == nil || got.r.Reason != vmm.ReasonInternal ||
			!strings.Contains(got.r.Message, "the VM's host process exited: exit status 7") {
			t.Fatalf("run on a crashed worker: %+v, %v", got.r, got.err)
		}
	}
	// The VM that was not running ends the same way, and nothing hangs.
	r, err := run(t, vms[2], time.Minute)
	if !errors.Is(err, ErrWorker) || r.Reason != vmm.ReasonInternal {
		t.Fatalf("run after the crash: %+v, %v", r, err)
	}
	vms[2].Stats()
	for _, v := range vms {
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if alive(pids[0]) {
		t.Fatalf("crashed worker %d not reaped", pids[0])
	}
	cfg := echoCfg()
	var out bytes.Buffer
	cfg.Stdin, cfg.Stdout = strings.NewReader("again\n"), &out
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, v, time.Minute); err != nil || out.String() != "again\n" {
		t.Fatalf("after the crash: %q, %v", out.String(), err)
	}
	v.Close()
	if p := h.Workers(); len(p) != 1 || p[0] == pids[0] {
		t.Fatalf("workers %v after the crash of %d", p, pids[0])
	}
	if n := logs.count("worker exited"); n != 1 {
		t.Fatalf("the crash was logged %d times", n)
	}

	// A VM whose boot kills its worker: Boot says so, the next one works.
	cfg = echoCfg()
	cfg.Hostname = "crash"
	if _, err := h.Boot(cfg); !errors.Is(err, ErrWorker) || !strings.Contains(err.Error(), "exit status 9") {
		t.Fatalf("boot that crashed its worker: %v", err)
	}
	v, err = h.Boot(echoCfg())
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
}

// PerWorker VMs fill a worker before the next starts; past MaxWorkers the
// least loaded takes the next; a freed slot is reused.
func TestPlacement(t *testing.T) {
	h := newHost(t, Config{PerWorker: 2, MaxWorkers: 3})
	var vms []*VM
	boot := func() *VM {
		v, err := h.Boot(echoCfg())
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, v)
		return v
	}
	for range 6 {
		boot()
	}
	pids := h.Workers()
	if len(pids) != 3 {
		t.Fatalf("%d workers for 6 VMs at 2 each", len(pids))
	}
	for i, v := range vms {
		if v.w.pid != pids[i/2] {
			t.Fatalf("VM %d on worker %d, want %d (%v)", i, v.w.pid, pids[i/2], pids)
		}
	}
	vms[3].Close() // the second worker now has room
	if v := boot(); v.w.pid != pids[1] {
		t.Fatalf("after a Close, the next VM went to %d, want %d", v.w.pid, pids[1])
	}
	counts := map[int]int{}
	for range 3 {
		counts[boot().w.pid]++
	}
	if len(counts) != 3 || len(h.Workers()) != 3 {
		t.Fatalf("past the limit, VMs went to %v; workers %v", counts, h.Workers())
	}
	for _, v := range vms {
		v.Close()
	}
}

// Close ends every worker: Runs in progress end with ErrWorker, no process
// remains, and Boot fails afterwards.
func TestHostClose(t *testing.T) {
	h, err := New(Config{PerWorker: 1})
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, _ := os.Pipe()
	defer inR.Close()
	defer inW.Close()
	var vms []*VM
	for range 2 {
		cfg := echoCfg()
		cfg.Stdin = inR
		v, err := h.Boot(cfg)
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, v)
	}
	pids := h.Workers()
	if len(pids) != 2 {
		t.Fatalf("workers %v", pids)
	}
	done := make(chan error, 1)
	go func() {
		_, err := run(t, vms[0], time.Minute)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrWorker) || !strings.Contains(err.Error(), "the host was closed") {
		t.Fatalf("run across Close: %v", err)
	}
	for _, p := range pids {
		if alive(p) {
			t.Fatalf("worker %d left after Close", p)
		}
	}
	for _, v := range vms {
		v.Close()
	}
	if _, err := h.Boot(echoCfg()); !errors.Is(err, ErrWorker) {
		t.Fatalf("Boot after Close: %v", err)
	}
	h.Close()
}

// An executable without the hook fails the Boot loudly, naming the
// missing call, whether it exits at once (a Go test binary refuses the
// worker's argument; /bin/true here) or runs on as itself (a script that
// sleeps, found out by the start timeout).
func TestMissingHook(t *testing.T) {
	script := filepath.Join(t.TempDir(), "sleeps")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { workerStartTimeout = d }(workerStartTimeout)
	workerStartTimeout = 500 * time.Millisecond
	for _, exe := range []string{"/bin/true", script} {
		h, err := New(Config{Exe: exe})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = h.Boot(echoCfg())
		t.Logf("%s: %v", exe, err)
		if !errors.Is(err, ErrNoHook) || !errors.Is(err, ErrWorker) || !strings.Contains(err.Error(), "vmhost.RunWorker") {
			t.Errorf("%s: Boot: %v, want ErrNoHook (and ErrWorker) naming vmhost.RunWorker", exe, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: the Boot took %v to fail", exe, d)
		}
		if p := h.Workers(); len(p) != 0 {
			t.Errorf("%s: workers %v left", exe, p)
		}
		h.Close()
	}
	// A process not started as a worker refuses to serve as one.
	if IsWorker() {
		t.Fatal("IsWorker in the test binary's own process")
	}
	if code := RunWorker(); code != 2 {
		t.Fatalf("RunWorker outside a worker: status %d", code)
	}
}

// A worker whose agent goes away (its control socket closes) exits by
// itself.
func TestWorkerExitsWithItsSocket(t *testing.T) {
	exe, _ := os.Executable()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "a"), os.NewFile(uintptr(pair[1]), "b")
	cmd := exec.Command(exe, workerArg)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	// It says first that it serves (a socket closed with that still unread
	// would reset the worker's end instead of ending it).
	c, err := newConn(ours)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := c.recv(); err != nil || m.typ != mHello {
		t.Fatalf("first message: type %d, %v; want the hello", m.typ, err)
	}
	c.close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker: %v", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the worker outlived its control socket")
	}
}

// Many VMs at once over two workers, each with its own streams: all
// booted before any runs, so both workers are full at once.
func TestManyVMs(t *testing.T) {
	const n = 300
	h := newHost(t, Config{})
	vms := make([]*VM, n)
	outs := make([]bytes.Buffer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cfg := echoCfg()
			cfg.Stdin, cfg.Stdout = strings.NewReader(fmt.Sprintf("vm %d says hello\n", i)), &outs[i]
			v, err := h.Boot(cfg)
			if err != nil {
				t.Errorf("boot %d: %v", i, err)
				return
			}
			vms[i] = v
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	perWorker := map[int]int{}
	for _, v := range vms {
		perWorker[v.w.pid]++
	}
	if len(perWorker) != 2 {
		t.Fatalf("VMs per worker %v, want 256 and 44", perWorker)
	}
	for i, v := range vms {
		wg.Go(func() {
			defer v.Close()
			r, err := run(t, v, 2*time.Minute)
			if want := fmt.Sprintf("vm %d says hello\n", i); err != nil || r.Reason != vmm.ReasonExited || outs[i].String() != want {
				t.Errorf("vm %d: %+v, %v, %q", i, r, err, outs[i].String())
			}
		})
	}
	wg.Wait()
	t.Logf("VMs per worker: %v", perWorker)
}

// gone says whether pid has exited: no such process, or a zombie nobody
// reaped yet (an orphan's reaper may be slow or absent in a container).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// An agent killed outright takes its workers with it (Pdeathsig and the
// control socket's EOF), and workers sit in their own process group, away
// from a terminal's ^C.
func TestAgentDeathEndsWorkers(t *testing.T) {
	if os.Getenv("KILN_VMHOST_TEST_AGENT") == "1" {
		h, err := New(Config{})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		if _, err := h.Boot(echoCfg()); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("worker", h.Workers()[0])
		select {}
	}
	// A stopped worker (SIGSTOP: it cannot see its socket close) goes too.
	for _, stop := range []bool{false, true} {
		exe, _ := os.Executable()
		cmd := exec.Command(exe, "-test.run=^TestAgentDeathEndsWorkers$")
		cmd.Env = append(os.Environ(), "KILN_VMHOST_TEST_AGENT=1")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		var pid int
		if _, err := fmt.Fscanf(out, "worker %d\n", &pid); err != nil {
			t.Fatalf("helper agent: %v", err)
		}
		if pg, err := unix.Getpgid(pid); err != nil || pg != pid {
			t.Fatalf("worker %d in process group %d (%v), want its own", pid, pg, err)
		}
		if stop {
			unix.Kill(pid, unix.SIGSTOP)
		}
		cmd.Process.Kill()
		cmd.Wait()
		deadline := time.Now().Add(10 * time.Second)
		for !gone(pid) {
			if time.Now().After(deadline) {
				unix.Kill(pid, unix.SIGKILL)
				t.Fatalf("worker %d (stopped: %v) outlived its agent", pid, stop)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
