package vmhost

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// VM is a VM held by a worker process. It behaves as *vmm.VM: Run once,
// Stats at any time, Close to free it. Its methods are safe for concurrent
// use.
type VM struct {
	h    *Host
	w    *worker
	id   uint64
	slot int // its counters in w.statsMem; -1: none (Stats asks)
	// shared: the worker said its VM keeps its counters in slot.
	shared atomic.Bool

	onSnapshot  func(error)
	onFirstWait func()
	charge      int64 // what it adds to its worker's cgroup memory limit

	// The snapshot the worker writes into snapTmp, renamed to snapPath
	// when it says it wrote it; removed if it never does.
	snapMu            sync.Mutex // guards snapTmp
	snapTmp, snapPath string

	booted chan error     // the worker's answer to the boot
	events chan message   // mSnapshot, mFirstWait, mResult in the worker's order
	freed  chan struct{}  // closed when the worker freed the VM
	pumps  sync.WaitGroup // stdout/stderr copies to the caller's writers
	outs   []*os.File     // their pipes' read ends, until the pumps start
	stdinR io.Reader      // the caller's stdin when it is not a file
	stdinW *os.File       // … and the pipe it is copied into

	mu         sync.Mutex // guards the fields below
	ran        bool
	closed     bool
	running    chan struct{} // closed when a Run in progress returns
	last       vmm.Stats     // the latest counters seen (final once freed)
	stdinState int           // 0: not started, 1: copying, 2: closed
}

