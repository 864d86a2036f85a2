package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	nodeagent "github.com/kilnfaas/kiln/node-agent"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// The restore-scaling report asks one question: when restores slow down as
// a node holds more VMs (TestDensityReport: ~8/s with a few hundred, ~2/s
// near 3,000), is the time in the host kernel and proportional to the VMs of
// the same process (each KVM VM registers an MMU notifier on the process's
// mm, so registration walks every VMA and every copy-on-write fault calls
// every VM's callback), or in user space (GC, bookkeeping)? It restores the
// same VMs in one process and spread over four, and prints both side by side.
const (
	scaleBatch = 250 // restores per batch in one process: the table's step
	scaleProcs = 4   // processes of the sharded mode
	// scaleProbes bare KVM_CREATE_VMs per batch isolate registration cost.
	scaleProbes = 5
	// scaleChildEnv makes the test binary a child of the sharded mode:
	// "index,restores,batches"; the snapshot's path is in scaleSnapEnv.
	scaleChildEnv = "KILN_RESTORE_CHILD"
	scaleSnapEnv  = "KILN_RESTORE_SNAPSHOT"
	// scaleDataPrefix marks a child's machine-readable lines on its stdout.
	scaleDataPrefix = "restorescale-data "
	// kvmCreateVM is KVM_CREATE_VM, _IO(KVMIO, 0x01): the probe calls it
	// directly so that nothing but the kernel's VM creation is timed.
	kvmCreateVM = 0xAE01
)

// errLowMemory stops a mode before the host runs out of memory.
var errLowMemory = errors.New("host memory below 5% of MemTotal")

// scaleBatchStats is one batch of restores in one process.
type scaleBatchStats struct {
	Proc    int             // child index; -1 in the one-process mode
	Batch   int             // batch number, from 0
	Live    int             // VMs live in this process before the batch
	Restore []time.Duration // vmm.New of each restore
	Resume  []time.Duration // Run → the guest parked in its wait for input
	User    time.Duration   // the process's user CPU over the batch
	Sys     time.Duration   // and its system CPU
	MinFlt  int64           // minor page faults of the process over the batch
	GCs     uint64          // Go GC cycles over the batch
	Create  []time.Duration // bare KVM_CREATE_VM at the batch's start
	Destroy []time.Duration // close of those VM fds
	Probe   string          // why the probe failed, if it did
	VMAs    int             // mappings of the process after the batch
	Wall    time.Duration   // the batch's restores, wall clock
}

// scaleEnd is how one process's restores ended.
type scaleEnd struct {
	Restored int
	Stop     string        // why it stopped early; "" when all were restored
	Wall     time.Duration // the restore phase, wall clock
}

// scaleClosed is one process closing its VMs.
type scaleClosed struct {
	Close      []time.Duration // vm.Close of each
	EndedEarly int             // VMs whose Run had already ended (they should all be parked)
	Wall       time.Duration
}

// scaleLine is one machine-readable line of a child; one field is set.
type scaleLine struct {
	Batch  *scaleBatchStats `json:",omitempty"`
	End    *scaleEnd        `json:",omitempty"`
	Closed *scaleClosed     `json:",omitempty"`
}

// firstRead is a restored VM's stdin: its first Read says the guest is
// parked in its wait (the VMM starts reading only when the guest waits), the
// rest wait on a pipe that is never written.
type firstRead struct {
	r    io.Reader
	once sync.Once
	at   chan time.Time
}

func (f *firstRead) Read(p []byte) (int, error) {
	f.once.Do(func() { f.at <- time.Now() })
	return f.r.Read(p)
}

// parkedVM is a restored VM parked in its first wait for input.
type parkedVM struct {
	vm   *vmm.VM
	in   *io.PipeWriter
	done chan error // Run's end: only Close should cause it
}

// scaleRestorer restores VMs in the calling process and keeps them parked.
type scaleRestorer struct {
	t     *testing.T
	cfg   vmm.Config // with Snapshot set
	label string     // "1 process" or "p2/4": prefixes its lines
	proc  int
	kvm   int    // an open /dev/kvm for the probes; -1 if it would not open
	floor uint64 // MemAvailable below which restoring stops
	vms   []parkedVM
	noted time.Time // the last progress line
}

