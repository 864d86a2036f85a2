package vmhost

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The jail, in the spirit of Firecracker's jailer. A worker holds the
// guests of up to PerWorker functions of anyone, and its VMM parses what
// they send (hypercalls, exits, snapshots): a guest that found a bug there
// would run code as the worker. Unjailed, that is root with the agent's
// environment (its credentials) on the host. Jailed (the default), the
// worker — before it serves anything (enterJail, called by RunWorker) —
//
//   - is in new mount, pid, ipc, uts and net namespaces (the agent starts
//     it so: SysProcAttr.Cloneflags): it sees no other process, no host
//     network (only a loopback that is down), no host IPC;
//   - has an empty root it cannot write: a 16 KiB read-only tmpfs holding
//     only /dev/kvm (a node it owns, made with the host device's number),
//     reached by pivot_root with the host's root unmounted (on a host
//     whose root is an initramfs, which cannot be pivoted: moved over it
//     and chrooted into, the old root unreachable beneath);
//   - runs as JailUID:JailGID (default 65534:65534, nobody/nogroup) with
//     no supplementary groups and no capabilities (setresuid from root to
//     non-root clears them), and no_new_privs;
//   - runs under a seccomp allow-list (seccomp.go): the syscalls a worker
//     was seen to make, ioctl only with KVM's requests, clone only for
//     threads; anything else kills the whole process (SIGSYS), which the
//     agent reports as "killed by seccomp (syscall N name)";
//   - is in a cgroup of its own (cgroup.go): memory limited to its VMs'
//     guest memory and images plus an overhead, a pids limit, a CPU weight
//     by its VMs;
//   - has a scrubbed environment: only the Go runtime's knobs (keepEnv),
//     nothing of the agent's (credentials, KILN_* secrets).
//
// Everything it reads or writes reaches it as a descriptor: the images in
// a memfd, the streams, a snapshot to restore (the agent's open file), a
// snapshot to take (a temporary file the agent created beside the final
// name and renames into place once the worker filled it).
//
// Setting it up needs root; an agent that is not root refuses to start
// unless the jail is turned off (Config.NoJail, `kiln agent --no-jail`),
// which is for debugging and logged loudly.

// DefaultJailID is the uid and gid a jailed worker runs as unless
// Config.JailUID/JailGID say otherwise: nobody/nogroup on Debian and most
// distributions. Sharing it with other "nobody" processes gives a worker
// nothing over them: it cannot see them (its own pid namespace), it has no
// file system (an empty root), and it can send signals to nobody.
const DefaultJailID = 65534

// ErrJail: the worker jail could not be set up (the agent is not root, or
// the kernel refused a step). Errors with it also wrap ErrWorker when a
// worker failed to enter it.
var ErrJail = errors.New("vmhost: the worker jail")

// jailEnv tells a worker to jail itself, as "UID:GID".
const jailEnv = "KILN_VMHOST_JAIL"

// keepEnv names the variables of the agent's environment a jailed worker
// gets: the Go runtime's knobs, nothing else. A test binary adds its own.
var keepEnv = []string{"GOTRACEBACK", "GODEBUG", "GOGC", "GOMEMLIMIT", "GOMAXPROCS"}

// jailCloneflags are the namespaces a jailed worker starts in.
const jailCloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC |
	syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET

// workerEnv is a jailed worker's environment: keepEnv's variables the
// agent has, and the worker's own settings.
func workerEnv(own ...string) []string {
	var env []string
	for _, k := range keepEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, own...)
}

// checkJailable says why this process cannot jail its workers, if so.
func checkJailable() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("%w needs root to set up (namespaces, pivot_root, a uid change, cgroups) and this agent runs as uid %d: run it as root, or turn the jail off for debugging (kiln agent --no-jail)", ErrJail, uid)
	}
	return nil
}

// jailMounts are where a worker may mount its new root: any existing
// directory will do, in its own mount namespace.
var jailMounts = []string{"/tmp", "/mnt", "/run"}

