package nodeagent

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
)

// A vmhost worker frozen (SIGSTOP) while one of its VMs serves a call and
// another sits idle: within the watchdog's deadline the agent kills it;
// the call in flight gets a platform error (gRPC Unavailable) saying the
// worker stopped answering, not a crash of the function; each VM on it
// ends exactly once, giving its memory back, so the node's reserved memory
// is what it was before once min_warm has refilled the pool on a new
// worker; and the next call is served there.
func TestKVMWorkerFrozen(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	const answerWithin = 3 * time.Second
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, VMsPerWorker: 2, MaintainEvery: 50 * time.Millisecond,
		WorkerAnswerWithin: answerWithin, WorkerWorkWithin: 20 * time.Second})
	d := h.add(t, "echo", image.KindServe, kernel, kvmtest.Artifact(t, "guests/echo-serve"), 30*time.Second)
	fn := &kilnv1.FunctionSpec{Name: "echo", ImageDigest: d, MinWarm: 2}
	expect(t, h.invokeFn(t, fn, "/", "x"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	waitFor(t, func() bool { return h.warm("echo", "idle") == 2 })
	before := h.a.capacity().MemoryBytesUsed
	workers := h.a.vmhost.Workers()
	if before != 2*64<<20 || len(workers) != 1 {
		t.Fatalf("before: %d MiB reserved, workers %v; want both instances on one worker", before>>20, workers)
	}
	pid := workers[0]

	// One instance serves a call that keeps it busy; the other stays idle.
	type answer struct {
		resp *kilnv1.InvokeResponse
		err  error
	}
	inFlight := make(chan answer, 1)
	go func() {
		r, err := h.a.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "spin", Function: fn, Method: "POST", Path: "/", Body: []byte("spin")})
		inFlight <- answer{r, err}
	}()
	waitFor(t, func() bool { return h.warm("echo", "busy") == 1 && h.warm("echo", "idle") == 1 })
	time.Sleep(100 * time.Millisecond) // the request reaches the guest, which spins
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	var got answer
	select {
	case got = <-inFlight:
	case <-time.After(answerWithin + 10*time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("the call on the frozen worker is still waiting")
	}
	took := time.Since(stopped)
	t.Logf("after %v: %v", took, got.err)
	want := regexp.MustCompile(fmt.Sprintf(`worker %d stopped answering for \d+\.\ds: killed`, pid))
	if st, _ := status.FromError(got.err); got.resp != nil || st.Code() != codes.Unavailable || !want.MatchString(st.Message()) {
		t.Fatalf("the call on the frozen worker: %v, %v; want Unavailable matching %v", got.resp, got.err, want)
	}
	if took < answerWithin {
		t.Fatalf("killed after %v, before the deadline %v", took, answerWithin)
	}
	if n := testutil.ToFloat64(h.a.m.workersKilled.WithLabelValues("heartbeat")); n != 1 {
		t.Fatalf("kiln_agent_workers_killed_total{reason=heartbeat} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(h.a.m.invocations.WithLabelValues("echo", "warm", "platform_error")); n != 1 {
		t.Fatalf("kiln_agent_invocations_total{outcome=platform_error} = %v, want 1", n)
	}

	// Both VMs ended once: the pool is back at min_warm on a new worker,
	// with exactly its two instances' memory reserved.
	waitFor(t, func() bool {
		c := h.a.capacity()
		return h.warm("echo", "idle") == 2 && h.warm("echo", "busy") == 0 && c.MemoryBytesUsed == before
	})
	if n := testutil.ToFloat64(h.a.m.vms); n != 2 {
		t.Fatalf("kiln_agent_vms = %v, want 2", n)
	}
	h.a.mu.Lock()
	live := len(h.a.instances)
	h.a.mu.Unlock()
	if live != 2 {
		t.Fatalf("%d instances alive, want 2", live)
	}
	for _, p := range h.a.vmhost.Workers() {
		if p == pid {
			t.Fatalf("the killed worker %d is still among %v", pid, h.a.vmhost.Workers())
		}
	}
	r := h.invokeFn(t, fn, "/", "after")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_WARM)
	if string(r.Body) != "after" {
		t.Fatalf("after the kill: %q", r.Body)
	}
	if c := h.a.capacity(); c.MemoryBytesUsed != before {
		t.Fatalf("%d MiB reserved after, %d before", c.MemoryBytesUsed>>20, before>>20)
	}
	if b, err := readProc(pid); err == nil && !strings.Contains(b, "zombie") {
		t.Fatalf("the killed worker %d still runs: %s", pid, b)
	}
}

// An exec call whose worker is frozen during its run gets the platform
// error, its memory comes back, and the next call runs on a new worker.
func TestKVMWorkerFrozenExec(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	h := newHarnessConfig(t, Config{MemoryBytes: 1 << 30, NoSnapshots: true,
		WorkerAnswerWithin: 3 * time.Second, WorkerWorkWithin: 20 * time.Second})
	spin := h.add(t, "spin", image.KindExec, kernel, kvmtest.Artifact(t, "vmmguests/spin"), 60*time.Second)
	cat := h.add(t, "cat", image.KindExec, kernel, kvmtest.Artifact(t, "guests/cat"), 20*time.Second)
	expect(t, h.invoke(t, "cat", cat, "/", "warm the worker"), kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 0 })
	errc := make(chan error, 1)
	go func() {
		_, err := h.a.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "spin",
			Function: &kilnv1.FunctionSpec{Name: "spin", ImageDigest: spin}, Method: "POST", Path: "/"})
		errc <- err
	}()
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 64<<20 })
	time.Sleep(200 * time.Millisecond) // booted and spinning
	pid := h.a.vmhost.Workers()[0]
	syscall.Kill(pid, syscall.SIGSTOP)
	select {
	case err := <-errc:
		if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "stopped answering") {
			t.Fatalf("exec on the frozen worker: %v", err)
		}
	case <-time.After(20 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("the exec call on the frozen worker is still waiting")
	}
	waitFor(t, func() bool { return h.a.capacity().MemoryBytesUsed == 0 })
	r := h.invoke(t, "cat", cat, "/", "again")
	expect(t, r, kilnv1.Outcome_OUTCOME_OK, kilnv1.StartKind_START_BOOT)
	if string(r.Body) != "again" {
		t.Fatalf("after the kill: %q", r.Body)
	}
}

// readProc is pid's state line, or an error once it is gone.
func readProc(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "State:") {
			return l, nil
		}
	}
	return string(b), nil
}
