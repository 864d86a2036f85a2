package vmhost

import (
	"io"
	"os"
	"sync"
	"syscall"
	"time"
)

// snapCache keeps a worker's opened snapshots by the path the agent opened
// them at: opening one
// verifies a checksum over the whole file (tens of MiB read), which a
// restore must not pay each time. An entry is reopened when the file the
// agent passed for its path is another one (inode, mtime or size: the agent replaces a snapshot by
// renaming a new file over it) and closed once no VM has used it for idle.
// T is *vmm.Snapshot in a worker; the type parameter lets the cache be
// tested without KVM.
type snapCache[T io.Closer] struct {
	open func(f *os.File) (T, error) // takes over f
	idle time.Duration
	now  func() time.Time

	mu sync.Mutex // guards m and every entry's refs, used and stale
	m  map[string]*snapEntry[T]
}

type snapEntry[T io.Closer] struct {
	ino   uint64
	mtime time.Time
	size  int64

	ready chan struct{} // closed once snap or err is set
	snap  T
	err   error

	refs  int       // VMs restored from it and not yet closed, plus opens in progress
	used  time.Time // the last get or release
	stale bool      // the path now names another file, or the entry was evicted
}

func newSnapCache[T io.Closer](open func(*os.File) (T, error), idle time.Duration) *snapCache[T] {
	return &snapCache[T]{open: open, idle: idle, now: time.Now, m: map[string]*snapEntry[T]{}}
}

// get returns the snapshot at path — f, the file the agent opened there
// and passed over (a jailed worker has no file system to open it in) —
// opened now or earlier, and the release to call when the VM restored from
// it is closed. It takes over f: open keeps it, or it is closed.
func (c *snapCache[T]) get(path string, f *os.File) (T, func(), error) {
	var zero T
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return zero, nil, err
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	c.mu.Lock()
	e := c.m[path]
	if e != nil && (e.ino != ino || !e.mtime.Equal(st.ModTime()) || e.size != st.Size()) {
		delete(c.m, path)
		c.retire(e)
		e = nil
	}
	opener := e == nil
	if opener {
		e = &snapEntry[T]{ino: ino, mtime: st.ModTime(), size: st.Size(), ready: make(chan struct{})}
		c.m[path] = e
	}
	e.refs++
	e.used = c.now()
	c.mu.Unlock()

	if opener {
		e.snap, e.err = c.open(f)
		close(e.ready)
	} else {
		f.Close()
	}
	<-e.ready
	if e.err != nil {
		// Errors are not cached: the next restore tries the file again.
		c.mu.Lock()
		e.refs--
		if c.m[path] == e {
			delete(c.m, path)
		}
		c.mu.Unlock()
		return zero, nil, e.err
	}
	var once sync.Once
	return e.snap, func() { once.Do(func() { c.release(e) }) }, nil
}

func (c *snapCache[T]) release(e *snapEntry[T]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	e.used = c.now()
	if e.stale && e.refs == 0 {
		e.snap.Close()
	}
}

// retire marks an entry no longer reachable from the map and closes it if
// nothing uses it. c.mu is held.
func (c *snapCache[T]) retire(e *snapEntry[T]) {
	e.stale = true
	if e.refs == 0 {
		// refs is 0 only after the open finished (the opener holds one).
		if e.err == nil {
			e.snap.Close()
		}
	}
}

// sweep closes the snapshots no VM used for idle.
func (c *snapCache[T]) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for path, e := range c.m {
		if e.refs == 0 && now.Sub(e.used) >= c.idle {
			delete(c.m, path)
			c.retire(e)
		}
	}
}

// size is how many snapshots are open and reachable.
func (c *snapCache[T]) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
