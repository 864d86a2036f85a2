// Package apikeys holds Kiln's API keys: bearer tokens that open the
// management API and private functions. A key is shown once, when it is
// created; stores keep only its SHA-256, so a leaked store or keys file
// lets nobody in.
//
// Store is the contract every back-end fills in: Bolt (embedded, for
// `kiln up`), Redis (shared by the gateways of a cluster) and File (a
// read-only list of name:hash lines, KILN_API_KEYS_FILE). Bolt and Redis
// pass one conformance test in this package.
//
// SHA-256 without a salt or a slow KDF is enough here because keys are 256
// random bits, not passwords: there is no dictionary to try. For the same
// reason looking a key up by its hash (a map or Redis hash lookup whose
// timing may vary) leaks nothing useful: timing could at most reveal bits
// of the hash of a guess, not of any real key. Authenticate still compares
// the stored hash in constant time, so a store that matched loosely could
// not let a near miss through.
package apikeys

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Sentinel errors. Wrapped with %w; test with errors.Is.
var (
	// ErrNotFound: no key with that name or hash.
	ErrNotFound = errors.New("apikeys: no such key")
	// ErrExists: a key with that name exists already.
	ErrExists = errors.New("apikeys: a key with that name exists")
	// ErrInvalidName: a key name outside [a-z0-9][a-z0-9-]{0,62}.
	ErrInvalidName = errors.New("apikeys: invalid key name")
	// ErrReadOnly: the store cannot change (a keys file is edited by hand).
	ErrReadOnly = errors.New("apikeys: read-only key store")
	// ErrBadHash: a hash that is not 64 hex digits.
	ErrBadHash = errors.New("apikeys: bad key hash")
	// ErrUnauthorized: a presented key is missing, unknown or revoked.
	ErrUnauthorized = errors.New("apikeys: missing or unknown API key")
)

// Prefix starts every key Kiln issues, so a key is recognisable in a
// config file, a log or a secret scanner's report.
const Prefix = "kiln_"

// Hash is the SHA-256 of a key, the only form of it a store keeps.
type Hash [sha256.Size]byte

// HashOf hashes a presented key.
func HashOf(key string) Hash { return sha256.Sum256([]byte(key)) }

// String is the hash in lower-case hex, as stored and as in a keys file.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash reads 64 hex digits.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("%w: %q: want the 64 hex digits of a SHA-256", ErrBadHash, s)
	}
	copy(h[:], b)
	return h, nil
}

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Generate returns a new key: Prefix and 32 random bytes in lower-case
// base32 (no padding, no characters a shell or URL would mangle).
func Generate() (key string, h Hash, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", h, fmt.Errorf("apikeys: %w", err)
	}
	key = Prefix + strings.ToLower(keyEncoding.EncodeToString(b[:]))
	return key, HashOf(key), nil
}

// Key is what a store knows about one key: never the key itself.
type Key struct {
	Name    string    `json:"name"`
	Hash    Hash      `json:"-"`
	Created time.Time `json:"created"`
	// LastUsed is when a gateway last accepted the key, to the minute or
	// so (gateways record it at most once a minute per key); zero: never.
	LastUsed time.Time `json:"last_used,omitzero"`
}

// Store keeps API keys. Implementations are safe for concurrent use.
type Store interface {
	// Add records a key under name. ErrExists if the name is taken.
	Add(ctx context.Context, name string, h Hash, created time.Time) error
	// Lookup finds the key whose hash is h, or ErrNotFound.
	Lookup(ctx context.Context, h Hash) (Key, error)
	// Touch records that the key called name was accepted at t; a key that
	// no longer exists is ignored.
	Touch(ctx context.Context, name string, t time.Time) error
	// List returns every key, by name.
	List(ctx context.Context) ([]Key, error)
	// Any reports whether at least one key exists.
	Any(ctx context.Context) (bool, error)
	// Revoke removes the key called name, or returns ErrNotFound.
	Revoke(ctx context.Context, name string) error
	// Close releases the store; calls after Close fail.
	Close() error
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// CheckName returns ErrInvalidName, with the rule, unless s may name a key:
// the same rule as function names, so names fit in logs and URLs unchanged.
func CheckName(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %q: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", ErrInvalidName, s)
	}
	return nil
}

// Authenticate returns the key that key is, or ErrUnauthorized for a key
// that is empty, unknown or revoked. Other errors mean the store failed.
func Authenticate(ctx context.Context, s Store, key string) (Key, error) {
	h := HashOf(key)
	if key == "" {
		return Key{}, ErrUnauthorized
	}
	k, err := s.Lookup(ctx, h)
	if errors.Is(err, ErrNotFound) {
		return Key{}, ErrUnauthorized
	}
	if err != nil {
		return Key{}, err
	}
	if subtle.ConstantTimeCompare(k.Hash[:], h[:]) != 1 {
		return Key{}, ErrUnauthorized
	}
	return k, nil
}
