package apikeys

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// File is a read-only Store over a keys file (KILN_API_KEYS_FILE), for
// cluster roles that should not depend on Redis to let an operator in.
// Each line is "NAME:SHA256HEX" (what `kiln keys generate NAME` prints);
// blank lines and lines starting with '#' are ignored. The file is read
// again when its modification time or size changes, so adding or removing
// a line takes effect without a restart.
type File struct {
	path string

	mu      sync.Mutex // guards the fields below
	keys    []Key
	modTime time.Time
	size    int64
	closed  bool
}

var _ Store = (*File)(nil)

// OpenFile reads the keys file at path; a malformed line is an error that
// names it, so a typo never silently drops a key.
func OpenFile(path string) (*File, error) {
	f := &File{path: path}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// ParseFile reads keys file lines. Every Key has a zero Created time: the
// file does not say when a key was made.
func ParseFile(text string) ([]Key, error) {
	var out []Key
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("apikeys: line %d: want NAME:SHA256HEX (see `kiln keys generate`)", n)
		}
		name = strings.TrimSpace(name)
		if err := CheckName(name); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("line %d: %w: %s appears twice", n, ErrExists, name)
		}
		seen[name] = true
		h, err := ParseHash(hash)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, Key{Name: name, Hash: h})
	}
	return out, sc.Err()
}

// Line is how a key appears in a keys file.
func Line(name string, h Hash) string { return name + ":" + h.String() }

// reload re-reads the file when it changed. A file that became unreadable
// or malformed keeps the keys last read (an editor's half-written save
// must not lock everyone out) and returns the error.
func (f *File) reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("apikeys: keys file store is closed")
	}
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("apikeys: keys file: %w", err)
	}
	if st.ModTime().Equal(f.modTime) && st.Size() == f.size && f.keys != nil {
		return nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("apikeys: keys file: %w", err)
	}
	keys, err := ParseFile(string(b))
	if err != nil {
		return fmt.Errorf("apikeys: keys file %s: %w", f.path, err)
	}
	if keys == nil {
		keys = []Key{}
	}
	f.keys, f.modTime, f.size = keys, st.ModTime(), st.Size()
	return nil
}

func (f *File) current() ([]Key, error) {
	err := f.reload()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errors.New("apikeys: keys file store is closed")
	}
	if err != nil && f.keys == nil {
		return nil, err
	}
	return f.keys, nil
}

// Lookup implements Store. It compares against every line in constant time.
func (f *File) Lookup(ctx context.Context, h Hash) (Key, error) {
	keys, err := f.current()
	if err != nil {
		return Key{}, err
	}
	found := -1
	for i := range keys {
		if subtle.ConstantTimeCompare(keys[i].Hash[:], h[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Key{}, ErrNotFound
	}
	return keys[found], nil
}

// List implements Store.
func (f *File) List(ctx context.Context) ([]Key, error) {
	keys, err := f.current()
	return append([]Key(nil), keys...), err
}

// Any implements Store.
func (f *File) Any(ctx context.Context) (bool, error) {
	keys, err := f.current()
	return len(keys) > 0, err
}

// Add implements Store: a keys file changes only by hand.
func (f *File) Add(ctx context.Context, name string, h Hash, created time.Time) error {
	return fmt.Errorf("%w: add the line %q to %s instead", ErrReadOnly, Line(name, h), f.path)
}

// Revoke implements Store: a keys file changes only by hand.
func (f *File) Revoke(ctx context.Context, name string) error {
	keys, err := f.current()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Name == name {
			return fmt.Errorf("%w: delete the line of %s from %s instead", ErrReadOnly, name, f.path)
		}
	}
	return fmt.Errorf("%w: %s", ErrNotFound, name)
}

// Touch implements Store: a keys file records no use.
func (f *File) Touch(ctx context.Context, name string, t time.Time) error { return nil }

// Close implements Store.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}
