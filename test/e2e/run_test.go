package e2e_test

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/kvmtest"
)

// TestKilnRun is `kiln run`, Kiln's solo5-hvt: a static ELF booted as a
// unikernel with stdio piped must print what the same program prints as a
// plain process, and exit as it would.
func TestKilnRun(t *testing.T) {
	kvmtest.Require(t)
	build := kvmtest.BuildDir(t)
	kernel := filepath.Join(build, "kernel", "kiln-kernel.elf")
	prog := func(name string) string { return filepath.Join(build, "guests", name) }
	kilnRun := func(stdin string, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		argv := append([]string{"run", "--kernel", kernel}, args...)
		code := cli.Main(context.Background(), argv, strings.NewReader(stdin), &out, &errb)
		return code, out.String(), errb.String()
	}
	native := func(stdin string, env []string, args ...string) (int, string) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Env = env
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("native %v: %v", args, err)
		}
		return code, string(out)
	}

	t.Run("cat", func(t *testing.T) {
		code, out, errs := kilnRun("hi\n", prog("cat"))
		ncode, nout := native("hi\n", nil, prog("cat"))
		if code != ncode || out != nout || out != "hi\n" {
			t.Fatalf("echo hi | kiln run cat: exit %d %q (stderr %q); natively exit %d %q", code, out, errs, ncode, nout)
		}
	})
	t.Run("args-and-env", func(t *testing.T) {
		code, out, errs := kilnRun("", "--env", "KILN_ARG_TEST=yes", prog("args"), "one", "two")
		ncode, nout := native("", []string{"KILN_ARG_TEST=yes"}, prog("args"), "one", "two")
		if code != 0 || ncode != 0 {
			t.Fatalf("args: exit %d (stderr %q), natively %d", code, errs, ncode)
		}
		// argv[0] is the path as given in both runs.
		if out != nout {
			t.Fatalf("kiln run args:\n%s\nnatively:\n%s", out, nout)
		}
	})
	t.Run("fault-exit-status", func(t *testing.T) {
		code, _, errs := kilnRun("", prog("faults"), "null")
		if code != 139 || !strings.Contains(errs, "SIGSEGV") {
			t.Fatalf("faults null: exit %d, stderr %q; want 139 and the reason", code, errs)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		code, _, errs := kilnRun("", "--timeout", "300ms", filepath.Join(build, "vmmguests", "spin"))
		if code != 124 {
			t.Fatalf("spin --timeout 300ms: exit %d, stderr %q; want 124", code, errs)
		}
	})
}
