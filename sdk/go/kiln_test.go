package kiln

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/proto/wire"
)

// The tests speak to the SDK with the platform's own wire package, so the
// two independent codecs are checked against each other.

// countingWriter counts Write calls on its way to w.
type countingWriter struct {
	w      io.Writer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.w.Write(p)
}

// session runs ServeIO over real pipes and lets a test send requests and
// read responses as the platform would.
type session struct {
	t      *testing.T
	toFn   *os.File // the platform's end of the function's fd 0
	fromFn *bufio.Reader
	out    *countingWriter
	done   chan error
}

func start(t *testing.T, h Handler) *session {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, toFn: inW, fromFn: bufio.NewReader(outR), out: &countingWriter{w: outW}, done: make(chan error, 1)}
	go func() {
		err := ServeIO(inR, s.out, h)
		inR.Close()
		outW.Close()
		s.done <- err
	}()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	return s
}

func (s *session) call(req *wire.Request) *wire.Response {
	s.t.Helper()
	if err := wire.WriteRequest(s.toFn, req); err != nil {
		s.t.Fatal(err)
	}
	resp, err := wire.ReadResponse(s.fromFn, 0)
	if err != nil {
		s.t.Fatalf("reading the response to request %d: %v", req.ID, err)
	}
	if resp.ID != req.ID {
		s.t.Fatalf("response id %d, want %d", resp.ID, req.ID)
	}
	return resp
}

// finish closes fd 0 and returns what ServeIO returned.
func (s *session) finish() error {
	s.t.Helper()
	s.toFn.Close()
	select {
	case err := <-s.done:
		return err
	case <-time.After(10 * time.Second):
		s.t.Fatal("ServeIO did not return after its input closed")
		return nil
	}
}

func TestServeRequestFields(t *testing.T) {
	var got *Request
	var gotDeadline time.Time
	var hadDeadline bool
	s := start(t, func(ctx context.Context, req *Request) (*Response, error) {
		got = req
		gotDeadline, hadDeadline = ctx.Deadline()
		h := Header{"X-Echo": {req.Header.Get("X-Who")}, "Set-Cookie": {"a=1", "b=2"}}
		return &Response{Status: 201, Header: h, Body: append([]byte("got "), req.Body...)}, nil
	})
	deadline := time.UnixMilli(time.Now().Add(time.Hour).UnixMilli())
	resp := s.call(&wire.Request{
		ID: 7, Method: "PUT", Path: "/a/b", Query: "x=1&y=two&x=3",
		Header: http.Header{"X-Who": {"kiln"}, "Accept": {"a", "b"}}, Deadline: deadline, Body: []byte("data"),
	})
	if resp.Status != 201 || string(resp.Body) != "got data" {
		t.Fatalf("response %d %q", resp.Status, resp.Body)
	}
	if resp.Header.Get("X-Echo") != "kiln" || len(resp.Header["Set-Cookie"]) != 2 {
		t.Fatalf("response headers %v", resp.Header)
	}
	if got.ID != 7 || got.Method != "PUT" || got.Path != "/a/b" || got.RawQuery != "x=1&y=two&x=3" {
		t.Fatalf("request %+v", got)
	}
	if q := got.Query; len(q["x"]) != 2 || q["x"][1] != "3" || q.Get("y") != "two" {
		t.Fatalf("query %v", q)
	}
	if got.Header.Get("X-Who") != "kiln" || len(got.Header["Accept"]) != 2 {
		t.Fatalf("headers %v", got.Header)
	}
	if !got.Deadline.Equal(deadline) || !hadDeadline || !gotDeadline.Equal(deadline) {
		t.Fatalf("deadline: request %v, ctx %v (%v), want %v", got.Deadline, gotDeadline, hadDeadline, deadline)
	}
	if err := s.finish(); err != nil {
		t.Fatalf("ServeIO at end of input: %v", err)
	}
}

func TestServeNoDeadlineDefaults(t *testing.T) {
	s := start(t, func(ctx context.Context, req *Request) (*Response, error) {
		if _, ok := ctx.Deadline(); ok {
			return Text(500, "ctx has a deadline"), nil
		}
		if req.Path != "/" || req.RawQuery != "" || len(req.Query) != 0 || !req.Deadline.IsZero() {
			return Text(500, fmt.Sprintf("unexpected %+v", req)), nil
		}
		return nil, nil
	})
	resp := s.call(&wire.Request{ID: 1, Method: "GET"})
	if resp.Status != 200 || len(resp.Body) != 0 {
		t.Fatalf("nil response: %d %q, want an empty 200", resp.Status, resp.Body)
	}
	s.finish()
}

