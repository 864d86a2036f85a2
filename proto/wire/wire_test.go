package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The example of docs/WIRE.md, byte for byte.
func TestSpecExample(t *testing.T) {
	var buf bytes.Buffer
	err := WriteRequest(&buf, &Request{ID: 7, Method: "POST", Path: "/", Query: "x=1", Body: []byte("world")})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{
		0x4b, 0x4c, 0x4e, 0x31, 0x01, 0x00, 0x00, 0x00, 0x07, 0, 0, 0, 0, 0, 0, 0,
		0x23, 0, 0, 0, 0x05, 0, 0, 0}, ":method: POST\n:path: /\n:query: x=1\nworld"...)
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("got\n% x\nwant\n% x", buf.Bytes(), want)
	}

	buf.Reset()
	h := http.Header{}
	h.Set("Content-Type", "text/plain")
	if err := WriteResponse(&buf, &Response{ID: 7, Status: 200, Header: h, Body: []byte("hello, world")}); err != nil {
		t.Fatal(err)
	}
	meta := ":status: 200\ncontent-type: text/plain\n"
	b := buf.Bytes()
	if b[4] != TypeResponse || binary.LittleEndian.Uint64(b[8:]) != 7 ||
		string(b[HeaderSize:HeaderSize+len(meta)]) != meta || string(b[HeaderSize+len(meta):]) != "hello, world" {
		t.Fatalf("response frame % x", b)
	}
}

