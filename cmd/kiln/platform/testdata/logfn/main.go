// logfn is an exec function for the log tests: it writes two lines naming
// its request body to stderr and answers "ok BODY".
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the request:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "begin %s\n", body)
	fmt.Fprintf(os.Stderr, "done %s\n", body)
	fmt.Printf("ok %s", body)
}
