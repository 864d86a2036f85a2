package vmm

import "time"

// Budgets: what one guest may make its worker do. A worker process serves
// up to 256 VMs, so a host resource a guest can grow — mappings, memory,
// syscalls made on its behalf — is budgeted per VM; past a budget the guest
// gets a cheaper treatment or waits, and it alone (docs/SECURITY.md lists
// each budget).

// Discard budget: the madvise calls a VM's discards make. Each takes the
// worker's mmap lock (shared with every VM in it) and interrupts the other
// CPUs running the worker's threads to flush their TLBs, so a guest
// discarding one page at a time in a loop would tax its neighbours. A
// burst as large as an ordinary program's (freeing every other page of
// 400 MiB is 51,200 calls) passes at full speed; past it the vCPU waits,
// keeping the VM to discardRate calls a second.
const (
	discardBurst = 64 << 10
	discardRate  = 16 << 10 // per second
)

// rateBudget is a token bucket: up to burst events at once, refilled at
// rate a second. Pure: the caller says what time it is.
type rateBudget struct {
	burst, rate float64
	tokens      float64
	last        time.Time
}

func newRateBudget(burst, rate float64) rateBudget {
	return rateBudget{burst: burst, rate: rate, tokens: burst}
}

// take spends n events at now and returns how long the caller must wait
// before the budget covers them (0: within it). The debt is kept, so a
// caller that waits the time returned is held to the rate.
func (b *rateBudget) take(now time.Time, n int) time.Duration {
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if now.After(b.last) {
		b.last = now
	}
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
