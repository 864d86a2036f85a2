// Package kvmtest is what tests that boot real KVM guests share: the check
// that /dev/kvm works (a loud skip where it does not, a failure where the
// run demands KVM) and the location of built guest artifacts.
//
// `make test` runs such tests on the host when /dev/kvm works and otherwise
// inside scripts/kvmbox (a QEMU VM whose Linux has a real /dev/kvm) with
// KILN_REQUIRE_KVM=1, so in CI they run and can fail rather than skip.
package kvmtest

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Require skips t loudly when /dev/kvm cannot be opened, or fails it when
// the environment sets KILN_REQUIRE_KVM=1.
func Require(t testing.TB) {
	t.Helper()
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return
	}
	msg := "KVM TEST NOT RUN: /dev/kvm: " + err.Error() +
		" — `make test` runs it inside scripts/kvmbox instead"
	if os.Getenv("KILN_REQUIRE_KVM") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// BuildDir is where `make build-guest` leaves kernels and guest programs:
// $KILN_BUILD, else build/ at the root of the repository.
func BuildDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("KILN_BUILD"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "build")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("kvmtest: no go.mod above the working directory; set KILN_BUILD")
		}
		dir = parent
	}
}

// Artifact returns the bytes of a built artifact, e.g. "kernel/kiln-kernel.elf"
// or "guests/hello", failing t with the command that builds it if missing.
func Artifact(t testing.TB, rel string) []byte {
	t.Helper()
	p := filepath.Join(BuildDir(t), rel)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("kvmtest: %v — run `make build-guest` first", err)
	}
	return b
}
