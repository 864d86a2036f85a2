package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/logstore"
	"github.com/kilnfaas/kiln/store/logstore/logstoretest"
)

var (
	talkerOnce sync.Once
	talker     []byte
	talkerErr  error
)

// talkerELF is a static exec function that writes two stderr lines naming
// its request body and answers "ok BODY".
func talkerELF(t *testing.T) []byte {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("gcc not installed (make deps installs it): %v", err)
	}
	talkerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-talker-")
		if err != nil {
			talkerErr = err
			return
		}
		defer os.RemoveAll(dir)
		src := filepath.Join(dir, "t.c")
		os.WriteFile(src, []byte(`#include <stdio.h>
int main(void) {
	char buf[256];
	size_t n = fread(buf, 1, sizeof buf - 1, stdin);
	buf[n] = 0;
	fprintf(stderr, "start %s\n", buf);
	fprintf(stderr, "end %s\n", buf);
	printf("ok %s", buf);
	return 0;
}
`), 0o644)
		out := filepath.Join(dir, "t")
		if b, err := exec.Command("gcc", "-static", "-O2", "-o", out, src).CombinedOutput(); err != nil {
			talkerErr = fmt.Errorf("gcc: %v\n%s", err, b)
			return
		}
		talker, talkerErr = os.ReadFile(out)
	})
	if talkerErr != nil {
		t.Fatal(talkerErr)
	}
	return talker
}

