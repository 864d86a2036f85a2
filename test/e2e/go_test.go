package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
)

// The Go examples (make examples-go builds them as `kiln deploy` would),
// called once through the whole platform in KVM guests and once as plain
// processes with `kiln run --local`: the same binaries must give the same
// answers both ways.

type goExample struct {
	name, kind string
}

var goExamples = []goExample{
	{"hello-go", "serve"}, {"json-echo", "serve"}, {"sha256", "serve"}, {"fanout", "serve"}, {"wordcount-exec", "exec"},
}

type goCall struct {
	function string
	query    string // raw, without '?'
	body     string
	status   int
	want     string // the body must contain it
	exact    bool   // … or be exactly it
}

func goCalls() []goCall {
	big := strings.Repeat("kiln unikernel ", 70_000) // ≈ 1 MiB
	sum := sha256.Sum256([]byte(big))
	return []goCall{
		{"hello-go", "", "world", 200, "hello, world", true},
		{"hello-go", "", "", 200, "hello, world", true},
		{"hello-go", "x=1", "again", 200, "hello, again", true},
		{"json-echo", "", `{"n":1.50,"list":["a",{"b":null}]}`, 200, `{"echoed_by":"kiln json-echo","list":["a",{"b":null}],"n":1.50}` + "\n", true},
		{"json-echo", "", `{"n":`, 400, "bad JSON", false},
		{"json-echo", "", `[1,2]`, 400, "bad JSON", false},
		{"sha256", "", "abc", 200, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n", true},
		{"sha256", "", big, 200, hex.EncodeToString(sum[:]) + "\n", true},
		{"fanout", "n=100000&workers=8", "", 200, `"primes":9592`, false},
		{"fanout", "n=1000&workers=3", "", 200, `"shares":[{"worker":0,"from":0,"to":334,"primes":67}`, false},
		{"fanout", "workers=0", "", 400, "workers=\"0\"", false},
		{"wordcount-exec", "", "one two\nthree four five\n", 200, "2 5 24\n", true},
		{"wordcount-exec", "", big, 200, "0 140000 1050000\n", true},
	}
}

func (c goCall) check(t *testing.T, how string, status int, body string) {
	t.Helper()
	ok := status == c.status && (c.exact && body == c.want || !c.exact && strings.Contains(body, c.want))
	if !ok {
		if len(body) > 300 {
			body = body[:300] + "…"
		}
		t.Errorf("%s %s?%s (%d-byte body): %d %q, want %d and %q", how, c.function, c.query, len(c.body), status, body, c.status, c.want)
	}
}

// TestGoExamplesLocal runs the built examples as plain processes; it
// needs no KVM.
func TestGoExamplesLocal(t *testing.T) {
	build := kvmtest.BuildDir(t)
	kinds := map[string]string{}
	for _, ex := range goExamples {
		kvmtest.Artifact(t, filepath.Join("examples", ex.name, ex.name))
		kinds[ex.name] = ex.kind
	}
	for _, c := range goCalls() {
		prog := filepath.Join(build, "examples", c.function, c.function)
		var stdin bytes.Buffer
		if kinds[c.function] == "serve" {
			req := &wire.Request{ID: 1, Method: "POST", Path: "/", Query: c.query, Body: []byte(c.body)}
			if err := wire.WriteRequest(&stdin, req); err != nil {
				t.Fatal(err)
			}
		} else {
			stdin.WriteString(c.body)
		}
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), []string{"run", "--local", "--timeout", "1m", prog}, &stdin, &out, &errb)
		if code != 0 {
			t.Errorf("kiln run --local %s: exit %d, stderr %q", c.function, code, errb.String())
			continue
		}
		if kinds[c.function] == "exec" {
			c.check(t, "kiln run --local", 200, out.String())
			continue
		}
		resp, err := wire.ReadResponse(&out, 0)
		if err != nil || resp.ID != 1 || out.Len() != 0 {
			t.Errorf("kiln run --local %s: response %v, id %v, %d bytes left", c.function, err, resp, out.Len())
			continue
		}
		c.check(t, "kiln run --local", resp.Status, string(resp.Body))
	}
}

// TestGoExamplesServe deploys the examples to a real platform and calls
// them over HTTP, as curl would: each Go program runs in its own KVM guest
// on the guest kernel's Go support.
func TestGoExamplesServe(t *testing.T) {
	k := up(t)
	for _, ex := range goExamples {
		k.mustDeploy(ex.name, filepath.Join("examples", ex.name, ex.name), ex.kind, url.Values{"memory": {"128M"}})
	}
	for _, c := range goCalls() {
		path := "/function/" + c.function
		if c.query != "" {
			path += "?" + c.query
		}
		a := k.request("POST", path, []byte(c.body))
		c.check(t, "POST", a.code, a.body)
	}
	// A serve function answers later calls warm, from the same instance.
	a := k.request("POST", "/function/hello-go", []byte("warm"))
	if a.code != 200 || a.header.Get("X-Kiln-Start") != "warm" {
		t.Errorf("another hello-go call: %d %q, X-Kiln-Start %q; want a warm 200", a.code, a.body, a.header.Get("X-Kiln-Start"))
	}
}
