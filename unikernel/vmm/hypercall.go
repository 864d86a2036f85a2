package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// Hypercalls: the guest hands over the guest-physical address of an
// argument struct (abi.HCIOArgs, abi.HCExitArgs). Every address and length
// in it is checked against guest RAM before use; a bad one ends the VM with
// ReasonBadHypercall and a message naming the value.

// Offsets of the OUT fields of struct kiln_hc_io.
const (
	hcIOSize     = 80
	hcIOInLenOff = 64
	hcIOInEOFOff = 72
	hcExitSize   = 240
	hcDiscSize   = 8 + 16*abi.DiscardMax
)

// badHypercall is a guest error that ends the VM.
type badHypercall struct{ msg string }

func (e *badHypercall) Error() string { return e.msg }

func badHC(format string, args ...any) *badHypercall {
	return &badHypercall{msg: fmt.Sprintf(format, args...)}
}

// guestRange returns guest RAM [gpa, gpa+n) if the guest may name it: inside
// RAM and not in the unmapped first 2 MiB (the page tables live there).
func guestRange(mem *Memory, what string, gpa, n uint64) ([]byte, *badHypercall) {
	if gpa < firstMapped {
		return nil, badHC("%s: address %#x (length %#x) is below the guest's mapped memory", what, gpa, n)
	}
	s, err := mem.Slice(gpa, n)
	if err != nil {
		return nil, badHC("%s: address %#x length %#x is outside guest RAM (%#x bytes)", what, gpa, n, mem.Size())
	}
	return s, nil
}

// argStruct returns the argument struct of a hypercall: 8-byte aligned and
// inside guest RAM.
func argStruct(mem *Memory, nr, gpa, size uint64) ([]byte, *badHypercall) {
	if gpa%8 != 0 {
		return nil, badHC("hypercall %d: argument address %#x is not 8-byte aligned", nr, gpa)
	}
	return guestRange(mem, fmt.Sprintf("hypercall %d arguments", nr), gpa, size)
}

// decodeHCIO reads and checks a kiln_hc_io at gpa. It returns the struct,
// the output slices, and the input buffer (nil when in_cap is 0).
func decodeHCIO(mem *Memory, gpa uint64) (a abi.HCIOArgs, out, errb, in []byte, bad *badHypercall) {
	raw, bad := argStruct(mem, abi.HCIO, gpa, hcIOSize)
	if bad != nil {
		return a, nil, nil, nil, bad
	}
	_ = binary.Read(bytes.NewReader(raw), binary.LittleEndian, &a) // size checked
	if a.Flags&^abi.IOWaitInput != 0 {
		return a, nil, nil, nil, badHC("HC_IO: unknown flags %#x", a.Flags)
	}
	if a.OutLen > 0 {
		if out, bad = guestRange(mem, "HC_IO out", a.OutGPA, a.OutLen); bad != nil {
			return
		}
	}
	if a.ErrLen > 0 {
		if errb, bad = guestRange(mem, "HC_IO err", a.ErrGPA, a.ErrLen); bad != nil {
			return
		}
	}
	if a.InCap > 0 {
		if in, bad = guestRange(mem, "HC_IO in", a.InGPA, a.InCap); bad != nil {
			return
		}
	}
	return a, out, errb, in, nil
}

// decodeHCExit reads and checks a kiln_hc_exit at gpa.
func decodeHCExit(mem *Memory, gpa uint64) (a abi.HCExitArgs, out, errb []byte, bad *badHypercall) {
	raw, bad := argStruct(mem, abi.HCExit, gpa, hcExitSize)
	if bad != nil {
		return a, nil, nil, bad
	}
	_ = binary.Read(bytes.NewReader(raw), binary.LittleEndian, &a)
	if a.OutLen > 0 {
		if out, bad = guestRange(mem, "HC_EXIT out", a.OutGPA, a.OutLen); bad != nil {
			return
		}
	}
	if a.ErrLen > 0 {
		if errb, bad = guestRange(mem, "HC_EXIT err", a.ErrGPA, a.ErrLen); bad != nil {
			return
		}
	}
	switch a.Reason {
	case abi.ExitNormal, abi.ExitPanic:
	case abi.ExitSignal:
		if a.Signo == 0 || a.Signo > 64 {
			return a, nil, nil, badHC("HC_EXIT: signal number %d", a.Signo)
		}
	default:
		return a, nil, nil, badHC("HC_EXIT: unknown reason %d", a.Reason)
	}
	return a, out, errb, nil
}

