package platform_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/internal/teststack"
	"github.com/kilnfaas/kiln/store/logstore"
)

// buildLogFn builds testdata/logfn, a Go function that writes to stderr.
func buildLogFn(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "logfn")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/logfn")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build testdata/logfn: %v\n%s", err, b)
	}
	return out
}

func httpDo(t *testing.T, method, url string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// invocationLogs runs the scenario of docs/LOGS.md against a gateway at
// url: three sync and two async invocations of a Go function, then every
// invocation's two stderr lines are in GET /system/logs/NAME under its id.
func invocationLogs(t *testing.T, url string) {
	prog, err := os.ReadFile(buildLogFn(t))
	if err != nil {
		t.Fatal(err)
	}
	if resp, b := httpDo(t, "POST", url+"/system/functions?name=logger&kind=exec&memory=32M&timeout=20s", prog); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	ids := map[string]string{} // body → invocation id
	attempt := map[string]int{}
	for _, body := range []string{"s1", "s2", "s3"} {
		for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			resp, b := httpDo(t, "POST", url+"/function/logger", []byte(body))
			if resp.StatusCode == 200 && string(b) == "ok "+body {
				ids[body] = resp.Header.Get(gateway.HeaderInvocationID)
				break
			}
			if resp.StatusCode != 503 || time.Now().After(end) {
				t.Fatalf("invoke %s: %d %s", body, resp.StatusCode, b)
			}
		}
	}
	for _, body := range []string{"a1", "a2"} {
		resp, b := httpDo(t, "POST", url+"/async-function/logger", []byte(body))
		var acc gateway.Accepted
		if resp.StatusCode != 202 || json.Unmarshal(b, &acc) != nil || acc.ID == "" {
			t.Fatalf("async invoke %s: %d %s", body, resp.StatusCode, b)
		}
		ids[body], attempt[body] = acc.ID, 1
	}
	for _, body := range []string{"a1", "a2"} {
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, b := httpDo(t, "GET", url+"/system/invocations/"+ids[body], nil)
			var st struct{ Status string }
			json.Unmarshal(b, &st)
			if st.Status == "succeeded" {
				break
			}
			if st.Status == "failed" || time.Now().After(end) {
				t.Fatalf("async %s: %s", body, b)
			}
		}
	}

	var es []logstore.Entry
	for end := time.Now().Add(15 * time.Second); len(es) < 10; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("after 15 s the log holds %d entries, want 10: %+v", len(es), es)
		}
		resp, b := httpDo(t, "GET", url+"/system/logs/logger", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /system/logs/logger: %d %s", resp.StatusCode, b)
		}
		es = es[:0]
		dec := json.NewDecoder(bytes.NewReader(b))
		for dec.More() {
			var e logstore.Entry
			if err := dec.Decode(&e); err != nil {
				t.Fatalf("%v in %s", err, b)
			}
			es = append(es, e)
		}
	}
	byID := map[string][]string{}
	for _, e := range es {
		byID[e.InvocationID] = append(byID[e.InvocationID], e.Line)
		if e.Function != "logger" || e.Version != 1 || e.Outcome != "ok" || e.Node == "" {
			t.Errorf("entry %+v", e)
		}
	}
	for body, id := range ids {
		if got, want := strings.Join(byID[id], "|"), "begin "+body+"|done "+body; got != want {
			t.Errorf("invocation %s (%s) logged %q, want %q", id, body, got, want)
		}
	}
	for _, e := range es {
		for body, id := range ids {
			if e.InvocationID == id && e.Attempt != attempt[body] {
				t.Errorf("%s: attempt %d, want %d", body, e.Attempt, attempt[body])
			}
		}
	}
}

// kiln up with the process runtime keeps logs in its embedded store.
func TestLogsThroughPlatform(t *testing.T) {
	p, err := platform.Up(context.Background(), platform.Config{
		DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", KernelPath: staticProgram(t), Runtime: platform.RuntimeProcess,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	invocationLogs(t, p.URL)
}

// The roles of a cluster (scheduler, process-runtime agent, gateway on a
// real redis-server and NATS) keep logs in Redis streams.
func TestLogsThroughClusterRoles(t *testing.T) {
	roles := teststack.StartRoles(t, teststack.RolesOptions{KernelPath: staticProgram(t)})
	redisURL, gw := roles.RedisURL, roles.Gateway
	ctx := context.Background()
	invocationLogs(t, gw.HTTPURL)

	// The lines are in the stream the docs name.
	logs, err := logstore.NewRedis(ctx, redisURL, logstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	if p, err := logs.Read(ctx, "logger", logstore.Query{}); err != nil || len(p.Entries) != 10 {
		t.Fatalf("kiln:logs:logger: %d entries, %v", len(p.Entries), err)
	}
}

// Stopping kiln up while someone follows a log ends their stream at once:
// the gateway's Shutdown does not wait out its grace period for them.
func TestCloseEndsFollowedLog(t *testing.T) {
	prog := staticProgram(t)
	p, err := platform.Up(context.Background(), platform.Config{
		DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", KernelPath: prog, NoAgent: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b, _ := os.ReadFile(prog)
	if resp, body := httpDo(t, "POST", p.URL+"/system/functions?name=quiet&kind=exec", b); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, body)
	}
	resp, err := http.Get(p.URL + "/system/logs/quiet?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("follow: %d", resp.StatusCode)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); ended <- err }()
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v with a follower (the gateway's grace period is 5 s)", d)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the followed stream is still open after Close")
	}
}
