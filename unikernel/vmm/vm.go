// Package vmm is Kiln's virtual machine monitor: it boots the Kiln guest
// kernel and one static x86-64 ELF in a KVM virtual machine through
// /dev/kvm ioctls (no cgo, no QEMU), serves the guest's hypercalls and
// reports how the VM ended. The guest is hostile from its first
// instruction: every address and length it hands over is bounds-checked,
// and whatever it does ends only its own VM.
//
// The contract with the guest is unikernel/abi; the boot recipe is boot.go.
package vmm

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// DefaultMemSize is the guest RAM of a VM whose Config names none.
const DefaultMemSize = 64 << 20

// Config describes one VM to boot.
type Config struct {
	Kernel   []byte    // the guest kernel ELF (build/kernel/kiln-kernel.elf)
	Program  []byte    // the function: a static x86-64 Linux ELF
	Args     []string  // argv; Args[0] is the program's name
	Env      []string  // "KEY=VALUE" entries of envp
	MemSize  uint64    // guest RAM in bytes, a multiple of 2 MiB; 0 → DefaultMemSize
	Hostname string    // what uname reports; "" → "kiln"
	Stdin    io.Reader // the function's fd 0; nil → empty; read by a pump goroutine
	Stdout   io.Writer // fd 1; nil → discarded; written from the vCPU thread
	Stderr   io.Writer // fd 2; nil → discarded
	// TraceSyscalls makes the guest kernel log every syscall to stderr.
	TraceSyscalls bool
	// PortIO makes the guest issue hypercalls with `out` from its ring-0
	// stub instead of the ring-3 MMIO doorbell (for measurements).
	PortIO bool
	// SnapshotPath, when set, makes the VM save itself there (snapshot.go)
	// the first time it waits for input, then run on; OnSnapshot, if set,
	// hears how that went (on the vCPU thread, before the wait is served).
	SnapshotPath string
	OnSnapshot   func(error)
	// SnapshotFile, if set with SnapshotPath, is where the snapshot is
	// written instead: an empty file open for reading and writing, which
	// the VM closes; putting it at SnapshotPath is then the caller's (a
	// jailed vmhost worker has no file system to create files in).
	SnapshotFile *os.File
	// OnFirstWait, if set, is called once, on the goroutine serving the
	// VM, when the guest first blocks waiting for input — its init is
	// done (a restored guest: as it resumes in that wait) — after any
	// snapshot is taken and before the wait is served.
	OnFirstWait func()
	// StatsPage, if set, is where the VM keeps the counters behind Stats:
	// StatsSize bytes, 8-byte aligned, zeroed by New. Memory shared with
	// another process lets it read them (ReadStats) without asking —
	// vmhost's agent side does, once per warm call.
	StatsPage []byte
	// Snapshot, when set, makes New restore this snapshot instead of
	// booting: Kernel, Program, Args, Env and Hostname are the snapshot's
	// (check them first with Snapshot.Matches), MemSize must be 0 or
	// equal. The guest resumes in its first wait for input, which reads
	// Stdin.
	Snapshot *Snapshot
}

// Reason says how a VM ended.
type Reason int

// The ways a VM ends.
const (
	ReasonExited       Reason = iota // the program called exit/exit_group
	ReasonSignaled                   // the program faulted (Status = 128+Signal)
	ReasonPanic                      // the guest kernel gave up (message on stderr)
	ReasonTimeout                    // the context ended first: vCPU kicked, VM destroyed
	ReasonTripleFault                // KVM_EXIT_SHUTDOWN
	ReasonBadHypercall               // unknown number or an out-of-bounds address/length
	ReasonUnknownExit                // a KVM exit the VMM does not handle
	ReasonInternal                   // a host-side failure (ioctl error, ...)
)

// Stats counts what happened inside one VM. All counts are totals since boot.
type Stats struct {
	Exits      uint64 // every exit the guest caused (kicks and stray signals not counted)
	IOExits    uint64 // KVM_EXIT_IO
	MMIOExits  uint64 // KVM_EXIT_MMIO
	Hypercalls uint64 // served hypercalls
	InputWaits uint64 // KILN_HC_IO calls that asked for input (the first is the function ready for a request)
	Discards   uint64 // KILN_HC_DISCARD hypercalls served
	Discarded  uint64 // bytes of guest memory they gave back to the host
	// GuestTime is the time spent inside KVM_RUN: the guest running (or,
	// on this project's nested hosts, being emulated); the rest of a
	// call's time is the VMM serving exits and the host around it. It
	// includes the KVM_RUN in progress, so it moves while a guest spins
	// without exiting (what the agent's idle-CPU budget watches).
	GuestTime time.Duration
}

// Result is how a VM ended.
type Result struct {
	Reason  Reason
	Status  int    // exit status (0–255); 128+Signal when signaled; -1 if none
	Signal  int    // signal number for ReasonSignaled
	Message string // why, in words, for anything but a clean exit
	Regs    string // guest register dump for abnormal ends
	Stats   Stats

	Syscalls     uint64            // syscalls the guest kernel handled
	Enosys       uint64            // of which answered -ENOSYS
	EnosysByNr   map[uint32]uint32 // unknown syscall number → count
	Ring0Entries uint64            // exceptions and gates taken in ring 0
	MemUsed      uint64            // guest RAM in use at the end, bytes (kernel, image, stack included)
	MemPeak      uint64            // the most guest RAM ever in use, bytes
}