func TestServeErrorsAndPanicsKeepServing(t *testing.T) {
	s := start(t, func(ctx context.Context, req *Request) (*Response, error) {
		switch string(req.Body) {
		case "error":
			return nil, errors.New("the database is on fire")
		case "panic":
			panic("index out of patience")
		case "nil-map":
			var m map[string]int
			m["x"] = 1
		case "bad-status":
			return &Response{Status: 1000}, nil
		case "bad-header":
			return &Response{Header: Header{"X": {"a\nb"}}}, nil
		}
		return Text(0, "ok "+string(req.Body)), nil
	})
	cases := []struct {
		body, want string
		status     int
	}{
		{"one", "ok one", 200},
		{"error", "the database is on fire\n", 500},
		{"two", "ok two", 200},
		{"panic", "panic: index out of patience\n", 500},
		{"nil-map", "panic: assignment to entry in nil map\n", 500},
		{"bad-status", "kiln: status 1000 outside 100–599\n", 500},
		{"bad-header", "kiln: header X: value holds a newline or invalid UTF-8\n", 500},
		{"three", "ok three", 200},
	}
	for i, c := range cases {
		resp := s.call(&wire.Request{ID: uint64(100 + i), Method: "POST", Body: []byte(c.body)})
		if resp.Status != c.status || string(resp.Body) != c.want {
			t.Errorf("%s: %d %q, want %d %q", c.body, resp.Status, resp.Body, c.status, c.want)
		}
	}
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if s.out.writes != len(cases) {
		t.Errorf("%d writes for %d responses, want one each", s.out.writes, len(cases))
	}
}

func TestServeLargeBodies(t *testing.T) {
	s := start(t, func(ctx context.Context, req *Request) (*Response, error) {
		return &Response{Body: bytes.ToUpper(req.Body)}, nil
	})
	for _, n := range []int{0, 1, inBufSize - 1, inBufSize + 1, 3 << 20} {
		body := bytes.Repeat([]byte("ab"), n/2+1)[:n]
		resp := s.call(&wire.Request{ID: uint64(n), Method: "POST", Body: body})
		if !bytes.Equal(resp.Body, bytes.ToUpper(body)) {
			t.Fatalf("%d-byte body came back as %d bytes", n, len(resp.Body))
		}
	}
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if s.out.writes != 5 {
		t.Errorf("%d writes for 5 responses", s.out.writes)
	}
}

func TestServeProtocolErrors(t *testing.T) {
	good := func() []byte {
		var b bytes.Buffer
		wire.WriteRequest(&b, &wire.Request{ID: 1, Method: "POST", Body: []byte("x")})
		return b.Bytes()
	}
	cases := map[string][]byte{
		"bad magic":       append([]byte("XLN1"), good()[4:]...),
		"response type":   func() []byte { b := good(); b[4] = 2; return b }(),
		"flags":           func() []byte { b := good(); b[5] = 1; return b }(),
		"meta too large":  func() []byte { b := good(); b[18] = 2; return b }(),
		"body too large":  func() []byte { b := good(); b[23] = 0x10; return b }(),
		"truncated":       good()[:30],
		"no method":       frame(1, "x-a: b\n", ""),
		"no separator":    frame(1, ":method: GET\nbroken\n", ""),
		"bad deadline":    frame(1, ":method: GET\n:deadline: -5\n", ""),
		"relative path":   frame(1, ":method: GET\n:path: x\n", ""),
		"invalid utf8":    frame(1, ":method: GET\nx: \xff\n", ""),
		"header only cut": good()[:10],
	}
	for name, in := range cases {
		err := ServeIO(bytes.NewReader(in), io.Discard, func(context.Context, *Request) (*Response, error) { return nil, nil })
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: ServeIO = %v, want ErrProtocol", name, err)
		}
	}
}

