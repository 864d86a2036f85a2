package nodeagent

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kilnfaas/kiln/builder/image"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// The idle-CPU policy: samples of guest time (since boot) at times (since
// the account opened), and whether the instance is over its budget after
// each. Budget: 500 ms at once, refilled at 5% of a CPU.
func TestIdleBudget(t *testing.T) {
	b := idleBudget{burst: 500 * time.Millisecond, share: 0.05}
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	type sample struct {
		at, guest time.Duration
		over      bool
	}
	cases := []struct {
		name    string
		b       idleBudget
		opened  time.Duration // guest time when the account opened (at 0)
		samples []sample
	}{
		{"parked: no guest time", b, ms(9000), []sample{{ms(250), ms(9000), false}, {ms(60000), ms(9000), false}}},
		{"a spin is stopped past the burst", b, 0, []sample{
			{ms(250), ms(250), false}, // 250 - 12.5
			{ms(500), ms(500), false}, // 475
			{ms(750), ms(750), true},  // 712.5
		}},
		{"what came before the account is not charged", b, ms(60000), []sample{{ms(250), ms(60100), false}, {ms(500), ms(60200), false}}},
		{"a background thread within the share lives forever", b, 0, []sample{
			{ms(1000), ms(50), false}, {ms(10000), ms(500), false}, {ms(3600000), ms(180000), false},
		}},
		{"a short burst after an answer is forgiven", b, 0, []sample{
			{ms(250), ms(400), false}, {ms(10000), ms(400), false},
			{ms(10250), ms(800), false}, // the debt was paid back meanwhile
		}},
		{"slightly over the share adds up", b, 0, []sample{
			{ms(1000), ms(100), false}, {ms(5000), ms(500), false}, {ms(11000), ms(1100), true}, // 1100 - 550 > 500
		}},
		{"no budget", idleBudget{burst: -1, share: 0.05}, 0, []sample{{ms(1000), ms(1000), false}, {ms(60000), ms(60000), false}}},
		{"guest time never goes back", b, ms(1000), []sample{{ms(250), ms(900), false}, {ms(500), ms(1000), false}}},
	}
	t0 := time.Unix(1000, 0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			acct := c.b.open(t0, t0, c.opened)
			for i, s := range c.samples {
				var over bool
				acct, over = c.b.charge(acct, t0.Add(s.at), s.guest)
				if over != s.over {
					t.Fatalf("sample %d (%v, guest %v): over %v, want %v (debt %v)", i, s.at, s.guest, over, s.over, acct.debt)
				}
			}
		})
	}
}

// spinning is a Machine whose guest time the test sets: a real host
// process (ProcessBooter) answers its calls.
type spinning struct {
	Machine
	guest *atomic.Int64
}

func (s spinning) Stats() vmm.Stats {
	st := s.Machine.Stats()
	st.GuestTime = time.Duration(s.guest.Load())
	return st
}

// On any host: an idle instance whose guest time runs away is destroyed,
// counted, logged and replaced for min_warm; one whose guest time grew
// during its calls (however much) is not.
func TestIdleSpinDestroyed(t *testing.T) {
	var guest atomic.Int64
	process := ProcessBooter(t.TempDir())
	boot := func(cfg vmm.Config) (Machine, error) {
		m, err := process(cfg)
		if err != nil {
			return nil, err
		}
		return spinning{m, &guest}, nil
	}
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, Boot: boot, MaintainEvery: 20 * time.Millisecond,
		IdleCPUBurst: 200 * time.Millisecond})
	d := h.add(t, "sv", image.KindServe, []byte("kernel"), fnProgram(t), 5*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "sv", ImageDigest: d, MinWarm: 1}
	killed := func() float64 { return testutil.ToFloat64(h.a.m.instancesKilled.WithLabelValues(killIdleSpin)) }

	// Guest time that grows only while calls run: ten seconds' worth per
	// call, never charged.
	expect(t, h.invokeFn(t, fn, "/p", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	for range 3 {
		go func() {
			time.Sleep(100 * time.Millisecond) // during the call's hold
			guest.Add(int64(10 * time.Second))
		}()
		expect(t, h.invokeFn(t, fn, "/hold", ""), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
		time.Sleep(200 * time.Millisecond) // idle: several maintenance passes
	}
	if k := killed(); k != 0 {
		t.Fatalf("%v instances killed for guest time their calls used", k)
	}
	if r := h.invokeFn(t, fn, "/p", ""); r.Start != kilnv1.StartKind_START_WARM || r.Headers[0].Value != "5" {
		t.Fatalf("the instance was replaced: %v, served %v", r.Start, r.Headers)
	}

	// Idle and spinning: guest time runs as fast as the clock.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				guest.Add(int64(10 * time.Millisecond))
			}
		}
	}()
	waitFor(t, func() bool { return killed() >= 1 })
	close(stop)
	// min_warm starts another; it answers as a new instance.
	waitFor(t, func() bool { return h.warm("sv", "idle") == 1 })
	if r := h.invokeFn(t, fn, "/p", ""); r.Start != kilnv1.StartKind_START_WARM || r.Headers[0].Value != "1" {
		t.Fatalf("after the kill: %v, served %v (want a new instance)", r.Start, r.Headers)
	}
	time.Sleep(200 * time.Millisecond)
	if k := killed(); k != 1 {
		t.Fatalf("%v instances killed, want 1", k)
	}
}
