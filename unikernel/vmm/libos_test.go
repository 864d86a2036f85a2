package vmm_test

// The library OS's tests: the musl guests of unikernel/guests booted on the
// real Kiln kernel (build/kernel/kiln-kernel.elf) under real KVM, checked
// against what they print, how they end and what the kernel counted — and,
// where the program's behaviour does not depend on the platform, against a
// native run of the same binary.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// guestRun is how a musl guest ended (see bootArtifact in vm_test.go).
type guestRun = run

// runGuest boots build/guests/name with argv [name, args...] and waits for
// it to end (60 s at most).
func runGuest(t *testing.T, name string, edit func(*vmm.Config), args ...string) guestRun {
	t.Helper()
	return bootArtifact(t, "guests/"+name, append([]string{name}, args...), time.Minute, edit)
}

func (r guestRun) wantSuccess(t *testing.T) {
	t.Helper()
	if r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
		t.Fatalf("reason %d status %d (%s), want a clean exit; stdout %q stderr %q",
			r.res.Reason, r.res.Status, r.res.Message, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "SUCCESS") || strings.Contains(r.stdout, "ABORT") {
		t.Fatalf("stdout %q, want SUCCESS", r.stdout)
	}
	if r.res.Syscalls == 0 {
		t.Errorf("the kernel reports no syscalls handled")
	}
}

// native runs the same guest binary as a plain Linux process.
func native(t *testing.T, name string, stdin []byte, env []string, args ...string) (stdout string, code int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(kvmtest.BuildDir(t), "guests", name), args...)
	cmd.Args[0] = name
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("native %s: %v", name, err)
	}
	return out.String(), 0
}

func TestLibosHello(t *testing.T) {
	r := runGuest(t, "hello", nil)
	if r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
		t.Fatalf("reason %d status %d, want a clean exit", r.res.Reason, r.res.Status)
	}
	want, code := native(t, "hello", nil, nil)
	if code != 0 || r.stdout != want || want != "hello from kiln\n" {
		t.Errorf("VM stdout %q, native %q (exit %d), want both %q", r.stdout, want, code, "hello from kiln\n")
	}
	// Buffered stdout: a whole program run is one exit (KILN_HC_EXIT).
	if r.res.Stats.Hypercalls != 1 {
		t.Errorf("hello took %d hypercalls, want 1 (output leaves with the exit)", r.res.Stats.Hypercalls)
	}
	if r.res.Enosys != 0 {
		t.Errorf("musl start-up hit ENOSYS: %v", r.res.EnosysByNr)
	}
}

func TestLibosSyscalls(t *testing.T) {
	now := time.Now().Unix()
	r := runGuest(t, "syscalls", func(c *vmm.Config) {
		c.Env = []string{"KILN_TEST_NOW=" + strconv.FormatInt(now, 10)}
		c.Hostname = "libos-test"
	})
	r.wantSuccess(t)
	for _, want := range []string{
		"info: pid=1 ppid=0 uid=0 euid=0 gid=0 egid=0\n",
		"info: nodename=libos-test release=6.1.0-kiln\n",
		"info: cpus=1\n",
		"info: fstat0=fifo fstat1=fifo fstat2=fifo\n",
		"writev\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if !strings.Contains(r.stderr, "stderr works\n") {
		t.Errorf("stderr %q lacks the guest's line", r.stderr)
	}
	if r.res.Enosys != 0 {
		t.Errorf("unexpected ENOSYS: %v", r.res.EnosysByNr)
	}
	// Natively the same checks pass (values that differ are only printed).
	out, code := native(t, "syscalls", nil, []string{"KILN_TEST_NOW=" + strconv.FormatInt(time.Now().Unix(), 10)})
	if code != 0 || !strings.Contains(out, "SUCCESS") {
		t.Errorf("native run: exit %d, stdout %q", code, out)
	}
}

func TestLibosTrace(t *testing.T) {
	r := runGuest(t, "hello", func(c *vmm.Config) { c.TraceSyscalls = true })
	if r.stdout != "hello from kiln\n" {
		t.Errorf("stdout %q", r.stdout)
	}
	for _, want := range []string{"ioctl(0x1, 0x5413, ", ") = -25\n", "writev(0x1, ", "exit_group(0x0) ..."} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("trace %q lacks %q", r.stderr, want)
		}
	}
	if n := strings.Count(r.stderr, "\n"); uint64(n) != r.res.Syscalls {
		t.Errorf("%d trace lines for %d syscalls", n, r.res.Syscalls)
	}
}