func openLogs(t *testing.T) *logstore.Bolt {
	t.Helper()
	s, err := logstore.OpenBolt(t.TempDir(), logstore.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// deployTalker deploys talkerELF as name and waits until it answers.
func deployTalker(t *testing.T, e *env, name string) {
	t.Helper()
	if resp, b := deploy(t, e, "name="+name+"&kind=exec&memory=16M&timeout=20s", talkerELF(t)); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
}

// call invokes name with body and returns the invocation id.
func call(t *testing.T, e *env, name, body string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, b := do(t, "POST", e.url+"/function/"+name, "text/plain", strings.NewReader(body))
		if resp.StatusCode == 200 {
			if string(b) != "ok "+body {
				t.Fatalf("function answered %q", b)
			}
			return resp.Header.Get(gateway.HeaderInvocationID)
		}
		// Until the agent has registered, the scheduler has no node.
		if resp.StatusCode != 503 || time.Now().After(deadline) {
			t.Fatalf("invoke %s: %d %s", name, resp.StatusCode, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readLogs(t *testing.T, e *env, name, query string) []logstore.Entry {
	t.Helper()
	resp, b := do(t, "GET", e.url+"/system/logs/"+name+"?"+query, "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET logs ?%s: %d %s", query, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q", ct)
	}
	var es []logstore.Entry
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var e logstore.Entry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		es = append(es, e)
	}
	return es
}

// waitLogs polls until the log holds n entries: capture is asynchronous.
func waitLogs(t *testing.T, e *env, name string, n int) []logstore.Entry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		es := readLogs(t, e, name, "")
		if len(es) >= n {
			return es
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d log entries after 10s, want %d: %+v", len(es), n, es)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Each synchronous invocation's stderr lands in the log under its own id,
// and the query parameters select what they say.
func TestLogsOfSyncInvocations(t *testing.T) {
	e := startRunning(t, gateway.Config{Logs: openLogs(t)})
	deployTalker(t, e, "talker")
	ids := map[string]string{}
	for _, body := range []string{"a", "b", "c"} {
		ids[body] = call(t, e, "talker", body)
	}
	es := waitLogs(t, e, "talker", 6)
	if len(es) != 6 {
		t.Fatalf("%d entries, want 6: %+v", len(es), es)
	}
	for i, body := range []string{"a", "a", "b", "b", "c", "c"} {
		want := map[bool]string{true: "start ", false: "end "}[i%2 == 0] + body
		got := es[i]
		if got.Line != want || got.InvocationID != ids[body] || got.Function != "talker" || got.Version != 1 ||
			got.Node != "test-node" || got.Outcome != "ok" {
			t.Errorf("entry %d: %+v, want line %q of invocation %s", i, got, want, ids[body])
		}
	}
	if got := readLogs(t, e, "talker", "invocation="+ids["b"]); len(got) != 2 || got[0].Line != "start b" || got[1].Line != "end b" {
		t.Errorf("invocation=b: %+v", got)
	}
	if got := readLogs(t, e, "talker", "limit=3"); len(got) != 3 || got[0].Line != "end b" || got[2].Line != "end c" {
		t.Errorf("limit=3: %+v", got)
	}
	if got := readLogs(t, e, "talker", "since=1h"); len(got) != 6 {
		t.Errorf("since=1h: %d entries", len(got))
	}
	if got := readLogs(t, e, "talker", "since="+time.Now().Add(time.Minute).UTC().Format(time.RFC3339)); len(got) != 0 {
		t.Errorf("since a minute ahead: %+v", got)
	}
	if got := readLogs(t, e, "talker", "after="+es[3].Cursor); len(got) != 2 || got[0].Line != "start c" {
		t.Errorf("after the 4th entry: %+v", got)
	}

	// Deleting the function drops its log: deployed again, it starts empty.
	if resp, b := do(t, "DELETE", e.url+"/system/functions/talker", "", nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	deployTalker(t, e, "talker")
	if got := readLogs(t, e, "talker", ""); len(got) != 0 {
		t.Errorf("after delete and redeploy the log holds %+v", got)
	}
}

// Bad requests get a 400 naming what is accepted; unknown functions a 404;
// a gateway without a store a 501; all of it behind the API key.
func TestLogsRejects(t *testing.T) {
	logs := openLogs(t)
	e := start(t, gateway.Config{Logs: logs})
	if resp, b := deploy(t, e, "name=quiet&kind=exec&memory=16M&timeout=5s", staticELF(t)); resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/system/logs/nope", 404, "not found"},
		{"/system/logs/Bad_Name", 400, "a-z"},
		{"/system/logs/quiet?since=yesterday", 400, "such as 10m"},
		{"/system/logs/quiet?since=-5m", 400, "positive duration"},
		{"/system/logs/quiet?limit=0", 400, "from 1 to 10000"},
		{"/system/logs/quiet?limit=10001", 400, "from 1 to 10000"},
		{"/system/logs/quiet?limit=ten", 400, "from 1 to 10000"},
		{"/system/logs/quiet?follow=maybe", 400, "give 1 or 0"},
		{"/system/logs/quiet?after=bogus", 400, "cursor"},
		{"/system/logs/quiet?invocation=" + strings.Repeat("x", 300), 400, "invocation id"},
	} {
		resp, b := do(t, "GET", e.url+tc.path, "", nil)
		if resp.StatusCode != tc.code || !strings.Contains(decodeError(t, b).Error, tc.want) {
			t.Errorf("GET %s: %d %s, want %d mentioning %q", tc.path, resp.StatusCode, b, tc.code, tc.want)
		}
	}
	if got := readLogs(t, e, "quiet", ""); len(got) != 0 {
		t.Errorf("a function that never ran has log %+v", got)
	}

	bare := start(t, gateway.Config{})
	deploy(t, bare, "name=quiet&kind=exec&memory=16M&timeout=5s", staticELF(t))
	if resp, b := do(t, "GET", bare.url+"/system/logs/quiet", "", nil); resp.StatusCode != 501 || decodeError(t, b).Error == "" {
		t.Errorf("without a store: %d %s", resp.StatusCode, b)
	}

	keys := openKeys(t)
	locked := start(t, gateway.Config{Keys: keys, Logs: logs})
	admin := createKey(t, locked, "", "admin")
	doKey(t, "Bearer "+admin, "POST", locked.url+"/system/functions?name=quiet&kind=exec&memory=16M&timeout=5s", "application/octet-stream", staticELF(t))
	if resp, b := doKey(t, "", "GET", locked.url+"/system/logs/quiet", "", nil); resp.StatusCode != 401 {
		t.Errorf("logs without a key once one exists: %d %s", resp.StatusCode, b)
	}
	if resp, b := doKey(t, "Bearer "+admin, "GET", locked.url+"/system/logs/quiet", "", nil); resp.StatusCode != 200 {
		t.Errorf("logs with the admin key: %d %s", resp.StatusCode, b)
	}
}

// follow=1 sends what is there, then each new line as it is stored, on one
// open response.
func TestLogsFollow(t *testing.T) {
	e := startRunning(t, gateway.Config{Logs: openLogs(t)})
	deployTalker(t, e, "talker")
	first := call(t, e, "talker", "one")
	waitLogs(t, e, "talker", 2)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/system/logs/talker?follow=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("follow: %d %s", resp.StatusCode, b)
	}
	lines := make(chan logstore.Entry, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var e logstore.Entry
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				lines <- e
			}
		}
		close(lines)
	}()
	next := func() logstore.Entry {
		t.Helper()
		select {
		case e, ok := <-lines:
			if !ok {
				t.Fatal("the followed stream ended")
			}
			return e
		case <-time.After(15 * time.Second):
			t.Fatal("nothing arrived on the followed stream in 15s")
		}
		return logstore.Entry{}
	}
	if e := next(); e.Line != "start one" || e.InvocationID != first {
		t.Fatalf("first streamed line %+v", e)
	}
	next()
	second := call(t, e, "talker", "two")
	if e := next(); e.Line != "start two" || e.InvocationID != second {
		t.Fatalf("streamed line after the second call: %+v", e)
	}
	if e := next(); e.Line != "end two" {
		t.Fatalf("then %+v", e)
	}
}

var droppedRE = regexp.MustCompile(`(?m)^kiln_gateway_logs_dropped_total\{reason="(\w+)"\} (\d+)`)

func dropped(t *testing.T, e *env) map[string]int {
	t.Helper()
	_, b := do(t, "GET", e.url+"/metrics", "", nil)
	m := map[string]int{}
	for _, s := range droppedRE.FindAllStringSubmatch(string(b), -1) {
		m[s[1]], _ = strconv.Atoi(s[2])
	}
	if _, ok := m["queue_full"]; !ok {
		t.Fatalf("kiln_gateway_logs_dropped_total is not exported:\n%s", b)
	}
	return m
}

// A log store that stalls or dies costs invocations nothing: they answer
// at once, and the logs they could not store are counted as dropped.
func TestLogStoreStallAndOutage(t *testing.T) {
	url := logstoretest.StartRedis(t)
	logs, err := logstore.NewRedis(context.Background(), url, logstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() })
	e := startRunning(t, gateway.Config{Logs: logs})
	deployTalker(t, e, "talker")
	call(t, e, "talker", "warm")
	waitLogs(t, e, "talker", 2)

	opts, _ := redis.ParseURL(url)
	admin := redis.NewClient(opts)
	defer admin.Close()
	// Writes stall for 30 s: every capture waits out its timeout, so the
	// writers fill up and later invocations' logs are dropped.
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", "30000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var slow sync.Once
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 12 {
				start := time.Now()
				resp, err := http.Post(e.url+"/function/talker", "text/plain", strings.NewReader(fmt.Sprintf("%d-%d", w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				// Under load the process runtime now and then loses an
				// exec's output ("WaitDelay expired"): a node-agent matter,
				// not what this test is about.
				crashed := resp.StatusCode == 502 && strings.Contains(string(b), "WaitDelay")
				if d := time.Since(start); (resp.StatusCode != 200 && !crashed) || d > 3*time.Second {
					slow.Do(func() { t.Errorf("an invocation while the store stalled: %d after %v: %s", resp.StatusCode, d, b) })
				}
			}
		}()
	}
	wg.Wait()
	if d := dropped(t, e); d["queue_full"] < 1 {
		t.Errorf("96 invocations against a stalled store with 64 writers dropped none: %v", d)
	}
	admin.Do(context.Background(), "CLIENT", "UNPAUSE")
	// Let the stalled writes end (their timeout is 5 s) before counting.
	time.Sleep(6 * time.Second)

	// Redis gone: invocations still answer, their logs count as store errors.
	before := dropped(t, e)["store_error"]
	admin.Do(context.Background(), "SHUTDOWN", "NOSAVE")
	for i := range 3 {
		call(t, e, "talker", fmt.Sprint("down-", i))
	}
	deadline := time.Now().Add(30 * time.Second)
	for dropped(t, e)["store_error"] < before+3 {
		if time.Now().After(deadline) {
			t.Fatalf("store errors %v, want at least %d", dropped(t, e), before+3)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if resp, b := do(t, "GET", e.url+"/system/logs/talker", "", nil); resp.StatusCode != 503 || !strings.Contains(decodeError(t, b).Error, "log store is unavailable") {
		t.Errorf("reading logs with Redis down: %d %s", resp.StatusCode, b)
	}
}
