package cli_test

import (
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/cctest"
	"github.com/kilnfaas/kiln/internal/teststack"
)

// cluster runs the three roles in this process on real parts — redis-server,
// a NATS JetStream server, the scheduler's and agent's gRPC — with the
// agent's process runtime (no KVM here), and returns the gateway's URL.
func cluster(t *testing.T, kernel string) string {
	t.Helper()
	return teststack.StartRoles(t, teststack.RolesOptions{KernelPath: kernel}).Gateway.HTTPURL
}

// echoProgram is a static exec function: stdin to stdout, a line on stderr,
// exit status 3 when the input is "fail".
func echoProgram(t *testing.T) string {
	t.Helper()
	return cctest.Build(t, "gcc", `#include <stdio.h>
#include <string.h>
int main(void) {
    char buf[4096]; size_t n = fread(buf, 1, sizeof buf, stdin);
    fprintf(stderr, "got %zu bytes\n", n);
    if (n == 4 && memcmp(buf, "fail", 4) == 0) return 3;
    fwrite(buf, 1, n, stdout);
    return 0;
}
`, "-static", "-O2")
}

// kiln invoke -o json against a real cluster: one document with status,
// headers, body (base64 when binary), invocation id, start kind, node and
// version; a failing call prints it too and exits 1.
func TestInvokeJSONAgainstCluster(t *testing.T) {
	prog := echoProgram(t)
	t.Setenv("KILN_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	t.Setenv("KILN_SERVER", cluster(t, prog))
	if r := kiln(t, nil, "deploy", "echo", "--binary", prog, "--kind", "exec"); r.code != 0 {
		t.Fatalf("deploy: %+v", r)
	}
	var r result
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// The agent joins the scheduler a moment after it starts.
		if r = kiln(t, nil, "invoke", "echo", "-d", "hello", "-o", "json"); r.code == 0 || time.Now().After(end) {
			break
		}
	}
	var inv cli.Invocation
	if err := json.Unmarshal([]byte(r.out), &inv); r.code != 0 || err != nil {
		t.Fatalf("invoke -o json: %+v (%v)", r, err)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	if inv.Status != 200 || inv.Body != "hello" || inv.BodyEncoding != "utf-8" || !uuid.MatchString(inv.InvocationID) ||
		inv.Start == "" || inv.Node != "n1" || inv.Version != 1 || len(inv.Headers["X-Kiln-Invocation-Id"]) != 1 {
		t.Errorf("invoke -o json: %+v", inv)
	}
	if n := strings.Count(strings.TrimSpace(r.out), "\n}"); n != 1 || !strings.HasSuffix(r.out, "}\n") {
		t.Errorf("invoke -o json printed more than one document:\n%s", r.out)
	}

	// Bytes that are not UTF-8 travel as base64.
	bin := []byte{0xff, 0xfe, 0x00, 'k'}
	r = kiln(t, bin, "invoke", "echo", "--data-file", "-", "-o", "json")
	inv = cli.Invocation{}
	if err := json.Unmarshal([]byte(r.out), &inv); r.code != 0 || err != nil || inv.BodyEncoding != "base64" || inv.Body != base64.StdEncoding.EncodeToString(bin) {
		t.Errorf("binary body: %+v %+v (%v)", r, inv, err)
	}

	// A failed call: still one document on stdout, exit 1.
	r = kiln(t, nil, "invoke", "echo@1", "-d", "fail", "-o", "json")
	inv = cli.Invocation{}
	if err := json.Unmarshal([]byte(r.out), &inv); r.code != 1 || err != nil || inv.Status/100 != 5 || inv.InvocationID == "" || inv.Version != 1 ||
		!strings.Contains(inv.Body, `"error"`) {
		t.Errorf("failing call -o json: %+v %+v (%v)", r, inv, err)
	}
	r = kiln(t, nil, "invoke", "nope", "-o", "json")
	inv = cli.Invocation{}
	if err := json.Unmarshal([]byte(r.out), &inv); r.code != 1 || err != nil || inv.Status != 404 || inv.Version != 0 || !strings.Contains(inv.Body, "kiln list") {
		t.Errorf("unknown function -o json: %+v %+v (%v)", r, inv, err)
	}
	// The table (default) output is the body itself, as before.
	if r := kiln(t, nil, "invoke", "echo", "-d", "plain"); r.code != 0 || r.out != "plain" {
		t.Errorf("invoke (table): %+v", r)
	}
	if r := kiln(t, nil, "invoke", "echo", "-o", "xml"); r.code != 2 || !strings.Contains(r.err, "use table or json") {
		t.Errorf("invoke -o xml: %+v", r)
	}
}
