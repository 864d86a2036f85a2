package vmhost

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// workerArg, as its only argument, marks a process a Host started as a
// worker; its control socket is fd 3. It is spelled as a flag on purpose:
// a binary that lacks the hook and parses flags (every Go test binary
// does) stops at once on it instead of running as itself.
const workerArg = "-kiln-vmhost-worker"

// statsEnv says the stats memory is fd 4.
const statsEnv = "KILN_VMHOST_STATS_FD"

// snapIdle is how long a worker keeps a snapshot no VM uses.
const snapIdle = time.Minute

// machine is what a worker runs: *vmm.VM, or a test's stand-in.
type machine interface {
	Run(ctx context.Context) (*vmm.Result, error)
	Stats() vmm.Stats
	Close() error
}

// newMachine creates a worker's VMs. Only tests replace it (from the test
// binary, which is also their worker's executable).
var newMachine = func(cfg vmm.Config) (machine, error) {
	vm, err := vmm.New(cfg)
	if err != nil {
		return nil, err
	}
	return vm, nil
}

// IsWorker reports whether a Host started this process as a VM worker.
// Every executable a Host may run (the agent's own, /proc/self/exe) asks
// first thing in main, and every test binary whose tests start VMs
// through a Host asks in its TestMain:
//
//	if vmhost.IsWorker() {
//		os.Exit(vmhost.RunWorker())
//	}
func IsWorker() bool { return len(os.Args) == 2 && os.Args[1] == workerArg }

// RunWorker runs the worker loop until the control socket closes (the
// agent exited or closed the Host) and returns the process's exit status;
// the VMs end with the process. It is for a process IsWorker says a Host
// started; any other gets status 2.
func RunWorker() int {
	if !IsWorker() {
		fmt.Fprintf(os.Stderr, "vmhost: RunWorker in a process not started as a worker (its arguments are not %q)\n", workerArg)
		return 2
	}
	stats := mapStats()
	// The jail (jail.go) before anything is served: the first message
	// goes out from inside it.
	var jailErr error
	if spec, ok := os.LookupEnv(jailEnv); ok {
		os.Unsetenv(jailEnv)
		jailErr = enterJail(spec)
	}
	return serveWorker(os.NewFile(3, "vmhost-control"), stats, jailErr)
}

// serveWorker serves the agent on ctl. jailErr, when set, is why the
// worker could not enter its jail: it says so instead and ends.
func serveWorker(ctl *os.File, stats []byte, jailErr error) int {
	c, err := newConn(ctl)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmhost worker:", err)
		return 2
	}
	if jailErr != nil {
		c.send(mHello, 0, 0, []byte(clip(jailErr.Error())))
		return 3
	}
	// The first message says the hook ran: until it, the agent holds
	// its Boot (awaitHello).
	if err := c.send(mHello, 0, 0, nil); err != nil {
		fmt.Fprintln(os.Stderr, "vmhost worker:", err)
		return 2
	}
	defer c.close()
	w := &workerLoop{c: c, vms: map[uint64]*hostedVM{}, snaps: newSnapCache(vmm.OpenSnapshotFile, snapIdle), stats: stats}
	// Stopped on return, so that a loop served in-process (the fuzz test)
	// leaves nothing behind.
	sweep := time.NewTicker(snapIdle / 4)
	defer sweep.Stop()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-sweep.C:
				w.snaps.sweep()
			case <-stop:
				return
			}
		}
	}()
	for {
		m, err := c.recv()
		if errors.Is(err, errMalformed) {
			// Dropped (recv closed its descriptors): one bad packet must
			// not take down every VM of the worker.
			fmt.Fprintln(os.Stderr, "vmhost worker: dropped:", err)
			continue
		}
		if err != nil {
			if errors.Is(err, errEOF) || errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintln(os.Stderr, "vmhost worker:", err)
			return 2
		}
		w.handle(m)
	}
}

type workerLoop struct {
	c     *conn
	snaps *snapCache[*vmm.Snapshot]
	stats []byte // the memory shared with the agent for VMs' counters; nil: none

	mu  sync.Mutex // guards vms
	vms map[uint64]*hostedVM
}

