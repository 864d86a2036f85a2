// Package logstoretest is the conformance suite every logstore.Store passes,
// so the embedded store and the Redis store behave alike, and the helper
// that starts a real redis-server for tests of the Redis store.
package logstoretest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/store/logstore"
)

// Options describe what a store may do differently within the contract.
type Options struct {
	// CapSlack is how many entries beyond Limits.MaxEntries a store may
	// keep (Redis trims whole stream nodes: MAXLEN ~).
	CapSlack int
}

// NewStore returns an empty store with the given caps; the suite closes it.
type NewStore func(t *testing.T, limits logstore.Limits) logstore.Store

// Run runs the suite.
func Run(t *testing.T, newStore NewStore, opts Options) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore NewStore, opts Options)
	}{
		{"AppendRead", testAppendRead},
		{"EmptyStderrWritesNothing", testEmpty},
		{"Ordering", testOrdering},
		{"LimitAndPaging", testLimitAndPaging},
		{"InvocationFilter", testInvocationFilter},
		{"Since", testSince},
		{"Capped", testCapped},
		{"Follow", testFollow},
		{"FollowEnds", testFollowEnds},
		{"CloseEndsFollow", testCloseEndsFollow},
		{"Delete", testDelete},
		{"HostileLines", testHostile},
		{"BadInputChangesNothing", testBadInput},
		{"ConcurrentAppendsStayWhole", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore, opts) })
	}
}

func open(t *testing.T, newStore NewStore, l logstore.Limits) logstore.Store {
	t.Helper()
	s := newStore(t, l)
	t.Cleanup(func() { s.Close() })
	return s
}

func rec(fn, id string, stderr string) logstore.Record {
	return logstore.Record{Function: fn, Version: 3, InvocationID: id, Node: "node-a", Outcome: "ok", Stderr: []byte(stderr)}
}

func mustAppend(t *testing.T, s logstore.Store, r logstore.Record) {
	t.Helper()
	if err := s.Append(context.Background(), r); err != nil {
		t.Fatalf("Append %s: %v", r.InvocationID, err)
	}
}

func read(t *testing.T, s logstore.Store, fn string, q logstore.Query) logstore.Page {
	t.Helper()
	p, err := s.Read(context.Background(), fn, q)
	if err != nil {
		t.Fatalf("Read %s %+v: %v", fn, q, err)
	}
	return p
}

// lines renders entries as "invocation:line" for comparison.
func lines(es []logstore.Entry) string {
	var b []string
	for _, e := range es {
		b = append(b, e.InvocationID+":"+e.Line)
	}
	return strings.Join(b, "|")
}

func testAppendRead(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	before := time.Now().Add(-time.Second)
	r := rec("fn", "inv-1", "first\nsecond\r\n\nfourth")
	r.Attempt = 2
	mustAppend(t, s, r)
	p := read(t, s, "fn", logstore.Query{})
	if got, want := lines(p.Entries), "inv-1:first|inv-1:second|inv-1:|inv-1:fourth"; got != want {
		t.Fatalf("read %q, want %q", got, want)
	}
	for i, e := range p.Entries {
		if e.Function != "fn" || e.Version != 3 || e.Node != "node-a" || e.Outcome != "ok" || e.Attempt != 2 {
			t.Errorf("entry %d lost its record's fields: %+v", i, e)
		}
		if e.Time.Before(before) || e.Time.After(time.Now().Add(time.Second)) {
			t.Errorf("entry %d has time %v, not about now", i, e.Time)
		}
		if e.Cursor == "" {
			t.Errorf("entry %d has no cursor", i)
		}
	}
	if p.Cursor != p.Entries[3].Cursor {
		t.Errorf("page cursor %q, want the newest entry's %q", p.Cursor, p.Entries[3].Cursor)
	}
	if got := read(t, s, "other", logstore.Query{}); len(got.Entries) != 0 || got.Cursor != "" {
		t.Errorf("another function's log is not empty: %+v", got)
	}
}

func testEmpty(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	mustAppend(t, s, rec("fn", "inv-1", ""))
	if p := read(t, s, "fn", logstore.Query{}); len(p.Entries) != 0 || p.Cursor != "" {
		t.Fatalf("empty stderr stored something: %+v", p)
	}
	mustAppend(t, s, rec("fn", "inv-2", "\n"))
	if p := read(t, s, "fn", logstore.Query{}); lines(p.Entries) != "inv-2:" {
		t.Fatalf("one empty line: got %q", lines(p.Entries))
	}
}

