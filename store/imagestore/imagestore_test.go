package imagestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func embedded(t *testing.T, dir string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Embedded(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPutFetchRoundTrip(t *testing.T) {
	s := embedded(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	// Larger than NATS's default 1 MiB message limit, so chunking is exercised.
	data := randomBytes(t, 5<<20+123)
	d, err := s.Put(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	if d != Digest(data) || CheckDigest(d) != nil {
		t.Fatalf("Put returned %q, want %q", d, Digest(data))
	}
	got, err := s.Fetch(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("Fetch returned %d bytes differing from the %d put", len(got), len(data))
	}
}

func TestPutIsIdempotent(t *testing.T) {
	s := embedded(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	data := []byte("the same image twice")
	d1, err := s.Put(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	info1, err := s.obj.GetInfo(ctx, d1)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.Put(ctx, data)
	if err != nil || d2 != d1 {
		t.Fatalf("second Put = %q, %v; want %q", d2, err, d1)
	}
	info2, err := s.obj.GetInfo(ctx, d1)
	if err != nil {
		t.Fatal(err)
	}
	if info1.NUID != info2.NUID {
		t.Fatal("second Put of identical bytes uploaded them again")
	}
}

func TestFetchMissingAndMalformed(t *testing.T) {
	s := embedded(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Fetch(ctx, Digest([]byte("never stored"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch(missing) err = %v, want ErrNotFound", err)
	}
	for _, d := range []string{"", "sha256:", "md5:" + strings.Repeat("0", 64), "sha256:" + strings.Repeat("G", 64), "sha256:../../etc"} {
		if _, err := s.Fetch(ctx, d); !errors.Is(err, ErrBadDigest) {
			t.Fatalf("Fetch(%q) err = %v, want ErrBadDigest", d, err)
		}
	}
}

func TestFetchDetectsCorruption(t *testing.T) {
	s := embedded(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	// Bytes stored under another image's name, as a buggy or hostile writer
	// of the shared bucket could do.
	name := Digest([]byte("the real image"))
	if _, err := s.obj.PutBytes(ctx, name, []byte("something else")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(ctx, name); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Fetch of mismatching bytes err = %v, want ErrCorrupt", err)
	}
}

func TestEmbeddedPersistsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := embedded(t, dir)
	data := randomBytes(t, 300<<10)
	d, err := s.Put(context.Background(), data)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = embedded(t, dir)
	defer s.Close()
	got, err := s.Fetch(context.Background(), d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after restart Fetch = %d bytes, %v", len(got), err)
	}
	if err := s.Delete(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(context.Background(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch after Delete err = %v, want ErrNotFound", err)
	}
}

// Connect is the path a cluster uses: a separate nats-server on a port.
func TestConnectToExternalServer(t *testing.T) {
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	ctx := context.Background()
	s, err := Connect(ctx, srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.Put(ctx, []byte("over tcp"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Fetch(ctx, d); err != nil || string(got) != "over tcp" {
		t.Fatalf("Fetch = %q, %v", got, err)
	}
	if _, err := Connect(ctx, "nats://127.0.0.1:1", nil...); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Connect to a closed port err = %v, want ErrUnavailable", err)
	}
}

func FuzzCheckDigest(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("ab", 32))
	f.Add("sha256:")
	f.Add("sha256:" + strings.Repeat("AB", 32))
	f.Fuzz(func(t *testing.T, d string) {
		if CheckDigest(d) == nil && Digest(nil)[:7] != d[:7] {
			t.Fatalf("accepted %q", d)
		}
		if CheckDigest(d) == nil && len(d) != 71 {
			t.Fatalf("accepted %q of length %d", d, len(d))
		}
	})
}