// boot asks w for a VM. The image goes in a memfd, the streams as
// descriptors (a caller's *os.File directly; anything else through a pipe
// this side copies), the configuration as JSON.
func (w *worker) boot(id uint64, cfg vmm.Config, restore string) (*VM, error) {
	v := &VM{h: w.h, w: w, id: id, onSnapshot: cfg.OnSnapshot, onFirstWait: cfg.OnFirstWait,
		booted: make(chan error, 1), events: make(chan message, 8), freed: make(chan struct{}), slot: w.takeSlot()}
	bm := bootMsg{Args: cfg.Args, Env: cfg.Env, MemSize: cfg.MemSize, Hostname: cfg.Hostname,
		TraceSyscalls: cfg.TraceSyscalls, PortIO: cfg.PortIO, SnapshotPath: cfg.SnapshotPath,
		OnSnapshot: cfg.OnSnapshot != nil, OnFirstWait: cfg.OnFirstWait != nil, Restore: restore,
		StatsSlot: v.slot, Image: -1, Stdin: -1, Stdout: -1, Stderr: -1, RestoreFile: -1, SnapshotOut: -1}

	var fds []int         // sent, then closed: each a dup of ours or the worker's end of a pipe
	var theirs []*os.File // the worker's ends of our pipes, closed once sent
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		for _, f := range theirs {
			f.Close()
		}
	}()
	fail := func(err error) (*VM, error) {
		v.releaseStreams()
		v.dropSnapshotTmp()
		if v.charge != 0 {
			w.resize(-v.charge, -1)
		}
		// The worker never holds a VM it did not boot: its slot is free.
		w.putSlot(v.slot)
		return nil, err
	}
	add := func(f *os.File) (int, error) {
		fd, err := dupFile(f)
		if err != nil {
			return -1, fmt.Errorf("%w: passing a stream: %w", ErrWorker, err)
		}
		fds = append(fds, fd)
		return len(fds) - 1, nil
	}
	var err error
	if f, ok := cfg.Stdin.(*os.File); ok && f != nil {
		if bm.Stdin, err = add(f); err != nil {
			return fail(err)
		}
	} else if cfg.Stdin != nil {
		r, pw, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("%w: %w", ErrWorker, err))
		}
		theirs, v.stdinR, v.stdinW = append(theirs, r), cfg.Stdin, pw
		if bm.Stdin, err = add(r); err != nil {
			return fail(err)
		}
		bm.StdinNotify = true
	}
	out := func(wr io.Writer, idx *int) error {
		if f, ok := wr.(*os.File); ok && f != nil {
			*idx, err = add(f)
			return err
		}
		if wr == nil {
			return nil
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrWorker, err)
		}
		theirs = append(theirs, pw)
		v.outs = append(v.outs, pr)
		v.pumps.Add(1)
		go v.pump(pr, wr)
		*idx, err = add(pw)
		return err
	}
	if err := out(cfg.Stdout, &bm.Stdout); err != nil {
		return fail(err)
	}
	if err := out(cfg.Stderr, &bm.Stderr); err != nil {
		return fail(err)
	}

	// Files by descriptor, never by path: a jailed worker has none.
	if restore != "" {
		f := (*os.File)(nil)
		if cfg.Snapshot != nil {
			f = cfg.Snapshot.File()
		} else {
			// A path alone (Host.boot's tests): opened here, not there.
			if f, err = os.Open(restore); err != nil {
				return fail(fmt.Errorf("%w: %w", vmm.ErrSnapshot, err))
			}
			defer f.Close()
		}
		if bm.RestoreFile, err = add(f); err != nil {
			return fail(err)
		}
	}
	if cfg.SnapshotPath != "" {
		// Beside its final name, renamed there once the worker wrote it
		// (VM.event), as vmm's own writer does. Failing here, the worker
		// is sent none: the VM's attempt fails and OnSnapshot says why.
		if tmp, err := os.CreateTemp(filepath.Dir(cfg.SnapshotPath), ".snap-*"); err == nil {
			theirs = append(theirs, tmp)
			v.snapTmp, v.snapPath = tmp.Name(), cfg.SnapshotPath
			if bm.SnapshotOut, err = add(tmp); err != nil {
				return fail(err)
			}
		}
	}

	// A restore needs no images: the snapshot holds the guest.
	var parts [][]byte
	if restore == "" {
		bm.KernelLen, bm.ProgramLen = len(cfg.Kernel), len(cfg.Program)
		parts = [][]byte{cfg.Kernel, cfg.Program}
		bm.Image = len(fds)
	}
	js, err := json.Marshal(&bm)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", vmm.ErrConfig, err))
	}
	body := append([]byte{bootInline}, js...)
	if len(js) > inlineMax {
		// Arguments and environment may take up to 256 KiB: too much for
		// one control message, so they open the memfd instead.
		bm.Image = len(fds)
		if js, err = json.Marshal(&bm); err != nil {
			return fail(fmt.Errorf("%w: %w", vmm.ErrConfig, err))
		}
		parts = append([][]byte{js}, parts...)
		body = binary.LittleEndian.AppendUint32([]byte{bootInImage}, uint32(len(js)))
	}
	if parts != nil {
		img, err := memfd(parts...)
		if err != nil {
			return fail(fmt.Errorf("%w: %w", ErrWorker, err))
		}
		theirs = append(theirs, img)
		if _, err := add(img); err != nil {
			return fail(err)
		}
	}

	// Its cgroup's memory limit grows before the VM exists.
	v.charge = vmCharge(cfg)
	w.resize(v.charge, 1)
	w.mu.Lock()
	w.vms[id] = v
	w.mu.Unlock()
	if err := w.send(mBoot, id, 0, body, fds...); err != nil {
		w.forget(id)
		return fail(fmt.Errorf("%w: sending the boot: %w", ErrWorker, err))
	}
	// The worker holds its own copies now; ours must go for EOF to work.
	for _, fd := range fds {
		unix.Close(fd)
	}
	for _, f := range theirs {
		f.Close()
	}
	fds, theirs = nil, nil
	err, ok := await(w, v.booted, w.h.workWithin, KillBoot)
	if !ok {
		_, err = w.gone()
	}
	if err != nil {
		w.forget(id)
		return fail(err)
	}
	return v, nil
}

