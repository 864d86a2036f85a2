// Package registrytest is the conformance suite every registry.Store
// back-end passes, so the embedded store and the Redis store behave alike.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kilnfaas/kiln/store/registry"
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
		{"WeightedAliases", testWeightedAliases},
		{"BadRoutesChangeNothing", testBadRoutesChangeNothing},
		{"AliasHistoryAndRollback", testAliasHistoryAndRollback},
		{"HistoryIsCapped", testHistoryIsCapped},
		{"DeleteAlias", testDeleteAlias},
		{"AtomicFlips", testAtomicFlips},
		{"ConcurrentFlipsLoseNoHistory", testConcurrentFlipsLoseNoHistory},
		{"ConsecutiveVersionsAcrossFunctions", testConsecutiveVersionsAcrossFunctions},
		{"AsyncRetries", testAsyncRetries},
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
	sp.Scaling = registry.Scaling{MinWarm: 2, MaxInstances: 9, KeepAliveMs: 30000}
	sp.SLA = registry.SLA{DeadlineMs: 50, Target: 0.999}
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
		fmt.Sprint(f.Env) != fmt.Sprint(sp.Env) || fmt.Sprint(f.Args) != fmt.Sprint(sp.Args) || f.Limits != sp.Limits ||
		f.Scaling != sp.Scaling || f.SLA != sp.SLA {
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
	if _, err := s.SetAlias(ctx, "one", "prod", registry.One(9)); !errors.Is(err, registry.ErrNotFound) {
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
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindServe, Scaling: registry.Scaling{MinWarm: -1}},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindServe, Scaling: registry.Scaling{MinWarm: 3, MaxInstances: 2}},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindServe, Scaling: registry.Scaling{MinWarm: 1, Fresh: true}},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindServe, SLA: registry.SLA{DeadlineMs: 50}},
		{Name: "x", ImageDigest: "sha256:00", Kind: registry.KindServe, SLA: registry.SLA{DeadlineMs: 50, Target: 1}},
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
	if _, err := s.SetAlias(ctx, "gone", "prod", registry.One(1)); err != nil {
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
	if _, err := s.SetAlias(ctx, "app", "prod", registry.One(1)); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, spec("app", "sha256:03"))
	f, err := s.GetFunction(ctx, "app", "prod")
	if err != nil || f.Version != 1 {
		t.Fatalf("alias prod = v%d, %v; want v1 (deploys move only latest)", f.Version, err)
	}
	if _, err := s.SetAlias(ctx, "app", "prod", registry.One(3)); err != nil {
		t.Fatal(err)
	}
	if f, _ := s.GetFunction(ctx, "app", "prod"); f.Version != 3 {
		t.Fatalf("alias prod = v%d after moving it to 3", f.Version)
	}
	if _, err := s.SetAlias(ctx, "app", registry.Latest, registry.One(1)); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("SetAlias(latest) err = %v, want ErrConflict", err)
	}
	if _, err := s.SetAlias(ctx, "app", "42", registry.One(1)); !errors.Is(err, registry.ErrInvalidName) {
		t.Fatalf("SetAlias(numeric) err = %v, want ErrInvalidName", err)
	}
	if _, err := s.SetAlias(ctx, "app", "Prod", registry.One(1)); !errors.Is(err, registry.ErrInvalidName) {
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

// deployN deploys n versions of name, digests sha256:01, 02, ...
func deployN(t *testing.T, s registry.Store, name string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if v := mustPut(t, s, spec(name, fmt.Sprintf("sha256:%02d", i))); v != uint64(i) {
			t.Fatalf("deploy %d of %s got version %d", i, name, v)
		}
	}
}

func split(a uint64, wa uint32, b uint64, wb uint32) []registry.Target {
	return []registry.Target{{Version: a, Weight: wa}, {Version: b, Weight: wb}}
}

