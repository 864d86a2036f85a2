package vmm_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// run boots build/vmmguests/name on the real kernel and runs it.
type run struct {
	res            *vmm.Result
	err            error
	stdout, stderr string
	elapsed        time.Duration
}

func boot(t testing.TB, name string, ctx context.Context, edit func(*vmm.Config)) run {
	t.Helper()
	kvmtest.Require(t)
	var out, errb bytes.Buffer
	cfg := vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "vmmguests/"+name),
		Args:    []string{name},
		Stdout:  &out,
		Stderr:  &errb,
	}
	if edit != nil {
		edit(&cfg)
	}
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("%s: New: %v", name, err)
	}
	defer vm.Close()
	if ctx == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
	}
	start := time.Now()
	res, err := vm.Run(ctx)
	r := run{res: res, err: err, stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if res == nil {
		t.Fatalf("%s: Run returned no result (err %v)", name, err)
	}
	t.Logf("%s: reason %d status %d msg %q stats %+v ring0 %d in %v\nstdout %q\nstderr %q",
		name, res.Reason, res.Status, res.Message, res.Stats, res.Ring0Entries, r.elapsed, r.stdout, r.stderr)
	return r
}

func TestBootOK(t *testing.T) {
	for _, pio := range []bool{false, true} {
		r := boot(t, "ok", nil, func(c *vmm.Config) { c.PortIO = pio })
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
