// Package logstore keeps what functions write to stderr, per function and
// per invocation, for `kiln logs` and GET /system/logs/NAME.
//
// The gateway hands the store one Record per invocation (the stderr the
// node-agent captured during that call, with the invocation id, node and
// outcome). The store splits it into lines and keeps each line as one
// Entry: a log is read, capped and followed line by line, and every line
// carries the invocation it came from. Lines are stored as readable text:
// bytes that are not valid UTF-8, and control characters other than tab,
// become \xNN (so a function cannot send escape sequences to the terminal
// of whoever runs `kiln logs`); a line longer than MaxLineBytes is cut and
// ends with a marker; an invocation that wrote more than
// MaxLinesPerInvocation lines keeps its last ones, after a marker line.
//
// Each function's log is capped: the oldest entries go first. Two
// implementations pass one conformance suite (logstoretest): Bolt, the
// embedded store of `kiln up`, and Redis, a stream per function for
// clusters. Entries of one function are totally ordered by their Cursor,
// which is also the position a reader continues from.
package logstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kilnfaas/kiln/store/registry"
)

// Bounds on what one invocation adds and what a read returns.
const (
	// MaxLineBytes bounds one stored line (after escaping), marker included.
	MaxLineBytes = 8 << 10
	// MaxLinesPerInvocation bounds the entries one invocation adds, so a
	// function printing 64 KiB of newlines cannot flush its own log.
	MaxLinesPerInvocation = 1000
	// DefaultLimit is the number of entries a Query with Limit 0 returns.
	DefaultLimit = 100
	// MaxLimit is the most entries one read returns.
	MaxLimit = 10000
	// maxIDBytes bounds invocation ids, node names and outcomes.
	maxIDBytes = 256
)

// Default caps of one function's log.
const (
	DefaultMaxEntries = 10000
	DefaultMaxBytes   = 16 << 20
)

// Sentinel errors. Wrapped with %w; test with errors.Is.
var (
	// ErrInvalid: a record or query the store refuses (bad function name,
	// missing invocation id, malformed cursor, limit out of range).
	ErrInvalid = errors.New("logstore: invalid request")
	// ErrUnavailable: the store's backing service failed or is closed.
	ErrUnavailable = errors.New("logstore: unavailable")
)

// Limits cap each function's log. Zero fields take the defaults.
type Limits struct {
	// MaxEntries is how many lines a function's log keeps; the Redis
	// store trims approximately (whole stream nodes), keeping at least
	// this many. 0 → DefaultMaxEntries.
	MaxEntries int
	// MaxBytes bounds the stored size of a function's log in the Bolt
	// store. Redis has no byte-based trim; there MaxEntries×MaxLineBytes
	// is the bound. 0 → DefaultMaxBytes.
	MaxBytes int64
}

func (l Limits) withDefaults() Limits {
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	return l
}

// Record is what one invocation wrote to stderr, and where it ran.
type Record struct {
	Function     string
	Version      uint64
	InvocationID string
	// Attempt numbers the runs of an async invocation (1 for the first);
	// 0 for a synchronous call.
	Attempt int
	Node    string
	Outcome string // "ok", "function_error", "crashed", "timeout", ...
	Stderr  []byte
}

// Entry is one stored line.
type Entry struct {
	// Cursor is the entry's position in its function's log: opaque,
	// increasing, and what Query.After takes to read past it.
	Cursor string `json:"cursor"`
	// Time is when the store took the line in (within milliseconds of the
	// invocation's end); never decreasing along a function's log.
	Time         time.Time `json:"time"`
	Function     string    `json:"function"`
	Version      uint64    `json:"version,omitempty"`
	InvocationID string    `json:"invocation_id"`
	Attempt      int       `json:"attempt,omitempty"`
	Node         string    `json:"node,omitempty"`
	Outcome      string    `json:"outcome,omitempty"`
	Line         string    `json:"line"`
}

// Query selects entries of one function.
type Query struct {
	// Since keeps entries whose Time is not before it (zero: all).
	Since time.Time
	// After keeps entries past this cursor ("": from the start). With
	// After set a read returns the oldest Limit matching entries after it,
	// which pages forward without gaps; without it, the newest Limit.
	After string
	// Invocation keeps only that invocation's lines ("": all).
	Invocation string
	// Limit is the most entries returned, 1..MaxLimit; 0 → DefaultLimit.
	Limit int
}