// note prints a progress line to stderr, at least every batch (now) and
// at most every 30 s otherwise: scripts/bench takes three silent minutes
// for a stalled emulator, and a batch can take two under TCG.
func (r *scaleRestorer) note(now bool, format string, args ...any) {
	if !now && time.Since(r.noted) < 30*time.Second {
		return
	}
	r.noted = time.Now()
	fmt.Fprintf(os.Stderr, "bench: restore scaling [%s] "+format+"\n", append([]any{r.label}, args...)...)
}

func newScaleRestorer(t *testing.T, cfg vmm.Config, label string, proc int) *scaleRestorer {
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Printf("[%s] KVM_CREATE_VM probes off: /dev/kvm: %v\n", label, err)
		kvm = -1
	}
	return &scaleRestorer{t: t, cfg: cfg, label: label, proc: proc, kvm: kvm, floor: memTotal(t) / 20}
}

// restoreOne restores one VM, starts it and waits until it is parked, so
// that each restore's kernel work (its copy-on-write fault of the boot-info
// page in resume included) falls inside its batch and nothing overlaps.
func (r *scaleRestorer) restoreOne() (restore, resume time.Duration, err error) {
	pr, pw := io.Pipe()
	in := &firstRead{r: pr, at: make(chan time.Time, 1)}
	cfg := r.cfg
	cfg.Stdin = in
	start := time.Now()
	vm, err := vmm.New(cfg)
	restore = time.Since(start)
	if err != nil {
		pw.Close()
		return restore, 0, err
	}
	p := parkedVM{vm: vm, in: pw, done: make(chan error, 1)}
	ran := time.Now()
	go func() {
		_, err := vm.Run(context.Background())
		p.done <- err
	}()
	limit := time.NewTimer(2 * time.Minute)
	defer limit.Stop()
	select {
	case at := <-in.at:
		r.vms = append(r.vms, p)
		return restore, at.Sub(ran), nil
	case err := <-p.done:
		vm.Close()
		pw.Close()
		return restore, 0, fmt.Errorf("a restored VM ended before its wait for input (run: %v)", err)
	case <-limit.C:
		vm.Close()
		pw.Close()
		return restore, 0, errors.New("a restored VM did not reach its wait for input within 2 minutes")
	}
}

// probe times bare KVM_CREATE_VMs and the close of each in this process:
// creation registers the new VM's MMU notifier on this process's mm, and
// the close unregisters it, with no memory, vCPU or VMM code around them.
func (r *scaleRestorer) probe(b *scaleBatchStats) {
	if r.kvm < 0 {
		b.Probe = "no /dev/kvm"
		return
	}
	for range scaleProbes {
		start := time.Now()
		var fd uintptr
		var errno syscall.Errno
		for {
			fd, _, errno = unix.Syscall(unix.SYS_IOCTL, uintptr(r.kvm), kvmCreateVM, 0)
			if errno != unix.EINTR { // the Go runtime's signals interrupt it
				break
			}
		}
		created := time.Since(start)
		if errno != 0 {
			b.Probe = "KVM_CREATE_VM: " + errno.Error()
			return
		}
		start = time.Now()
		unix.Close(int(fd))
		b.Create, b.Destroy = append(b.Create, created), append(b.Destroy, time.Since(start))
	}
}

// batch restores n VMs and measures them; err says why it stopped early.
func (r *scaleRestorer) batch(index, n int) (scaleBatchStats, error) {
	b := scaleBatchStats{Proc: r.proc, Batch: index, Live: len(r.vms)}
	r.probe(&b)
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	gc0 := gcCycles()
	start := time.Now()
	var err error
	for i := range n {
		// Every 25 restores: 250 of them can take ~150 MiB.
		if i%25 == 0 && memAvailable(r.t) < r.floor {
			err = errLowMemory
			break
		}
		restore, resume, e := r.restoreOne()
		if e != nil {
			err = e
			break
		}
		b.Restore, b.Resume = append(b.Restore, restore), append(b.Resume, resume)
		r.note(false, "batch %d: %d live", index+1, len(r.vms))
	}
	b.Wall = time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	b.User = time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano())
	b.Sys = time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
	b.MinFlt = ru1.Minflt - ru0.Minflt
	b.GCs = gcCycles() - gc0
	b.VMAs = countVMAs()
	return b, err
}

