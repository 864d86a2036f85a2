package vmm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/unikernel/abi"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// run boots build/vmmguests/name on the real kernel and runs it.
type run struct {
	res            *vmm.Result
	err            error
	stdout, stderr string
	elapsed        time.Duration
}

// boot runs guest name with a timeout counted from Run (0: one minute).
func boot(t testing.TB, name string, timeout time.Duration, edit func(*vmm.Config)) run {
	t.Helper()
	return bootArtifact(t, "vmmguests/"+name, []string{name}, timeout, edit)
}

// bootArtifact boots the build artifact rel (a guest program) on the real
// kernel with argv args, stdout and stderr captured, and waits for it to end
// (timeout counted from Run; 0: one minute). Every guest test goes through it.
func bootArtifact(t testing.TB, rel string, args []string, timeout time.Duration, edit func(*vmm.Config)) run {
	t.Helper()
	kvmtest.Require(t)
	var out, errb bytes.Buffer
	cfg := vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, rel),
		Args:    args,
		Stdout:  &out,
		Stderr:  &errb,
	}
	if edit != nil {
		edit(&cfg)
	}
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("%s: New: %v", rel, err)
	}
	defer vm.Close()
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	res, err := vm.Run(ctx)
	r := run{res: res, err: err, stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if res == nil {
		t.Fatalf("%s: Run returned no result (err %v)", rel, err)
	}
	t.Logf("%s %q: reason %d status %d signal %d msg %q syscalls %d enosys %d %v ring0 %d stats %+v in %v\nstdout %q\nstderr %q",
		rel, args[1:], res.Reason, res.Status, res.Signal, res.Message, res.Syscalls, res.Enosys,
		res.EnosysByNr, res.Ring0Entries, res.Stats, r.elapsed, r.stdout, r.stderr)
	return r
}

func TestBootOK(t *testing.T) {
	for _, pio := range []bool{false, true} {
		r := boot(t, "ok", 0, func(c *vmm.Config) { c.PortIO = pio })
		if r.err != nil || r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
			t.Fatalf("portio=%v: got reason %d status %d err %v, want a clean exit", pio, r.res.Reason, r.res.Status, r.err)
		}
		if r.stdout != "SUCCESS\n" {
			t.Errorf("portio=%v: stdout %q, want SUCCESS", pio, r.stdout)
		}
		if pio && r.res.Stats.IOExits == 0 {
			t.Errorf("PortIO: no port-I/O exits: %+v", r.res.Stats)
		}
		if !pio && (r.res.Stats.IOExits != 0 || r.res.Stats.MMIOExits == 0) {
			t.Errorf("MMIO: unexpected exit mix %+v", r.res.Stats)
		}
	}
}

func TestExitStatus(t *testing.T) {
	r := boot(t, "exit42", 0, nil)
	if r.err != nil || r.res.Reason != vmm.ReasonExited || r.res.Status != 42 {
		t.Fatalf("got reason %d status %d err %v, want exit 42", r.res.Reason, r.res.Status, r.err)
	}
}

// Each guest runs one instruction ring 3 may not run, or traps: the kernel
// must end it as Linux would, with 128+signo and the cause on stderr.
func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		guest  string
		status int
		cause  string // on stderr, in words (any case)
	}{
		{"priv_out", 139, "general protection"},
		{"priv_hlt", 139, "general protection"},
		{"priv_cli", 139, "general protection"},
		{"priv_cr3", 139, "general protection"},
		{"ud2", 132, "invalid opcode"},
		{"div0", 136, "divide error"},
		{"nullptr", 139, "page fault"},
		{"int3", 133, "breakpoint"},
	} {
		t.Run(tc.guest, func(t *testing.T) {
			r := boot(t, tc.guest, 0, nil)
			if r.err != nil {
				t.Fatalf("Run error %v: a fault is the program's own outcome", r.err)
			}
			if r.res.Reason != vmm.ReasonSignaled || r.res.Status != tc.status || r.res.Signal != tc.status-128 {
				t.Fatalf("reason %d status %d signal %d, want signaled with status %d", r.res.Reason, r.res.Status, r.res.Signal, tc.status)
			}
			if r.stdout != "before\n" {
				t.Errorf("stdout %q: the program should have run up to the fault and no further", r.stdout)
			}
			if !strings.Contains(strings.ToLower(r.stderr), tc.cause) {
				t.Errorf("stderr %q does not name %s", r.stderr, tc.cause)
			}
			if r.res.Message == "" || r.res.Ring0Entries == 0 {
				t.Errorf("message %q, ring-0 entries %d: want both", r.res.Message, r.res.Ring0Entries)
			}
		})
	}
	t.Run("nullptr-address", func(t *testing.T) {
		r := boot(t, "nullptr", 0, nil)
		if !strings.Contains(r.res.Message, "address 0x0,") {
			t.Errorf("message %q should carry fault address 0", r.res.Message)
		}
	})
}

