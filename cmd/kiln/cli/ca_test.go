package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/internal/rolecert"
)

// `kiln ca init` and `kiln ca issue` make what the roles load: a CA with
// an owner-only key, and certificates naming each role.
func TestCACommands(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		c := cli.Main(context.Background(), append([]string{"ca"}, args...), strings.NewReader(""), &out, &errb)
		return c, out.String(), errb.String()
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if code, out, errs := run("init", "--dir", dir); code != 0 || !strings.Contains(out, "ca.crt") {
		t.Fatalf("ca init: %d %s %s", code, out, errs)
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key: %v %v", fi.Mode(), err)
	}
	if code, _, errs := run("init", "--dir", dir); code != 1 || !strings.Contains(errs, "a CA exists there already") {
		t.Fatalf("ca init twice: %d %s", code, errs)
	}
	for _, tc := range []struct {
		args []string
		want rolecert.Identity
	}{
		{[]string{"--role", "scheduler", "--host", "scheduler,10.0.0.2"}, rolecert.Identity{Role: "scheduler"}},
		{[]string{"--role", "gateway"}, rolecert.Identity{Role: "gateway"}},
		{[]string{"--role", "agent", "--node", "node1"}, rolecert.Identity{Role: "agent", Node: "node1"}},
	} {
		code, out, errs := run(append([]string{"issue", "--dir", dir}, tc.args...)...)
		if code != 0 || !strings.Contains(out, "--tls-cert") {
			t.Fatalf("ca issue %v: %d %s %s", tc.args, code, out, errs)
		}
		cert, key := rolecert.CertFiles(dir, tc.want)
		c, err := rolecert.Load(rolecert.Files{CA: filepath.Join(dir, "ca.crt"), Cert: cert, Key: key})
		if err != nil || c.Identity != tc.want {
			t.Fatalf("ca issue %v: loads as %v, %v", tc.args, c, err)
		}
	}
	// --out: the role's files and the CA's certificate, not its key.
	out := filepath.Join(t.TempDir(), "agent2")
	if code, _, errs := run("issue", "--dir", dir, "--role", "agent", "--node", "agent2", "--out", out); code != 0 {
		t.Fatalf("ca issue --out: %d %s", code, errs)
	}
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "agent-agent2.crt agent-agent2.key ca.crt" {
		t.Fatalf("ca issue --out wrote %v", names)
	}
	if _, err := rolecert.Load(rolecert.Files{CA: filepath.Join(out, "ca.crt"), Cert: filepath.Join(out, "agent-agent2.crt"),
		Key: filepath.Join(out, "agent-agent2.key")}); err != nil {
		t.Fatalf("the files of --out: %v", err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"issue", "--dir", dir, "--role", "agent"}, 2, "needs a node name"},
		{[]string{"issue", "--dir", dir, "--role", "root"}, 2, `role "root"`},
		{[]string{"issue", "--role", "gateway"}, 2, "--dir and --role are required"},
		{[]string{"issue", "--dir", t.TempDir(), "--role", "gateway"}, 1, "kiln ca init"},
		{[]string{"init"}, 2, "--dir is required"},
	} {
		if code, _, errs := run(tc.args...); code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("ca %v: exit %d %q; want %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}
