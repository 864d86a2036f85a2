package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/internal/redistest"
	"github.com/kilnfaas/kiln/store/registry"
	"github.com/kilnfaas/kiln/store/registry/redisstore"
	"github.com/kilnfaas/kiln/store/registry/registrytest"
)

// startRedis runs a real redis-server for the test (redistest.Start).
func startRedis(t testing.TB) string { return redistest.Start(t, "the Redis registry") }

// newStore empties the database first: each conformance subtest wants an
// empty registry and they share one server.
func newStore(t *testing.T, url string) *redisstore.Store {
	t.Helper()
	ctx := context.Background()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	s, err := redisstore.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRedisConformance(t *testing.T) {
	url := startRedis(t)
	registrytest.Run(t, func(t *testing.T) registry.Store { return newStore(t, url) })
}

func TestConcurrentDeploysNumberOneToEight(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, startRedis(t))
	const n = 8
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got []uint64
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := s.PutFunction(ctx, registry.Spec{
				Name: "race", ImageDigest: fmt.Sprintf("sha256:%02d", i), Kind: registry.KindExec,
			})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got = append(got, v)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	if fmt.Sprint(got) != "[1 2 3 4 5 6 7 8]" {
		t.Fatalf("versions handed out = %v, want 1..8 with no gaps or duplicates", got)
	}
	f, err := s.GetFunction(ctx, "race", registry.Latest)
	if err != nil || f.Version != n {
		t.Fatalf("latest = v%d, %v; want v%d", f.Version, err, n)
	}
	vs, err := s.Versions(ctx, "race")
	if err != nil || len(vs) != n {
		t.Fatalf("Versions = %d entries, %v; want %d", len(vs), err, n)
	}
	// Each version must hold the spec of the deploy that received it, not
	// a neighbour's: collect the digests and check each appears once.
	digests := map[string]bool{}
	for i, f := range vs {
		if f.Version != uint64(i+1) {
			t.Fatalf("Versions[%d] = v%d, want oldest first", i, f.Version)
		}
		digests[f.ImageDigest] = true
	}
	if len(digests) != n {
		t.Fatalf("%d distinct digests across %d versions", len(digests), n)
	}
}

// Data lives in Redis, not in the Store: a second Store on the same server,
// as on another node, sees the first one's deploys and aliases.
func TestSharedAcrossStores(t *testing.T) {
	ctx := context.Background()
	url := startRedis(t)
	a := newStore(t, url)
	if _, err := a.PutFunction(ctx, registry.Spec{Name: "shared", ImageDigest: "sha256:01", Kind: registry.KindServe, MemoryBytes: 1<<63 + 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetAlias(ctx, "shared", "prod", registry.One(1)); err != nil {
		t.Fatal(err)
	}
	b, err := redisstore.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f, err := b.GetFunction(ctx, "shared", "prod")
	if err != nil || f.Version != 1 || f.ImageDigest != "sha256:01" {
		t.Fatalf("second store reads %+v, %v", f, err)
	}
	// uint64 fields above 2^53 must survive storage exactly.
	if f.MemoryBytes != 1<<63+1 {
		t.Fatalf("MemoryBytes = %d, want %d", f.MemoryBytes, uint64(1<<63+1))
	}
}

func TestClosedStoreFails(t *testing.T) {
	s := newStore(t, startRedis(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListFunctions(context.Background()); err == nil {
		t.Fatal("ListFunctions after Close succeeded")
	}
}

func TestNewUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := redisstore.New(ctx, "redis://"+addr); err == nil {
		t.Fatal("New succeeded against a closed port")
	}
	if _, err := redisstore.New(ctx, "http://x"); err == nil || errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("New(bad url) err = %v", err)
	}
}

// Two stores on one Redis, as two gateways: each flips prod while the other
// does and both resolve it throughout. Every resolution is a whole route,
// and afterwards the history holds every route each node replaced.
func TestFlipsFromTwoNodes(t *testing.T) {
	ctx := context.Background()
	url := startRedis(t)
	a := newStore(t, url)
	b, err := redisstore.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := 1; i <= 9; i++ {
		if _, err := a.PutFunction(ctx, registry.Spec{Name: "two", ImageDigest: fmt.Sprintf("sha256:%02d", i), Kind: registry.KindExec}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.SetAlias(ctx, "two", "prod", registry.One(1)); err != nil {
		t.Fatal(err)
	}
	// Node a sets v2..v5, node b v6..v9, each as a 50/50 split with v1 so
	// a torn read would show as a target without its partner.
	var wg sync.WaitGroup
	for n, s := range []*redisstore.Store{a, b} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for v := uint64(2 + 4*n); v < uint64(6+4*n); v++ {
				if _, err := s.SetAlias(ctx, "two", "prod", []registry.Target{{Version: 1, Weight: 50}, {Version: v, Weight: 50}}); err != nil {
					t.Error(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				r, err := s.Resolve(ctx, "two", "prod")
				if err != nil {
					t.Error(err)
					return
				}
				switch {
				case len(r.Targets) == 1 && r.Targets[0].Version == 1 && r.Targets[0].Weight == 100:
				case len(r.Targets) == 2 && r.Targets[0].Version == 1 && r.Targets[0].Weight == 50 && r.Targets[1].Weight == 50 &&
					r.Targets[1].ImageDigest == fmt.Sprintf("sha256:%02d", r.Targets[1].Version):
				default:
					t.Errorf("torn route %+v", r)
					return
				}
			}
		}()
	}
	wg.Wait()
	al, err := b.GetAlias(ctx, "two", "prod")
	if err != nil {
		t.Fatal(err)
	}
	// 8 changes, all different: the history holds the 8 replaced routes.
	if len(al.History) != 8 {
		t.Fatalf("history %q after 8 changes from two nodes: want 8 entries", registry.FormatHistory(al.History))
	}
	seen := map[string]bool{registry.FormatTargets(al.Targets): true}
	for _, h := range al.History {
		seen[registry.FormatTargets(h)] = true
	}
	if len(seen) != 9 {
		t.Fatalf("current + history hold %d distinct routes, want 9: %v", len(seen), seen)
	}
}

func BenchmarkResolveSplitAlias(b *testing.B) {
	ctx := context.Background()
	url := startRedis(b)
	s, err := redisstore.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 2; i++ {
		if _, err := s.PutFunction(ctx, registry.Spec{Name: "bench", ImageDigest: "sha256:00", Kind: registry.KindExec}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.SetAlias(ctx, "bench", "prod", []registry.Target{{Version: 1, Weight: 90}, {Version: 2, Weight: 10}}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Resolve(ctx, "bench", "prod"); err != nil {
			b.Fatal(err)
		}
	}
}
