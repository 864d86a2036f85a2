package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/cmd/kiln/platform"
	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/internal/teststack/testnet"
	nodeagent "github.com/kilnfaas/kiln/node-agent"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/store/imagestore"
	"github.com/kilnfaas/kiln/unikernel/abi"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// images is an in-memory image store for agents under measurement.
type images map[string][]byte

func (m images) Fetch(_ context.Context, digest string) ([]byte, error) {
	if b, ok := m[digest]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("%w: %s", imagestore.ErrNotFound, digest)
}

// benchAgent is a KVM node-agent holding one hello-go image.
func benchAgent(t *testing.T, kernel, prog []byte, budget uint64, noSnapshots bool) (*nodeagent.Agent, string) {
	return benchAgentConfig(t, kernel, prog, nodeagent.Config{MemoryBytes: budget, NoSnapshots: noSnapshots})
}

// benchAgentConfig is benchAgent with the rest of cfg as given.
func benchAgentConfig(t *testing.T, kernel, prog []byte, cfg nodeagent.Config) (*nodeagent.Agent, string) {
	t.Helper()
	data, digest, err := image.Build(image.Manifest{ABIVersion: abi.Version, Name: "hello-go", Kind: image.KindServe,
		MemoryBytes: 64 << 20, TimeoutMS: 60_000}, kernel, prog)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Node, cfg.Images, cfg.CacheDir = "bench", images{digest: data}, t.TempDir()
	a, err := nodeagent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, digest
}

func invokeOnce(t *testing.T, a kilnv1.AgentServer, fn *kilnv1.FunctionSpec, body string) (*kilnv1.InvokeResponse, time.Duration) {
	t.Helper()
	start := time.Now()
	r, err := a.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "bench", Function: fn, Method: "POST", Path: "/", Body: []byte(body)})
	took := time.Since(start)
	if err != nil || r.Outcome != kilnv1.Outcome_OUTCOME_OK {
		t.Fatalf("invoke: %v %v %s", err, r.GetOutcome(), r.GetError())
	}
	return r, took
}

