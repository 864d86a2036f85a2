package asyncq_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/cmd/kiln/cli"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/gateway/asyncq"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
)

// `kiln up` runs the async worker: through the user's own path (the CLI's
// deploy with --async-retries, then POST /async-function), an invocation
// on a platform with no node is tried once (0 retries asked for) and fails
// with the scheduler's "no capacity", instead of waiting forever.
func TestKilnUpRunsTheWorker(t *testing.T) {
	prog := fnProgram(t)
	path := filepath.Join(t.TempDir(), "fn")
	if err := os.WriteFile(path, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := platform.Up(context.Background(), platform.Config{
		DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", KernelPath: path, NoAgent: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	kiln := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"--server", p.URL}, args...), strings.NewReader(""), &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, _, errs := kiln("deploy", "fn", "--binary", path, "--kind", "serve", "--async-retries", "21"); code != 1 || !strings.Contains(errs, "bad async_retries") {
		t.Fatalf("deploy --async-retries 21: %d %q", code, errs)
	}
	if code, out, errs := kiln("deploy", "fn", "--binary", path, "--kind", "serve", "--async-retries", "0"); code != 0 {
		t.Fatalf("deploy: %d %q %q", code, out, errs)
	}
	d, err := http.Get(p.URL + "/system/functions/fn")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(d.Body)
	d.Body.Close()
	if !strings.Contains(string(b), `"async_retries": 0`) {
		t.Fatalf("GET /system/functions/fn does not show the retry limit: %s", b)
	}

	resp, err := http.Post(p.URL+"/async-function/fn", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	var a gateway.Accepted
	json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || a.ID == "" {
		t.Fatalf("POST /async-function/fn: %s", resp.Status)
	}
	e := &env{url: p.URL, client: http.DefaultClient}
	st := e.waitStatus(t, a.ID, "failure", final)
	if st.State != asyncq.Failed || st.Attempts != 1 || st.MaxAttempts != 1 || !strings.Contains(st.Error, "no node has capacity") ||
		st.Result == nil || st.Result.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status: %+v %+v", st, st.Result)
	}
}

// An accepted invocation outlives its `kiln up`: the message and its
// status are on JetStream's disk in the data directory, and the next
// `kiln up` goes on where the last one stopped (here: the retry that was
// waiting in backoff when the platform went down).
func TestInvocationSurvivesRestart(t *testing.T) {
	prog := fnProgram(t)
	path := filepath.Join(t.TempDir(), "fn")
	if err := os.WriteFile(path, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	up := func() *platform.Platform {
		p, err := platform.Up(context.Background(), platform.Config{DataDir: data, HTTPAddr: "127.0.0.1:0", KernelPath: path, NoAgent: true})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := up()
	var out, errb bytes.Buffer
	if code := cli.Main(context.Background(), []string{"--server", p.URL, "deploy", "fn", "--binary", path, "--kind", "serve", "--async-retries", "1"},
		strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("deploy: %d %s", code, errb.String())
	}
	resp, err := http.Post(p.URL+"/async-function/fn", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	var a gateway.Accepted
	json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	e := &env{url: p.URL, client: http.DefaultClient}
	e.waitStatus(t, a.ID, "the first attempt to fail", func(s *asyncq.Status) bool { return s.Attempts == 1 && s.State == asyncq.Queued })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	p = up()
	defer p.Close()
	e.url = p.URL
	st := e.waitStatus(t, a.ID, "the retry after the restart", final)
	if st.State != asyncq.Failed || st.Attempts != 2 || len(st.History) != 2 || st.History[0].StatusCode != 503 {
		t.Fatalf("status after the restart: %+v %+v", st, st.History)
	}
}

// `kiln up` reads the operator's callback allow-list from
// $KILN_CALLBACK_ALLOW (or --callback-allow): its gateway then accepts a
// callback to 127.0.0.1 and its worker delivers it. Without it the same
// call is refused (TestCallbackCannotReachThePlatform).
func TestKilnUpCallbackAllow(t *testing.T) {
	prog := fnProgram(t)
	path := filepath.Join(t.TempDir(), "fn")
	if err := os.WriteFile(path, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KILN_CALLBACK_ALLOW", "127.0.0.1/32, 10.9.9.0/24")
	addr := testnet.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var out, errb bytes.Buffer // read once the command has returned
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"up", "--listen", addr, "--data", t.TempDir(), "--kernel", path, "--runtime", "process"},
			strings.NewReader(""), &out, &errb)
	}()
	stop := func() int {
		cancel()
		return <-done
	}
	base := "http://" + addr
	waitFor(t, "kiln up to serve", func() bool {
		r, err := http.Get(base + "/healthz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == http.StatusOK
	})
	var o, eb bytes.Buffer
	if code := cli.Main(ctx, []string{"--server", base, "deploy", "fn", "--binary", path, "--kind", "serve", "--async-retries", "0"},
		strings.NewReader(""), &o, &eb); code != 0 {
		stop()
		t.Fatalf("deploy: %d %s", code, eb.String())
	}
	cb := newCallbackServer(t)
	e := &env{url: base, client: http.DefaultClient}
	id := e.accepted(t, "fn/x", "hi", http.Header{"X-Callback-Url": {cb.url + "/hook"}})
	if got := cb.wait(t, 1)[0]; got.header.Get(asyncq.CallbackHeaderID) != id || got.path != "/hook" {
		stop()
		t.Fatalf("callback: %+v", got)
	}
	e.waitStatus(t, id, "the callback to be delivered", func(s *asyncq.Status) bool {
		return s.Callback != nil && s.Callback.State == asyncq.CallbackDelivered
	})
	if code := stop(); code != 0 {
		t.Fatalf("kiln up exited %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "callback_allow=") || !strings.Contains(errb.String(), "10.9.9.0/24") {
		t.Errorf("kiln up did not log its callback allow-list: %s", errb.String())
	}
}
