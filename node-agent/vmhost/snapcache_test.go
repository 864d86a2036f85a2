package vmhost

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeSnap stands for an opened snapshot: the cache only opens and closes.
type fakeSnap struct {
	gen    int
	mu     sync.Mutex
	closed int
}

func (f *fakeSnap) Close() error {
	f.mu.Lock()
	f.closed++
	f.mu.Unlock()
	return nil
}

func (f *fakeSnap) closes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// getFile gets the snapshot at path as a worker does: from the file the
// agent opened there.
func getFile[T io.Closer](c *snapCache[T], path string) (T, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		var zero T
		return zero, nil, err
	}
	return c.get(path, f)
}

func TestSnapCache(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.snap")
	os.WriteFile(path, []byte("one"), 0o644)
	opens := 0
	c := newSnapCache(func(f *os.File) (*fakeSnap, error) {
		defer f.Close()
		opens++
		if b, _ := io.ReadAll(f); string(b) == "bad" {
			return nil, errors.New("bad file")
		}
		return &fakeSnap{gen: opens}, nil
	}, time.Minute)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }

	s1, rel1, err := getFile(c, path)
	if err != nil {
		t.Fatal(err)
	}
	s2, rel2, _ := getFile(c, path)
	if s1 != s2 || opens != 1 {
		t.Fatalf("second get opened again (%d opens)", opens)
	}
	rel1()
	rel1() // idempotent

	// The agent renames a new snapshot over the path: a new inode, reopened;
	// the old one closes when its last VM goes.
	tmp := filepath.Join(dir, "tmp")
	os.WriteFile(tmp, []byte("two"), 0o644)
	os.Rename(tmp, path)
	s3, rel3, _ := getFile(c, path)
	if s3 == s1 || opens != 2 {
		t.Fatalf("a replaced file was not reopened (%d opens)", opens)
	}
	if s1.closes() != 0 {
		t.Fatal("closed while a VM still used it")
	}
	rel2()
	if s1.closes() != 1 {
		t.Fatalf("the replaced snapshot closed %d times", s1.closes())
	}

	// Rewritten in place (mtime): reopened too.
	os.Chtimes(path, now, now.Add(time.Hour))
	s4, rel4, _ := getFile(c, path)
	if s4 == s3 || opens != 3 || s3.closes() != 0 {
		t.Fatalf("mtime change: %d opens, old closed %d", opens, s3.closes())
	}
	rel3()
	if s3.closes() != 1 {
		t.Fatal("stale snapshot not closed on its last release")
	}

	// Idle for a minute with no VM: closed; in use: kept.
	rel4()
	now = now.Add(59 * time.Second)
	c.sweep()
	if c.size() != 1 || s4.closes() != 0 {
		t.Fatal("swept before a minute")
	}
	s5, rel5, _ := getFile(c, path)
	now = now.Add(2 * time.Minute)
	c.sweep()
	if s5 != s4 || c.size() != 1 {
		t.Fatal("swept while in use")
	}
	rel5()
	now = now.Add(time.Minute)
	c.sweep()
	if c.size() != 0 || s4.closes() != 1 {
		t.Fatalf("idle snapshot: %d cached, closed %d", c.size(), s4.closes())
	}

	// Errors are not cached; a missing file is an error.
	os.WriteFile(path, []byte("bad"), 0o644)
	os.Chtimes(path, now, now.Add(2*time.Hour))
	for range 2 {
		if _, _, err := getFile(c, path); err == nil {
			t.Fatal("bad file opened")
		}
	}
	if opens != 5 || c.size() != 0 {
		t.Fatalf("errors cached: %d opens, %d cached", opens, c.size())
	}
	if _, _, err := getFile(c, filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// Concurrent restores of one new snapshot open (verify) it once.
func TestSnapCacheOpensOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.snap")
	os.WriteFile(path, []byte("x"), 0o644)
	var mu sync.Mutex
	opens := 0
	c := newSnapCache(func(f *os.File) (*fakeSnap, error) {
		f.Close()
		mu.Lock()
		opens++
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		return &fakeSnap{}, nil
	}, time.Minute)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, rel, err := getFile(c, path)
			if err != nil {
				t.Error(err)
				return
			}
			rel()
		})
	}
	wg.Wait()
	if opens != 1 {
		t.Fatalf("%d opens", opens)
	}
}
