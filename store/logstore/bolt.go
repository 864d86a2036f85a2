package logstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/kilnfaas/kiln/internal/boltfile"
)

// FileName is the embedded log store's file inside the data directory. It
// is a file of its own, not a bucket of the registry's, so that a busy log
// never waits behind deploys (bbolt has one writer per file) and can be
// deleted to reclaim space without touching what is deployed.
const FileName = "logs.db"

// Layout: a top-level bucket "functions" holds one bucket per function;
// inside, "entries" maps the big-endian sequence number to the entry's
// JSON (without cursor and function), and "meta" holds the log's entry
// count ("n"), stored bytes ("bytes") and the time of its newest entry
// ("time", Unix nanoseconds, so times never decrease). Sequence numbers
// come from the "functions" bucket's own sequence, shared by every
// function and never reused, so a cursor stays meaningful across a
// delete.
var (
	bktFunctions = []byte("functions")
	bktEntries   = []byte("entries")
	bktMeta      = []byte("meta")
	keyCount     = []byte("n")
	keyBytes     = []byte("bytes")
	keyTime      = []byte("time")
)

// Bolt is the embedded Store: one bbolt file, for `kiln up` on one machine.
type Bolt struct {
	db     *bolt.DB
	limits Limits
	now    func() time.Time

	mu      sync.Mutex    // guards changed
	changed chan struct{} // closed and replaced after every append
	closed  chan struct{} // closed by Close: followers give up
	once    sync.Once
}

// BoltOptions configures OpenBolt. Zero fields take defaults.
type BoltOptions struct {
	Limits Limits
	// Now is the store's clock; nil → time.Now. Tests move it.
	Now func() time.Time
}

// OpenBolt opens (creating if needed) the log store in dataDir/logs.db.
// Only one process may hold it open.
func OpenBolt(dataDir string, opts BoltOptions) (*Bolt, error) {
	// Appends are batched (see Append), so a burst of invocations costs
	// one disk flush, not one each.
	db, err := boltfile.Open("logstore", dataDir, FileName, true, bktFunctions)
	if err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Bolt{db: db, limits: opts.Limits.withDefaults(), now: opts.Now,
		changed: make(chan struct{}), closed: make(chan struct{})}, nil
}

