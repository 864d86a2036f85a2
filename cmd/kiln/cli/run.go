package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/builder"
	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// Exit statuses of `kiln run` that are not the program's own.
const (
	exitNoKVM    = 2   // no usable /dev/kvm
	exitTimeout  = 124 // as timeout(1)
	exitGuestErr = 125 // the guest kernel gave up or the VM broke
)

func (a *app) runCmd() *cobra.Command {
	var env []string
	var mem, kernelPath string
	var timeout time.Duration
	var trace, local bool
	cmd := &cobra.Command{
		Use:   "run [flags] PROGRAM [ARGS...]",
		Short: "Boot a static x86-64 program in a unikernel VM right here, with stdin/stdout/stderr attached",
		Long: `Boot a static x86-64 program in a unikernel VM right here, with stdin/stdout/stderr attached.

The exit status is the program's; a program killed by a fault exits with
128+signal, as under a shell; 124 means --timeout ran out; 2 means this
machine has no usable /dev/kvm.

With --local the program runs as a plain process on this machine instead
(no KVM needed), with the same streams, environment and exit statuses: the
quick way to try a function, since a serve function speaks the same wire
protocol on fd 0/1 either way.`,
		Example: `  echo hi | kiln run ./cat
  kiln run --env NAME=kiln --mem 32M ./hello arg1
  kiln run --local ./wordcount < notes.txt`,
		Args: usage(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			program, err := os.ReadFile(args[0])
			if err != nil {
				return &ExitError{Code: exitGuestErr, Err: fmt.Errorf("run: %w", err)}
			}
			if err := builder.CheckELF(program, 0); err != nil {
				return &ExitError{Code: exitGuestErr, Err: fmt.Errorf("run: %s: %w", args[0], err)}
			}
			if local {
				return a.runLocal(cmd.Context(), args, env, timeout)
			}
			var memSize uint64
			if mem != "" {
				if memSize, err = gateway.ParseMemory(mem); err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("run: --mem: %w", err)}
				}
				memSize = (memSize + (2<<20 - 1)) &^ (2<<20 - 1)
			}
			if err := vmm.Available(); err != nil {
				return &ExitError{Code: exitNoKVM, Err: fmt.Errorf("run: %w\n  Kiln boots programs with KVM; on a machine without /dev/kvm use scripts/kvmbox (a QEMU VM that has one)", err)}
			}
			if kernelPath == "" {
				if kernelPath, err = vmm.FindKernel(); err != nil {
					return &ExitError{Code: exitGuestErr, Err: fmt.Errorf("run: %w", err)}
				}
			}
			kernel, err := os.ReadFile(kernelPath)
			if err != nil {
				return &ExitError{Code: exitGuestErr, Err: fmt.Errorf("run: guest kernel: %w", err)}
			}
			return a.boot(cmd.Context(), vmm.Config{
				Kernel: kernel, Program: program, MemSize: memSize,
				Args: args, Env: env, // argv[0] is the path as typed, as a shell passes it
				Stdin: a.in, Stdout: a.out, Stderr: a.err, TraceSyscalls: trace,
			}, timeout)
		},
	}
	fl := cmd.Flags()
	// Flags after PROGRAM belong to the program.
	fl.SetInterspersed(false)
	fl.StringArrayVar(&env, "env", nil, "environment entry KEY=VALUE (repeatable)")
	fl.StringVar(&mem, "mem", "", "guest memory, e.g. 64M (default 64M)")
	fl.DurationVar(&timeout, "timeout", 0, "stop the VM after this long (default: no limit)")
	fl.BoolVar(&local, "local", false, "run the program as a plain host process, not in a VM (--mem, --kernel, --trace-syscalls do not apply)")
	fl.BoolVar(&trace, "trace-syscalls", false, "log every syscall the guest kernel handles to stderr")
	fl.StringVar(&kernelPath, "kernel", "", "guest kernel ELF (default: $KILN_KERNEL, beside kiln, or build/kernel)")
	return cmd
}

func (a *app) boot(ctx context.Context, cfg vmm.Config, timeout time.Duration) error {
	vm, err := vmm.New(cfg)
	if err != nil {
		if errors.Is(err, vmm.ErrNoKVM) {
			return &ExitError{Code: exitNoKVM, Err: err}
		}
		return &ExitError{Code: exitGuestErr, Err: err}
	}
	defer vm.Close()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	r, err := vm.Run(ctx)
	if r == nil {
		return &ExitError{Code: exitGuestErr, Err: err}
	}
	switch r.Reason {
	case vmm.ReasonExited:
		if r.Status == 0 {
			return nil
		}
		return &ExitError{Code: r.Status}
	case vmm.ReasonSignaled:
		return &ExitError{Code: 128 + r.Signal, Err: fmt.Errorf("%s: %s", cfg.Args[0], r.Message)}
	case vmm.ReasonTimeout:
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
			return &ExitError{Code: 130, Err: fmt.Errorf("%s: interrupted", cfg.Args[0])}
		}
		return &ExitError{Code: exitTimeout, Err: fmt.Errorf("%s: stopped after --timeout %s", cfg.Args[0], timeout)}
	default:
		msg := r.Message
		if r.Regs != "" {
			msg += "\n" + r.Regs
		}
		return &ExitError{Code: exitGuestErr, Err: fmt.Errorf("%s: %s", cfg.Args[0], msg)}
	}
}