// dupFile duplicates f's descriptor without f.Fd, which would switch a
// pipe the caller shares with the worker to blocking mode.
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) {
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return -1, cerr
	}
	return nfd, err
}

func (w *worker) forget(id uint64) {
	w.mu.Lock()
	delete(w.vms, id)
	w.mu.Unlock()
}

// pump copies a worker's output to the caller's writer until the worker
// closes its end (the VM's Run ended, it was freed or the worker died).
func (v *VM) pump(r *os.File, dst io.Writer) {
	defer v.pumps.Done()
	defer r.Close()
	if _, err := io.Copy(dst, r); err != nil {
		// The writer failed: keep draining so the guest is not stuck.
		io.Copy(io.Discard, r)
	}
}

// releaseStreams ends this side's streams of a VM that did not boot.
func (v *VM) releaseStreams() {
	v.stopStdin()
	for _, r := range v.outs {
		r.Close() // the pump sees an error and ends
	}
	v.pumps.Wait()
}

// startStdin copies the caller's reader into the VM's stdin pipe from the
// guest's first read on.
func (v *VM) startStdin() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stdinW == nil || v.stdinState != 0 {
		return
	}
	v.stdinState = 1
	go func() {
		io.Copy(v.stdinW, v.stdinR)
		v.stopStdin()
	}()
}

// stopStdin closes the stdin pipe: EOF for the guest, or the end of a
// copy into a VM that is gone.
func (v *VM) stopStdin() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stdinW != nil && v.stdinState != 2 {
		v.stdinState = 2
		v.stdinW.Close()
	}
}

func (v *VM) setLast(s vmm.Stats) {
	v.mu.Lock()
	v.last = s
	v.mu.Unlock()
}

func (v *VM) lastStats() vmm.Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last
}

// Run runs the guest until it ends or ctx is done, as (*vmm.VM).Run: the
// error is nil when the program decided the outcome, wraps vmm.ErrTimeout
// when ctx ended first (the worker cancels the VM's run), vmm.ErrGuest for
// other ends, and ErrWorker when the worker process died under it. The
// VM's callbacks run here, in the worker's order, and hold the guest until
// they return. Run returns once all the guest's stdout and stderr reached
// the caller's writers.
func (v *VM) Run(ctx context.Context) (*vmm.Result, error) {
	v.mu.Lock()
	if v.closed || v.ran {
		v.mu.Unlock()
		return nil, fmt.Errorf("%w: Run on a VM that already ran or was closed", vmm.ErrConfig)
	}
	v.ran = true
	running := make(chan struct{})
	v.running = running
	v.mu.Unlock()
	defer close(running)

	v.w.send(mRun, v.id, 0, nil) // on failure the worker is dying: wait sees it
	stop := context.AfterFunc(ctx, func() { v.w.send(mCancel, v.id, 0, nil) })
	r, err := v.wait(ctx)
	stop()
	v.pumps.Wait()
	v.setLast(r.Stats)
	return r, err
}

// wait serves the VM's callbacks until its result, or the worker's death.
// Once ctx is done (the worker was asked to cancel the Run), the worker
// must say something of the VM within WorkWithin, or it is killed.
func (v *VM) wait(ctx context.Context) (*vmm.Result, error) {
	canceled := ctx.Done()
	var deadline <-chan time.Time
	var t *time.Timer
	var since time.Time
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		select {
		case m := <-v.events:
			if r, err, ok := v.event(m); ok {
				return r, err
			}
			if t != nil {
				// It answered: the deadline starts again from now (the
				// callback just served ran on the agent's time).
				t.Reset(v.w.h.workWithin)
				since = time.Now()
			}
		case <-canceled:
			canceled = nil
			since = time.Now()
			t = time.NewTimer(v.w.h.workWithin)
			deadline = t.C
		case <-deadline:
			deadline = nil
			v.w.kill(KillCancel, time.Since(since))
		case <-v.w.dead:
			// Everything the worker sent is queued by now.
			for {
				select {
				case m := <-v.events:
					if r, err, ok := v.event(m); ok {
						return r, err
					}
				default:
					r, err := v.w.gone()
					r.Stats = v.lastStats()
					return r, err
				}
			}
		}
	}
}

