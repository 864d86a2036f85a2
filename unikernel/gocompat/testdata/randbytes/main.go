// Command randbytes reads crypto/rand (getrandom in the guest): the bytes
// must not be all zero, two reads must differ, and a rough balance test
// catches a source stuck on a constant or a short cycle.
package main

import (
	"bytes"
	"crypto/rand"
	"math/bits"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	a, b := make([]byte, 64), make([]byte, 64)
	_, errA := rand.Read(a)
	_, errB := rand.Read(b)
	check.That("read 64 bytes twice", errA == nil && errB == nil, "errors %v %v", errA, errB)
	check.That("not all zero", !bytes.Equal(a, make([]byte, 64)), "64 zero bytes")
	check.That("two reads differ", !bytes.Equal(a, b), "both reads gave %x", a)

	big := make([]byte, 1<<20)
	_, err := rand.Read(big)
	ones := 0
	for _, x := range big {
		ones += bits.OnesCount8(x)
	}
	// 8 Mibit with p=1/2: the standard deviation is about 1448 bits.
	const half = 4 << 20
	check.That("1 MiB bit balance", err == nil && ones > half-20000 && ones < half+20000, "%d ones of %d bits (err %v)", ones, 8<<20, err)
	chunks := map[[16]byte]bool{}
	for i := 0; i+16 <= len(big); i += 16 {
		chunks[[16]byte(big[i:i+16])] = true
	}
	check.That("no repeated 16-byte blocks", len(chunks) == len(big)/16, "%d distinct of %d", len(chunks), len(big)/16)
	check.That("rand.Text", len(rand.Text()) == 26, "wrong length")
	check.Done()
}
