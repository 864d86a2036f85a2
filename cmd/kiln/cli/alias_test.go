package cli_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/cctest"
	"github.com/kilnfaas/kiln/store/registry"
)

// aliasProgram is any static ELF: deploys need one, nothing runs it here.
func aliasProgram(t *testing.T) string {
	t.Helper()
	return cctest.Build(t, "gcc", "int main(void){return 0;}\n", "-static", "-s")
}

// kiln versions / alias / rollback as a user runs them, against a real
// platform (`kiln up` without an agent: nothing is invoked).
func TestVersionsAliasRollbackAgainstPlatform(t *testing.T) {
	prog := aliasProgram(t)
	t.Setenv("KILN_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	p, err := platform.Up(context.Background(), platform.Config{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", NoAgent: true, KernelPath: prog})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	k := func(args ...string) result { return kiln(t, nil, append([]string{"--server", p.URL}, args...)...) }
	for i := 0; i < 4; i++ {
		if r := k("deploy", "web", "--binary", prog, "--kind", "exec"); r.code != 0 {
			t.Fatalf("deploy: %+v", r)
		}
	}

	if r := k("alias", "web", "prod", "3"); r.code != 0 || r.out != "web@prod → v3\n" {
		t.Fatalf("alias web prod 3: %+v", r)
	}
	r := k("alias", "web", "prod", "3:90", "4:10")
	if r.code != 0 || !strings.HasPrefix(r.out, "web@prod → v3 90%, v4 10%\n  before: v3  (kiln rollback web --alias prod goes back to it)") {
		t.Fatalf("alias web prod 3:90 4:10: %+v", r)
	}
	r = k("alias", "web")
	if r.code != 0 || !regexp.MustCompile(`(?m)^latest\s+v4\s+-$`).MatchString(r.out) ||
		!regexp.MustCompile(`(?m)^prod\s+v3 90%, v4 10%\s+v3$`).MatchString(r.out) {
		t.Fatalf("alias web (list): %+v", r)
	}
	r = k("versions", "web")
	if r.code != 0 || !regexp.MustCompile(`(?m)^3\s+exec\s.*prod \(90%\)$`).MatchString(r.out) ||
		!regexp.MustCompile(`(?m)^4\s+exec\s.*latest, prod \(10%\)$`).MatchString(r.out) ||
		!regexp.MustCompile(`(?m)^1\s+exec\s.*\d\d:\d\d:\d\d\s*$`).MatchString(r.out) {
		t.Fatalf("versions web: %+v", r)
	}
	r = k("versions", "web", "-o", "json")
	var vl gateway.VersionList
	if err := json.Unmarshal([]byte(r.out), &vl); r.code != 0 || err != nil || len(vl.Versions) != 4 || len(vl.Aliases) != 2 {
		t.Fatalf("versions -o json: %+v (%v)", r, err)
	}

	// Mistakes on the command line exit 2 with the usage; mistakes the
	// gateway finds exit 1 with its sentence; neither changes prod.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"alias", "web", "prod", "x"}, 2, "the version must be a number"},
		{[]string{"alias", "web", "prod", "3:ninety", "4:10"}, 2, "whole percentage"},
		{[]string{"alias", "web", "prod", "3:90", "4"}, 2, "weight on both versions"},
		{[]string{"alias", "web", "prod", "3", "--delete"}, 2, "--delete takes NAME and ALIAS only"},
		{[]string{"alias", "web", "prod", "3:60", "4:60"}, 1, "together 100"},
		{[]string{"alias", "web", "prod", "9"}, 1, "404 Not Found: registry: not found: web has no version 9"},
		{[]string{"alias", "web", "latest", "1"}, 1, "409 Conflict"},
		{[]string{"alias", "nope", "prod", "1"}, 1, "function nope"},
		{[]string{"versions", "nope"}, 1, "kiln list"},
		{[]string{"versions", "web", "-o", "yaml"}, 2, "use table or json"},
		{[]string{"rollback", "web", "--alias", "latest"}, 1, "point another alias"},
		{[]string{"rollback", "web", "--alias", "beta"}, 1, `no alias "beta"`},
	} {
		r := k(tc.args...)
		if r.code != tc.code || !strings.Contains(r.err, tc.want) {
			t.Errorf("kiln %v: exit %d, stderr %q; want exit %d and %q", tc.args, r.code, r.err, tc.code, tc.want)
		}
	}
	r = k("alias", "web", "prod", "-o", "json")
	var al registry.Alias
	if err := json.Unmarshal([]byte(r.out), &al); r.code != 0 || err != nil || registry.FormatTargets(al.Targets) != "3:90,4:10" || registry.FormatHistory(al.History) != "3" {
		t.Fatalf("prod after refused changes: %+v", r)
	}

	if r := k("rollback", "web"); r.code != 0 || r.out != "rolled back: web@prod → v3\n" {
		t.Fatalf("rollback web: %+v", r)
	}
	if r := k("rollback", "web"); r.code != 1 || !strings.Contains(r.err, "nothing to roll back to") {
		t.Fatalf("second rollback: %+v", r)
	}
	if r := k("alias", "web", "prod", "--delete"); r.code != 0 || !strings.Contains(r.out, "deleted alias prod of web") {
		t.Fatalf("delete: %+v", r)
	}
	if r := k("alias", "web", "prod"); r.code != 1 || !strings.Contains(r.err, `no alias "prod"`) {
		t.Fatalf("show a deleted alias: %+v", r)
	}
}
