package vmm_test

// The fd table's tests: the fd-* musl guests of unikernel/guests (pipes,
// eventfd, epoll, poll, the dup family) booted on the real Kiln kernel under
// real KVM. Each guest checks Linux semantics itself and must end in
// SUCCESS both in the VM and as a native process; the lines it prints are
// compared between the two runs, except "info:" lines (answers that differ
// by design) and "timing:" lines (measurements, logged).

import (
	"strings"
	"testing"
	"time"
)

// portable drops the lines that may differ between a VM and a native run.
func portable(out string) string {
	var keep []string
	for _, l := range strings.SplitAfter(out, "\n") {
		if strings.HasPrefix(l, "info: ") || strings.HasPrefix(l, "timing: ") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "")
}

// fdGuest boots an fd-* guest, wants SUCCESS, no ENOSYS, and the same
// comparable output as the native run of the same binary.
func fdGuest(t *testing.T, name string) guestRun {
	t.Helper()
	r := runGuest(t, name, nil)
	r.wantSuccess(t)
	if r.res.Enosys != 0 {
		t.Errorf("%s hit ENOSYS: %v", name, r.res.EnosysByNr)
	}
	out, code := native(t, name, nil, nil)
	if code != 0 || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("native %s: exit %d, stdout %q", name, code, out)
	}
	if got, want := portable(r.stdout), portable(out); got != want {
		t.Errorf("%s: VM printed\n%s\nnative printed\n%s", name, got, want)
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "timing: ") {
			t.Log("VM " + l)
		}
	}
	return r
}

func TestFdPipe(t *testing.T) {
	fdGuest(t, "fd-pipe")
}

func TestFdEventfd(t *testing.T) {
	r := fdGuest(t, "fd-eventfd")
	// Linux's anon inode: no file type bits, rw-------.
	if !strings.Contains(r.stdout, "eventfd: fstat type 0 perm 600\n") {
		t.Errorf("stdout %q lacks the anon-inode fstat line", r.stdout)
	}
}

func TestFdEpoll(t *testing.T) {
	r := fdGuest(t, "fd-epoll")
	// fds 0-2 are not pollable in Kiln: Go falls back to blocking I/O.
	if want := "info: epoll_ctl(stdout) = -1 errno 1\n"; !strings.Contains(r.stdout, want) {
		t.Errorf("stdout lacks %q", want)
	}
	// The guest's own clock says its waits took as long as asked; the
	// host's clock must agree that the VM was not simply told so: the
	// timeouts add up to 100+50+30+40+20 ms.
	if r.elapsed < 240*time.Millisecond {
		t.Errorf("the run took %v, less than the 240 ms of timeouts it waited", r.elapsed)
	}
	// Waiting is idling in the VMM, not spinning: each timed wait is an
	// exit, and there are only a few of them.
	if r.res.Stats.Hypercalls < 5 || r.res.Stats.Hypercalls > 50 {
		t.Errorf("%d hypercalls for 5 timed waits", r.res.Stats.Hypercalls)
	}
}

func TestFdDup(t *testing.T) {
	r := fdGuest(t, "fd-dup")
	// What was written while stdout pointed at a pipe went to the pipe.
	if strings.Contains(r.stdout, "into the pipe") {
		t.Errorf("stdout %q has the bytes written through the redirected fd 1", r.stdout)
	}
	if !strings.Contains(r.stdout, "dup: via a dup of stdout\n") {
		t.Errorf("stdout %q lacks the line written through a dup of fd 1", r.stdout)
	}
}

// TestFdThreads: pipes, eventfd and epoll across threads. The guest says
// SKIP when pthread_create fails; the kernel has threads, so that is a
// failure here, never a skip.
func TestFdThreads(t *testing.T) {
	r := runGuest(t, "fd-threads", nil)
	if strings.HasPrefix(r.stdout, "SKIP: ") {
		t.Fatalf("fd-threads could not start its threads in the VM: %s (enosys %v)", strings.TrimSpace(r.stdout), r.res.EnosysByNr)
	}
	r.wantSuccess(t)
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "timing: ") {
			t.Log("VM " + l)
		}
	}
	out, code := native(t, "fd-threads", nil, nil)
	if code != 0 || portable(out) != portable(r.stdout) {
		t.Errorf("native: exit %d stdout %q; VM stdout %q", code, out, r.stdout)
	}
}
