//go:build !unix

package builder

import (
	"os/exec"
	"time"
)

// killGroup: without process groups, a cancelled build kills the tool and
// stops waiting for its children after a while.
func killGroup(cmd *exec.Cmd) { cmd.WaitDelay = 5 * time.Second }
