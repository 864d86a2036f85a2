// envfn is an exec function for the role security tests: it answers with
// the value of $INJECTED, which only a caller that could rewrite its
// FunctionSpec (the attack of issue 13, finding 3) could have set.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	io.Copy(io.Discard, os.Stdin)
	fmt.Printf("INJECTED=%s", os.Getenv("INJECTED"))
}
