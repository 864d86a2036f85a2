package vmhost

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"syscall"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// workerSyscalls is the seccomp allow-list of a jailed worker: what the
// worker was seen to make (the vmhost and node-agent suites — real KVM
// guests booted, restored, snapshotted, discarding, canceled, crashing —
// run under a filter that logged every other syscall), plus exit and
// restart_syscall, which the runtime and the kernel need at times those
// runs may not hit. A syscall missing here kills the worker at its first
// use: loud (the agent logs "killed by seccomp (syscall N name)" and its
// VMs end with ErrWorker), and those suites run jailed. What the worker
// cannot do is the point: open a socket, execve, fork, ptrace, mount,
// load a module, change its ids or its filter, map a file by path.
var workerSyscalls = []string{
	// Memory: the Go heap, guest RAM, snapshot mappings, discards, the
	// snapshot writer's residency scan.
	"mmap", "munmap", "mprotect", "madvise", "mincore",
	// Descriptors handed over (images, streams, snapshots, the control
	// socket) and the runtime's poller; openat for /dev/kvm, the only
	// file in its root.
	"read", "write", "pread64", "pwrite64", "lseek", "close", "fstat", "fcntl", "ftruncate", "fsync",
	"openat", "recvmsg", "sendmsg", "getsockopt", "getsockname", "getpeername",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "eventfd2",
	// Threads, signals and time: the Go runtime (and glibc's, in a test
	// binary built with cgo), vCPU kicks (SIGURG).
	"futex", "nanosleep", "clock_gettime", "sched_yield", "sched_getaffinity", "getpid", "gettid",
	"tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
	"exit", "exit_group", "getrandom", "rseq", "set_robust_list",
}

// clone is allowed only for threads: a worker never starts a process.
const cloneThread = syscall.CLONE_VM | syscall.CLONE_THREAD

// seccompDefault is what the filter does with any other syscall.
var seccompDefault = seccomp.ActionKillProcess

// workerPolicy is the filter a jailed worker loads (enterJail). Anything
// not allowed kills the process, every thread at once.
func workerPolicy() seccomp.Policy {
	var ioctls []seccomp.NameWithConditions
	for _, req := range vmm.KVMIoctls() {
		ioctls = append(ioctls, seccomp.NameWithConditions{Name: "ioctl",
			Conditions: seccomp.ArgumentConditions{{Argument: 1, Operation: seccomp.Equal, Value: req}}})
	}
	withArgs := append(ioctls, seccomp.NameWithConditions{Name: "clone",
		Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: cloneThread}}})
	return seccomp.Policy{
		DefaultAction: seccompDefault,
		Syscalls: []seccomp.SyscallGroup{
			{Names: workerSyscalls, Action: seccomp.ActionAllow},
			{NamesWithCondtions: withArgs, Action: seccomp.ActionAllow},
			// glibc's pthread_create (a test binary built with cgo) tries
			// clone3, whose flags a filter cannot see, then falls back to
			// clone on ENOSYS (as under Docker's default profile).
			{Names: []string{"clone3"}, Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS)},
		},
	}
}

// loadSeccomp sets no_new_privs and installs workerPolicy on every thread
// of the worker (TSYNC: the Go runtime's threads already run).
func loadSeccomp() error {
	if !seccomp.Supported() {
		return fmt.Errorf("the kernel has no seccomp filters")
	}
	return seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: workerPolicy()})
}

// seccompAudit matches the kernel's record of a seccomp kill (audit type
// 1326), which names the process by its pid as the agent sees it.
var seccompAudit = regexp.MustCompile(`type=1326 .*\bpid=(\d+)\b.*\bsyscall=(\d+)\b`)

// seccompKill describes a worker the kernel killed for a syscall outside
// its filter: "killed by seccomp (syscall 41 socket)", naming the syscall
// from the kernel log's audit record when it is there (the agent is root;
// records are rate-limited and need kernel.printk to keep them).
func seccompKill(pid int) string {
	nr := -1
	// The record is printed by the kernel's audit thread, just after the
	// death at times.
	for try := 0; nr < 0 && try < 10; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		nr = seccompAuditNr(pid)
	}
	if nr < 0 {
		return "killed by seccomp (SIGSYS: a syscall outside its allow-list; the kernel log's audit record type=1326 names it)"
	}
	return fmt.Sprintf("killed by seccomp (syscall %d %s)", nr, syscallName(nr))
}

// seccompAuditNr is the syscall of the kernel's last seccomp record for
// pid; -1: none.
func seccompAuditNr(pid int) int {
	nr := -1
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nr
	}
	defer unix.Close(fd)
	// One record per read; EAGAIN past the last one.
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.EINTR) {
			continue // records overwritten meanwhile
		}
		if err != nil || n <= 0 {
			break
		}
		if m := seccompAudit.FindSubmatch(buf[:n]); m != nil {
			if p, _ := strconv.Atoi(string(m[1])); p == pid {
				nr, _ = strconv.Atoi(string(m[2]))
			}
		}
	}
	return nr
}

// syscallName names an x86-64 syscall number.
func syscallName(nr int) string {
	if name, ok := arch.X86_64.SyscallNumbers[nr]; ok {
		return name
	}
	return "unknown"
}