// routeString renders a Route as "v3:90,v4:10", checking on the way that
// each target carries its own version's record.
func routeString(t *testing.T, r registry.Route) string {
	t.Helper()
	out := ""
	for i, rt := range r.Targets {
		if rt.ImageDigest != fmt.Sprintf("sha256:%02d", rt.Version) {
			t.Fatalf("route target v%d carries digest %s: the record of another version", rt.Version, rt.ImageDigest)
		}
		if i > 0 {
			out += ","
		}
		out += fmt.Sprintf("v%d:%d", rt.Version, rt.Weight)
	}
	return out
}

func mustAlias(t *testing.T, s registry.Store, name, alias string, to []registry.Target) registry.Alias {
	t.Helper()
	a, err := s.SetAlias(context.Background(), name, alias, to)
	if err != nil {
		t.Fatalf("SetAlias(%s, %s, %v): %v", name, alias, to, err)
	}
	return a
}

func targetsString(to []registry.Target) string { return registry.FormatTargets(to) }

func historyString(h [][]registry.Target) string { return registry.FormatHistory(h) }

func testWeightedAliases(t *testing.T, s registry.Store) {
	ctx := context.Background()
	deployN(t, s, "canary", 4)
	a := mustAlias(t, s, "canary", "prod", split(3, 90, 4, 10))
	if a.Name != "prod" || targetsString(a.Targets) != "3:90,4:10" || len(a.History) != 0 {
		t.Fatalf("SetAlias returned %+v", a)
	}
	r, err := s.Resolve(ctx, "canary", "prod")
	if err != nil {
		t.Fatal(err)
	}
	if got := routeString(t, r); got != "v3:90,v4:10" || r.Alias != "prod" {
		t.Fatalf("Resolve(prod) = %s (alias %q), want v3:90,v4:10", got, r.Alias)
	}
	// Pick maps [0,90) to v3 and [90,100) to v4.
	for n, want := range map[int]uint64{0: 3, 89: 3, 90: 4, 99: 4} {
		if f := r.Pick(n); f.Version != want {
			t.Fatalf("Pick(%d) = v%d, want v%d", n, f.Version, want)
		}
	}
	// GetFunction of a split alias is its first target.
	if f, err := s.GetFunction(ctx, "canary", "prod"); err != nil || f.Version != 3 {
		t.Fatalf("GetFunction(prod) = v%d, %v; want v3", f.Version, err)
	}
	// A version or latest resolves to one target with all the traffic.
	for ref, want := range map[string]string{"": "v4:100", "latest": "v4:100", "2": "v2:100"} {
		r, err := s.Resolve(ctx, "canary", ref)
		if err != nil || routeString(t, r) != want {
			t.Fatalf("Resolve(%q) = %+v, %v; want %s", ref, r, err, want)
		}
	}
	// A single target given with weight 100 or none is stored the same.
	a = mustAlias(t, s, "canary", "beta", []registry.Target{{Version: 2}})
	if targetsString(a.Targets) != "2" {
		t.Fatalf("beta = %+v", a)
	}
	got, err := s.GetAlias(ctx, "canary", "prod")
	if err != nil || targetsString(got.Targets) != "3:90,4:10" {
		t.Fatalf("GetAlias(prod) = %+v, %v", got, err)
	}
	if got, err := s.GetAlias(ctx, "canary", registry.Latest); err != nil || targetsString(got.Targets) != "4" {
		t.Fatalf("GetAlias(latest) = %+v, %v", got, err)
	}
	as, err := s.Aliases(ctx, "canary")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range as {
		names = append(names, a.Name+"="+targetsString(a.Targets))
	}
	if fmt.Sprint(names) != "[beta=2 latest=4 prod=3:90,4:10]" {
		t.Fatalf("Aliases = %v, want beta, latest, prod by name", names)
	}
	for _, call := range []func() error{
		func() error { _, err := s.GetAlias(ctx, "canary", "nope"); return err },
		func() error { _, err := s.GetAlias(ctx, "missing", "prod"); return err },
		func() error { _, err := s.Aliases(ctx, "missing"); return err },
	} {
		if err := call(); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("lookup of a missing alias/function: err = %v, want ErrNotFound", err)
		}
	}
	// A deploy moves latest only.
	mustPut(t, s, spec("canary", "sha256:05"))
	if r, _ := s.Resolve(ctx, "canary", "prod"); routeString(t, r) != "v3:90,v4:10" {
		t.Fatalf("a deploy moved prod: %s", routeString(t, r))
	}
}