// hostedVM is one VM in a worker.
type hostedVM struct {
	id        uint64
	acks      chan struct{} // the agent ran a callback
	closing   chan struct{} // closed when the agent asked to close it: stop waiting for acks
	closeOnce sync.Once

	mu      sync.Mutex         // guards the fields below
	m       machine            // nil until booted
	files   []*os.File         // its stdin/stdout/stderr, closed when it can no longer use them
	release func()             // its snapshot's cache reference, if restored
	cancel  context.CancelFunc // ends the Run in progress
	runDone chan struct{}      // closed once Run's result is sent
}

func (v *hostedVM) machine() machine {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.m
}

func (w *workerLoop) get(id uint64) *hostedVM {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.vms[id]
}

// forget drops v from the worker's VMs, unless its id is already another's.
func (w *workerLoop) forget(v *hostedVM) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.vms[v.id] == v {
		delete(w.vms, v.id)
	}
}

// handle acts on one message from the agent. What is not the agent's
// protocol is answered with an error when the agent would otherwise wait
// (a boot of an id in use, a Run before the boot) and ignored otherwise
// (an unknown type, a W→A type, an id no VM has, an ack nothing waits
// for, a second Run or Close); descriptors nobody takes are closed.
func (w *workerLoop) handle(m message) {
	if m.typ == mBoot {
		v := &hostedVM{id: m.id, acks: make(chan struct{}, 1), closing: make(chan struct{})}
		w.mu.Lock()
		_, dup := w.vms[m.id]
		if !dup {
			w.vms[m.id] = v
		}
		w.mu.Unlock()
		if dup {
			// Replacing it would lose the VM holding the id, never closed.
			m.closeFDs()
			w.c.send(mBooted, m.id, 0, encodeErr(fmt.Errorf("%w: vmhost: a boot of VM %d, which exists", vmm.ErrConfig, m.id)))
			return
		}
		go w.boot(v, m)
		return
	}
	m.closeFDs()
	if m.typ == mPing {
		// Answered here, by the reader itself: while the process runs
		// and reads its socket, the agent's watchdog hears back, however
		// busy its VMs are.
		w.c.send(mPong, 0, m.tag, nil)
		return
	}
	v := w.get(m.id)
	if v == nil {
		// A VM already freed: a late cancel or ack, or a Stats racing
		// Close, which must still hear back.
		if m.typ == mStats {
			w.c.send(mStats, m.id, m.tag, nil)
		}
		return
	}
	switch m.typ {
	case mRun:
		v.mu.Lock()
		switch {
		case v.closed():
			// Closing: its files are going or gone. Close answers the agent.
		case v.m != nil && v.runDone == nil:
			ctx, cancel := context.WithCancel(context.Background())
			v.cancel, v.runDone = cancel, make(chan struct{})
			go w.run(ctx, v, v.m, cancel, v.runDone)
		case v.runDone == nil:
			// Not the agent's protocol; answer rather than leave Run waiting.
			w.c.send(mResult, v.id, 0, encodeResult(nil, fmt.Errorf("%w: vmhost: Run before the VM booted", vmm.ErrConfig)))
		}
		v.mu.Unlock()
	case mCancel:
		v.mu.Lock()
		if v.cancel != nil {
			v.cancel()
		}
		v.mu.Unlock()
	case mClose:
		go w.close(v)
	case mStats:
		var s vmm.Stats
		if mach := v.machine(); mach != nil {
			s = mach.Stats()
		}
		w.c.send(mStats, v.id, m.tag, encodeStats(s))
	case mAck:
		select {
		case v.acks <- struct{}{}:
		default:
		}
	}
}

// boot builds the vmm.Config the agent described and creates the VM.
func (w *workerLoop) boot(v *hostedVM, m message) {
	shared, err := w.create(v, &m)
	m.closeFDs()
	if err != nil {
		v.closeFiles()
		w.forget(v)
	}
	var tag uint64 // 1: its counters are in its stats slot
	if shared {
		tag = 1
	}
	w.c.send(mBooted, v.id, tag, encodeErr(err))
}

