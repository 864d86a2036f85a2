package vmhost

import (
	"os"
	"testing"
)

// TestMain is the hook of this test binary: the Hosts its tests start
// re-execute it as their VM worker, which serves stand-in VMs
// (standin_test.go) besides real ones.
func TestMain(m *testing.M) {
	if IsWorker() {
		installStandIn()
		os.Exit(RunWorker())
	}
	ensureCgroups()
	os.Setenv(testVMEnv, "echo")         // inherited by the workers this binary starts
	keepEnv = append(keepEnv, testVMEnv) // … jailed ones too
	os.Exit(m.Run())
}
