package cluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Two gateways, one scheduler, three agents: a function deployed through
// one gateway is served through both, by all three nodes, and the
// scheduler sees the image cached on each.
func TestThreeNodesServeOneFunction(t *testing.T) {
	c := newCluster(t, 2, 3, 3*time.Minute)
	digest := c.deploy(c.Gateways[0], "sleepy")

	seen := c.spread("sleepy", 3)
	t.Logf("calls served per node: %v", seen)

	c.eventually(5*time.Second, "every node reporting the image cached", func() bool {
		ns, err := c.nodes()
		if err != nil || len(ns) != 3 {
			return false
		}
		for _, n := range ns {
			if digest != "" && !n.Cached[digest] {
				return false
			}
		}
		return true
	})

	// Each role says it is ready, and why, in JSON.
	code, body := c.get(c.Gateways[1] + "/readyz")
	var ready struct {
		Ready  bool
		Checks map[string]string
	}
	if err := json.Unmarshal(body, &ready); err != nil || code != http.StatusOK || !ready.Ready ||
		ready.Checks["redis"] != "ok" || ready.Checks["nats"] != "ok" || ready.Checks["scheduler"] != "ok" {
		t.Fatalf("gateway /readyz: %d %s", code, body)
	}
	for name, u := range c.AgentHTTP {
		if code, body := c.get(u + "/metrics"); code != http.StatusOK || !strings.Contains(string(body), "kiln_agent_invocations_total") {
			t.Fatalf("%s /metrics: %d", name, code)
		}
	}
	if code, body := c.get(c.SchedHTTP + "/metrics"); code != http.StatusOK || !strings.Contains(string(body), `kiln_scheduler_nodes 3`) {
		t.Fatalf("scheduler /metrics: %d %s", code, body)
	}
}

// checkUnderLoad fails the test for any call that did not succeed or fail
// fast with 503, or that took longer than slow; calls that started after
// settled must all have succeeded.
func checkUnderLoad(t *testing.T, results []result, slow time.Duration, settled time.Time) (ok, unavailable int, worst time.Duration) {
	t.Helper()
	if len(results) == 0 {
		t.Fatal("no call completed")
	}
	for _, r := range results {
		worst = max(worst, r.took)
		switch {
		case r.err != nil:
			t.Errorf("a call hung or broke after %v: %v", r.took, r.err)
		case r.code == http.StatusOK:
			ok++
		case r.code == http.StatusServiceUnavailable:
			if unavailable++; unavailable == 1 {
				t.Logf("first 503, after %v: %s", r.took, strings.Join(strings.Fields(r.body), " "))
			}
			if !strings.Contains(r.body, `"error"`) {
				t.Errorf("503 without a JSON error: %s", r.body)
			}
			if r.started.After(settled) {
				t.Errorf("a call started %v after the cluster settled failed: %d %s",
					r.started.Sub(settled), r.code, r.body)
			}
		default:
			t.Errorf("call answered %d (want 200 or 503): %s", r.code, r.body)
		}
		if r.took > slow {
			t.Errorf("a call took %v (limit %v): %d %s", r.took, slow, r.code, r.body)
		}
	}
	if ok == 0 {
		t.Error("no call succeeded")
	}
	return ok, unavailable, worst
}

// kill -9 of an agent under load: its calls in flight fail fast with 503,
// the node is drained within 3 s, and everything after runs on the others.
func TestKillAgentUnderLoad(t *testing.T) {
	c := newCluster(t, 1, 3, 3*time.Minute)
	g := c.Gateways[0]
	c.deploy(g, "sleepy")
	c.spread("sleepy", 3)

	stop := c.load(g, "sleepy", 6, 50)
	time.Sleep(time.Second)
	victim := c.Agents["node2"]
	killed := time.Now()
	syscall.Kill(victim.cmd.Process.Pid, syscall.SIGKILL) // the agent alone, as a crash would
	<-victim.done
	c.eventually(5*time.Second, "node2 drained", func() bool { return !strings.Contains(c.nodeNames(), "node2") })
	drain := time.Since(killed)
	time.Sleep(2 * time.Second)
	results := stop()

	ok, unavailable, worst := checkUnderLoad(t, results, 3*time.Second, killed.Add(drain).Add(100*time.Millisecond))
	t.Logf("kill -9: node drained %v after the kill; %d calls OK, %d answered 503, slowest %v", drain, ok, unavailable, worst)
	if drain > 3*time.Second {
		t.Errorf("node drained %v after kill -9, want within 3 s", drain)
	}
	var after []string
	for _, r := range results {
		if r.started.After(killed.Add(drain)) && r.code == http.StatusOK {
			after = append(after, r.node)
		}
	}
	if slices.Contains(after, "node2") || len(after) == 0 {
		t.Errorf("after the drain, calls ran on %v", uniq(after))
	}
}