// Every rejected alias change leaves the alias exactly as it was.
func testBadRoutesChangeNothing(t *testing.T, s registry.Store) {
	ctx := context.Background()
	deployN(t, s, "strict", 3)
	mustAlias(t, s, "strict", "prod", registry.One(1))
	mustAlias(t, s, "strict", "prod", registry.One(2))
	before, err := s.GetAlias(ctx, "strict", "prod")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		to   []registry.Target
		want error
	}{
		{nil, registry.ErrInvalidRoute},
		{registry.One(0), registry.ErrInvalidRoute},
		{[]registry.Target{{Version: 1, Weight: 50}}, registry.ErrInvalidRoute},
		{split(1, 50, 1, 50), registry.ErrInvalidRoute},
		{split(1, 60, 2, 60), registry.ErrInvalidRoute},
		{split(1, 100, 2, 0), registry.ErrInvalidRoute},
		{split(1, 0, 2, 100), registry.ErrInvalidRoute},
		{split(0, 50, 2, 50), registry.ErrInvalidRoute},
		{[]registry.Target{{Version: 1, Weight: 30}, {Version: 2, Weight: 30}, {Version: 3, Weight: 40}}, registry.ErrInvalidRoute},
		{registry.One(9), registry.ErrNotFound},
		// One good version and one missing: nothing half-written.
		{split(3, 50, 9, 50), registry.ErrNotFound},
		{split(9, 50, 3, 50), registry.ErrNotFound},
	} {
		if _, err := s.SetAlias(ctx, "strict", "prod", tc.to); !errors.Is(err, tc.want) {
			t.Errorf("SetAlias(%v) err = %v, want %v", tc.to, err, tc.want)
		}
	}
	if _, err := s.SetAlias(ctx, "missing", "prod", registry.One(1)); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("SetAlias on a missing function err = %v, want ErrNotFound", err)
	}
	if _, err := s.SetAlias(ctx, "strict", "new", split(3, 50, 9, 50)); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("SetAlias(new, missing version) err = %v, want ErrNotFound", err)
	}
	if _, err := s.GetAlias(ctx, "strict", "new"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("a rejected SetAlias created the alias: %v", err)
	}
	after, err := s.GetAlias(ctx, "strict", "prod")
	if err != nil || targetsString(after.Targets) != targetsString(before.Targets) || historyString(after.History) != historyString(before.History) {
		t.Fatalf("prod after rejected changes = %+v, %v; want %+v", after, err, before)
	}
	if err := s.DeleteAlias(ctx, "strict", registry.Latest); !errors.Is(err, registry.ErrConflict) {
		t.Errorf("DeleteAlias(latest) err = %v, want ErrConflict", err)
	}
	if _, err := s.RollbackAlias(ctx, "strict", registry.Latest); !errors.Is(err, registry.ErrConflict) {
		t.Errorf("RollbackAlias(latest) err = %v, want ErrConflict", err)
	}
	for _, bad := range []string{"Prod", "", "a_b"} {
		if _, err := s.GetAlias(ctx, "strict", bad); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("GetAlias(%q) err = %v, want ErrInvalidName", bad, err)
		}
		if err := s.DeleteAlias(ctx, "strict", bad); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("DeleteAlias(%q) err = %v, want ErrInvalidName", bad, err)
		}
		if _, err := s.RollbackAlias(ctx, "strict", bad); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("RollbackAlias(%q) err = %v, want ErrInvalidName", bad, err)
		}
	}
	if f, err := s.GetFunction(ctx, "strict", ""); err != nil || f.Version != 3 {
		t.Fatalf("latest moved: v%d, %v", f.Version, err)
	}
}

