package platform_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/cctest"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	"github.com/kilnfaas/kiln/store/registry"
)

// staticProgram builds a small static program with gcc, which the tests
// deploy (and also use as the stand-in guest kernel the images are packed
// with: these tests boot nothing).
func staticProgram(t *testing.T) string {
	t.Helper()
	return cctest.Build(t, "gcc", "int main(void){return 0;}\n", "-static", "-s")
}

func up(t *testing.T, dataDir, kernel string) *platform.Platform {
	t.Helper()
	p, err := platform.Up(context.Background(), platform.Config{
		DataDir: dataDir, HTTPAddr: "127.0.0.1:0", KernelPath: kernel, NoAgent: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func kiln(t *testing.T, server string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), append([]string{"--server", server}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// TestCLIAgainstPlatform runs the CLI against a real platform without a
// node-agent: everything but booting functions.
func TestCLIAgainstPlatform(t *testing.T) {
	prog := staticProgram(t)
	data := t.TempDir()
	p := up(t, data, prog)

	if code, out, errs := kiln(t, p.URL, "", "list"); code != 0 || !strings.Contains(out, "no functions deployed") {
		t.Fatalf("list on an empty platform: %d %q %q", code, out, errs)
	}
	code, out, errs := kiln(t, p.URL, "", "deploy", "fn", "--binary", prog, "--kind", "exec", "--mem", "32M", "--timeout", "2s", "--env", "A=1")
	if code != 0 || !strings.Contains(out, "deployed fn version 1 (exec, 32 MiB, timeout 2s)") {
		t.Fatalf("deploy: %d %q %q", code, out, errs)
	}
	code, _, errs = kiln(t, p.URL, "", "deploy", "bad", "--binary", "/bin/sh")
	if code != 1 || !strings.Contains(errs, "400 Bad Request") || !strings.Contains(errs, "dynamically linked") {
		t.Fatalf("deploy of a dynamic program: %d %q", code, errs)
	}
	code, out, errs = kiln(t, p.URL, "", "list", "-o", "json")
	var fs []registry.Function
	if code != 0 || json.Unmarshal([]byte(out), &fs) != nil || len(fs) != 1 || fs[0].Env[0] != "A=1" || fs[0].TimeoutMs != 2000 {
		t.Fatalf("list -o json: %d %q %q", code, out, errs)
	}
	code, out, _ = kiln(t, p.URL, "", "list")
	if code != 0 || !regexpLine(out, "fn", "1", "exec", "32M", "2s") {
		t.Fatalf("list table: %q", out)
	}
	// No agent: the invocation is refused with 503 and the JSON error on stderr.
	code, out, errs = kiln(t, p.URL, "body", "invoke", "fn", "--data-file", "-")
	if code != 1 || out != "" || !strings.Contains(errs, `"error": "no node has capacity`) {
		t.Fatalf("invoke without an agent: %d %q %q", code, out, errs)
	}
	if code, _, errs := kiln(t, p.URL, "", "invoke", "fn", "-d", "x", "--data-file", "y"); code != 2 || !strings.Contains(errs, "not both") {
		t.Fatalf("invoke with -d and --data-file: %d %q", code, errs)
	}
	if code, _, errs := kiln(t, p.URL, "", "list", "-o", "yaml"); code != 2 || !strings.Contains(errs, "table or json") {
		t.Fatalf("list -o yaml: %d %q", code, errs)
	}

	// Restart on the same data directory: the registry and images survive.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = up(t, data, prog)
	defer p.Close()
	code, out, _ = kiln(t, p.URL, "", "list", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &fs) != nil || len(fs) != 1 || fs[0].Name != "fn" {
		t.Fatalf("after restart list: %d %q", code, out)
	}
	resp, err := http.Get(p.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz after restart: %v %v", resp, err)
	}
	resp.Body.Close()
}

func regexpLine(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(fields) && strings.Join(f[:len(fields)], " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

func TestCLIGatewayUnreachable(t *testing.T) {
	addr := testnet.FreeAddr(t) // nothing listens there
	code, _, errs := kiln(t, "http://"+addr, "", "list")
	if code != 1 || !strings.Contains(errs, "cannot reach the Kiln gateway at http://"+addr+": is `kiln up` running?") {
		t.Fatalf("unreachable gateway: %d %q", code, errs)
	}
	t.Setenv("KILN_SERVER", addr)
	var out, errb bytes.Buffer
	if code := cli.Main(context.Background(), []string{"list"}, strings.NewReader(""), &out, &errb); code != 1 || !strings.Contains(errb.String(), "http://"+addr) {
		t.Fatalf("$KILN_SERVER not used: %d %q", code, errb.String())
	}
}

func TestUpRefusesABusyDataDir(t *testing.T) {
	prog := staticProgram(t)
	data := t.TempDir()
	p := up(t, data, prog)
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := platform.Up(ctx, platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0", KernelPath: prog, NoAgent: true})
	if err == nil || !strings.Contains(err.Error(), "another `kiln up`") {
		t.Fatalf("second Up on the same data dir: %v", err)
	}
}
