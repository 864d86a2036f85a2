// Package vmhost runs a node's VMs in a few worker processes instead of the
// agent's own: a Host places each VM in a worker (up to PerWorker VMs each,
// up to MaxWorkers workers), and its VM behaves as *vmm.VM.
//
// Why: each KVM VM registers an MMU notifier on its process's address
// space, and every invalidation there (munmap, a copy-on-write fault) calls
// every VM's notifier. Measured in kvmbox (bench/restorescale_test.go),
// with all VMs in one process the kernel CPU per snapshot restore grew with
// the live VMs: 10 ms at 0, 46 ms at 1,000, ~90 ms at 1,750 (restores/s
// 75 → 10), and closing 2,000 VMs took minutes. Firecracker runs one
// process per VM; we shard, ~256 VMs per process, so the per-process cost
// stays flat. A VMM crash also takes down only its worker's VMs, never the
// agent: their Runs end with ErrWorker and the next Boot starts a new
// worker.
//
// A worker is the same executable re-executed with one argument,
// -kiln-vmhost-worker, and its control socket as fd 3, the way container
// runtimes re-execute themselves (runc's `init`). The executable's main
// runs the worker through an explicit hook, first thing, before it parses
// its arguments or starts anything:
//
//	if vmhost.IsWorker() {
//		os.Exit(vmhost.RunWorker())
//	}
//
// cmd/kiln's main does; so does TestMain in every test package whose tests
// start VMs through a Host, since there the test binary is the worker. No
// package init does it for them: linking vmhost does not by itself make a
// binary a worker. A forgotten hook fails loudly: the worker's first
// message says it serves, and a Host whose new worker exits or stays
// silent instead fails the Boot with ErrNoHook, which names the call (a Go
// test binary exits at once on the argument, an unknown flag to it). A
// worker is started from /proc/self/exe (the agent's own build even after
// an upgrade replaced the file), in its own process group (a terminal's ^C
// is the agent's to handle), and dies with the agent (Pdeathsig, and its
// control socket's EOF).
//
// Watchdog (watchdog.go): the agent never waits on a worker without a
// deadline. It pings each worker every second, and a worker that leaves a
// ping unanswered for a minute, or a boot, a close or a canceled Run's result
// for 2 minutes (deadlines far above what a loaded worker takes under
// emulation, measured by TestKVMAnswerLatency), is killed with its process
// group: its VMs end with ErrWorker, "worker N stopped answering for Xs:
// killed", and the next Boot goes to another worker.
//
// Jail (jail.go, seccomp.go, cgroup.go): by default a worker runs in new
// mount, pid, ipc, uts and net namespaces with a scrubbed environment,
// and before it serves anything pivots into an empty read-only root
// holding only /dev/kvm, drops to an unprivileged uid/gid (65534) with no
// capabilities, sets no_new_privs and loads a seccomp allow-list (KVM's
// ioctls only; anything else kills it, reported as "killed by seccomp
// (syscall N name)"); the agent puts it in a cgroup whose memory limit
// follows its VMs. Config.NoJail (`--no-jail`) turns it off, for
// debugging; setting it up needs root.
//
// Protocol: one SOCK_SEQPACKET socketpair per worker, one reader goroutine
// per side dispatching by VM id, writes serialized. A message is a 17-byte
// header (type, VM id, tag) and a body. The worker speaks first (hello:
// the hook ran and it is in its jail; or, with a body, why it could not
// enter it). Boot is JSON (the vmm.Config less
// its images, streams and callbacks) with descriptors attached as
// SCM_RIGHTS — the kernel and program in a memfd (none for a restore:
// the agent's open snapshot file instead, which the worker verifies once
// and caches by path), a file to write a snapshot into (renamed into
// place by the agent), stdin/stdout/stderr as the caller's own file or a
// pipe this side copies: a jailed worker opens no path but /dev/kvm.
// Then run, cancel (Run's context ended), stats (64 bytes back), close
// (answered once freed), ping (answered by the worker's reader); the
// worker reports booted, OnSnapshot and OnFirstWait (it holds the guest
// until the agent's callback returned, as in process), the first read of
// a copied stdin, and the result with its error's vmm sentinels, which
// the agent's side wraps again.
//
// Counters: the agent reads a VM's vmm.Stats once per warm call, and a
// round trip to the worker for it cost about 2 ms per call under
// emulation. So each worker shares a memfd with the agent (fd 4), one
// vmm.StatsSize slot per VM, and its VMs keep their counters there
// (vmm.Config.StatsPage); Stats reads the slot. The stats message remains
// for VMs without a slot (past 4×PerWorker on one worker).
package vmhost
