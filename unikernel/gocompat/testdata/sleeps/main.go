// Command sleeps measures time.Sleep: each sleep must last at least what
// was asked and not much more (KILN_SLEEP_SLACK_MS, default 150, generous
// because the VM may run under emulation). Concurrent sleepers must
// overlap: the cooperative scheduler wakes each at its own deadline.
package main

import (
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	slack := 150 * time.Millisecond
	if v, err := strconv.Atoi(os.Getenv("KILN_SLEEP_SLACK_MS")); err == nil {
		slack = time.Duration(v) * time.Millisecond
	}
	for _, d := range []time.Duration{10 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond} {
		start := time.Now()
		time.Sleep(d)
		el := time.Since(start)
		check.That("sleep "+d.String(), el >= d && el < d+slack, "took %v", el)
	}

	// Ten goroutines sleeping 100ms at once take about 100ms, not 1s.
	var wg sync.WaitGroup
	start := time.Now()
	short := make([]time.Duration, 10)
	for i := range short {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := time.Now()
			time.Sleep(100 * time.Millisecond)
			short[i] = time.Since(s)
		}(i)
	}
	wg.Wait()
	el := time.Since(start)
	check.That("10 concurrent 100ms sleeps overlap", el >= 100*time.Millisecond && el < 100*time.Millisecond+slack, "took %v", el)
	early := 0
	for _, s := range short {
		if s < 100*time.Millisecond {
			early++
		}
	}
	check.That("no sleeper woke early", early == 0, "%d woke early: %v", early, short)

	// Staggered deadlines are served in order.
	order := make(chan int, 3)
	for _, ms := range []int{60, 20, 40} {
		go func(ms int) {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			order <- ms
		}(ms)
	}
	a, b, c := <-order, <-order, <-order
	check.That("staggered wake-ups in deadline order", a == 20 && b == 40 && c == 60, "order %d %d %d", a, b, c)
	check.Done()
}
