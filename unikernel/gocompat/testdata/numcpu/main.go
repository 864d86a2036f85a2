// Command numcpu prints what the runtime believes about the machine. The
// harness expects 1 CPU in the VM (sched_getaffinity reports one) and the
// host's count natively.
package main

import (
	"runtime"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	check.Value("NumCPU", "%d", runtime.NumCPU())
	check.Value("GOMAXPROCS", "%d", runtime.GOMAXPROCS(0))
	check.Value("GOOS/GOARCH", "%s/%s", runtime.GOOS, runtime.GOARCH)
	check.That("GOMAXPROCS <= NumCPU", runtime.GOMAXPROCS(0) <= runtime.NumCPU(), "more Ps than CPUs")
	check.Done()
}