// TestPoolReport: issue 4's figures in one run — restore → first response
// byte at the agent beside boot and native exec, warm invocations through
// the agent's gRPC, per-call exits, syscalls and guest vs VMM time, and an
// open-loop load through the gateway at half its measured capacity.
func TestPoolReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (make bench)")
	}
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	prog := kvmtest.Artifact(t, "examples/hello-go/hello-go")
	path := filepath.Join(kvmtest.BuildDir(t), "examples/hello-go/hello-go")
	n := runs()

	// 1. Cold starts at the agent: every call a fresh instance.
	fmt.Fprintln(os.Stderr, "bench: cold starts at the agent")
	snapA, snapD := benchAgent(t, kernel, prog, 8<<30, false)
	bootA, bootD := benchAgent(t, kernel, prog, 8<<30, true)
	first, _ := invokeOnce(t, snapA, &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: snapD, Fresh: true}, "world")
	if first.Start != kilnv1.StartKind_START_BOOT {
		t.Fatalf("first call: %v", first.Start)
	}
	var restoreWall, restoreStart, bootWall, bootStart, native []time.Duration
	for range n {
		r, took := invokeOnce(t, snapA, &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: snapD, Fresh: true}, "world")
		if r.Start != kilnv1.StartKind_START_RESTORE {
			t.Fatalf("restore expected, got %v", r.Start)
		}
		restoreWall, restoreStart = append(restoreWall, took), append(restoreStart, time.Duration(r.StartNs))
		r, took = invokeOnce(t, bootA, &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: bootD, Fresh: true}, "world")
		bootWall, bootStart = append(bootWall, took), append(bootStart, time.Duration(r.StartNs))
		native = append(native, nativeFirstByte(t, path, requestFrame(t)))
	}

	// 2. Warm calls through the agent's gRPC, beside a gRPC call that runs
	// nothing (Capacity) as the baseline.
	fmt.Fprintln(os.Stderr, "bench: warm calls over gRPC")
	addr := testnet.ServeGRPC(t, func(g *grpc.Server) { kilnv1.RegisterAgentServer(g, snapA) })
	conn := testnet.Dial(t, addr)
	client := kilnv1.NewAgentClient(conn)
	warmFn := &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: snapD}
	// The same calls to an agent whose VMs run in its own process: what
	// vmhost's worker processes cost a warm call.
	inA, inD := benchAgentConfig(t, kernel, prog, nodeagent.Config{MemoryBytes: 8 << 30, VMsPerWorker: -1})
	inAddr := testnet.ServeGRPC(t, func(g *grpc.Server) { kilnv1.RegisterAgentServer(g, inA) })
	inConn := testnet.Dial(t, inAddr)
	inClient := kilnv1.NewAgentClient(inConn)
	inFn := &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: inD}
	for range 5 { // its first call boots and takes the snapshot
		if _, err := inClient.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "w", Function: inFn, Method: "POST", Path: "/", Body: []byte("world")}); err != nil {
			t.Fatal(err)
		}
	}
	calls := 50 * n
	var warm, baseline, inProcess []time.Duration
	var exits []uint64
	for i := range calls + 5 {
		start := time.Now()
		r, err := client.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "w", Function: warmFn, Method: "POST", Path: "/", Body: []byte("world")})
		took := time.Since(start)
		if err != nil || r.Outcome != kilnv1.Outcome_OUTCOME_OK {
			t.Fatalf("warm: %v %v", err, r.GetError())
		}
		if i < 5 { // the first restores and warms the pool
			continue
		}
		if r.Start != kilnv1.StartKind_START_WARM {
			t.Fatalf("call %d started %v", i, r.Start)
		}
		warm, exits = append(warm, took), append(exits, r.VmExits)
		start = time.Now()
		if _, err := client.Capacity(context.Background(), &kilnv1.CapacityRequest{}); err != nil {
			t.Fatal(err)
		}
		baseline = append(baseline, time.Since(start))
		start = time.Now()
		r, err = inClient.Invoke(context.Background(), &kilnv1.InvokeRequest{InvocationId: "w", Function: inFn, Method: "POST", Path: "/", Body: []byte("world")})
		if err != nil || r.Outcome != kilnv1.Outcome_OUTCOME_OK || r.Start != kilnv1.StartKind_START_WARM {
			t.Fatalf("warm, in-process agent: %v %v %v", err, r.GetError(), r.GetStart())
		}
		inProcess = append(inProcess, time.Since(start))
	}
	per := perWarmCall(t, kernel, prog, 20*n)

	// 3. Open-loop load through the gateway.
	fmt.Fprintln(os.Stderr, "bench: open-loop load through the gateway")
	capacity, opens := openLoop(t, prog, 5)

	sort.Slice(exits, func(i, j int) bool { return exits[i] < exits[j] })
	fmt.Printf("\n== Warm pools and restores: hello-go, 64 MiB (%d cold starts each, %d warm calls; medians) ==\n", n, calls)
	fmt.Printf("%-60s %12v  (start %v)\n", "agent: restore → response (Invoke, fresh instance)", median(restoreWall), median(restoreStart))
	fmt.Printf("%-60s %12v  (start %v)\n", "agent: boot → response (Invoke, fresh instance)", median(bootWall), median(bootStart))
	fmt.Printf("%-60s %12v\n", "native fork/exec → first response byte", median(native))
	fmt.Printf("%-60s %12.1fx\n", "ratio: boot / restore (agent)", float64(median(bootWall))/float64(median(restoreWall)))
	fmt.Printf("%-60s %12.1fx\n", "ratio: restore / native", float64(median(restoreWall))/float64(median(native)))
	fmt.Printf("%-60s %12v  p99 %v\n", "warm call through the agent's gRPC: p50", median(warm), quantile(warm, 0.99))
	fmt.Printf("%-60s %12v  p99 %v\n", "baseline: gRPC Capacity round trip (no VM): p50", median(baseline), quantile(baseline, 0.99))
	fmt.Printf("%-60s %12v  p99 %v\n", "same warm call, VMs in the agent's process (no vmhost): p50", median(inProcess), quantile(inProcess, 0.99))
	fmt.Printf("%-60s %12d  max %d\n", "VM exits per warm call: median", exits[len(exits)/2], exits[len(exits)-1])
	fmt.Printf("%-60s %12.1f\n", "guest syscalls per warm call (VMM level)", per.syscalls)
	fmt.Printf("%-60s %12v  (in KVM_RUN %v, VMM and pipes %v)\n", "warm call at the VMM: p50", per.p50, per.guest, per.p50-per.guest)
	fmt.Printf("%-60s %12.0f/s\n", "gateway capacity (closed loop, 4 callers)", capacity)
	fmt.Printf("%-60s %12.0f/s for %v, %d rounds\n", "open-loop rate (50% of capacity)", opens[0].rate, opens[0].span, len(opens))
	for i, open := range opens {
		fmt.Printf("%-60s %12v  p99 %v  p99.9 %v  (%d calls, %d failed; node: %.0f cold starts, %.0f prewarmed, %.0f queued)\n",
			fmt.Sprintf("open loop round %d, from intended send time: p50", i+1),
			open.p50, open.p99, open.p999, open.calls, open.failed, open.coldStarts, open.prewarmed, open.queued)
	}
}

