// Package registrytest is the conformance suite every registry.Store
// back-end passes, so the embedded store and the Redis store behave alike.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/kilnfaas/kiln/registry"
)

// Run runs the suite; newStore returns an empty store, closed by the caller
// of Run's subtests through t.Cleanup if it wishes.
func Run(t *testing.T, newStore func(t *testing.T) registry.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s registry.Store)
	}{
		{"PutGet", testPutGet},
		{"VersionsAndLatest", testVersionsAndLatest},
		{"NotFound", testNotFound},
		{"InvalidNames", testInvalidNames},
		{"InvalidSpecs", testInvalidSpecs},
		{"List", testList},
		{"Delete", testDelete},
		{"Aliases", testAliases},
		{"ConcurrentDeploys", testConcurrentDeploys},
		{"NoAliasing", testNoAliasing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func spec(name, digest string) registry.Spec {
	return registry.Spec{
		Name: name, ImageDigest: digest, Kind: registry.KindServe,
		MemoryBytes: 64 << 20, TimeoutMs: 5000,
		Env: []string{"A=1", "B=two"}, Args: []string{"--flag", "x"},
	}
}

func mustPut(t *testing.T, s registry.Store, sp registry.Spec) uint64 {
	t.Helper()
	v, err := s.PutFunction(context.Background(), sp)
	if err != nil {
		t.Fatalf("PutFunction(%s): %v", sp.Name, err)
	}
	return v
}

func testPutGet(t *testing.T, s registry.Store) {
	ctx := context.Background()
	sp := spec("hello", "sha256:aa")
	sp.Limits = registry.Limits{Private: true, MaxConcurrency: 3, RatePerSecond: 2.5, RateBurst: 4, MaxBodyBytes: 1 << 10}
	v := mustPut(t, s, sp)
	if v != 1 {
		t.Fatalf("first version = %d, want 1", v)
	}
	f, err := s.GetFunction(ctx, "hello", "")
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != sp.Name || f.Version != 1 || f.ImageDigest != sp.ImageDigest || f.Kind != sp.Kind ||
		f.MemoryBytes != sp.MemoryBytes || f.TimeoutMs != sp.TimeoutMs ||
		fmt.Sprint(f.Env) != fmt.Sprint(sp.Env) || fmt.Sprint(f.Args) != fmt.Sprint(sp.Args) || f.Limits != sp.Limits {
		t.Fatalf("GetFunction = %+v, want the fields of %+v at version 1", f, sp)
	}
	if f.Created.IsZero() {
		t.Fatal("Created not set")
	}
	for _, ref := range []string{"latest", "1"} {
		g, err := s.GetFunction(ctx, "hello", ref)
		if err != nil || g.Version != 1 {
			t.Fatalf("GetFunction(hello, %q) = v%d, %v; want v1", ref, g.Version, err)
		}
	}
}

func testVersionsAndLatest(t *testing.T, s registry.Store) {
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		v := mustPut(t, s, spec("fn", fmt.Sprintf("sha256:%02d", i)))
		if v != uint64(i) {
			t.Fatalf("deploy %d got version %d", i, v)
		}
		f, err := s.GetFunction(ctx, "fn", "")
		if err != nil || f.Version != uint64(i) || f.ImageDigest != fmt.Sprintf("sha256:%02d", i) {
			t.Fatalf("after deploy %d latest = %+v, %v", i, f, err)
		}
	}
	old, err := s.GetFunction(ctx, "fn", "2")
	if err != nil || old.ImageDigest != "sha256:02" {
		t.Fatalf("version 2 = %+v, %v; versions must be immutable", old, err)
	}
	vs, err := s.Versions(ctx, "fn")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 {
		t.Fatalf("Versions = %d entries, want 3", len(vs))
	}
	for i, f := range vs {
		if f.Version != uint64(i+1) {
			t.Fatalf("Versions[%d].Version = %d, want oldest first", i, f.Version)
		}
	}
}

func testNotFound(t *testing.T, s registry.Store) {
	ctx := context.Background()
	if _, err := s.GetFunction(ctx, "nope", ""); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetFunction(missing) err = %v, want ErrNotFound", err)
	}
	mustPut(t, s, spec("one", "sha256:01"))
	for _, ref := range []string{"2", "prod"} {
		if _, err := s.GetFunction(ctx, "one", ref); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("GetFunction(one, %q) err = %v, want ErrNotFound", ref, err)
		}
	}
	if _, err := s.Versions(ctx, "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Versions(missing) err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteFunction(ctx, "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("DeleteFunction(missing) err = %v, want ErrNotFound", err)
	}
	if err := s.SetAlias(ctx, "one", "prod", 9); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("SetAlias to a missing version err = %v, want ErrNotFound", err)
	}
}

func testInvalidNames(t *testing.T, s registry.Store) {
	ctx := context.Background()
	long := "a"
	for len(long) < 64 {
		long += "b"
	}
	for _, name := range []string{"", "Hello", "-x", "a_b", "a.b", "a/b", "héllo", long, "a b"} {
		if _, err := s.PutFunction(ctx, spec(name, "sha256:00")); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("PutFunction(%q) err = %v, want ErrInvalidName", name, err)
		}
		if _, err := s.GetFunction(ctx, name, ""); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("GetFunction(%q) err = %v, want ErrInvalidName", name, err)
		}
	}
	for _, name := range []string{"a", "0", "hello-world", long[:63], "9lives"} {
		if _, err := s.PutFunction(ctx, spec(name, "sha256:00")); err != nil {
			t.Errorf("PutFunction(%q) = %v, want success", name, err)
		}
	}
}

