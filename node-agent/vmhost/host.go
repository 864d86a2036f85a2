package vmhost

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// Config sizes a Host.
type Config struct {
	PerWorker  int          // VMs a worker holds before the next worker is used; 0 → 256
	MaxWorkers int          // 0 → 64; beyond PerWorker*MaxWorkers, VMs go to the least loaded worker
	Exe        string       // worker executable; "" → this one (/proc/self/exe, else os.Executable())
	Logger     *slog.Logger // nil → discard

	// The watchdog (watchdog.go): a worker that leaves a ping or a stats
	// request unanswered for AnswerWithin, or a boot, a close or a
	// canceled Run's result for WorkWithin, is killed with its VMs.
	PingEvery    time.Duration // 0 → DefaultPingEvery, or AnswerWithin/4 if less
	AnswerWithin time.Duration // 0 → DefaultAnswerWithin
	WorkWithin   time.Duration // 0 → DefaultWorkWithin
	// OnKill, if set, is called once for each worker the watchdog killed,
	// with what it left unanswered (KillHeartbeat, KillBoot, …): the
	// agent's kiln_agent_workers_killed_total.
	OnKill func(reason string)

	// NoJail runs workers unjailed (jail.go): as the agent's user, with
	// its environment, namespaces and cgroup, and no seccomp filter. For
	// debugging only; New logs it loudly. Jailed (the default), New
	// fails unless the agent is root.
	NoJail bool
	// JailUID, JailGID: who jailed workers run as; 0 → DefaultJailID.
	JailUID, JailGID int
}

// Host runs VMs in worker processes. Its methods are safe for concurrent
// use.
type Host struct {
	per, max int
	exe      string
	log      *slog.Logger
	ids      atomic.Uint64

	pingEvery, answerWithin, workWithin time.Duration
	onKill                              func(reason string)

	jail     bool
	uid, gid int
	cg       *cgroups // nil: workers get no cgroup

	spawnc chan spawnReq
	done   chan struct{} // closed by Close

	mu      sync.Mutex // guards the fields below and every worker's load
	workers []*worker  // live or starting, in start order
	closed  bool
}

// New returns a Host; workers start with the first Boot.
func New(cfg Config) (*Host, error) {
	h := &Host{per: cfg.PerWorker, max: cfg.MaxWorkers, exe: cfg.Exe, log: cfg.Logger,
		pingEvery: cfg.PingEvery, answerWithin: cfg.AnswerWithin, workWithin: cfg.WorkWithin, onKill: cfg.OnKill,
		spawnc: make(chan spawnReq), done: make(chan struct{})}
	if h.answerWithin <= 0 {
		h.answerWithin = DefaultAnswerWithin
	}
	if h.pingEvery <= 0 {
		h.pingEvery = min(DefaultPingEvery, h.answerWithin/4)
	}
	if h.workWithin <= 0 {
		h.workWithin = DefaultWorkWithin
	}
	if h.per <= 0 {
		h.per = 256
	}
	if h.max <= 0 {
		h.max = 64
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.exe == "" {
		// The running binary itself, even once an upgrade replaced the
		// file: a worker must speak this agent's protocol.
		h.exe = "/proc/self/exe"
		if _, err := os.Stat(h.exe); err != nil {
			exe, err := os.Executable()
			if err != nil {
				return nil, fmt.Errorf("vmhost: the worker executable: %w", err)
			}
			h.exe = exe
		}
	}
	if _, err := os.Stat(h.exe); err != nil {
		return nil, fmt.Errorf("vmhost: the worker executable: %w", err)
	}
	if err := h.setupJail(cfg); err != nil {
		return nil, err
	}
	go h.spawner()
	return h, nil
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// spawner starts every worker from one goroutine locked to its OS thread.
// Pdeathsig fires when the thread that forked the child exits, not the
// process; Go ends a thread when a goroutine locked to it returns, so
// workers forked from arbitrary goroutines could be killed under a live
// agent. This thread lives until Close.
func (h *Host) spawner() {
	runtime.LockOSThread()
	for {
		select {
		case req := <-h.spawnc:
			req.done <- req.cmd.Start()
		case <-h.done:
			return // still locked: the thread exits, which is fine, every worker is being killed
		}
	}
}

// Boot creates a VM in a worker: the same contract as vmm.New, restores
// included (the worker opens cfg.Snapshot.Path() itself). Errors wrap the
// same vmm sentinels, or ErrWorker when the worker died before answering.
func (h *Host) Boot(cfg vmm.Config) (*VM, error) {
	restore := ""
	if cfg.Snapshot != nil {
		restore = cfg.Snapshot.Path()
	}
	return h.boot(cfg, restore)
}

func (h *Host) boot(cfg vmm.Config, restore string) (*VM, error) {
	w, err := h.pick()
	if err != nil {
		return nil, err
	}
	v, err := w.boot(h.ids.Add(1), cfg, restore)
	if err != nil {
		h.unload(w)
		return nil, err
	}
	return v, nil
}

// pick chooses the worker for one more VM and counts it there: the first
// with room, else a new one, else the least loaded.
func (h *Host) pick() (*worker, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("%w: the host is closed", ErrWorker)
	}
	var w *worker
	for _, c := range h.workers {
		if c.load < h.per {
			w = c
			break
		}
	}
	start := false
	if w == nil && len(h.workers) < h.max {
		w = &worker{h: h, ready: make(chan struct{}), hello: make(chan struct{}), dead: make(chan struct{}),
			vms: map[uint64]*VM{}, stats: map[uint64]chan statsReply{}}
		h.workers = append(h.workers, w)
		start = true
	}
	if w == nil {
		for _, c := range h.workers {
			if w == nil || c.load < w.load {
				w = c
			}
		}
	}
	w.load++
	h.mu.Unlock()
	if start {
		w.startErr = w.start()
		if w.startErr != nil {
			h.drop(w)
		}
		close(w.ready)
	}
	<-w.ready
	if w.startErr != nil {
		return nil, w.startErr
	}
	return w, nil
}

// unload uncounts a VM that left w.
func (h *Host) unload(w *worker) {
	h.mu.Lock()
	w.load--
	h.mu.Unlock()
}

// drop forgets a worker that is gone: no more VMs go to it.
func (h *Host) drop(w *worker) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range h.workers {
		if c == w {
			h.workers = append(h.workers[:i], h.workers[i+1:]...)
			return
		}
	}
}

