package vmm

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// stats are the live counters behind Stats, written by the vCPU goroutine
// and read by anyone (in another process too: Config.StatsPage).
type stats struct {
	exits, ioExits, mmioExits, hypercalls atomic.Uint64
	discards, discardedBytes, inputWaits  atomic.Uint64
	guestNanos                            atomic.Int64
	// runSince is the wall clock (Unix ns) at which the KVM_RUN in
	// progress began, 0 outside one. A guest that spins without exiting
	// stays inside one KVM_RUN for as long as it spins, so guestNanos
	// alone would not move: the reader adds the time of the run in
	// progress (the agent charges an idle instance's spinning, issue 13).
	// Wall clock, not monotonic: the reader may be another process.
	runSince atomic.Int64
}

// enterRun and leftRun bracket one KVM_RUN. leftRun clears runSince
// before adding the run's time, so that a reader that sees the same
// runSince before and after reading guestNanos read a guestNanos without
// that run (snapshot).
func (s *stats) enterRun(at time.Time) { s.runSince.Store(at.UnixNano()) }

func (s *stats) leftRun(d time.Duration) {
	s.runSince.Store(0)
	s.guestNanos.Add(int64(d))
}

// guestTime is guestNanos plus the KVM_RUN in progress, if any. A reader
// racing the end of a run may miss that run's time for a moment (never
// count it twice): the next read has it.
func (s *stats) guestTime() time.Duration {
	for range 4 {
		since := s.runSince.Load()
		g := s.guestNanos.Load()
		if s.runSince.Load() != since {
			continue // a run began or ended meanwhile
		}
		if since != 0 {
			g += max(0, time.Now().UnixNano()-since)
		}
		return time.Duration(g)
	}
	return time.Duration(s.guestNanos.Load())
}

func (s *stats) snapshot() Stats {
	return Stats{
		Exits:      s.exits.Load(),
		IOExits:    s.ioExits.Load(),
		MMIOExits:  s.mmioExits.Load(),
		Hypercalls: s.hypercalls.Load(),
		InputWaits: s.inputWaits.Load(),
		Discards:   s.discards.Load(),
		Discarded:  s.discardedBytes.Load(),
		GuestTime:  s.guestTime(),
	}
}

// kicker gets a vCPU out of KVM_RUN from another goroutine: immediate_exit
// makes the next KVM_RUN return at once, and a signal to the vCPU's thread
// interrupts the current one (KVM_RUN returns EINTR, never restarted).
type kicker struct {
	mu  sync.Mutex // guards tid: the thread is the vCPU's only while locked to it
	tid int
}

func (k *kicker) set(tid int) {
	k.mu.Lock()
	k.tid = tid
	k.mu.Unlock()
}

func (k *kicker) kick(c *vcpu) {
	c.setImmediateExit()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.tid != 0 {
		// SIGURG: the Go runtime already handles it (preemption) and
		// ignores the ones it did not send.
		_ = unix.Tgkill(unix.Getpid(), k.tid, unix.SIGURG)
	}
}

// runLoop runs the vCPU on a goroutine locked to its OS thread (so the
// kicker can signal that thread) until the VM ends.
func (vm *VM) runLoop(ctx context.Context) *Result {
	done := make(chan *Result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		vm.kick.set(unix.Gettid())
		r := vm.loop(ctx)
		vm.kick.set(0)
		done <- r
	}()
	select {
	case r := <-done:
		return r
	case <-ctx.Done():
	}
	// Kick until the loop notices: a signal that lands just before KVM_RUN
	// is caught by immediate_exit, but keep trying in case it was consumed
	// by a hypercall wait instead.
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		vm.kick.kick(vm.cpu)
		select {
		case r := <-done:
			return r
		case <-t.C:
		}
	}
}

