package vmm

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A try interrupted for a long time is repeated: the anchor comes from a
// tight one, so a preemption does not shift the guest's clock.
func TestAtHostTimeRetriesAPreemptedTry(t *testing.T) {
	tries := 0
	var effect time.Time
	at, err := atHostTime(func() error {
		tries++
		if tries == 1 {
			time.Sleep(50 * time.Millisecond) // preempted around the ioctl
		}
		effect = time.Now()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if tries < 2 {
		t.Fatalf("%d tries: a try that took 50 ms was kept", tries)
	}
	if d := at.Sub(effect); d > 10*time.Millisecond || d < -10*time.Millisecond {
		t.Fatalf("anchor %v off the last try's effect by %v", at, d)
	}
	boom := errors.New("ioctl failed")
	if _, err := atHostTime(func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("error %v, want the op's", err)
	}
}

// A StatsPage that cannot hold the counters is refused before anything
// else happens; one that can is where they go.
func TestStatsPage(t *testing.T) {
	if _, err := New(Config{StatsPage: make([]byte, 3)}); !errors.Is(err, ErrConfig) {
		t.Fatalf("a 3-byte StatsPage: %v, want ErrConfig", err)
	}
	// A page of its own, page-aligned as a mapping always is (and as
	// vmhost's shared memory is), so the test needs no unsafe to align it.
	mem, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	page := mem[:StatsSize]
	s, err := statsIn(page)
	if err != nil {
		t.Fatal(err)
	}
	s.exits.Add(3)
	s.inputWaits.Add(2)
	if got := ReadStats(page); got.Exits != 3 || got.InputWaits != 2 {
		t.Fatalf("ReadStats %+v", got)
	}
	if _, err := statsIn(mem[1 : StatsSize+1]); err == nil {
		t.Fatal("a misaligned StatsPage was accepted")
	}
}