// run restores share VMs in batches; emit hears every batch, also the one
// a failure cut short.
func (r *scaleRestorer) run(share, batches int, emit func(scaleBatchStats)) scaleEnd {
	start := time.Now()
	for j := range batches {
		lo, hi := j*share/batches, (j+1)*share/batches
		b, err := r.batch(j, hi-lo)
		emit(b)
		r.note(true, "batch %d/%d: %d live, %.1f restores/s", j+1, batches, len(r.vms), perSecond(len(b.Restore), b.Wall))
		if err != nil {
			fmt.Printf("[%s] stopped after %d restores: %v\n", r.label, len(r.vms), err)
			return scaleEnd{Restored: len(r.vms), Stop: err.Error(), Wall: time.Since(start)}
		}
	}
	return scaleEnd{Restored: len(r.vms), Wall: time.Since(start)}
}

// closeAll closes every parked VM, timing each Close.
func (r *scaleRestorer) closeAll() scaleClosed {
	var c scaleClosed
	start := time.Now()
	for i, p := range r.vms {
		select {
		case <-p.done:
			c.EndedEarly++
		default:
		}
		s := time.Now()
		p.vm.Close()
		c.Close = append(c.Close, time.Since(s))
		p.in.Close()
		r.note((i+1)%scaleBatch == 0, "closed %d of %d VMs (%v)", i+1, len(r.vms), time.Since(start).Round(time.Second))
	}
	c.Wall = time.Since(start)
	r.vms = nil
	if r.kvm >= 0 {
		unix.Close(r.kvm)
		r.kvm = -1
	}
	return c
}

// print writes b as one human line.
func (b scaleBatchStats) print(label string) {
	n := len(b.Restore)
	probe := fmt.Sprintf("KVM_CREATE_VM p50 %s close %s ms", msQ(b.Create, 0.5), msQ(b.Destroy, 0.5))
	if b.Probe != "" {
		probe = "KVM_CREATE_VM probe: " + b.Probe
	}
	fmt.Printf("[%s] live %5d: %3d restores, restore p50 %s p90 %s ms, resume p50 %s ms, per restore: user %s sys %s ms, minflt %s; GCs %d; %s; VMAs %d; %.1f restores/s\n",
		label, b.Live, n, msQ(b.Restore, 0.5), msQ(b.Restore, 0.9), msQ(b.Resume, 0.5),
		msPer(b.User, n), msPer(b.Sys, n), perCount(b.MinFlt, n), b.GCs, probe, b.VMAs, perSecond(n, b.Wall))
}

