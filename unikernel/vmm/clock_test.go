package vmm

import (
	"errors"
	"testing"
	"time"
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