// Close ends every worker; their VMs die with them (their Runs return
// ErrWorker). Boot fails afterwards.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	ws := append([]*worker(nil), h.workers...)
	h.mu.Unlock()
	for _, w := range ws {
		<-w.ready
		if w.startErr == nil {
			w.closing.Store(true)
			w.cmd.Process.Kill()
		}
	}
	for _, w := range ws {
		<-w.dead
	}
	close(h.done)
	return nil
}

// Workers lists the pids of the running workers, oldest first (tests,
// diagnostics).
func (h *Host) Workers() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	var p []int
	for _, w := range h.workers {
		select {
		case <-w.ready:
			if w.startErr == nil {
				p = append(p, w.pid)
			}
		default:
		}
	}
	return p
}

// worker is the agent's side of one worker process.
type worker struct {
	h     *Host
	load  int           // VMs placed here and not yet freed; guarded by h.mu
	ready chan struct{} // closed once started (or failed to)

	// Set before ready is closed.
	startErr error
	cmd      *exec.Cmd
	pid      int
	c        *conn
	logsDone chan struct{} // closed when its output ended

	hello   chan struct{} // closed when its first message says the worker loop runs (awaitHello)
	jailErr string        // … or why it could not enter its jail; set before hello is closed
	cg      *workerCgroup // its cgroup; nil: none (no jail, or none usable); set before ready is closed
	oom     bool          // the OOM killer killed it at its cgroup's limit; set once reaped
	closing atomic.Bool   // Host.Close killed it
	dead    chan struct{} // closed once its reader stopped: every wait on it gives up
	why     string        // how it ended; set before dead is closed
	killed  bool          // … by the watchdog (why says so)

	// The watchdog's (watchdog.go).
	pong     atomic.Uint64 // the last ping answered
	killOnce sync.Once
	procMu   sync.Mutex // guards reaped and hungWhy
	reaped   bool       // its process was waited for: its pid may be reused
	hungWhy  string     // set when the watchdog killed it

	mu    sync.Mutex // guards the fields below
	vms   map[uint64]*VM
	stats map[uint64]chan statsReply // pending Stats requests by tag
	tag   uint64
	slots []int // free slots of statsMem

	// statsMem is shared with the worker (a memfd both map): one
	// vmm.StatsSize slot per VM, where its VM keeps its counters, so that
	// Stats — once per warm call — reads memory instead of asking.
	statsMu  sync.RWMutex // guards statsMem: unmapped once the worker is dead
	statsMem []byte
}

