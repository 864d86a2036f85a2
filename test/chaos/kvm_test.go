package chaos_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/internal/teststack/openloop"
)

// The watchdog's deadlines in these tests (platform.Config): a frozen
// worker is found out within about answerWithin plus a ping interval
// (answerWithin/4), not the minute of the defaults. They are above the
// worst answers measured on the slow QEMU box (vmhost/watchdog.go).
const (
	answerWithin = 4 * time.Second
	workWithin   = 20 * time.Second
)

// fnMemory is the guest memory of the function under load, in bytes and
// as deployed.
const (
	fnMemory    = 64 << 20
	fnMemoryArg = "64M"
)

// repetitions is how often each fault is struck: once in an ordinary run,
// five times under KILN_BENCH=1 for the medians in docs/BENCHMARKS.md.
func repetitions() int {
	if os.Getenv("KILN_BENCH") == "1" {
		return 5
	}
	return 1
}

// up starts `kiln up` (platform.Up) in this process with the KVM runtime
// and the short watchdog deadlines, deploys hello (a serve function) and
// waits until it answers.
func up(t *testing.T) string {
	t.Helper()
	kvmtest.Require(t)
	kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	logPath := filepath.Join(t.TempDir(), "platform.log")
	logs, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := platform.Up(ctx, platform.Config{
		Logger:             slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		DataDir:            t.TempDir(),
		HTTPAddr:           "127.0.0.1:0",
		MemoryBytes:        2 << 30,
		KernelPath:         filepath.Join(kvmtest.BuildDir(t), "kernel", "kiln-kernel.elf"),
		WorkerAnswerWithin: answerWithin,
		WorkerWorkWithin:   workWithin,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	// Registered after Close, so run before it: a Close that hangs must
	// not hide the log.
	t.Cleanup(func() {
		if b, _ := os.ReadFile(logPath); t.Failed() {
			if len(b) > 30000 {
				b = append([]byte("…"), b[len(b)-30000:]...)
			}
			t.Logf("platform log:\n%s", b)
		}
	})
	if !p.Agent {
		t.Fatal("platform started without a node-agent although /dev/kvm works")
	}
	waitFor(t, 30*time.Second, "the agent to register", func() bool {
		v, _ := openloop.Metric(metrics(t, p.URL), "kiln_scheduler_nodes")
		return v == 1
	})

	q := url.Values{"name": {"hello"}, "kind": {"serve"}, "memory": {fnMemoryArg}}
	resp, err := http.Post(p.URL+"/system/functions?"+q.Encode(), "application/octet-stream",
		bytes.NewReader(kvmtest.Artifact(t, "examples/hello-c/hello")))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("deploy hello: %d %s", resp.StatusCode, b)
	}
	waitFor(t, 60*time.Second, "hello to answer", func() bool {
		resp, err := http.Post(p.URL+"/function/hello", "text/plain", strings.NewReader("up"))
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && string(b) == "hello, up"
	})
	return p.URL
}

func metrics(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitFor polls cond every 50 ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// workers lists the vmhost worker processes of this test binary: its
// descendants started with the worker argument (they are this binary
// re-executed, vmhost's package doc), found in /proc.
func workers(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	parent := map[int]int{}
	var cands []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces, so split after ")".
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte("\x00-kiln-vmhost-worker")) {
			cands = append(cands, pid)
		}
	}
	self := os.Getpid()
	var out []int
	for _, pid := range cands {
		for p, hops := parent[pid], 0; p > 1 && hops < 8; p, hops = parent[p], hops+1 {
			if p == self {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// alive reports whether pid is a process that has not exited (a zombie
// has).
func alive(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// load is the open-loop load of these tests: 20 sync calls and 4 async
// calls a second to hello.
func load(base string) openloop.Config {
	return openloop.Config{Gateways: []string{base}, Function: "hello",
		SyncEvery: 50 * time.Millisecond, AsyncEvery: 250 * time.Millisecond, Timeout: 30 * time.Second}
}

// noLeaks waits until the agent holds nothing for calls that ended: no
// busy instance, guest memory in use equal to the live VMs' (each
// instance of hello holds fnMemory), every VM an instance of a pool, no
// invocation queued at the scheduler, and no worker process stopped.
func noLeaks(t *testing.T, base string) {
	t.Helper()
	var last string
	end := time.Now().Add(20 * time.Second)
	for {
		m := metrics(t, base)
		busy, _ := openloop.Metric(m, "kiln_agent_warm_instances", `state="busy"`)
		idle, _ := openloop.Metric(m, "kiln_agent_warm_instances", `state="idle"`)
		vms, _ := openloop.Metric(m, "kiln_agent_vms")
		used, _ := openloop.Metric(m, "kiln_agent_memory_bytes_used")
		queued, _ := openloop.Metric(m, "kiln_scheduler_queue_depth")
		var stopped []int
		for _, pid := range workers(t) {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(st), ") T ") {
				stopped = append(stopped, pid)
			}
		}
		last = fmt.Sprintf("busy %v, idle %v, vms %v, memory used %v (want vms × %d), scheduler queue %v, stopped workers %v",
			busy, idle, vms, used, fnMemory, queued, stopped)
		if busy == 0 && vms == idle && used == vms*fnMemory && queued == 0 && len(stopped) == 0 {
			t.Logf("no leaks: %s", last)
			return
		}
		if time.Now().After(end) {
			t.Fatalf("leaked after the fault (20 s later): %s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The worker process holding hello's instances is killed with SIGKILL
// while calls arrive: the calls it was running fail with 503 and a JSON
// error, the agent starts new instances in a new worker, sync calls
// succeed for good within 10 s, no async invocation is lost, nothing
// leaks.
func TestKVMKillWorkerUnderLoad(t *testing.T) {
	base := up(t)
	var runs []openloop.Figures
	for range repetitions() {
		var victim int
		fig := openloop.Run(t, openloop.Scenario{Load: load(base), Before: 2 * time.Second, Bound: 10 * time.Second,
			Inject: func(t testing.TB) openloop.Fault {
				ws := workers(t.(*testing.T))
				if len(ws) == 0 {
					t.Fatal("no vmhost worker process found under load")
				}
				victim = ws[0]
				now := time.Now()
				if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
					t.Fatalf("kill -9 %d: %v", victim, err)
				}
				return openloop.Fault{Name: "kiln up: kill -9 worker", Begin: now, End: now}
			}})
		runs = append(runs, fig)
		if alive(victim) {
			t.Errorf("the killed worker %d is still there (not reaped)", victim)
		}
		noLeaks(t, base)
		if ws := workers(t); len(ws) == 0 || ws[0] == victim {
			t.Errorf("workers after the kill: %v (killed %d): no new worker serves the instances", ws, victim)
		}
	}
	t.Logf("MEDIAN of %d: %v", len(runs), openloop.Median(runs))
}

// The worker process holding hello's instances is frozen with SIGSTOP
// while calls arrive and never resumed: its calls hang until the agent's
// watchdog finds it silent (answerWithin) and kills it, then fail with 503
// and a JSON error; sync calls succeed for good within answerWithin + 10
// s of the freeze; no async invocation is lost; nothing leaks (the
// memory reserved for the frozen worker's VMs comes back).
func TestKVMFrozenWorkerUnderLoad(t *testing.T) {
	base := up(t)
	var runs []openloop.Figures
	for range repetitions() {
		var victim int
		killed0, _ := openloop.Metric(metrics(t, base), "kiln_agent_workers_killed_total")
		fig := openloop.Run(t, openloop.Scenario{Load: load(base), Before: 2 * time.Second, Bound: answerWithin + 10*time.Second,
			Inject: func(t testing.TB) openloop.Fault {
				ws := workers(t.(*testing.T))
				if len(ws) == 0 {
					t.Fatal("no vmhost worker process found under load")
				}
				victim = ws[0]
				now := time.Now()
				if err := syscall.Kill(victim, syscall.SIGSTOP); err != nil {
					t.Fatalf("kill -STOP %d: %v", victim, err)
				}
				t.(*testing.T).Cleanup(func() { syscall.Kill(victim, syscall.SIGKILL) })
				// Nothing resumes it: the platform must heal alone, so
				// the fault "ends" when it strikes.
				return openloop.Fault{Name: "kiln up: SIGSTOP worker", Begin: now, End: now}
			}})
		runs = append(runs, fig)
		m := metrics(t, base)
		killed, _ := openloop.Metric(m, "kiln_agent_workers_killed_total")
		hb, _ := openloop.Metric(m, "kiln_agent_workers_killed_total", `reason="heartbeat"`)
		if killed != killed0+1 {
			t.Errorf("kiln_agent_workers_killed_total went from %v to %v, want one kill (heartbeat %v)", killed0, killed, hb)
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("the frozen worker %d to be gone", victim), func() bool { return !alive(victim) })
		noLeaks(t, base)
	}
	t.Logf("MEDIAN of %d: %v", len(runs), openloop.Median(runs))
}
