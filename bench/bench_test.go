// Package bench measures Kiln. `make bench` runs TestReport with
// KILN_BENCH=1 (inside scripts/kvmbox where the host has no /dev/kvm) and
// prints medians and ratios against a baseline measured in the same run;
// docs/BENCHMARKS.md records the latest figures and the command.
package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/proto/wire"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

func runs() int {
	if n, err := strconv.Atoi(os.Getenv("KILN_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 21
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1))]
}

// runBounded runs vm for at most two minutes: no phase of the report needs
// that long, so a guest that stops making progress ends the report with its
// registers instead of leaving it silent.
func runBounded(vm *vmm.VM) (*vmm.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := vm.Run(ctx)
	if err != nil && res != nil && res.Regs != "" {
		err = fmt.Errorf("%w\n%s", err, res.Regs)
	}
	return res, err
}

// TestReport prints the foundation's figures. It is a measurement, not a
// check: it runs only with KILN_BENCH=1.
func TestReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (make bench)")
	}
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	helloPath := filepath.Join(kvmtest.BuildDir(t), "examples/hello-c/hello")
	hello := kvmtest.Artifact(t, "examples/hello-c/hello")
	n := runs()

	progress := func(what string) { fmt.Fprintf(os.Stderr, "bench: %s\n", what) }
	progress("VM create → first read")
	// 1. VM creation → the C hello's first read of a request, in process.
	var toFirstRead, total []time.Duration
	for i := 0; i < n; i++ {
		first, whole := bootToFirstRead(t, kernel, hello)
		toFirstRead = append(toFirstRead, first)
		total = append(total, whole)
	}
	progress("native fork/exec")
	// 2. The same program as a native process: fork/exec → it reads EOF → exit.
	var native []time.Duration
	for i := 0; i < n; i++ {
		cmd := exec.Command(helloPath)
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("native %s: %v", helloPath, err)
		}
		native = append(native, time.Since(start))
	}
	progress("kiln run")
	// 3. `kiln run hello </dev/null`: the whole CLI process, as a user runs it.
	var cli []time.Duration
	if kiln, err := exec.LookPath("kiln"); err == nil {
		for i := 0; i < n; i++ {
			cmd := exec.Command(kiln, "run", "--timeout", "60s", helloPath) // a stalled run fails the bench, not hangs it
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("kiln run: %v\n%s", err, out)
			}
			cli = append(cli, time.Since(start))
		}
	}
	progress("warm serve invocations")
	// 4. Warm serve invocations: exits and ring-0 entries per invocation.
	warm := warmInvocations(t, kernel, hello, 10*n)

	fmt.Printf("\n== Kiln foundation benchmarks (%d runs each; medians) ==\n", n)
	fmt.Printf("%-52s %12s\n", "what", "median")
	fmt.Printf("%-52s %12v\n", "VM create → C hello's first request read (in process)", median(toFirstRead))
	fmt.Printf("%-52s %12v\n", "VM create → C hello exits at EOF (in process)", median(total))
	if cli != nil {
		fmt.Printf("%-52s %12v\n", "`kiln run hello </dev/null` (whole CLI process)", median(cli))
	}
	fmt.Printf("%-52s %12v\n", "native fork/exec of the same hello </dev/null", median(native))
	fmt.Printf("%-52s %12.1fx\n", "ratio: VM first read / native fork+exec+exit", float64(median(toFirstRead))/float64(median(native)))
	if cli != nil {
		fmt.Printf("%-52s %12.1fx\n", "ratio: kiln run / native", float64(median(cli))/float64(median(native)))
	}
	fmt.Printf("%-52s %12v\n", "warm serve invocation at the VMM, p50", warm.p50)
	fmt.Printf("%-52s %12v\n", "warm serve invocation at the VMM, p99", warm.p99)
	fmt.Printf("%-52s %12.2f\n", "VM exits per warm serve invocation (median)", warm.exitsMedian)
	fmt.Printf("%-52s %12d\n", "VM exits per warm serve invocation (max)", warm.exitsMax)
	fmt.Printf("%-52s %12.2f\n", "ring-0 entries per warm invocation", warm.ring0PerCall)
	fmt.Printf("%-52s %12d\n", "ring-0 entries during boot", warm.ring0Boot)

	goReport(t, kernel, n, progress)
}

