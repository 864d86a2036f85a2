package cli_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	"github.com/kilnfaas/kiln/store/registry"
)

// upNoAgent starts a real platform without a node-agent (nothing is
// invoked) and returns a kiln runner pointed at it.
func upNoAgent(t *testing.T, prog string) (*platform.Platform, func(args ...string) result) {
	t.Helper()
	t.Setenv("KILN_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	t.Setenv("KILN_SERVER", "")
	p, err := platform.Up(context.Background(), platform.Config{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", NoAgent: true, KernelPath: prog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, func(args ...string) result { return kiln(t, nil, append([]string{"--server", p.URL}, args...)...) }
}

// kiln describe shows every setting a deploy made, masks secrets in both
// outputs, follows aliases, and says what to do for a missing function.
func TestDescribeAgainstPlatform(t *testing.T) {
	prog := staticC(t)
	_, k := upNoAgent(t, prog)
	if r := k("deploy", "web", "--binary", prog, "--kind", "exec"); r.code != 0 {
		t.Fatalf("deploy 1: %+v", r)
	}
	r := k("deploy", "web", "--binary", prog, "--kind", "serve", "--mem", "128M", "--timeout", "3s",
		"--env", "LANG=C", "--env", "API_TOKEN=hunter2", "--env", "DATABASE_URL=postgres://app:s3cret@db:5432/x",
		"--arg", "-v", "--private", "--max-concurrency", "4", "--rate", "10/s",
		"--min-warm", "2", "--max-instances", "5", "--keep-alive", "45s", "--deadline", "50ms", "--target", "99.9", "--async-retries", "5")
	if r.code != 0 {
		t.Fatalf("deploy 2: %+v", r)
	}
	if r := k("alias", "web", "prod", "1:90", "2:10"); r.code != 0 {
		t.Fatalf("alias: %+v", r)
	}

	r = k("describe", "web")
	if r.code != 0 {
		t.Fatalf("describe web: %+v", r)
	}
	for _, re := range []string{
		`(?m)^Name:\s+web$`, `(?m)^Version:\s+2 \(latest\)$`, `(?m)^Kind:\s+serve$`, `(?m)^Image:\s+sha256:[0-9a-f]{64}$`,
		`(?m)^Memory:\s+128 MiB$`, `(?m)^Timeout:\s+3s$`, `(?m)^Args:\s+-v$`,
		`(?m)^Env:\s+LANG=C$`, `(?m)^\s+API_TOKEN=\*{8}$`, `(?m)^\s+DATABASE_URL=postgres://app:\*{8}@db:5432/x$`,
		`(?m)^Limits:\s+private \(callers need an API key\), 4 in flight, 10/s$`, `(?m)^Async retries:\s+5$`,
		`(?m)^Scaling:\s+min_warm 2, max_instances 5 per node, keep_alive 45s$`,
		`(?m)^SLA:\s+99.9% of calls within 50ms$`, `(?m)^Versions:\s+2 \(first deployed \d{4}-`,
		`(?m)^  latest\s+→ v2$`, `(?m)^  prod\s+→ v1 90%, v2 10%$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.out) {
			t.Errorf("describe web: no line matching %s in\n%s", re, r.out)
		}
	}
	if strings.Contains(r.out, "hunter2") || strings.Contains(r.out, "s3cret") {
		t.Errorf("describe shows a secret:\n%s", r.out)
	}

	r = k("describe", "web@prod", "-o", "json")
	var d cli.Description
	if err := json.Unmarshal([]byte(r.out), &d); r.code != 0 || err != nil {
		t.Fatalf("describe web@prod -o json: %+v (%v)", r, err)
	}
	if d.Version != 1 || d.Kind != "exec" || d.Ref != "prod" || registry.FormatTargets(d.Route) != "1:90,2:10" ||
		d.VersionCount != 2 || len(d.Aliases) != 2 || d.AsyncRetries != registry.DefaultAsyncRetries || d.Created.IsZero() ||
		d.FirstDeployed.IsZero() || d.Env == nil || d.SLA.DeadlineMs != 0 {
		t.Errorf("describe web@prod -o json: %+v", d)
	}
	if r := k("describe", "web@prod"); !regexp.MustCompile(`(?m)^Version:\s+1 \(web@prod → v1 90%, v2 10%\)$`).MatchString(r.out) ||
		!regexp.MustCompile(`(?m)^SLA:\s+none`).MatchString(r.out) {
		t.Errorf("describe web@prod: %+v", r)
	}
	r = k("describe", "web@2", "-o", "json")
	d = cli.Description{}
	if err := json.Unmarshal([]byte(r.out), &d); err != nil || d.Version != 2 || strings.Join(d.Env, " ") != "LANG=C API_TOKEN=******** DATABASE_URL=postgres://app:********@db:5432/x" ||
		d.Scaling.MinWarm != 2 || d.Scaling.MaxInstances != 5 || d.Scaling.KeepAliveMs != 45000 || d.SLA.DeadlineMs != 50 || d.SLA.Target != 0.999 ||
		!d.Limits.Private || d.Limits.MaxConcurrency != 4 || d.AsyncRetries != 5 || strings.Join(d.Args, " ") != "-v" {
		t.Errorf("describe web@2 -o json: %+v (%v)\n%s", d, err, r.out)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"describe", "nope"}, 1, "kiln list"},
		{[]string{"describe", "web@beta"}, 1, `404 Not Found`},
		{[]string{"describe", "web@9"}, 1, "404 Not Found"},
		{[]string{"describe", "web@"}, 2, "names nothing after '@'"},
		{[]string{"describe", "Bad_Name"}, 2, "kiln list"},
		{[]string{"describe", "web", "-o", "yaml"}, 2, "use table or json"},
		{[]string{"describe"}, 2, "usage: kiln describe"},
	} {
		r := k(tc.args...)
		if r.code != tc.code || !strings.Contains(r.err, tc.want) {
			t.Errorf("kiln %v: exit %d, stderr %q; want exit %d and %q", tc.args, r.code, r.err, tc.code, tc.want)
		}
	}
}

// kiln delete refuses without a terminal unless --yes, deletes with it,
// and a second delete says the function is gone and where to look.
func TestDeleteAgainstPlatform(t *testing.T) {
	prog := staticC(t)
	_, k := upNoAgent(t, prog)
	if r := k("deploy", "web", "--binary", prog); r.code != 0 {
		t.Fatalf("deploy: %+v", r)
	}
	if r := k("delete", "web"); r.code != 2 || !strings.Contains(r.err, "pass --yes") {
		t.Fatalf("delete without a terminal or --yes: %+v", r)
	}
	if r := k("describe", "web"); r.code != 0 {
		t.Fatalf("web gone after a refused delete: %+v", r)
	}
	if r := k("delete", "web@prod", "--yes"); r.code != 2 || !strings.Contains(r.err, "kiln alias NAME ALIAS --delete") {
		t.Fatalf("delete NAME@ALIAS: %+v", r)
	}
	if r := k("delete", "web", "--yes", "-o", "json"); r.code != 0 || strings.TrimSpace(r.out) != "{\n  \"deleted\": true,\n  \"function\": \"web\"\n}" {
		t.Fatalf("delete --yes -o json: %+v", r)
	}
	if r := k("describe", "web"); r.code != 1 || !strings.Contains(r.err, "404") {
		t.Fatalf("describe after delete: %+v", r)
	}
	if r := k("delete", "web", "--yes"); r.code != 1 || !strings.Contains(r.err, "404 Not Found") || !strings.Contains(r.err, "kiln list") {
		t.Fatalf("second delete: %+v", r)
	}
	if r := k("deploy", "web", "--binary", prog); r.code != 0 {
		t.Fatalf("redeploy: %+v", r)
	}
	if r := k("delete", "web", "-y"); r.code != 0 || r.out != "deleted web: calls to it now answer 404\n" {
		t.Fatalf("delete -y: %+v", r)
	}
}

// Errors name the fix: the URL tried and where it came from, how to send
// a key.
func TestErrorsSayWhatToDo(t *testing.T) {
	dead := "http://" + testnet.FreeAddr(t) // nothing listens there
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	t.Setenv("KILN_CONFIG", cfg)
	t.Setenv("KILN_API_KEY", "")
	t.Setenv("KILN_SERVER", "")
	r := kiln(t, nil, "--server", dead, "describe", "web")
	for _, want := range []string{"cannot reach the Kiln gateway at " + dead + ": is `kiln up` running?", "URL from --server", "$KILN_SERVER", cfg} {
		if r.code != 1 || !strings.Contains(r.err, want) {
			t.Errorf("unreachable via --server: exit %d, stderr %q lacks %q", r.code, r.err, want)
		}
	}
	t.Setenv("KILN_SERVER", dead)
	if r := kiln(t, nil, "list"); r.code != 1 || !strings.Contains(r.err, "URL from $KILN_SERVER") {
		t.Errorf("unreachable via $KILN_SERVER: %+v", r)
	}

	prog := staticC(t)
	p, k := upNoAgent(t, prog)
	if r := k("deploy", "web", "--binary", filepath.Join(t.TempDir(), "missing")); r.code != 1 || !strings.Contains(r.err, "no such file") ||
		!strings.Contains(r.err, "`kiln build DIR -o FILE` builds one") {
		t.Errorf("deploy of a missing program: %+v", r)
	}
	if r := k("keys", "create", "admin"); r.code != 0 {
		t.Fatalf("keys create: %+v", r)
	}
	r = kiln(t, nil, "--server", p.URL, "--api-key", "kiln_wrong", "describe", "web")
	if r.code != 1 || !strings.Contains(r.err, "401 Unauthorized") || !strings.Contains(r.err, "(the key sent was refused; this CLI sends the key from --api-key, else $KILN_API_KEY, else `api_key:` in") {
		t.Errorf("401 with a wrong key: %+v", r)
	}
	// Once a key exists, the management API wants one from every caller.
	r = k("describe", "web")
	if r.code != 1 || !strings.Contains(r.err, "401 Unauthorized") || !strings.Contains(r.err, "(no key was sent;") {
		t.Errorf("401 without a key: %+v", r)
	}
}