// nativeFirstByte times a fork/exec of path with frame on stdin until the
// first byte of its stdout.
func nativeFirstByte(t *testing.T, path string, frame []byte) time.Duration {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Stdin = bytes.NewReader(frame)
	out := newFirstByte()
	cmd.Stdout = out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("native: %v", err)
	}
	return (<-out.at).Sub(start)
}

type perCall struct {
	p50, guest time.Duration
	syscalls   float64
}

// perWarmCall boots hello-go at the VMM and sends it calls one at a time:
// the latency, the share of it inside KVM_RUN, and the guest's syscalls per
// call (its syscall count at exit, less a run with no calls).
func perWarmCall(t *testing.T, kernel, prog []byte, calls int) perCall {
	t.Helper()
	run := func(calls int) (uint64, []time.Duration, []time.Duration) {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		vm, err := vmm.New(vmm.Config{Kernel: kernel, Program: prog, Args: []string{"hello-go"}, Stdin: inR, Stdout: outW})
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Close()
		done := make(chan *vmm.Result, 1)
		go func() {
			r, err := runBounded(vm)
			if err != nil {
				t.Errorf("hello-go: %v", err)
			}
			outW.Close()
			done <- r
		}()
		br := bufio.NewReader(outR)
		for vm.Stats().InputWaits == 0 {
			time.Sleep(50 * time.Microsecond)
		}
		var lat, guest []time.Duration
		for i := range calls {
			g0 := vm.Stats().GuestTime
			start := time.Now()
			if err := wire.WriteRequest(inW, &wire.Request{ID: uint64(i + 1), Method: "POST", Path: "/", Body: []byte("world")}); err != nil {
				t.Fatal(err)
			}
			if _, err := wire.ReadResponse(br, 1<<20); err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			lat = append(lat, time.Since(start))
			guest = append(guest, vm.Stats().GuestTime-g0)
		}
		inW.Close()
		r := <-done
		if r == nil {
			t.FailNow()
		}
		return r.Syscalls, lat, guest
	}
	idle, _, _ := run(0)
	total, lat, guest := run(calls)
	return perCall{p50: median(lat), guest: median(guest), syscalls: float64(total-idle) / float64(calls)}
}

type openLoopFigures struct {
	rate           float64
	span           time.Duration
	p50, p99, p999 time.Duration
	calls, failed  int
	// What the node did meanwhile: instances started for calls and for
	// warm pools, and calls that queued for an instance instead.
	coldStarts, prewarmed, queued float64
}

// counterSum adds up every series of the counter name in reg whose labels
// include want (name=value pairs).
func counterSum(t *testing.T, reg prometheus.Gatherer, name string, want ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(want); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == want[i] && l.GetValue() == want[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// openLoop brings up the embedded platform (kiln up), deploys hello-go with
// two warm instances, measures the gateway's capacity with four callers in
// a closed loop, then offers half of it open-loop: requests leave at fixed
// intended times whatever earlier ones are doing, and each latency counts
// from its intended time, so a stall is charged to every call it delays.
func openLoop(t *testing.T, prog []byte, rounds int) (float64, []openLoopFigures) {
	t.Helper()
	kernelPath := filepath.Join(kvmtest.BuildDir(t), "kernel/kiln-kernel.elf")
	p, err := platform.Up(context.Background(), platform.Config{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0",
		MemoryBytes: 4 << 30, KernelPath: kernelPath})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	resp, err := http.Post(p.URL+"/system/functions?name=hello&kind=serve&min_warm=2", "application/octet-stream", bytes.NewReader(prog))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("deploy: %d %s", resp.StatusCode, b)
	}
	var deployed struct{ Name string }
	json.Unmarshal(b, &deployed)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: time.Minute}
	call := func() bool {
		r, err := client.Post(p.URL+"/function/hello", "text/plain", strings.NewReader("world"))
		if err != nil {
			return false
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode == 200
	}
	for range 10 { // the first call restores; min_warm fills the pool
		call()
	}
	time.Sleep(time.Second)

	const callers = 4
	span := 5 * time.Second
	var done atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(span)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if call() {
					done.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	capacity := float64(done.Load()) / span.Seconds()

	node := func() (cold, pre, queued float64) {
		cold = counterSum(t, p.Metrics, "kiln_agent_invocations_total", "start", "restore") +
			counterSum(t, p.Metrics, "kiln_agent_invocations_total", "start", "boot")
		return cold, counterSum(t, p.Metrics, "kiln_agent_prewarmed_total"), counterSum(t, p.Metrics, "kiln_agent_queued_total")
	}
	var out []openLoopFigures
	for range rounds {
		c0, p0, q0 := node()
		f := offer(capacity/2, 10*time.Second, call)
		c1, p1, q1 := node()
		f.coldStarts, f.prewarmed, f.queued = c1-c0, p1-p0, q1-q0
		out = append(out, f)
		time.Sleep(time.Second)
	}
	return capacity, out
}

// offer sends rate calls a second for span, each at its intended time in
// a goroutine of its own, and measures each from that intended time.
func offer(rate float64, span time.Duration, call func() bool) openLoopFigures {
	f := openLoopFigures{rate: rate, span: span}
	var wg sync.WaitGroup
	total := int(f.rate * f.span.Seconds())
	interval := time.Duration(float64(time.Second) / f.rate)
	lat := make([]time.Duration, total)
	var failed atomic.Int64
	start := time.Now().Add(50 * time.Millisecond)
	for i := range total {
		intended := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(intended))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !call() {
				failed.Add(1)
			}
			lat[i] = time.Since(intended)
		}()
	}
	wg.Wait()
	f.p50, f.p99, f.p999 = median(lat), quantile(lat, 0.99), quantile(lat, 0.999)
	f.calls, f.failed = total, int(failed.Load())
	return f
}