func TestTimeout(t *testing.T) {
	r := boot(t, "spin", 300*time.Millisecond, nil)
	if !errors.Is(r.err, vmm.ErrTimeout) || r.res.Reason != vmm.ReasonTimeout {
		t.Fatalf("got reason %d err %v, want a timeout", r.res.Reason, r.err)
	}
	if r.elapsed > 3*time.Second {
		t.Errorf("Run took %v after a 300 ms deadline: the vCPU was not kicked promptly", r.elapsed)
	}
	if !strings.Contains(r.res.Regs, "rip") {
		t.Errorf("no register dump: %q", r.res.Regs)
	}
}

// Close from another goroutine stops a running VM.
func TestCloseStopsRun(t *testing.T) {
	kvmtest.Require(t)
	vm, err := vmm.New(vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "vmmguests/spin"),
	})
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, func() { vm.Close() })
	res, err := vm.Run(context.Background())
	if !errors.Is(err, vmm.ErrTimeout) || res.Reason != vmm.ReasonTimeout {
		t.Fatalf("got %+v, %v: want the run stopped by Close", res, err)
	}
}

func TestBadHypercalls(t *testing.T) {
	for _, tc := range []struct{ guest, want string }{
		{"badhc_range", "0x7fff00000000"},
		{"badhc_nr", fmt.Sprintf("unknown hypercall number %d", abi.HCMax+5)}, // badhc_nr.c rings KILN_HC_MAX + 5
	} {
		r := boot(t, tc.guest, 0, nil)
		if !errors.Is(r.err, vmm.ErrGuest) || r.res.Reason != vmm.ReasonBadHypercall {
			t.Errorf("%s: reason %d err %v, want ReasonBadHypercall", tc.guest, r.res.Reason, r.err)
		}
		if !strings.Contains(r.res.Message, tc.want) {
			t.Errorf("%s: message %q does not name %q", tc.guest, r.res.Message, tc.want)
		}
		if r.res.Regs == "" {
			t.Errorf("%s: no register dump", tc.guest)
		}
	}
}

func TestTripleFault(t *testing.T) {
	r := boot(t, "idt_smash", 0, nil)
	if !errors.Is(r.err, vmm.ErrGuest) || r.res.Reason != vmm.ReasonTripleFault {
		t.Fatalf("reason %d err %v, want ReasonTripleFault", r.res.Reason, r.err)
	}
	if !strings.Contains(r.res.Message, "KVM_EXIT_SHUTDOWN") || r.res.Regs == "" {
		t.Errorf("message %q regs %q", r.res.Message, r.res.Regs)
	}
}

// One VM triple-faulting must not disturb another running beside it.
func TestConcurrentVMsIsolated(t *testing.T) {
	kvmtest.Require(t) // before the goroutines: a skip must happen here
	var wg sync.WaitGroup
	var good, bad run
	wg.Add(2)
	go func() {
		defer wg.Done()
		good = boot(t, "echo", 0, func(c *vmm.Config) {
			c.Stdin = strings.NewReader(strings.Repeat("isolated ", 1000))
		})
	}()
	go func() { defer wg.Done(); bad = boot(t, "idt_smash", 0, nil) }()
	wg.Wait()
	if bad.res.Reason != vmm.ReasonTripleFault {
		t.Errorf("bad VM: reason %d, want triple fault", bad.res.Reason)
	}
	if good.err != nil || good.res.Reason != vmm.ReasonExited || good.stdout != strings.Repeat("isolated ", 1000) {
		t.Errorf("good VM: reason %d err %v, %d bytes out", good.res.Reason, good.err, len(good.stdout))
	}
}

func TestEcho(t *testing.T) {
	in := strings.Repeat("0123456789abcdef", 20000) // several reads' worth
	r := boot(t, "echo", 0, func(c *vmm.Config) { c.Stdin = strings.NewReader(in) })
	if r.err != nil || r.res.Status != 0 || r.stdout != in {
		t.Fatalf("status %d err %v, echoed %d of %d bytes", r.res.Status, r.err, len(r.stdout), len(in))
	}
	empty := boot(t, "echo", 0, nil) // nil Stdin: EOF at once
	if empty.err != nil || empty.res.Status != 0 || empty.stdout != "" {
		t.Fatalf("nil stdin: status %d err %v out %q", empty.res.Status, empty.err, empty.stdout)
	}
}

// Exits are counted exactly: N ring-3 doorbell flushes cost N exits more
// than none.
func TestExitCounting(t *testing.T) {
	exits := func(n int) (vmm.Stats, string) {
		r := boot(t, "flushes", 0, func(c *vmm.Config) { c.Args = []string{"flushes", fmt.Sprint(n)} })
		if r.err != nil || r.res.Status != 0 {
			t.Fatalf("flushes %d: status %d err %v", n, r.res.Status, r.err)
		}
		return r.res.Stats, r.stdout
	}
	base, _ := exits(0)
	got, out := exits(50)
	if got.Exits-base.Exits != 50 || got.MMIOExits-base.MMIOExits != 50 || got.Hypercalls-base.Hypercalls != 50 {
		t.Errorf("50 flushes: %+v vs %+v, want exactly 50 more exits", got, base)
	}
	if out != strings.Repeat(".", 50) {
		t.Errorf("stdout %q", out)
	}
}

