package cli_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/teststack/testnet"
)

// candidates is what `kiln __complete ARGS...` (what the shell scripts
// call on Tab) suggests, descriptions dropped, and its directive line.
func candidates(t *testing.T, r result) (names []string, directive string) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("__complete: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	for _, l := range lines[:len(lines)-1] {
		name, _, _ := strings.Cut(l, "\t")
		names = append(names, name)
	}
	return names, lines[len(lines)-1]
}

// The shell scripts exist for the four shells, and Tab completes function
// names, NAME@ALIAS/NAME@VERSION and alias names from the gateway.
func TestCompletion(t *testing.T) {
	for _, sh := range []struct{ shell, marker string }{
		{"bash", "__start_kiln"}, {"zsh", "#compdef kiln"}, {"fish", "complete -c kiln"}, {"powershell", "Register-ArgumentCompleter"},
	} {
		if r := kiln(t, nil, "completion", sh.shell); r.code != 0 || !strings.Contains(r.out, sh.marker) {
			t.Errorf("kiln completion %s: exit %d, no %q in %d bytes (%s)", sh.shell, r.code, sh.marker, len(r.out), r.err)
		}
	}

	prog := staticC(t)
	p, k := upNoAgent(t, prog)
	for _, name := range []string{"web", "worker", "api"} {
		if r := k("deploy", name, "--binary", prog); r.code != 0 {
			t.Fatalf("deploy %s: %+v", name, r)
		}
	}
	if r := k("deploy", "web", "--binary", prog); r.code != 0 {
		t.Fatalf("deploy web again: %+v", r)
	}
	if r := k("alias", "web", "prod", "1"); r.code != 0 {
		t.Fatalf("alias: %+v", r)
	}
	c := func(args ...string) result {
		return kiln(t, nil, append([]string{"__complete", "--server", p.URL}, args...)...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"invoke", ""}, "api web worker"},
		{[]string{"invoke", "w"}, "web worker"},
		{[]string{"invoke", "web@"}, "web@latest web@prod web@2 web@1"},
		{[]string{"invoke", "web@p"}, "web@prod"},
		{[]string{"describe", "web@1"}, "web@1"},
		{[]string{"delete", "a"}, "api"},
		{[]string{"versions", ""}, "api web worker"},
		{[]string{"rollback", "wo"}, "worker"},
		{[]string{"rollback", "web", "--alias", ""}, "latest prod"},
		{[]string{"alias", "web", ""}, "latest prod"},
		{[]string{"alias", "we"}, "web"},
		{[]string{"deploy", "ap"}, "api"},
		{[]string{"invoke", "web", ""}, ""},
		{[]string{"list", "-o", ""}, "table json"},
	} {
		names, dir := candidates(t, c(tc.args...))
		if got := strings.Join(names, " "); got != tc.want || !strings.HasPrefix(dir, ":") {
			t.Errorf("complete %q: %q (directive %s); want %q", tc.args, got, dir, tc.want)
		}
	}
	// The source directory after deploy NAME completes from the files.
	if _, dir := candidates(t, c("deploy", "web", "")); dir != ":0" {
		t.Errorf("deploy NAME <Tab>: directive %s; want :0 (file completion)", dir)
	}
}

// Completion fails silently and promptly: nothing on stderr, no
// suggestions, exit 0, whether the gateway is down, hangs, or wants a key.
func TestCompletionFailsSilently(t *testing.T) {
	t.Setenv("KILN_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	t.Setenv("KILN_SERVER", "")
	dead := testnet.FreeAddr(t) // nothing listens there
	hang := testnet.Hanging(t)  // accepts and never answers
	prog := staticC(t)
	p, k := upNoAgent(t, prog)
	if r := k("deploy", "web", "--binary", prog); r.code != 0 {
		t.Fatalf("deploy: %+v", r)
	}
	if r := k("keys", "create", "admin"); r.code != 0 { // from now on a key is needed
		t.Fatalf("keys create: %+v", r)
	}
	for what, server := range map[string]string{"down": "http://" + dead, "hanging": "http://" + hang, "401": p.URL} {
		for _, args := range [][]string{{"invoke", "w"}, {"invoke", "web@"}, {"alias", "web", ""}} {
			start := time.Now()
			r := kiln(t, nil, append([]string{"__complete", "--server", server, "--api-key", "kiln_wrong"}, args...)...)
			names, dir := candidates(t, r)
			// cobra always notes the directive on stderr (the shell
			// scripts discard it); anything else there would be ours.
			stderr := strings.TrimPrefix(r.err, "Completion ended with directive: ShellCompDirectiveNoFileComp\n")
			if len(names) != 0 || stderr != "" || dir != ":4" {
				t.Errorf("%s gateway, complete %q: %q, stderr %q, directive %s; want nothing, silently", what, args, names, r.err, dir)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("%s gateway, complete %q took %s", what, args, d)
			}
		}
	}
}
