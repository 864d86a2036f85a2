package apikeys

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kilnfaas/kiln/internal/boltfile"
)

// FileName is the embedded store's file inside the data directory, apart
// from registry.db so that each store owns its file and its lock.
const FileName = "apikeys.db"

// Layout of the bbolt file: "keys" maps a name to its record (JSON), and
// "hashes" maps the raw 32-byte hash to the name, so a lookup by hash is
// one read. Both change in the same transaction.
var (
	bktKeys   = []byte("keys")
	bktHashes = []byte("hashes")
)

// record is a key as stored (the embedded and Redis stores share it).
type record struct {
	Hash     string    `json:"hash"`
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used,omitzero"`
}

func (r record) key(name string) (Key, error) {
	h, err := ParseHash(r.Hash)
	if err != nil {
		return Key{}, fmt.Errorf("apikeys: key %s: %w", name, err)
	}
	return Key{Name: name, Hash: h, Created: r.Created, LastUsed: r.LastUsed}, nil
}

// Bolt is the embedded Store, for `kiln up` on one machine.
type Bolt struct{ db *bolt.DB }

var _ Store = (*Bolt)(nil)

// OpenBolt opens (creating if needed) the store in dataDir/apikeys.db.
// Only one process may hold it open: a second waits up to a second and fails.
func OpenBolt(dataDir string) (*Bolt, error) {
	db, err := boltfile.Open("apikeys", dataDir, FileName, false, bktKeys, bktHashes)
	if err != nil {
		return nil, err
	}
	return &Bolt{db: db}, nil
}

// Add implements Store.
func (s *Bolt) Add(ctx context.Context, name string, h Hash, created time.Time) error {
	if err := CheckName(name); err != nil {
		return err
	}
	data, err := json.Marshal(record{Hash: h.String(), Created: created.UTC()})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		keys, hashes := tx.Bucket(bktKeys), tx.Bucket(bktHashes)
		if keys.Get([]byte(name)) != nil {
			return fmt.Errorf("%w: %s", ErrExists, name)
		}
		if hashes.Get(h[:]) != nil {
			return fmt.Errorf("%w: the same key is already stored under another name", ErrExists)
		}
		if err := keys.Put([]byte(name), data); err != nil {
			return err
		}
		return hashes.Put(h[:], []byte(name))
	})
}

// Lookup implements Store.
func (s *Bolt) Lookup(ctx context.Context, h Hash) (Key, error) {
	var k Key
	err := s.db.View(func(tx *bolt.Tx) error {
		name := tx.Bucket(bktHashes).Get(h[:])
		if name == nil {
			return ErrNotFound
		}
		data := tx.Bucket(bktKeys).Get(name)
		if data == nil {
			return ErrNotFound
		}
		var r record
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("apikeys: key %s: %w", name, err)
		}
		var err error
		k, err = r.key(string(name))
		return err
	})
	return k, err
}

// Touch implements Store.
func (s *Bolt) Touch(ctx context.Context, name string, t time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		keys := tx.Bucket(bktKeys)
		data := keys.Get([]byte(name))
		if data == nil {
			return nil
		}
		var r record
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("apikeys: key %s: %w", name, err)
		}
		r.LastUsed = t.UTC()
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return keys.Put([]byte(name), data)
	})
}

// List implements Store.
func (s *Bolt) List(ctx context.Context) ([]Key, error) {
	var out []Key
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktKeys).ForEach(func(name, data []byte) error {
			var r record
			if err := json.Unmarshal(data, &r); err != nil {
				return fmt.Errorf("apikeys: key %s: %w", name, err)
			}
			k, err := r.key(string(name))
			if err != nil {
				return err
			}
			out = append(out, k)
			return nil
		})
	})
	return out, err
}

// Any implements Store.
func (s *Bolt) Any(ctx context.Context) (bool, error) {
	var any bool
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bktKeys).Cursor().First()
		any = k != nil
		return nil
	})
	return any, err
}

// Revoke implements Store.
func (s *Bolt) Revoke(ctx context.Context, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		keys := tx.Bucket(bktKeys)
		data := keys.Get([]byte(name))
		if data == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		var r record
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("apikeys: key %s: %w", name, err)
		}
		// A record whose hash no longer parses still goes: revoking must
		// never be blocked by the damage it may be cleaning up.
		if h, err := ParseHash(r.Hash); err == nil {
			if err := tx.Bucket(bktHashes).Delete(h[:]); err != nil {
				return err
			}
		}
		return keys.Delete([]byte(name))
	})
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }
