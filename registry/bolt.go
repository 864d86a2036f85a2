package registry

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// FileName is the registry's file inside the data directory.
const FileName = "registry.db"

// Layout of the bbolt file: one top-level bucket per function under
// "functions"; inside it "versions" maps the big-endian version number to
// the JSON Function, "aliases" maps an alias to a big-endian version, and
// the key "next" holds the number the next deploy takes. Versions are never
// reused while the function exists.
var (
	bktFunctions = []byte("functions")
	bktVersions  = []byte("versions")
	bktAliases   = []byte("aliases")
	keyNext      = []byte("next")
)

// Bolt is the embedded Store: one bbolt file, for `kiln up` on one machine.
type Bolt struct {
	db  *bolt.DB
	now func() time.Time
}

// OpenBolt opens (creating if needed) the registry in dataDir/registry.db.
// Only one process may hold it open: a second waits up to a second and fails.
func OpenBolt(dataDir string) (*Bolt, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	path := filepath.Join(dataDir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("registry: %s is locked by another process (is another `kiln up` using this data directory?)", path)
		}
		return nil, fmt.Errorf("registry: open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bktFunctions)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("registry: %w", err)
	}
	return &Bolt{db: db, now: time.Now}, nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// PutFunction implements Store.
func (s *Bolt) PutFunction(ctx context.Context, spec Spec) (uint64, error) {
	if err := CheckSpec(spec); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var version uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		fb, err := tx.Bucket(bktFunctions).CreateBucketIfNotExists([]byte(spec.Name))
		if err != nil {
			return err
		}
		vb, err := fb.CreateBucketIfNotExists(bktVersions)
		if err != nil {
			return err
		}
		ab, err := fb.CreateBucketIfNotExists(bktAliases)
		if err != nil {
			return err
		}
		version = 1
		if n := fb.Get(keyNext); len(n) == 8 {
			version = binary.BigEndian.Uint64(n)
		}
		f := Function{
			Name: spec.Name, Version: version, ImageDigest: spec.ImageDigest, Kind: spec.Kind,
			MemoryBytes: spec.MemoryBytes, TimeoutMs: spec.TimeoutMs,
			Env: clone(spec.Env), Args: clone(spec.Args), Created: s.now().UTC(), Limits: spec.Limits,
		}
		data, err := json.Marshal(f)
		if err != nil {
			return err
		}
		if err := vb.Put(u64(version), data); err != nil {
			return err
		}
		if err := ab.Put([]byte(Latest), u64(version)); err != nil {
			return err
		}
		return fb.Put(keyNext, u64(version+1))
	})
	if err != nil {
		return 0, fmt.Errorf("registry: put %s: %w", spec.Name, err)
	}
	return version, nil
}

// GetFunction implements Store.
func (s *Bolt) GetFunction(ctx context.Context, name, ref string) (Function, error) {
	if err := CheckName(name); err != nil {
		return Function{}, err
	}
	version, alias, err := ParseRef(ref)
	if err != nil {
		return Function{}, err
	}
	var f Function
	err = s.db.View(func(tx *bolt.Tx) error {
		fb := tx.Bucket(bktFunctions).Bucket([]byte(name))
		if fb == nil {
			return fmt.Errorf("%w: function %s", ErrNotFound, name)
		}
		if alias != "" {
			v := fb.Bucket(bktAliases).Get([]byte(alias))
			if len(v) != 8 {
				return fmt.Errorf("%w: %s has no alias %q", ErrNotFound, name, alias)
			}
			version = binary.BigEndian.Uint64(v)
		}
		data := fb.Bucket(bktVersions).Get(u64(version))
		if data == nil {
			return fmt.Errorf("%w: %s has no version %d", ErrNotFound, name, version)
		}
		return json.Unmarshal(data, &f)
	})
	return f, err
}

// ListFunctions implements Store.
func (s *Bolt) ListFunctions(ctx context.Context) ([]Function, error) {
	var out []Function
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktFunctions).ForEachBucket(func(name []byte) error {
			fb := tx.Bucket(bktFunctions).Bucket(name)
			v := fb.Bucket(bktAliases).Get([]byte(Latest))
			if len(v) != 8 {
				return nil
			}
			data := fb.Bucket(bktVersions).Get(v)
			if data == nil {
				return nil
			}
			var f Function
			if err := json.Unmarshal(data, &f); err != nil {
				return fmt.Errorf("function %s: %w", name, err)
			}
			out = append(out, f)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry: list: %w", err)
	}
	return out, nil
}

// DeleteFunction implements Store.
func (s *Bolt) DeleteFunction(ctx context.Context, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		err := tx.Bucket(bktFunctions).DeleteBucket([]byte(name))
		if errors.Is(err, bolterrors.ErrBucketNotFound) {
			return fmt.Errorf("%w: function %s", ErrNotFound, name)
		}
		return err
	})
}

// Versions implements Store.
func (s *Bolt) Versions(ctx context.Context, name string) ([]Function, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	var out []Function
	err := s.db.View(func(tx *bolt.Tx) error {
		fb := tx.Bucket(bktFunctions).Bucket([]byte(name))
		if fb == nil {
			return fmt.Errorf("%w: function %s", ErrNotFound, name)
		}
		return fb.Bucket(bktVersions).ForEach(func(_, data []byte) error {
			var f Function
			if err := json.Unmarshal(data, &f); err != nil {
				return err
			}
			out = append(out, f)
			return nil
		})
	})
	return out, err
}

// SetAlias implements Store.
func (s *Bolt) SetAlias(ctx context.Context, name, alias string, version uint64) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if err := CheckAlias(alias); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		fb := tx.Bucket(bktFunctions).Bucket([]byte(name))
		if fb == nil {
			return fmt.Errorf("%w: function %s", ErrNotFound, name)
		}
		if fb.Bucket(bktVersions).Get(u64(version)) == nil {
			return fmt.Errorf("%w: %s has no version %d", ErrNotFound, name, version)
		}
		return fb.Bucket(bktAliases).Put([]byte(alias), u64(version))
	})
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }

// CheckAlias validates an alias a user may set: a valid name that is
// neither a number (it would read as a version) nor "latest".
func CheckAlias(alias string) error {
	if err := CheckName(alias); err != nil {
		return err
	}
	if alias == Latest {
		return fmt.Errorf("%w: alias %q moves only with deploys", ErrConflict, Latest)
	}
	if len(bytes.Trim([]byte(alias), "0123456789")) == 0 {
		return fmt.Errorf("%w: alias %q is a number and would read as a version", ErrInvalidName, alias)
	}
	return nil
}
