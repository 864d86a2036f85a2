// Package ledgertest is the conformance suite every slaledger.Store must
// pass: the embedded and the Redis store are tested by the same code.
package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/store/slaledger"
)

// Run runs the suite; open returns a fresh, empty store that uses the real
// clock. Stores are closed by the suite.
func Run(t *testing.T, open func(t *testing.T) slaledger.Store) {
	ctx := context.Background()
	now := time.Now().Truncate(time.Minute)

	t.Run("AddAndSum", func(t *testing.T) {
		s := open(t)
		defer s.Close()
		add := func(fn string, m time.Time, c slaledger.Counts) {
			t.Helper()
			if err := s.Add(ctx, []slaledger.Entry{{Function: fn, Minute: m, Counts: c}}); err != nil {
				t.Fatal(err)
			}
		}
		add("f", now, slaledger.Counts{Invocations: 3, Good: 2, Errors: 1, Restores: 1})
		add("f", now.Add(30*time.Second), slaledger.Counts{Invocations: 2, Good: 2, Boots: 1}) // same minute
		add("f", now.Add(-10*time.Minute), slaledger.Counts{Invocations: 5, Good: 5})
		add("f", now.Add(-2*time.Hour), slaledger.Counts{Invocations: 7, Good: 1, Errors: 6})
		add("g", now, slaledger.Counts{Invocations: 100, Good: 100})

		for _, tc := range []struct {
			from, to time.Time
			want     slaledger.Counts
		}{
			{now, now.Add(time.Minute), slaledger.Counts{Invocations: 5, Good: 4, Errors: 1, Restores: 1, Boots: 1}},
			{now.Add(-time.Hour), now.Add(time.Minute), slaledger.Counts{Invocations: 10, Good: 9, Errors: 1, Restores: 1, Boots: 1}},
			{now.Add(-24 * time.Hour), now.Add(time.Minute), slaledger.Counts{Invocations: 17, Good: 10, Errors: 7, Restores: 1, Boots: 1}},
			{now.Add(-time.Hour), now, slaledger.Counts{Invocations: 5, Good: 5}}, // [from, to): the current minute is out
			{now.Add(-10*time.Minute + time.Second), now, slaledger.Counts{}},     // a minute that started before from is out
			{now.Add(time.Minute), now.Add(time.Hour), slaledger.Counts{}},
		} {
			got, err := s.Sum(ctx, "f", tc.from, tc.to)
			if err != nil || got != tc.want {
				t.Errorf("Sum(f, %v, %v) = %+v, %v; want %+v", tc.from.Sub(now), tc.to.Sub(now), got, err, tc.want)
			}
		}
		if got, err := s.Sum(ctx, "nobody", now.Add(-time.Hour), now.Add(time.Minute)); err != nil || got != (slaledger.Counts{}) {
			t.Errorf("unknown function: %+v, %v", got, err)
		}
	})

	t.Run("BatchesAndRetention", func(t *testing.T) {
		s := open(t)
		defer s.Close()
		err := s.Add(ctx, []slaledger.Entry{
			{Function: "f", Minute: now, Counts: slaledger.Counts{Invocations: 1, Good: 1}},
			{Function: "h", Minute: now, Counts: slaledger.Counts{Invocations: 2}},
			// Older than the retention: ignored, not an error.
			{Function: "f", Minute: now.Add(-slaledger.Retention - 2*time.Minute), Counts: slaledger.Counts{Invocations: 50}},
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Sum(ctx, "f", now.Add(-48*time.Hour), now.Add(time.Minute))
		if err != nil || got != (slaledger.Counts{Invocations: 1, Good: 1}) {
			t.Errorf("f: %+v, %v", got, err)
		}
		if got, _ := s.Sum(ctx, "h", now, now.Add(time.Minute)); got.Invocations != 2 {
			t.Errorf("h: %+v", got)
		}
	})

	t.Run("RejectsBadInputAndChangesNothing", func(t *testing.T) {
		s := open(t)
		defer s.Close()
		err := s.Add(ctx, []slaledger.Entry{
			{Function: "f", Minute: now, Counts: slaledger.Counts{Invocations: 1}},
			{Function: "", Minute: now, Counts: slaledger.Counts{Invocations: 1}},
		})
		if !errors.Is(err, slaledger.ErrInvalid) {
			t.Fatalf("Add with an empty function: %v", err)
		}
		if got, _ := s.Sum(ctx, "f", now, now.Add(time.Minute)); got != (slaledger.Counts{}) {
			t.Fatalf("a refused batch was partly stored: %+v", got)
		}
		if _, err := s.Sum(ctx, "", now, now.Add(time.Minute)); !errors.Is(err, slaledger.ErrInvalid) {
			t.Fatalf("Sum of no function: %v", err)
		}
		if _, err := s.Sum(ctx, "f", now, now.Add(-time.Minute)); !errors.Is(err, slaledger.ErrInvalid) {
			t.Fatalf("Sum of a backwards range: %v", err)
		}
	})

	// Many writers at once (several gateways, or one Recorder's batches
	// racing another's): no increment is lost.
	t.Run("ConcurrentAddsAreAtomic", func(t *testing.T) {
		s := open(t)
		defer s.Close()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 25; i++ {
					if err := s.Add(ctx, []slaledger.Entry{{Function: "f", Minute: now, Counts: slaledger.Counts{Invocations: 1, Good: 1, Boots: 1}}}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if got, _ := s.Sum(ctx, "f", now, now.Add(time.Minute)); got != (slaledger.Counts{Invocations: 200, Good: 200, Boots: 200}) {
			t.Fatalf("after 200 concurrent adds: %+v", got)
		}
	})

	t.Run("Summarize", func(t *testing.T) {
		s := open(t)
		defer s.Close()
		if err := s.Add(ctx, []slaledger.Entry{
			{Function: "f", Minute: now, Counts: slaledger.Counts{Invocations: 1000, Good: 999, Restores: 10, Boots: 2}},
			{Function: "f", Minute: now.Add(-5 * time.Hour), Counts: slaledger.Counts{Invocations: 1000, Good: 998, Errors: 1, Boots: 8}},
		}); err != nil {
			t.Fatal(err)
		}
		sum, err := slaledger.Summarize(ctx, s, "f", 0.999, now.Add(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		// 3 bad of 2000 against an allowance of 2: half the budget over.
		if got := fmt.Sprintf("%.4f %.4f %.4f %.4f", *sum.Attainment1h, *sum.Attainment1d, sum.ErrorBudgetLeft, sum.ColdStartShare); got != "0.9990 0.9985 -0.5000 0.0100" {
			t.Fatalf("summary: %s (%+v)", got, sum)
		}
		empty, err := slaledger.Summarize(ctx, s, "g", 0.99, now)
		if err != nil || empty.Attainment1h != nil || empty.Attainment1d != nil || empty.ErrorBudgetLeft != 1 || empty.ColdStartShare != 0 {
			t.Fatalf("no calls: %+v, %v", empty, err)
		}
	})
}