// Page is the answer of a read: matching entries, oldest first, and the
// cursor to continue from. Cursor may lie past the last entry returned
// (entries that did not match are skipped for good); it is "" only while
// the log is empty and no After was given.
type Page struct {
	Entries []Entry
	Cursor  string
}

// Store keeps functions' logs. Implementations are safe for concurrent use.
type Store interface {
	// Append adds one invocation's stderr as lines at the end of its
	// function's log, all or none, and trims the log to its caps. Empty
	// stderr adds nothing.
	Append(ctx context.Context, r Record) error
	// Read returns what q selects now.
	Read(ctx context.Context, function string, q Query) (Page, error)
	// Follow waits until the log holds entries past q.After, then reads
	// like Read with q (which may then match none of them: the Page's
	// cursor still moves past them). It returns ctx's error when ctx ends
	// first.
	Follow(ctx context.Context, function string, q Query) (Page, error)
	// Delete drops a function's whole log; deleting an empty one is no error.
	Delete(ctx context.Context, function string) error
	Close() error
}

// CheckRecord validates r before a store writes it.
func CheckRecord(r Record) error {
	if err := checkFunction(r.Function); err != nil {
		return err
	}
	if r.InvocationID == "" || len(r.InvocationID) > maxIDBytes {
		return fmt.Errorf("%w: an invocation id of 1-%d bytes is required", ErrInvalid, maxIDBytes)
	}
	if len(r.Node) > maxIDBytes || len(r.Outcome) > maxIDBytes {
		return fmt.Errorf("%w: node and outcome are at most %d bytes", ErrInvalid, maxIDBytes)
	}
	if r.Attempt < 0 {
		return fmt.Errorf("%w: negative attempt %d", ErrInvalid, r.Attempt)
	}
	return nil
}

func checkFunction(name string) error {
	if !registry.ValidName(name) {
		return fmt.Errorf("%w: function name %q: 1-63 characters of a-z, 0-9 and '-'", ErrInvalid, name)
	}
	return nil
}

// checkQuery validates q and returns it with its default limit.
func checkQuery(function string, q Query) (Query, error) {
	if err := checkFunction(function); err != nil {
		return q, err
	}
	if q.Limit < 0 || q.Limit > MaxLimit {
		return q, fmt.Errorf("%w: limit %d: want 1-%d", ErrInvalid, q.Limit, MaxLimit)
	}
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	if len(q.Invocation) > maxIDBytes {
		return q, fmt.Errorf("%w: invocation id longer than %d bytes", ErrInvalid, maxIDBytes)
	}
	return q, nil
}

// Lines turns one invocation's stderr into the lines the store keeps: split
// at '\n' (a trailing '\r' dropped, the newline after the last line
// optional), each escaped and bounded by MaxLineBytes, at most
// MaxLinesPerInvocation of them. Empty stderr has no lines.
func Lines(stderr []byte) []string {
	if len(stderr) == 0 {
		return nil
	}
	s := string(stderr)
	s = strings.TrimSuffix(s, "\n")
	raw := strings.Split(s, "\n")
	dropped := 0
	if len(raw) > MaxLinesPerInvocation {
		// The end is where a crash explains itself: keep it.
		dropped = len(raw) - (MaxLinesPerInvocation - 1)
		raw = raw[dropped:]
	}
	out := make([]string, 0, len(raw)+1)
	if dropped > 0 {
		out = append(out, fmt.Sprintf("[kiln: %d earlier lines of this invocation dropped; it may keep %d]", dropped, MaxLinesPerInvocation))
	}
	for _, l := range raw {
		out = append(out, cleanLine(strings.TrimSuffix(l, "\r")))
	}
	return out
}

// cleanLine escapes l and cuts it to MaxLineBytes with a marker.
func cleanLine(l string) string {
	marker := fmt.Sprintf(" [kiln: line truncated, %d bytes in all]", len(l))
	var b strings.Builder
	// cut is the longest prefix of whole pieces that leaves room for the
	// marker, where the line ends if it turns out too long.
	cut := 0
	for i := 0; i < len(l); {
		r, size := utf8.DecodeRuneInString(l[i:])
		piece := l[i : i+size]
		if (r == utf8.RuneError && size <= 1) || (r < 0x20 && r != '\t') || r == 0x7f {
			piece, size = fmt.Sprintf(`\x%02x`, l[i]), 1
		}
		if b.Len()+len(piece) > MaxLineBytes {
			return b.String()[:cut] + marker
		}
		b.WriteString(piece)
		if b.Len()+len(marker) <= MaxLineBytes {
			cut = b.Len()
		}
		i += size
	}
	return b.String()
}
