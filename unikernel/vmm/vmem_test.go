package vmm_test

// The guest kernel's address space (unikernel/kernel/vmem.c, vmemsys.c)
// under real KVM: build/guests/vm-mem in a 64 MiB VM, as Go's runtime
// uses memory — reservations far bigger than RAM, MAP_FIXED growth until
// ENOMEM, memory given back with KILN_HC_DISCARD, demand paging until the
// memory limit kills the function.

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

const vmemMem = 64 << 20

func vmemGuest(t *testing.T, part string, edit func(*vmm.Config)) guestRun {
	t.Helper()
	return runGuest(t, "vm-mem", func(c *vmm.Config) {
		c.MemSize = vmemMem
		if edit != nil {
			edit(c)
		}
	}, part)
}

func TestVmemReserve(t *testing.T) {
	r := vmemGuest(t, "reserve", nil)
	r.wantSuccess(t)
	// DONTNEED, munmap and the replaced ranges went back to the host.
	if r.res.Stats.Discards == 0 || r.res.Stats.Discarded < 2<<20 {
		t.Errorf("stats %+v: want discards of at least 2 MiB", r.res.Stats)
	}
	if r.res.Enosys != 0 {
		t.Errorf("ENOSYS: %v", r.res.EnosysByNr)
	}
}

func TestVmemGrowUntilENOMEM(t *testing.T) {
	r := vmemGuest(t, "grow", nil)
	r.wantSuccess(t)
	var n int
	if _, err := fmt.Sscanf(r.stdout[strings.Index(r.stdout, "SUCCESS"):], "SUCCESS: %d MiB", &n); err != nil {
		t.Fatalf("stdout %q: %v", r.stdout, err)
	}
	// 64 MiB less the kernel's 4 MiB, the image, the stack and the
	// kernel's own frames; the pool must be nearly all usable.
	if n < 40 || n > 56 {
		t.Errorf("%d MiB of MAP_FIXED memory in a 64 MiB VM", n)
	}
}

func TestVmemLazyOverLimitIsKilled(t *testing.T) {
	r := vmemGuest(t, "lazy", nil)
	if r.res.Reason != vmm.ReasonSignaled || r.res.Signal != 9 || r.res.Status != 137 {
		t.Fatalf("reason %d signal %d status %d (%s), want SIGKILL 137; stderr %q",
			r.res.Reason, r.res.Signal, r.res.Status, r.res.Message, r.stderr)
	}
	if !strings.Contains(r.stderr, "out of memory") {
		t.Errorf("stderr %q does not say out of memory", r.stderr)
	}
	// It got far: nearly all of RAM was handed out page by page first.
	var last int
	for _, l := range strings.Split(r.stderr, "\n") {
		fmt.Sscanf(l, "touched %d MiB", &last)
	}
	if last < 40 || last > 64 {
		t.Errorf("killed after %d MiB touched, want most of the 64 MiB", last)
	}
	if r.res.MemUsed != 0 && r.res.MemUsed < vmemMem-4<<20 {
		t.Errorf("MemUsed %d at an out-of-memory end", r.res.MemUsed)
	}
}

func TestVmemReadIntoLazyMapping(t *testing.T) {
	in := make([]byte, 200<<10)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	r := vmemGuest(t, "readlazy", func(c *vmm.Config) { c.Stdin = bytes.NewReader(in) })
	if r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
		t.Fatalf("reason %d status %d (%s); stderr %q", r.res.Reason, r.res.Status, r.res.Message, r.stderr)
	}
	if r.stdout != string(in) {
		t.Fatalf("echoed %d bytes, want the %d it read", len(r.stdout), len(in))
	}
}

// A small Go program (the Go matrix's numcpu: runtime start-up, a few
// threads, fmt) in 64 MiB. Go touches a few 4 KiB pages in each of many
// sparse regions, so what it really commits is the measure of the page
// sizes: with 2 MiB granularity every touched region cost a whole frame.
func TestVmemGoSmallFootprint(t *testing.T) {
	r := bootArtifact(t, "gocompat/numcpu", []string{"numcpu"}, time.Minute,
		func(c *vmm.Config) { c.MemSize = vmemMem })
	if r.res.Reason != vmm.ReasonExited || r.res.Status != 0 {
		t.Fatalf("reason %d status %d (%s); stdout %q stderr %q",
			r.res.Reason, r.res.Status, r.res.Message, r.stdout, r.stderr)
	}
	t.Logf("Go program in %d MiB: mem_used %d KiB, mem_peak %d KiB, stats %+v",
		vmemMem>>20, r.res.MemUsed>>10, r.res.MemPeak>>10, r.res.Stats)
	// 2 MiB granularity measured 32 MiB here (8 of them the kernel, image
	// and stack frames); 4 KiB pages ≈ 17 MiB.
	if r.res.MemPeak == 0 || r.res.MemPeak > 24<<20 || r.res.MemUsed > r.res.MemPeak {
		t.Errorf("mem_used %d, mem_peak %d: want a peak of at most 24 MiB", r.res.MemUsed, r.res.MemPeak)
	}
}

// 128 one-byte touches spread over a 256 MiB lazy mapping cost 4 KiB
// pages each (a 64 KiB cluster), so they fit in 64 MiB and the exit report
// says what they really committed.
func TestVmemSparseTouchesFit(t *testing.T) {
	r := vmemGuest(t, "sparse", nil)
	r.wantSuccess(t)
	t.Logf("mem_used %d KiB, mem_peak %d KiB", r.res.MemUsed>>10, r.res.MemPeak>>10)
	if r.res.MemPeak < 8<<20 || r.res.MemPeak > 32<<20 {
		t.Errorf("mem_peak %d: want 128 × 64 KiB on top of the boot frames, under 32 MiB", r.res.MemPeak)
	}
}