func TestLibosEnosys(t *testing.T) {
	r := runGuest(t, "enosys", nil)
	r.wantSuccess(t)
	if r.res.Enosys != 3 || r.res.EnosysByNr[1000] != 2 || r.res.EnosysByNr[335] != 1 {
		t.Errorf("enosys %d by nr %v, want 3: {1000: 2, 335: 1}", r.res.Enosys, r.res.EnosysByNr)
	}
}

func TestLibosEfault(t *testing.T) {
	r := runGuest(t, "efault", func(c *vmm.Config) { c.Stdin = strings.NewReader("abcd") })
	r.wantSuccess(t)
	out, code := native(t, "efault", []byte("abcd"), nil)
	if code != 0 || out != r.stdout {
		t.Errorf("native: exit %d stdout %q; VM stdout %q", code, out, r.stdout)
	}
}

func TestLibosMembomb(t *testing.T) {
	r := runGuest(t, "membomb", func(c *vmm.Config) { c.MemSize = 64 << 20 })
	r.wantSuccess(t)
	var n int
	if _, err := fmt.Sscanf(r.stdout[strings.Index(r.stdout, "SUCCESS"):], "SUCCESS: %d chunks", &n); err != nil {
		t.Fatalf("stdout %q: %v", r.stdout, err)
	}
	// 64 MiB of RAM, minus 4 MiB below the function, its image and stack.
	if n < 40 || n > 60 {
		t.Errorf("%d MiB allocated in a 64 MiB VM", n)
	}
}

func TestLibosCat(t *testing.T) {
	in := make([]byte, 300<<10)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	r := runGuest(t, "cat", func(c *vmm.Config) { c.Stdin = bytes.NewReader(in) })
	if r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
		t.Fatalf("reason %d status %d", r.res.Reason, r.res.Status)
	}
	if r.stdout != string(in) {
		t.Fatalf("cat returned %d bytes, want the %d it was given", len(r.stdout), len(in))
	}
}

func TestLibosFaults(t *testing.T) {
	cases := []struct {
		arg, stderr string
		sig         int
	}{
		{"null", "kiln: SIGSEGV: page fault at address 0x0 (read, not present) at rip=0x", 11},
		{"ud2", "kiln: SIGILL: invalid opcode at rip=0x", 4},
		{"div0", "kiln: SIGFPE: divide error at rip=0x", 8},
		{"hlt", "kiln: SIGSEGV: general protection fault at rip=0x", 11},
		{"out", "kiln: SIGSEGV: general protection fault at rip=0x", 11},
		{"cli", "kiln: SIGSEGV: general protection fault at rip=0x", 11},
		{"cr3", "kiln: SIGSEGV: general protection fault at rip=0x", 11},
		{"int3", "kiln: SIGTRAP: breakpoint at rip=0x", 5},
	}
	for _, c := range cases {
		t.Run(c.arg, func(t *testing.T) {
			r := runGuest(t, "faults", nil, c.arg)
			if r.res.Reason != vmm.ReasonSignaled || r.res.Signal != c.sig || r.res.Status != 128+c.sig {
				t.Errorf("reason %d signal %d status %d, want signal %d status %d",
					r.res.Reason, r.res.Signal, r.res.Status, c.sig, 128+c.sig)
			}
			if !strings.HasPrefix(r.stderr, c.stderr) {
				t.Errorf("stderr %q, want it to start with %q", r.stderr, c.stderr)
			}
			if _, code := native(t, "faults", nil, nil, c.arg); code != -1 {
				// A signal death shows as -1 from os/exec; the guest must
				// die natively too, not survive.
				t.Errorf("native faults %s exited with %d, want a signal", c.arg, code)
			}
		})
	}
}