// enterJail is the worker's side: spec is "UID:GID". Once it returns nil
// the worker has an empty root, no privileges and its seccomp filter.
func enterJail(spec string) error {
	uid, gid, err := parseJailSpec(spec)
	if err != nil {
		return err
	}
	if err := jailRoot(uid, gid); err != nil {
		return fmt.Errorf("%w: root: %w", ErrJail, err)
	}
	if err := unix.Sethostname([]byte("kiln-vmhost")); err != nil {
		return fmt.Errorf("%w: hostname: %w", ErrJail, err)
	}
	if err := dropPrivileges(uid, gid); err != nil {
		return fmt.Errorf("%w: privileges: %w", ErrJail, err)
	}
	if err := rearmParentDeath(); err != nil {
		return fmt.Errorf("%w: parent-death signal: %w", ErrJail, err)
	}
	if err := loadSeccomp(); err != nil {
		return fmt.Errorf("%w: seccomp: %w", ErrJail, err)
	}
	return nil
}

// rearmParentDeath sets the worker's parent-death signal again: a change
// of effective uid clears it (prctl(2)), and it is what ends a worker that
// cannot see its control socket close (stopped) when its agent dies. It is
// set on the calling thread, which stays locked to this goroutine — the
// worker's main one, serving until the process ends — so the thread that
// holds the setting never exits first. A worker whose agent died before
// this still sees its socket close, unless it is stopped in that instant.
func rearmParentDeath() error {
	runtime.LockOSThread()
	return unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
}

func parseJailSpec(spec string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(spec, ":")
	if uid, err = strconv.Atoi(u); err == nil && ok {
		gid, err = strconv.Atoi(g)
	}
	if err != nil || !ok || uid <= 0 || gid <= 0 {
		return 0, 0, fmt.Errorf("%w: bad %s %q", ErrJail, jailEnv, spec)
	}
	return uid, gid, nil
}

// jailRoot makes the worker's root an empty read-only tmpfs holding only
// /dev/kvm, a node of the host's device owned by uid:gid (mode 0600), and
// unmounts the host's root. The mount namespace is the worker's own, so
// nothing of this reaches the host.
func jailRoot(uid, gid int) error {
	// Nothing mounted here propagates back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	var kvm unix.Stat_t
	haveKVM := unix.Stat("/dev/kvm", &kvm) == nil && kvm.Mode&unix.S_IFMT == unix.S_IFCHR
	dir := ""
	for _, d := range jailMounts {
		if st, err := os.Lstat(d); err == nil && st.IsDir() {
			dir = d
			break
		}
	}
	if dir == "" {
		return fmt.Errorf("no directory to mount the new root on (tried %v)", jailMounts)
	}
	if err := unix.Mount("kiln-vmhost", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=16k,nr_inodes=16"); err != nil {
		return fmt.Errorf("tmpfs on %s: %w", dir, err)
	}
	if err := unix.Mkdir(dir+"/dev", 0o755); err != nil {
		return fmt.Errorf("mkdir dev: %w", err)
	}
	if haveKVM {
		node := dir + "/dev/kvm"
		if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(kvm.Rdev)); err != nil {
			return fmt.Errorf("mknod /dev/kvm: %w", err)
		}
		if err := unix.Chmod(node, 0o600); err != nil { // whatever the umask
			return fmt.Errorf("chmod /dev/kvm: %w", err)
		}
		if err := unix.Chown(node, uid, gid); err != nil {
			return fmt.Errorf("chown /dev/kvm: %w", err)
		}
	}
	// pivot_root(".", ".") stacks the old root over the new one; detaching
	// it leaves the new one alone (runc's pivotRoot).
	if err := unix.Chdir(dir); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err == nil {
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount the old root: %w", err)
		}
	} else if errors.Is(err, unix.EINVAL) {
		// The root is an initramfs (rootfs), which cannot be pivoted away
		// (a host booted without a root file system: the QEMU box). As
		// runc does there, move the new root over it and chroot: the old
		// root stays mounted beneath, unreachable, since the worker holds
		// no directory of it and may not chroot again (no capability, and
		// seccomp kills it).
		if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("pivot_root: %w; move the new root over the initramfs: %w", unix.EINVAL, err)
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
	} else {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount / read-only: %w", err)
	}
	return nil
}

// dropPrivileges makes every thread of the worker uid:gid with no
// supplementary groups. From root to a non-root uid, the kernel clears the
// permitted, effective and ambient capabilities (no SECBIT_KEEP_CAPS). The
// syscall package's calls apply to all threads.
func dropPrivileges(uid, gid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	// Checked on this thread; seccomp's TSYNC then fails if any thread
	// were left behind with another filter, and the test checks them all.
	if os.Getuid() != uid || os.Geteuid() != uid || os.Getgid() != gid {
		return fmt.Errorf("still uid %d/%d gid %d", os.Getuid(), os.Geteuid(), os.Getgid())
	}
	return nil
}
