// Command gcchurn allocates several hundred MiB in total, in pieces of
// 64 KiB to 1 MiB, over a live heap that never exceeds a few MiB. Every
// piece is filled and checked before it is dropped, so a page the guest
// kernel lost, shared or failed to zero shows up as corruption; HeapSys
// staying bounded shows the runtime could reuse (and give back) memory.
//
// Usage: gcchurn [TOTAL_MiB [LIVE_MiB]] (default 400 and 8).
package main

import (
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

type piece struct {
	buf  []byte
	seed uint8
}

func main() {
	total, live := argMiB(1, 400), argMiB(2, 8)
	rng := rand.New(rand.NewPCG(1, 2))
	var ring []piece
	liveBytes, allocated := 0, 0
	corrupt, fresh := 0, 0
	seq := uint8(0)
	for allocated < total<<20 {
		size := 64<<10 + rng.IntN(1<<20-64<<10+1)
		for len(ring) > 0 && liveBytes+size > live<<20 {
			p := ring[0]
			ring = ring[1:]
			if !intact(p) {
				corrupt++
			}
			liveBytes -= len(p.buf)
		}
		b := make([]byte, size)
		// A new slice must read as zeros, wherever its memory came from.
		for i := 0; i < len(b); i += 4093 {
			if b[i] != 0 {
				fresh++
				break
			}
		}
		seq++
		fill(b, seq)
		ring = append(ring, piece{b, seq})
		liveBytes += size
		allocated += size
	}
	for _, p := range ring {
		if !intact(p) {
			corrupt++
		}
	}
	ring = nil
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	check.That("allocated total", ms.TotalAlloc >= uint64(total)<<20, "TotalAlloc %d MiB, want >= %d", ms.TotalAlloc>>20, total)
	check.That("pieces intact", corrupt == 0, "%d corrupted pieces", corrupt)
	check.That("new memory zeroed", fresh == 0, "%d allocations not zeroed", fresh)
	check.That("GC cycles ran", ms.NumGC >= 10, "only %d GC cycles", ms.NumGC)
	// Live data peaks at live+1 MiB; the heap goal is about twice that.
	bound := uint64(live*8+32) << 20
	check.That("HeapSys bounded", ms.HeapSys <= bound, "HeapSys %d MiB > %d MiB", ms.HeapSys>>20, bound>>20)
	check.That("heap empty after GC", ms.HeapAlloc < 4<<20, "HeapAlloc %d KiB after the final GC", ms.HeapAlloc>>10)
	check.Done()
}

func argMiB(i, def int) int {
	if len(os.Args) > i {
		if v, err := strconv.Atoi(os.Args[i]); err == nil && v > 0 {
			return v
		}
	}
	return def
}

func fill(b []byte, seed uint8) {
	for i := range b {
		b[i] = byte(i>>12) ^ seed ^ byte(i)
	}
}

// intact checks one byte per 512 and both ends: enough to catch a page
// that changed, at a fraction of a full scan's cost.
func intact(p piece) bool {
	b := p.buf
	for i := 0; i < len(b); i += 509 {
		if b[i] != byte(i>>12)^p.seed^byte(i) {
			return false
		}
	}
	i := len(b) - 1
	return b[i] == byte(i>>12)^p.seed^byte(i)
}
