package logstore_test

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kilnfaas/kiln/store/logstore"
)

// FuzzLines: whatever a function writes, the stored lines are valid UTF-8
// without control characters (tab aside), each within MaxLineBytes, at
// most MaxLinesPerInvocation of them; and plain short lines come back as
// they were written.
func FuzzLines(f *testing.F) {
	for _, s := range []string{"", "\n", "a\nb\n", "a\r\nb", "\x00\xff\x1b[2J", strings.Repeat("é", 5000), strings.Repeat("\n", 2000), "tab\there"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		lines := logstore.Lines(b)
		if len(b) == 0 && lines != nil {
			t.Fatalf("empty stderr gave %q", lines)
		}
		if len(lines) > logstore.MaxLinesPerInvocation {
			t.Fatalf("%d lines", len(lines))
		}
		for _, l := range lines {
			if len(l) > logstore.MaxLineBytes || !utf8.ValidString(l) {
				t.Fatalf("line of %d bytes, valid UTF-8 %v", len(l), utf8.ValidString(l))
			}
			for _, r := range l {
				if (r < 0x20 && r != '\t') || r == 0x7f {
					t.Fatalf("control character %U kept in %q", r, l)
				}
			}
		}
		plain := utf8.Valid(b) && !bytes.ContainsFunc(b, func(r rune) bool { return (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f || r == '\\' })
		raw := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		short := len(raw) <= logstore.MaxLinesPerInvocation
		for _, l := range raw {
			short = short && len(l) <= logstore.MaxLineBytes
		}
		if len(b) > 0 && plain && short && strings.Join(lines, "\n") != strings.Join(raw, "\n") {
			t.Fatalf("plain output changed: %q became %q", raw, lines)
		}
	})
}
