package cctest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTryReportsWhatIsMissing: a compiler that is not there, and a program
// that does not compile, are errors that say so — what Unavailable turns
// into a skip, or a failure under KILN_REQUIRE_CC=1.
func TestTryReportsWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "bad.c")
	if err := os.WriteFile(src, []byte("int main(void) { return nope; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Try("kiln-no-such-cc", filepath.Join(dir, "out"), src); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("missing compiler: err = %v, want one saying it is not installed", err)
	}
	if err := Try("sh", filepath.Join(dir, "out"), src, "-c", "echo broken >&2; exit 1"); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("failing compiler: err = %v, want its output in the error", err)
	}
}
