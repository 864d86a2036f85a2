package logstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/logstore/logstoretest"
)

func TestBoltConformance(t *testing.T) {
	logstoretest.Run(t, func(t *testing.T, l logstore.Limits) logstore.Store {
		s, err := logstore.OpenBolt(t.TempDir(), logstore.BoltOptions{Limits: l})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, logstoretest.Options{})
}

// The byte cap holds however few entries it takes, oldest first.
func TestBoltByteCap(t *testing.T) {
	s, err := logstore.OpenBolt(t.TempDir(), logstore.BoltOptions{Limits: logstore.Limits{MaxBytes: 16 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	line := strings.Repeat("y", 1000)
	for i := range 100 {
		if err := s.Append(context.Background(), logstore.Record{Function: "fn", InvocationID: fmt.Sprint(i), Stderr: []byte(line)}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.Read(context.Background(), "fn", logstore.Query{Limit: logstore.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(p.Entries); n < 10 || n > 16 {
		t.Fatalf("%d entries of ~1 KiB kept under a 16 KiB cap", n)
	}
	if p.Entries[len(p.Entries)-1].InvocationID != "99" {
		t.Errorf("the newest entry is %s", p.Entries[len(p.Entries)-1].InvocationID)
	}
}

// Entry times never go back, even when the clock does, so Since stays a
// clean cut of the log.
func TestBoltClockStepsBack(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s, err := logstore.OpenBolt(t.TempDir(), logstore.BoltOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	s.Append(ctx, logstore.Record{Function: "fn", InvocationID: "a", Stderr: []byte("a")})
	now = now.Add(-time.Hour)
	s.Append(ctx, logstore.Record{Function: "fn", InvocationID: "b", Stderr: []byte("b")})
	p, _ := s.Read(ctx, "fn", logstore.Query{})
	if len(p.Entries) != 2 || p.Entries[1].Time.Before(p.Entries[0].Time) {
		t.Fatalf("entries %+v", p.Entries)
	}
	p, _ = s.Read(ctx, "fn", logstore.Query{Since: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)})
	if len(p.Entries) != 2 {
		t.Errorf("since the first entry's time: %d entries, want both", len(p.Entries))
	}
}

// The file survives a restart; a second opener is refused clearly.
func TestBoltReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := logstore.OpenBolt(dir, logstore.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Append(context.Background(), logstore.Record{Function: "fn", InvocationID: "a", Stderr: []byte("kept")})
	if _, err := logstore.OpenBolt(dir, logstore.BoltOptions{}); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Errorf("second open: %v", err)
	}
	s.Close()
	s, err = logstore.OpenBolt(dir, logstore.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, _ := s.Read(context.Background(), "fn", logstore.Query{})
	if len(p.Entries) != 1 || p.Entries[0].Line != "kept" {
		t.Fatalf("after reopen: %+v", p.Entries)
	}
}