// frame builds a request frame by hand, for metadata the strict wire
// writer would refuse to produce.
func frame(id uint64, meta, body string) []byte {
	b := []byte{'K', 'L', 'N', '1', 1, 0, 0, 0}
	b = append(b, byte(id), byte(id>>8), byte(id>>16), byte(id>>24), byte(id>>32), byte(id>>40), byte(id>>48), byte(id>>56))
	for _, n := range []int{len(meta), len(body)} {
		b = append(b, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
	}
	return append(append(b, meta...), body...)
}

func TestParseTolerance(t *testing.T) {
	// A final line without '\n', an unknown pseudo-header (a newer
	// platform) and a repeated header are all fine.
	in := frame(9, "x-a: 1\n:future: yes\n:method: GET\nx-a: 2\n:path: /p", "b")
	var got *Request
	err := ServeIO(bytes.NewReader(in), io.Discard, func(_ context.Context, r *Request) (*Response, error) {
		got = r
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Method != "GET" || got.Path != "/p" || strings.Join(got.Header["X-A"], ",") != "1,2" || string(got.Body) != "b" {
		t.Fatalf("parsed %+v", got)
	}
}

func TestHelpers(t *testing.T) {
	r, err := JSON(202, map[string]int{"n": 1})
	if err != nil || r.Status != 202 || string(r.Body) != "{\"n\":1}\n" || r.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("JSON: %+v %v", r, err)
	}
	if _, err := JSON(200, make(chan int)); err == nil {
		t.Fatal("JSON of a channel did not fail")
	}
	if r := Text(404, "no"); r.Status != 404 || string(r.Body) != "no" || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("Text: %+v", r)
	}
}

// TestServeProcess runs Serve in a child process (this test binary) with
// real fds 0 and 1, and checks the exit statuses the protocol prescribes.
func TestServeProcess(t *testing.T) {
	if os.Getenv("KILN_SDK_CHILD") == "1" {
		Serve(func(_ context.Context, r *Request) (*Response, error) {
			return Text(200, "child "+string(r.Body)), nil
		})
		os.Exit(0)
	}
	run := func(stdin []byte) (int, []byte, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestServeProcess$")
		cmd.Env = append(os.Environ(), "KILN_SDK_CHILD=1")
		cmd.Stdin = bytes.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.Bytes(), errb.String()
	}
	var in bytes.Buffer
	wire.WriteRequest(&in, &wire.Request{ID: 1, Method: "POST", Body: []byte("a")})
	wire.WriteRequest(&in, &wire.Request{ID: 2, Method: "POST", Body: []byte("b")})
	code, out, errs := run(in.Bytes())
	if code != 0 {
		t.Fatalf("exit %d at end of input, stderr %q", code, errs)
	}
	r := bytes.NewReader(out)
	for _, want := range []string{"child a", "child b"} {
		resp, err := wire.ReadResponse(r, 0)
		if err != nil || string(resp.Body) != want {
			t.Fatalf("response %v %v, want %q", resp, err, want)
		}
	}
	code, _, errs = run([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	if code != 2 || !strings.Contains(errs, "bad magic") {
		t.Fatalf("garbage input: exit %d, stderr %q; want 2 and the reason", code, errs)
	}
}

func FuzzReadRequest(f *testing.F) {
	var b bytes.Buffer
	wire.WriteRequest(&b, &wire.Request{ID: 3, Method: "POST", Path: "/x", Query: "a=b", Header: http.Header{"K": {"v"}}, Deadline: time.UnixMilli(5), Body: []byte("hi")})
	f.Add(b.Bytes())
	f.Add(frame(1, ":method: GET", ""))
	f.Add(frame(1, ":method: GET\n:deadline: 99999999999999999999\n", "zz"))
	f.Add([]byte("KLN1"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		for {
			req, err := readRequest(r)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("error %v is neither EOF nor ErrProtocol", err)
				}
				return
			}
			if req.Method == "" || !strings.HasPrefix(req.Path, "/") || req.Header == nil || req.Query == nil {
				t.Fatalf("accepted an incomplete request %+v", req)
			}
		}
	})
}

func FuzzResponseFrame(f *testing.F) {
	f.Add(200, "content-type", "text/plain", []byte("hello"))
	f.Add(0, "X-A", "", []byte{})
	f.Add(99, "bad name", "v\n", []byte("x"))
	f.Fuzz(func(t *testing.T, status int, name, value string, body []byte) {
		resp := &Response{Status: status, Header: Header{name: {value}}, Body: body}
		b, err := appendResponse([]byte("prefix"), 42, resp)
		if err != nil {
			if string(b) != "prefix" {
				t.Fatalf("a refused response left bytes behind: %q", b)
			}
			return
		}
		got, err := wire.ReadResponse(bytes.NewReader(b[len("prefix"):]), 0)
		if err != nil {
			t.Fatalf("the strict reader refuses what the SDK wrote: %v", err)
		}
		want := status
		if want == 0 {
			want = 200
		}
		if got.ID != 42 || got.Status != want || !bytes.Equal(got.Body, body) || got.Header.Get(name) != value {
			t.Fatalf("round trip: %+v from %+v", got, resp)
		}
	})
}

func TestCanonicalHeaderKeyMatchesNetHTTP(t *testing.T) {
	for _, k := range []string{"content-type", "X-WHO", "x-forwarded-for", "a", "", "-x", "x--y", "bad key", "ümlaut", "x_y", "Set-Cookie"} {
		if got, want := CanonicalHeaderKey(k), http.CanonicalHeaderKey(k); got != want {
			t.Errorf("CanonicalHeaderKey(%q) = %q, net/http says %q", k, got, want)
		}
	}
	h := Header{}
	h.Add("x-a", "1")
	h.Add("X-A", "2")
	h.Set("content-type", "text/plain")
	if h.Get("X-a") != "1" || len(h.Values("x-a")) != 2 || h.Get("Content-Type") != "text/plain" {
		t.Fatalf("header %v", h)
	}
	c := h.Clone()
	h.Del("x-a")
	if h.Get("X-A") != "" || c.Get("X-A") != "1" {
		t.Fatalf("Del/Clone: %v %v", h, c)
	}
}