// An agent that stops heartbeating (frozen with SIGSTOP: its connections
// stay open, so only the missed heartbeats tell) is drained within 3 s,
// its calls in flight end with 503, and it rejoins once it runs again.
func TestFrozenAgentDrained(t *testing.T) {
	c := newCluster(t, 1, 3, 3*time.Minute)
	g := c.Gateways[0]
	c.deploy(g, "sleepy")
	c.spread("sleepy", 3)

	stop := c.load(g, "sleepy", 6, 50)
	time.Sleep(time.Second)
	victim := c.Agents["node3"]
	frozen := time.Now()
	victim.signal(syscall.SIGSTOP)
	c.eventually(6*time.Second, "node3 drained", func() bool { return !strings.Contains(c.nodeNames(), "node3") })
	drain := time.Since(frozen)
	time.Sleep(1500 * time.Millisecond)
	results := stop()

	// A call queued on the frozen node waits for the drain: a few seconds.
	ok, unavailable, worst := checkUnderLoad(t, results, 4*time.Second, frozen.Add(drain).Add(100*time.Millisecond))
	t.Logf("SIGSTOP: node drained %v after it froze; %d calls OK, %d answered 503, slowest %v", drain, ok, unavailable, worst)
	if drain > 3*time.Second {
		t.Errorf("frozen node drained after %v, want within 3 s", drain)
	}

	victim.signal(syscall.SIGCONT)
	back := time.Now()
	c.waitNodes(3)
	t.Logf("SIGCONT: node3 registered again after %v", time.Since(back))
	if r := c.invoke(g, "sleepy", 0, "again"); r.code != http.StatusOK {
		t.Fatalf("after the node came back: %d %s %v", r.code, r.body, r.err)
	}
}

// Redis killed and started again (append-only file, fsync always): every
// function registered is still there and runs; while Redis is down the
// gateway answers 503 with a JSON error, fast, and says it is not ready.
func TestRedisRestart(t *testing.T) {
	c := newCluster(t, 1, 3, 3*time.Minute)
	g := c.Gateways[0]
	c.deploy(g, "sleepy")
	c.deploy(g, "second")
	for _, fn := range []string{"sleepy", "second"} {
		if r := c.invoke(g, fn, 0, "x"); r.code != http.StatusOK {
			t.Fatalf("%s before: %d %s", fn, r.code, r.body)
		}
	}

	c.redis.kill()
	r := c.invoke(g, "sleepy", 0, "down")
	if r.err != nil || r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, `"error"`) || r.took > 5*time.Second {
		t.Fatalf("while Redis is down: %d %q %v after %v", r.code, r.body, r.err, r.took)
	}
	t.Logf("Redis down: invoke answered %d in %v: %s", r.code, r.took, strings.TrimSpace(r.body))
	if code, body := c.get(g + "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "redis") {
		t.Fatalf("gateway /readyz with Redis down: %d %s", code, body)
	}
	if code, _ := c.get(g + "/healthz"); code != http.StatusOK {
		t.Fatalf("gateway /healthz with Redis down: %d (the process is alive)", code)
	}

	restarted := time.Now()
	c.redis = c.start("redis", c.redisBin, c.redisArgs...)
	c.waitReady(g)
	t.Logf("Redis restarted: gateway ready again after %v", time.Since(restarted))

	code, body := c.get(g + "/system/functions")
	if code != http.StatusOK {
		t.Fatalf("list after restart: %d %s", code, body)
	}
	for _, fn := range []string{"sleepy", "second"} {
		if !strings.Contains(string(body), `"`+fn+`"`) {
			t.Errorf("%s is gone after the Redis restart: %s", fn, body)
		}
		if r := c.invoke(g, fn, 0, "back"); r.code != http.StatusOK || r.body != "hello, back" {
			t.Errorf("%s after restart: %d %s", fn, r.code, r.body)
		}
	}
}

