package openloop

import (
	"strings"
	"testing"
	"time"
)

// Scenario is one fault struck under an open-loop load.
type Scenario struct {
	Load Config
	// Before is how long the load runs before the fault: every call in it
	// must succeed (the platform was healthy).
	Before time.Duration
	// Inject strikes and returns once the test has stopped acting (a
	// process restarted, say), with the fault's window.
	Inject func(t testing.TB) Fault
	// Bound is the recovery the test promises: every sync call started
	// this long after the fault ended succeeds.
	Bound time.Duration
	// After is how long the load runs past Fault.End+Bound, to see the
	// success hold; 0 → 2 s.
	After time.Duration
	// AwaitAsync bounds the wait for every async invocation's final
	// status once the load has stopped; 0 → 90 s.
	AwaitAsync time.Duration
}

// Run runs s and fails t for what a fault must not do: a call failing
// before it, a failure without a clear error (a 5xx or 429 with a JSON
// error, in time), sync success not back for good within Bound, an async
// invocation lost, or one failed without saying why. It returns the
// run's figures, logged too.
func Run(t testing.TB, s Scenario) Figures {
	t.Helper()
	if s.After == 0 {
		s.After = 2 * time.Second
	}
	if s.AwaitAsync == 0 {
		s.AwaitAsync = 90 * time.Second
	}
	load := Start(s.Load)
	stopped := false
	defer func() {
		if !stopped {
			load.Stop()
		}
	}()
	time.Sleep(s.Before)
	f := s.Inject(t)
	if f.End.IsZero() {
		f.End = f.Begin
	}
	time.Sleep(time.Until(f.End.Add(s.Bound + s.After)))
	calls := load.Stop()
	stopped = true
	fig := Measure(calls, f)

	var unclear []string
	seen := map[string]bool{}
	for _, c := range calls {
		if !c.OK() && !seen[statusOf(c)] {
			seen[statusOf(c)] = true
			t.Logf("%s: the first sync or async call to fail with %s started %v after the fault: %.300s %v", f.Name, statusOf(c),
				c.Start.Sub(f.Begin).Round(time.Millisecond), strings.TrimSpace(c.Body), c.Err)
		}
		if why := ClearError(c); why != "" {
			kind := "sync"
			if c.Async {
				kind = "async"
			}
			unclear = append(unclear, kind+" call started "+c.Start.Sub(f.Begin).Round(time.Millisecond).String()+" after the fault: "+why)
		}
	}
	if len(unclear) > 0 {
		t.Errorf("%s: %d calls failed without a clear error; the first: \n  %s", f.Name, len(unclear), strings.Join(unclear[:min(5, len(unclear))], "\n  "))
	}
	if fig.FailedBefore > 0 {
		t.Errorf("%s: %d sync calls failed before the fault struck: the platform was not healthy", f.Name, fig.FailedBefore)
	}
	switch {
	case fig.Steady < 0:
		t.Errorf("%s: sync calls still failed at the end of the load, %v after the fault ended", f.Name, s.Bound+s.After)
	case fig.Steady > s.Bound:
		t.Errorf("%s: sync calls succeeded for good only %v after the fault ended, want within %v", f.Name, fig.Steady, s.Bound)
	}
	if fig.FirstOK < 0 {
		t.Errorf("%s: no sync call started after the fault ended succeeded", f.Name)
	}

	lost, err := Await(s.Load.Gateways[0], calls, s.AwaitAsync, &fig, func(id string, st Status) {
		if st.Status == "failed" && st.Error == "" {
			t.Errorf("%s: async invocation %s failed without saying why: %+v", f.Name, id, st)
		}
	})
	if err != nil {
		t.Errorf("%s: following the async invocations: %v", f.Name, err)
	}
	if len(lost) > 0 {
		t.Errorf("%s: %d async invocations LOST (of %d accepted): %s", f.Name, len(lost), fig.AsyncAccepted, strings.Join(lost[:min(5, len(lost))], "; "))
	}
	if s.Load.AsyncEvery > 0 && fig.AsyncAccepted == 0 {
		t.Errorf("%s: no async invocation was accepted: nothing was shown", f.Name)
	}
	t.Log(fig)
	return fig
}
