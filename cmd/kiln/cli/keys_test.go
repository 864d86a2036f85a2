package cli_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/cctest"
	"github.com/kilnfaas/kiln/store/apikeys"
)

// staticC builds a small static C program (gcc), deployed by the test and
// also the stand-in guest kernel: nothing boots here.
func staticC(t *testing.T) string {
	t.Helper()
	return cctest.Build(t, "gcc", "int main(void){return 0;}\n", "-static", "-s")
}

// kiln keys create/list/revoke/generate, the key sources (flag, env,
// config file) and the deploy limit flags, against a real platform.
func TestKeysAgainstPlatform(t *testing.T) {
	prog := staticC(t)
	cfgPath := filepath.Join(t.TempDir(), "kiln", "config.yaml")
	t.Setenv("KILN_CONFIG", cfgPath)
	t.Setenv("KILN_API_KEY", "")
	t.Setenv("KILN_SERVER", "")
	data := t.TempDir()
	p, err := platform.Up(context.Background(), platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0", NoAgent: true, KernelPath: prog})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Close() }()
	if !p.NoKeys {
		t.Fatal("a fresh platform reports keys")
	}
	k := func(args ...string) result { return kiln(t, nil, append([]string{"--server", p.URL}, args...)...) }

	if r := k("keys", "list"); r.code != 0 || !strings.Contains(r.out, "no API keys") {
		t.Fatalf("keys list on a fresh platform: %+v", r)
	}
	r := k("keys", "create", "admin", "--save")
	keyRE := regexp.MustCompile(`^kiln_[a-z2-7]{52}\n$`)
	if r.code != 0 || !keyRE.MatchString(r.out) || !strings.Contains(r.err, "saved in "+cfgPath) {
		t.Fatalf("keys create admin --save: %+v", r)
	}
	admin := strings.TrimSpace(r.out)
	if st, err := os.Stat(cfgPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v; want mode 0600", st, err)
	}
	// From now on a key is needed; the saved one is sent by itself.
	if r := kiln(t, nil, "--server", p.URL, "--api-key", "", "list"); r.code != 0 {
		t.Fatalf("list with the saved key: %+v", r)
	}
	r = k("keys", "create", "ci")
	if r.code != 0 || !keyRE.MatchString(r.out) || !strings.Contains(r.err, "shown only this once") {
		t.Fatalf("keys create ci: %+v", r)
	}
	ci := strings.TrimSpace(r.out)
	r = k("--api-key", ci, "keys", "list")
	if r.code != 0 || !regexp.MustCompile(`(?m)^admin\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d{4}-`).MatchString(r.out) ||
		!regexp.MustCompile(`(?m)^ci\s+\S+ \S+\s+\d{4}-`).MatchString(r.out) || strings.Contains(r.out, admin) {
		t.Fatalf("keys list: %+v; want admin and ci with creation and last use, and no key", r)
	}
	r = k("keys", "list", "-o", "json")
	var ks []apikeys.Key
	if r.code != 0 || json.Unmarshal([]byte(r.out), &ks) != nil || len(ks) != 2 || ks[0].Name != "admin" {
		t.Fatalf("keys list -o json: %+v", r)
	}

	if r := k("keys", "revoke", "ci"); r.code != 0 || r.out != "revoked ci\n" {
		t.Fatalf("keys revoke ci: %+v", r)
	}
	for name, args := range map[string][]string{
		"revoked flag": {"--api-key", ci, "list"},
		"wrong flag":   {"--api-key", "kiln_nope", "keys", "list"},
	} {
		if r := k(args...); r.code != 1 || !strings.Contains(r.err, "401 Unauthorized") || !strings.Contains(r.err, "kiln keys create") {
			t.Errorf("%s: %+v; want exit 1 with the gateway's 401 sentence", name, r)
		}
	}
	t.Setenv("KILN_API_KEY", ci) // the environment beats the config file
	if r := k("list"); r.code != 1 || !strings.Contains(r.err, "401") {
		t.Fatalf("revoked key in $KILN_API_KEY: %+v", r)
	}
	t.Setenv("KILN_API_KEY", "")
	if r := k("keys", "revoke", "ci"); r.code != 1 || !strings.Contains(r.err, "404") {
		t.Fatalf("revoking twice: %+v", r)
	}
	if r := k("keys", "create", "Bad_Name"); r.code != 1 || !strings.Contains(r.err, "400 Bad Request") {
		t.Fatalf("keys create Bad_Name: %+v", r)
	}

	// Deploy flags for access and limits.
	r = k("deploy", "fn", "--binary", prog, "--private", "--max-concurrency", "2", "--rate", "600/m", "--burst", "20", "--max-body", "1K")
	if r.code != 0 || !strings.Contains(r.out, "limits: private (callers need an API key), 2 in flight, 10/s (burst 20), body up to 1024 bytes") {
		t.Fatalf("deploy with limits: %+v", r)
	}
	if r := k("deploy", "bad", "--binary", prog, "--rate", "fast"); r.code != 1 || !strings.Contains(r.err, "bad rate") {
		t.Fatalf("deploy with a bad rate: %+v", r)
	}

	// generate works without a gateway; its line is what a keys file takes.
	r = kiln(t, nil, "--server", "http://127.0.0.1:1", "keys", "generate", "ops")
	m := regexp.MustCompile(`^key:  (kiln_\S+)\nline: (ops:[0-9a-f]{64})\n$`).FindStringSubmatch(r.out)
	if r.code != 0 || m == nil {
		t.Fatalf("keys generate: %+v", r)
	}
	fk, err := apikeys.ParseFile(m[2])
	if err != nil || len(fk) != 1 || fk[0].Hash != apikeys.HashOf(m[1]) {
		t.Fatalf("generated line %q does not match its key: %v", m[2], err)
	}

	// The config file can name the server too; a broken one is named.
	os.WriteFile(cfgPath, []byte("server: "+p.URL+"\napi_key: "+admin+"\n"), 0o600)
	if r := kiln(t, nil, "list"); r.code != 0 || !strings.Contains(r.out, "fn") {
		t.Fatalf("list with server and key from the config file: %+v", r)
	}
	os.WriteFile(cfgPath, []byte("server: [\n"), 0o600)
	if r := k("list"); r.code != 1 || !strings.Contains(r.err, "config file "+cfgPath) {
		t.Fatalf("broken config file: %+v", r)
	}

	// Keys survive a restart, and the platform no longer reports none.
	p.Close()
	p, err = platform.Up(context.Background(), platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0", NoAgent: true, KernelPath: prog})
	if err != nil {
		t.Fatal(err)
	}
	if p.NoKeys {
		t.Fatal("after a restart with keys the platform reports none")
	}
	if r := k("--api-key", admin, "keys", "list"); r.code != 0 || !strings.Contains(r.out, "admin") {
		t.Fatalf("after restart: %+v", r)
	}
}
