package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/kilnfaas/kiln/unikernel/abi"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// snapStore is the node's snapshot store: one file per function shape,
// named by a digest of everything that shaped the boot (image, memory size,
// kernel build, args, env, hostname, ABI), so that a changed kernel or
// setting never finds a stale snapshot — it finds none and takes a new one.
// The files are verified once when opened (vmm.OpenSnapshot); an opened
// Snapshot then serves every restore of that shape.
type snapStore struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*snapEntry
}

// snapEntry is one shape's snapshot: opened, being taken, or not possible.
type snapEntry struct {
	mu     sync.Mutex // held while opening (verifying) the file
	path   string
	snap   *vmm.Snapshot
	taking bool   // a boot is writing it now
	never  string // why this shape cannot be snapshotted ("" if it can)
}

func newSnapStore(dir string, log *slog.Logger) (*snapStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nodeagent: snapshot store: %w", err)
	}
	return &snapStore{dir: dir, log: log, entries: map[string]*snapEntry{}}, nil
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

func (st *snapStore) entry(key string) *snapEntry {
	st.mu.Lock()
	defer st.mu.Unlock()
	e := st.entries[key]
	if e == nil {
		e = &snapEntry{path: filepath.Join(st.dir, key+".snap")}
		st.entries[key] = e
	}
	return e
}

// snapPlan is how a new instance of one shape starts.
type snapPlan struct {
	restore *vmm.Snapshot // restore this
	take    string        // or boot and write a snapshot here ("": plain boot)
	key     string
	corrupt error // a snapshot file was found unusable and removed
}

// plan decides between a restore and a boot for cfg. Only one boot at a time
// takes a shape's snapshot; concurrent cold starts boot plainly meanwhile.
func (st *snapStore) plan(key string, cfg *vmm.Config) snapPlan {
	e := st.entry(key)
	e.mu.Lock()
	defer e.mu.Unlock()
	p := snapPlan{key: key}
	switch {
	case e.snap != nil:
		p.restore = e.snap
		return p
	case e.never != "" || e.taking:
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
// why, when not empty, says the shape must never be snapshotted.
func (st *snapStore) taken(key string, err error, why string) {
	e := st.entry(key)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.taking = false
	switch {
	case why != "":
		e.never = why
		os.Remove(e.path)
		st.log.Info("function not snapshotted", "path", e.path, "why", why)
	case err != nil:
		st.log.Warn("taking a snapshot failed; the next cold start tries again", "path", e.path, "err", err)
	}
}

// abandon ends a take whose boot never reached its first input wait.
func (st *snapStore) abandon(key string) {
	e := st.entry(key)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.taking = false
}

// drop forgets key's snapshot after a restore from it failed, so that the
// next cold start verifies the file again (and rebuilds it if it is bad).
func (st *snapStore) drop(key string) {
	e := st.entry(key)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.snap != nil {
		e.snap.Close()
		e.snap = nil
	}
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