func (w *workerLoop) create(v *hostedVM, m *message) (shared bool, err error) {
	takeNamed := func(i int, name string) *os.File {
		if i < 0 || i >= len(m.fds) || m.fds[i] < 0 {
			return nil
		}
		f := os.NewFile(uintptr(m.fds[i]), name)
		m.fds[i] = -1
		return f
	}
	take := func(i int) *os.File { return takeNamed(i, fmt.Sprintf("vm%d-fd%d", v.id, i)) }
	if len(m.body) < 1 {
		return false, fmt.Errorf("%w: vmhost: empty boot message", vmm.ErrConfig)
	}
	var bm bootMsg
	var image *os.File
	var off int64
	switch m.body[0] {
	case bootInline:
		if err := json.Unmarshal(m.body[1:], &bm); err != nil {
			return false, fmt.Errorf("%w: vmhost: boot message: %w", vmm.ErrConfig, err)
		}
		image = take(bm.Image)
	case bootInImage:
		// The configuration opens the memfd, which is the last descriptor.
		if len(m.body) != 5 || len(m.fds) == 0 {
			return false, fmt.Errorf("%w: vmhost: bad boot message", vmm.ErrConfig)
		}
		n := int64(binary.LittleEndian.Uint32(m.body[1:]))
		image = take(len(m.fds) - 1)
		if image == nil {
			return false, fmt.Errorf("%w: vmhost: boot message without its memfd", vmm.ErrConfig)
		}
		// Allocate no more than the memfd holds (n is the sender's word).
		if n > imageSize(image) {
			image.Close()
			return false, fmt.Errorf("%w: vmhost: a %d-byte configuration in a %d-byte image", vmm.ErrConfig, n, imageSize(image))
		}
		b := make([]byte, n)
		if _, err := image.ReadAt(b, 0); err != nil {
			image.Close()
			return false, fmt.Errorf("%w: vmhost: reading the configuration: %w", vmm.ErrConfig, err)
		}
		if err := json.Unmarshal(b, &bm); err != nil {
			image.Close()
			return false, fmt.Errorf("%w: vmhost: boot message: %w", vmm.ErrConfig, err)
		}
		off = n
	default:
		return false, fmt.Errorf("%w: vmhost: unknown boot encoding %d", vmm.ErrConfig, m.body[0])
	}
	cfg := vmm.Config{Args: bm.Args, Env: bm.Env, MemSize: bm.MemSize, Hostname: bm.Hostname,
		TraceSyscalls: bm.TraceSyscalls, PortIO: bm.PortIO, SnapshotPath: bm.SnapshotPath}
	if s := bm.StatsSlot; s >= 0 && s < len(w.stats)/vmm.StatsSize {
		cfg.StatsPage = w.stats[s*vmm.StatsSize : (s+1)*vmm.StatsSize]
	}
	if image != nil {
		// Lengths within what the memfd holds past off, so that a bad
		// one fails here instead of allocating (or panicking on) its size.
		if size := imageSize(image); bm.KernelLen < 0 || bm.ProgramLen < 0 ||
			int64(bm.KernelLen) > size-off || int64(bm.ProgramLen) > size-off-int64(bm.KernelLen) {
			image.Close()
			return false, fmt.Errorf("%w: vmhost: image lengths %d, %d at %d in a %d-byte image", vmm.ErrConfig, bm.KernelLen, bm.ProgramLen, off, size)
		}
		cfg.Kernel = make([]byte, bm.KernelLen)
		cfg.Program = make([]byte, bm.ProgramLen)
		_, err := image.ReadAt(cfg.Kernel, off)
		if err == nil {
			_, err = image.ReadAt(cfg.Program, off+int64(bm.KernelLen))
		}
		image.Close()
		if err != nil {
			return false, fmt.Errorf("%w: vmhost: reading the images: %w", vmm.ErrConfig, err)
		}
	}
	keep := func(f *os.File) {
		v.mu.Lock()
		v.files = append(v.files, f)
		v.mu.Unlock()
	}
	if f := take(bm.Stdin); f != nil {
		keep(f)
		cfg.Stdin = f
		if bm.StdinNotify {
			cfg.Stdin = &notifyReader{f: f, first: func() { w.c.send(mStdin, v.id, 0, nil) }}
		}
	}
	if f := take(bm.Stdout); f != nil {
		keep(f)
		cfg.Stdout = f
	}
	if f := take(bm.Stderr); f != nil {
		keep(f)
		cfg.Stderr = f
	}
	if f := take(bm.SnapshotOut); f != nil {
		// Written by the VM when it snapshots (and closed then), or never:
		// closed with the streams either way.
		keep(f)
		cfg.SnapshotFile = f
	}
	if bm.OnSnapshot {
		cfg.OnSnapshot = func(err error) { w.callback(v, mSnapshot, encodeErr(err)) }
	}
	if bm.OnFirstWait {
		cfg.OnFirstWait = func() { w.callback(v, mFirstWait, nil) }
	}
	var release func()
	if bm.Restore != "" {
		f := takeNamed(bm.RestoreFile, bm.Restore) // errors name the agent's path
		if f == nil {
			return false, fmt.Errorf("%w: vmhost: a restore of %s without its file", vmm.ErrSnapshot, bm.Restore)
		}
		snap, rel, err := w.snaps.get(bm.Restore, f)
		if err != nil {
			if !errors.Is(err, vmm.ErrSnapshot) {
				err = fmt.Errorf("%w: %w", vmm.ErrSnapshot, err)
			}
			return false, err
		}
		cfg.Snapshot, release = snap, rel
		defer func() {
			if v.machine() == nil {
				release()
			}
		}()
	}
	mach, err := newMachine(cfg)
	if err != nil {
		return false, err
	}
	v.mu.Lock()
	if v.closed() {
		// Closed while it booted: close has already looked for a machine
		// (it closes v.closing first) and found none, so it is ours to end.
		v.mu.Unlock()
		mach.Close()
		return false, fmt.Errorf("%w: vmhost: VM %d closed while it booted", vmm.ErrConfig, v.id)
	}
	v.m, v.release = mach, release
	v.mu.Unlock()
	// Only a real VM keeps its counters in the page (a test's stand-in
	// answers Stats requests instead).
	_, isVM := mach.(*vmm.VM)
	return isVM && cfg.StatsPage != nil, nil
}