func TestLibosArgs(t *testing.T) {
	env := []string{"KILN_ARG_TEST=it works", "OTHER=1"}
	r := runGuest(t, "args", func(c *vmm.Config) { c.Env = env }, "one", "two words", "")
	r.wantSuccess(t)
	want, code := native(t, "args", nil, env, "one", "two words", "")
	if code != 0 || r.stdout != want {
		t.Errorf("VM stdout %q, native %q", r.stdout, want)
	}
	if !strings.Contains(r.stdout, "argv[2]=two words\n") || !strings.Contains(r.stdout, "KILN_ARG_TEST=it works\n") {
		t.Errorf("stdout %q", r.stdout)
	}
}

// TestLibosServeOneExitPerRequest feeds 100 wire requests through a pipe to
// the echo-serve guest and checks each answer and that each request cost
// exactly one VM exit: the response to N and the wait for N+1 are one
// KILN_HC_IO.
func TestLibosServeOneExitPerRequest(t *testing.T) {
	kvmtest.Require(t)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var errb bytes.Buffer
	vm, err := vmm.New(vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "guests/echo-serve"),
		Args:    []string{"echo-serve"},
		Stdin:   inR,
		Stdout:  outW,
		Stderr:  &errb,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	type ran struct {
		res *vmm.Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		res, err := vm.Run(ctx)
		outW.Close()
		done <- ran{res, err}
	}()

	// The guest's first exit is its first wait for input.
	for vm.Stats().Exits < 1 {
		select {
		case r := <-done:
			t.Fatalf("guest ended before reading: %+v %v; stderr %q", r.res, r.err, errb.String())
		case <-time.After(time.Millisecond):
		}
	}
	rd := bufio.NewReader(outR)
	for i := 1; i <= 100; i++ {
		body := []byte(fmt.Sprintf("request %d %s", i, strings.Repeat("x", i*37)))
		before := vm.Stats().Exits
		if err := wire.WriteRequest(inW, &wire.Request{ID: uint64(i), Method: "POST", Path: "/", Body: body}); err != nil {
			t.Fatal(err)
		}
		resp, err := wire.ReadResponse(rd, 0)
		if err != nil {
			t.Fatalf("request %d: %v; stderr %q", i, err, errb.String())
		}
		after := vm.Stats().Exits
		if resp.ID != uint64(i) || resp.Status != 200 || !bytes.Equal(resp.Body, body) {
			t.Fatalf("request %d: got id %d status %d body %q", i, resp.ID, resp.Status, resp.Body)
		}
		if after-before != 1 {
			t.Errorf("request %d cost %d VM exits, want 1", i, after-before)
		}
	}
	inW.Close()
	r := <-done
	if r.res == nil || r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
		t.Fatalf("end: %+v %v; stderr %q", r.res, r.err, errb.String())
	}
	t.Logf("100 requests: %d syscalls, stats %+v", r.res.Syscalls, r.res.Stats)
	// At least one wait for each request and one for the EOF (a frame may
	// arrive in pieces).
	if w := r.res.Stats.InputWaits; w < 101 {
		t.Errorf("InputWaits = %d, want ≥ 101", w)
	}
}

// TestLibosHelloC runs examples/hello-c in a VM with two requests.
func TestLibosHelloC(t *testing.T) {
	var in bytes.Buffer
	for i, b := range []string{"", "kiln"} {
		if err := wire.WriteRequest(&in, &wire.Request{ID: uint64(i + 1), Method: "POST", Path: "/", Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	kvmtest.Require(t)
	var out, errb bytes.Buffer
	vm, err := vmm.New(vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "examples/hello-c/hello"),
		Args:    []string{"hello"},
		Stdin:   &in,
		Stdout:  &out,
		Stderr:  &errb,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := vm.Run(ctx)
	if err != nil || res.Reason != vmm.ReasonExited || res.Status != 0 {
		t.Fatalf("%+v %v; stderr %q", res, err, errb.String())
	}
	for i, want := range []string{"hello, world", "hello, kiln"} {
		resp, err := wire.ReadResponse(&out, 0)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ID != uint64(i+1) || resp.Status != 200 || string(resp.Body) != want ||
			resp.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("response %d: %+v body %q", i+1, resp, resp.Body)
		}
	}
	if n := strings.Count(errb.String(), "\n"); n != 2 {
		t.Errorf("stderr %q: want one log line per request", errb.String())
	}
}