func testAliasHistoryAndRollback(t *testing.T, s registry.Store) {
	ctx := context.Background()
	deployN(t, s, "roll", 3)
	mustAlias(t, s, "roll", "prod", registry.One(1))
	if _, err := s.RollbackAlias(ctx, "roll", "prod"); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("rollback of a new alias err = %v, want ErrConflict (no history)", err)
	}
	if _, err := s.RollbackAlias(ctx, "roll", "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("rollback of a missing alias err = %v, want ErrNotFound", err)
	}
	if _, err := s.RollbackAlias(ctx, "missing", "prod"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("rollback on a missing function err = %v, want ErrNotFound", err)
	}
	a := mustAlias(t, s, "roll", "prod", registry.One(2))
	if historyString(a.History) != "1" {
		t.Fatalf("history after 1→2 = %q, want 1", historyString(a.History))
	}
	a = mustAlias(t, s, "roll", "prod", split(2, 90, 3, 10))
	if historyString(a.History) != "2|1" {
		t.Fatalf("history = %q, want 2|1 (newest first)", historyString(a.History))
	}
	// Setting what is already there is not a change.
	a = mustAlias(t, s, "roll", "prod", split(2, 90, 3, 10))
	if historyString(a.History) != "2|1" {
		t.Fatalf("history after a no-op = %q, want 2|1", historyString(a.History))
	}
	for _, want := range []struct{ targets, history string }{{"2", "1"}, {"1", ""}} {
		a, err := s.RollbackAlias(ctx, "roll", "prod")
		if err != nil || targetsString(a.Targets) != want.targets || historyString(a.History) != want.history {
			t.Fatalf("rollback = %+v, %v; want %s with history %q", a, err, want.targets, want.history)
		}
		got, err := s.GetAlias(ctx, "roll", "prod")
		if err != nil || targetsString(got.Targets) != want.targets || historyString(got.History) != want.history {
			t.Fatalf("after rollback GetAlias = %+v, %v", got, err)
		}
		if f, err := s.GetFunction(ctx, "roll", "prod"); err != nil || fmt.Sprint(f.Version) != want.targets {
			t.Fatalf("after rollback prod resolves to v%d, %v", f.Version, err)
		}
	}
	if _, err := s.RollbackAlias(ctx, "roll", "prod"); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("rollback past the oldest entry err = %v, want ErrConflict", err)
	}
	if f, _ := s.GetFunction(ctx, "roll", "prod"); f.Version != 1 {
		t.Fatalf("a refused rollback moved prod to v%d", f.Version)
	}
	// Aliases are independent: beta's history is its own.
	mustAlias(t, s, "roll", "beta", registry.One(3))
	if _, err := s.RollbackAlias(ctx, "roll", "beta"); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("beta borrowed history: %v", err)
	}
	// Rollback never touches latest.
	if f, _ := s.GetFunction(ctx, "roll", ""); f.Version != 3 {
		t.Fatalf("latest = v%d, want v3", f.Version)
	}
}

func testHistoryIsCapped(t *testing.T, s registry.Store) {
	n := registry.HistoryLen + 3
	deployN(t, s, "cap", n)
	var a registry.Alias
	for v := 1; v <= n; v++ {
		a = mustAlias(t, s, "cap", "prod", registry.One(uint64(v)))
	}
	if len(a.History) != registry.HistoryLen {
		t.Fatalf("history holds %d entries, want %d", len(a.History), registry.HistoryLen)
	}
	if h := a.History; targetsString(h[0]) != fmt.Sprint(n-1) || targetsString(h[len(h)-1]) != fmt.Sprint(n-registry.HistoryLen) {
		t.Fatalf("history %q: want the newest %d, newest first", historyString(h), registry.HistoryLen)
	}
	got, err := s.GetAlias(context.Background(), "cap", "prod")
	if err != nil || historyString(got.History) != historyString(a.History) {
		t.Fatalf("stored history %q, %v; SetAlias returned %q", historyString(got.History), err, historyString(a.History))
	}
}