// callback tells the agent of a vmm callback and, like the in-process
// callback, lets the guest go on only once the agent's returned (or the
// VM is being closed).
func (w *workerLoop) callback(v *hostedVM, typ byte, body []byte) {
	if w.c.send(typ, v.id, 0, body) != nil {
		return
	}
	select {
	case <-v.acks:
	case <-v.closing:
	}
}

func (w *workerLoop) run(ctx context.Context, v *hostedVM, mach machine, cancel context.CancelFunc, done chan struct{}) {
	r, err := mach.Run(ctx)
	cancel()
	// The guest can no longer read or write: closing our copies lets the
	// agent's pumps see EOF, so its Run returns with all the output.
	v.closeFiles()
	w.c.send(mResult, v.id, 0, encodeResult(r, err))
	close(done)
}

func (w *workerLoop) close(v *hostedVM) {
	first := false
	v.closeOnce.Do(func() { first = true })
	if !first {
		return
	}
	close(v.closing)
	var final vmm.Stats
	if mach := v.machine(); mach != nil {
		mach.Close()
		final = mach.Stats()
	}
	v.mu.Lock()
	done, release := v.runDone, v.release
	v.mu.Unlock()
	if done != nil {
		<-done
	}
	v.closeFiles()
	if release != nil {
		release()
	}
	w.forget(v)
	w.c.send(mClosed, v.id, 0, encodeStats(final))
}

// closed reports whether the agent asked to close v.
func (v *hostedVM) closed() bool {
	select {
	case <-v.closing:
		return true
	default:
		return false
	}
}

// imageSize is the size of an image descriptor; 0 when it has none (a
// pipe, or not a file at all), so that nothing is read from it.
func imageSize(f *os.File) int64 {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return 0
	}
	return st.Size()
}

func (v *hostedVM) closeFiles() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, f := range v.files {
		f.Close()
	}
	v.files = nil
}

// notifyReader is a VM's stdin when the agent feeds it from a plain
// reader: the agent starts copying at the guest's first read, so a VM
// that never reads never consumes its input, as in process.
type notifyReader struct {
	f     *os.File
	once  sync.Once
	first func()
}

func (r *notifyReader) Read(p []byte) (int, error) {
	r.once.Do(r.first)
	return r.f.Read(p)
}

// mapStats maps the stats memory the agent passed as fd 4; nil when it
// passed none (statsEnv unset: fd 4 may then be anything, the runtime's
// own poller included), and VMs then keep their counters to themselves.
func mapStats() []byte {
	if os.Getenv(statsEnv) != "4" {
		return nil
	}
	os.Unsetenv(statsEnv)
	f := os.NewFile(4, "vmhost-stats")
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size <= 0 {
		return nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmhost worker: stats memory:", err)
		return nil
	}
	return mem
}

// memfd makes an anonymous file holding the parts, in order.
func memfd(parts ...[]byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("kiln-vm-image", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "kiln-vm-image")
	for _, p := range parts {
		if _, err := f.Write(p); err != nil {
			f.Close()
			return nil, fmt.Errorf("memfd: %w", err)
		}
	}
	return f, nil
}