// TestDensityReport: how many idle warm instances of hello-go (64 MiB
// guests) one node holds at once, and the host memory each costs. An
// agent with min_warm = KILN_DENSITY (default 5000) fills its pool from
// one snapshot; the fill stops early when the host runs low on memory or
// stops making progress. Separate from TestPoolReport: it needs a large
// machine (scripts/bench density).
func TestDensityReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (scripts/bench density)")
	}
	kvmtest.Require(t)
	target := envInt("KILN_DENSITY", 5000)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	prog := kvmtest.Artifact(t, "examples/hello-go/hello-go")
	// Admission counts guest memory; the measurement is of what idle
	// restored instances really cost, so the budget is no limit here.
	a, d := benchAgent(t, kernel, prog, uint64(target+10)*64<<20, false)
	memBefore := memAvailable(t)
	fn := &kilnv1.FunctionSpec{Name: "hello-go", ImageDigest: d, MinWarm: uint32(target), KeepAliveMs: 3600_000}
	invokeOnce(t, a, fn, "world") // boots and takes the snapshot
	invokeOnce(t, a, fn, "world") // warm: the pool is now ready to grow
	start := time.Now()
	last, lastAt := 0, time.Now()
	floor := memTotal(t) / 20
	var reached int
	var why string
	for {
		time.Sleep(time.Second)
		c, err := a.Capacity(context.Background(), &kilnv1.CapacityRequest{})
		if err != nil {
			t.Fatal(err)
		}
		reached = 0
		for _, w := range c.Warm {
			reached += int(w.Idle)
		}
		if reached != last {
			fmt.Fprintf(os.Stderr, "bench: %d idle instances after %v\n", reached, time.Since(start).Round(time.Second))
			last, lastAt = reached, time.Now()
		}
		switch {
		case reached >= target:
			why = "target reached"
		case memAvailable(t) < floor:
			why = "host memory below 5%"
		case time.Since(lastAt) > time.Minute:
			why = "no progress for a minute"
		case time.Since(start) > 20*time.Minute:
			why = "20 minutes"
		}
		if why != "" {
			break
		}
	}
	used := memBefore - memAvailable(t)
	fmt.Printf("\n== Density: idle warm hello-go instances (64 MiB guests) on one node ==\n")
	fmt.Printf("%-52s %12d  (stopped: %s, after %v)\n", "idle instances held at once", reached, why, time.Since(start).Round(time.Second))
	fmt.Printf("%-52s %12.2f MiB\n", "host memory per idle instance (MemAvailable drop)", float64(used)/float64(reached)/(1<<20))
	fmt.Printf("%-52s %12.1f GiB of %.1f GiB\n", "host memory used by them", float64(used)/(1<<30), float64(memTotal(t))/(1<<30))
	fmt.Printf("%-52s %12.0f\n", "instances per 24 GiB at that cost", 24*float64(1<<30)/(float64(used)/float64(reached)))
	// Destroying thousands of VMs takes minutes here: say so, or the
	// silence reads as a stalled emulator.
	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	closing := time.Now()
	for {
		select {
		case <-closed:
			fmt.Fprintf(os.Stderr, "bench: %d instances destroyed in %v\n", reached, time.Since(closing).Round(time.Second))
			return
		case <-time.After(30 * time.Second):
			fmt.Fprintf(os.Stderr, "bench: destroying %d instances (%v so far)\n", reached, time.Since(closing).Round(time.Second))
		}
	}
}

func meminfo(t *testing.T, key string) uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Error(err) // not Fatal: the instances are still counted
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			var kb uint64
			fmt.Sscan(rest, &kb)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/meminfo", key)
	return 0
}

func memAvailable(t *testing.T) uint64 { return meminfo(t, "MemAvailable") }
func memTotal(t *testing.T) uint64     { return meminfo(t, "MemTotal") }
