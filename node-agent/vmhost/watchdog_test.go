package vmhost

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// Short deadlines, so that a frozen worker is found out in a second.
const (
	testPingEvery    = 50 * time.Millisecond
	testAnswerWithin = 500 * time.Millisecond
	testWorkWithin   = time.Second
)

// killLog records the watchdog's kills by reason.
type killLog struct {
	mu      sync.Mutex
	reasons []string
}

func (k *killLog) add(r string) {
	k.mu.Lock()
	k.reasons = append(k.reasons, r)
	k.mu.Unlock()
}

func (k *killLog) get() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.reasons...)
}

func watchdogHost(t *testing.T, kills *killLog) *Host {
	return newHost(t, Config{PingEvery: testPingEvery, AnswerWithin: testAnswerWithin, WorkWithin: testWorkWithin, OnKill: kills.add})
}

// load is the VMs the Host counts on its live workers.
func (h *Host) load() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, w := range h.workers {
		n += w.load
	}
	return n
}

// settleGoroutines waits until no more goroutines run than before (n),
// and fails the test with their stacks if some stay.
func settleGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killedError matches the error of a VM whose worker the watchdog killed.
var killedError = regexp.MustCompile(`^vmhost: the VM's host process failed: worker (\d+) stopped answering for \d+\.\ds: killed$`)

// A worker stopped with SIGSTOP while one of its VMs serves and another
// is booted and idle: within the deadline the watchdog kills it; the
// serving VM's Run, a Stats and a Close that were waiting on it return
// with ErrWorker saying so; the Host no longer counts its VMs, the next
// Boot runs on a new worker, and no goroutine is left behind.
func TestWatchdogKillsStoppedWorker(t *testing.T) {
	before := runtime.NumGoroutine()
	var kills killLog
	h := watchdogHost(t, &kills)
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	defer inR.Close()
	defer inW.Close()
	defer outR.Close()
	cfg := echoCfg()
	cfg.Stdin, cfg.Stdout = inR, outW
	serving, err := h.Boot(cfg)
	outW.Close()
	if err != nil {
		t.Fatal(err)
	}
	idle, err := h.Boot(echoCfg())
	if err != nil {
		t.Fatal(err)
	}
	type ran struct {
		r   *vmm.Result
		err error
	}
	runDone := make(chan ran, 1)
	go func() {
		r, err := run(t, serving, time.Minute)
		runDone <- ran{r, err}
	}()
	br := bufio.NewReader(outR)
	inW.WriteString("before\n")
	if l, err := br.ReadString('\n'); l != "before\n" {
		t.Fatalf("echo: %q, %v", l, err)
	}
	// Longer than a healthy worker takes: the watchdog leaves it alone.
	time.Sleep(3 * testAnswerWithin)
	if k := kills.get(); len(k) != 0 {
		t.Fatalf("a healthy worker killed: %v", k)
	}
	pid := serving.w.pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	inW.WriteString("lost\n") // a request in flight
	// Calls that wait on the worker, started late enough that the
	// heartbeat finds it out first.
	time.Sleep(testAnswerWithin / 2)
	closed := make(chan struct{})
	go func() {
		idle.Close()
		close(closed)
	}()
	statsDone := make(chan struct{})
	go func() {
		serving.Stats()
		close(statsDone)
	}()

	limit := testAnswerWithin + testWorkWithin + 5*time.Second // the deadline and scheduling slack
	var got ran
	select {
	case got = <-runDone:
	case <-time.After(limit):
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("Run still waiting %v after its worker stopped", limit)
	}
	took := time.Since(stopped)
	t.Logf("killed after %v: %v", took, got.err)
	if took < testAnswerWithin {
		t.Errorf("killed after %v, before the deadline %v", took, testAnswerWithin)
	}
	m := killedError.FindStringSubmatch(fmt.Sprint(got.err))
	if !errors.Is(got.err, ErrWorker) || m == nil || m[1] != fmt.Sprint(pid) {
		t.Fatalf("Run on the stopped worker: %v; want ErrWorker matching %v with pid %d", got.err, killedError, pid)
	}
	if got.r == nil || got.r.Reason != vmm.ReasonInternal || !strings.Contains(got.r.Message, "stopped answering") {
		t.Fatalf("result %+v", got.r)
	}
	for what, ch := range map[string]chan struct{}{"Close": closed, "Stats": statsDone} {
		select {
		case <-ch:
		case <-time.After(limit):
			t.Fatalf("%s still waiting on the killed worker", what)
		}
	}
	if k := kills.get(); len(k) != 1 || k[0] != KillHeartbeat {
		t.Fatalf("kills %v, want [%s]", k, KillHeartbeat)
	}
	serving.Close()
	waitGone(t, pid)
	if n := h.load(); n != 0 {
		t.Fatalf("the Host still counts %d VMs", n)
	}
	for _, p := range h.Workers() {
		if p == pid {
			t.Fatalf("the killed worker %d is still among %v", pid, h.Workers())
		}
	}

	// The next VM runs on a new worker.
	var out strings.Builder
	cfg = echoCfg()
	cfg.Stdin, cfg.Stdout = strings.NewReader("after\n"), &out
	v, err := h.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, v, time.Minute); err != nil || out.String() != "after\n" || v.w.pid == pid {
		t.Fatalf("after the kill: %q, %v on worker %d", out.String(), err, v.w.pid)
	}
	v.Close()
	if n := h.load(); n != 0 {
		t.Fatalf("the Host counts %d VMs after all closed", n)
	}
	h.Close()
	settleGoroutines(t, before)
}

