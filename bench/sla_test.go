package bench

import (
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/kilnfaas/kiln/scheduler/slapolicy"
)

// TestSLAPolicyReport: the SLA-driven pool policy against a fixed
// min_warm=0 pool on docs/SLA.md's bursty trace (simulated time, so it
// needs no KVM and is exact for a seed): attainment, cold starts and the
// instance-seconds it costs, over five seeds.
func TestSLAPolicyReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (make bench)")
	}
	fmt.Printf("\n== SLA policy vs min_warm=0 (bursty trace, 150 ms deadline at 99 %%, 30 simulated minutes) ==\n")
	fmt.Printf("%-6s %-10s %10s %8s %8s %16s\n", "seed", "pools", "attained", "calls", "cold", "instance-seconds")
	var base, pol []float64
	for seed := uint64(1); seed <= 5; seed++ {
		b := slapolicy.Simulate(slapolicy.BurstSim(seed), nil)
		p := slapolicy.Simulate(slapolicy.BurstSim(seed), slapolicy.New(slapolicy.Config{}))
		for _, r := range []struct {
			name string
			r    slapolicy.SimResult
		}{{"min_warm=0", b}, {"policy", p}} {
			fmt.Printf("%-6d %-10s %9.2f%% %8d %8d %16.0f\n", seed, r.name, 100*r.r.Attainment(), r.r.Calls, r.r.Cold, r.r.InstanceSeconds)
		}
		base, pol = append(base, b.Attainment()), append(pol, p.Attainment())
	}
	fmt.Printf("median attainment: min_warm=0 %.2f%%, policy %.2f%% (target 99%%)\n", 100*medianF(base), 100*medianF(pol))
}

func medianF(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	return s[len(s)/2]
}
