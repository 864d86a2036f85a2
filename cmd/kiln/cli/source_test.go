package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
)

// These tests drive the kiln command line as a user does (cli.Main with
// the standard streams as buffers), with the real compilers and, for
// deploy, a real gateway; nothing here needs KVM.

type result struct {
	code     int
	out, err string
}

func kiln(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), args, bytes.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// serveLocal runs a serve program with `kiln run --local`, sends it reqs
// and returns its responses, checking that it exits 0 at end of input.
func serveLocal(t *testing.T, program string, reqs ...*wire.Request) []*wire.Response {
	t.Helper()
	var in bytes.Buffer
	for _, r := range reqs {
		if err := wire.WriteRequest(&in, r); err != nil {
			t.Fatal(err)
		}
	}
	r := kiln(t, in.Bytes(), "run", "--local", "--timeout", "1m", program)
	if r.code != 0 {
		t.Fatalf("kiln run --local %s: exit %d, stderr:\n%s", program, r.code, r.err)
	}
	out := strings.NewReader(r.out)
	var resps []*wire.Response
	for _, req := range reqs {
		resp, err := wire.ReadResponse(out, 0)
		if err != nil {
			t.Fatalf("response to request %d: %v", req.ID, err)
		}
		if resp.ID != req.ID {
			t.Fatalf("response id %d, want %d", resp.ID, req.ID)
		}
		resps = append(resps, resp)
	}
	if out.Len() != 0 {
		t.Fatalf("%d bytes after the last response", out.Len())
	}
	return resps
}

func post(id uint64, body string) *wire.Request {
	return &wire.Request{ID: id, Method: "POST", Path: "/", Body: []byte(body)}
}

// kilnBuild builds dir with `kiln build` and returns the program's path.
func kilnBuild(t *testing.T, dir string) string {
	t.Helper()
	prog := filepath.Join(t.TempDir(), filepath.Base(dir))
	r := kiln(t, nil, "build", dir, "-o", prog)
	if r.code != 0 || !strings.Contains(r.out, "built "+prog) {
		t.Fatalf("kiln build %s: exit %d\nstdout %s\nstderr %s", dir, r.code, r.out, r.err)
	}
	return prog
}

func TestRunLocalHelloGo(t *testing.T) {
	prog := kilnBuild(t, filepath.Join("..", "..", "..", "examples", "hello-go"))
	resps := serveLocal(t, prog, post(1, "world"), post(2, ""), post(3, "again"))
	for i, want := range []string{"hello, world", "hello, world", "hello, again"} {
		if resps[i].Status != 200 || string(resps[i].Body) != want {
			t.Errorf("call %d: %d %q, want 200 %q", i+1, resps[i].Status, resps[i].Body, want)
		}
	}
}