// waitGone waits for pid to be gone (reaped), at most 10 s.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("killed worker %d not reaped", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A worker whose reader answers but whose VMs' work hangs — a boot that
// never finishes, a close that never frees, a Run that ignores its
// cancel — is killed once that work is overdue, with what it left
// unanswered as the reason; the VMs on it end with ErrWorker, and the
// next Boot works.
func TestWatchdogKillsOnOverdueWork(t *testing.T) {
	for _, c := range []struct {
		host, reason string
	}{
		{"hang-boot", KillBoot},
		{"hang-close", KillClose},
		{"hang-cancel", KillCancel},
	} {
		t.Run(c.host, func(t *testing.T) {
			var kills killLog
			h := watchdogHost(t, &kills)
			// A bystander on the same worker: it ends with it.
			inR, inW, _ := os.Pipe()
			defer inR.Close()
			defer inW.Close()
			by := echoCfg()
			by.Stdin = inR
			bystander, err := h.Boot(by)
			if err != nil {
				t.Fatal(err)
			}
			byDone := make(chan error, 1)
			go func() {
				_, err := run(t, bystander, time.Minute)
				byDone <- err
			}()
			pid := bystander.w.pid
			cfg := echoCfg()
			cfg.Hostname = c.host
			cfg.Stdin = inR
			start := time.Now()
			var werr error
			switch c.host {
			case "hang-boot":
				_, werr = h.Boot(cfg)
			case "hang-close":
				v, err := h.Boot(cfg)
				if err != nil {
					t.Fatal(err)
				}
				v.Close() // returns once the worker is killed; the bystander's Run tells how
			case "hang-cancel":
				v, err := h.Boot(cfg)
				if err != nil {
					t.Fatal(err)
				}
				_, werr = run(t, v, 100*time.Millisecond)
				v.Close()
			}
			took := time.Since(start)
			t.Logf("%s: %v after %v", c.host, werr, took)
			if took < testWorkWithin || took > testWorkWithin+10*time.Second {
				t.Errorf("ended after %v, want just past %v", took, testWorkWithin)
			}
			if c.host != "hang-close" && (!errors.Is(werr, ErrWorker) || !strings.Contains(werr.Error(), "stopped answering")) {
				t.Errorf("error %v, want ErrWorker saying the worker stopped answering", werr)
			}
			select {
			case err := <-byDone:
				if m := killedError.FindStringSubmatch(fmt.Sprint(err)); m == nil || m[1] != fmt.Sprint(pid) {
					t.Errorf("the bystander's Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the bystander's Run did not end with its worker")
			}
			if k := kills.get(); len(k) != 1 || k[0] != c.reason {
				t.Errorf("kills %v, want [%s]", k, c.reason)
			}
			bystander.Close()
			waitGone(t, pid)
			v, err := h.Boot(echoCfg())
			if err != nil || v.w.pid == pid {
				t.Fatalf("Boot after the kill: %v", err)
			}
			v.Close()
			if n := h.load(); n != 0 {
				t.Fatalf("the Host still counts %d VMs", n)
			}
		})
	}
}

// Sends to a worker that stopped reading give up too: with the socket's
// buffer full, a send waits at most AnswerWithin, and the worker is
// killed, rather than holding the socket's lock, and every sender behind
// it, forever.
func TestWatchdogSendBounded(t *testing.T) {
	var kills killLog
	// No pings for the test's length: only the full socket can find the
	// worker out.
	h := newHost(t, Config{PingEvery: time.Hour, AnswerWithin: testAnswerWithin, WorkWithin: time.Hour, OnKill: kills.add})
	v, err := h.Boot(echoCfg())
	if err != nil {
		t.Fatal(err)
	}
	pid := v.w.pid
	syscall.Kill(pid, syscall.SIGSTOP)
	done := make(chan error, 1)
	go func() {
		// Acks are fire and forget: enough of them fill any socket buffer.
		for {
			if err := v.w.send(mAck, v.id, 0, make([]byte, 4096)); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Logf("send ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("a send to a stopped worker still blocks")
	}
	if k := kills.get(); len(k) != 1 || k[0] != KillSend {
		t.Fatalf("kills %v, want [%s]", k, KillSend)
	}
	if _, err := run(t, v, time.Minute); !errors.Is(err, ErrWorker) || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("Run on the killed worker: %v", err)
	}
	v.Close()
	waitGone(t, pid)
}

// A healthy worker kept busy with requests is never killed, over many
// deadlines' worth of time.
func TestWatchdogSparesHealthyWorker(t *testing.T) {
	var kills killLog
	h := watchdogHost(t, &kills)
	var vms []*VM
	for range 20 {
		v, err := h.Boot(echoCfg())
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*testAnswerWithin)
	defer cancel()
	for ctx.Err() == nil {
		for _, v := range vms {
			v.Stats()
		}
	}
	if k := kills.get(); len(k) != 0 {
		t.Fatalf("healthy worker killed: %v", k)
	}
	for _, v := range vms {
		v.Close()
	}
}
