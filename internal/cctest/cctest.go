// Package cctest builds small C programs for tests with the host's C
// compilers (gcc, musl-gcc): the static ELFs that tests deploy, run or feed
// to the builder's checks.
//
// Where a compiler is missing or cannot link statically (gcc without
// libc6-dev, say), a test cannot do its work: it skips loudly on a
// developer's machine, and fails where the run demands compilers
// (KILN_REQUIRE_CC=1, set by .ci/run), so CI can never go green by
// skipping. `make deps` installs what they need.
package cctest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Build compiles the C source src with cc and flags (e.g. "-static",
// "-O2") into a file in a temporary directory of t's and returns its path.
func Build(t testing.TB, cc, src string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "prog.c")
	if err := os.WriteFile(in, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return BuildFile(t, cc, in, flags...)
}

// BuildFile compiles the C file at path with cc and flags, as Build does.
// Extra arguments for the compiler (include paths) go in flags.
func BuildFile(t testing.TB, cc, path string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(path), ".c"))
	if err := Try(cc, out, path, flags...); err != nil {
		unavailable(t, err.Error())
	}
	return out
}

// Static is Build with gcc -static -O2: any small static program.
func Static(t testing.TB, src string) string {
	t.Helper()
	return Build(t, "gcc", src, "-static", "-O2")
}

// Try compiles without a test: for a package's shared, built-once fixture
// (a sync.Once), whose caller reports the error through Unavailable.
func Try(cc, out, path string, flags ...string) error {
	if _, err := exec.LookPath(cc); err != nil {
		return &missingError{cc + " not installed (make deps installs it): " + err.Error()}
	}
	args := append(append([]string{}, flags...), "-o", out, path)
	if b, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		return &missingError{cc + " " + strings.Join(flags, " ") + " cannot build here: " + err.Error() + "\n" + string(b)}
	}
	return nil
}

// Unavailable stops t because a C program it needs could not be built:
// a skip, or a failure where KILN_REQUIRE_CC=1.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	unavailable(t, err.Error())
}

type missingError struct{ msg string }

func (e *missingError) Error() string { return e.msg }

func unavailable(t testing.TB, msg string) {
	t.Helper()
	msg = "C TOOLCHAIN: " + msg
	if os.Getenv("KILN_REQUIRE_CC") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg + " — the test did not run")
}
