package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// Machine is one booted function instance; *vmm.VM is the real one.
type Machine interface {
	Run(ctx context.Context) (*vmm.Result, error)
	Stats() vmm.Stats
	Close() error
}

// Booter creates a Machine ready to Run.
type Booter func(cfg vmm.Config) (Machine, error)

// BootVM boots cfg in a KVM virtual machine: the production Booter.
func BootVM(cfg vmm.Config) (Machine, error) {
	vm, err := vmm.New(cfg)
	if err != nil {
		return nil, err
	}
	return vm, nil
}

// ProcessBooter runs the function's ELF as a plain host process (the kernel
// image is ignored), exactly as `kiln run --local` does: the same fd 0/1/2
// contract without a VM. It gives NO isolation — it is for development and
// for testing the agent on hosts without /dev/kvm, never for untrusted code.
// Program files are written under dir.
func ProcessBooter(dir string) Booter {
	return func(cfg vmm.Config) (Machine, error) {
		f, err := os.CreateTemp(dir, "program-*")
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(cfg.Program); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, err
		}
		f.Chmod(0o755)
		f.Close()
		ctx, cancel := context.WithCancel(context.Background())
		return &process{cfg: cfg, path: f.Name(), ctx: ctx, cancel: cancel}, nil
	}
}

type process struct {
	cfg    vmm.Config
	path   string
	ctx    context.Context // ended by Close or by Run's context
	cancel context.CancelFunc
}

func (p *process) Run(ctx context.Context) (*vmm.Result, error) {
	defer os.Remove(p.path)
	defer context.AfterFunc(ctx, p.cancel)()
	ctx = p.ctx
	args := p.cfg.Args
	if len(args) == 0 {
		args = []string{filepath.Base(p.path)}
	}
	newCmd := func() *exec.Cmd {
		cmd := exec.CommandContext(ctx, p.path, args[1:]...)
		cmd.Args[0] = args[0]
		cmd.Env = p.cfg.Env
		cmd.Stdout, cmd.Stderr = p.cfg.Stdout, p.cfg.Stderr
		// After the process exits, its output may still be in flight in
		// the copying goroutines (seconds on a loaded host); only then
		// are pipes a grandchild holds open cut.
		cmd.WaitDelay = 2 * time.Second
		return cmd
	}
	cmd := newCmd()
	if p.cfg.Stdin != nil {
		// exec.Cmd waits for its own stdin copier, which would block
		// forever in a reader the agent keeps open (the request pipe);
		// this copier is ours and ends when that reader is closed.
		r, w, err := os.Pipe()
		if err != nil {
			return &vmm.Result{Reason: vmm.ReasonInternal, Message: err.Error()}, fmt.Errorf("%w: %v", vmm.ErrGuest, err)
		}
		go func() {
			io.Copy(w, &firstRead{r: p.cfg.Stdin, f: p.cfg.OnFirstWait})
			w.Close()
		}()
		defer r.Close()
		cmd.Stdin = r
	}
	// Another goroutine's fork may still hold this program file open for
	// writing (inherited from ProcessBooter's write until that child execs,
	// golang/go#22315): exec then fails with ETXTBSY for a moment.
	err := cmd.Start()
	for i := 0; errors.Is(err, syscall.ETXTBSY) && i < 100; i++ {
		time.Sleep(time.Millisecond)
		stdin := cmd.Stdin
		cmd = newCmd()
		cmd.Stdin = stdin
		err = cmd.Start()
	}
	if err == nil {
		err = cmd.Wait()
	}
	if ctx.Err() != nil {
		return &vmm.Result{Reason: vmm.ReasonTimeout, Message: "process killed: " + ctx.Err().Error()},
			fmt.Errorf("%w: %v", vmm.ErrTimeout, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sig := int(ws.Signal())
			return &vmm.Result{Reason: vmm.ReasonSignaled, Signal: sig, Status: 128 + sig,
				Message: "killed by " + ws.Signal().String()}, nil
		}
		return &vmm.Result{Reason: vmm.ReasonExited, Status: ee.ExitCode()}, nil
	}
	if err != nil {
		return &vmm.Result{Reason: vmm.ReasonInternal, Message: err.Error()}, fmt.Errorf("%w: %v", vmm.ErrGuest, err)
	}
	return &vmm.Result{Reason: vmm.ReasonExited}, nil
}

// firstRead stands in for vmm's OnFirstWait: a host process cannot say
// when it blocks on stdin, so its first read of it is taken as that.
type firstRead struct {
	r    io.Reader
	f    func()
	once sync.Once
}

func (fr *firstRead) Read(b []byte) (int, error) {
	if fr.f != nil {
		fr.once.Do(fr.f)
	}
	return fr.r.Read(b)
}

func (p *process) Stats() vmm.Stats { return vmm.Stats{} }

func (p *process) Close() error {
	p.cancel()
	return nil
}