func (v *VM) event(m message) (*vmm.Result, error, bool) {
	switch m.typ {
	case mSnapshot:
		err := v.placeSnapshot(decodeErr(m.body))
		if v.onSnapshot != nil {
			v.onSnapshot(err)
		}
		v.w.send(mAck, v.id, 0, nil)
	case mFirstWait:
		if v.onFirstWait != nil {
			v.onFirstWait()
		}
		v.w.send(mAck, v.id, 0, nil)
	case mResult:
		var rm resultMsg
		if err := json.Unmarshal(m.body, &rm); err != nil || rm.Result == nil {
			msg := fmt.Sprintf("vmhost: the worker sent an unreadable result (%v)", err)
			return &vmm.Result{Reason: vmm.ReasonInternal, Status: -1, Message: msg}, fmt.Errorf("%w: %s", ErrWorker, msg), true
		}
		return rm.Result, rm.Err.err(), true
	}
	return nil, nil, false
}

// Stats returns the VM's counters: one small request to its worker; the
// last ones seen once the VM is freed or its worker is gone.
func (v *VM) Stats() vmm.Stats {
	w := v.w
	v.mu.Lock()
	closed := v.closed
	if !closed && v.slot >= 0 && v.shared.Load() && !w.isDead() {
		// Under v.mu: Close marks the VM closed before its slot can be
		// freed and handed to another VM.
		if s, ok := w.readSlot(v.slot); ok {
			v.last = s
			v.mu.Unlock()
			return s
		}
	}
	v.mu.Unlock()
	if closed || w.isDead() {
		return v.lastStats()
	}
	ch := make(chan statsReply, 1)
	w.mu.Lock()
	w.tag++
	tag := w.tag
	w.stats[tag] = ch
	w.mu.Unlock()
	if w.send(mStats, v.id, tag, nil) == nil {
		if r, ok := await(w, ch, w.h.answerWithin, KillStats); ok && r.ok {
			v.setLast(r.s)
			return r.s
		}
	}
	w.mu.Lock()
	delete(w.stats, tag)
	w.mu.Unlock()
	return v.lastStats()
}

type statsReply struct {
	s  vmm.Stats
	ok bool // false: the worker no longer holds the VM
}

// Close frees the VM in its worker, stopping a Run in progress first
// (which then reports vmm.ReasonTimeout), and returns once the worker freed
// it and every byte of its output was delivered. It is safe to call more
// than once.
func (v *VM) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	running := v.running
	v.mu.Unlock()
	w := v.w
	if w.send(mClose, v.id, 0, nil) == nil {
		await(w, v.freed, w.h.workWithin, KillClose)
	} else {
		<-w.dead
	}
	v.stopStdin()
	if running != nil {
		<-running
	}
	v.pumps.Wait()
	v.dropSnapshotTmp()
	w.forget(v.id)
	w.resize(-v.charge, -1)
	v.h.unload(w)
	return nil
}

// placeSnapshot puts the snapshot the worker wrote (err: how that went)
// at its path, as vmm does when it writes one itself: before OnSnapshot
// hears of it.
func (v *VM) placeSnapshot(err error) error {
	v.snapMu.Lock()
	defer v.snapMu.Unlock()
	if v.snapTmp == "" {
		return err
	}
	tmp := v.snapTmp
	v.snapTmp = ""
	if err == nil {
		err = os.Rename(tmp, v.snapPath)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// dropSnapshotTmp removes the file a VM that never snapshotted was given.
func (v *VM) dropSnapshotTmp() {
	v.snapMu.Lock()
	defer v.snapMu.Unlock()
	if v.snapTmp != "" {
		os.Remove(v.snapTmp)
		v.snapTmp = ""
	}
}
