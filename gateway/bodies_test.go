package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/gateway"
)

// rawRequest opens a TCP connection to the gateway at base and sends the
// head of a request (request line and headers; the body is the caller's
// to write). It returns the connection and a channel that yields the
// answer once it has been read.
func rawRequest(t *testing.T, base, head string) (net.Conn, <-chan *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	answer := make(chan *http.Response, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Logf("reading the answer: %v", err)
			close(answer)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		answer <- resp
	}()
	return conn, answer
}

// Finding 6 of issue 13: one connection dribbling a body kept a function of
// --max-concurrency 1 at 429 for 25 s, because the slot was taken before
// the body was read. Now the body is read first: while one caller dribbles,
// another is served, and the dribbler is cut off (408) at the body timeout.
func TestSlowBodyHoldsNoSlot(t *testing.T) {
	const bodyTimeout = 2 * time.Second
	e := startWithAgent(t, gateway.Config{BodyTimeout: bodyTimeout})
	mustDeploy(t, e, "name=one&kind=serve&max_concurrency=1", limitFunction(t))
	if resp, b := do(t, "POST", e.url+"/function/one", "", nil); resp.StatusCode != 200 {
		t.Fatalf("warm-up call: %d %s", resp.StatusCode, b)
	}

	start := time.Now()
	conn, answer := rawRequest(t, e.url, "POST /function/one HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
	stop := make(chan struct{})
	var dribbled atomic.Int64
	go func() { // a byte every 100 ms: the 1000 bytes would take 100 s
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := conn.Write([]byte("x")); err != nil {
				return
			}
			dribbled.Add(1)
		}
	}()
	defer close(stop)

	time.Sleep(300 * time.Millisecond)
	for i := range 3 {
		resp, b := do(t, "POST", e.url+"/function/one", "", strings.NewReader("hi"))
		if resp.StatusCode != 200 {
			t.Fatalf("call %d while a body dribbles in (%d bytes so far): %d %s; want 200: the dribbler must hold no slot",
				i, dribbled.Load(), resp.StatusCode, b)
		}
	}

	select {
	case resp := <-answer:
		took := time.Since(start)
		if resp == nil {
			t.Fatal("the dribbler got no answer")
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(decodeError(t, b).Error, "did not arrive within 2s") {
			t.Fatalf("the dribbler: %d %s; want 408 saying the body was too slow", resp.StatusCode, b)
		}
		if took < bodyTimeout || took > bodyTimeout+2*time.Second {
			t.Fatalf("the dribbler was answered after %v; want about the body timeout of %v", took, bodyTimeout)
		}
	case <-time.After(bodyTimeout + 10*time.Second):
		t.Fatal("the dribbler was not cut off at the body timeout")
	}
	// And its connection is closed: nothing more is read from it.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the dribbler's connection is still open (read %d bytes)", n)
	}

	// The slot is free and the function still answers.
	if resp, b := do(t, "POST", e.url+"/function/one", "", strings.NewReader("hi")); resp.StatusCode != 200 {
		t.Fatalf("after the dribbler: %d %s", resp.StatusCode, b)
	}
}

