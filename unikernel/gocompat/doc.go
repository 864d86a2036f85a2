// Package gocompat is the Go compatibility matrix of the Kiln unikernel
// (issue 3's acceptance): small, unmodified Go programs under testdata/,
// each checking its own invariants and printing deterministic output, run
// once as plain Linux processes and once under the VMM on the real guest
// kernel, with stdout, exit status and (where deterministic) stderr
// compared byte for byte.
//
// The package holds only tests. TestNativeSelfCheck needs no KVM and proves
// the programs themselves are right; TestGoCompat* boot them in VMs
// (internal/kvmtest decides whether that runs, skips or fails). Programs
// are built with the host's Go toolchain into $KILN_BUILD/gocompat; where
// no toolchain exists (inside scripts/kvmbox) the binaries found there are
// used as they are.
package gocompat
