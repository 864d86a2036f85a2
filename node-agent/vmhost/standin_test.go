package vmhost

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// There is no /dev/kvm on the development hosts, so these tests run real
// worker processes (this test binary, re-executed: main_test.go) whose VMs
// are a stand-in: a config with Args[0] == "echo" gets an echoVM; any
// other goes to the real vmm.New. The test binary asks its workers for the
// stand-in through testVMEnv.
const testVMEnv = "KILN_VMHOST_TEST_VM"

// installStandIn gives a worker the stand-in, before it serves, when the
// test binary that started it asked for one.
func installStandIn() {
	if os.Getenv(testVMEnv) != "echo" {
		return
	}
	real := newMachine
	newMachine = func(cfg vmm.Config) (machine, error) {
		if len(cfg.Args) == 0 || cfg.Args[0] != "echo" {
			return real(cfg)
		}
		return newEchoVM(cfg)
	}
}

// echoVM copies stdin to stdout line by line. A line starting with '!' is
// a command instead:
//
//	!exit N        the program exits with status N
//	!crash         the worker process exits with status 7
//	!fail          the guest fails (ReasonPanic, vmm.ErrGuest) with a full Result
//	!stderr TEXT   TEXT goes to stderr
//	!image         describes the config it got (image sizes and sums, env, args)
//	!open FILE DIR tries to open FILE for reading and create a file in DIR (the jail)
//	!forbidden     makes a syscall outside the jail's seccomp allow-list (socket)
//
// It calls OnSnapshot with an error (it takes no snapshot) and OnFirstWait
// before its first read; its context ending gives ReasonTimeout.
//
// Its hostname can make it hang, as a stuck VMM would (watchdog tests):
// "hang-boot" never finishes its boot, "hang-close" its Close, and
// "hang-cancel" never stops its Run.
type echoVM struct {
	cfg    vmm.Config
	ctx    context.Context // ended by Close
	cancel context.CancelFunc

	lines, bytes atomic.Uint64

	mu      sync.Mutex
	ran     bool
	running chan struct{}
}

func newEchoVM(cfg vmm.Config) (machine, error) {
	if cfg.Hostname == "crash" {
		os.Exit(9)
	}
	if cfg.Hostname == "hang-boot" {
		select {}
	}
	if cfg.Hostname == "refuse" {
		return nil, fmt.Errorf("%w: the stand-in refuses hostname %q", vmm.ErrMemSize, cfg.Hostname)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &echoVM{cfg: cfg, ctx: ctx, cancel: cancel}, nil
}

func (e *echoVM) Stats() vmm.Stats {
	n := e.lines.Load()
	return vmm.Stats{Exits: 2 * n, IOExits: n, Hypercalls: n + 1, InputWaits: n, Discards: 3,
		Discarded: e.bytes.Load(), GuestTime: time.Duration(n) * time.Millisecond}
}

func (e *echoVM) Close() error {
	if e.cfg.Hostname == "hang-close" {
		select {}
	}
	e.cancel()
	e.mu.Lock()
	running := e.running
	e.mu.Unlock()
	if running != nil {
		<-running
	}
	return nil
}

func (e *echoVM) Run(ctx context.Context) (*vmm.Result, error) {
	e.mu.Lock()
	if e.ran {
		e.mu.Unlock()
		return nil, fmt.Errorf("%w: ran twice", vmm.ErrConfig)
	}
	e.ran = true
	e.running = make(chan struct{})
	defer close(e.running)
	e.mu.Unlock()
	if e.cfg.Hostname == "hang-cancel" {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(e.ctx, cancel)()

	r, err := e.loop(ctx)
	r.Stats = e.Stats()
	return r, err
}

func (e *echoVM) loop(ctx context.Context) (*vmm.Result, error) {
	if e.cfg.SnapshotPath != "" && e.cfg.OnSnapshot != nil {
		e.cfg.OnSnapshot(fmt.Errorf("%w: the stand-in takes no snapshot", vmm.ErrSnapshot))
	}
	if e.cfg.OnFirstWait != nil {
		e.cfg.OnFirstWait()
	}
	lines := make(chan []byte)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		defer close(lines)
		if e.cfg.Stdin == nil {
			return
		}
		br := bufio.NewReader(e.cfg.Stdin)
		for {
			l, err := br.ReadBytes('\n')
			if len(l) > 0 {
				select {
				case lines <- l:
				case <-quit:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	write := func(w io.Writer, b []byte) {
		if w != nil {
			w.Write(b)
		}
	}
	for {
		var l []byte
		var ok bool
		select {
		case l, ok = <-lines:
		case <-ctx.Done():
			return &vmm.Result{Reason: vmm.ReasonTimeout, Status: -1, Message: "stand-in stopped: " + ctx.Err().Error()},
				fmt.Errorf("%w: stand-in stopped", vmm.ErrTimeout)
		}
		if !ok {
			return &vmm.Result{Reason: vmm.ReasonExited}, nil
		}
		e.lines.Add(1)
		e.bytes.Add(uint64(len(l)))
		cmd := string(bytes.TrimRight(l, "\n"))
		switch {
		case strings.HasPrefix(cmd, "!exit "):
			n, _ := strconv.Atoi(strings.TrimPrefix(cmd, "!exit "))
			return &vmm.Result{Reason: vmm.ReasonExited, Status: n}, nil
		case cmd == "!crash":
			os.Exit(7)
		case cmd == "!fail":
			return &vmm.Result{Reason: vmm.ReasonPanic, Status: -1, Message: "stand-in kernel panic", Regs: "rip=0x1000",
					Syscalls: 42, Enosys: 2, EnosysByNr: map[uint32]uint32{999: 2}, Ring0Entries: 7, MemUsed: 1 << 20, MemPeak: 2 << 20},
				fmt.Errorf("%w: stand-in kernel panic", vmm.ErrGuest)
		case strings.HasPrefix(cmd, "!stderr "):
			write(e.cfg.Stderr, []byte(strings.TrimPrefix(cmd, "!stderr ")+"\n"))
		case strings.HasPrefix(cmd, "!open "):
			file, dir, _ := strings.Cut(strings.TrimPrefix(cmd, "!open "), " ")
			_, rerr := os.Open(file)
			_, werr := os.Create(dir + "/jail-probe")
			write(e.cfg.Stdout, fmt.Appendf(nil, "read: %v\nwrite: %v\n", rerr, werr))
		case cmd == "!forbidden":
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			write(e.cfg.Stdout, fmt.Appendf(nil, "socket: %d %v\n", fd, err))
		case cmd == "!image":
			env := 0
			for _, s := range e.cfg.Env {
				env += len(s)
			}
			write(e.cfg.Stdout, fmt.Appendf(nil, "kernel %d %x program %d %x env %d/%d args %q host %q mem %d trace %v portio %v\n",
				len(e.cfg.Kernel), sha256.Sum256(e.cfg.Kernel), len(e.cfg.Program), sha256.Sum256(e.cfg.Program),
				len(e.cfg.Env), env, e.cfg.Args, e.cfg.Hostname, e.cfg.MemSize, e.cfg.TraceSyscalls, e.cfg.PortIO))
		default:
			write(e.cfg.Stdout, l)
		}
	}
}