func TestRoundTrip(t *testing.T) {
	h := http.Header{}
	h.Add("X-Multi", "one")
	h.Add("X-Multi", "two")
	h.Add("Content-Type", "application/json; charset=utf-8")
	h.Add("X-Empty", "")
	h.Add("X-Colon", "a: b: c")
	deadline := time.UnixMilli(1767225600123)
	reqs := []*Request{
		{ID: 1, Method: "GET", Path: "/", Header: http.Header{}, Body: []byte{}},
		{ID: 1<<64 - 1, Method: "POST", Path: "/a/b", Query: "x=1&y=%20", Header: h, Deadline: deadline, Body: bytes.Repeat([]byte{0, 1, 2, '\n'}, 100000)},
	}
	var stream bytes.Buffer
	for _, r := range reqs {
		if err := WriteRequest(&stream, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range reqs {
		got, err := ReadRequest(&stream, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Method != want.Method || got.Path != want.Path || got.Query != want.Query ||
			!got.Deadline.Equal(want.Deadline) || !bytes.Equal(got.Body, want.Body) || !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	}
	if _, err := ReadRequest(&stream, 0); err != io.EOF {
		t.Fatalf("at end of stream: %v, want io.EOF", err)
	}

	resps := []*Response{
		{ID: 3, Status: 404, Header: h, Body: []byte("not here")},
		{ID: 4, Status: 0, Header: http.Header{}, Body: []byte{}},
	}
	for _, r := range resps {
		if err := WriteResponse(&stream, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range resps {
		got, err := ReadResponse(&stream, 0)
		if err != nil {
			t.Fatal(err)
		}
		ws := want.Status
		if ws == 0 {
			ws = 200
		}
		if got.ID != want.ID || got.Status != ws || !bytes.Equal(got.Body, want.Body) || !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	}
}

// frame builds raw bytes so tests can say what a writer never would.
func frame(typ, flags byte, reserved uint16, id uint64, meta string, body []byte) []byte {
	var hdr [HeaderSize]byte
	copy(hdr[:], "KLN1")
	hdr[4], hdr[5] = typ, flags
	binary.LittleEndian.PutUint16(hdr[6:], reserved)
	binary.LittleEndian.PutUint64(hdr[8:], id)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(len(meta)))
	binary.LittleEndian.PutUint32(hdr[20:], uint32(len(body)))
	return append(append(hdr[:], meta...), body...)
}

func TestReadRequestAccepts(t *testing.T) {
	// A final line may omit its newline; headers arrive canonicalised.
	r, err := ReadRequest(bytes.NewReader(frame(1, 0, 0, 9, ":path: /x\ncontent-type: a\n:method: PUT", []byte("b"))), 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "PUT" || r.Path != "/x" || r.Header.Get("Content-Type") != "a" || r.ID != 9 || !r.Deadline.IsZero() {
		t.Fatalf("%+v", r)
	}
	r, err = ReadRequest(bytes.NewReader(frame(1, 0, 0, 9, ":method: GET\n:path: /\n:deadline: 0042\n", nil)), 0)
	if err != nil || r.Deadline.UnixMilli() != 42 {
		t.Fatalf("%+v %v", r, err)
	}
	resp, err := ReadResponse(bytes.NewReader(frame(2, 0, 0, 1, "", nil)), 0)
	if err != nil || resp.Status != 200 {
		t.Fatalf("empty metadata: %+v %v", resp, err)
	}
}

func TestReadRejects(t *testing.T) {
	okMeta := ":method: GET\n:path: /\n"
	bad := func(b []byte, i int, v byte) []byte { b = bytes.Clone(b); b[i] = v; return b }
	good := frame(1, 0, 0, 1, okMeta, []byte("x"))
	tests := []struct {
		name    string
		data    []byte
		maxBody int
		tooBig  bool
	}{
		{"magic", bad(good, 3, '2'), 0, false},
		{"type response", frame(2, 0, 0, 1, okMeta, nil), 0, false},
		{"type 3", frame(3, 0, 0, 1, okMeta, nil), 0, false},
		{"flags", frame(1, 1, 0, 1, okMeta, nil), 0, false},
		{"reserved", frame(1, 0, 0x100, 1, okMeta, nil), 0, false},
		{"meta limit", bad(bad(good, 16, 0x01), 18, 0x01), 0, true}, // 65537 + ...
		{"body over max", frame(1, 0, 0, 1, okMeta, []byte("12345")), 4, true},
		{"body over 64 MiB", bad(bad(good, 20, 1), 23, 0x04), 0, true},
		{"truncated header", good[:10], 0, false},
		{"truncated meta", good[:HeaderSize+3], 0, false},
		{"truncated body", good[:len(good)-1], 0, false},
		{"no colon space", frame(1, 0, 0, 1, okMeta+"x:y\n", nil), 0, false},
		{"empty line", frame(1, 0, 0, 1, ":method: GET\n\n:path: /\n", nil), 0, false},
		{"upper name", frame(1, 0, 0, 1, okMeta+"Content-Type: a\n", nil), 0, false},
		{"space in name", frame(1, 0, 0, 1, okMeta+"a b: c\n", nil), 0, false},
		{"empty name", frame(1, 0, 0, 1, okMeta+": c\n", nil), 0, false},
		{"unknown pseudo", frame(1, 0, 0, 1, okMeta+":status: 200\n", nil), 0, false},
		{"repeated method", frame(1, 0, 0, 1, okMeta+":method: GET\n", nil), 0, false},
		{"no method", frame(1, 0, 0, 1, ":path: /\n", nil), 0, false},
		{"no path", frame(1, 0, 0, 1, ":method: GET\n", nil), 0, false},
		{"relative path", frame(1, 0, 0, 1, ":method: GET\n:path: x\n", nil), 0, false},
		{"method not token", frame(1, 0, 0, 1, ":method: G T\n:path: /\n", nil), 0, false},
		{"deadline sign", frame(1, 0, 0, 1, okMeta+":deadline: +5\n", nil), 0, false},
		{"deadline empty", frame(1, 0, 0, 1, okMeta+":deadline: \n", nil), 0, false},
		{"not utf8", frame(1, 0, 0, 1, okMeta+"a: \xff\n", nil), 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadRequest(bytes.NewReader(tc.data), tc.maxBody)
			if !errors.Is(err, ErrProtocol) || errors.Is(err, ErrTooLarge) != tc.tooBig {
				t.Fatalf("got %v (too large wanted: %v)", err, tc.tooBig)
			}
		})
	}
	for _, meta := range []string{":status: 20\n", ":status: 600\n", ":status: 099\n", ":status: 200\n:status: 200\n", ":method: GET\n", ":status:200\n"} {
		if _, err := ReadResponse(bytes.NewReader(frame(2, 0, 0, 1, meta, nil)), 0); !errors.Is(err, ErrProtocol) {
			t.Errorf("response meta %q: %v", meta, err)
		}
	}
	if _, err := ReadResponse(bytes.NewReader(good), 0); !errors.Is(err, ErrProtocol) {
		t.Errorf("request frame read as response: %v", err)
	}
	// A lying length followed by end of stream allocates nothing huge and
	// is a truncation, not a success.
	lie := frame(2, 0, 0, 1, "", nil)
	binary.LittleEndian.PutUint32(lie[20:], MaxBody)
	if _, err := ReadResponse(bytes.NewReader(lie), 0); !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, ErrProtocol) {
		t.Errorf("lying body length: %v", err)
	}
}

func TestWriteRejects(t *testing.T) {
	var buf bytes.Buffer
	reqs := []*Request{
		{Method: "", Path: "/"},
		{Method: "GET", Path: "x"},
		{Method: "GET", Path: "/\n"},
		{Method: "GET", Path: "/", Query: "a\nb"},
		{Method: "GET", Path: "/", Header: http.Header{"Bad Name": {"x"}}},
		{Method: "GET", Path: "/", Header: http.Header{"X": {"a\nb"}}},
		{Method: "GET", Path: "/", Deadline: time.UnixMilli(-5)},
		{Method: "GET", Path: "/", Header: http.Header{"X": {strings.Repeat("a", MaxMeta)}}},
	}
	for i, r := range reqs {
		if err := WriteRequest(&buf, r); !errors.Is(err, ErrProtocol) {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if buf.Len() != 0 {
		t.Errorf("refused requests wrote %d bytes", buf.Len())
	}
	for _, s := range []int{99, 600, -1} {
		if err := WriteResponse(&buf, &Response{Status: s}); !errors.Is(err, ErrProtocol) {
			t.Errorf("status %d: %v", s, err)
		}
	}
	// A path written as "" means "/".
	if err := WriteRequest(&buf, &Request{Method: "GET"}); err != nil {
		t.Fatal(err)
	}
	if r, err := ReadRequest(&buf, 0); err != nil || r.Path != "/" {
		t.Fatalf("%+v %v", r, err)
	}
}

func checkErr(t *testing.T, err error) {
	if err != io.EOF && !errors.Is(err, ErrProtocol) {
		t.Fatalf("error wraps neither io.EOF nor ErrProtocol: %v", err)
	}
}

func FuzzReadRequest(f *testing.F) {
	var buf bytes.Buffer
	WriteRequest(&buf, &Request{ID: 7, Method: "POST", Path: "/", Query: "x=1", Deadline: time.UnixMilli(5), Header: http.Header{"A": {"b", "c"}}, Body: []byte("world")})
	f.Add(buf.Bytes())
	f.Add(frame(1, 0, 0, 1, ":method: GET\n:path: /\nx: y", nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ReadRequest(bytes.NewReader(b), 1<<16)
		if err != nil {
			checkErr(t, err)
			return
		}
		// What a strict reader accepts, the writer can say again, and
		// it reads back the same.
		var out bytes.Buffer
		if err := WriteRequest(&out, r); err != nil {
			t.Fatalf("rewrite of an accepted request: %v", err)
		}
		r2, err := ReadRequest(&out, 1<<16)
		if err != nil {
			t.Fatalf("reread: %v", err)
		}
		if r2.ID != r.ID || r2.Method != r.Method || r2.Path != r.Path || r2.Query != r.Query ||
			!r2.Deadline.Equal(r.Deadline) || !bytes.Equal(r2.Body, r.Body) || !reflect.DeepEqual(r2.Header, r.Header) {
			t.Fatalf("round trip changed %+v into %+v", r, r2)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	var buf bytes.Buffer
	WriteResponse(&buf, &Response{ID: 7, Status: 201, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("hello")})
	f.Add(buf.Bytes())
	f.Add(frame(2, 0, 0, 1, "", nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ReadResponse(bytes.NewReader(b), 1<<16)
		if err != nil {
			checkErr(t, err)
			return
		}
		var out bytes.Buffer
		if err := WriteResponse(&out, r); err != nil {
			t.Fatalf("rewrite of an accepted response: %v", err)
		}
		r2, err := ReadResponse(&out, 1<<16)
		if err != nil {
			t.Fatalf("reread: %v", err)
		}
		if r2.ID != r.ID || r2.Status != r.Status || !bytes.Equal(r2.Body, r.Body) || !reflect.DeepEqual(r2.Header, r.Header) {
			t.Fatalf("round trip changed %+v into %+v", r, r2)
		}
	})
}
