// Package check is how the compatibility programs report: one line per
// check, "NAME: ok" when the invariant holds and "NAME: FAIL detail" when it
// does not. Only the ok lines are deterministic, so a native run and a
// unikernel run of a healthy platform print the same bytes, and a failing
// check shows its detail in the harness's diff instead of a bare mismatch.
package check

import (
	"fmt"
	"os"
)

var failed bool

// OK records a check that held.
func OK(name string) { fmt.Printf("%s: ok\n", name) }

// That records a check that held when cond is true and prints the detail
// (formatted like fmt.Sprintf) when it did not.
func That(name string, cond bool, format string, args ...any) {
	if cond {
		OK(name)
		return
	}
	failed = true
	fmt.Printf("%s: FAIL %s\n", name, fmt.Sprintf(format, args...))
}

// Fail records a check that did not hold.
func Fail(name string, format string, args ...any) { That(name, false, format, args...) }

// Value prints a deterministic value the harness compares as it is.
func Value(name string, format string, args ...any) {
	fmt.Printf("%s: %s\n", name, fmt.Sprintf(format, args...))
}

// Done ends the program: status 1 if any check failed, else 0.
func Done() {
	if failed {
		fmt.Println("RESULT: FAIL")
		os.Exit(1)
	}
	fmt.Println("RESULT: ok")
	os.Exit(0)
}
