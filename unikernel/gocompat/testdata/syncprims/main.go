// Command syncprims checks the sync and sync/atomic primitives under
// contention: they park and wake goroutines through the runtime's futex
// and semaphore paths, which the guest kernel must serve faithfully.
package main

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	mutex()
	rwmutex()
	once()
	cond()
	atomics()
	pool()
	check.Done()
}

func mutex() {
	const g, iters = 50, 2000
	var mu sync.Mutex
	var wg sync.WaitGroup
	n := 0
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < iters; j++ {
				mu.Lock()
				v := n
				if j%100 == 0 {
					runtime.Gosched() // hold the lock across a switch
				}
				n = v + 1
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	check.That("Mutex + WaitGroup", n == g*iters, "counter %d, want %d", n, g*iters)
}

func rwmutex() {
	var mu sync.RWMutex
	var wg sync.WaitGroup
	m := map[int]int{}
	var readers, maxReaders atomic.Int32
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				mu.Lock()
				m[w*100+i] = i
				mu.Unlock()
			}
		}(w)
	}
	for r := 0; r < 20; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				mu.RLock()
				c := readers.Add(1)
				for {
					old := maxReaders.Load()
					if c <= old || maxReaders.CompareAndSwap(old, c) {
						break
					}
				}
				_ = len(m)
				runtime.Gosched() // let other readers in while holding the read lock
				readers.Add(-1)
				mu.RUnlock()
			}
		}()
	}
	wg.Wait()
	check.That("RWMutex writers", len(m) == 1000, "map has %d entries", len(m))
	check.That("RWMutex concurrent readers", maxReaders.Load() > 1, "at most %d readers at once", maxReaders.Load())
}

func once() {
	var o sync.Once
	var calls atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.Do(func() { calls.Add(1) })
		}()
	}
	wg.Wait()
	v := sync.OnceValue(func() int { calls.Add(1); return 42 })
	a, b := v(), v()
	check.That("Once", calls.Load() == 2 && a == 42 && b == 42, "calls %d, values %d %d", calls.Load(), a, b)
}

// cond runs a bounded producer/consumer queue on two condition variables.
func cond() {
	var mu sync.Mutex
	notEmpty, notFull := sync.NewCond(&mu), sync.NewCond(&mu)
	var q []int
	const capacity, items, consumers = 4, 3000, 5
	var wg sync.WaitGroup
	sums := make([]int, consumers)
	for c := 0; c < consumers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for {
				mu.Lock()
				for len(q) == 0 {
					notEmpty.Wait()
				}
				v := q[0]
				q = q[1:]
				notFull.Signal()
				mu.Unlock()
				if v < 0 {
					return
				}
				sums[c] += v
			}
		}(c)
	}
	put := func(v int) {
		mu.Lock()
		for len(q) == capacity {
			notFull.Wait()
		}
		q = append(q, v)
		notEmpty.Signal()
		mu.Unlock()
	}
	for i := 1; i <= items; i++ {
		put(i)
	}
	for c := 0; c < consumers; c++ {
		put(-1)
	}
	wg.Wait()
	total := 0
	for _, s := range sums {
		total += s
	}
	check.That("Cond producer/consumer", total == items*(items+1)/2, "sum %d", total)

	// Broadcast wakes every waiter.
	ready := false
	var woke atomic.Int32
	var wg2 sync.WaitGroup
	var started sync.WaitGroup
	for i := 0; i < 30; i++ {
		wg2.Add(1)
		started.Add(1)
		go func() {
			defer wg2.Done()
			mu.Lock()
			started.Done()
			for !ready {
				notEmpty.Wait()
			}
			mu.Unlock()
			woke.Add(1)
		}()
	}
	started.Wait()
	mu.Lock()
	ready = true
	notEmpty.Broadcast()
	mu.Unlock()
	wg2.Wait()
	check.That("Cond broadcast", woke.Load() == 30, "woke %d of 30", woke.Load())
}

func atomics() {
	var i64 atomic.Int64
	var u32 atomic.Uint32
	var ptr atomic.Pointer[string]
	var val atomic.Value
	var wg sync.WaitGroup
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				i64.Add(3)
				for {
					old := u32.Load()
					if u32.CompareAndSwap(old, old+1) {
						break
					}
				}
				if j%250 == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	wg.Wait()
	s := "stored"
	ptr.Store(&s)
	val.Store([]int{1, 2, 3})
	old := i64.Swap(7)
	check.That("atomic Add/CAS", old == 64*3000 && u32.Load() == 64000 && i64.Load() == 7,
		"int64 %d, uint32 %d", old, u32.Load())
	check.That("atomic Pointer/Value", *ptr.Load() == "stored" && len(val.Load().([]int)) == 3, "pointer/value lost")
}

func pool() {
	var made atomic.Int32
	p := sync.Pool{New: func() any { made.Add(1); return new([4096]byte) }}
	var wg sync.WaitGroup
	var bad atomic.Int32
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				b := p.Get().(*[4096]byte)
				b[0], b[4095] = byte(g), byte(j)
				if b[0] != byte(g) || b[4095] != byte(j) {
					bad.Add(1)
				}
				p.Put(b)
			}
		}(g)
	}
	wg.Wait()
	check.That("sync.Pool reuse", bad.Load() == 0 && made.Load() < 16*200, "bad %d, made %d of %d gets", bad.Load(), made.Load(), 16*200)
}
