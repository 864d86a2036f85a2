package vmm_test

// Signals and faults in the library OS: the sig-* musl guests booted on the
// real Kiln kernel under real KVM, each compared with a native run of the
// same binary — the same stdout, and the same death (128 + signo) where the
// guest is meant to die.

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// sigNative runs a guest binary as a plain process and returns its
// stdout and its status as a shell reports it (128 + signo if a signal
// ended it).
func sigNative(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(kvmtest.BuildDir(t), "guests", name), args...)
	cmd.Args[0] = name
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return out.String(), 128 + int(ws.Signal())
		}
		return out.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("native %s: %v", name, err)
	}
	return out.String(), 0
}

// sigSameAsNative checks a guest that must succeed in the VM and natively,
// printing the same lines in both.
func sigSameAsNative(t *testing.T, name string) guestRun {
	t.Helper()
	r := runGuest(t, name, nil)
	r.wantSuccess(t)
	out, code := sigNative(t, name)
	if code != 0 || out != r.stdout {
		t.Errorf("native: status %d stdout %q\nVM stdout %q", code, out, r.stdout)
	}
	return r
}

func TestSignalFaults(t *testing.T) {
	r := sigSameAsNative(t, "sig-fault")
	for _, want := range []string{"segv: code 1 addr 0x30", "fpe: code 1 at div_site+2", "sigreturn: registers", "altstack: on it, flags 1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
}

func TestSignalThreads(t *testing.T) {
	sigSameAsNative(t, "sig-thread")
}

func TestSignalSend(t *testing.T) {
	r := sigSameAsNative(t, "sig-send")
	if r.res.Enosys != 0 {
		t.Errorf("ENOSYS: %v", r.res.EnosysByNr)
	}
}

// TestSignalFrameFuzz throws thousands of corrupted frames at rt_sigreturn
// (sig-fuzz): every one must end in a resume or a signal the program
// catches, never in a kernel fault or a hang — natively too.
func TestSignalFrameFuzz(t *testing.T) {
	for _, seed := range []string{"1", "0x5eed", "977"} {
		r := runGuest(t, "sig-fuzz", nil, "3000", seed)
		r.wantSuccess(t)
		if out, code := sigNative(t, "sig-fuzz", "3000", seed); code != 0 || !strings.Contains(out, "SUCCESS") {
			t.Errorf("native seed %s: status %d stdout %q", seed, code, out)
		}
	}
}

func TestSignalDeath(t *testing.T) {
	cases := []struct {
		mode   string
		sig    int
		stderr string
	}{
		{"blocked-segv", 11, "kiln: SIGSEGV: page fault at address 0x0"},
		{"ignored-segv", 11, "kiln: SIGSEGV: page fault at address 0x0"},
		{"handler-faults", 11, "kiln: SIGSEGV: page fault at address 0x10"},
		{"badstack", 11, "kiln: SIGSEGV: cannot write a signal frame"},
		{"resethand", 10, "kiln: SIGUSR1: killed by a signal"},
		{"term", 15, "kiln: SIGTERM: killed by a signal"},
		{"abort", 6, "kiln: SIGABRT: killed by a signal"},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			r := runGuest(t, "sig-die", nil, c.mode)
			if r.res.Reason != vmm.ReasonSignaled || r.res.Signal != c.sig || r.res.Status != 128+c.sig {
				t.Errorf("reason %d signal %d status %d, want signal %d status %d",
					r.res.Reason, r.res.Signal, r.res.Status, c.sig, 128+c.sig)
			}
			if !strings.HasPrefix(r.stderr, c.stderr) {
				t.Errorf("stderr %q, want it to start with %q", r.stderr, c.stderr)
			}
			out, code := sigNative(t, "sig-die", c.mode)
			if code != 128+c.sig || out != r.stdout {
				t.Errorf("native: status %d stdout %q; VM status %d stdout %q", code, out, r.res.Status, r.stdout)
			}
		})
	}
}
