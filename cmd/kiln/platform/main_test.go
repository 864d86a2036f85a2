package platform_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/kilnfaas/kiln/node-agent/vmhost"
)

// TestMain is this test binary's main. An agent this package starts with
// the KVM runtime runs its VMs in vmhost workers, which are this binary
// re-executed: the hook comes first, as in cmd/kiln's main
// (node-agent/vmhost's package doc).
func TestMain(m *testing.M) {
	if vmhost.IsWorker() {
		os.Exit(vmhost.RunWorker())
	}
	if path := os.Getenv(dialUnixEnv); path != "" {
		os.Exit(dialUnix(path))
	}
	os.Exit(m.Run())
}

// dialUnixEnv makes this binary, re-executed by TestUpSocketsPrivate as
// another user, only try to connect to the unix socket it names.
const dialUnixEnv = "KILN_TEST_DIAL_UNIX"

// dialUnix connects to the socket at path and says how it went: exit 0
// and "connected", or exit 3 and the error.
func dialUnix(path string) int {
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println(err)
		return 3
	}
	c.Close()
	fmt.Println("connected")
	return 0
}