// boltEntry is an entry as stored: cursor and function are implied by
// where it is.
type boltEntry struct {
	Time         int64  `json:"t"`
	Version      uint64 `json:"v,omitempty"`
	InvocationID string `json:"i"`
	Attempt      int    `json:"a,omitempty"`
	Node         string `json:"n,omitempty"`
	Outcome      string `json:"o,omitempty"`
	Line         string `json:"l"`
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (s *Bolt) unavailable(err error) error {
	if errors.Is(err, ErrInvalid) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// Append implements Store. Concurrent appends share one transaction
// (bbolt's Batch), so a burst of invocations costs one commit.
func (s *Bolt) Append(ctx context.Context, r Record) error {
	if err := CheckRecord(r); err != nil {
		return err
	}
	lines := Lines(r.Stderr)
	if len(lines) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Batch(func(tx *bolt.Tx) error {
		root := tx.Bucket(bktFunctions)
		fb, err := root.CreateBucketIfNotExists([]byte(r.Function))
		if err != nil {
			return err
		}
		eb, err := fb.CreateBucketIfNotExists(bktEntries)
		if err != nil {
			return err
		}
		mb, err := fb.CreateBucketIfNotExists(bktMeta)
		if err != nil {
			return err
		}
		n, size := getU64(mb, keyCount), getU64(mb, keyBytes)
		t := s.now().UnixNano()
		if last := int64(getU64(mb, keyTime)); t < last {
			t = last
		}
		for _, l := range lines {
			seq, err := root.NextSequence()
			if err != nil {
				return err
			}
			v, err := json.Marshal(boltEntry{Time: t, Version: r.Version, InvocationID: r.InvocationID,
				Attempt: r.Attempt, Node: r.Node, Outcome: r.Outcome, Line: l})
			if err != nil {
				return err
			}
			if err := eb.Put(u64(seq), v); err != nil {
				return err
			}
			n++
			size += uint64(len(v))
		}
		// Trim the oldest entries down to the caps.
		c := eb.Cursor()
		for k, v := c.First(); k != nil && (n > uint64(s.limits.MaxEntries) || size > uint64(s.limits.MaxBytes)); k, v = c.First() {
			size -= uint64(len(v))
			n--
			if err := c.Delete(); err != nil {
				return err
			}
		}
		if err := mb.Put(keyCount, u64(n)); err != nil {
			return err
		}
		if err := mb.Put(keyBytes, u64(size)); err != nil {
			return err
		}
		return mb.Put(keyTime, u64(uint64(t)))
	})
	if err != nil {
		return s.unavailable(err)
	}
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func parseBoltCursor(c string) (uint64, error) {
	if c == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(c, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: cursor %q: use the cursor of an entry this store returned", ErrInvalid, c)
	}
	return v, nil
}

func (s *Bolt) decode(function string, k, v []byte) (Entry, error) {
	var be boltEntry
	if err := json.Unmarshal(v, &be); err != nil {
		return Entry{}, fmt.Errorf("logstore: corrupt entry %x of %s: %w", k, function, err)
	}
	return Entry{
		Cursor: strconv.FormatUint(binary.BigEndian.Uint64(k), 10), Time: time.Unix(0, be.Time).UTC(),
		Function: function, Version: be.Version, InvocationID: be.InvocationID, Attempt: be.Attempt,
		Node: be.Node, Outcome: be.Outcome, Line: be.Line,
	}, nil
}

func (q Query) matches(e Entry) bool {
	return (q.Invocation == "" || e.InvocationID == q.Invocation) && !e.Time.Before(q.Since)
}

// Read implements Store.
func (s *Bolt) Read(ctx context.Context, function string, q Query) (Page, error) {
	q, err := checkQuery(function, q)
	if err != nil {
		return Page{}, err
	}
	after, err := parseBoltCursor(q.After)
	if err != nil {
		return Page{}, err
	}
	if err := ctx.Err(); err != nil {
		return Page{}, err
	}
	page := Page{Cursor: q.After}
	err = s.db.View(func(tx *bolt.Tx) error {
		fb := tx.Bucket(bktFunctions).Bucket([]byte(function))
		if fb == nil {
			return nil
		}
		c := fb.Bucket(bktEntries).Cursor()
		lastK, _ := c.Last()
		if lastK == nil || binary.BigEndian.Uint64(lastK) <= after {
			return nil
		}
		end := strconv.FormatUint(binary.BigEndian.Uint64(lastK), 10)
		if q.After == "" {
			// The newest Limit matches, walking back; times never
			// decrease along the log, so the walk stops at Since.
			for k, v := c.Last(); k != nil; k, v = c.Prev() {
				e, err := s.decode(function, k, v)
				if err != nil {
					return err
				}
				if e.Time.Before(q.Since) {
					break
				}
				if q.matches(e) {
					page.Entries = append(page.Entries, e)
					if len(page.Entries) == q.Limit {
						break
					}
				}
			}
			for i, j := 0, len(page.Entries)-1; i < j; i, j = i+1, j-1 {
				page.Entries[i], page.Entries[j] = page.Entries[j], page.Entries[i]
			}
			page.Cursor = end
			return nil
		}
		page.Cursor = end
		for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
			e, err := s.decode(function, k, v)
			if err != nil {
				return err
			}
			if q.matches(e) {
				page.Entries = append(page.Entries, e)
				if len(page.Entries) == q.Limit {
					page.Cursor = e.Cursor
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		return Page{}, s.unavailable(err)
	}
	return page, nil
}

// Follow implements Store. Only this process writes the file (bbolt locks
// it), so a wake-up on every local append sees every new entry.
func (s *Bolt) Follow(ctx context.Context, function string, q Query) (Page, error) {
	if _, err := checkQuery(function, q); err != nil {
		return Page{}, err
	}
	after, err := parseBoltCursor(q.After)
	if err != nil {
		return Page{}, err
	}
	for {
		// Take the channel before looking, so an append in between wakes us.
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		var newer bool
		err := s.db.View(func(tx *bolt.Tx) error {
			if fb := tx.Bucket(bktFunctions).Bucket([]byte(function)); fb != nil {
				k, _ := fb.Bucket(bktEntries).Cursor().Last()
				newer = k != nil && binary.BigEndian.Uint64(k) > after
			}
			return nil
		})
		if err != nil {
			return Page{}, s.unavailable(err)
		}
		if newer {
			if q.After == "" {
				// Read without After means "the newest"; from the start is what follows asks.
				q.After = "0"
			}
			return s.Read(ctx, function, q)
		}
		select {
		case <-changed:
		case <-s.closed:
			return Page{}, fmt.Errorf("%w: the log store was closed", ErrUnavailable)
		case <-ctx.Done():
			return Page{}, ctx.Err()
		}
	}
}

// Delete implements Store.
func (s *Bolt) Delete(ctx context.Context, function string) error {
	if err := checkFunction(function); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		err := tx.Bucket(bktFunctions).DeleteBucket([]byte(function))
		if errors.Is(err, bolterrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return s.unavailable(err)
	}
	return nil
}

// Close implements Store. Followers waiting for new entries return
// ErrUnavailable, so a stream being followed ends rather than hangs.
func (s *Bolt) Close() error {
	s.once.Do(func() { close(s.closed) })
	return s.db.Close()
}

var _ Store = (*Bolt)(nil)
