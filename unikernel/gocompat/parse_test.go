package gocompat

import (
	"fmt"
	"testing"
)

// FuzzParseNowNS feeds arbitrary guest stderr to the one parser of guest
// output here: it must never panic, and a well-formed line among junk must
// be found with its value.
func FuzzParseNowNS(f *testing.F) {
	f.Add([]byte("now_ns 1700000000000000000\n"), int64(5))
	f.Add([]byte("junk\nnow_ns -3\n"), int64(-1))
	f.Add([]byte("now_ns \n"), int64(0))
	f.Add([]byte("now_ns 99999999999999999999999\n"), int64(1<<62))
	f.Fuzz(func(t *testing.T, junk []byte, v int64) {
		parseNowNS(junk)
		line := fmt.Sprintf("now_ns %d\n", v)
		got, ok := parseNowNS([]byte("x\n" + line + string(junk)))
		if !ok || got != v {
			t.Fatalf("parseNowNS of %q: %d %v, want %d", line, got, ok, v)
		}
	})
}