// VM is one booted guest: New loads it, Run runs it once, Close frees it.
// Stats may be called from any goroutine at any time.
type VM struct {
	cfg   Config
	sys   *kvmSystem
	kvm   *kvmVM
	cpu   *vcpu
	mem   *Memory
	input *inputPump
	stats *stats // its own, or in Config.StatsPage
	kick  kicker
	src   guestSource // how it was built: a cold boot or a restore (boot.go)

	bootInfo *abi.BootInfo
	tscKHz   uint64
	bootTSC  uint64
	bootTime time.Time

	waited bool // the guest has waited for input (OnFirstWait, SnapshotPath)

	// discardBudget holds the guest to the discard budget (budget.go),
	// measured by now and sleep (nil: the real clock; tests set them).
	discardBudget rateBudget
	now           func() time.Time
	sleep         func(context.Context, time.Time) error

	mu      sync.Mutex // guards the fields below
	ran     bool
	closed  bool
	cancel  context.CancelFunc // ends a Run in progress (Close)
	running chan struct{}      // closed when a Run in progress returns
}

// New creates the VM — booted from cfg's images, or restored from
// cfg.Snapshot — by the recipe in boot.go, up to, not including, the first
// instruction. Errors wrap ErrConfig, ErrMemSize,
// ErrBadELF or ErrNoKVM when one of them is the cause.
func New(cfg Config) (*VM, error) {
	vm := &VM{cfg: cfg, input: newInputPump(cfg.Stdin), stats: &stats{}}
	if cfg.StatsPage != nil {
		s, err := statsIn(cfg.StatsPage)
		if err != nil {
			return nil, err
		}
		clear(cfg.StatsPage[:StatsSize])
		vm.stats = s
	}
	var src guestSource = &coldBoot{vm: vm}
	op := "boot"
	if cfg.Snapshot != nil {
		src, op = &snapshotRestore{vm: vm, snap: cfg.Snapshot}, "restore"
	}
	if err := vm.build(src); err != nil {
		vm.release()
		return nil, fmt.Errorf("vmm: %s: %w", op, err)
	}
	vm.src = src
	return vm, nil
}

// Run runs the guest until it ends or ctx is done, and says how it ended.
// The error is nil when the program itself decided the outcome (it exited,
// or it was killed by its own fault: ReasonExited, ReasonSignaled); it wraps
// ErrTimeout when ctx ended first and ErrGuest for every other end. A VM
// runs once.
func (vm *VM) Run(ctx context.Context) (*Result, error) {
	vm.mu.Lock()
	if vm.closed || vm.ran {
		vm.mu.Unlock()
		return nil, fmt.Errorf("%w: Run on a VM that already ran or was closed", ErrConfig)
	}
	vm.ran = true
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	vm.cancel = cancel
	vm.running = make(chan struct{})
	defer close(vm.running)
	vm.mu.Unlock()

	r := vm.src.start(ctx)
	if r == nil {
		r = vm.runLoop(ctx)
	}
	vm.input.stop()
	r.Stats = vm.stats.snapshot()
	switch r.Reason {
	case ReasonExited, ReasonSignaled:
		return r, nil
	case ReasonTimeout:
		return r, fmt.Errorf("%w: %s", ErrTimeout, r.Message)
	}
	return r, fmt.Errorf("%w: %s", ErrGuest, r.Message)
}

// Stats returns the VM's counters so far.
func (vm *VM) Stats() Stats { return vm.stats.snapshot() }

// Close destroys the VM, stopping a Run in progress first (which then
// reports ReasonTimeout). It is safe to call more than once.
func (vm *VM) Close() error {
	vm.mu.Lock()
	if vm.closed {
		vm.mu.Unlock()
		return nil
	}
	vm.closed = true
	cancel, running := vm.cancel, vm.running
	vm.mu.Unlock()
	if running != nil {
		cancel()
		<-running
	}
	vm.release()
	return nil
}

func (vm *VM) release() {
	vm.input.stop()
	if vm.cpu != nil {
		vm.cpu.close()
	}
	if vm.kvm != nil {
		vm.kvm.close()
	}
	if vm.mem != nil {
		vm.mem.close()
	}
	if vm.sys != nil {
		vm.sys.close()
	}
}

// FindKernel locates the guest kernel image: $KILN_KERNEL, else
// kiln-kernel.elf next to the running executable, else
// $KILN_BUILD/kernel/kiln-kernel.elf, else build/kernel/kiln-kernel.elf in
// the working directory or any directory above it.
func FindKernel() (string, error) {
	const name = "kiln-kernel.elf"
	if p := os.Getenv("KILN_KERNEL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: $KILN_KERNEL: %w", ErrNoKernel, err)
		}
		return p, nil
	}
	var tried []string
	try := func(p string) bool {
		tried = append(tried, p)
		st, err := os.Stat(p)
		return err == nil && st.Mode().IsRegular()
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), name); try(p) {
			return p, nil
		}
	}
	if b := os.Getenv("KILN_BUILD"); b != "" {
		if p := filepath.Join(b, "kernel", name); try(p) {
			return p, nil
		}
	}
	if dir, err := os.Getwd(); err == nil {
		for {
			if p := filepath.Join(dir, "build", "kernel", name); try(p) {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("%w (tried %v): run `make kernel` or set KILN_KERNEL", ErrNoKernel, tried)
}
