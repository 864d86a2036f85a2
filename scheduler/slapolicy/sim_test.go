package slapolicy

import (
	"testing"
	"time"
)

// The burst simulation (docs/SLA.md): on the same calls, the SLA policy
// meets the 99 % target and a fixed min_warm = 0 pool does not, for
// several seeds, at a bounded cost.
func TestSimulatedBurstsPolicyMeetsTargetBaselineDoesNot(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		cfg := BurstSim(seed)
		base := Simulate(cfg, nil)
		pol := Simulate(cfg, New(Config{}))
		t.Logf("seed %d: %d calls; min_warm=0: attainment %.4f, %d cold, %.0f instance-s; SLA policy: attainment %.4f, %d cold, %.0f instance-s",
			seed, base.Calls, base.Attainment(), base.Cold, base.InstanceSeconds, pol.Attainment(), pol.Cold, pol.InstanceSeconds)
		if base.Calls != pol.Calls || base.Calls < 3000 {
			t.Fatalf("seed %d: %d and %d calls", seed, base.Calls, pol.Calls)
		}
		if pol.Attainment() < cfg.Target {
			t.Errorf("seed %d: the policy reached %.4f, below the %.2f target", seed, pol.Attainment(), cfg.Target)
		}
		if base.Attainment() >= cfg.Target {
			t.Errorf("seed %d: the min_warm=0 baseline reached %.4f: the scenario does not tell them apart", seed, base.Attainment())
		}
		// The policy pays for its pool, but not without bound: no more
		// than a few instances on average over the half hour.
		if avg := pol.InstanceSeconds / BurstTrace[len(BurstTrace)-1].Until.Seconds(); avg > 6 {
			t.Errorf("seed %d: the policy kept %.1f instances on average", seed, avg)
		}
	}
}

// A steady rate the baseline already serves warm: the policy changes
// little and costs little more, so it does not over-provision.
func TestSimulatedSteadyTrafficNoOverprovision(t *testing.T) {
	cfg := BurstSim(7)
	cfg.Trace = []RateSpan{{20 * time.Minute, 5}}
	base := Simulate(cfg, nil)
	pol := Simulate(cfg, New(Config{}))
	t.Logf("steady 5/s: min_warm=0 %.4f (%.0f instance-s), policy %.4f (%.0f instance-s)",
		base.Attainment(), base.InstanceSeconds, pol.Attainment(), pol.InstanceSeconds)
	if pol.Attainment() < cfg.Target || pol.Attainment() < base.Attainment() {
		t.Errorf("policy %.4f, baseline %.4f", pol.Attainment(), base.Attainment())
	}
	if pol.InstanceSeconds > 3*base.InstanceSeconds {
		t.Errorf("the policy kept %.0f instance-s against the baseline's %.0f", pol.InstanceSeconds, base.InstanceSeconds)
	}
}
