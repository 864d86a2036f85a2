package vmm_test

// The scheduler's tests: musl guests (unikernel/guests/thr-*.c) that use
// threads, futexes, sleeping and blocking stdin, booted on the real Kiln
// kernel under real KVM and, where their output does not depend on the
// platform, checked against a native run of the same binary.

import (
	"strings"
	"testing"
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