// decodeHCDiscard reads and checks a kiln_hc_discard at gpa and returns the
// guest RAM of each range. Either every range is acceptable or none is used:
// page-aligned, non-empty, inside RAM and at or above the kernel's limit (the
// kernel, boot info, GDT/IDT and stacks below it must never vanish).
func decodeHCDiscard(mem *Memory, gpa uint64) (a abi.HCDiscardArgs, ranges [][]byte, bad *badHypercall) {
	raw, bad := argStruct(mem, abi.HCDiscard, gpa, hcDiscSize)
	if bad != nil {
		return a, nil, bad
	}
	_ = binary.Read(bytes.NewReader(raw), binary.LittleEndian, &a) // size checked
	if a.Count > abi.DiscardMax {
		return a, nil, badHC("HC_DISCARD: %d ranges, at most %d", a.Count, abi.DiscardMax)
	}
	ranges = make([][]byte, 0, a.Count)
	for i, r := range a.Ranges[:a.Count] {
		switch {
		case r.Len == 0 || r.GPA%pageSize != 0 || r.Len%pageSize != 0:
			return a, nil, badHC("HC_DISCARD range %d [%#x, +%#x): want a non-empty page-aligned range", i, r.GPA, r.Len)
		case r.GPA < abi.KernelLimit:
			return a, nil, badHC("HC_DISCARD range %d [%#x, +%#x): below the kernel limit %#x", i, r.GPA, r.Len, uint64(abi.KernelLimit))
		}
		s, bad := guestRange(mem, fmt.Sprintf("HC_DISCARD range %d", i), r.GPA, r.Len)
		if bad != nil {
			return a, nil, bad
		}
		ranges = append(ranges, s)
	}
	return a, ranges, nil
}

// doorbell decodes an MMIO exit: which hypercall a store to phys with len
// bytes (isWrite) rings, and the argument gpa it carries.
func doorbell(phys uint64, data []byte, isWrite bool) (nr, gpa uint64, bad *badHypercall) {
	if phys < abi.HCMMIOBase || phys >= abi.HCMMIOBase+hugePage {
		return 0, 0, badHC("MMIO access at %#x: not guest RAM and not a doorbell", phys)
	}
	off := phys - abi.HCMMIOBase
	if !isWrite {
		return 0, 0, badHC("MMIO read at %#x: doorbells are write-only", phys)
	}
	if len(data) != 8 || off%8 != 0 {
		return 0, 0, badHC("doorbell store at %#x of %d bytes: want an aligned 8-byte store", phys, len(data))
	}
	nr = off / 8
	if nr == 0 || nr > abi.HCMax {
		return 0, 0, badHC("unknown hypercall number %d (doorbell %#x)", nr, phys)
	}
	return nr, binary.LittleEndian.Uint64(data), nil
}

// portCall decodes a port-I/O exit the same way.
func portCall(port uint16, out bool, size uint8, count uint32, data []byte) (nr, gpa uint64, bad *badHypercall) {
	if port <= abi.HCPIOBase || uint64(port) > abi.HCPIOBase+abi.HCMax {
		return 0, 0, badHC("port I/O to %#x: unknown hypercall port (hypercalls are %#x + 1..%d)", port, abi.HCPIOBase, abi.HCMax)
	}
	if !out || size != 4 || count != 1 || len(data) != 4 {
		return 0, 0, badHC("port %#x: want one 4-byte outl (out=%v size=%d count=%d)", port, out, size, count)
	}
	return uint64(port) - abi.HCPIOBase, uint64(binary.LittleEndian.Uint32(data)), nil
}

// hypercall serves hypercall nr; a non-nil Result ends the VM.
func (vm *VM) hypercall(ctx context.Context, nr, gpa uint64) *Result {
	vm.stats.hypercalls.Add(1)
	switch nr {
	case abi.HCIO:
		return vm.hcIO(ctx, gpa)
	case abi.HCExit:
		return vm.hcExit(gpa)
	case abi.HCDiscard:
		return vm.hcDiscard(ctx, gpa)
	}
	return vm.badHypercall(badHC("unknown hypercall number %d", nr))
}

