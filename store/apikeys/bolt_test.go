package apikeys_test

import (
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/store/apikeys"
)

func TestBoltConformance(t *testing.T) {
	conformance(t, func(t *testing.T) apikeys.Store {
		s, err := apikeys.OpenBolt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBoltPersistsAndLocks(t *testing.T) {
	dir := t.TempDir()
	s, err := apikeys.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := mustAdd(t, s, "admin")
	if _, err := apikeys.OpenBolt(dir); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open of a held store: %v", err)
	}
	s.Close()
	s, err = apikeys.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if k, err := apikeys.Authenticate(ctx, s, key); err != nil || k.Name != "admin" {
		t.Fatalf("after reopening: %+v, %v", k, err)
	}
}

// BenchmarkBoltAuthenticate is what a key costs a request at `kiln up`'s
// gateway: hashing the presented key and one bbolt read.
func BenchmarkBoltAuthenticate(b *testing.B) {
	s, err := apikeys.OpenBolt(b.TempDir())
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
