package cli

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runLocal is `kiln run --local`: the program as a plain host process
// given what a Kiln VM would give it — argv as typed, only the --env
// environment, the command's standard streams — and mapped to the exit
// statuses `kiln run` uses, so a script cannot tell the two apart.
func (a *app) runLocal(ctx context.Context, args, env []string, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	path := args[0]
	if !strings.Contains(path, "/") {
		// As `kiln run` reads the file named, not a program found on $PATH.
		path = "." + string(filepath.Separator) + path
	}
	cmd := exec.CommandContext(ctx, path, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Env = append([]string{}, env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.in, a.out, a.err
	// A stdin that is no file is copied in by a goroutine that would wait
	// forever on a reader nobody closes; stop waiting once the program is
	// gone.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			return &ExitError{Code: exitTimeout, Err: fmt.Errorf("%s: stopped after --timeout %s", args[0], timeout)}
		}
		return &ExitError{Code: 130, Err: fmt.Errorf("%s: interrupted", args[0])}
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		if errors.Is(err, exec.ErrWaitDelay) {
			return nil // the program exited 0; only stdin's copy was cut short
		}
		return &ExitError{Code: exitGuestErr, Err: fmt.Errorf("run --local: %w", err)}
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		sig := ws.Signal()
		return &ExitError{Code: 128 + int(sig), Err: fmt.Errorf("%s: killed by %s (%v)", args[0], unix.SignalName(sig), sig)}
	}
	return &ExitError{Code: ee.ExitCode()}
}
