package vmm

import (
	"context"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

func TestRateBudget(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name  string
		steps []struct {
			at   time.Duration // since t0
			n    int
			wait time.Duration
		}
	}{
		{"within the burst", []struct {
			at   time.Duration
			n    int
			wait time.Duration
		}{{0, 5, 0}, {0, 5, 0}}},
		{"past the burst waits for the debt", []struct {
			at   time.Duration
			n    int
			wait time.Duration
		}{{0, 10, 0}, {0, 20, 2 * time.Second}, {0, 10, 3 * time.Second}}},
		{"refills at the rate, up to the burst", []struct {
			at   time.Duration
			n    int
			wait time.Duration
		}{{0, 20, time.Second}, {time.Second, 0, 0}, {time.Hour, 10, 0}, {time.Hour, 10, time.Second}}},
		{"time going backwards refills nothing", []struct {
			at   time.Duration
			n    int
			wait time.Duration
		}{{time.Minute, 10, 0}, {0, 10, time.Second}}},
	} {
		b := newRateBudget(10, 10)
		for i, s := range tc.steps {
			if got := b.take(t0.Add(s.at), s.n); got != s.wait {
				t.Errorf("%s: step %d (%d at %v): wait %v, want %v", tc.name, i, s.n, s.at, got, s.wait)
			}
		}
	}
}

// TestDiscardBudget: a guest discarding one page at a time without end is
// held to discardRate madvise calls a second once past the burst — the
// vCPU waits, on a clock the test runs.
func TestDiscardBudget(t *testing.T) {
	mem, err := newMemory(minMemSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	clock := time.Unix(1000, 0)
	var slept time.Duration
	vm := &VM{mem: mem, stats: &stats{}, now: func() time.Time { return clock },
		sleep: func(ctx context.Context, until time.Time) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			slept += until.Sub(clock)
			clock = until
			return nil
		}}
	a := abi.HCDiscardArgs{Count: 1}
	a.Ranges[0] = abi.DiscardRange{GPA: abi.KernelLimit, Len: pageSize}
	putDiscard(t, mem, 0x200000, a)
	ctx := context.Background()
	const storm = discardBurst + 4*discardRate
	for i := 0; i < storm; i++ {
		if r := vm.hcDiscard(ctx, 0x200000); r != nil {
			t.Fatalf("discard %d: %s", i, r.Message)
		}
		if i == discardBurst-1 && slept != 0 {
			t.Fatalf("waited %v within the burst", slept)
		}
	}
	if slept < 4*time.Second-time.Millisecond || slept > 4*time.Second+time.Millisecond {
		t.Errorf("%d discards (a burst of %d, then %d/s) waited %v, want 4s", storm, discardBurst, discardRate, slept)
	}
}
