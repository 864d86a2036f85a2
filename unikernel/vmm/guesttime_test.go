package vmm

import (
	"context"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/internal/kvmtest"
)

// The KVM_RUN in progress counts: a reader adds its time so far to the
// finished runs', and a run that ended is counted once.
func TestGuestTimeRunInProgress(t *testing.T) {
	var s stats
	s.leftRun(2 * time.Second)
	if g := s.snapshot().GuestTime; g != 2*time.Second {
		t.Fatalf("outside a run: %v, want 2s", g)
	}
	s.enterRun(time.Now().Add(-time.Second))
	if g := s.snapshot().GuestTime; g < 3*time.Second || g > 4*time.Second {
		t.Fatalf("a second into a run: %v, want about 3s", g)
	}
	s.leftRun(time.Second)
	if g := s.snapshot().GuestTime; g != 3*time.Second {
		t.Fatalf("after the run: %v, want 3s", g)
	}
	// A run that began "later" by the reader's clock (a clock step) adds
	// nothing rather than taking time away.
	s.enterRun(time.Now().Add(time.Hour))
	if g := s.snapshot().GuestTime; g != 3*time.Second {
		t.Fatalf("a run starting in the future: %v, want 3s", g)
	}
}

// A guest that spins without a single exit stays inside one KVM_RUN; its
// Stats.GuestTime must still move while it spins, read in this process or
// from its StatsPage (the node-agent charges an idle instance's spinning
// with it, issue 13). Before, it read 0 until the VM was stopped.
func TestGuestTimeLive(t *testing.T) {
	kvmtest.Require(t)
	mem, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	page := mem[:StatsSize]
	vm, err := New(Config{Kernel: kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "vmmguests/spin"), Args: []string{"spin"}, StatsPage: page})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { vm.Run(ctx); close(done) }()
	time.Sleep(300 * time.Millisecond) // past boot: the guest is in its loop
	s0, r0 := vm.Stats(), ReadStats(page)
	time.Sleep(500 * time.Millisecond)
	s1, r1 := vm.Stats(), ReadStats(page)
	cancel()
	<-done
	t.Logf("guest time %v → %v (from the page: %v → %v), exits %d → %d", s0.GuestTime, s1.GuestTime, r0.GuestTime, r1.GuestTime, s0.Exits, s1.Exits)
	if d := s1.GuestTime - s0.GuestTime; d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("a spinning guest's guest time grew %v in 500 ms", d)
	}
	if d := r1.GuestTime - r0.GuestTime; d < 300*time.Millisecond {
		t.Fatalf("read from its stats page, a spinning guest's guest time grew %v in 500 ms", d)
	}
	// Stopped, it is the runs' sum and no longer moves.
	end := vm.Stats().GuestTime
	time.Sleep(50 * time.Millisecond)
	if again := vm.Stats().GuestTime; again != end || end < s1.GuestTime {
		t.Fatalf("after the end: %v, then %v (last while running %v)", end, again, s1.GuestTime)
	}
}