func testOrdering(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	mustAppend(t, s, rec("fn", "a", "a1\na2\n"))
	mustAppend(t, s, rec("fn", "b", "b1\nb2\n"))
	mustAppend(t, s, rec("other", "x", "x1\n"))
	mustAppend(t, s, rec("fn", "c", "c1\n"))
	p := read(t, s, "fn", logstore.Query{})
	if got, want := lines(p.Entries), "a:a1|a:a2|b:b1|b:b2|c:c1"; got != want {
		t.Fatalf("read %q, want %q", got, want)
	}
	for i := 1; i < len(p.Entries); i++ {
		if p.Entries[i].Time.Before(p.Entries[i-1].Time) {
			t.Errorf("entry %d is older than entry %d", i, i-1)
		}
	}
	// Cursors order the entries: reading after each one yields the rest.
	for i, e := range p.Entries {
		rest := read(t, s, "fn", logstore.Query{After: e.Cursor})
		if got, want := lines(rest.Entries), lines(p.Entries[i+1:]); got != want {
			t.Errorf("after entry %d: %q, want %q", i, got, want)
		}
	}
}

func testLimitAndPaging(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	var want []string
	for i := range 7 {
		id := fmt.Sprintf("i%d", i)
		mustAppend(t, s, rec("fn", id, fmt.Sprintf("l%d", i)))
		want = append(want, id+":"+fmt.Sprintf("l%d", i))
	}
	if got := lines(read(t, s, "fn", logstore.Query{Limit: 3}).Entries); got != strings.Join(want[4:], "|") {
		t.Errorf("the newest 3: %q, want %q", got, strings.Join(want[4:], "|"))
	}
	// Forward pages of 2 from the start see everything once.
	var got []string
	cursor := "0"
	for range 10 {
		p := read(t, s, "fn", logstore.Query{After: cursor, Limit: 2})
		for _, e := range p.Entries {
			got = append(got, e.InvocationID+":"+e.Line)
		}
		if p.Cursor == cursor {
			break
		}
		cursor = p.Cursor
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("paging: %q, want %q", got, want)
	}
	// Past the end: nothing, and the cursor stays.
	if p := read(t, s, "fn", logstore.Query{After: cursor}); len(p.Entries) != 0 || p.Cursor != cursor {
		t.Errorf("after the end: %+v", p)
	}
}

func testInvocationFilter(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	mustAppend(t, s, rec("fn", "a", "a1\na2"))
	mustAppend(t, s, rec("fn", "b", "b1"))
	mustAppend(t, s, rec("fn", "a", "a3"))
	p := read(t, s, "fn", logstore.Query{Invocation: "a"})
	if got := lines(p.Entries); got != "a:a1|a:a2|a:a3" {
		t.Errorf("invocation a: %q", got)
	}
	if p := read(t, s, "fn", logstore.Query{Invocation: "nope"}); len(p.Entries) != 0 || p.Cursor == "" {
		t.Errorf("an unknown invocation: want no entries and a cursor at the end, got %+v", p)
	}
}

func testSince(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	mustAppend(t, s, rec("fn", "old", "o"))
	time.Sleep(50 * time.Millisecond)
	mark := time.Now()
	time.Sleep(50 * time.Millisecond)
	mustAppend(t, s, rec("fn", "new", "n1\nn2"))
	if got := lines(read(t, s, "fn", logstore.Query{Since: mark}).Entries); got != "new:n1|new:n2" {
		t.Errorf("since the mark: %q", got)
	}
	p := read(t, s, "fn", logstore.Query{})
	if got := lines(read(t, s, "fn", logstore.Query{Since: mark, After: p.Entries[1].Cursor}).Entries); got != "new:n2" {
		t.Errorf("since and after: %q", got)
	}
	if got := lines(read(t, s, "fn", logstore.Query{Since: time.Now().Add(time.Hour)}).Entries); got != "" {
		t.Errorf("since the future: %q", got)
	}
}

func testCapped(t *testing.T, newStore NewStore, opts Options) {
	const max = 50
	s := open(t, newStore, logstore.Limits{MaxEntries: max})
	for i := range 100 {
		var b strings.Builder
		for j := range 10 {
			fmt.Fprintf(&b, "inv %d line %d\n", i, j)
		}
		mustAppend(t, s, rec("fn", fmt.Sprintf("inv-%d", i), b.String()))
	}
	p := read(t, s, "fn", logstore.Query{Limit: logstore.MaxLimit})
	if n := len(p.Entries); n < max || n > max+opts.CapSlack {
		t.Fatalf("%d entries kept, want %d..%d", n, max, max+opts.CapSlack)
	}
	if last := p.Entries[len(p.Entries)-1]; last.Line != "inv 99 line 9" {
		t.Errorf("the newest line is %q, want the last one written", last.Line)
	}
	if first := p.Entries[0]; first.InvocationID == "inv-0" {
		t.Errorf("the oldest invocation survived capping: %+v", first)
	}
	// What is kept is the newest, in order, without holes.
	for i := 1; i < len(p.Entries); i++ {
		var a, b, c, d int
		fmt.Sscanf(p.Entries[i-1].Line, "inv %d line %d", &a, &b)
		fmt.Sscanf(p.Entries[i].Line, "inv %d line %d", &c, &d)
		if a*10+b+1 != c*10+d {
			t.Fatalf("hole between %q and %q", p.Entries[i-1].Line, p.Entries[i].Line)
		}
	}
	if got := read(t, s, "fn", logstore.Query{Invocation: "inv-0"}); len(got.Entries) != 0 {
		t.Errorf("capped lines still found by invocation: %d", len(got.Entries))
	}
}