// goReport measures the Go hello (examples/hello-go, sdk/go) the same way:
// VM create → its first request read beside a native fork/exec of the same
// binary, what the start-up costs (syscalls, exits, ring-0 entries: on the
// PVM hosts each ring-0 entry is emulated), `kiln run`, and warm calls.
func goReport(t *testing.T, kernel []byte, n int, progress func(string)) {
	path := filepath.Join(kvmtest.BuildDir(t), "examples/hello-go/hello-go")
	prog := kvmtest.Artifact(t, "examples/hello-go/hello-go")
	progress("Go: VM create → first read")
	var toFirstRead []time.Duration
	for i := 0; i < n; i++ {
		first, _ := bootToFirstRead(t, kernel, prog)
		toFirstRead = append(toFirstRead, first)
	}
	progress("Go: start-up breakdown")
	vm, err := vmm.New(vmm.Config{Kernel: kernel, Program: prog, Args: []string{"hello-go"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := runBounded(vm)
	vm.Close()
	if err != nil || res.Reason != vmm.ReasonExited || res.Status != 0 {
		t.Fatalf("hello-go at EOF: %+v %v", res, err)
	}
	progress("Go: native fork/exec")
	var native []time.Duration
	for i := 0; i < n; i++ {
		cmd := exec.Command(path)
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("native %s: %v", path, err)
		}
		native = append(native, time.Since(start))
	}
	var cli []time.Duration
	if kiln, err := exec.LookPath("kiln"); err == nil {
		progress("Go: kiln run")
		for i := 0; i < n; i++ {
			cmd := exec.Command(kiln, "run", "--timeout", "60s", path)
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("kiln run: %v\n%s", err, out)
			}
			cli = append(cli, time.Since(start))
		}
	}
	progress("Go: warm serve invocations")
	warm := warmInvocations(t, kernel, prog, 10*n)

	fmt.Printf("\n== Go hello (examples/hello-go, %d runs each; medians) ==\n", n)
	fmt.Printf("%-52s %12v\n", "VM create → Go hello's first request read", median(toFirstRead))
	if cli != nil {
		fmt.Printf("%-52s %12v\n", "`kiln run hello-go </dev/null` (whole CLI process)", median(cli))
	}
	fmt.Printf("%-52s %12v\n", "native fork/exec of the same binary </dev/null", median(native))
	fmt.Printf("%-52s %12.1fx\n", "ratio: VM first read / native fork+exec+exit", float64(median(toFirstRead))/float64(median(native)))
	fmt.Printf("%-52s %12d\n", "syscalls, boot → exit at EOF", res.Syscalls)
	fmt.Printf("%-52s %12d\n", "VM exits, boot → exit at EOF", res.Stats.Exits)
	fmt.Printf("%-52s %12d\n", "ring-0 entries, boot → exit at EOF", res.Ring0Entries)
	fmt.Printf("%-52s %12d\n", "-ENOSYS answers, boot → exit at EOF", res.Enosys)
	fmt.Printf("%-52s %12.1f\n", "guest memory used at exit (MiB)", float64(res.MemUsed)/(1<<20))
	fmt.Printf("%-52s %12v\n", "warm Go invocation at the VMM, p50", warm.p50)
	fmt.Printf("%-52s %12v\n", "warm Go invocation at the VMM, p99", warm.p99)
	fmt.Printf("%-52s %12.2f\n", "VM exits per warm Go invocation (median)", warm.exitsMedian)
	fmt.Printf("%-52s %12.2f\n", "ring-0 entries per warm Go invocation", warm.ring0PerCall)
}

// bootToFirstRead creates a VM for a serve function and times the moment
// its first wait for input (the read of its first request, which blocks)
// reaches the VMM, then closes its input and times the clean exit.
func bootToFirstRead(t *testing.T, kernel, hello []byte) (first, whole time.Duration) {
	t.Helper()
	in := &signalReader{read: make(chan time.Time, 1), release: make(chan struct{})}
	start := time.Now()
	vm, err := vmm.New(vmm.Config{Kernel: kernel, Program: hello, Args: []string{"hello"}, Stdin: in})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan error, 1)
	go func() { _, err := runBounded(vm); done <- err }()
	for vm.Stats().InputWaits == 0 {
		select {
		case err := <-done:
			t.Fatalf("hello ended before reading a request: %v", err)
		default:
		}
		time.Sleep(20 * time.Microsecond)
	}
	first = time.Since(start)
	close(in.release)
	if err := <-done; err != nil {
		t.Fatalf("hello: %v", err)
	}
	return first, time.Since(start)
}

// signalReader is an empty stdin that stays open until release is closed.
type signalReader struct {
	read    chan time.Time
	release chan struct{}
}

func (s *signalReader) Read(p []byte) (int, error) {
	<-s.release
	return 0, io.EOF
}

type warmFigures struct {
	p50, p99     time.Duration
	exitsMedian  float64
	exitsMax     uint64
	ring0PerCall float64
	ring0Boot    uint64
}

// warmInvocations boots the serve hello once and sends it calls one at a
// time through its fd 0/1, the way the node-agent does.
func warmInvocations(t *testing.T, kernel, hello []byte, calls int) warmFigures {
	t.Helper()
	ring0 := func(calls int) (uint64, []time.Duration, []uint64) {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		vm, err := vmm.New(vmm.Config{Kernel: kernel, Program: hello, Args: []string{"hello"}, Stdin: inR, Stdout: outW})
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Close()
		type result struct {
			res *vmm.Result
			err error
		}
		done := make(chan result, 1)
		go func() { r, err := runBounded(vm); outW.Close(); done <- result{r, err} }()
		br := bufio.NewReader(outR)
		// Start counting once the guest waits for its first request, so the
		// first call does not also pay for the boot's exits.
		for calls > 0 && vm.Stats().InputWaits == 0 {
			time.Sleep(20 * time.Microsecond)
		}
		var lat []time.Duration
		var exits []uint64
		for i := 0; i < calls; i++ {
			before := vm.Stats().Exits
			start := time.Now()
			req := &wire.Request{ID: uint64(i + 1), Method: "POST", Path: "/", Body: []byte("bench")}
			if err := wire.WriteRequest(inW, req); err != nil {
				t.Fatal(err)
			}
			if _, err := wire.ReadResponse(br, 1<<20); err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			lat = append(lat, time.Since(start))
			// The exit that delivered the response is also the wait for the next request.
			exits = append(exits, vm.Stats().Exits-before)
		}
		inW.Close()
		r := <-done
		if r.err != nil {
			t.Fatalf("hello: %v", r.err)
		}
		return r.res.Ring0Entries, lat, exits
	}
	boot, _, _ := ring0(0)
	total, lat, exits := ring0(calls)
	sorted := append([]uint64(nil), exits...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return warmFigures{
		p50:          median(lat),
		p99:          quantile(lat, 0.99),
		exitsMedian:  float64(sorted[len(sorted)/2]),
		exitsMax:     sorted[len(sorted)-1],
		ring0PerCall: float64(total-boot) / float64(calls),
		ring0Boot:    boot,
	}
}