func TestRunLocalExitStatuses(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modes.c"), []byte(`#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv, char **envp)
{
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "exit3")) return 3;
    if (!strcmp(m, "segv")) return *(volatile int *)0;
    if (!strcmp(m, "sleep")) { sleep(60); return 0; }
    if (!strcmp(m, "cat")) { int c; while ((c = getchar()) != EOF) putchar(c); return 0; }
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = envp; *e; e++) printf("env %s\n", *e);
    return 0;
}
`), 0o644)
	prog := kilnBuild(t, dir)
	if r := kiln(t, nil, "run", "--local", prog, "exit3"); r.code != 3 {
		t.Errorf("exit3: %d %q", r.code, r.err)
	}
	if r := kiln(t, nil, "run", "--local", prog, "segv"); r.code != 139 || !strings.Contains(r.err, "SIGSEGV") {
		t.Errorf("segv: exit %d, stderr %q; want 139 and SIGSEGV", r.code, r.err)
	}
	start := time.Now()
	if r := kiln(t, nil, "run", "--local", "--timeout", "200ms", prog, "sleep"); r.code != 124 {
		t.Errorf("sleep with --timeout: exit %d %q, want 124", r.code, r.err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("--timeout 200ms took %v", d)
	}
	if r := kiln(t, []byte("piped\n"), "run", "--local", prog, "cat"); r.code != 0 || r.out != "piped\n" {
		t.Errorf("cat: %d %q", r.code, r.out)
	}
	r := kiln(t, nil, "run", "--local", "--env", "A=1", "--env", "B=two", prog, "x", "--not-a-kiln-flag")
	want := "argv[0]=" + prog + "\nargv[1]=x\nargv[2]=--not-a-kiln-flag\nenv A=1\nenv B=two\n"
	if r.code != 0 || r.out != want {
		t.Errorf("args and env: exit %d\n%s\nwant\n%s", r.code, r.out, want)
	}
	if r := kiln(t, nil, "run", "--local", filepath.Join(dir, "modes.c")); r.code != 125 || !strings.Contains(r.err, "not an ELF") {
		t.Errorf("a C file: exit %d %q, want 125 and the builder's sentence", r.code, r.err)
	}
}

func TestNewStartersBuildAndServe(t *testing.T) {
	t.Setenv("GOPROXY", "off") // the starter needs nothing from the network
	for _, lang := range []string{"go", "c"} {
		t.Run(lang, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "greeter-"+lang)
			r := kiln(t, nil, "new", dir, "--lang", lang)
			if r.code != 0 || !strings.Contains(r.out, "kiln deploy greeter-"+lang) {
				t.Fatalf("kiln new: exit %d %q %q", r.code, r.out, r.err)
			}
			prog := kilnBuild(t, dir)
			resps := serveLocal(t, prog, post(1, "kiln"), post(2, ""))
			if string(resps[0].Body) != "hello, kiln\n" || string(resps[1].Body) != "hello, world\n" {
				t.Fatalf("starter answered %q, %q", resps[0].Body, resps[1].Body)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	root := t.TempDir()
	existing := filepath.Join(root, "taken")
	os.Mkdir(existing, 0o755)
	os.WriteFile(filepath.Join(existing, "main.go"), []byte("mine"), 0o644)
	if r := kiln(t, nil, "new", existing, "--lang", "go"); r.code != 1 || !strings.Contains(r.err, "already exists") {
		t.Errorf("existing dir: exit %d %q", r.code, r.err)
	}
	if b, _ := os.ReadFile(filepath.Join(existing, "main.go")); string(b) != "mine" {
		t.Errorf("kiln new overwrote main.go: %q", b)
	}
	if r := kiln(t, nil, "new", filepath.Join(root, "x"), "--lang", "rust"); r.code != 2 || !strings.Contains(r.err, "choose go or c") {
		t.Errorf("--lang rust: exit %d %q", r.code, r.err)
	}
	if r := kiln(t, nil, "new", filepath.Join(root, "Bad_Name"), "--lang", "go"); r.code != 2 || !strings.Contains(r.err, "a-z") {
		t.Errorf("bad name: exit %d %q", r.code, r.err)
	}
	if _, err := os.Stat(filepath.Join(root, "x")); err == nil {
		t.Error("a refused kiln new left a directory behind")
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module broken\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { undefinedThing() }\n"), 0o644)
	r := kiln(t, nil, "build", dir, "-o", filepath.Join(t.TempDir(), "out"))
	if r.code != 1 || !strings.Contains(r.err, "main.go:3:15: undefined: undefinedThing") {
		t.Errorf("broken Go: exit %d, stderr:\n%s", r.code, r.err)
	}
	if r := kiln(t, nil, "build", t.TempDir()); r.code != 1 || !strings.Contains(r.err, "neither a go.mod") {
		t.Errorf("empty dir: exit %d %q", r.code, r.err)
	}
}

// TestDeploySourceDir deploys source directories to a real gateway (no
// node-agent is needed to store a function).
func TestDeploySourceDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The gateway packs every image with the guest kernel, so it needs a
	// built one even though nothing boots here.
	kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	kernel := filepath.Join(kvmtest.BuildDir(t), "kernel", "kiln-kernel.elf")
	p, err := platform.Up(ctx, platform.Config{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", NoAgent: true, KernelPath: kernel})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	examples := filepath.Join("..", "..", "..", "examples")

	r := kiln(t, nil, "--server", p.URL, "deploy", "sha", filepath.Join(examples, "sha256"))
	if r.code != 0 || !strings.Contains(r.out, "deployed sha version 1 (serve") {
		t.Fatalf("deploy sha: exit %d\n%s\n%s", r.code, r.out, r.err)
	}
	if !strings.Contains(r.err, "go build") {
		t.Errorf("no build progress on stderr: %q", r.err)
	}
	r = kiln(t, nil, "--server", p.URL, "deploy", "wc", filepath.Join(examples, "wordcount-exec"), "--kind", "exec")
	if r.code != 0 || !strings.Contains(r.out, "deployed wc version 1 (exec") {
		t.Fatalf("deploy wc: exit %d\n%s\n%s", r.code, r.out, r.err)
	}
	// --binary keeps working, and so does a program named in place of a
	// directory.
	prog := kilnBuild(t, filepath.Join(examples, "hello-c"))
	for i, args := range [][]string{{"--binary", prog}, {prog}} {
		r = kiln(t, nil, append([]string{"--server", p.URL, "deploy", "hello"}, args...)...)
		if want := "deployed hello version " + string(rune('1'+i)); r.code != 0 || !strings.Contains(r.out, want) {
			t.Fatalf("deploy hello %v: exit %d %q %q, want %q", args, r.code, r.out, r.err, want)
		}
	}

	broken := t.TempDir()
	os.WriteFile(filepath.Join(broken, "main.c"), []byte("int main(void) { return x; }\n"), 0o644)
	r = kiln(t, nil, "--server", p.URL, "deploy", "broken", broken)
	if r.code != 1 || !strings.Contains(r.err, "main.c:1") || !strings.Contains(r.err, "undeclared") {
		t.Fatalf("deploy of broken C: exit %d\n%s", r.code, r.err)
	}
	if r := kiln(t, nil, "--server", p.URL, "deploy", "both", broken, "--binary", prog); r.code != 2 {
		t.Errorf("dir and --binary: exit %d %q", r.code, r.err)
	}
	if r := kiln(t, nil, "--server", p.URL, "deploy", "none"); r.code != 2 || !strings.Contains(r.err, "source directory") {
		t.Errorf("neither: exit %d %q", r.code, r.err)
	}
	list := kiln(t, nil, "--server", p.URL, "list")
	if !strings.Contains(list.out, "sha") || !strings.Contains(list.out, "wc") || strings.Contains(list.out, "broken") {
		t.Errorf("kiln list after the deploys:\n%s", list.out)
	}
}