func follow(s logstore.Store, fn string, q logstore.Query) (chan logstore.Page, chan error, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	pages, errs := make(chan logstore.Page, 1), make(chan error, 1)
	go func() {
		p, err := s.Follow(ctx, fn, q)
		if err != nil {
			errs <- err
			return
		}
		pages <- p
	}()
	return pages, errs, cancel
}

func testFollow(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	// An empty log: the first line written is seen.
	pages, errs, cancel := follow(s, "fn", logstore.Query{})
	defer cancel()
	time.Sleep(100 * time.Millisecond)
	mustAppend(t, s, rec("other", "x", "not this function"))
	mustAppend(t, s, rec("fn", "a", "a1\na2"))
	var cursor string
	select {
	case p := <-pages:
		if got := lines(p.Entries); got != "a:a1|a:a2" {
			t.Fatalf("follow saw %q", got)
		}
		cursor = p.Cursor
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(15 * time.Second):
		t.Fatal("follow saw nothing in 15s")
	}

	// From a cursor: only what comes after it.
	mustAppend(t, s, rec("fn", "b", "b1"))
	p := read(t, s, "fn", logstore.Query{After: cursor})
	if lines(p.Entries) != "b:b1" {
		t.Fatalf("after the followed page: %q", lines(p.Entries))
	}
	pages, errs, cancel2 := follow(s, "fn", logstore.Query{After: p.Cursor})
	defer cancel2()
	select {
	case p := <-pages:
		t.Fatalf("follow returned before anything new: %+v", p)
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(200 * time.Millisecond):
	}
	mustAppend(t, s, rec("fn", "c", "c1"))
	select {
	case p := <-pages:
		if got := lines(p.Entries); got != "c:c1" {
			t.Fatalf("follow saw %q, want c:c1", got)
		}
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(15 * time.Second):
		t.Fatal("follow saw nothing in 15s")
	}

	// A filter that matches nothing new still moves the cursor on.
	last := read(t, s, "fn", logstore.Query{}).Cursor
	pages, errs, cancel3 := follow(s, "fn", logstore.Query{After: last, Invocation: "wanted"})
	defer cancel3()
	mustAppend(t, s, rec("fn", "unwanted", "u1"))
	select {
	case p := <-pages:
		if len(p.Entries) != 0 || p.Cursor == last {
			t.Fatalf("filtered follow: %+v (started at %q)", p, last)
		}
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(15 * time.Second):
		t.Fatal("follow did not return in 15s")
	}
}

