// Package wire is the Kiln wire protocol (docs/WIRE.md) in Go: the frames a
// platform writes to a serve function's fd 0 and reads back from its fd 1.
// Readers are strict — a bad magic, type, flag, reserved byte, length or
// metadata line ends the stream with ErrProtocol, as the spec demands: there
// is no resynchronisation, and the bytes may come from a hostile guest.
package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Frame layout and limits of version 1.
const (
	HeaderSize = 24
	MaxMeta    = 65536
	MaxBody    = 64 << 20

	TypeRequest  = 1
	TypeResponse = 2
)

// Magic is the first four bytes of every frame.
var Magic = [4]byte{'K', 'L', 'N', '1'}

// Sentinel errors of package wire. Wrapped with %w; test with errors.Is.
var (
	// ErrProtocol: the stream is not a valid version-1 frame sequence; the
	// reader must stop using it.
	ErrProtocol = errors.New("wire: protocol error")
	// ErrTooLarge: a frame over a length limit. It is also an ErrProtocol.
	ErrTooLarge = errors.New("wire: frame too large")
)

// Request is one request frame.
type Request struct {
	ID       uint64
	Method   string
	Path     string // after the function name; "/" if none
	Query    string // raw, without '?'
	Header   http.Header
	Deadline time.Time // zero: none
	Body     []byte
}

