package nodeagent

import (
	"bytes"
	"testing"
)

// FuzzRing: the stderr ring, fed writes of any sizes (what a guest's
// output flood chooses), holds exactly the last capacity bytes ever
// written, never more (its memory stays within twice the capacity), counts
// every byte, and its since and tail reads agree with a model that keeps
// everything: since(mark) is what was written after mark and is still
// held, tail(n, mark) its last n lines.
func FuzzRing(f *testing.F) {
	f.Add(uint16(16), []byte{10, 10, 4}, []byte("aaaa\nbbbb\ncccc\ndddd\neeee"), uint8(1), uint8(2))
	f.Add(uint16(16), []byte{40}, []byte("x\n"), uint8(0), uint8(20))
	f.Add(uint16(1), []byte{0, 1, 2, 3}, []byte("\n\n\n"), uint8(2), uint8(1))
	f.Add(uint16(0), []byte{5}, []byte("abc\n"), uint8(0), uint8(1))
	f.Add(uint16(64), []byte{63, 1, 64, 65, 200, 0, 7}, []byte("line one\nline two\nthree"), uint8(3), uint8(20))
	f.Add(uint16(StderrRing%1000), []byte{255, 255, 255}, []byte("a long line without an end"), uint8(1), uint8(20))
	f.Fuzz(func(t *testing.T, capacity uint16, sizes, data []byte, markAt, lines uint8) {
		if len(data) == 0 {
			data = []byte("x\n")
		}
		c := int(capacity % 1024)
		r := newRing(c)
		var all []byte // the model: everything written
		var mark int64
		pos := 0
		for i, s := range sizes {
			if i == int(markAt) {
				mark = r.written()
			}
			// Sizes up to 3 KiB from one byte: past the capacity often.
			p := make([]byte, int(s)*12)
			for j := range p {
				p[j] = data[(pos+j)%len(data)]
			}
			pos += len(p)
			if n, err := r.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write of %d bytes = %d, %v", len(p), n, err)
			}
			all = append(all, p...)
			held := all[len(all)-min(c, len(all)):]
			switch {
			case len(r.buf) > c || cap(r.buf) > 2*c+64:
				t.Fatalf("capacity %d: ring holds %d bytes in %d", c, len(r.buf), cap(r.buf))
			case !bytes.Equal(r.buf, held):
				t.Fatalf("capacity %d after %d bytes: ring holds %q, want the last %d bytes %q", c, len(all), r.buf, len(held), held)
			case r.written() != int64(len(all)):
				t.Fatalf("written() = %d, %d bytes were", r.written(), len(all))
			}
		}
		held := all[len(all)-min(c, len(all)):]
		fresh := all[mark:]
		if len(fresh) > len(held) {
			fresh = held
		}
		if got := r.since(mark); !bytes.Equal(got, fresh) {
			t.Fatalf("since(%d) = %q, want %q", mark, got, fresh)
		}
		n := int(lines % 32)
		if got, want := r.tail(n, mark), modelLastLines(fresh, n); !bytes.Equal(got, want) {
			t.Fatalf("tail(%d, %d) of %q = %q, want %q", n, mark, fresh, got, want)
		}
	})
}

// modelLastLines is the last n lines of b, counted the plain way: split
// at newlines, a final newline ending the last line rather than starting
// an empty one.
func modelLastLines(b []byte, n int) []byte {
	body := bytes.TrimSuffix(b, []byte("\n"))
	ls := bytes.Split(body, []byte("\n"))
	if n >= len(ls) {
		return b
	}
	if n <= 0 {
		return nil
	}
	keep := bytes.Join(ls[len(ls)-n:], []byte("\n"))
	return b[len(b)-len(keep)-(len(b)-len(body)):]
}