// heapPeak samples the process's heap until stop is closed and reports the
// highest HeapAlloc seen.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	peak := make(chan uint64, 1)
	go func() {
		var m runtime.MemStats
		var top uint64
		for {
			runtime.ReadMemStats(&m)
			top = max(top, m.HeapAlloc)
			select {
			case <-stop:
				peak <- top
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return peak
}

// Finding 6 of issue 13: a chunked multipart deploy of 3,200 form fields of
// 64 KiB took the gateway from 90 to 349 MB, past its 64 MiB upload limit:
// every field was kept. Now the fields other than the program are bounded
// (count, each, together), the upload is refused with a 413 that says
// which bound, and the gateway's heap (this process: the stack runs in
// it) stays near where it was.
func TestMultipartFloodRefused(t *testing.T) {
	e := start(t, gateway.Config{})
	const fields, fieldSize = 3200, 64 << 10
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	peak := heapPeak(stop)

	conn, answer := rawRequest(t, e.url, "POST /system/functions?name=flood HTTP/1.1\r\nHost: 127.0.0.1\r\n"+
		"Content-Type: multipart/form-data; boundary=BOUNDARY\r\nTransfer-Encoding: chunked\r\n\r\n")
	value := strings.Repeat("a", fieldSize)
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := bufio.NewWriterSize(conn, 128<<10)
		for i := range fields {
			part := fmt.Sprintf("--BOUNDARY\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n%s\r\n", i, value)
			if _, err := fmt.Fprintf(w, "%x\r\n%s\r\n", len(part), part); err != nil {
				return // the gateway closed the connection: refused
			}
			sent.Add(int64(len(part)))
		}
		fmt.Fprintf(w, "%x\r\n--BOUNDARY--\r\n\r\n0\r\n\r\n", len("--BOUNDARY--\r\n"))
		w.Flush()
	}()

	var resp *http.Response
	select {
	case resp = <-answer:
	case <-time.After(30 * time.Second):
		t.Fatal("no answer to the flood within 30 s")
	}
	conn.Close()
	wg.Wait()
	close(stop)
	top := <-peak
	if resp == nil {
		t.Fatal("the flood got no answer")
	}
	grew := int64(top) - int64(before.HeapAlloc)
	t.Logf("sent %d MiB before the answer; heap %d MiB before, peak %d MiB", sent.Load()>>20, before.HeapAlloc>>20, top>>20)
	if grew > 32<<20 {
		t.Errorf("the heap grew by %d MiB during the flood; want it bounded (< 32 MiB)", grew>>20)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(decodeError(t, b).Error, "over 1 MiB together") {
		t.Fatalf("the flood: %d %s; want 413 saying the fields are over 1 MiB together", resp.StatusCode, b)
	}
	if _, err := e.reg.GetFunction(t.Context(), "flood", ""); err == nil {
		t.Fatal("the flood deployed something")
	}
}

// The other bounds of a multipart deploy, each with its own sentence, and
// the whole upload bounded even when it declares no length.
func TestMultipartBounds(t *testing.T) {
	e := start(t, gateway.Config{MaxUploadBytes: 1 << 20})
	post := func(parts ...string) (*http.Response, []byte) {
		t.Helper()
		body := strings.Join(parts, "") + "--B--\r\n"
		// An io.Reader of unknown length: sent chunked.
		return do(t, "POST", e.url+"/system/functions?name=bounds", "multipart/form-data; boundary=B", io.MultiReader(strings.NewReader(body)))
	}
	field := func(name, value string) string {
		return "--B\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n"
	}
	file := func(size int) string {
		return "--B\r\nContent-Disposition: form-data; name=\"binary\"; filename=\"p\"\r\n\r\n" + strings.Repeat("\x7f", size) + "\r\n"
	}
	many := make([]string, 1001)
	for i := range many {
		many[i] = field("env", "A=1")
	}
	for _, tc := range []struct {
		name  string
		parts []string
		code  int
		says  string
	}{
		{"too many parts", many, 413, "more than 1000 parts"},
		{"one field too big", []string{field("env", "A="+strings.Repeat("x", 64<<10))}, 413, `the part "env" is over 64 KiB`},
		{"program too big", []string{file(1<<20 + 1)}, 413, "program too big"},
		{"two programs", []string{file(10), file(10)}, 400, "two programs"},
	} {
		resp, b := post(tc.parts...)
		if resp.StatusCode != tc.code || !strings.Contains(decodeError(t, b).Error, tc.says) {
			t.Errorf("%s: %d %s; want %d saying %q", tc.name, resp.StatusCode, b, tc.code, tc.says)
		}
	}
	// A raw (not multipart) chunked upload over the limit.
	resp, b := do(t, "POST", e.url+"/system/functions?name=bounds", "application/octet-stream",
		io.MultiReader(strings.NewReader(strings.Repeat("\x7f", 1<<20+1))))
	if resp.StatusCode != 413 || !strings.Contains(decodeError(t, b).Error, "program too big") {
		t.Errorf("a chunked raw upload over the limit: %d %s", resp.StatusCode, b)
	}
}

// A deploy's upload is under the body timeout too: an upload that stalls
// is answered 408 and its connection closed.
func TestSlowUploadCutOff(t *testing.T) {
	e := start(t, gateway.Config{BodyTimeout: time.Second})
	start := time.Now()
	conn, answer := rawRequest(t, e.url, "POST /system/functions?name=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n\x7fELF")
	defer conn.Close()
	select {
	case resp := <-answer:
		if resp == nil {
			t.Fatal("no answer")
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 408 || !strings.Contains(decodeError(t, b).Error, "did not arrive within 1s") {
			t.Fatalf("a stalled upload: %d %s; want 408", resp.StatusCode, b)
		}
		if took := time.Since(start); took > 4*time.Second {
			t.Fatalf("answered after %v; want about 1 s", took)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a stalled upload was not cut off")
	}
}
