package slaledger_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/internal/redistest"
	"github.com/kilnfaas/kiln/store/slaledger"
	"github.com/kilnfaas/kiln/store/slaledger/ledgertest"
)

func TestBoltConformance(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T) slaledger.Store {
		s, err := slaledger.OpenBolt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestRedisConformance(t *testing.T) {
	url := startRedis(t)
	n := 0
	ledgertest.Run(t, func(t *testing.T) slaledger.Store {
		// Each subtest gets a database of its own, so it starts empty.
		n++
		s, err := slaledger.OpenRedis(context.Background(), strings.TrimSuffix(url, "/0")+fmt.Sprintf("/%d", n))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// Redis forgets a minute by itself, Retention after it (EXPIREAT).
func TestRedisMinutesExpire(t *testing.T) {
	url := startRedis(t)
	ctx := context.Background()
	s, err := slaledger.OpenRedis(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := time.Now().Truncate(time.Minute)
	if err := s.Add(ctx, []slaledger.Entry{{Function: "f", Minute: m, Counts: slaledger.Counts{Invocations: 1}}}); err != nil {
		t.Fatal(err)
	}
	opts, _ := redis.ParseURL(url)
	c := redis.NewClient(opts)
	defer c.Close()
	ttl, err := c.TTL(ctx, fmt.Sprintf("kiln:sla:f:%d", m.Unix()/60)).Result()
	if err != nil || ttl < slaledger.Retention-time.Minute || ttl > slaledger.Retention+time.Minute {
		t.Fatalf("TTL %v (%v), want about %v", ttl, err, slaledger.Retention)
	}
	if _, err := slaledger.OpenRedis(ctx, "redis://127.0.0.1:1/0"); err == nil {
		t.Fatal("OpenRedis of a closed port succeeded")
	}
	if _, err := slaledger.OpenRedis(ctx, "http://x"); err == nil {
		t.Fatal("OpenRedis of a non-redis URL succeeded")
	}
}

// The embedded store drops a function's minutes past Retention when it
// next writes that function, and never reads them meanwhile.
func TestBoltPrunes(t *testing.T) {
	var now atomic.Int64
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now.Store(t0.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	dir := t.TempDir()
	s, err := slaledger.OpenBoltClock(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	add := func(m time.Time, n int64) {
		t.Helper()
		if err := s.Add(ctx, []slaledger.Entry{{Function: "f", Minute: m, Counts: slaledger.Counts{Invocations: n}}}); err != nil {
			t.Fatal(err)
		}
	}
	add(t0, 1)
	add(t0.Add(time.Hour), 10)
	now.Store(t0.Add(slaledger.Retention + 30*time.Minute).UnixNano())
	all := func() int64 {
		c, err := s.Sum(ctx, "f", t0.Add(-time.Hour), t0.Add(48*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return c.Invocations
	}
	if n := all(); n != 10 {
		t.Fatalf("past retention, read %d, want 10", n)
	}
	add(clock(), 100)
	if n := all(); n != 110 {
		t.Fatalf("after a write: %d, want 110", n)
	}
	// Locked by another holder: a clear error, not a hang.
	if _, err := slaledger.OpenBolt(dir); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
	s.Close()
	s2, err := slaledger.OpenBoltClock(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if c, _ := s2.Sum(ctx, "f", t0, t0.Add(48*time.Hour)); c.Invocations != 110 {
		t.Fatalf("after reopening: %+v", c)
	}
}

// slowStore blocks every Add until released: a stalled Redis.
type slowStore struct {
	slaledger.Store
	release chan struct{}
}

func (s *slowStore) Add(ctx context.Context, e []slaledger.Entry) error {
	<-s.release
	return s.Store.Add(ctx, e)
}

func TestRecorderBatchesAndNeverBlocks(t *testing.T) {
	inner, err := slaledger.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	slow := &slowStore{Store: inner, release: make(chan struct{})}
	r := slaledger.NewRecorder(slow, 10, nil)
	now := time.Now()
	rec := slaledger.Record{Function: "f", At: now, Good: true, Start: slaledger.StartBoot}
	// The first record is taken by the writer, which then blocks in Add;
	// ten more fill the queue, and the rest are dropped without waiting.
	start := time.Now()
	accepted := 0
	for i := 0; i < 100; i++ {
		if r.Record(rec) {
			accepted++
		}
		if i == 0 {
			time.Sleep(50 * time.Millisecond) // let the writer take it
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Record blocked for %v", d)
	}
	if accepted != 11 || r.Dropped() != 89 {
		t.Fatalf("accepted %d, dropped %d; want 11 and 89", accepted, r.Dropped())
	}
	close(slow.release)
	r.Close()
	if r.Written() != 11 {
		t.Fatalf("written %d", r.Written())
	}
	c, err := inner.Sum(context.Background(), "f", now.Add(-time.Minute), now.Add(time.Minute))
	if err != nil || c != (slaledger.Counts{Invocations: 11, Good: 11, Boots: 11}) {
		t.Fatalf("stored %+v, %v", c, err)
	}
}

func TestRecorderCountsStoreFailures(t *testing.T) {
	inner, err := slaledger.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := slaledger.NewRecorder(inner, 0, nil)
	inner.Close() // every Add now fails
	r.Record(slaledger.Record{Function: "f", At: time.Now()})
	r.Close()
	if r.Dropped() != 1 || r.Written() != 0 {
		t.Fatalf("dropped %d written %d", r.Dropped(), r.Written())
	}
}

// startRedis runs a real redis-server for the test (redistest.Start).
func startRedis(t *testing.T) string { return redistest.Start(t, "the Redis SLA ledger") }