// statsSlots is how many VMs of one worker get a stats slot; the rest (a
// host past PerWorker*MaxWorkers) ask for their counters instead.
func (w *worker) statsSlots() int { return 4 * w.h.per }

// takeSlot reserves a stats slot; -1: none left.
func (w *worker) takeSlot() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.slots)
	if n == 0 {
		return -1
	}
	s := w.slots[n-1]
	w.slots = w.slots[:n-1]
	return s
}

// putSlot returns a slot once the worker no longer uses it.
func (w *worker) putSlot(s int) {
	if s < 0 {
		return
	}
	w.mu.Lock()
	w.slots = append(w.slots, s)
	w.mu.Unlock()
}

// readSlot reads the counters a VM keeps in slot s.
func (w *worker) readSlot(s int) (vmm.Stats, bool) {
	w.statsMu.RLock()
	defer w.statsMu.RUnlock()
	if s < 0 || w.statsMem == nil {
		return vmm.Stats{}, false
	}
	return vmm.ReadStats(w.statsMem[s*vmm.StatsSize : (s+1)*vmm.StatsSize]), true
}

// workerStartTimeout bounds how long a started worker may take to say it
// runs the worker loop (awaitHello). A worker says so within a second even
// under emulation; only an executable without the hook that neither exits
// nor reads its arguments takes this long to be found out.
var workerStartTimeout = time.Minute

// start runs the worker process with its control socket as fd 3 and waits
// until it serves.
func (w *worker) start() error {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		close(w.dead)
		return fmt.Errorf("%w: socketpair: %w", ErrWorker, err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "vmhost-control"), os.NewFile(uintptr(pair[1]), "vmhost-control")
	logR, logW, err := os.Pipe()
	if err != nil {
		ours.Close()
		theirs.Close()
		close(w.dead)
		return fmt.Errorf("%w: %w", ErrWorker, err)
	}
	statsFile, err := memfd()
	if err == nil {
		err = statsFile.Truncate(int64(w.statsSlots() * vmm.StatsSize))
	}
	if err == nil {
		w.statsMem, err = unix.Mmap(int(statsFile.Fd()), 0, w.statsSlots()*vmm.StatsSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	if err != nil {
		if statsFile != nil {
			statsFile.Close()
		}
		ours.Close()
		theirs.Close()
		logR.Close()
		logW.Close()
		close(w.dead)
		return fmt.Errorf("%w: stats memory: %w", ErrWorker, err)
	}
	defer statsFile.Close() // the mappings on both sides keep it
	for s := w.statsSlots() - 1; s >= 0; s-- {
		w.slots = append(w.slots, s)
	}
	cmd := exec.Command(w.h.exe, workerArg)
	cmd.Env = append(os.Environ(), statsEnv+"=4")
	cmd.ExtraFiles = []*os.File{theirs, statsFile} // fds 3 and 4
	cmd.Stdout, cmd.Stderr = logW, logW
	// SIGKILL when the agent dies, in case the worker does not notice its
	// control socket closing (stopped, or stuck in a VM). Its own process
	// group keeps a terminal's ^C, meant for the agent's orderly shutdown,
	// from killing the VMs under it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if w.h.jail {
		// Its own namespaces from the start, a scrubbed environment, and
		// the rest of the jail it sets up itself (enterJail).
		cmd.Env = workerEnv(statsEnv+"=4", fmt.Sprintf("%s=%d:%d", jailEnv, w.h.uid, w.h.gid))
		cmd.SysProcAttr.Cloneflags = jailCloneflags
		if w.h.cg != nil {
			if w.cg, err = w.h.cg.create(workerPids(w.h.per)); err != nil {
				w.h.log.Error("vmhost: a worker gets NO cgroup (no memory, pids or CPU limit)", "err", err)
				w.cg = nil
			}
		}
	}
	req := spawnReq{cmd: cmd, done: make(chan error, 1)}
	select {
	case w.h.spawnc <- req:
		err = <-req.done
	case <-w.h.done:
		err = errors.New("the host is closed")
	}
	theirs.Close()
	logW.Close()
	if err != nil {
		ours.Close()
		logR.Close()
		w.unmapStats()
		if w.cg != nil {
			w.cg.remove()
		}
		close(w.dead)
		return fmt.Errorf("%w: starting %s: %w", ErrWorker, w.h.exe, err)
	}
	w.cmd, w.pid = cmd, cmd.Process.Pid
	if w.cg != nil {
		// Before it says it serves: no VM boots outside the cgroup.
		if err = w.cg.add(w.pid); err != nil {
			w.h.log.Error("vmhost: could not put a worker in its cgroup: it runs without limits", "pid", w.pid, "err", err)
		}
	}
	if w.c, err = newConn(ours); err == nil {
		w.c.sendWithin = w.h.answerWithin
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		logR.Close()
		w.unmapStats()
		close(w.dead)
		return fmt.Errorf("%w: %w", ErrWorker, err)
	}
	w.logsDone = make(chan struct{})
	go w.logLines(logR)
	go w.read()
	if err := w.awaitHello(); err != nil {
		return err
	}
	go w.watch()
	w.h.log.Debug("vmhost: worker started", "pid", w.pid)
	return nil
}

// awaitHello waits for the worker's first message, which says it runs the
// worker loop. An executable whose main (or TestMain) lacks the hook runs
// as itself instead: it exits at once on workerArg (a Go test binary:
// "flag provided but not defined"), or goes on until the timeout; either
// way the start fails with ErrNoHook rather than leaving Boot waiting or
// running a second copy of the program.
func (w *worker) awaitHello() error {
	t := time.NewTimer(workerStartTimeout)
	defer t.Stop()
	select {
	case <-w.hello:
		if w.jailErr != "" {
			w.cmd.Process.Kill()
			<-w.dead
			return fmt.Errorf("%w: it could not enter its jail: %s: %w", ErrWorker, w.jailErr, ErrJail)
		}
		return nil
	case <-w.dead:
		select {
		case <-w.hello:
			if w.jailErr != "" {
				return fmt.Errorf("%w: it could not enter its jail: %s: %w", ErrWorker, w.jailErr, ErrJail)
			}
			return fmt.Errorf("%w: it exited as it started: %s", ErrWorker, w.why)
		default:
		}
		return fmt.Errorf("%w: %s exited (%s) without serving as a VM worker: %w", ErrWorker, w.exeName(), w.why, ErrNoHook)
	case <-t.C:
		w.cmd.Process.Kill()
		<-w.dead
		return fmt.Errorf("%w: %s did not serve as a VM worker within %v: %w", ErrWorker, w.exeName(), workerStartTimeout, ErrNoHook)
	}
}

// exeName names the worker executable for a reader: the file behind
// /proc/self/exe, which is the binary whose main lacks the hook.
func (w *worker) exeName() string {
	if w.h.exe == "/proc/self/exe" {
		if p, err := os.Executable(); err == nil {
			return p
		}
	}
	return w.h.exe
}

// logLines passes what a worker prints (a panic, a vmm warning) to the log.
func (w *worker) logLines(r io.ReadCloser) {
	defer close(w.logsDone)
	defer r.Close()
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 4096), 1<<20)
	for s.Scan() {
		w.h.log.Warn("vmhost: worker output", "pid", w.pid, "line", s.Text())
	}
}