// TestRestoreScalingReport: restores of hello-go (64 MiB) from one snapshot
// into VMs that stay parked in their wait, KILN_RESTORE_N (default 2000) of
// them in one process, then the same number spread over four concurrent
// processes; per batch of 250 the restore time, the process's user and
// system CPU per restore and a bare KVM_CREATE_VM, and a table of both modes
// by live VMs. KILN_BENCH=1 (KILN_BENCH_TESTS=TestRestoreScalingReport
// scripts/bench).
func TestRestoreScalingReport(t *testing.T) {
	if os.Getenv("KILN_BENCH") != "1" {
		t.Skip("measurement: set KILN_BENCH=1 (KILN_BENCH_TESTS=TestRestoreScalingReport scripts/bench)")
	}
	kvmtest.Require(t)
	if spec := os.Getenv(scaleChildEnv); spec != "" {
		restoreScaleChild(t, spec)
		return
	}
	n := envInt("KILN_RESTORE_N", 2000)
	raiseNoFile(n)
	cfg := scaleConfig(t)

	fmt.Fprintln(os.Stderr, "bench: restore scaling: boot hello-go and take its snapshot")
	snapPath := filepath.Join(t.TempDir(), "hello-go.snap")
	sc := cfg
	sc.SnapshotPath = snapPath
	var snapped bool
	var snapErr error
	sc.OnSnapshot = func(err error) { snapped, snapErr = true, err }
	vm, err := vmm.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runBounded(vm) // stdin is empty: hello-go snapshots at its first read, reads EOF and exits
	vm.Close()
	if err != nil {
		t.Fatalf("hello-go taking the snapshot: %v", err)
	}
	if !snapped || snapErr != nil {
		t.Fatalf("hello-go took no snapshot at its first read (%v)", snapErr)
	}
	snap, err := vmm.OpenSnapshot(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if err := snap.Matches(cfg); err != nil {
		t.Fatal(err)
	}
	batches := (n + scaleBatch - 1) / scaleBatch

	fmt.Printf("\n== Restore scaling, one process: %d restores of hello-go (64 MiB) from one snapshot, batches of %d ==\n", n, scaleBatch)
	rc := cfg
	rc.Snapshot = snap
	r := newScaleRestorer(t, rc, "1 process", -1)
	var one []scaleBatchStats
	oneEnd := r.run(n, batches, func(b scaleBatchStats) {
		b.print(r.label)
		one = append(one, b)
	})
	fmt.Fprintf(os.Stderr, "bench: restore scaling [1 process] closing %d VMs\n", oneEnd.Restored)
	oneClosed := r.closeAll()

	fmt.Printf("\n== Restore scaling, %d processes at once: %d restores in all, batches of ~%d per process ==\n",
		scaleProcs, n, scaleBatch/scaleProcs)
	four, fourEnds, fourClosed := restoreScaleChildren(t, snapPath, n, batches)

	printScaleTable(n, batches, one, oneEnd, oneClosed, four, fourEnds, fourClosed)
}

// scaleConfig is hello-go's VM: the config the snapshot is taken with and
// the one restores are checked against.
func scaleConfig(t *testing.T) vmm.Config {
	return vmm.Config{
		Kernel:  kvmtest.Artifact(t, "kernel/kiln-kernel.elf"),
		Program: kvmtest.Artifact(t, "examples/hello-go/hello-go"),
		Args:    []string{"hello-go"},
		MemSize: 64 << 20,
	}
}

// restoreScaleChild is the test binary re-executed as one process of the
// sharded mode: it restores its share, prints each batch (a human line and
// a data line for the parent), holds its VMs until the parent says every
// process is done (a line or EOF on stdin), then closes them.
func restoreScaleChild(t *testing.T, spec string) {
	var proc, share, batches int
	if _, err := fmt.Sscanf(spec, "%d,%d,%d", &proc, &share, &batches); err != nil || batches < 1 {
		t.Fatalf("%s=%q: want index,restores,batches (%v)", scaleChildEnv, spec, err)
	}
	raiseNoFile(share)
	snap, err := vmm.OpenSnapshot(os.Getenv(scaleSnapEnv))
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	cfg := scaleConfig(t)
	cfg.Snapshot = snap
	if err := snap.Matches(cfg); err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("p%d/%d", proc+1, scaleProcs)
	send := func(l scaleLine) {
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("%s%s\n", scaleDataPrefix, b)
	}
	r := newScaleRestorer(t, cfg, label, proc)
	end := r.run(share, batches, func(b scaleBatchStats) {
		b.print(label)
		send(scaleLine{Batch: &b})
	})
	if end.Stop != "" {
		end.Stop = label + ": " + end.Stop
	}
	send(scaleLine{End: &end})
	bufio.NewReader(os.Stdin).ReadString('\n')
	closed := r.closeAll()
	send(scaleLine{Closed: &closed})
}

// restoreScaleChildren runs the sharded mode: scaleProcs children of this
// test binary at once, n restores among them, each in the same number of
// batches as the one process so that batch j of every mode starts at about
// the same total of live VMs. Their human lines are passed through as they
// come; their data lines are gathered by batch.
func restoreScaleChildren(t *testing.T, snapPath string, n, batches int) (map[int][]scaleBatchStats, []scaleEnd, []scaleClosed) {
	// os.Executable, not os.Args[0]: the same binary, wherever the working
	// directory is and however it was started.
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // kills children still running if the parent gives up
	var mu sync.Mutex
	byBatch := map[int][]scaleBatchStats{}
	var ends []scaleEnd
	var closes []scaleClosed
	type child struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		ended  chan struct{} // its End arrived, or its stdout closed
		reader chan struct{} // its stdout is read to the end
	}
	var children []*child
	for c := range scaleProcs {
		share := n / scaleProcs
		if c < n%scaleProcs {
			share++
		}
		cmd := exec.CommandContext(ctx, exe, "-test.run=^TestRestoreScalingReport$", "-test.count=1", "-test.timeout=55m")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d,%d", scaleChildEnv, c, share, batches), scaleSnapEnv+"="+snapPath)
		cmd.Stderr = os.Stderr // progress lines, live
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			fmt.Printf("[p%d/%d] did not start: %v\n", c+1, scaleProcs, err)
			continue
		}
		ch := &child{cmd: cmd, stdin: stdin, ended: make(chan struct{}), reader: make(chan struct{})}
		children = append(children, ch)
		go func() {
			defer close(ch.reader)
			var endOnce sync.Once
			defer endOnce.Do(func() { close(ch.ended) })
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 16<<20)
			for sc.Scan() {
				line := sc.Text()
				data, ok := strings.CutPrefix(line, scaleDataPrefix)
				if !ok {
					if line != "PASS" {
						fmt.Println(line)
					}
					continue
				}
				var l scaleLine
				if err := json.Unmarshal([]byte(data), &l); err != nil {
					fmt.Printf("[p%d/%d] unreadable data line: %v\n", c+1, scaleProcs, err)
					continue
				}
				mu.Lock()
				switch {
				case l.Batch != nil:
					byBatch[l.Batch.Batch] = append(byBatch[l.Batch.Batch], *l.Batch)
				case l.End != nil:
					ends = append(ends, *l.End)
				case l.Closed != nil:
					closes = append(closes, *l.Closed)
				}
				mu.Unlock()
				if l.End != nil {
					endOnce.Do(func() { close(ch.ended) })
				}
			}
			if err := sc.Err(); err != nil {
				fmt.Printf("[p%d/%d] reading its output: %v\n", c+1, scaleProcs, err)
				io.Copy(io.Discard, stdout) // never leave it blocked on a full pipe
			}
		}()
	}
	// Every child keeps its VMs until all have restored theirs, so that at
	// any moment the node holds what the table says.
	for _, ch := range children {
		<-ch.ended
	}
	fmt.Fprintf(os.Stderr, "bench: restore scaling [%d processes] closing their VMs\n", scaleProcs)
	for _, ch := range children {
		io.WriteString(ch.stdin, "close\n")
		ch.stdin.Close()
	}
	for i, ch := range children {
		<-ch.reader
		if err := ch.cmd.Wait(); err != nil {
			fmt.Printf("[child %d of %d] %v\n", i+1, len(children), err)
		}
	}
	return byBatch, ends, closes
}