func testFollowEnds(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Follow(ctx, "fn", logstore.Query{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Follow on an idle log returned %v, want the context's error", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Follow took %v to notice its context ended", d)
	}
}

// Closing the store ends a follower's wait with an error: a followed
// stream ends when its gateway stops, instead of hanging.
func testCloseEndsFollow(t *testing.T, newStore NewStore, _ Options) {
	s := newStore(t, logstore.Limits{})
	pages, errs, cancel := follow(s, "fn", logstore.Query{})
	defer cancel()
	time.Sleep(200 * time.Millisecond)
	s.Close()
	select {
	case p := <-pages:
		t.Fatalf("Follow on a closed store returned entries: %+v", p)
	case err := <-errs:
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Follow waited out its context after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow still waiting 10 s after Close")
	}
}

func testDelete(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	ctx := context.Background()
	mustAppend(t, s, rec("a", "1", "a-line"))
	mustAppend(t, s, rec("b", "2", "b-line"))
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if p := read(t, s, "a", logstore.Query{}); len(p.Entries) != 0 {
		t.Errorf("deleted log still has %q", lines(p.Entries))
	}
	if got := lines(read(t, s, "b", logstore.Query{}).Entries); got != "2:b-line" {
		t.Errorf("deleting a touched b: %q", got)
	}
	if err := s.Delete(ctx, "never-written"); err != nil {
		t.Errorf("deleting an empty log: %v", err)
	}
	mustAppend(t, s, rec("a", "3", "again"))
	if got := lines(read(t, s, "a", logstore.Query{}).Entries); got != "3:again" {
		t.Errorf("after delete and append: %q", got)
	}
}

func testHostile(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	huge := strings.Repeat("x", 200<<10)
	binary := "bin:\x00\x01\xff\xfe\x1b[31mred\x7f\tend"
	utf := "héllo ✓ \uFFFD"
	mustAppend(t, s, rec("fn", "h", huge+"\n"+binary+"\n"+utf+"\n"))
	p := read(t, s, "fn", logstore.Query{})
	if len(p.Entries) != 3 {
		t.Fatalf("%d entries, want 3", len(p.Entries))
	}
	long := p.Entries[0].Line
	if len(long) > logstore.MaxLineBytes || !strings.HasPrefix(long, "xxxx") ||
		!strings.HasSuffix(long, fmt.Sprintf("[kiln: line truncated, %d bytes in all]", len(huge))) {
		t.Errorf("huge line kept as %d bytes ending %q", len(long), long[max(0, len(long)-60):])
	}
	if got, want := p.Entries[1].Line, `bin:\x00\x01\xff\xfe\x1b[31mred\x7f`+"\tend"; got != want {
		t.Errorf("binary line: %q, want %q", got, want)
	}
	if got := p.Entries[2].Line; got != utf {
		t.Errorf("UTF-8 line: %q, want %q", got, utf)
	}

	// A flood of lines keeps the invocation's last ones behind a marker.
	var b strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&b, "%d\n", i)
	}
	mustAppend(t, s, rec("flood", "f", b.String()))
	p = read(t, s, "flood", logstore.Query{Limit: logstore.MaxLimit})
	if len(p.Entries) != logstore.MaxLinesPerInvocation {
		t.Fatalf("flood kept %d lines, want %d", len(p.Entries), logstore.MaxLinesPerInvocation)
	}
	if !strings.Contains(p.Entries[0].Line, "4001 earlier lines") || p.Entries[1].Line != "4001" || p.Entries[len(p.Entries)-1].Line != "4999" {
		t.Errorf("flood: first %q, second %q, last %q", p.Entries[0].Line, p.Entries[1].Line, p.Entries[len(p.Entries)-1].Line)
	}
}

func testBadInput(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	ctx := context.Background()
	mustAppend(t, s, rec("fn", "ok", "kept"))
	bad := []logstore.Record{
		rec("Bad Name", "x", "line"),
		rec("", "x", "line"),
		rec("fn/../x", "x", "line"),
		rec("fn", "", "line"),
		rec("fn", strings.Repeat("i", 300), "line"),
		{Function: "fn", InvocationID: "x", Attempt: -1, Stderr: []byte("line")},
	}
	for _, r := range bad {
		if err := s.Append(ctx, r); !errors.Is(err, logstore.ErrInvalid) {
			t.Errorf("Append(%q, %q): %v, want ErrInvalid", r.Function, r.InvocationID, err)
		}
	}
	if got := lines(read(t, s, "fn", logstore.Query{}).Entries); got != "ok:kept" {
		t.Errorf("bad appends changed the log: %q", got)
	}
	for _, q := range []logstore.Query{{Limit: -1}, {Limit: logstore.MaxLimit + 1}, {After: "not-a-cursor"}, {After: "1-2-3"}} {
		if _, err := s.Read(ctx, "fn", q); !errors.Is(err, logstore.ErrInvalid) {
			t.Errorf("Read %+v: %v, want ErrInvalid", q, err)
		}
		if _, err := s.Follow(ctx, "fn", q); !errors.Is(err, logstore.ErrInvalid) {
			t.Errorf("Follow %+v: %v, want ErrInvalid", q, err)
		}
	}
	if _, err := s.Read(ctx, "NOPE", logstore.Query{}); !errors.Is(err, logstore.ErrInvalid) {
		t.Errorf("Read of a bad name: %v", err)
	}
	if err := s.Delete(ctx, "NOPE"); !errors.Is(err, logstore.ErrInvalid) {
		t.Errorf("Delete of a bad name: %v", err)
	}
}

func testConcurrent(t *testing.T, newStore NewStore, _ Options) {
	s := open(t, newStore, logstore.Limits{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := s.Append(context.Background(), rec("fn", id, id+" one\n"+id+" two\n"+id+" three\n")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	p := read(t, s, "fn", logstore.Query{Limit: logstore.MaxLimit})
	if len(p.Entries) != 8*20*3 {
		t.Fatalf("%d entries, want %d", len(p.Entries), 8*20*3)
	}
	for i := 0; i < len(p.Entries); i += 3 {
		a, b, c := p.Entries[i], p.Entries[i+1], p.Entries[i+2]
		id := a.InvocationID
		if a.Line != id+" one" || b.Line != id+" two" || c.Line != id+" three" {
			t.Fatalf("an invocation's lines were interleaved at %d: %q %q %q", i, a.Line, b.Line, c.Line)
		}
	}
}