// read dispatches the worker's messages until its socket ends, then reaps
// the process and fails what waited on it.
func (w *worker) read() {
	var failure error
	for {
		m, err := w.c.recv()
		if err != nil {
			if !errors.Is(err, errEOF) && !errors.Is(err, io.EOF) && !w.closing.Load() {
				failure = err
			}
			break
		}
		m.closeFDs()
		w.dispatch(m)
	}
	// A worker whose socket failed or closed is of no use: make sure it
	// is gone before saying how it ended.
	w.cmd.Process.Kill()
	exited, waitErr := w.reap()
	w.c.close()
	// Its last words (a panic) are logged before its death is.
	select {
	case <-w.logsDone:
	case <-time.After(time.Second):
	}
	hung := w.hung()
	var status syscall.WaitStatus
	if ee, ok := waitErr.(*exec.ExitError); ok {
		status, _ = ee.Sys().(syscall.WaitStatus)
	}
	switch {
	case w.closing.Load():
		w.why = "the host was closed"
	case hung != "":
		w.why, w.killed = hung, true
	case !exited:
		w.why = fmt.Sprintf("killed, but not yet exited after %v", reapWithin)
	case status.Signaled() && status.Signal() == syscall.SIGSYS:
		// Its seccomp filter (jail.go): a syscall a worker never makes.
		w.why = fmt.Sprintf("worker %d %s", w.pid, seccompKill(w.pid))
	case status.Signaled() && status.Signal() == syscall.SIGKILL && w.oom:
		w.why = fmt.Sprintf("worker %d killed by the OOM killer at its cgroup's memory limit", w.pid)
	case failure != nil:
		w.why = fmt.Sprintf("%v (control socket: %v)", waitErr, failure)
	case waitErr != nil:
		w.why = waitErr.Error()
	default:
		w.why = "exit status 0"
	}
	w.h.drop(w)
	w.mu.Lock()
	n := len(w.vms)
	w.mu.Unlock()
	if w.closing.Load() || w.killed {
		w.h.log.Debug("vmhost: worker ended", "pid", w.pid, "vms", n, "why", w.why)
	} else {
		w.h.log.Error("vmhost: worker exited; its VMs are gone", "pid", w.pid, "vms", n, "why", w.why)
	}
	w.unmapStats()
	close(w.dead)
}

