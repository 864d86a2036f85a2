package registry

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/kilnfaas/kiln/internal/boltfile"
)

// FileName is the registry's file inside the data directory.
const FileName = "registry.db"

// Layout of the bbolt file: one top-level bucket per function under
// "functions"; inside it "versions" maps the big-endian version number to
// the JSON Function, "aliases" maps an alias to its targets (FormatTargets),
// "history" maps an alias to its earlier targets (FormatHistory), and the
// key "next" holds the number the next deploy takes. Versions are never
// reused while the function exists. Every change is one bbolt transaction.
var (
	bktFunctions = []byte("functions")
	bktVersions  = []byte("versions")
	bktAliases   = []byte("aliases")
	bktHistory   = []byte("history")
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
	db, err := boltfile.Open("registry", dataDir, FileName, false, bktFunctions)
	if err != nil {
		return nil, err
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
		f := spec.Function(version, s.now())
		data, err := json.Marshal(f)
		if err != nil {
			return err
		}
		if err := vb.Put(u64(version), data); err != nil {
			return err
		}
		if err := ab.Put([]byte(Latest), []byte(FormatTargets(One(version)))); err != nil {
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
	r, err := s.Resolve(ctx, name, ref)
	if err != nil {
		return Function{}, err
	}
	return r.Targets[0].Function, nil
}

// Resolve implements Store: one read transaction sees the alias and its
// versions as of one commit.
func (s *Bolt) Resolve(ctx context.Context, name, ref string) (Route, error) {
	if err := CheckName(name); err != nil {
		return Route{}, err
	}
	version, alias, err := ParseRef(ref)
	if err != nil {
		return Route{}, err
	}
	r := Route{Alias: alias}
	err = s.db.View(func(tx *bolt.Tx) error {
		fb, err := fnBucket(tx, name)
		if err != nil {
			return err
		}
		to := One(version)
		if alias != "" {
			if to, err = readAlias(fb, name, alias); err != nil {
				return err
			}
		}
		for _, t := range to {
			f, err := readVersion(fb, name, t.Version)
			if err != nil {
				return err
			}
			r.Targets = append(r.Targets, Routed{Function: f, Weight: t.Weight})
		}
		return nil
	})
	if err != nil {
		return Route{}, err
	}
	return r, nil
}

func fnBucket(tx *bolt.Tx, name string) (*bolt.Bucket, error) {
	fb := tx.Bucket(bktFunctions).Bucket([]byte(name))
	if fb == nil {
		return nil, fmt.Errorf("%w: function %s", ErrNotFound, name)
	}
	return fb, nil
}

func readVersion(fb *bolt.Bucket, name string, v uint64) (Function, error) {
	data := fb.Bucket(bktVersions).Get(u64(v))
	if data == nil {
		return Function{}, fmt.Errorf("%w: %s has no version %d", ErrNotFound, name, v)
	}
	var f Function
	if err := json.Unmarshal(data, &f); err != nil {
		return Function{}, fmt.Errorf("registry: %s version %d: %w", name, v, err)
	}
	return f, nil
}

// readAlias decodes an alias record. Registries written before aliases
// could split traffic hold a bare 8-byte big-endian version, whose first
// byte is 0 for any real version and never an ASCII digit.
func readAlias(fb *bolt.Bucket, name, alias string) ([]Target, error) {
	v := fb.Bucket(bktAliases).Get([]byte(alias))
	switch {
	case v == nil:
		return nil, fmt.Errorf("%w: %s has no alias %q", ErrNotFound, name, alias)
	case len(v) == 8 && v[0] == 0:
		return One(binary.BigEndian.Uint64(v)), nil
	}
	return ParseTargets(string(v))
}

func readHistory(fb *bolt.Bucket, alias string) ([][]Target, error) {
	hb := fb.Bucket(bktHistory)
	if hb == nil {
		return nil, nil
	}
	return ParseHistory(string(hb.Get([]byte(alias))))
}

// ListFunctions implements Store.
func (s *Bolt) ListFunctions(ctx context.Context) ([]Function, error) {
	var out []Function
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktFunctions).ForEachBucket(func(name []byte) error {
			fb := tx.Bucket(bktFunctions).Bucket(name)
			to, err := readAlias(fb, string(name), Latest)
			if err != nil {
				return err
			}
			f, err := readVersion(fb, string(name), to[0].Version)
			if err != nil {
				return err
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
func (s *Bolt) SetAlias(ctx context.Context, name, alias string, to []Target) (Alias, error) {
	if err := CheckName(name); err != nil {
		return Alias{}, err
	}
	if err := CheckAlias(alias); err != nil {
		return Alias{}, err
	}
	to, err := CheckTargets(to)
	if err != nil {
		return Alias{}, err
	}
	var a Alias
	err = s.db.Update(func(tx *bolt.Tx) error {
		fb, err := fnBucket(tx, name)
		if err != nil {
			return err
		}
		for _, t := range to {
			if _, err := readVersion(fb, name, t.Version); err != nil {
				return err
			}
		}
		h, err := readHistory(fb, alias)
		if err != nil {
			return err
		}
		old, err := readAlias(fb, name, alias)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		case !SameTargets(old, to):
			h = pushHistory(h, old)
		}
		a = Alias{Name: alias, Targets: to, History: h}
		return writeAlias(fb, a)
	})
	if err != nil {
		return Alias{}, err
	}
	return a, nil
}

// pushHistory puts to in front of h and keeps HistoryLen entries.
func pushHistory(h [][]Target, to []Target) [][]Target {
	h = append([][]Target{to}, h...)
	if len(h) > HistoryLen {
		h = h[:HistoryLen]
	}
	return h
}

func writeAlias(fb *bolt.Bucket, a Alias) error {
	if err := fb.Bucket(bktAliases).Put([]byte(a.Name), []byte(FormatTargets(a.Targets))); err != nil {
		return err
	}
	hb, err := fb.CreateBucketIfNotExists(bktHistory)
	if err != nil {
		return err
	}
	if len(a.History) == 0 {
		return hb.Delete([]byte(a.Name))
	}
	return hb.Put([]byte(a.Name), []byte(FormatHistory(a.History)))
}

// GetAlias implements Store.
func (s *Bolt) GetAlias(ctx context.Context, name, alias string) (Alias, error) {
	if err := CheckName(name); err != nil {
		return Alias{}, err
	}
	if err := CheckName(alias); err != nil {
		return Alias{}, err
	}
	var a Alias
	err := s.db.View(func(tx *bolt.Tx) error {
		fb, err := fnBucket(tx, name)
		if err != nil {
			return err
		}
		a, err = getAlias(fb, name, alias)
		return err
	})
	return a, err
}

func getAlias(fb *bolt.Bucket, name, alias string) (Alias, error) {
	to, err := readAlias(fb, name, alias)
	if err != nil {
		return Alias{}, err
	}
	h, err := readHistory(fb, alias)
	if err != nil {
		return Alias{}, err
	}
	return Alias{Name: alias, Targets: to, History: h}, nil
}

// Aliases implements Store.
func (s *Bolt) Aliases(ctx context.Context, name string) ([]Alias, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	var out []Alias
	err := s.db.View(func(tx *bolt.Tx) error {
		fb, err := fnBucket(tx, name)
		if err != nil {
			return err
		}
		return fb.Bucket(bktAliases).ForEach(func(k, _ []byte) error {
			a, err := getAlias(fb, name, string(k))
			if err != nil {
				return err
			}
			out = append(out, a)
			return nil
		})
	})
	return out, err
}

// DeleteAlias implements Store.
func (s *Bolt) DeleteAlias(ctx context.Context, name, alias string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if err := CheckAlias(alias); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		fb, err := fnBucket(tx, name)
		if err != nil {
			return err
		}
		if fb.Bucket(bktAliases).Get([]byte(alias)) == nil {
			return fmt.Errorf("%w: %s has no alias %q", ErrNotFound, name, alias)
		}
		if err := fb.Bucket(bktAliases).Delete([]byte(alias)); err != nil {
			return err
		}
		if hb := fb.Bucket(bktHistory); hb != nil {
			return hb.Delete([]byte(alias))
		}
		return nil
	})
}

// RollbackAlias implements Store.
func (s *Bolt) RollbackAlias(ctx context.Context, name, alias string) (Alias, error) {
	if err := CheckName(name); err != nil {
		return Alias{}, err
	}
	if err := CheckRollback(alias); err != nil {
		return Alias{}, err
	}
	var a Alias
	err := s.db.Update(func(tx *bolt.Tx) error {
		fb, err := fnBucket(tx, name)
		if err != nil {
			return err
		}
		cur, err := getAlias(fb, name, alias)
		if err != nil {
			return err
		}
		if len(cur.History) == 0 {
			return NoHistory(name, alias)
		}
		a = Alias{Name: alias, Targets: cur.History[0], History: cur.History[1:]}
		if len(a.History) == 0 {
			a.History = nil
		}
		return writeAlias(fb, a)
	})
	if err != nil {
		return Alias{}, err
	}
	return a, nil
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

// CheckRollback validates an alias to roll back: "latest" follows deploys
// and has no history of its own.
func CheckRollback(alias string) error {
	if err := CheckName(alias); err != nil {
		return err
	}
	if alias == Latest {
		return fmt.Errorf("%w: %q always follows the newest deploy and cannot be rolled back: point another alias (e.g. prod) at the version you want and call NAME@prod", ErrConflict, Latest)
	}
	return nil
}

// NoHistory is the error of a rollback with nothing to go back to.
func NoHistory(name, alias string) error {
	return fmt.Errorf("%w: alias %q of %s has not changed since it was made, so there is nothing to roll back to: point it at a version instead", ErrConflict, alias, name)
}