func testDeleteAlias(t *testing.T, s registry.Store) {
	ctx := context.Background()
	deployN(t, s, "del", 2)
	mustAlias(t, s, "del", "prod", registry.One(1))
	mustAlias(t, s, "del", "prod", registry.One(2))
	mustAlias(t, s, "del", "keep", registry.One(1))
	if err := s.DeleteAlias(ctx, "del", "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve(ctx, "del", "prod"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("deleted alias resolves: %v", err)
	}
	if err := s.DeleteAlias(ctx, "del", "prod"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("second delete err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteAlias(ctx, "missing", "prod"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("delete on a missing function err = %v, want ErrNotFound", err)
	}
	// The history went with the alias: a new prod starts afresh.
	a := mustAlias(t, s, "del", "prod", registry.One(2))
	if len(a.History) != 0 {
		t.Fatalf("a re-created alias inherited history %q", historyString(a.History))
	}
	if _, err := s.RollbackAlias(ctx, "del", "prod"); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("rollback of a re-created alias err = %v, want ErrConflict", err)
	}
	if f, err := s.GetFunction(ctx, "del", "keep"); err != nil || f.Version != 1 {
		t.Fatalf("deleting prod touched keep: v%d, %v", f.Version, err)
	}
	// Deleting the function takes aliases and histories with it.
	mustAlias(t, s, "del", "keep", registry.One(2))
	if err := s.DeleteFunction(ctx, "del"); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, spec("del", "sha256:01"))
	mustPut(t, s, spec("del", "sha256:02"))
	as, err := s.Aliases(ctx, "del")
	if err != nil || len(as) != 1 || as[0].Name != registry.Latest {
		t.Fatalf("after delete and redeploy Aliases = %+v, %v; want only latest", as, err)
	}
	mustAlias(t, s, "del", "keep", registry.One(1))
	if _, err := s.RollbackAlias(ctx, "del", "keep"); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("history survived the function's deletion: %v", err)
	}
}

// Readers resolving an alias while a writer flips it see the old route or
// the new one, never a mixture (a target of one with the weight of the
// other, or one half of a split).
func testAtomicFlips(t *testing.T, s registry.Store) {
	ctx := context.Background()
	deployN(t, s, "flip", 4)
	states := [][]registry.Target{registry.One(1), split(2, 70, 3, 30), split(3, 30, 4, 70), registry.One(4)}
	allowed := map[string]bool{}
	for _, st := range states {
		allowed[routeFor(st)] = true
	}
	mustAlias(t, s, "flip", "prod", states[0])
	const flips = 200
	var (
		done  atomic.Bool
		wg    sync.WaitGroup
		reads atomic.Int64
	)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				rt, err := s.Resolve(ctx, "flip", "prod")
				if err != nil {
					t.Errorf("Resolve during flips: %v", err)
					return
				}
				if got := routeString(t, rt); !allowed[got] {
					t.Errorf("Resolve saw %s, which the alias never held", got)
					return
				}
				reads.Add(1)
			}
		}()
	}
	for i := 1; i <= flips; i++ {
		if _, err := s.SetAlias(ctx, "flip", "prod", states[i%len(states)]); err != nil {
			t.Error(err)
			break
		}
	}
	done.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("no reads ran during the flips")
	}
	if r, _ := s.Resolve(ctx, "flip", "prod"); routeString(t, r) != routeFor(states[flips%len(states)]) {
		t.Fatalf("final route %s", routeString(t, r))
	}
}