func (vm *VM) hcIO(ctx context.Context, gpa uint64) *Result {
	a, out, errb, _, bad := decodeHCIO(vm.mem, gpa)
	if bad != nil {
		return vm.badHypercall(bad)
	}
	vm.flush(out, errb)
	if vm.cfg.SnapshotPath != "" && !vm.waited && a.InCap > 0 && a.Flags&abi.IOWaitInput != 0 {
		// The first wait for input: init is done (completeWait marks it
		// waited). A failed snapshot is the caller's news, not the
		// guest's: it keeps running.
		err := vm.takeSnapshot(gpa, a)
		if vm.cfg.OnSnapshot != nil {
			vm.cfg.OnSnapshot(err)
		}
	}
	return vm.completeWait(ctx, gpa, a)
}

// completeWait serves the input/sleep part of the KILN_HC_IO at gpa (its
// arguments a already checked) and writes in_len/in_eof back.
func (vm *VM) completeWait(ctx context.Context, gpa uint64, a abi.HCIOArgs) *Result {
	var n int
	var eof bool
	if a.InCap > 0 && a.Flags&abi.IOWaitInput != 0 && !vm.waited {
		vm.waited = true
		if vm.cfg.OnFirstWait != nil {
			vm.cfg.OnFirstWait()
		}
	}
	switch {
	case a.InCap > 0:
		in, bad := guestRange(vm.mem, "HC_IO in", a.InGPA, a.InCap)
		if bad != nil {
			return vm.badHypercall(bad)
		}
		vm.stats.inputWaits.Add(1)
		var err error
		n, eof, err = vm.input.read(ctx, in, a.Flags&abi.IOWaitInput != 0, vm.tscToTime(a.DeadlineTSC))
		if err != nil {
			return vm.timeout(ctx)
		}
	case a.DeadlineTSC != 0:
		if err := sleepUntil(ctx, vm.tscToTime(a.DeadlineTSC)); err != nil {
			return vm.timeout(ctx)
		}
	}
	raw, bad := argStruct(vm.mem, abi.HCIO, gpa, hcIOSize)
	if bad != nil {
		return vm.badHypercall(bad)
	}
	binary.LittleEndian.PutUint64(raw[hcIOInLenOff:], uint64(n))
	var e uint32
	if eof {
		e = 1
	}
	binary.LittleEndian.PutUint32(raw[hcIOInEOFOff:], e)
	return nil
}

func (vm *VM) hcExit(gpa uint64) *Result {
	a, out, errb, bad := decodeHCExit(vm.mem, gpa)
	if bad != nil {
		return vm.badHypercall(bad)
	}
	vm.flush(out, errb)
	r := &Result{
		Status:       int(uint8(a.Status)),
		Syscalls:     a.Syscalls,
		Enosys:       a.Enosys,
		Ring0Entries: a.Ring0Entries,
		MemUsed:      a.MemUsed,
		MemPeak:      a.MemPeak,
		EnosysByNr:   map[uint32]uint32{},
	}
	for i, c := range a.EnosysCount {
		if c > 0 {
			r.EnosysByNr[a.EnosysNr[i]] += c
		}
	}
	fault := fmt.Sprintf("vector %d at rip %#x, address %#x, error %#x", a.FaultVector, a.FaultRIP, a.FaultAddr, a.FaultError)
	switch a.Reason {
	case abi.ExitNormal:
		r.Reason = ReasonExited
		if r.Status != 0 {
			r.Message = fmt.Sprintf("exited with status %d", r.Status)
		}
	case abi.ExitSignal:
		r.Reason = ReasonSignaled
		r.Signal = int(a.Signo)
		r.Status = 128 + r.Signal
		r.Message = fmt.Sprintf("killed by signal %d (%s)", a.Signo, signalName(a.Signo))
		if a.FaultRIP != 0 { // a fault, not a signal sent by the program
			r.Message += ": " + fault
		}
	case abi.ExitPanic:
		r.Reason = ReasonPanic
		r.Message = "guest kernel panic (see stderr); " + fault
		r.Regs = vm.cpu.dump()
	}
	return r
}