// printScaleTable prints both modes by live VMs, then how each ended.
func printScaleTable(n, batches int, one []scaleBatchStats, oneEnd scaleEnd, oneClosed scaleClosed,
	four map[int][]scaleBatchStats, fourEnds []scaleEnd, fourClosed []scaleClosed) {
	fmt.Printf("\n== Restore scaling: one process vs %d, hello-go 64 MiB, %d restores; per batch, milliseconds ==\n", scaleProcs, n)
	fmt.Println("live: VMs live on the node before the batch (in the sharded mode each process holds a quarter)")
	fmt.Println("restore: median vmm.New; sys, user: the processes' CPU per restore over the batch (New, resume to the wait, GC, all);")
	fmt.Println("create: median bare KVM_CREATE_VM + close in a process holding that many VMs (MMU-notifier registration alone)")
	fmt.Println("The sharded processes share the CPUs, so their wall times include waiting for each other; compare CPU.")
	fmt.Printf("%7s | %8s %8s %8s %8s | %8s %8s %8s %8s\n", "", "1 process", "", "", "", fmt.Sprintf("%d processes", scaleProcs), "", "", "")
	fmt.Printf("%7s | %8s %8s %8s %8s | %8s %8s %8s %8s\n", "live", "restore", "sys", "user", "create", "restore", "sys", "user", "create")
	for j := range batches {
		row := fmt.Sprintf("%7d |", j*n/batches)
		if j < len(one) {
			b := one[j]
			row += fmt.Sprintf(" %8s %8s %8s %8s |", msQ(b.Restore, 0.5), msPer(b.Sys, len(b.Restore)), msPer(b.User, len(b.Restore)),
				msQ(sumDurations(b.Create, b.Destroy), 0.5))
		} else {
			row += fmt.Sprintf(" %8s %8s %8s %8s |", "-", "-", "-", "-")
		}
		var restore, create []time.Duration
		var sys, user time.Duration
		for _, b := range four[j] {
			restore = append(restore, b.Restore...)
			create = append(create, sumDurations(b.Create, b.Destroy)...)
			sys, user = sys+b.Sys, user+b.User
		}
		row += fmt.Sprintf(" %8s %8s %8s %8s", msQ(restore, 0.5), msPer(sys, len(restore)), msPer(user, len(restore)), msQ(create, 0.5))
		if k := len(four[j]); k != scaleProcs {
			row += fmt.Sprintf("  (%d of %d processes)", k, scaleProcs)
		}
		fmt.Println(row)
	}
	fmt.Printf("%-44s %s\n", "1 process: restored", describeEnd(oneEnd.Restored, n, oneEnd.Wall, oneEnd.Stop))
	fmt.Printf("%-44s %s ms per VM (%v in all; %d had ended before Close)\n", "1 process: Close, median",
		msQ(oneClosed.Close, 0.5), oneClosed.Wall.Round(time.Millisecond), oneClosed.EndedEarly)
	restored, slowest := 0, time.Duration(0)
	var stops []string
	for _, e := range fourEnds {
		restored += e.Restored
		slowest = max(slowest, e.Wall)
		if e.Stop != "" {
			stops = append(stops, e.Stop)
		}
	}
	fmt.Printf("%-44s %s\n", fmt.Sprintf("%d processes: restored (%d reported)", scaleProcs, len(fourEnds)),
		describeEnd(restored, n, slowest, strings.Join(stops, "; ")))
	var closes []time.Duration
	early, closeWall := 0, time.Duration(0)
	for _, c := range fourClosed {
		closes = append(closes, c.Close...)
		early += c.EndedEarly
		closeWall = max(closeWall, c.Wall)
	}
	fmt.Printf("%-44s %s ms per VM (%v the slowest process; %d had ended before Close)\n", fmt.Sprintf("%d processes: Close, median", scaleProcs),
		msQ(closes, 0.5), closeWall.Round(time.Millisecond), early)
}

