package vmm_test

// The scheduler's tests: musl guests (unikernel/guests/thr-*.c) that use
// threads, futexes, sleeping and blocking stdin, booted on the real Kiln
// kernel under real KVM and, where their output does not depend on the
// platform, checked against a native run of the same binary.

import (
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// sameAsNative runs guest name in a VM and natively and wants SUCCESS and
// the same stdout from both.
func sameAsNative(t *testing.T, name string) guestRun {
	t.Helper()
	r := runGuest(t, name, nil)
	r.wantSuccess(t)
	want, code := native(t, name, nil, nil)
	if code != 0 || r.stdout != want {
		t.Errorf("VM stdout %q, native %q (exit %d)", r.stdout, want, code)
	}
	if r.res.Enosys != 0 {
		t.Errorf("unexpected ENOSYS: %v", r.res.EnosysByNr)
	}
	return r
}

func TestThreadsJoin(t *testing.T) {
	r := sameAsNative(t, "thr-join")
	if !strings.Contains(r.stdout, "total=") {
		t.Errorf("stdout %q lacks the total", r.stdout)
	}
}

func TestThreadsCondvar(t *testing.T) {
	sameAsNative(t, "thr-condvar")
}

func TestThreadsFutex(t *testing.T) {
	sameAsNative(t, "thr-futex")
}

func TestThreadsClone(t *testing.T) {
	// The child's registers, CHILD_CLEARTID and flags Linux refuses too.
	sameAsNative(t, "thr-bomb")
	// Processes are refused.
	runGuest(t, "thr-bomb", nil, "refuse").wantSuccess(t)
	// A clone bomb ends at the thread table (KTHREAD_MAX = 64 with main)
	// with EAGAIN, and the slots are reusable afterwards.
	r := runGuest(t, "thr-bomb", nil, "bomb")
	r.wantSuccess(t)
	if !strings.Contains(r.stdout, "threads=63\n") || !strings.Contains(r.stdout, "reused ok\n") {
		t.Errorf("stdout %q, want 63 threads then reuse", r.stdout)
	}
	if out, code := native(t, "thr-bomb", nil, nil, "bomb"); code != 0 || !strings.Contains(out, "threads=200\n") {
		t.Errorf("native bomb: exit %d stdout %q", code, out)
	}
}

func TestThreadsExit(t *testing.T) {
	for _, c := range []struct {
		mode   string
		status int
	}{{"detach", 0}, {"group", 3}, {"worker", 5}, {"last", 7}} {
		t.Run(c.mode, func(t *testing.T) {
			r := runGuest(t, "thr-exit", nil, c.mode)
			if r.res.Reason != vmm.ReasonExited || r.res.Status != c.status {
				t.Errorf("reason %d status %d (%s), want exit %d", r.res.Reason, r.res.Status, r.res.Message, c.status)
			}
			out, code := native(t, "thr-exit", nil, nil, c.mode)
			if code != c.status || out != r.stdout {
				t.Errorf("native: exit %d stdout %q; VM stdout %q", code, out, r.stdout)
			}
		})
	}
}

func TestThreadsXMM(t *testing.T) {
	r := sameAsNative(t, "thr-xmm")
	t.Logf("guest says %q", r.stderr)
}

func TestThreadsSleep(t *testing.T) {
	r := sameAsNative(t, "thr-sleep")
	t.Logf("measured in the guest:\n%s", r.stderr)
}

// TestThreadsStdin: readers block only themselves, input arrives through the
// idle hypercall while a ticker thread sleeps, every byte reaches one reader
// and EOF reaches all of them.
func TestThreadsStdin(t *testing.T) {
	in := make([]byte, 200<<10)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() {
		time.Sleep(3 * time.Second)
		_, _ = pw.Write(in)
		pw.Close()
	}()
	r := runGuest(t, "thr-stdin", func(c *vmm.Config) { c.Stdin = pr })
	r.wantSuccess(t)
	want, code := native(t, "thr-stdin", in, nil)
	if code != 0 || r.stdout != want {
		t.Errorf("VM stdout %q, native %q (exit %d)", r.stdout, want, code)
	}
	var ticks, ms int
	if _, err := fmt.Sscanf(r.stderr, "ticks_before_input=%d ms_before_input=%d", &ticks, &ms); err != nil {
		t.Fatalf("stderr %q: %v", r.stderr, err)
	}
	// The writer waits 3 s from before the VM boots, so the guest waits
	// for input a while; the ticker (10 ms sleeps) must tick on meanwhile,
	// though three threads are blocked reading. Under an emulator on a
	// busy host one idle wait may take ~250 ms, so two ticks will do.
	if ms < 500 || ticks < 2 {
		t.Errorf("%d ticks in the %d ms before input arrived, want ≥ 2 in ≥ 500 ms", ticks, ms)
	}
}

func TestThreadsDeadlock(t *testing.T) {
	r := runGuest(t, "thr-deadlock", nil)
	if r.res.Reason != vmm.ReasonPanic || r.res.Status != 255 {
		t.Errorf("reason %d status %d, want a kernel panic exit (255)", r.res.Reason, r.res.Status)
	}
	if r.stdout != "joining\n" || !strings.Contains(r.stderr, "kiln: deadlock: every thread is blocked forever\n") {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}
}
