package apikeys_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/store/apikeys"
)

func TestGenerate(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		key, h, err := apikeys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^kiln_[a-z2-7]{52}$`).MatchString(key) {
			t.Fatalf("key %q: want kiln_ and 52 base32 characters (256 bits)", key)
		}
		if h != apikeys.HashOf(key) || seen[key] {
			t.Fatalf("key %q: hash mismatch or repeated", key)
		}
		seen[key] = true
		if p, err := apikeys.ParseHash(h.String()); err != nil || p != h {
			t.Fatalf("ParseHash(String()) = %v, %v", p, err)
		}
	}
	for _, bad := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("a", 66)} {
		if _, err := apikeys.ParseHash(bad); !errors.Is(err, apikeys.ErrBadHash) {
			t.Errorf("ParseHash(%q) = %v", bad, err)
		}
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// Make the change visible even on a file system with coarse mtimes.
	future := time.Now().Add(time.Duration(len(text)) * time.Second)
	os.Chtimes(path, future, future)
}

func TestFileStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	k1, h1, _ := apikeys.Generate()
	k2, h2, _ := apikeys.Generate()
	writeFile(t, path, "# operators\n\n"+apikeys.Line("ops", h1)+"\n")
	s, err := apikeys.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if k, err := apikeys.Authenticate(ctx, s, k1); err != nil || k.Name != "ops" {
		t.Fatalf("file key: %+v, %v", k, err)
	}
	if _, err := apikeys.Authenticate(ctx, s, k2); !errors.Is(err, apikeys.ErrUnauthorized) {
		t.Fatalf("a key not in the file: %v", err)
	}
	if err := s.Add(ctx, "ci", h2, time.Now()); !errors.Is(err, apikeys.ErrReadOnly) || !strings.Contains(err.Error(), apikeys.Line("ci", h2)) {
		t.Fatalf("Add to a file store = %v, want ErrReadOnly naming the line to add", err)
	}
	if err := s.Revoke(ctx, "ops"); !errors.Is(err, apikeys.ErrReadOnly) {
		t.Fatalf("Revoke on a file store = %v", err)
	}

	// Edits take effect without reopening: ci added, ops removed.
	writeFile(t, path, apikeys.Line("ci", h2)+"\n")
	if k, err := apikeys.Authenticate(ctx, s, k2); err != nil || k.Name != "ci" {
		t.Fatalf("after adding ci to the file: %+v, %v", k, err)
	}
	if _, err := apikeys.Authenticate(ctx, s, k1); !errors.Is(err, apikeys.ErrUnauthorized) {
		t.Fatalf("ops removed from the file still works: %v", err)
	}
	// A broken save keeps the keys last read instead of locking everyone out.
	writeFile(t, path, "ci:not-a-hash\n")
	if k, err := apikeys.Authenticate(ctx, s, k2); err != nil || k.Name != "ci" {
		t.Fatalf("after a malformed edit: %+v, %v; want the previous keys", k, err)
	}
	if ks, err := s.List(ctx); len(ks) != 1 || err != nil {
		t.Fatalf("List after a malformed edit: %+v, %v", ks, err)
	}
}

func TestParseFileErrors(t *testing.T) {
	_, h, _ := apikeys.Generate()
	for text, want := range map[string]string{
		"just-a-name\n":                         "line 1: want NAME:SHA256HEX",
		"# c\nBad_Name:" + h.String() + "\n":    "line 2: apikeys: invalid key name",
		"ops:1234\n":                            "line 1: apikeys: bad key hash",
		"a:" + h.String() + "\na:" + h.String(): "line 2: apikeys: a key with that name exists: a appears twice",
	} {
		if _, err := apikeys.ParseFile(text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseFile(%q) = %v, want %q", text, err, want)
		}
	}
	if _, err := apikeys.OpenFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("OpenFile of a missing file succeeded")
	}
}

func FuzzParseFile(f *testing.F) {
	_, h, _ := apikeys.Generate()
	for _, s := range []string{"", "# c\n", apikeys.Line("ops", h), "a:b:c", "x:" + strings.Repeat("0", 64) + "\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		keys, err := apikeys.ParseFile(text)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if apikeys.CheckName(k.Name) != nil || seen[k.Name] {
				t.Fatalf("ParseFile(%q) accepted a bad or repeated name %q", text, k.Name)
			}
			seen[k.Name] = true
			if again, err := apikeys.ParseFile(apikeys.Line(k.Name, k.Hash)); err != nil || again[0] != k {
				t.Fatalf("line of %+v does not parse back: %v", k, err)
			}
		}
	})
}
