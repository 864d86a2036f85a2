package kiln

// The frame codec of docs/WIRE.md, written again here rather than imported
// from the platform's wire package: the builder compiles this directory as a
// module of its own (with no requirements) into every user's function, so
// it may use the standard library only.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits of wire protocol version 1.
const (
	headerSize = 24
	maxMeta    = 65536
	maxBody    = 64 << 20

	typeRequest  = 1
	typeResponse = 2
)

var magic = [4]byte{'K', 'L', 'N', '1'}

// ErrProtocol means the input is not a valid request frame stream. The
// protocol has no resynchronisation, so Serve stops at the first one.
var ErrProtocol = errors.New("kiln: wire protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// readRequest reads one request frame from r. A clean end of input (no
// byte of a new frame) is io.EOF itself.
func readRequest(r *bufio.Reader) (*Request, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, protoErr("reading frame header: %v", err)
	}
	if !bytes.Equal(hdr[:4], magic[:]) {
		return nil, protoErr("bad magic % x", hdr[:4])
	}
	if hdr[4] != typeRequest {
		return nil, protoErr("frame type %d, want a request (1)", hdr[4])
	}
	if hdr[5] != 0 || hdr[6] != 0 || hdr[7] != 0 {
		return nil, protoErr("non-zero flags or reserved bytes % x", hdr[5:8])
	}
	id := binary.LittleEndian.Uint64(hdr[8:])
	metaLen := binary.LittleEndian.Uint32(hdr[16:])
	bodyLen := binary.LittleEndian.Uint32(hdr[20:])
	if metaLen > maxMeta {
		return nil, protoErr("metadata of %d bytes, limit %d", metaLen, maxMeta)
	}
	if bodyLen > maxBody {
		return nil, protoErr("body of %d bytes, limit %d", bodyLen, maxBody)
	}
	meta, err := readN(r, int(metaLen))
	if err != nil {
		return nil, protoErr("reading metadata: %v", err)
	}
	body, err := readN(r, int(bodyLen))
	if err != nil {
		return nil, protoErr("reading body: %v", err)
	}
	req := &Request{ID: id, Path: "/", Header: Header{}, Body: body}
	if err := parseRequestMeta(meta, req); err != nil {
		return nil, err
	}
	req.Query, _ = url.ParseQuery(req.RawQuery)
	return req, nil
}

// readN reads exactly n bytes. Large lengths grow the buffer as bytes
// arrive, so a header that lies about its body costs no 64 MiB up front.
func readN(r io.Reader, n int) ([]byte, error) {
	const chunk = 1 << 20
	if n <= chunk {
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, unexpected(err)
		}
		return b, nil
	}
	var buf bytes.Buffer
	buf.Grow(chunk)
	if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
		return nil, unexpected(err)
	}
	return buf.Bytes(), nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseRequestMeta fills req from the metadata lines. Unknown
// pseudo-headers are ignored, so a newer platform can add one without
// breaking functions built against this SDK.
func parseRequestMeta(meta []byte, req *Request) error {
	if !utf8.Valid(meta) {
		return protoErr("metadata is not UTF-8")
	}
	s := string(meta)
	for len(s) > 0 {
		var line string
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			line, s = s, ""
		}
		i := strings.Index(line, ": ")
		if i <= 0 {
			return protoErr("metadata line %q has no name and ': '", line)
		}
		name, value := line[:i], line[i+2:]
		switch name {
		case ":method":
			req.Method = value
		case ":path":
			if !strings.HasPrefix(value, "/") {
				return protoErr(":path %q does not start with /", value)
			}
			req.Path = value
		case ":query":
			req.RawQuery = value
		case ":deadline":
			ms, err := strconv.ParseUint(value, 10, 63)
			if err != nil {
				return protoErr("bad :deadline %q", value)
			}
			req.Deadline = time.UnixMilli(int64(ms))
		default:
			if name[0] == ':' {
				continue
			}
			key := CanonicalHeaderKey(name)
			req.Header[key] = append(req.Header[key], value)
		}
	}
	if req.Method == "" {
		return protoErr("request without :method")
	}
	return nil
}

// appendResponse appends the whole response frame (header, metadata, body)
// to dst, so that it leaves in one write(2). It refuses, with nothing
// appended, what a strict reader would refuse.
func appendResponse(dst []byte, id uint64, resp *Response) ([]byte, error) {
	status := resp.Status
	if status == 0 {
		status = 200
	}
	if status < 100 || status > 599 {
		return dst, fmt.Errorf("kiln: status %d outside 100–599", status)
	}
	if len(resp.Body) > maxBody {
		return dst, fmt.Errorf("kiln: response body of %d bytes, limit %d", len(resp.Body), maxBody)
	}
	start := len(dst)
	dst = append(dst, make([]byte, headerSize)...)
	dst = append(dst, ":status: "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, '\n')
	names := make([]string, 0, len(resp.Header))
	for name := range resp.Header {
		names = append(names, name)
	}
	// Sorted, so equal responses are equal bytes.
	sort.Strings(names)
	for _, name := range names {
		lower := strings.ToLower(name)
		if !isToken(lower) {
			return dst[:start], fmt.Errorf("kiln: header name %q is not an HTTP token", name)
		}
		for _, v := range resp.Header[name] {
			if strings.IndexByte(v, '\n') >= 0 || !utf8.ValidString(v) {
				return dst[:start], fmt.Errorf("kiln: header %s: value holds a newline or invalid UTF-8", name)
			}
			dst = append(dst, lower...)
			dst = append(dst, ": "...)
			dst = append(dst, v...)
			dst = append(dst, '\n')
		}
	}
	metaLen := len(dst) - start - headerSize
	if metaLen > maxMeta {
		return dst[:start], fmt.Errorf("kiln: response headers of %d bytes, limit %d", metaLen, maxMeta)
	}
	hdr := dst[start : start+headerSize]
	copy(hdr, magic[:])
	hdr[4] = typeResponse
	binary.LittleEndian.PutUint64(hdr[8:], id)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(metaLen))
	binary.LittleEndian.PutUint32(hdr[20:], uint32(len(resp.Body)))
	return append(dst, resp.Body...), nil
}

// isToken: RFC 9110 token characters, as HTTP allows in field names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}
