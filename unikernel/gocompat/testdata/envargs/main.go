// Command envargs prints what the program was started with: argv after the
// name, the whole environment, and a few lookups (set, empty, missing).
package main

import (
	"os"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	check.Value("argc", "%d", len(os.Args))
	for i, a := range os.Args[1:] {
		check.Value("arg", "%d %q", i+1, a)
	}
	for _, e := range os.Environ() {
		check.Value("env", "%q", e)
	}
	for _, k := range []string{"KILN_GREETING", "KILN_EMPTY", "KILN_MISSING", "KILN_UNICODE"} {
		v, ok := os.LookupEnv(k)
		check.Value("lookup "+k, "%q set=%v", v, ok)
	}
	check.That("os.Getenv", os.Getenv("KILN_GREETING") == "hello world", "got %q", os.Getenv("KILN_GREETING"))
	check.Done()
}
