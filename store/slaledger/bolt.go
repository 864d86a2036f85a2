package slaledger

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kilnfaas/kiln/internal/boltfile"
)

// FileName is the ledger's file inside the data directory.
const FileName = "sla.db"

// Layout of the bbolt file: under "minutes", one bucket per function that
// maps the big-endian Unix minute to five big-endian uint64 counters
// (invocations, good, errors, restores, boots). Keys sort by time, so a
// range is one cursor walk and pruning deletes from the front.
var bktMinutes = []byte("minutes")

const countsLen = 5 * 8

// Bolt is the embedded Store: its own file beside the registry's, so the
// ledger's frequent small writes never hold the registry's lock.
type Bolt struct {
	db  *bolt.DB
	now func() time.Time
}

// OpenBolt opens (creating if needed) the ledger in dataDir/sla.db. Only
// one process may hold it open: a second waits up to a second and fails.
func OpenBolt(dataDir string) (*Bolt, error) {
	return openBolt(dataDir, time.Now)
}

// OpenBoltClock is OpenBolt with the clock that decides what is past
// Retention: tests age entries without waiting a day.
func OpenBoltClock(dataDir string, now func() time.Time) (*Bolt, error) {
	return openBolt(dataDir, now)
}

func openBolt(dataDir string, now func() time.Time) (*Bolt, error) {
	db, err := boltfile.Open("slaledger", dataDir, FileName, false, bktMinutes)
	if err != nil {
		return nil, err
	}
	return &Bolt{db: db, now: now}, nil
}

func minuteKeyBytes(t time.Time) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(t.Unix()/60))
	return b[:]
}

func encodeCounts(c Counts) []byte {
	b := make([]byte, countsLen)
	for i, v := range []int64{c.Invocations, c.Good, c.Errors, c.Restores, c.Boots} {
		binary.BigEndian.PutUint64(b[i*8:], uint64(v))
	}
	return b
}

func decodeCounts(b []byte) (Counts, error) {
	if len(b) != countsLen {
		return Counts{}, fmt.Errorf("slaledger: a stored minute has %d bytes, want %d", len(b), countsLen)
	}
	v := func(i int) int64 { return int64(binary.BigEndian.Uint64(b[i*8:])) }
	return Counts{Invocations: v(0), Good: v(1), Errors: v(2), Restores: v(3), Boots: v(4)}, nil
}

// Add implements Store: one transaction for the whole batch, which also
// drops the batch's functions' minutes older than Retention.
func (s *Bolt) Add(ctx context.Context, entries []Entry) error {
	for _, e := range entries {
		if e.Function == "" {
			return fmt.Errorf("%w: an entry without a function", ErrInvalid)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cutoff := retainedFrom(s.now())
	return s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bktMinutes)
		pruned := map[string]bool{}
		for _, e := range entries {
			if e.Minute.Before(cutoff) {
				continue
			}
			b, err := root.CreateBucketIfNotExists([]byte(e.Function))
			if err != nil {
				return err
			}
			if !pruned[e.Function] {
				pruned[e.Function] = true
				if err := prune(b, cutoff); err != nil {
					return err
				}
			}
			k := minuteKeyBytes(e.Minute)
			c := e.Counts
			if old := b.Get(k); old != nil {
				prev, err := decodeCounts(old)
				if err != nil {
					return err
				}
				c.Add(prev)
			}
			if err := b.Put(k, encodeCounts(c)); err != nil {
				return err
			}
		}
		return nil
	})
}

// prune deletes b's minutes that started before cutoff.
func prune(b *bolt.Bucket, cutoff time.Time) error {
	first := minuteKeyBytes(cutoff)
	c := b.Cursor()
	for k, _ := c.First(); k != nil && string(k) < string(first); k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Sum implements Store.
func (s *Bolt) Sum(ctx context.Context, fn string, from, to time.Time) (Counts, error) {
	if fn == "" || to.Before(from) {
		return Counts{}, fmt.Errorf("%w: function %q, range %v..%v", ErrInvalid, fn, from, to)
	}
	if err := ctx.Err(); err != nil {
		return Counts{}, err
	}
	var sum Counts
	if cutoff := retainedFrom(s.now()); from.Before(cutoff) {
		from = cutoff
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktMinutes).Bucket([]byte(fn))
		if b == nil {
			return nil
		}
		lo := minuteKeyBytes(from.Add(time.Minute - 1)) // the first whole minute at or after from
		hi := minuteKeyBytes(to.Add(time.Minute - 1))   // minutes before this one end by to
		c := b.Cursor()
		for k, v := c.Seek(lo); k != nil && string(k) < string(hi); k, v = c.Next() {
			cs, err := decodeCounts(v)
			if err != nil {
				return err
			}
			sum.Add(cs)
		}
		return nil
	})
	return sum, err
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }
