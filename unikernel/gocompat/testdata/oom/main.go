// Command oom allocates without bound, touching every page, until the
// runtime cannot get more memory. It must end with Go's own "fatal error:
// out of memory" (exit status 2), whatever the platform: the guest kernel
// refuses the mmap, it never panics itself.
package main

import (
	"fmt"
	"os"
)

func main() {
	var hoard [][]byte
	for i := 0; ; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i)
		}
		hoard = append(hoard, b)
		if i%8 == 0 {
			fmt.Fprintf(os.Stderr, "held %d MiB\n", len(hoard))
		}
	}
}