// Stats is readable while the VM runs.
func TestStatsWhileRunning(t *testing.T) {
	kvmtest.Require(t)
	pr, pw := io.Pipe()
	vm, err := vmm.New(vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "vmmguests/echo"),
		Stdin:   pr,
		Stdout:  &bytes.Buffer{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan *vmm.Result, 1)
	go func() { r, _ := vm.Run(context.Background()); done <- r }()
	for i := 0; i < 5; i++ {
		before := vm.Stats().Exits
		wrote := make(chan error, 1)
		go func() { _, err := pw.Write([]byte("x")); wrote <- err }()
		deadline := time.Now().Add(10 * time.Second)
		for vm.Stats().Exits == before && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if vm.Stats().Exits == before {
			t.Fatalf("write %d: exits stayed at %d", i, before)
		}
		select {
		case err := <-wrote:
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		case r := <-done:
			t.Fatalf("the VM ended early: %+v", r)
		}
	}
	pw.Close()
	if r := <-done; r.Reason != vmm.ReasonExited || r.Status != 0 {
		t.Fatalf("reason %d status %d", r.Reason, r.Status)
	}
}

// The loader refuses broken images before any KVM work, so this runs
// anywhere the test guests are built.
func TestLoaderRejects(t *testing.T) {
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	for _, tc := range []struct{ guest, want string }{
		{"bad_notelf", "not an ELF"},
		{"bad_truncated", "run past the end"},
		{"bad_32bit", "not a 64-bit"},
		{"bad_aarch64", "not x86-64"},
		{"bad_dynamic", "dynamically linked"},
		{"bad_outside", "outside the guest region"},
	} {
		_, err := vmm.New(vmm.Config{Kernel: kernel, Program: kvmtest.Artifact(t, "vmmguests/"+tc.guest)})
		if !errors.Is(err, vmm.ErrBadELF) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadELF saying %q", tc.guest, err, tc.want)
		}
	}
	ok := kvmtest.Artifact(t, "vmmguests/ok")
	if _, err := vmm.New(vmm.Config{Kernel: ok, Program: ok}); !errors.Is(err, vmm.ErrBadELF) {
		t.Errorf("a program as the kernel: %v, want ErrBadELF", err)
	}
	if _, err := vmm.New(vmm.Config{Kernel: kernel, Program: ok, MemSize: 3 << 20}); !errors.Is(err, vmm.ErrMemSize) {
		t.Errorf("3 MiB: %v, want ErrMemSize", err)
	}
}

func TestFindKernel(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k.elf")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KILN_KERNEL", p)
	if got, err := vmm.FindKernel(); err != nil || got != p {
		t.Errorf("KILN_KERNEL: %q, %v", got, err)
	}
	t.Setenv("KILN_KERNEL", "")
	t.Setenv("KILN_BUILD", dir)
	os.MkdirAll(filepath.Join(dir, "kernel"), 0o755)
	want := filepath.Join(dir, "kernel", "kiln-kernel.elf")
	os.WriteFile(want, []byte("x"), 0o644)
	if got, err := vmm.FindKernel(); err != nil || got != want {
		t.Errorf("KILN_BUILD: %q, %v", got, err)
	}
	t.Setenv("KILN_BUILD", filepath.Join(dir, "nowhere"))
	t.Chdir(t.TempDir())
	if _, err := vmm.FindKernel(); !errors.Is(err, vmm.ErrNoKernel) {
		t.Errorf("nothing anywhere: %v, want ErrNoKernel", err)
	}
}

// BenchmarkHypercallMMIO and BenchmarkHypercallPIO run the `writes` guest:
// b.N one-byte write(2) syscalls to fd 2, each of which the fallback kernel
// turns into one HC_IO hypercall, by ring-3 MMIO doorbell or by int3 →
// ring-0 `outl`. ns/hypercall is timed by the guest with the TSC around the
// loop (syscall + hypercall round trip, no boot); ns/op includes the boot;
// exits/op shows whether the kernel really made one exit per write (a
// buffering library OS makes fewer).
func BenchmarkHypercallMMIO(b *testing.B) { benchWrites(b, false) }
func BenchmarkHypercallPIO(b *testing.B)  { benchWrites(b, true) }

func benchWrites(b *testing.B, pio bool) {
	r := boot(b, "writes", 10*time.Minute, func(c *vmm.Config) {
		c.PortIO = pio
		c.Args = []string{"writes", fmt.Sprint(b.N)}
		c.Stderr = io.Discard
	})
	if r.err != nil || r.res.Status != 0 {
		b.Fatalf("status %d err %v", r.res.Status, r.err)
	}
	var ticks, khz uint64
	if _, err := fmt.Sscan(r.stdout, &ticks, &khz); err != nil || khz == 0 {
		b.Fatalf("guest report %q: %v", r.stdout, err)
	}
	b.ReportMetric(float64(ticks)*1e6/float64(khz)/float64(b.N), "ns/hypercall")
	b.ReportMetric(float64(r.res.Stats.Exits)/float64(b.N), "exits/op")
	b.ReportMetric(float64(r.res.Ring0Entries)/float64(b.N), "ring0/op")
}
