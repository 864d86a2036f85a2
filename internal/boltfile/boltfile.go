// Package boltfile opens the bbolt files of the embedded stores (registry,
// API keys, logs, SLA ledger) the one way they all need: a file of their own
// in the data directory, a clear error when another process holds it, and
// their top-level buckets created.
package boltfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Open opens (creating if needed) dataDir/file for the store named owner
// (the prefix of its errors) and creates buckets. Only one process may hold
// a file open: a second waits up to a second and fails saying so.
// noFreelistSync suits files written in frequent batches (bbolt rebuilds
// the freelist on open instead of writing it on every commit).
func Open(owner, dataDir, file string, noFreelistSync bool, buckets ...[]byte) (*bolt.DB, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: %w", owner, err)
	}
	path := filepath.Join(dataDir, file)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: noFreelistSync})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %s is locked by another process (is another `kiln up` using this data directory?)", owner, path)
		}
		return nil, fmt.Errorf("%s: open %s: %w", owner, path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", owner, err)
	}
	return db, nil
}
