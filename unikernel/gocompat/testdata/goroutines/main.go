// Command goroutines exercises what the guest kernel's threads, futexes and
// timed waits carry for the Go scheduler: goroutines, channels, select,
// timers, tickers and context deadlines.
package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	fanOut()
	pingPong()
	pipeline()
	selectDefault()
	selectReady()
	after()
	ticker()
	timerStop()
	afterFunc()
	withTimeout()
	manyBlocked()
	check.Done()
}

// fanOut sums squares in 100 goroutines; the result is known in closed form.
func fanOut() {
	const workers, per = 100, 1000
	results := make(chan int64)
	for w := 0; w < workers; w++ {
		go func(lo int64) {
			var s int64
			for i := lo; i < lo+per; i++ {
				s += i * i
			}
			results <- s
		}(int64(w * per))
	}
	var total int64
	for w := 0; w < workers; w++ {
		total += <-results
	}
	n := int64(workers*per - 1)
	want := n * (n + 1) * (2*n + 1) / 6
	check.That("fan-out 100 goroutines", total == want, "sum %d, want %d", total, want)
	check.Value("fan-out sum", "%d", total)
}

// pingPong bounces a counter through two unbuffered channels, so every
// step is a goroutine switch.
func pingPong() {
	const rounds = 20000
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
		close(pong)
	}()
	v := 0
	for i := 0; i < rounds; i++ {
		ping <- v
		v = <-pong
	}
	close(ping)
	_, open := <-pong
	check.That("ping-pong", v == rounds && !open, "counter %d (want %d), pong open %v", v, rounds, open)
}

func pipeline() {
	gen := make(chan int, 8)
	sq := make(chan int, 8)
	go func() {
		defer close(gen)
		for i := 1; i <= 1000; i++ {
			gen <- i
		}
	}()
	go func() {
		defer close(sq)
		for v := range gen {
			sq <- v * v
		}
	}()
	sum := 0
	for v := range sq {
		sum += v
	}
	check.That("pipeline", sum == 333833500, "sum %d", sum)
}

func selectDefault() {
	c := make(chan int)
	took := ""
	select {
	case <-c:
		took = "receive"
	default:
		took = "default"
	}
	check.That("select default", took == "default", "took %s", took)
}

func selectReady() {
	a, b := make(chan string, 1), make(chan string)
	a <- "a"
	var got string
	select {
	case got = <-a:
	case got = <-b:
	}
	check.That("select ready case", got == "a", "got %q", got)
}

func after() {
	start := time.Now()
	never := make(chan int)
	which := ""
	select {
	case <-never:
		which = "never"
	case <-time.After(20 * time.Millisecond):
		which = "after"
	}
	el := time.Since(start)
	check.That("time.After 20ms", which == "after" && el >= 20*time.Millisecond && el < 2*time.Second,
		"fired %s after %v", which, el)
}

func ticker() {
	// Every interval counts from the ticker's creation: read the clock first.
	start := time.Now()
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	n := 0
	for range tk.C {
		n++
		if n == 5 {
			break
		}
	}
	el := time.Since(start)
	check.That("ticker 5x10ms", el >= 50*time.Millisecond && el < 3*time.Second, "5 ticks after %v", el)
}

func timerStop() {
	tm := time.NewTimer(time.Hour)
	stopped := tm.Stop()
	reset := time.NewTimer(time.Hour)
	start := time.Now()
	reset.Reset(5 * time.Millisecond)
	<-reset.C
	el := time.Since(start)
	check.That("timer stop/reset", stopped && el >= 5*time.Millisecond && el < 2*time.Second, "stopped %v, reset timer after %v", stopped, el)
}

func afterFunc() {
	done := make(chan time.Duration)
	start := time.Now()
	time.AfterFunc(15*time.Millisecond, func() { done <- time.Since(start) })
	el := <-done
	check.That("time.AfterFunc 15ms", el >= 15*time.Millisecond, "ran after %v", el)
}

func withTimeout() {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	<-ctx.Done()
	el := time.Since(start)
	err := ctx.Err()
	check.That("context.WithTimeout 30ms", errors.Is(err, context.DeadlineExceeded) && el >= 30*time.Millisecond,
		"err %v after %v", err, el)
	check.Value("context error", "%v", err)
}

// manyBlocked parks 10000 goroutines on one channel and releases them all.
func manyBlocked() {
	const n = 10000
	gate := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	count := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			mu.Lock()
			count++
			mu.Unlock()
		}()
	}
	close(gate)
	wg.Wait()
	check.That("10000 parked goroutines", count == n, "released %d", count)
}
