package registry_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/kilnfaas/kiln/store/registry"
	"github.com/kilnfaas/kiln/store/registry/registrytest"
)

func TestBoltConformance(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registry.Store {
		s, err := registry.OpenBolt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBoltSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := registry.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"sha256:01", "sha256:02"} {
		if _, err := s.PutFunction(ctx, registry.Spec{Name: "keep", ImageDigest: d, Kind: registry.KindExec}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetAlias(ctx, "keep", "prod", registry.One(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = registry.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.GetFunction(ctx, "keep", "")
	if err != nil || f.Version != 2 || f.ImageDigest != "sha256:02" {
		t.Fatalf("after reopen latest = %+v, %v", f, err)
	}
	if f, err := s.GetFunction(ctx, "keep", "prod"); err != nil || f.Version != 1 {
		t.Fatalf("after reopen prod = %+v, %v", f, err)
	}
	v, err := s.PutFunction(ctx, registry.Spec{Name: "keep", ImageDigest: "sha256:03", Kind: registry.KindExec})
	if err != nil || v != 3 {
		t.Fatalf("deploy after reopen got version %d, %v; want 3", v, err)
	}
}

func TestBoltLockedByAnotherOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := registry.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := registry.OpenBolt(dir); err == nil {
		t.Fatal("second OpenBolt of the same directory succeeded")
	}
}

func TestClosedStoreFails(t *testing.T) {
	s, err := registry.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = s.GetFunction(context.Background(), "x", "")
	if err == nil || errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetFunction on a closed store = %v, want a closed-database error", err)
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"", "latest", "1", "0", "18446744073709551616", "prod", "Prod", "-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		v, alias, err := registry.ParseRef(ref)
		if err != nil {
			if !errors.Is(err, registry.ErrInvalidName) {
				t.Fatalf("ParseRef(%q) err = %v, not ErrInvalidName", ref, err)
			}
			return
		}
		if (v == 0) == (alias == "") {
			t.Fatalf("ParseRef(%q) = %d, %q: want exactly one of version or alias", ref, v, alias)
		}
		if alias != "" && !registry.ValidName(alias) {
			t.Fatalf("ParseRef(%q) returned invalid alias %q", ref, alias)
		}
	})
}

// A registry written before aliases could split traffic holds each alias as
// a bare 8-byte big-endian version; it must still resolve and be movable.
func TestBoltReadsEightByteAliases(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := registry.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"sha256:01", "sha256:02"} {
		if _, err := s.PutFunction(ctx, registry.Spec{Name: "old", ImageDigest: d, Kind: registry.KindExec}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	db, err := bolt.Open(filepath.Join(dir, registry.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		ab := tx.Bucket([]byte("functions")).Bucket([]byte("old")).Bucket([]byte("aliases"))
		if err := ab.Put([]byte("latest"), []byte{0, 0, 0, 0, 0, 0, 0, 2}); err != nil {
			return err
		}
		return ab.Put([]byte("prod"), []byte{0, 0, 0, 0, 0, 0, 0, 1})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err = registry.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for ref, want := range map[string]uint64{"": 2, "prod": 1} {
		if f, err := s.GetFunction(ctx, "old", ref); err != nil || f.Version != want {
			t.Fatalf("GetFunction(%q) = v%d, %v; want v%d", ref, f.Version, err, want)
		}
	}
	a, err := s.SetAlias(ctx, "old", "prod", registry.One(2))
	if err != nil || registry.FormatHistory(a.History) != "1" {
		t.Fatalf("moving a legacy alias = %+v, %v; want history 1", a, err)
	}
}

func FuzzParseTargets(f *testing.F) {
	for _, s := range []string{"3", "3:90,4:10", "3:100", "3,4", "0", "+3", "3:+90,4:10", "1:50,1:50", "", ",", "3:90,4:10,5:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		to, err := registry.ParseTargets(s)
		if err != nil {
			return
		}
		if _, err := registry.CheckTargets(to); err != nil {
			t.Fatalf("ParseTargets(%q) = %v, which CheckTargets refuses: %v", s, to, err)
		}
		// Only the canonical form parses, so equal routes are equal strings
		// (the Redis scripts compare them as strings).
		if back := registry.FormatTargets(to); back != s {
			t.Fatalf("ParseTargets(%q) = %v, formatted back as %q", s, to, back)
		}
	})
}

func BenchmarkResolveSplitAlias(b *testing.B) {
	ctx := context.Background()
	s, err := registry.OpenBolt(b.TempDir())
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
