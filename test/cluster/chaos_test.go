package cluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/teststack/openloop"
)

// Chaos under an open-loop load (internal/teststack/openloop): Redis,
// NATS and the scheduler are killed with SIGKILL and started again while
// sync and async calls arrive at fixed rates through both gateways. Each
// test asserts that no async invocation is lost, that calls failing
// during the outage fail with a clear error (503 and a JSON error, within
// their timeout), that sync success is back for good within the bound
// the test states, and that nothing leaks: no memory reserved at the
// scheduler, no claimed or busy instance, no call queued, guest memory in
// use equal to the live instances'. KILN_BENCH=1 repeats each fault for
// the medians in docs/BENCHMARKS.md ("Chaos").

// chaosRepetitions is how often each fault is struck on one cluster.
func chaosRepetitions() int {
	if os.Getenv("KILN_BENCH") == "1" {
		return 5
	}
	return 1
}

// outage is how long the killed process stays down before it is started
// again.
const outage = 2 * time.Second

// chaosLoad: 20 sync and 4 async calls a second, each running 20 ms in
// the function.
func (c *Cluster) chaosLoad() openloop.Config {
	return openloop.Config{Gateways: c.Gateways, Function: "sleepy", Query: "ms=20",
		SyncEvery: 50 * time.Millisecond, AsyncEvery: 250 * time.Millisecond, Timeout: 15 * time.Second}
}

// chaosCluster starts two gateways and two agents and deploys sleepy.
func chaosCluster(t *testing.T) *Cluster {
	c := newCluster(t, 2, 2, time.Duration(chaosRepetitions())*2*time.Minute+2*time.Minute)
	c.deploy(c.Gateways[0], "sleepy")
	c.spread("sleepy", 2)
	return c
}

// restart kills p (SIGKILL, its process group), leaves it down for
// outage, starts it again with the same arguments and waits until it
// listens on addr; it returns the new process and the fault's window.
func (c *Cluster) restart(name string, p *proc, bin string, args []string, addr string) (*proc, openloop.Fault) {
	c.t.Helper()
	begin := time.Now()
	p.kill()
	time.Sleep(outage)
	np := c.start(p.name, bin, args...)
	c.waitTCP(addr)
	return np, openloop.Fault{Name: name, Begin: begin, End: time.Now()}
}

// noLeaks waits until the scheduler and every agent hold nothing for
// calls that ended.
func (c *Cluster) noLeaks() {
	c.t.Helper()
	var last string
	settled := func() bool {
		code, body := c.get(c.SchedHTTP + "/nodes")
		var ns []struct {
			Name     string
			Reserved uint64
			Claimed  map[string]int
		}
		if code != http.StatusOK || json.Unmarshal(body, &ns) != nil {
			last = fmt.Sprintf("scheduler /nodes: %d %s", code, body)
			return false
		}
		if len(ns) != len(c.Agents) {
			last = fmt.Sprintf("%d nodes at the scheduler, want %d", len(ns), len(c.Agents))
			return false
		}
		for _, n := range ns {
			claimed := 0
			for _, k := range n.Claimed {
				claimed += k
			}
			if n.Reserved != 0 || claimed != 0 {
				last = fmt.Sprintf("scheduler: node %s reserved %d bytes, claimed %d instances", n.Name, n.Reserved, claimed)
				return false
			}
		}
		_, sm := c.get(c.SchedHTTP + "/metrics")
		if q, _ := openloop.Metric(string(sm), "kiln_scheduler_queue_depth"); q != 0 {
			last = fmt.Sprintf("scheduler: %v invocations queued", q)
			return false
		}
		for name, u := range c.AgentHTTP {
			_, b := c.get(u + "/metrics")
			m := string(b)
			busy, _ := openloop.Metric(m, "kiln_agent_warm_instances", `state="busy"`)
			idle, _ := openloop.Metric(m, "kiln_agent_warm_instances", `state="idle"`)
			vms, _ := openloop.Metric(m, "kiln_agent_vms")
			used, _ := openloop.Metric(m, "kiln_agent_memory_bytes_used")
			if busy != 0 || vms != idle || used != vms*float64(64<<20) {
				last = fmt.Sprintf("%s: busy %v, idle %v, instances %v, memory used %v (want instances × 64 MiB)", name, busy, idle, vms, used)
				return false
			}
		}
		return true
	}
	for end := time.Now().Add(20 * time.Second); !settled(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			c.t.Fatalf("leaked after the fault (20 s later): %s", last)
		}
	}
	c.t.Logf("no leaks at the scheduler or the agents")
}

// chaos strikes fault repetitions() times under the load, each followed
// by the leak check, and logs the medians.
func (c *Cluster) chaos(bound time.Duration, fault func() openloop.Fault) {
	c.t.Helper()
	var runs []openloop.Figures
	for range chaosRepetitions() {
		runs = append(runs, openloop.Run(c.t, openloop.Scenario{Load: c.chaosLoad(), Before: 2 * time.Second, Bound: bound,
			Inject: func(testing.TB) openloop.Fault { return fault() }}))
		c.noLeaks()
	}
	c.t.Logf("MEDIAN of %d: %v", len(runs), openloop.Median(runs))
}

// Redis down for 2 s under load: calls answer 503 while the registry is
// unreachable and succeed again within 5 s of its restart.
func TestChaosRedisRestart(t *testing.T) {
	c := chaosCluster(t)
	c.chaos(5*time.Second, func() openloop.Fault {
		var f openloop.Fault
		c.redis, f = c.restart("cluster: Redis kill -9, 2 s down", c.redis, c.redisBin, c.redisArgs, addr(c.RedisPort))
		return f
	})
}

// NATS (JetStream: the async queue and the images) down for 2 s under
// load: sync calls, which need neither, may go on; async calls are
// refused with 503 while the queue is unreachable, and every accepted
// one still ends; success is back for good within 10 s of the restart.
func TestChaosNATSRestart(t *testing.T) {
	c := chaosCluster(t)
	c.chaos(10*time.Second, func() openloop.Fault {
		var f openloop.Fault
		c.nats, f = c.restart("cluster: NATS kill -9, 2 s down", c.nats, bins.nats, c.natsArgs, addr(c.NATSPort))
		return f
	})
}

// The scheduler killed and down for 2 s under load: calls answer 503
// while it is gone and succeed again within 10 s of its restart (the
// agents reconnect with backoff and heartbeat their warm instances).
func TestChaosSchedulerRestart(t *testing.T) {
	c := chaosCluster(t)
	c.chaos(10*time.Second, func() openloop.Fault {
		var f openloop.Fault
		c.sched, f = c.restart("cluster: scheduler kill -9, 2 s down", c.sched, bins.kiln, c.schedArgs, c.SchedAddr)
		return f
	})
}