// hcDiscard gives the host memory behind each range back; the range reads
// as zero on the next touch, which the guest relies on (it never zeroes a
// frame it hands out). Memory.discard knows how for both kinds of RAM; it
// cannot fail, so no number of discards ends the VM or grows the worker.
// Past the discard budget (budget.go) the guest waits here, its deadline
// still running.
func (vm *VM) hcDiscard(ctx context.Context, gpa uint64) *Result {
	a, ranges, bad := decodeHCDiscard(vm.mem, gpa)
	if bad != nil {
		return vm.badHypercall(bad)
	}
	var n uint64
	calls := 0
	for i, r := range ranges {
		calls += vm.mem.discard(a.Ranges[i].GPA, uint64(len(r)))
		n += uint64(len(r))
	}
	vm.stats.discards.Add(1)
	vm.stats.discardedBytes.Add(n)
	if vm.discardBudget.rate == 0 {
		vm.discardBudget = newRateBudget(discardBurst, discardRate)
	}
	now, sleep := time.Now, sleepUntil
	if vm.now != nil {
		now, sleep = vm.now, vm.sleep
	}
	t := now()
	if d := vm.discardBudget.take(t, calls); d > 0 {
		if err := sleep(ctx, t.Add(d)); err != nil {
			return vm.timeout(ctx)
		}
	}
	return nil
}

// flush writes guest output to the configured writers; a failing writer
// loses output but does not stop the guest (as a closed pipe would not
// stop a process that ignores EPIPE).
func (vm *VM) flush(out, errb []byte) {
	if len(out) > 0 && vm.cfg.Stdout != nil {
		_, _ = vm.cfg.Stdout.Write(out)
	}
	if len(errb) > 0 && vm.cfg.Stderr != nil {
		_, _ = vm.cfg.Stderr.Write(errb)
	}
}

// tscToTime converts a guest TSC deadline to host time; zero means none.
func (vm *VM) tscToTime(tsc uint64) time.Time {
	if tsc == 0 {
		return time.Time{}
	}
	return tscDeadline(tsc, vm.bootTSC, vm.tscKHz, vm.bootTime)
}

// tscDeadline is the host time at which the guest TSC reads tsc, given that
// it read bootTSC at bootTime and ticks khz times per millisecond.
func tscDeadline(tsc, bootTSC, khz uint64, bootTime time.Time) time.Time {
	if tsc <= bootTSC || khz == 0 {
		return bootTime
	}
	hi, lo := bits.Mul64(tsc-bootTSC, 1_000_000)
	const far = 100 * 365 * 24 * time.Hour
	if hi >= khz {
		return bootTime.Add(far)
	}
	ns, _ := bits.Div64(hi, lo, khz)
	if ns > uint64(far) {
		return bootTime.Add(far)
	}
	return bootTime.Add(time.Duration(ns))
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// inputPump feeds Config.Stdin to the guest. A goroutine reads it (started
// at the first input request, so a VM that never reads never consumes
// stdin); bytes the guest had no room for are served first next time.
type inputPump struct {
	r        io.Reader
	ch       chan []byte
	done     chan struct{}
	started  bool
	leftover []byte
	eof      bool
}

func newInputPump(r io.Reader) *inputPump {
	return &inputPump{r: r, ch: make(chan []byte, 1), done: make(chan struct{})}
}

func (p *inputPump) start() {
	if p.started {
		return
	}
	p.started = true
	if p.r == nil {
		close(p.ch)
		return
	}
	go func() {
		defer close(p.ch)
		for {
			buf := make([]byte, 64<<10)
			n, err := p.r.Read(buf)
			if n > 0 {
				select {
				case p.ch <- buf[:n]:
				case <-p.done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
}

// stop lets the pump goroutine go once it is not blocked in Read.
func (p *inputPump) stop() {
	select {
	case <-p.done:
	default:
		close(p.done)
	}
}

// read copies available input into dst. With wait it blocks until input,
// EOF, the deadline (zero: none) or ctx; the error is ctx's.
func (p *inputPump) read(ctx context.Context, dst []byte, wait bool, deadline time.Time) (int, bool, error) {
	p.start()
	if len(p.leftover) == 0 && !p.eof {
		var timer <-chan time.Time
		if wait && !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			timer = t.C
		}
		var b []byte
		var ok, got bool
		if wait {
			select {
			case b, ok = <-p.ch:
				got = true
			case <-timer:
			case <-ctx.Done():
				return 0, false, ctx.Err()
			}
		} else {
			select {
			case b, ok = <-p.ch:
				got = true
			default:
			}
		}
		if got {
			if !ok {
				p.eof = true
			}
			p.leftover = b
		}
	}
	n := copy(dst, p.leftover)
	p.leftover = p.leftover[n:]
	return n, p.eof && len(p.leftover) == 0, nil
}

func signalName(sig uint32) string {
	names := [...]string{1: "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
		"SIGFPE", "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
		"SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG",
		"SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"}
	if int(sig) < len(names) && names[sig] != "" {
		return names[sig]
	}
	return fmt.Sprintf("signal %d", sig)
}
