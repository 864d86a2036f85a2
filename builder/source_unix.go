//go:build unix

package builder

import (
	"os/exec"
	"syscall"
	"time"
)

// killGroup makes cancelling cmd kill its whole process group: `go build`
// runs the compiler and linker as children, which would otherwise outlive
// a cancelled build and keep its output pipes open.
func killGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
}