func testInvalidSpecs(t *testing.T, s registry.Store) {
	ctx := context.Background()
	bad := []registry.Spec{
		{Name: "x", ImageDigest: "sha256:00", Kind: "daemon"},
		{Name: "x", ImageDigest: "sha256:00"},
		{Name: "x", Kind: registry.KindExec},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindExec, TimeoutMs: -1},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindExec, Limits: registry.Limits{MaxConcurrency: -1}},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindExec, Limits: registry.Limits{RatePerSecond: -0.5}},
	}
	for _, sp := range bad {
		if _, err := s.PutFunction(ctx, sp); !errors.Is(err, registry.ErrInvalidSpec) {
			t.Errorf("PutFunction(%+v) err = %v, want ErrInvalidSpec", sp, err)
		}
	}
	if _, err := s.GetFunction(ctx, "x", ""); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("a rejected spec left a function behind: %v", err)
	}
}

func testList(t *testing.T, s registry.Store) {
	ctx := context.Background()
	if fs, err := s.ListFunctions(ctx); err != nil || len(fs) != 0 {
		t.Fatalf("empty store lists %v, %v", fs, err)
	}
	mustPut(t, s, spec("zeta", "sha256:z1"))
	mustPut(t, s, spec("alpha", "sha256:a1"))
	mustPut(t, s, spec("alpha", "sha256:a2"))
	fs, err := s.ListFunctions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(fs))
	for i, f := range fs {
		got[i] = fmt.Sprintf("%s@%d:%s", f.Name, f.Version, f.ImageDigest)
	}
	want := []string{"alpha@2:sha256:a2", "zeta@1:sha256:z1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ListFunctions = %v, want %v (latest of each, by name)", got, want)
	}
	if !sort.SliceIsSorted(fs, func(i, j int) bool { return fs[i].Name < fs[j].Name }) {
		t.Fatal("ListFunctions not sorted by name")
	}
}

func testDelete(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustPut(t, s, spec("gone", "sha256:01"))
	mustPut(t, s, spec("gone", "sha256:02"))
	mustPut(t, s, spec("stays", "sha256:03"))
	if err := s.SetAlias(ctx, "gone", "prod", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteFunction(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"", "1", "2", "prod"} {
		if _, err := s.GetFunction(ctx, "gone", ref); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("after delete GetFunction(gone, %q) err = %v, want ErrNotFound", ref, err)
		}
	}
	fs, err := s.ListFunctions(ctx)
	if err != nil || len(fs) != 1 || fs[0].Name != "stays" {
		t.Fatalf("after delete ListFunctions = %+v, %v", fs, err)
	}
	// A function deployed again after deletion is a new function: it has
	// no alias left over from the old one.
	mustPut(t, s, spec("gone", "sha256:04"))
	if _, err := s.GetFunction(ctx, "gone", "prod"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("alias survived deletion: %v", err)
	}
}

func testAliases(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustPut(t, s, spec("app", "sha256:01"))
	mustPut(t, s, spec("app", "sha256:02"))
	if err := s.SetAlias(ctx, "app", "prod", 1); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, spec("app", "sha256:03"))
	f, err := s.GetFunction(ctx, "app", "prod")
	if err != nil || f.Version != 1 {
		t.Fatalf("alias prod = v%d, %v; want v1 (deploys move only latest)", f.Version, err)
	}
	if err := s.SetAlias(ctx, "app", "prod", 3); err != nil {
		t.Fatal(err)
	}
	if f, _ := s.GetFunction(ctx, "app", "prod"); f.Version != 3 {
		t.Fatalf("alias prod = v%d after moving it to 3", f.Version)
	}
	if err := s.SetAlias(ctx, "app", registry.Latest, 1); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("SetAlias(latest) err = %v, want ErrConflict", err)
	}
	if err := s.SetAlias(ctx, "app", "42", 1); !errors.Is(err, registry.ErrInvalidName) {
		t.Fatalf("SetAlias(numeric) err = %v, want ErrInvalidName", err)
	}
	if err := s.SetAlias(ctx, "app", "Prod", 1); !errors.Is(err, registry.ErrInvalidName) {
		t.Fatalf("SetAlias(Prod) err = %v, want ErrInvalidName", err)
	}
}

func testConcurrentDeploys(t *testing.T, s registry.Store) {
	ctx := context.Background()
	const n = 20
	versions := make(chan uint64, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := s.PutFunction(ctx, spec("busy", fmt.Sprintf("sha256:%02d", i)))
			if err != nil {
				t.Error(err)
				return
			}
			versions <- v
		}(i)
	}
	wg.Wait()
	close(versions)
	seen := map[uint64]bool{}
	var max uint64
	for v := range versions {
		if seen[v] {
			t.Fatalf("version %d handed out twice", v)
		}
		seen[v] = true
		if v > max {
			max = v
		}
	}
	if len(seen) != n || max != n {
		t.Fatalf("%d distinct versions, max %d; want 1..%d", len(seen), max, n)
	}
	f, err := s.GetFunction(ctx, "busy", "")
	if err != nil || f.Version != n {
		t.Fatalf("latest = v%d, %v; want v%d", f.Version, err, n)
	}
}

// The store must not share slices with its callers: a caller mutating its
// spec or a returned Function must not change what is recorded.
func testNoAliasing(t *testing.T, s registry.Store) {
	ctx := context.Background()
	sp := spec("imm", "sha256:01")
	mustPut(t, s, sp)
	sp.Env[0] = "A=changed"
	f, _ := s.GetFunction(ctx, "imm", "")
	f.Args[0] = "changed"
	g, err := s.GetFunction(ctx, "imm", "")
	if err != nil || g.Env[0] != "A=1" || g.Args[0] != "--flag" {
		t.Fatalf("stored version changed through a caller's slice: %+v, %v", g, err)
	}
}
