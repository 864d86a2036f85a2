package chaos_test

import (
	"os"
	"testing"

	"github.com/kilnfaas/kiln/node-agent/vmhost"
)

// TestMain is this test binary's main. The agent platform.Up starts runs
// the guests in vmhost workers, which are this binary re-executed: the
// hook comes first, as in cmd/kiln's main (node-agent/vmhost's package doc).
func TestMain(m *testing.M) {
	if vmhost.IsWorker() {
		os.Exit(vmhost.RunWorker())
	}
	os.Exit(m.Run())
}
