// Command spin announces itself and then loops forever without a syscall:
// only the platform's timeout can end it.
package main

import (
	"fmt"
	"os"
)

var sink uint64

func main() {
	fmt.Println("spinning")
	x := uint64(len(os.Args))
	for {
		x = x*6364136223846793005 + 1442695040888963407
		sink = x
	}
}
