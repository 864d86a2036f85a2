package apikeys_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/store/apikeys"
)

// conformance is the suite every writable Store passes; newStore returns an
// empty store.
func conformance(t *testing.T, newStore func(t *testing.T) apikeys.Store) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s apikeys.Store)
	}{
		{"AddAuthenticate", testAddAuthenticate},
		{"Exists", testExists},
		{"InvalidName", testInvalidName},
		{"ListAny", testListAny},
		{"Touch", testTouch},
		{"Revoke", testRevoke},
		{"ConcurrentAdds", testConcurrentAdds},
		{"Closed", testClosed},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

var ctx = context.Background()

func mustAdd(t testing.TB, s apikeys.Store, name string) string {
	t.Helper()
	key, h, err := apikeys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, name, h, time.Now()); err != nil {
		t.Fatalf("Add(%s): %v", name, err)
	}
	return key
}

func testAddAuthenticate(t *testing.T, s apikeys.Store) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	key, h, _ := apikeys.Generate()
	if err := s.Add(ctx, "ci", h, created); err != nil {
		t.Fatal(err)
	}
	k, err := apikeys.Authenticate(ctx, s, key)
	if err != nil || k.Name != "ci" || k.Hash != h || !k.Created.Equal(created) || !k.LastUsed.IsZero() {
		t.Fatalf("Authenticate = %+v, %v; want ci created %v, never used", k, err, created)
	}
	other, _, _ := apikeys.Generate()
	for _, bad := range []string{"", other, key[:len(key)-1], key + "x", " " + key} {
		if _, err := apikeys.Authenticate(ctx, s, bad); !errors.Is(err, apikeys.ErrUnauthorized) {
			t.Errorf("Authenticate(%q) = %v, want ErrUnauthorized", bad, err)
		}
	}
	if _, err := s.Lookup(ctx, apikeys.HashOf(other)); !errors.Is(err, apikeys.ErrNotFound) {
		t.Fatalf("Lookup of an unknown hash = %v, want ErrNotFound", err)
	}
}

func testExists(t *testing.T, s apikeys.Store) {
	first := mustAdd(t, s, "ci")
	_, h, _ := apikeys.Generate()
	if err := s.Add(ctx, "ci", h, time.Now()); !errors.Is(err, apikeys.ErrExists) {
		t.Fatalf("second Add(ci) = %v, want ErrExists", err)
	}
	// The same key under a second name would make revoking by name leave
	// it working under the other.
	if err := s.Add(ctx, "other", apikeys.HashOf(first), time.Now()); !errors.Is(err, apikeys.ErrExists) {
		t.Fatalf("Add of a stored hash under another name = %v, want ErrExists", err)
	}
	if ks, _ := s.List(ctx); len(ks) != 1 {
		t.Fatalf("refused adds changed the store: %+v", ks)
	}
	if k, err := apikeys.Authenticate(ctx, s, first); err != nil || k.Name != "ci" {
		t.Fatalf("the first key after refused adds: %+v, %v", k, err)
	}
}