// Response is one response frame.
type Response struct {
	ID     uint64
	Status int // 0 is written as 200
	Header http.Header
	Body   []byte
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

func tooLarge(format string, args ...any) error {
	return fmt.Errorf("%w: %w: "+format, append([]any{ErrProtocol, ErrTooLarge}, args...)...)
}

// WriteRequest writes req as one frame. It refuses (ErrProtocol, nothing
// written) what a strict reader would refuse.
func WriteRequest(w io.Writer, req *Request) error {
	if !isToken(req.Method) {
		return protoErr("method %q is not an HTTP token", req.Method)
	}
	path := req.Path
	if path == "" {
		path = "/"
	}
	if path[0] != '/' || !validValue(path) {
		return protoErr("path %q must start with / and hold no newline", path)
	}
	if !validValue(req.Query) {
		return protoErr("query holds a newline")
	}
	var meta bytes.Buffer
	meta.WriteString(":method: " + req.Method + "\n:path: " + path + "\n")
	if req.Query != "" {
		meta.WriteString(":query: " + req.Query + "\n")
	}
	if !req.Deadline.IsZero() {
		ms := req.Deadline.UnixMilli()
		if ms < 0 {
			return protoErr("deadline %v before 1970", req.Deadline)
		}
		meta.WriteString(":deadline: " + strconv.FormatInt(ms, 10) + "\n")
	}
	if err := writeHeaders(&meta, req.Header); err != nil {
		return err
	}
	return writeFrame(w, TypeRequest, req.ID, meta.Bytes(), req.Body)
}

// WriteResponse writes resp as one frame.
func WriteResponse(w io.Writer, resp *Response) error {
	status := resp.Status
	if status == 0 {
		status = http.StatusOK
	}
	if status < 100 || status > 599 {
		return protoErr("status %d outside 100–599", status)
	}
	var meta bytes.Buffer
	meta.WriteString(":status: " + strconv.Itoa(status) + "\n")
	if err := writeHeaders(&meta, resp.Header); err != nil {
		return err
	}
	return writeFrame(w, TypeResponse, resp.ID, meta.Bytes(), resp.Body)
}

func writeHeaders(meta *bytes.Buffer, h http.Header) error {
	// Sorted, so equal messages are equal bytes.
	for _, name := range slices.Sorted(maps.Keys(h)) {
		values := h[name]
		lower := strings.ToLower(name)
		if !isToken(lower) {
			return protoErr("header name %q is not an HTTP token", name)
		}
		for _, v := range values {
			if !validValue(v) {
				return protoErr("header %s: value holds a newline or invalid UTF-8", name)
			}
			meta.WriteString(lower + ": " + v + "\n")
		}
	}
	return nil
}

func writeFrame(w io.Writer, typ byte, id uint64, meta, body []byte) error {
	if len(meta) > MaxMeta {
		return tooLarge("metadata is %d bytes, limit %d", len(meta), MaxMeta)
	}
	if len(body) > MaxBody {
		return tooLarge("body is %d bytes, limit %d", len(body), MaxBody)
	}
	var hdr [HeaderSize]byte
	copy(hdr[:4], Magic[:])
	hdr[4] = typ
	binary.LittleEndian.PutUint64(hdr[8:], id)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(len(meta)))
	binary.LittleEndian.PutUint32(hdr[20:], uint32(len(body)))
	// One write for small frames: on a pipe into a guest every write can
	// be a wake-up, and frames must never interleave.
	if len(body) <= 64<<10 {
		buf := make([]byte, 0, HeaderSize+len(meta)+len(body))
		buf = append(append(append(buf, hdr[:]...), meta...), body...)
		_, err := w.Write(buf)
		return err
	}
	if _, err := w.Write(append(hdr[:], meta...)); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// ReadRequest reads one request frame. At a clean end of stream (no byte of
// a new frame) it returns io.EOF itself, the signal for a serve function to
// exit. maxBody ≤ 0 or over MaxBody means MaxBody.
func ReadRequest(r io.Reader, maxBody int) (*Request, error) {
	id, meta, body, err := readFrame(r, TypeRequest, maxBody)
	if err != nil {
		return nil, err
	}
	req := &Request{ID: id, Header: http.Header{}, Body: body}
	var haveMethod, havePath, haveQuery, haveDeadline bool
	err = parseMeta(meta, req.Header, func(name, value string) error {
		switch name {
		case ":method":
			if haveMethod || !isToken(value) {
				return protoErr("bad or repeated :method %q", value)
			}
			haveMethod, req.Method = true, value
		case ":path":
			if havePath || !strings.HasPrefix(value, "/") {
				return protoErr("bad or repeated :path %q", value)
			}
			havePath, req.Path = true, value
		case ":query":
			if haveQuery {
				return protoErr("repeated :query")
			}
			haveQuery, req.Query = true, value
		case ":deadline":
			ms, ok := parseDecimal(value)
			if haveDeadline || !ok {
				return protoErr("bad or repeated :deadline %q", value)
			}
			haveDeadline, req.Deadline = true, time.UnixMilli(ms)
		default:
			return protoErr("unknown request pseudo-header %q", name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !haveMethod || !havePath {
		return nil, protoErr("request without :method or :path")
	}
	return req, nil
}

// ReadResponse reads one response frame; the caller checks that its ID is
// the one it expects. maxBody ≤ 0 or over MaxBody means MaxBody.
func ReadResponse(r io.Reader, maxBody int) (*Response, error) {
	id, meta, body, err := readFrame(r, TypeResponse, maxBody)
	if err != nil {
		return nil, err
	}
	resp := &Response{ID: id, Status: http.StatusOK, Header: http.Header{}, Body: body}
	haveStatus := false
	err = parseMeta(meta, resp.Header, func(name, value string) error {
		if name != ":status" {
			return protoErr("unknown response pseudo-header %q", name)
		}
		s, ok := parseDecimal(value)
		if haveStatus || !ok || len(value) != 3 || s < 100 || s > 599 {
			return protoErr("bad or repeated :status %q", value)
		}
		haveStatus, resp.Status = true, int(s)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func readFrame(r io.Reader, want byte, maxBody int) (id uint64, meta, body []byte, err error) {
	if maxBody <= 0 || maxBody > MaxBody {
		maxBody = MaxBody
	}
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, nil, io.EOF
		}
		return 0, nil, nil, truncated("header", err)
	}
	if [4]byte(hdr[:4]) != Magic {
		return 0, nil, nil, protoErr("bad magic % x", hdr[:4])
	}
	if hdr[4] != want {
		return 0, nil, nil, protoErr("frame type %d, want %d", hdr[4], want)
	}
	if hdr[5] != 0 || hdr[6] != 0 || hdr[7] != 0 {
		return 0, nil, nil, protoErr("non-zero flags or reserved bytes % x", hdr[5:8])
	}
	id = binary.LittleEndian.Uint64(hdr[8:])
	metaLen := binary.LittleEndian.Uint32(hdr[16:])
	bodyLen := binary.LittleEndian.Uint32(hdr[20:])
	if metaLen > MaxMeta {
		return 0, nil, nil, tooLarge("metadata is %d bytes, limit %d", metaLen, MaxMeta)
	}
	if uint64(bodyLen) > uint64(maxBody) {
		return 0, nil, nil, tooLarge("body is %d bytes, limit %d", bodyLen, maxBody)
	}
	if meta, err = readN(r, int(metaLen)); err != nil {
		return 0, nil, nil, truncated("metadata", err)
	}
	if body, err = readN(r, int(bodyLen)); err != nil {
		return 0, nil, nil, truncated("body", err)
	}
	return id, meta, body, nil
}

func truncated(what string, err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: reading %s: %w", ErrProtocol, what, err)
}

// readN reads exactly n bytes, growing its buffer as bytes arrive so that a
// header that lies about a large body costs no large allocation up front.
func readN(r io.Reader, n int) ([]byte, error) {
	const chunk = 1 << 20
	if n <= chunk {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	var buf bytes.Buffer
	buf.Grow(chunk)
	got, err := io.CopyN(&buf, r, int64(n))
	if err != nil {
		if got < int64(n) && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf.Bytes(), nil
}

// parseMeta splits the metadata into lines `name: value`, files HTTP
// headers into h (canonical keys) and hands pseudo-headers to pseudo.
func parseMeta(meta []byte, h http.Header, pseudo func(name, value string) error) error {
	if !utf8.Valid(meta) {
		return protoErr("metadata is not UTF-8")
	}
	s := string(meta)
	for len(s) > 0 {
		line, rest, _ := strings.Cut(s, "\n")
		s = rest
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			return protoErr("metadata line %q has no ': '", line)
		}
		if strings.HasPrefix(name, ":") {
			if !isLowerToken(name[1:]) {
				return protoErr("bad pseudo-header name %q", name)
			}
			if err := pseudo(name, value); err != nil {
				return err
			}
			continue
		}
		if !isLowerToken(name) {
			return protoErr("header name %q is not a lower-case token", name)
		}
		h[http.CanonicalHeaderKey(name)] = append(h[http.CanonicalHeaderKey(name)], value)
	}
	return nil
}

// parseDecimal accepts only ASCII digits (no sign, no spaces), up to int64.
func parseDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

func validValue(v string) bool {
	return strings.IndexByte(v, '\n') < 0 && utf8.ValidString(v)
}

// isToken: RFC 9110 token characters, as HTTP allows in methods and field names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChar(s[i]) {
			return false
		}
	}
	return true
}

func isLowerToken(s string) bool {
	return isToken(s) && strings.ToLower(s) == s
}

func tokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