// The scheduler killed and started again: calls fail fast with 503 while
// it is gone, and work again once the agents have reconnected; the new
// scheduler learns the warm instances from their heartbeats.
func TestSchedulerRestart(t *testing.T) {
	c := newCluster(t, 1, 3, 3*time.Minute)
	g := c.Gateways[0]
	digest := c.deploy(g, "sleepy")
	c.spread("sleepy", 3)

	c.sched.kill()
	r := c.invoke(g, "sleepy", 0, "down")
	if r.err != nil || r.code != http.StatusServiceUnavailable || r.took > 3*time.Second {
		t.Fatalf("scheduler down: %d %q %v after %v", r.code, r.body, r.err, r.took)
	}
	t.Logf("scheduler down: invoke answered %d in %v", r.code, r.took)
	if code, body := c.get(g + "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "scheduler") {
		t.Fatalf("gateway /readyz with the scheduler down: %d %s", code, body)
	}

	restarted := time.Now()
	c.sched = c.start("scheduler", bins.kiln, c.schedArgs...)
	c.eventually(15*time.Second, "an invocation to succeed after the restart", func() bool {
		return c.invoke(g, "sleepy", 0, "up").code == http.StatusOK
	})
	firstOK := time.Since(restarted)
	c.waitNodes(3)
	allBack := time.Since(restarted)
	t.Logf("scheduler restarted: first call OK after %v, all 3 nodes back after %v", firstOK, allBack)

	// The warm instances outlived the scheduler; the new one knows them
	// from the heartbeats, so calls start warm.
	c.eventually(5*time.Second, "warm instances reported to the new scheduler", func() bool {
		ns, err := c.nodes()
		if err != nil {
			return false
		}
		warm := 0
		for _, n := range ns {
			if digest != "" && n.Warm[digest].Idle+n.Warm[digest].Busy > 0 {
				warm++
			}
		}
		return warm == 3
	})
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Post(g+"/function/sleepy", "text/plain", strings.NewReader("warm?"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Kiln-Start") != "warm" {
		t.Fatalf("after the restart: %d, start %q (want a warm start)", resp.StatusCode, resp.Header.Get("X-Kiln-Start"))
	}
}

func uniq(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return slices.Compact(out)
}

// An agent stopped with SIGTERM under load says goodbye first: the
// scheduler places nothing more on it and lets its calls in flight finish,
// so no caller sees an error.
func TestAgentStopsGracefully(t *testing.T) {
	c := newCluster(t, 1, 3, 3*time.Minute)
	g := c.Gateways[0]
	c.deploy(g, "sleepy")
	c.spread("sleepy", 3)

	stop := c.load(g, "sleepy", 6, 100)
	time.Sleep(time.Second)
	leaving := c.Agents["node1"]
	stopped := time.Now()
	leaving.signal(syscall.SIGTERM)
	select {
	case <-leaving.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not exit within 15 s of SIGTERM")
	}
	exited := time.Since(stopped)
	if strings.Contains(c.nodeNames(), "node1") {
		t.Fatalf("node1 still registered after it exited: %s", c.nodeNames())
	}
	time.Sleep(time.Second)
	results := stop()
	ok, unavailable, worst := checkUnderLoad(t, results, 3*time.Second, stopped)
	t.Logf("SIGTERM: agent exited after %v; %d calls OK, %d answered 503, slowest %v", exited, ok, unavailable, worst)
	if unavailable > 0 {
		t.Errorf("%d calls failed while an agent left in order", unavailable)
	}
}

// Async invocations accepted by two gateways survive kill -9 of an agent
// and of one gateway (whose worker was running some of them): every one
// ends succeeded, through the other gateway's worker and the other nodes.
func TestAsyncSurvivesKills(t *testing.T) {
	c := newCluster(t, 2, 3, 4*time.Minute)
	c.deploy(c.Gateways[0], "sleepy")
	c.spread("sleepy", 3)

	cl := &http.Client{Timeout: 10 * time.Second}
	var ids []string
	enqueue := func(n int) {
		for range n {
			g := c.Gateways[len(ids)%len(c.Gateways)]
			resp, err := cl.Post(g+"/async-function/sleepy?ms=300", "text/plain", strings.NewReader(fmt.Sprint(len(ids))))
			if err != nil {
				t.Fatal(err)
			}
			var acc struct{ ID string }
			json.NewDecoder(resp.Body).Decode(&acc)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted || acc.ID == "" {
				t.Fatalf("async call %d: %d", len(ids), resp.StatusCode)
			}
			ids = append(ids, acc.ID)
		}
	}
	enqueue(20)
	time.Sleep(300 * time.Millisecond) // the workers are running some
	syscall.Kill(c.Agents["node1"].cmd.Process.Pid, syscall.SIGKILL)
	enqueue(10)
	killedGateway := time.Now()
	c.mu.Lock()
	var gw1 *proc
	for _, p := range c.procs {
		if p.name == "gateway1" {
			gw1 = p
		}
	}
	c.mu.Unlock()
	gw1.kill()
	c.Gateways = c.Gateways[1:]
	enqueue(10)

	survivor := c.Gateways[0]
	type status struct {
		Status string
		Result struct {
			StatusCode int `json:"status_code"`
			Body       string
		}
		Attempts int
	}
	pending := map[string]bool{}
	for _, id := range ids {
		pending[id] = true
	}
	attempts := 0
	c.eventually(120*time.Second, "every async invocation to succeed", func() bool {
		for id := range pending {
			code, body := c.get(survivor + "/system/invocations/" + id)
			var st status
			if code != http.StatusOK || json.Unmarshal(body, &st) != nil {
				t.Fatalf("status of %s: %d %s", id, code, body)
			}
			switch st.Status {
			case "succeeded":
				if st.Result.StatusCode != http.StatusOK || !strings.HasPrefix(st.Result.Body, "hello, ") {
					t.Fatalf("%s succeeded with %d %q", id, st.Result.StatusCode, st.Result.Body)
				}
				attempts += st.Attempts
				delete(pending, id)
			case "failed":
				t.Fatalf("%s failed: %s", id, body)
			}
		}
		return len(pending) == 0
	})
	t.Logf("async: %d invocations all succeeded %v after the gateway was killed, %d attempts in all",
		len(ids), time.Since(killedGateway), attempts)
}
