// Package imagestore keeps function images content-addressed in a NATS
// JetStream object store (bucket "kiln-images", object name = digest), so
// every node-agent fetches the same bytes the builder produced and can
// prove it: Fetch re-hashes what it reads.
//
// Embedded runs nats-server inside the process for `kiln up`; Connect
// talks to an external NATS cluster.
package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the JetStream object store bucket holding images.
const Bucket = "kiln-images"

// Sentinel errors of the image store. Wrapped with %w; test with errors.Is.
var (
	// ErrNotFound: no image with that digest.
	ErrNotFound = errors.New("imagestore: image not found")
	// ErrCorrupt: the stored bytes do not hash to their name.
	ErrCorrupt = errors.New("imagestore: image corrupt")
	// ErrBadDigest: a digest that is not "sha256:" and 64 lower-case hex digits.
	ErrBadDigest = errors.New("imagestore: malformed digest")
	// ErrUnavailable: the NATS server could not be started or reached.
	ErrUnavailable = errors.New("imagestore: NATS unavailable")
)

// Store is a connection to the image bucket. Safe for concurrent use.
type Store struct {
	nc  *nats.Conn
	obj jetstream.ObjectStore
	srv *server.Server // non-nil when the store runs its own server
}

// Digest returns the content address of data: "sha256:<hex>".
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CheckDigest returns ErrBadDigest unless d has the form Digest produces.
func CheckDigest(d string) error {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return fmt.Errorf("%w: %q", ErrBadDigest, d)
	}
	for _, c := range hexPart {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: %q", ErrBadDigest, d)
		}
	}
	return nil
}

// Embedded starts a JetStream-enabled nats-server inside this process, with
// its files in dataDir/nats, reachable only in-process (it opens no port),
// and returns a store connected to it. Close stops the server.
func Embedded(ctx context.Context, dataDir string) (*Store, error) {
	storeDir := filepath.Join(dataDir, "nats")
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "kiln-embedded",
		DontListen: true,
		JetStream:  true,
		StoreDir:   storeDir,
		NoLog:      true,
		NoSigs:     true,
		// An async invocation is one message: room for the gateway's
		// 6 MiB request bodies (the NATS default is 1 MiB).
		MaxPayload: 8 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("%w: embedded nats-server not ready after 10s (store %s)", ErrUnavailable, storeDir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Name("kiln-imagestore"))
	if err != nil {
		srv.Shutdown()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	s, err := open(ctx, nc)
	if err != nil {
		nc.Close()
		srv.Shutdown()
		return nil, err
	}
	s.srv = srv
	return s, nil
}

// Connect joins the image bucket on an external NATS server with JetStream.
func Connect(ctx context.Context, url string, opts ...nats.Option) (*Store, error) {
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("kiln-imagestore")}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, url, err)
	}
	s, err := open(ctx, nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return s, nil
}

func open(ctx context.Context, nc *nats.Conn) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: jetstream: %v", ErrUnavailable, err)
	}
	obj, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      Bucket,
		Description: "Kiln function images, named by sha256 digest",
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: object store %s: %v", ErrUnavailable, Bucket, err)
	}
	return &Store{nc: nc, obj: obj}, nil
}

// Put stores data under its digest and returns the digest. Storing bytes
// that are already there costs one metadata lookup and no upload.
func (s *Store) Put(ctx context.Context, data []byte) (string, error) {
	d := Digest(data)
	info, err := s.obj.GetInfo(ctx, d)
	if err == nil && info.Size == uint64(len(data)) {
		return d, nil
	}
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return "", fmt.Errorf("imagestore: put %s: %w", d, err)
	}
	if _, err := s.obj.PutBytes(ctx, d, data); err != nil {
		return "", fmt.Errorf("imagestore: put %s: %w", d, err)
	}
	return d, nil
}

// Fetch returns the image named digest after checking that it hashes to it.
func (s *Store) Fetch(ctx context.Context, digest string) ([]byte, error) {
	if err := CheckDigest(digest); err != nil {
		return nil, err
	}
	data, err := s.obj.GetBytes(ctx, digest)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return nil, fmt.Errorf("%w: %s", ErrNotFound, digest)
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, digest, err)
	case err != nil:
		return nil, fmt.Errorf("imagestore: fetch %s: %w", digest, err)
	}
	if got := Digest(data); got != digest {
		return nil, fmt.Errorf("%w: %s holds bytes hashing to %s", ErrCorrupt, digest, got)
	}
	return data, nil
}

// Delete removes an image; deleting a missing one is ErrNotFound.
func (s *Store) Delete(ctx context.Context, digest string) error {
	if err := CheckDigest(digest); err != nil {
		return err
	}
	err := s.obj.Delete(ctx, digest)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, digest)
	}
	return err
}

// Conn is the store's NATS connection, for other JetStream users of the
// same server (the async queue in `kiln up`). Close closes it.
func (s *Store) Conn() *nats.Conn { return s.nc }

// Close drops the connection and, for an embedded store, stops the server
// and waits for it so its files are closed when Close returns.
func (s *Store) Close() error {
	s.nc.Close()
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
	return nil
}
