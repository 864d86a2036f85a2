package apikeys_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/store/apikeys"
)

// A union of a writable store and an empty keys file behaves as a store.
func TestUnionConformance(t *testing.T) {
	conformance(t, func(t *testing.T) apikeys.Store {
		b, err := apikeys.OpenBolt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "keys")
		os.WriteFile(path, []byte("# none yet\n"), 0o600)
		f, err := apikeys.OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		u := apikeys.Union{b, f}
		t.Cleanup(func() { u.Close() })
		return u
	})
}

func TestUnionWithKeysFile(t *testing.T) {
	fileKey, h, _ := apikeys.Generate()
	path := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(path, []byte(apikeys.Line("ops", h)+"\n"), 0o600)
	u, err := apikeys.Open(ctx, "", path)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	b, err := apikeys.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	both := apikeys.Union{b, u}
	if any, _ := both.Any(ctx); !any {
		t.Fatal("a keys file's key is not seen")
	}
	if k, err := apikeys.Authenticate(ctx, both, fileKey); err != nil || k.Name != "ops" {
		t.Fatalf("file key through the union: %+v, %v", k, err)
	}
	_, h2, _ := apikeys.Generate()
	if err := both.Add(ctx, "ops", h2, time.Now()); !errors.Is(err, apikeys.ErrExists) {
		t.Fatalf("Add of a name in the keys file = %v, want ErrExists", err)
	}
	ci := mustAdd(t, both, "ci")
	if ks, _ := both.List(ctx); len(ks) != 2 || ks[0].Name != "ci" || ks[1].Name != "ops" {
		t.Fatalf("List = %+v", ks)
	}
	if err := both.Revoke(ctx, "ops"); !errors.Is(err, apikeys.ErrReadOnly) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Revoke of a file key = %v, want ErrReadOnly naming the file", err)
	}
	if err := both.Revoke(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := apikeys.Authenticate(ctx, both, ci); !errors.Is(err, apikeys.ErrUnauthorized) {
		t.Fatalf("revoked ci: %v", err)
	}
	if s, err := apikeys.Open(ctx, "", ""); s != nil || err != nil {
		t.Fatalf("Open with nothing = %v, %v; want nil, nil", s, err)
	}
}
