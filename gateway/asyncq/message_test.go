package asyncq

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

func sample() *Invocation {
	return &Invocation{
		ID: "0f8fad5b-d9cb-469f-a165-70867728950e", Function: "hello", Ref: "prod", Version: 7, Retries: 2,
		CallbackURL: "https://example.com/cb?x=1", Enqueued: time.Unix(1700000000, 123456789),
		Request: &kilnv1.InvokeRequest{InvocationId: "0f8fad5b-d9cb-469f-a165-70867728950e", Function: &kilnv1.FunctionSpec{Name: "hello", Version: 7},
			Method: "POST", Path: "/x", Query: "a=b", Body: []byte{0, 1, 2, 0xff},
			Headers: []*kilnv1.Header{{Name: "content-type", Value: "application/octet-stream"}}},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	in := sample()
	m, err := encode(in)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "kiln.async.invoke.hello" {
		t.Fatalf("subject %q", m.Subject)
	}
	out, err := decode(m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if out.ID != in.ID || out.Function != in.Function || out.Ref != in.Ref || out.Version != in.Version || out.Retries != in.Retries ||
		out.CallbackURL != in.CallbackURL || !out.Enqueued.Equal(in.Enqueued) || !proto.Equal(out.Request, in.Request) {
		t.Fatalf("round trip:\n%+v\n%+v", in, out)
	}
}

func TestDecodeRefuses(t *testing.T) {
	m, _ := encode(sample())
	cases := map[string]func(h nats.Header) []byte{
		"no id":        func(h nats.Header) []byte { h.Del(hID); return m.Data },
		"id with dot":  func(h nats.Header) []byte { h.Set(hID, "a.b"); return m.Data },
		"bad function": func(h nats.Header) []byte { h.Set(hFunction, "Hello"); return m.Data },
		"bad version":  func(h nats.Header) []byte { h.Set(hVersion, "-1"); return m.Data },
		"retries":      func(h nats.Header) []byte { h.Set(hRetries, "21"); return m.Data },
		"neg retries":  func(h nats.Header) []byte { h.Set(hRetries, "-1"); return m.Data },
		"enqueued":     func(h nats.Header) []byte { h.Set(hEnqueued, "yesterday"); return m.Data },
		"callback":     func(h nats.Header) []byte { h.Set(hCallback, "file:///etc/passwd"); return m.Data },
		"garbage":      func(h nats.Header) []byte { return []byte{0xff, 0xff, 0xff} },
		"no function":  func(h nats.Header) []byte { return nil },
	}
	for name, mutate := range cases {
		h := nats.Header{}
		for k, v := range m.Header {
			h[k] = append([]string(nil), v...)
		}
		data := mutate(h)
		if _, err := decode(h, data); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzDecode: whatever a message holds, decode answers an invocation a
// worker can act on, or ErrInvalid; it never panics.
func FuzzDecode(f *testing.F) {
	m, _ := encode(sample())
	f.Add(m.Header.Get(hID), m.Header.Get(hFunction), m.Header.Get(hVersion), m.Header.Get(hRetries), m.Header.Get(hEnqueued), m.Header.Get(hCallback), m.Data)
	f.Add("", "", "", "", "", "", []byte{})
	f.Fuzz(func(t *testing.T, id, fn, version, retries, enqueued, callback string, data []byte) {
		h := nats.Header{}
		h.Set(hID, id)
		h.Set(hFunction, fn)
		h.Set(hVersion, version)
		h.Set(hRetries, retries)
		h.Set(hEnqueued, enqueued)
		h.Set(hCallback, callback)
		inv, err := decode(h, data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error outside ErrInvalid: %v", err)
			}
			return
		}
		if !validID(inv.ID) || inv.Retries < 0 || inv.Retries > MaxRetries || inv.Request.GetFunction() == nil {
			t.Fatalf("decode accepted %+v", inv)
		}
	})
}

func TestBackoff(t *testing.T) {
	base, max := 100*time.Millisecond, 2*time.Second
	for _, c := range []struct {
		n    int
		want time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond}, {5, 1600 * time.Millisecond}, {6, max}, {40, max}, {1000, max}, {0, max}} {
		for i := 0; i < 50; i++ {
			if d := backoff(c.n, base, max); d < c.want || d > c.want+c.want/4 {
				t.Fatalf("backoff(%d) = %v, want %v..%v", c.n, d, c.want, c.want+c.want/4)
			}
		}
	}
}

func TestCheckCallbackURL(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:9/x", "https://example.com/cb?id=1"} {
		if err := CheckCallbackURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/x", "ftp://h/x", "http://", "https:///path", "http://h/" + strings.Repeat("a", 2048), ":"} {
		if err := CheckCallbackURL(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q accepted", bad)
		}
	}
}
