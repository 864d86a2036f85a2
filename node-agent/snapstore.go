package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// DefaultSnapshotBytes bounds the disk the snapshot store may use when
// Config.SnapshotBytes is 0: as much as the image cache (DefaultCacheBytes).
// A snapshot costs what its guest touched (hello-go: 2.5 MiB), so this holds
// thousands of shapes.
const DefaultSnapshotBytes = DefaultCacheBytes

// DefaultSnapshotMaxIdle is how long a snapshot nobody restored or took is
// kept when Config.SnapshotMaxIdle is 0. The agent never hears of a
// function's redeploy or delete (the snapshot of an old digest is simply no
// longer asked for), so age is what removes those; a function called less
// often than this pays one boot per call-gap instead of a restore.
const DefaultSnapshotMaxIdle = 24 * time.Hour

// Backoff after a snapshot could not be written (disk full, file-size
// limit, I/O error): the shape's cold starts boot without trying to write
// it again for snapRetryMin, doubled per further failure up to
// snapRetryMax (snapRetryAfter).
const (
	snapRetryMin = 30 * time.Second
	snapRetryMax = 30 * time.Minute
)

// snapRetryAfter is how long after its failures-th consecutive failed write
// a shape's snapshot is not tried again. Pure, for the table test.
func snapRetryAfter(failures int) time.Duration {
	d := snapRetryMin
	for i := 1; i < failures && d < snapRetryMax; i++ {
		d *= 2
	}
	return min(d, snapRetryMax)
}

// snapFailReason names why writing a snapshot failed, for
// kiln_agent_snapshot_failures_total{reason}: no_space (ENOSPC, EDQUOT),
// too_large (EFBIG: a file-size limit), or write (anything else). An error
// from a vmhost worker keeps only its text, so that is read too.
func snapFailReason(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) ||
		strings.Contains(err.Error(), syscall.ENOSPC.Error()) || strings.Contains(err.Error(), syscall.EDQUOT.Error()):
		return "no_space"
	case errors.Is(err, syscall.EFBIG) || strings.Contains(err.Error(), syscall.EFBIG.Error()):
		return "too_large"
	}
	return "write"
}

// snapStore is the node's snapshot store: one file per function shape,
// named by a digest of everything that shaped the boot (image, memory size,
// kernel build, args, env, hostname, ABI), so that a changed kernel or
// setting never finds a stale snapshot — it finds none and takes a new one.
// The files are verified once when opened (vmm.OpenSnapshot, which keeps a
// sealed copy that restores map); an opened Snapshot then serves every
// restore of that shape.
//
// The store is bounded (trim): its files together stay within maxBytes of
// disk, the least recently used going first, and a file nobody used for
// maxIdle goes too; the snapshot of a shape with a live instance is never
// removed. A shape whose snapshot could not be written backs off
// (snapRetryAfter) and boots meanwhile.
type snapStore struct {
	dir      string
	log      *slog.Logger
	now      func() time.Time
	maxBytes int64
	maxIdle  time.Duration
	// inUse lists the shapes with a live instance (nil: none); called
	// without st.mu held.
	inUse func() map[string]bool
	// onFail and onDelete count a failed write and a removed file by
	// reason, onTrim reports the disk used after a trim (nil: not told).
	onFail, onDelete func(reason string)
	onTrim           func(bytes int64)

	mu       sync.Mutex
	entries  map[string]*snapEntry
	lastTrim time.Time // the last trim
}

// snapEntry is one shape's snapshot: opened, being taken, or not possible.
type snapEntry struct {
	mu       sync.Mutex // held while opening (verifying) the file
	path     string
	snap     *vmm.Snapshot
	taking   bool      // a boot is writing it now
	never    string    // why this shape cannot be snapshotted ("" if it can)
	failures int       // writes failed in a row
	retryAt  time.Time // no write is tried before this (after a failure)
	gone     bool      // removed from the store's map: look the key up again

	used time.Time // the last plan for it; guarded by snapStore.mu
}

