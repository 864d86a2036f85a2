// Command stdio reads all of stdin and reports its length and sha256, then
// writes STDOUT_MiB (argv[1], default 2) of patterned bytes to stdout: the
// platform must carry MiB-sized payloads both ways, in order and intact.
// The report goes to stderr so stdout is exactly the pattern.
package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strconv"
)

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stdin: FAIL %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "stdin bytes %d sha256 %x\n", len(in), sha256.Sum256(in))
	mib := 2
	if len(os.Args) > 1 {
		mib, _ = strconv.Atoi(os.Args[1])
	}
	w := bufio.NewWriterSize(os.Stdout, 100_000) // uneven writes on purpose
	for i := 0; i < mib<<20; i++ {
		w.WriteByte(Pattern(i))
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "stdout: FAIL %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "stdout bytes %d\n", mib<<20)
}

// Pattern is byte i of the output; the harness computes the same.
func Pattern(i int) byte { return byte(i*7 + i>>10) }
