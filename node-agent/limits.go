package nodeagent

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// wantOpenFiles is the descriptor limit an agent asks for: each VM holds a
// few (its KVM VM and vCPU, its memory's file), so the usual hard limit
// of 4096 caps a node at about 1,300 warm instances.
const wantOpenFiles = 1 << 20

// RaiseOpenFiles lifts RLIMIT_NOFILE towards wantOpenFiles: the soft limit
// up to the hard one always, the hard one too when the process may (root,
// or CAP_SYS_RESOURCE). It logs what it got and returns the limit; it
// never fails. The agent calls it at start, and so do the benches that
// hold thousands of VMs in one process.
func RaiseOpenFiles(log *slog.Logger) uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur >= wantOpenFiles {
		return lim.Cur
	}
	want := unix.Rlimit{Cur: max(lim.Max, wantOpenFiles), Max: max(lim.Max, wantOpenFiles)}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &want) == nil {
		return want.Cur
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < wantOpenFiles {
		log.Warn("open-file limit below what many warm instances need; raise the hard limit (LimitNOFILE=)", "limit", lim.Cur, "want", wantOpenFiles)
	}
	return lim.Cur
}
