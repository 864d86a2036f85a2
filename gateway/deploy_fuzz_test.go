package gateway

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"strings"
	"testing"
)

// FuzzReadMultipart feeds the deploy's multipart reader hostile uploads:
// any bytes under any boundary, and well-formed uploads with fuzzer-chosen
// field names, values and program. It must never panic, never return a
// program over the limit, never keep more form data than its bounds, and
// give back exactly the program and name a well-formed upload carried.
func FuzzReadMultipart(f *testing.F) {
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nfn\r\n--b--\r\n"), "b", "name", "fn", []byte("\x7fELF"))
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"binary\"; filename=\"p\"\r\n\r\n\x7fELF\r\n--b--\r\n"), "b", "env", "A=1", []byte{})
	f.Add([]byte("--x\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{\"name\":\"s\",\"env\":[\"K=V\"]}\r\n--x--\r\n"), "x", "spec", `{"name":"j"}`, []byte("prog"))
	f.Add([]byte("garbage"), "", "", "", []byte(nil))
	const limit = 1 << 10
	f.Fuzz(func(t *testing.T, raw []byte, boundary, field, value string, program []byte) {
		// Any bytes under any boundary.
		var p DeployParams
		if prog, err := readMultipart(multipart.NewReader(bytes.NewReader(raw), boundary), &p, limit); err == nil {
			if len(prog) > limit {
				t.Fatalf("program of %d bytes accepted over the %d-byte limit", len(prog), limit)
			}
			kept := len(p.Name) + len(p.Kind) + len(p.Memory) + len(p.Timeout) + len(p.AsyncRetries)
			for _, s := range append(append([]string{}, p.Env...), p.Args...) {
				kept += len(s)
			}
			if kept > len(raw) {
				t.Fatalf("kept %d bytes of settings from a %d-byte upload", kept, len(raw))
			}
		}

		// A well-formed upload with the fuzzer's field and program.
		if field == "" || field == "binary" || field == "spec" || strings.IndexFunc(field, func(r rune) bool {
			return r < 0x21 || r > 0x7e || r == '"' || r == '\\'
		}) >= 0 {
			field = "env" // a name a browser or curl could send
		}
		var buf bytes.Buffer
		w := multipart.NewWriter(&buf)
		w.WriteField("name", "fuzzed")
		w.WriteField(field, value)
		fw, _ := w.CreateFormFile("binary", "prog")
		fw.Write(program)
		w.Close()
		var q DeployParams
		prog, err := readMultipart(multipart.NewReader(&buf, w.Boundary()), &q, limit)
		switch {
		case len(program) > limit:
			if err == nil {
				t.Fatalf("a %d-byte program passed the %d-byte limit", len(program), limit)
			}
		case len(value) > maxFieldBytes:
			if err == nil {
				t.Fatalf("a %d-byte field passed the %d-byte bound", len(value), maxFieldBytes)
			}
		case err != nil:
			t.Fatalf("a well-formed upload was refused: %v", err)
		default:
			if !bytes.Equal(prog, program) {
				t.Fatalf("program: got %d bytes, sent %d", len(prog), len(program))
			}
			if q.Name != "fuzzed" && field != "name" {
				b, _ := json.Marshal(q)
				t.Fatalf("the name field was lost: %s", b)
			}
		}
	})
}
