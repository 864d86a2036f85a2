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

	// Staggered deadlines: each sleeper wakes no earlier than its own
	// deadline, and the last by about the longest one. (Arrival order is
	// not checked: under emulation all three may fall due at one check.)
	type woke struct{ want, got time.Duration }
	wakes := make(chan woke, 3)
	start = time.Now()
	for _, ms := range []int{60, 20, 40} {
		go func(d time.Duration) {
			s := time.Now()
			time.Sleep(d)
			wakes <- woke{d, time.Since(s)}
		}(time.Duration(ms) * time.Millisecond)
	}
	bad := 0
	var got []woke
	for range 3 {
		w := <-wakes
		got = append(got, w)
		if w.got < w.want {
			bad++
		}
	}
	el = time.Since(start)
	check.That("staggered 20/40/60ms sleepers", bad == 0 && el < 60*time.Millisecond+slack, "after %v: %v", el, got)
	check.Done()
}
