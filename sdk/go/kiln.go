// Package kiln is the Go SDK for Kiln functions: Serve turns a handler into
// a `serve` function that answers many requests per boot.
//
// A serve function reads request frames on fd 0 and writes one response
// frame per request on fd 1 (the Kiln wire protocol, docs/WIRE.md); fd 2 is
// its log. The same binary therefore runs as a Kiln unikernel and as a plain
// process (`kiln run --local`), so a function can be tried without KVM.
//
//	package main
//
//	import (
//		"context"
//
//		"github.com/kilnfaas/kiln/sdk/go"
//	)
//
//	func main() {
//		kiln.Serve(func(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
//			return kiln.Text(200, "hello, "+string(req.Body)), nil
//		})
//	}
//
// A handler error answers 500 with the error's text; a panic answers 500
// with the panic's message and the function keeps serving. ctx is cancelled
// at the caller's deadline, when the platform sent one.
//
// Costs inside a Kiln VM: requests are read with large buffered reads and
// each response leaves in one write(2), so the guest kernel can send it
// together with the wait for the next request — one VM exit per call.
//
// This package imports only the standard library: `kiln deploy` builds a
// function against a copy of it that has no other module to fetch.
package kiln

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime/debug"
	"time"
)

// Request is one invocation.
type Request struct {
	ID       uint64     // unique per instance; the response carries it back
	Method   string     // "POST", "GET", …
	Path     string     // after /function/NAME; "/" if none
	RawQuery string     // without '?'; "" if none
	Query    url.Values // RawQuery parsed; malformed pairs are left out
	Header   Header     // canonical keys, as net/http has them
	Body     []byte
	Deadline time.Time // when the caller stops waiting; zero if it sent none
}

// Response is what a handler answers. A nil *Response with a nil error is
// an empty 200.
type Response struct {
	Status int // 0 means 200
	Header Header
	Body   []byte
}

// Handler answers one request. A non-nil error answers 500 with its text.
type Handler func(ctx context.Context, req *Request) (*Response, error)

// Text is a response with a text/plain body.
func Text(status int, body string) *Response {
	return &Response{
		Status: status,
		Header: Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:   []byte(body),
	}
}

// JSON is a response whose body is v encoded as JSON.
func JSON(status int, v any) (*Response, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("kiln: encoding the JSON response: %w", err)
	}
	return &Response{
		Status: status,
		Header: Header{"Content-Type": {"application/json"}},
		Body:   append(b, '\n'),
	}, nil
}

// Serve answers requests from fd 0 on fd 1 with h until fd 0 ends, then
// returns, so that main returns and the function exits with status 0, as
// the protocol asks. A malformed request frame or a failed write to fd 1
// cannot be answered on the wire: Serve reports it on fd 2 and exits the
// process with status 2, and the platform fails the call in flight.
func Serve(h Handler) {
	if err := ServeIO(os.Stdin, os.Stdout, h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

// inBufSize is large so that most requests take one read(2): inside a VM
// each read that must wait is a VM exit.
const inBufSize = 256 << 10

// ServeIO is Serve on any pair of streams; tests and custom loops use it.
// It returns nil at a clean end of r, an ErrProtocol error on a malformed
// frame, or the error of a failed write.
func ServeIO(r io.Reader, w io.Writer, h Handler) error {
	in := bufio.NewReaderSize(r, inBufSize)
	var out []byte
	for {
		req, err := readRequest(in)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		resp := call(h, req)
		out, err = appendResponse(out[:0], req.ID, resp)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kiln: request %d: %v\n", req.ID, err)
			out, _ = appendResponse(out[:0], req.ID, Text(500, err.Error()+"\n"))
		}
		if _, err := w.Write(out); err != nil {
			return fmt.Errorf("kiln: writing the response: %w", err)
		}
		// A one-off huge response should not stay pinned for the
		// instance's lifetime.
		if cap(out) > 4<<20 {
			out = nil
		}
	}
}

// call runs h on req, turning an error or a panic into a 500.
func call(h Handler, req *Request) (resp *Response) {
	ctx := context.Background()
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	defer func() {
		if p := recover(); p != nil {
			// The stack goes to the log, the message to the caller.
			fmt.Fprintf(os.Stderr, "kiln: request %d: panic: %v\n%s", req.ID, p, debug.Stack())
			resp = Text(500, fmt.Sprintf("panic: %v\n", p))
		}
	}()
	resp, err := h(ctx, req)
	if err != nil {
		return Text(500, err.Error()+"\n")
	}
	if resp == nil {
		return &Response{}
	}
	return resp
}
