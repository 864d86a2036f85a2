package nodeagent

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

func TestSnapRetryAfter(t *testing.T) {
	for _, c := range []struct {
		failures int
		want     time.Duration
	}{
		{1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute}, {4, 4 * time.Minute},
		{6, 16 * time.Minute}, {7, 30 * time.Minute}, {50, 30 * time.Minute},
	} {
		if got := snapRetryAfter(c.failures); got != c.want {
			t.Errorf("snapRetryAfter(%d) = %v, want %v", c.failures, got, c.want)
		}
	}
}

func TestSnapFailReason(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("write: %w", syscall.ENOSPC), "no_space"},
		{fmt.Errorf("write: %w", syscall.EDQUOT), "no_space"},
		{fmt.Errorf("write: %w", syscall.EFBIG), "too_large"},
		// From a vmhost worker only the text arrives.
		{errors.New("write /x/.snap-1: no space left on device"), "no_space"},
		{errors.New("write /x/.snap-1: file too large"), "too_large"},
		{errors.New("mincore: invalid argument"), "write"},
	} {
		if got := snapFailReason(c.err); got != c.want {
			t.Errorf("snapFailReason(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}

// testClock is a clock tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestSnapStore(t *testing.T, maxBytes int64, maxIdle time.Duration) (*snapStore, *testClock, map[string]int) {
	clock := &testClock{t: time.Unix(1e9, 0)}
	st, err := newSnapStore(t.TempDir(), slog.New(slog.DiscardHandler), clock.now, maxBytes, maxIdle)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	count := func(what string) func(string) {
		return func(reason string) { counts[what+":"+reason]++ }
	}
	st.onFail, st.onDelete = count("fail"), count("delete")
	return st, clock, counts
}

// A failed write backs the shape off — its cold starts boot without trying
// again — for a growing interval; a write that works ends the backoff.
func TestSnapStoreBackoff(t *testing.T) {
	st, clock, counts := newTestSnapStore(t, 1<<30, time.Hour)
	cfg := &vmm.Config{}
	take := func() bool { return st.plan("k", cfg).take != "" }
	if !take() {
		t.Fatal("the first cold start does not take the snapshot")
	}
	if take() {
		t.Fatal("a concurrent cold start takes it too")
	}
	full := fmt.Errorf("write: %w", syscall.ENOSPC)
	st.taken("k", full, "")
	for i, wait := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute} {
		if take() {
			t.Fatalf("failure %d: a cold start right after it tries again", i+1)
		}
		clock.add(wait - time.Second)
		if take() {
			t.Fatalf("failure %d: tried again before %v", i+1, wait)
		}
		clock.add(time.Second)
		if !take() {
			t.Fatalf("failure %d: not tried again after %v", i+1, wait)
		}
		st.taken("k", full, "")
	}
	if counts["fail:no_space"] != 4 {
		t.Fatalf("failures counted %v, want 4 no_space", counts)
	}
	clock.add(4 * time.Minute)
	if !take() {
		t.Fatal("not tried after the fourth backoff")
	}
	st.taken("k", nil, "") // space came back
	st.abandon("k")
	if !take() {
		t.Fatal("after a success the shape is still backing off")
	}
}

// writeSnapFile makes a snapshot-store file of n bytes of data (not a
// hole: it takes disk) last modified at mtime.
func writeSnapFile(t *testing.T, dir, key string, n int, mtime time.Time) {
	t.Helper()
	p := filepath.Join(dir, key+".snap")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, n), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, mtime, mtime)
}

func snapFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*.snap"))
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

// The store stays within its bound, least recently used first, never
// removing the snapshot of a shape with a live instance nor the file just
// written; a snapshot unused for maxIdle goes whatever the room.
func TestSnapStoreTrim(t *testing.T) {
	st, clock, counts := newTestSnapStore(t, 300<<10, time.Hour)
	live := map[string]bool{"a": true}
	st.inUse = func() map[string]bool { return live }
	t0 := clock.now()
	// a is the oldest but live; b, c, d by age (file times from an
	// earlier run); e used by a plan since.
	for i, k := range []string{"a", "b", "c", "d", "e"} {
		writeSnapFile(t, st.dir, k, 100<<10, t0.Add(time.Duration(i)*time.Minute))
	}
	clock.add(10 * time.Minute)
	st.entry("b", true).mu.Unlock() // b restored just now: most recent
	st.trim("d")                    // d just written
	// 500 KiB over a 300 KiB bound: two go, the oldest not spared (c, e).
	if got := fmt.Sprint(snapFiles(t, st.dir)); got != "[a.snap b.snap d.snap]" {
		t.Fatalf("after trimming for size: %s", got)
	}
	if counts["delete:size"] != 2 {
		t.Fatalf("deletions counted %v", counts)
	}
	clock.add(59 * time.Minute) // b used 59 min ago, d written 65 min ago
	st.trim("")
	if got := fmt.Sprint(snapFiles(t, st.dir)); got != "[a.snap b.snap]" {
		t.Fatalf("after trimming for age: %s", got)
	}
	clock.add(time.Hour)
	live = nil
	st.trim("")
	if got := snapFiles(t, st.dir); len(got) != 0 || counts["delete:idle"] != 3 {
		t.Fatalf("with nothing live, an hour later: %v, deletions %v", got, counts)
	}
}