func newSnapStore(dir string, log *slog.Logger, now func() time.Time, maxBytes int64, maxIdle time.Duration) (*snapStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nodeagent: snapshot store: %w", err)
	}
	if maxBytes <= 0 {
		maxBytes = DefaultSnapshotBytes
	}
	if maxIdle <= 0 {
		maxIdle = DefaultSnapshotMaxIdle
	}
	return &snapStore{dir: dir, log: log, now: now, maxBytes: maxBytes, maxIdle: maxIdle, entries: map[string]*snapEntry{}}, nil
}

// snapKey digests what makes two boots interchangeable: the image (by its
// content digest, which covers its kernel and program), the kernel that
// overrides it if any (kernelSum, "" for none), and what the config adds.
// It hashes no image bytes: a cold start pays for none.
func snapKey(digest, kernelSum string, cfg *vmm.Config) string {
	h := sha256.New()
	fmt.Fprintf(h, "image=%q kernel=%q abi=%d mem=%d host=%q args=%q env=%q",
		digest, kernelSum, abi.Version, cfg.MemSize, cfg.Hostname, cfg.Args, cfg.Env)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// entry returns key's entry, locked; touch marks it used now.
func (st *snapStore) entry(key string, touch bool) *snapEntry {
	for {
		st.mu.Lock()
		e := st.entries[key]
		if e == nil {
			e = &snapEntry{path: filepath.Join(st.dir, key+".snap")}
			st.entries[key] = e
		}
		if touch {
			e.used = st.now()
		}
		st.mu.Unlock()
		e.mu.Lock()
		if !e.gone {
			return e
		}
		e.mu.Unlock() // trim removed it meanwhile
	}
}

// snapPlan is how a new instance of one shape starts.
type snapPlan struct {
	restore *vmm.Snapshot // restore this
	take    string        // or boot and write a snapshot here ("": plain boot)
	key     string
	corrupt error // a snapshot file was found unusable and removed
}

// plan decides between a restore and a boot for cfg. Only one boot at a time
// takes a shape's snapshot; concurrent cold starts boot plainly meanwhile,
// and so do all of them while the shape backs off after a failed write.
func (st *snapStore) plan(key string, cfg *vmm.Config) snapPlan {
	e := st.entry(key, true)
	defer e.mu.Unlock()
	p := snapPlan{key: key}
	switch {
	case e.snap != nil:
		p.restore = e.snap
		return p
	case e.never != "" || e.taking || st.now().Before(e.retryAt):
		return p
	}
	if _, err := os.Stat(e.path); err == nil {
		s, err := vmm.OpenSnapshot(e.path)
		if err == nil {
			err = s.Matches(*cfg)
			if err != nil {
				s.Close()
			}
		}
		if err == nil {
			e.snap = s
			p.restore = s
			return p
		}
		// Corrupt, truncated or stale: never restored, rebuilt now.
		st.log.Warn("snapshot unusable; removing it and taking a new one", "path", e.path, "err", err)
		os.Remove(e.path)
		p.corrupt = err
	}
	e.taking = true
	p.take = e.path
	return p
}

// taken records how a boot that was asked to write key's snapshot fared.
// why, when not empty, says the shape must never be snapshotted. A failed
// write is counted and backs the shape off; a new file may push the store
// over its bound, so it is trimmed (keeping this one).
func (st *snapStore) taken(key string, err error, why string) {
	e := st.entry(key, false)
	defer e.mu.Unlock()
	e.taking = false
	switch {
	case why != "":
		e.never = why
		os.Remove(e.path)
		st.log.Info("function not snapshotted", "path", e.path, "why", why)
	case err != nil:
		e.failures++
		wait := snapRetryAfter(e.failures)
		e.retryAt = st.now().Add(wait)
		reason := snapFailReason(err)
		if st.onFail != nil {
			st.onFail(reason)
		}
		st.log.Warn("taking a snapshot failed; its cold starts boot until the retry", "path", e.path,
			"reason", reason, "failures", e.failures, "retry_in", wait, "err", err)
	default:
		e.failures, e.retryAt = 0, time.Time{}
		go st.trim(key)
	}
}

// abandon ends a take whose boot never reached its first input wait.
func (st *snapStore) abandon(key string) {
	e := st.entry(key, false)
	defer e.mu.Unlock()
	e.taking = false
}

// drop forgets key's snapshot after a restore from it failed, so that the
// next cold start verifies the file again (and rebuilds it if it is bad).
func (st *snapStore) drop(key string) {
	e := st.entry(key, false)
	defer e.mu.Unlock()
	if e.snap != nil {
		e.snap.Close()
		e.snap = nil
	}
}

// trimEvery is how often maintenance walks the store for files past
// maxIdle (a new snapshot trims at once).
const trimEvery = time.Minute

// maybeTrim trims if the last walk is trimEvery old.
func (st *snapStore) maybeTrim() {
	st.mu.Lock()
	due := st.now().Sub(st.lastTrim) >= trimEvery
	st.mu.Unlock()
	if due {
		st.trim("")
	}
}

// trim removes snapshot files, least recently used first, while the files
// together take more than maxBytes of disk, and every file not used for
// maxIdle. It spares keep (a file just written), the shapes with a live
// instance, and one being opened or taken now. Used is the last plan for the
// shape in this process, else the file's modification time (when it was
// written). A VM restored from a removed snapshot runs on: it maps the
// sealed copy, which lives until its last VM is gone.
func (st *snapStore) trim(keep string) {
	var live map[string]bool
	if st.inUse != nil {
		live = st.inUse()
	}
	dirents, err := os.ReadDir(st.dir)
	if err != nil {
		return
	}
	type file struct {
		key  string
		size int64 // disk blocks, not length: the files are sparse
		used time.Time
	}
	var files []file
	var total int64
	for _, d := range dirents {
		key, ok := strings.CutSuffix(d.Name(), ".snap")
		if !ok || !d.Type().IsRegular() {
			continue
		}
		info, err := d.Info()
		if err != nil {
			continue
		}
		size := info.Size()
		if sys, ok := info.Sys().(*syscall.Stat_t); ok {
			size = sys.Blocks * 512
		}
		files = append(files, file{key, size, info.ModTime()})
		total += size
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	st.lastTrim = now
	for i, f := range files {
		if e := st.entries[f.key]; e != nil && e.used.After(f.used) {
			files[i].used = e.used
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].used.Before(files[j].used) })
	for _, f := range files {
		reason := ""
		switch {
		case total > st.maxBytes:
			reason = "size"
		case now.Sub(f.used) >= st.maxIdle:
			reason = "idle"
		default:
			continue
		}
		if f.key == keep || live[f.key] || !st.removeLocked(f.key) {
			continue
		}
		total -= f.size
		if st.onDelete != nil {
			st.onDelete(reason)
		}
		st.log.Info("snapshot removed", "key", f.key, "reason", reason, "bytes", f.size, "unused_for", now.Sub(f.used).Round(time.Second))
	}
	if st.onTrim != nil {
		st.onTrim(total)
	}
}

// removeLocked removes key's file and forgets its entry, unless a plan or
// take holds or uses it now. st.mu is held; the entry's lock is only tried
// (lock order: st.mu, then an entry's).
func (st *snapStore) removeLocked(key string) bool {
	if e := st.entries[key]; e != nil {
		if !e.mu.TryLock() {
			return false
		}
		if e.taking {
			e.mu.Unlock()
			return false
		}
		if e.snap != nil {
			e.snap.Close()
		}
		e.gone = true
		delete(st.entries, key)
		e.mu.Unlock()
	}
	err := os.Remove(filepath.Join(st.dir, key+".snap"))
	return err == nil || errors.Is(err, os.ErrNotExist)
}

func (st *snapStore) close() {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, e := range st.entries {
		e.mu.Lock()
		if e.snap != nil {
			e.snap.Close()
			e.snap = nil
		}
		e.mu.Unlock()
	}
}