func describeEnd(restored, n int, wall time.Duration, stop string) string {
	s := fmt.Sprintf("%d of %d in %v, %.1f restores/s overall", restored, n, wall.Round(time.Second), perSecond(restored, wall))
	if stop != "" {
		s += " — stopped: " + stop
	}
	return s
}

// raiseNoFile lifts the open-file limit as the agent does, and says so
// when it stays below what vms VMs need: each holds three or four.
func raiseNoFile(vms int) {
	want := uint64(4*vms + 1024)
	if got := nodeagent.RaiseOpenFiles(slog.New(slog.DiscardHandler)); got < want {
		fmt.Printf("open-file limit %d is below the %d that %d VMs need: restores will stop early\n", got, want, vms)
	}
}

// gcCycles is the Go GCs this process completed so far, read without
// stopping the world.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// countVMAs is the mappings of this process: mm_take_all_locks, which
// MMU-notifier registration takes, walks every one of them.
func countVMAs() int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return -1
	}
	return bytes.Count(b, []byte{'\n'})
}

// msQ is the q-quantile of d in milliseconds, "-" when d is empty.
func msQ(d []time.Duration, q float64) string {
	if len(d) == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(quantile(d, q))/1e6, 'f', 2, 64)
}

// msPer is total spread over n, in milliseconds.
func msPer(total time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(total)/float64(n)/1e6, 'f', 2, 64)
}

func perCount(total int64, n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(total)/float64(n), 'f', 0, 64)
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// sumDurations pairs a[i] + b[i].
func sumDurations(a, b []time.Duration) []time.Duration {
	out := make([]time.Duration, 0, min(len(a), len(b)))
	for i := range min(len(a), len(b)) {
		out = append(out, a[i]+b[i])
	}
	return out
}