func routeFor(to []registry.Target) string {
	out := ""
	for i, t := range to {
		if i > 0 {
			out += ","
		}
		out += fmt.Sprintf("v%d:%d", t.Version, t.Weight)
	}
	return out
}

// Writers flipping one alias at once each push the route they replaced:
// afterwards the current route and the history hold every route exactly
// once. A read-modify-write that is not atomic loses entries here.
func testConcurrentFlipsLoseNoHistory(t *testing.T, s registry.Store) {
	ctx := context.Background()
	const writers = registry.HistoryLen - 1
	deployN(t, s, "many", writers+1)
	mustAlias(t, s, "many", "prod", registry.One(1))
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(v uint64) {
			defer wg.Done()
			if _, err := s.SetAlias(ctx, "many", "prod", registry.One(v)); err != nil {
				t.Error(err)
			}
		}(uint64(i + 2))
	}
	wg.Wait()
	a, err := s.GetAlias(ctx, "many", "prod")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]int{a.Targets[0].Version: 1}
	for _, h := range a.History {
		seen[h[0].Version]++
	}
	for v := uint64(1); v <= writers+1; v++ {
		if seen[v] != 1 {
			t.Fatalf("route v%d appears %d times in current %s + history %q: want once", v, seen[v], targetsString(a.Targets), historyString(a.History))
		}
	}
	if len(a.History) != writers {
		t.Fatalf("history has %d entries, want %d", len(a.History), writers)
	}
}

// Version numbers are per function: deploys of two functions interleaved
// from many goroutines give each function 1..n with no gaps.
func testConsecutiveVersionsAcrossFunctions(t *testing.T, s registry.Store) {
	ctx := context.Background()
	const n = 12
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	got := map[string][]uint64{}
	for i := 0; i < 2*n; i++ {
		name := []string{"left", "right"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := s.PutFunction(ctx, spec(name, "sha256:00"))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got[name] = append(got[name], v)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, name := range []string{"left", "right"} {
		vs := got[name]
		sort.Slice(vs, func(i, j int) bool { return vs[i] < vs[j] })
		for i, v := range vs {
			if v != uint64(i+1) {
				t.Fatalf("%s got versions %v, want 1..%d", name, vs, n)
			}
		}
		if len(vs) != n {
			t.Fatalf("%s got %d versions, want %d", name, len(vs), n)
		}
		if f, err := s.GetFunction(ctx, name, ""); err != nil || f.Version != n {
			t.Fatalf("%s latest = v%d, %v", name, f.Version, err)
		}
	}
}

// testAsyncRetries: a retry limit survives the round trip, 0 included (it
// means "never retry", not "the default"), and one out of range is refused.
func testAsyncRetries(t *testing.T, s registry.Store) {
	ctx := context.Background()
	zero, five := 0, 5
	for _, c := range []struct {
		retries *int
		want    int
	}{{nil, registry.DefaultAsyncRetries}, {&zero, 0}, {&five, 5}} {
		sp := spec("retry", "sha256:aa")
		sp.AsyncRetries = c.retries
		v := mustPut(t, s, sp)
		f, err := s.GetFunction(ctx, "retry", fmt.Sprint(v))
		if err != nil {
			t.Fatal(err)
		}
		if f.AsyncRetryLimit() != c.want || (c.retries == nil) != (f.AsyncRetries == nil) {
			t.Fatalf("version %d: async retries %v (limit %d), want %d", v, f.AsyncRetries, f.AsyncRetryLimit(), c.want)
		}
	}
	for _, bad := range []int{-1, registry.MaxAsyncRetries + 1} {
		sp := spec("retry", "sha256:aa")
		sp.AsyncRetries = &bad
		if _, err := s.PutFunction(ctx, sp); !errors.Is(err, registry.ErrInvalidSpec) {
			t.Fatalf("%d async retries: %v, want ErrInvalidSpec", bad, err)
		}
	}
}