// unmapStats lets the stats memory go once nothing can write it.
func (w *worker) unmapStats() {
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	if w.statsMem != nil {
		unix.Munmap(w.statsMem)
		w.statsMem = nil
	}
}

func (w *worker) dispatch(m message) {
	if m.typ == mHello {
		select {
		case <-w.hello:
		default:
			w.jailErr = string(m.body)
			close(w.hello)
		}
		return
	}
	if m.typ == mPong {
		w.pong.Store(m.tag)
		return
	}
	if m.typ == mStats {
		w.mu.Lock()
		ch := w.stats[m.tag]
		delete(w.stats, m.tag)
		w.mu.Unlock()
		if ch != nil {
			s, ok := decodeStats(m.body)
			ch <- statsReply{s, ok}
		}
		return
	}
	w.mu.Lock()
	v := w.vms[m.id]
	w.mu.Unlock()
	if v == nil {
		return
	}
	switch m.typ {
	case mBooted:
		v.shared.Store(m.tag == 1)
		select {
		case v.booted <- decodeErr(m.body):
		default:
		}
	case mSnapshot, mFirstWait, mResult:
		// At most one of each per VM: the queue never fills, and the
		// reader must never wait on one VM.
		select {
		case v.events <- m:
		default:
			w.h.log.Error("vmhost: a worker sent more events than a VM has", "pid", w.pid, "type", m.typ)
		}
	case mStdin:
		v.startStdin()
	case mClosed:
		if s, ok := decodeStats(m.body); ok {
			v.setLast(s)
		}
		select {
		case <-v.freed:
		default:
			close(v.freed)
			w.putSlot(v.slot) // once: a repeated closed message must not free it twice
		}
	}
}

// gone is how a VM on a dead worker ended.
func (w *worker) gone() (*vmm.Result, error) {
	msg := "the VM's host process exited: " + w.why
	if w.killed {
		msg = w.why // "worker N stopped answering for Xs: killed"
	}
	return &vmm.Result{Reason: vmm.ReasonInternal, Status: -1, Message: msg}, fmt.Errorf("%w: %s", ErrWorker, msg)
}

func (w *worker) isDead() bool {
	select {
	case <-w.dead:
		return true
	default:
		return false
	}
}

// setupJail decides whether workers are jailed and finds their cgroups.
func (h *Host) setupJail(cfg Config) error {
	if cfg.NoJail {
		h.log.Warn("vmhost: the worker jail is OFF (--no-jail): VM workers run as this agent's user, with its environment, namespaces and cgroup and no seccomp filter; a guest that escapes into its VMM owns this host. For debugging only")
		return nil
	}
	if err := checkJailable(); err != nil {
		return err
	}
	h.jail, h.uid, h.gid = true, cfg.JailUID, cfg.JailGID
	if h.uid <= 0 {
		h.uid = DefaultJailID
	}
	if h.gid <= 0 {
		h.gid = DefaultJailID
	}
	self, _ := os.ReadFile("/proc/self/cgroup")
	cg, err := findCgroups("/sys/fs/cgroup", self)
	if err != nil {
		h.log.Error("vmhost: VM workers get NO cgroup (no memory, pids or CPU limit); the rest of their jail holds", "why", err)
	} else {
		cg.sweep()
		h.cg = cg
	}
	what := "none"
	if h.cg != nil {
		what = h.cg.what
	}
	h.log.Info("vmhost: VM workers are jailed", "uid", h.uid, "gid", h.gid, "cgroups", what)
	return nil
}

// resize charges (negative: uncharges) a VM to the worker's cgroup.
func (w *worker) resize(bytes int64, vms int) {
	if w.cg == nil {
		return
	}
	if err := w.cg.resize(bytes, vms); err != nil && !w.isDead() {
		w.h.log.Warn("vmhost: a worker's cgroup limits", "pid", w.pid, "err", err)
	}
}