// loop is the vCPU thread: KVM_RUN, decode the exit, serve it, repeat.
func (vm *VM) loop(ctx context.Context) *Result {
	run := vm.cpu.run
	for {
		if ctx.Err() != nil {
			return vm.timeout(ctx)
		}
		entered := time.Now()
		vm.stats.enterRun(entered)
		interrupted, err := vm.cpu.enter()
		vm.stats.leftRun(time.Since(entered))
		if err != nil {
			return vm.internal(err)
		}
		if interrupted {
			continue
		}
		d := decodeExit(run)
		if d.exit == exitIntr {
			continue
		}
		vm.stats.exits.Add(1)
		switch d.exit {
		case exitMMIO:
			vm.stats.mmioExits.Add(1)
		case exitIO:
			vm.stats.ioExits.Add(1)
		}
		if d.msg != "" {
			return vm.abnormal(d.end, d.msg)
		}
		if r := vm.hypercall(ctx, d.nr, d.gpa); r != nil {
			return r
		}
	}
}

// exitDecision is what one KVM exit asks of the VMM, read from the kvm_run
// page alone: run again (exit is exitIntr: a kick or a stray signal, not
// the guest's doing), serve hypercall nr with its argument address gpa
// (msg empty), or end the VM with reason end and message msg.
type exitDecision struct {
	exit    uint32 // kvm_run.exit_reason
	nr, gpa uint64
	end     Reason
	msg     string
}

// decodeExit decides what the exit described by run (the kvm_run mapping,
// filled in by KVM_RUN; every byte of its exit union is the guest's doing)
// asks for. Pure, so a fuzzer can feed it any page (FuzzExit); it reads
// nothing outside run, however the guest shaped the exit.
func decodeExit(run []byte) exitDecision {
	le := binary.LittleEndian
	d := exitDecision{exit: le.Uint32(run[runExitReason:])}
	u := run[runExitUnion:]
	var bad *badHypercall
	switch d.exit {
	case exitIntr:
		return d
	case exitMMIO:
		phys := le.Uint64(u[0:])
		n := le.Uint32(u[16:])
		isWrite := u[20] != 0
		data := u[8:16]
		if n <= 8 {
			data = data[:n]
		}
		d.nr, d.gpa, bad = doorbell(phys, data, isWrite)
	case exitIO:
		out := u[0] == 1
		size := u[1]
		port := le.Uint16(u[2:])
		count := le.Uint32(u[4:])
		off := le.Uint64(u[8:])
		var data []byte
		if end := off + uint64(size)*uint64(count); off < uint64(len(run)) && end <= uint64(len(run)) && end >= off {
			data = run[off:end]
		}
		d.nr, d.gpa, bad = portCall(port, out, size, count, data)
	case exitShutdown:
		d.end, d.msg = ReasonTripleFault, "triple fault (KVM_EXIT_SHUTDOWN): the guest took an exception it could not handle"
	case exitHLT:
		d.end, d.msg = ReasonUnknownExit, "the guest halted (KVM_EXIT_HLT) with no way to wake up"
	case exitFailEntry:
		d.end, d.msg = ReasonUnknownExit, fmt.Sprintf("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason %#x", le.Uint64(u[0:]))
	case exitInternalError:
		d.end, d.msg = ReasonUnknownExit, fmt.Sprintf("KVM_EXIT_INTERNAL_ERROR: suberror %d", le.Uint32(u[0:]))
	default:
		name := exitNames[d.exit]
		if name == "" {
			name = fmt.Sprintf("exit reason %d", d.exit)
		}
		d.end, d.msg = ReasonUnknownExit, "unhandled KVM exit: "+name
	}
	if bad != nil {
		d.nr, d.gpa, d.end, d.msg = 0, 0, ReasonBadHypercall, badHypercallMsg(bad)
	}
	return d
}

func (vm *VM) abnormal(r Reason, msg string) *Result {
	return &Result{Reason: r, Status: -1, Message: msg, Regs: vm.cpu.dump()}
}

func (vm *VM) badHypercall(b *badHypercall) *Result {
	return vm.abnormal(ReasonBadHypercall, badHypercallMsg(b))
}

func badHypercallMsg(b *badHypercall) string { return "bad hypercall: " + b.msg }

func (vm *VM) internal(err error) *Result {
	return vm.abnormal(ReasonInternal, "host: "+err.Error())
}

func (vm *VM) timeout(ctx context.Context) *Result {
	return vm.abnormal(ReasonTimeout, fmt.Sprintf("stopped after %v: %v", time.Since(vm.bootTime).Round(time.Microsecond), context.Cause(ctx)))
}
