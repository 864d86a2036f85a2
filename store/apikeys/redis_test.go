package apikeys_test

import (
	"net"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/internal/redistest"
	"github.com/kilnfaas/kiln/store/apikeys"
)

// startRedis runs a real redis-server for the test (redistest.Start).
func startRedis(t testing.TB) string { return redistest.Start(t, "the Redis key store") }

func TestRedisConformance(t *testing.T) {
	url := startRedis(t)
	conformance(t, func(t *testing.T) apikeys.Store {
		opts, _ := redis.ParseURL(url)
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		if err := rdb.FlushDB(ctx).Err(); err != nil { // the subtests share one server
			t.Fatal(err)
		}
		s, err := apikeys.OpenRedis(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// Two gateways on one Redis: a key revoked through one is refused by the
// other at once, with no cache in between.
func TestRedisSharedBetweenGateways(t *testing.T) {
	url := startRedis(t)
	a, err := apikeys.OpenRedis(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := apikeys.OpenRedis(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	key := mustAdd(t, a, "ci")
	if k, err := apikeys.Authenticate(ctx, b, key); err != nil || k.Name != "ci" {
		t.Fatalf("key added at a, seen at b: %+v, %v", k, err)
	}
	if err := b.Revoke(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := apikeys.Authenticate(ctx, a, key); err == nil {
		t.Fatal("key revoked at b still accepted at a")
	}
}

func TestOpenRedisUnreachable(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	if _, err := apikeys.OpenRedis(ctx, "redis://"+addr); err == nil {
		t.Fatal("OpenRedis of a closed port succeeded")
	}
	if _, err := apikeys.OpenRedis(ctx, "http://nope"); err == nil {
		t.Fatal("OpenRedis of a non-redis URL succeeded")
	}
}

// BenchmarkRedisAuthenticate is the same through a real redis-server on
// loopback: hashing and one script round trip.
func BenchmarkRedisAuthenticate(b *testing.B) {
	s, err := apikeys.OpenRedis(ctx, startRedis(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	key := mustAdd(b, s, "bench")
	for b.Loop() {
		if _, err := apikeys.Authenticate(ctx, s, key); err != nil {
			b.Fatal(err)
		}
	}
}
