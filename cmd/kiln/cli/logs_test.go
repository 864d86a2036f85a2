package cli_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/logstore"
)

// logsPlatform is `kiln up` with the process runtime and function "logger"
// (cmd/kiln/platform/testdata/logfn: two stderr lines per call naming the body).
func logsPlatform(t *testing.T) string {
	t.Helper()
	prog := filepath.Join(t.TempDir(), "logfn")
	build := exec.Command("go", "build", "-o", prog, "../platform/testdata/logfn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build logfn: %v\n%s", err, b)
	}
	t.Setenv("KILN_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	t.Setenv("KILN_API_KEY", "")
	// The process runtime ignores the guest kernel: any ELF stands in.
	p, err := platform.Up(context.Background(), platform.Config{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0",
		KernelPath: prog, Runtime: platform.RuntimeProcess})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if r := kiln(t, nil, "--server", p.URL, "deploy", "logger", "--binary", prog, "--kind", "exec", "--mem", "32M", "--timeout", "20s"); r.code != 0 {
		t.Fatalf("deploy: %+v", r)
	}
	return p.URL
}

// invokeLogger calls logger with body and returns the invocation id.
func invokeLogger(t *testing.T, server, body string) string {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Post(server+"/function/logger", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			return resp.Header.Get(gateway.HeaderInvocationID)
		}
		if resp.StatusCode != 503 || time.Now().After(end) {
			t.Fatalf("invoke: %d", resp.StatusCode)
		}
	}
}

// waitOutput runs kiln until its output has n lines (capture is asynchronous).
func waitOutput(t *testing.T, n int, args ...string) []string {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r := kiln(t, nil, args...)
		if r.code != 0 {
			t.Fatalf("kiln %v: %+v", args, r)
		}
		lines := strings.Split(strings.TrimSpace(r.out), "\n")
		if r.out == "" {
			lines = nil
		}
		if len(lines) >= n || time.Now().After(end) {
			return lines
		}
	}
}

func TestLogsCommand(t *testing.T) {
	server := logsPlatform(t)
	k := func(args ...string) []string { return append([]string{"--server", server}, args...) }
	one := invokeLogger(t, server, "one")
	two := invokeLogger(t, server, "two")

	lines := waitOutput(t, 4, k("logs", "logger")...)
	want := [][2]string{{one, "begin one"}, {one, "done one"}, {two, "begin two"}, {two, "done two"}}
	if len(lines) != 4 {
		t.Fatalf("kiln logs printed %q", lines)
	}
	for i, l := range lines {
		// TIME (date and clock)  INVOCATION  NODE  LINE
		f := strings.Fields(l)
		if len(f) < 6 || f[2] != want[i][0] || strings.Join(f[4:], " ") != want[i][1] {
			t.Errorf("line %d %q, want invocation %s and %q", i, l, want[i][0], want[i][1])
		}
		if _, err := time.ParseInLocation("2006-01-02 15:04:05.000", f[0]+" "+f[1], time.Local); err != nil {
			t.Errorf("line %d starts with no time: %v", i, err)
		}
	}

	if got := waitOutput(t, 2, k("logs", "logger", "--invocation", two)...); len(got) != 2 || !strings.HasSuffix(got[0], "begin two") {
		t.Errorf("--invocation: %q", got)
	}
	if got := waitOutput(t, 1, k("logs", "logger", "-n", "1")...); len(got) != 1 || !strings.HasSuffix(got[0], "done two") {
		t.Errorf("-n 1: %q", got)
	}
	if got := waitOutput(t, 4, k("logs", "logger", "--since", "1h")...); len(got) != 4 {
		t.Errorf("--since 1h: %q", got)
	}
	r := kiln(t, nil, k("logs", "logger", "-o", "json")...)
	var n int
	for _, l := range strings.Split(strings.TrimSpace(r.out), "\n") {
		var e logstore.Entry
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.Function != "logger" || e.InvocationID == "" {
			t.Errorf("-o json line %q: %v", l, err)
		}
		n++
	}
	if r.code != 0 || n != 4 {
		t.Errorf("-o json: %+v", r)
	}

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"logs", "nope"}, 1, "404"},
		{[]string{"logs", "logger", "--since", "yesterday"}, 1, "such as 10m"},
		{[]string{"logs", "logger", "-n", "0"}, 1, "from 1 to 10000"},
		{[]string{"logs", "logger", "-o", "yaml"}, 2, "table or json"},
		{[]string{"logs"}, 2, "usage"},
	} {
		if r := kiln(t, nil, k(tc.args...)...); r.code != tc.code || !strings.Contains(r.err, tc.msg) {
			t.Errorf("kiln %v: %+v, want exit %d mentioning %q", tc.args, r, tc.code, tc.msg)
		}
	}
}

// kiln logs -f prints lines as invocations end and stops cleanly when
// interrupted.
func TestLogsFollowCommand(t *testing.T) {
	server := logsPlatform(t)
	first := invokeLogger(t, server, "first")
	waitOutput(t, 2, "--server", server, "logs", "logger")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"--server", server, "logs", "logger", "-f"}, strings.NewReader(""), &out, &errb)
	}()
	waitFor := func(s string) {
		t.Helper()
		for end := time.Now().Add(15 * time.Second); !strings.Contains(out.String(), s); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("kiln logs -f printed %q (stderr %q), no %q", out.String(), errb.String(), s)
			}
		}
	}
	waitFor(first + "  ")
	second := invokeLogger(t, server, "second")
	waitFor(second + "  ")
	waitFor("done second")
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("interrupted kiln logs -f exited %d: %s", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("kiln logs -f did not stop when interrupted")
	}
}