func testInvalidName(t *testing.T, s apikeys.Store) {
	_, h, _ := apikeys.Generate()
	for _, name := range []string{"", "Admin", "a b", "-x", "a_b", string(make([]byte, 64))} {
		if err := s.Add(ctx, name, h, time.Now()); !errors.Is(err, apikeys.ErrInvalidName) {
			t.Errorf("Add(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	if any, err := s.Any(ctx); err != nil || any {
		t.Fatalf("Any after refused adds = %v, %v", any, err)
	}
	if err := s.Revoke(ctx, "Admin"); !errors.Is(err, apikeys.ErrInvalidName) {
		t.Fatalf("Revoke(Admin) = %v, want ErrInvalidName", err)
	}
}

func testListAny(t *testing.T, s apikeys.Store) {
	if ks, err := s.List(ctx); err != nil || len(ks) != 0 {
		t.Fatalf("List of an empty store = %+v, %v", ks, err)
	}
	if any, err := s.Any(ctx); err != nil || any {
		t.Fatalf("Any of an empty store = %v, %v", any, err)
	}
	for _, n := range []string{"c", "a", "b-2"} {
		mustAdd(t, s, n)
	}
	ks, err := s.List(ctx)
	if err != nil || len(ks) != 3 || ks[0].Name != "a" || ks[1].Name != "b-2" || ks[2].Name != "c" {
		t.Fatalf("List = %+v, %v; want a, b-2, c", ks, err)
	}
	for _, k := range ks {
		if k.Created.IsZero() || k.Hash == (apikeys.Hash{}) {
			t.Errorf("listed key %+v lacks its creation time or hash", k)
		}
	}
	if any, err := s.Any(ctx); err != nil || !any {
		t.Fatalf("Any = %v, %v; want true", any, err)
	}
}

func testTouch(t *testing.T, s apikeys.Store) {
	key := mustAdd(t, s, "ci")
	at := time.Date(2026, 5, 6, 7, 8, 9, 123e6, time.UTC)
	if err := s.Touch(ctx, "ci", at); err != nil {
		t.Fatal(err)
	}
	k, err := apikeys.Authenticate(ctx, s, key)
	if err != nil || !k.LastUsed.Equal(at) {
		t.Fatalf("after Touch: %+v, %v; want last used %v", k, err, at)
	}
	ks, _ := s.List(ctx)
	if len(ks) != 1 || !ks[0].LastUsed.Equal(at) {
		t.Fatalf("List after Touch = %+v", ks)
	}
	if err := s.Touch(ctx, "nobody", at); err != nil {
		t.Fatalf("Touch of an unknown name = %v, want it ignored", err)
	}
	if ks, _ := s.List(ctx); len(ks) != 1 {
		t.Fatalf("Touch of an unknown name created a key: %+v", ks)
	}
}

func testRevoke(t *testing.T, s apikeys.Store) {
	old := mustAdd(t, s, "ci")
	keep := mustAdd(t, s, "keep")
	s.Touch(ctx, "ci", time.Now())
	if err := s.Revoke(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := apikeys.Authenticate(ctx, s, old); !errors.Is(err, apikeys.ErrUnauthorized) {
		t.Fatalf("a revoked key authenticates: %v", err)
	}
	if err := s.Revoke(ctx, "ci"); !errors.Is(err, apikeys.ErrNotFound) {
		t.Fatalf("second Revoke = %v, want ErrNotFound", err)
	}
	if _, err := apikeys.Authenticate(ctx, s, keep); err != nil {
		t.Fatalf("revoking ci broke keep: %v", err)
	}
	// The name is free again, for a new key with a history of its own.
	renewed := mustAdd(t, s, "ci")
	k, err := apikeys.Authenticate(ctx, s, renewed)
	if err != nil || !k.LastUsed.IsZero() {
		t.Fatalf("re-created ci = %+v, %v; want it never used", k, err)
	}
	if _, err := apikeys.Authenticate(ctx, s, old); !errors.Is(err, apikeys.ErrUnauthorized) {
		t.Fatalf("the revoked key works again after its name was reused: %v", err)
	}
	s.Revoke(ctx, "ci")
	s.Revoke(ctx, "keep")
	if any, err := s.Any(ctx); err != nil || any {
		t.Fatalf("Any after revoking everything = %v, %v", any, err)
	}
}

func testConcurrentAdds(t *testing.T, s apikeys.Store) {
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, h, _ := apikeys.Generate()
			errs[i] = s.Add(ctx, "race", h, time.Now())
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, apikeys.ErrExists):
			t.Errorf("concurrent Add: %v", err)
		}
	}
	if ks, _ := s.List(ctx); ok != 1 || len(ks) != 1 {
		t.Fatalf("%d of %d concurrent adds of one name succeeded, %d keys stored; want exactly 1", ok, n, len(ks))
	}
}

func testClosed(t *testing.T, s apikeys.Store) {
	key := mustAdd(t, s, "ci")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := apikeys.Authenticate(ctx, s, key); err == nil || errors.Is(err, apikeys.ErrUnauthorized) {
		t.Fatalf("Authenticate on a closed store = %v, want a store error (not a plain refusal)", err)
	}
}
