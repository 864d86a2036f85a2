package vmhost

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// The worker's receive/create path (serveWorker, handle, create) fuzzed
// over a real SOCK_SEQPACKET socketpair to a worker loop served in this
// process: sequences of messages of any type, id, tag and body, each with
// descriptors the fuzzer picks (fdKind). FuzzDecode (proto_test.go) covers
// the agent's decoders; this is the other direction.

// fdKind is a descriptor a fuzzed message can carry.
const (
	fdImage   = iota // a memfd: kernel then program (the real ones on a KVM host)
	fdPipeR          // a pipe's read end; its writer stays open until the end
	fdPipeW          // a pipe's write end; nobody reads it
	fdNull           // /dev/null
	fdPipeEOF        // a pipe's read end whose writer is closed
	fdGarbage        // a memfd of a few bytes
	fdDir            // a directory
	fdBlob           // a memfd holding the message's blob
	fdKinds
)

// mSync, as a fuzzMsg's type, is not sent: the sequence waits there for
// every boot sent to be answered, as the agent waits for its boot before
// anything else, and with tag 1 for a result of VM id too (up to 5 s in all).
const mSync byte = 0

// fuzzMsg is one message of a sequence.
type fuzzMsg struct {
	typ, id, tag byte
	fds          []byte // fdKinds
	body, blob   []byte
}

// encodeMsgs is the fuzzer's input for msgs (the inverse of decodeMsgs).
func encodeMsgs(msgs ...fuzzMsg) []byte {
	var b []byte
	for _, m := range msgs {
		b = append(b, m.typ, m.id, m.tag, byte(len(m.fds)))
		b = append(b, m.fds...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(m.body)))
		b = append(b, m.body...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(m.blob)))
		b = append(b, m.blob...)
	}
	return b
}

// encodable: no body or blob of msgs is too long for encodeMsgs.
func encodable(msgs []fuzzMsg) bool {
	for _, m := range msgs {
		if len(m.body) > math.MaxUint16 || len(m.blob) > math.MaxUint16 || len(m.fds) > maxFDs+2 {
			return false
		}
	}
	return true
}

// decodeMsgs reads up to 32 messages; a short field takes what is left.
func decodeMsgs(b []byte) []fuzzMsg {
	next := func(n int) []byte {
		n = min(n, len(b))
		p := b[:n]
		b = b[n:]
		return p
	}
	var msgs []fuzzMsg
	for len(b) >= 4 && len(msgs) < 32 {
		h := next(4)
		m := fuzzMsg{typ: h[0], id: h[1], tag: h[2]}
		for _, k := range next(int(h[3] % (maxFDs + 3))) {
			m.fds = append(m.fds, k%fdKinds)
		}
		l := next(2)
		if len(l) == 2 {
			m.body = next(int(binary.LittleEndian.Uint16(l)))
		}
		if l = next(2); len(l) == 2 {
			m.blob = next(int(binary.LittleEndian.Uint16(l)))
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// fuzzImage is what an fdImage memfd holds, made once per process.
var fuzzImage = sync.OnceValues(func() (img struct {
	kernel, program []byte
	kvm             bool
}, err error) {
	img.kernel, img.program = []byte("stand-in kernel"), []byte("stand-in program")
	if fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		unix.Close(fd)
		k, kerr := os.ReadFile(kvmBuild("kernel/kiln-kernel.elf"))
		p, perr := os.ReadFile(kvmBuild("guests/hello"))
		if kerr == nil && perr == nil {
			img.kernel, img.program, img.kvm = k, p, true
		}
	}
	return img, nil
})

// kvmBuild is a built artifact's path without a testing.TB (fuzzImage is
// shared by every input).
func kvmBuild(rel string) string {
	if d := os.Getenv("KILN_BUILD"); d != "" {
		return d + "/" + rel
	}
	return "../../build/" + rel
}

// fuzzStats is the stats memory of the in-process worker: page-aligned,
// as the shared memory of a real one is.
var fuzzStats = sync.OnceValues(func() ([]byte, error) {
	return unix.Mmap(-1, 0, 4*vmm.StatsSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
})

// countedMachine counts the machines a fuzzed worker creates and closes.
type countedMachine struct {
	machine
	closes *atomic.Int64
	once   sync.Once
}

func (m *countedMachine) Close() error {
	m.once.Do(func() { m.closes.Add(1) })
	return m.machine.Close()
}

// fuzzOutcome is what the agent's end heard back.
type fuzzOutcome struct {
	booted  map[byte][]error // by VM id, in order of arrival
	results map[byte][]resultMsg
	closed  map[byte]int
	pongs   map[byte]int // by tag
	stats   int
	other   []byte // types a worker never sends
}

// runWorkerSequence sends msgs to a worker loop served in-process, then
// closes every VM it named, ends the loop and checks what must hold after
// any sequence: every boot answered once, every ping and stats request
// answered, no VM created from a malformed boot, every VM created closed,
// and no descriptor or goroutine left behind.
func runWorkerSequence(t *testing.T, msgs []fuzzMsg) *fuzzOutcome {
	img, _ := fuzzImage()
	stats, err := fuzzStats()
	if err != nil {
		t.Fatal(err)
	}
	imageFD, err := memfd(img.kernel, img.program)
	if err != nil {
		t.Fatal(err)
	}
	defer imageFD.Close()

	fdsBefore, goBefore := countFDs(t), runtime.NumGoroutine()

	var created, closes atomic.Int64
	real := newMachine
	defer func() { newMachine = real }()
	newMachine = func(cfg vmm.Config) (machine, error) {
		var m machine
		var err error
		switch {
		case strings.HasPrefix(cfg.Hostname, "hang-") || cfg.Hostname == "crash":
			// The stand-in's ways to hang or kill its worker, for other tests.
			err = fmt.Errorf("%w: not in a fuzz run", vmm.ErrConfig)
		case len(cfg.Args) > 0 && cfg.Args[0] == "echo":
			m, err = newEchoVM(cfg)
		case img.kvm:
			m, err = vmm.New(cfg)
		default:
			err = fmt.Errorf("%w: no KVM in this run", vmm.ErrNoKVM)
		}
		if err != nil {
			return nil, err
		}
		created.Add(1)
		return &countedMachine{machine: m, closes: &closes}, nil
	}

	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan int, 1)
	go func() { served <- serveWorker(os.NewFile(uintptr(pair[1]), "worker"), stats, nil) }()
	c, err := newConn(os.NewFile(uintptr(pair[0]), "agent"))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := c.recv(); err != nil || m.typ != mHello || len(m.body) != 0 {
		t.Fatalf("first message: type %d %q, %v; want the hello", m.typ, m.body, err)
	}

	out := &fuzzOutcome{booted: map[byte][]error{}, results: map[byte][]resultMsg{}, closed: map[byte]int{}, pongs: map[byte]int{}}
	var mu sync.Mutex // guards out
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			m, err := c.recv()
			if err != nil {
				return
			}
			m.closeFDs()
			mu.Lock()
			id := byte(m.id)
			switch m.typ {
			case mBooted:
				out.booted[id] = append(out.booted[id], decodeErr(m.body))
			case mResult:
				var r resultMsg
				if err := json.Unmarshal(m.body, &r); err != nil {
					t.Errorf("undecodable result %q: %v", m.body, err)
				}
				out.results[id] = append(out.results[id], r)
			case mClosed:
				out.closed[id]++
			case mPong:
				out.pongs[byte(m.tag)]++
			case mStats:
				out.stats++
			case mSnapshot, mFirstWait, mStdin:
				// Callbacks; the fuzzer's acks (or the final close) free them.
			default:
				out.other = append(out.other, m.typ)
			}
			mu.Unlock()
		}
	}()
	until := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("%s: not within 20 s", what)
			}
		}
	}

	// The descriptors sent are dups; the other ends of pipes stay here
	// until the end, as the agent's would.
	var keep []*os.File
	defer func() {
		for _, f := range keep {
			f.Close()
		}
	}()
	attach := func(kind byte, blob []byte) (int, error) {
		switch kind {
		case fdImage:
			return unix.Dup(int(imageFD.Fd()))
		case fdPipeR, fdPipeW, fdPipeEOF:
			r, w, err := os.Pipe()
			if err != nil {
				return -1, err
			}
			send, other := r, w
			if kind == fdPipeW {
				send, other = w, r
			}
			if kind == fdPipeEOF {
				other.Close()
			} else {
				keep = append(keep, other)
			}
			fd, err := dupFile(send)
			send.Close()
			return fd, err
		case fdNull:
			return unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
		case fdDir:
			return unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
		content := []byte("\x00garbage{")
		if kind == fdBlob {
			content = blob
		}
		f, err := memfd(content)
		if err != nil {
			return -1, err
		}
		fd, err := unix.Dup(int(f.Fd()))
		f.Close()
		return fd, err
	}

	answered := func() int {
		n := 0
		for _, b := range out.booted {
			n += len(b)
		}
		return n
	}
	ids := map[byte]bool{}
	wellFormed := map[byte]int{} // boots each id could have booted from
	boots, pings, statsAsked := 0, map[byte]int{}, 0
	resultWait := 5 * time.Second
	for _, m := range msgs {
		if m.typ == mSync {
			// Not sent: the agent's own pacing. Every boot is answered
			// (a finding if not); a result may never come (not one).
			until("every boot answered", func() bool { return answered() == boots })
			if m.tag == 1 {
				// At most resultWait in all: the fuzzing engine calls an
				// input that takes 10 s a hang.
				wait := min(resultWait, 5*time.Second)
				resultWait -= wait
				for end := time.Now().Add(wait); time.Now().Before(end); time.Sleep(time.Millisecond) {
					mu.Lock()
					n := len(out.results[m.id])
					mu.Unlock()
					if n > 0 {
						break
					}
				}
			}
			continue
		}
		var fds []int
		for _, k := range m.fds {
			fd, err := attach(k, m.blob)
			if err != nil {
				t.Fatalf("descriptor of kind %d: %v", k, err)
			}
			fds = append(fds, fd)
		}
		err := c.send(m.typ, uint64(m.id), uint64(m.tag), m.body, fds...)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil || len(fds) > maxFDs {
			continue // never sent (too long), or dropped by the worker as documented
		}
		ids[m.id] = true
		switch m.typ {
		case mBoot:
			boots++
			if wellFormedBoot(m) {
				wellFormed[m.id]++
			}
		case mPing:
			pings[m.tag]++
		case mStats:
			statsAsked++
		}
	}

	// Every boot answered, then every VM named closed.
	until("every boot answered", func() bool { return answered() == boots })
	for id := range ids {
		if err := c.send(mClose, uint64(id), 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	until("every VM closed", func() bool { return closes.Load() == created.Load() })
	until("pings and stats answered", func() bool {
		for tag, n := range pings {
			if out.pongs[tag] != n {
				return false
			}
		}
		return out.stats == statsAsked
	})
	// Half-closed, as a peer that reads to the end: closing with replies
	// still unread would reset the worker's end (ECONNRESET, status 2).
	c.c.CloseWrite()
	select {
	case code := <-served:
		if code != 0 {
			t.Fatalf("the worker loop ended with status %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the worker loop outlived its control socket")
	}
	<-read
	c.close()

	mu.Lock()
	defer mu.Unlock()
	ok := int64(0)
	for id, errs := range out.booted {
		n := 0
		for _, err := range errs {
			if err == nil {
				n++
			}
		}
		if n > wellFormed[id] {
			t.Errorf("VM %d: %d boots answered as booted, only %d were well formed", id, n, wellFormed[id])
		}
		ok += int64(n)
	}
	wf := 0
	for _, n := range wellFormed {
		wf += n
	}
	if ok > created.Load() || created.Load() > int64(wf) {
		t.Errorf("%d machines created, %d boots answered as booted, %d well formed", created.Load(), ok, wf)
	}
	if len(out.other) > 0 {
		t.Errorf("the worker sent message types %v", out.other)
	}

	// Leaks: what the worker loop had is gone once it returned (the
	// pipes' other ends and the image are ours, closed here first).
	for _, f := range keep {
		f.Close()
	}
	keep = nil
	imageFD.Close()
	fdsBefore--
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		fds, gs := countFDs(t), runtime.NumGoroutine()
		if fds <= fdsBefore && gs <= goBefore {
			break
		}
		if time.Now().After(end) {
			buf := make([]byte, 1<<20)
			t.Fatalf("left behind: %d descriptors (before: %d), %d goroutines (before: %d)\n%s",
				fds, fdsBefore, gs, goBefore, buf[:runtime.Stack(buf, true)])
		}
	}
	return out
}

// wellFormedBoot says whether a worker may boot a VM from m: the test's
// own reading of the boot encoding (bootMsg, vm.go's worker.boot), so
// that a worker reading more into a message than it holds is caught.
func wellFormedBoot(m fuzzMsg) bool {
	img, _ := fuzzImage()
	content := func(i int) ([]byte, bool) {
		switch m.fds[i] {
		case fdImage:
			return append(append([]byte(nil), img.kernel...), img.program...), true
		case fdBlob:
			return m.blob, true
		case fdGarbage:
			return []byte("\x00garbage{"), true
		}
		return nil, false
	}
	if len(m.body) == 0 {
		return false
	}
	var bm bootMsg
	off, image := 0, -1
	switch m.body[0] {
	case bootInline:
		if json.Unmarshal(m.body[1:], &bm) != nil {
			return false
		}
		image = bm.Image
	case bootInImage:
		if len(m.body) != 5 || len(m.fds) == 0 {
			return false
		}
		image = len(m.fds) - 1
		c, ok := content(image)
		n := int(binary.LittleEndian.Uint32(m.body[1:]))
		if !ok || n > len(c) || json.Unmarshal(c[:n], &bm) != nil {
			return false
		}
		off = n
	default:
		return false
	}
	if bm.Restore != "" {
		return false // no descriptor a fuzzed message carries is a snapshot
	}
	if image >= 0 && image < len(m.fds) {
		if bm.KernelLen < 0 || bm.ProgramLen < 0 {
			return false
		}
		if bm.KernelLen > 0 || bm.ProgramLen > 0 {
			c, ok := content(image)
			if !ok || bm.KernelLen > len(c)-off || bm.ProgramLen > len(c)-off-bm.KernelLen {
				return false
			}
		}
	}
	return true
}

func countFDs(t testing.TB) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es) - 1 // the directory's own
}

// bootBody is an inline boot of cfg as the agent encodes it, with its
// image the descriptor at index image (-1: none) of the kernel and
// program lengths given.
func bootBody(bm bootMsg) []byte {
	js, _ := json.Marshal(&bm)
	return append([]byte{bootInline}, js...)
}

// echoBoot is a boot of the stand-in: image at 0, stdin at 1, stdout at 2.
func echoBoot() bootMsg {
	img, _ := fuzzImage()
	return bootMsg{Args: []string{"echo"}, Hostname: "fuzz", StatsSlot: 0, OnFirstWait: true,
		Image: 0, Stdin: 1, Stdout: 2, Stderr: -1, RestoreFile: -1, SnapshotOut: -1,
		KernelLen: len(img.kernel), ProgramLen: len(img.program)}
}

// workerSeed is a sequence with what the agent's end must hear back.
type workerSeed struct {
	name  string
	kvm   bool // needs a real VM
	msgs  func() []fuzzMsg
	check func(t *testing.T, o *fuzzOutcome)
}

func workerSeeds() []workerSeed {
	boot := func(id byte, bm bootMsg, fds ...byte) fuzzMsg {
		return fuzzMsg{typ: mBoot, id: id, fds: fds, body: bootBody(bm)}
	}
	streams := []byte{fdImage, fdPipeEOF, fdPipeW}
	mod := func(f func(*bootMsg)) bootMsg { bm := echoBoot(); f(&bm); return bm }
	inImage := func(bm bootMsg, extra int) fuzzMsg {
		img, _ := fuzzImage()
		bm.Image = 1
		js, _ := json.Marshal(&bm)
		blob := append(append(append([]byte(nil), js...), img.kernel...), img.program...)
		return fuzzMsg{typ: mBoot, id: 2, fds: []byte{fdPipeEOF, fdBlob},
			body: binary.LittleEndian.AppendUint32([]byte{bootInImage}, uint32(len(js)+extra)), blob: blob}
	}
	bootedOK := func(t *testing.T, o *fuzzOutcome, id byte, want ...bool) {
		t.Helper()
		if len(o.booted[id]) != len(want) {
			t.Fatalf("VM %d: boot answers %v, want %d", id, o.booted[id], len(want))
		}
		for i, ok := range want {
			if (o.booted[id][i] == nil) != ok {
				t.Errorf("VM %d boot %d: %v, want booted=%v", id, i, o.booted[id][i], ok)
			}
		}
	}
	malformed := []bootMsg{
		mod(func(b *bootMsg) { b.KernelLen = math.MaxInt }),
		mod(func(b *bootMsg) { b.ProgramLen = math.MaxInt - 3 }),
		mod(func(b *bootMsg) { b.KernelLen = -1 }),
		mod(func(b *bootMsg) { b.ProgramLen++ }),
		mod(func(b *bootMsg) { b.Restore = "/no/such.snap" }),
		mod(func(b *bootMsg) { b.Restore, b.RestoreFile = "x.snap", 1 }), // a pipe for a snapshot
	}
	return []workerSeed{
		{name: "echo-lifecycle", msgs: func() []fuzzMsg {
			return []fuzzMsg{boot(1, echoBoot(), streams...), {typ: mSync}, {typ: mRun, id: 1}, {typ: mAck, id: 1},
				{typ: mStats, id: 1, tag: 9}, {typ: mPing, tag: 3}, {typ: mClose, id: 1}}
		}, check: func(t *testing.T, o *fuzzOutcome) {
			bootedOK(t, o, 1, true)
			if o.closed[1] != 1 || o.pongs[3] != 1 || o.stats != 1 {
				t.Errorf("closed %d, pongs %v, stats %d", o.closed[1], o.pongs, o.stats)
			}
		}},
		{name: "in-image", msgs: func() []fuzzMsg {
			return []fuzzMsg{inImage(mod(func(b *bootMsg) { b.Stdin, b.Stdout = 0, -1 }), 0)}
		}, check: func(t *testing.T, o *fuzzOutcome) { bootedOK(t, o, 2, true) }},
		{name: "in-image-past-its-memfd", msgs: func() []fuzzMsg {
			m := inImage(echoBoot(), 0)
			m.body = binary.LittleEndian.AppendUint32([]byte{bootInImage}, math.MaxUint32)
			return []fuzzMsg{m, {typ: mBoot, id: 2, body: m.body}, {typ: mBoot, id: 2, body: m.body[:3], fds: []byte{fdBlob}}}
		}, check: func(t *testing.T, o *fuzzOutcome) { bootedOK(t, o, 2, false, false, false) }},
		{name: "malformed-boots", msgs: func() []fuzzMsg {
			ms := []fuzzMsg{{typ: mBoot, id: 30}, {typ: mBoot, id: 31, body: []byte{bootInline, '{'}, fds: streams},
				{typ: mBoot, id: 32, body: []byte{7}}}
			for _, bm := range malformed {
				ms = append(ms, boot(byte(30+len(ms)), bm, fdImage, fdPipeR, fdPipeW))
			}
			ms = append(ms, boot(byte(30+len(ms)), echoBoot(), fdNull, fdNull, fdNull),
				boot(byte(31+len(ms)), echoBoot(), fdPipeR, fdDir, fdGarbage))
			return ms
		}, check: func(t *testing.T, o *fuzzOutcome) {
			for id := byte(30); id < 30+11; id++ {
				bootedOK(t, o, id, false)
				if err := o.booted[id][0]; !errors.Is(err, vmm.ErrConfig) && !errors.Is(err, vmm.ErrSnapshot) {
					t.Errorf("a malformed boot's error wraps neither ErrConfig nor ErrSnapshot: %v", err)
				}
			}
		}},
		{name: "stats-slot-out-of-range", msgs: func() []fuzzMsg {
			return []fuzzMsg{boot(4, mod(func(b *bootMsg) { b.StatsSlot = math.MaxInt }), streams...)}
		}, check: func(t *testing.T, o *fuzzOutcome) { bootedOK(t, o, 4, true) }},
		{name: "out-of-order", msgs: func() []fuzzMsg {
			return []fuzzMsg{{typ: mRun, id: 5}, {typ: mSync}, {typ: mAck, id: 5}, {typ: mCancel, id: 5}, {typ: mClose, id: 5},
				{typ: mStats, id: 5, tag: 1}, {typ: 200, id: 5, fds: []byte{fdPipeR}}, {typ: mHello, fds: []byte{fdImage}},
				boot(5, echoBoot(), streams...), {typ: mSync}, {typ: mRun, id: 5}, {typ: mRun, id: 5}, {typ: mAck, id: 5}, {typ: mAck, id: 5},
				{typ: mClose, id: 5}, {typ: mClose, id: 5}, {typ: mRun, id: 5}, {typ: mPing, tag: 5}}
		}, check: func(t *testing.T, o *fuzzOutcome) {
			bootedOK(t, o, 5, true)
			if o.stats != 1 || o.pongs[5] != 1 || o.closed[5] != 1 {
				t.Errorf("stats %d, pongs %v, closed %d", o.stats, o.pongs, o.closed[5])
			}
		}},
		{name: "duplicate-id", msgs: func() []fuzzMsg {
			return []fuzzMsg{boot(6, echoBoot(), streams...), boot(6, echoBoot(), streams...), {typ: mRun, id: 6}}
		}, check: func(t *testing.T, o *fuzzOutcome) {
			// Answered in either order: the second boot's refusal is sent at once.
			n := 0
			for _, err := range o.booted[6] {
				if err == nil {
					n++
				}
			}
			if len(o.booted[6]) != 2 || n != 1 {
				t.Errorf("boots of one id: %v, want one booted and one refused", o.booted[6])
			}
		}},
		{name: "too-many-fds", msgs: func() []fuzzMsg {
			m := boot(7, echoBoot(), streams...)
			for len(m.fds) <= maxFDs {
				m.fds = append(m.fds, fdNull)
			}
			return []fuzzMsg{m, {typ: mPing, tag: 7}}
		}, check: func(t *testing.T, o *fuzzOutcome) {
			if len(o.booted[7]) != 0 || o.pongs[7] != 1 {
				t.Errorf("boots %v, pongs %v: want the boot dropped and the worker still answering", o.booted[7], o.pongs)
			}
		}},
		{name: "close-while-booting", msgs: func() []fuzzMsg {
			var ms []fuzzMsg
			for id := byte(10); id < 20; id++ {
				ms = append(ms, boot(id, echoBoot(), streams...), fuzzMsg{typ: mClose, id: id})
			}
			return ms
		}},
		{name: "kvm-hello", kvm: true, msgs: func() []fuzzMsg {
			bm := mod(func(b *bootMsg) { b.Args, b.OnFirstWait = []string{"hello"}, false })
			return []fuzzMsg{boot(1, bm, streams...), {typ: mSync}, {typ: mRun, id: 1}, {typ: mSync, id: 1, tag: 1}}
		}, check: func(t *testing.T, o *fuzzOutcome) {
			bootedOK(t, o, 1, true)
			if len(o.results[1]) != 1 || o.results[1][0].Err != nil || o.results[1][0].Result.Reason != vmm.ReasonExited {
				for _, r := range o.results[1] {
					t.Errorf("result %+v: %v", r.Result, r.Err.err())
				}
			}
		}},
		{name: "kvm-out-of-range", kvm: true, msgs: func() []fuzzMsg {
			hello := func(f func(*bootMsg)) bootMsg {
				return mod(func(b *bootMsg) { b.Args, b.OnFirstWait = []string{"hello"}, false; f(b) })
			}
			big := inImage(hello(func(b *bootMsg) { b.Env = []string{"X=" + strings.Repeat("x", 300<<10)} }), 0)
			big.id = 3
			return []fuzzMsg{boot(1, hello(func(b *bootMsg) { b.MemSize = 1 << 60 }), streams...),
				boot(2, hello(func(b *bootMsg) { b.MemSize = 3 << 20 }), streams...), big}
		}, check: func(t *testing.T, o *fuzzOutcome) {
			for id := byte(1); id <= 3; id++ {
				bootedOK(t, o, id, false)
			}
			if !errors.Is(o.booted[1][0], vmm.ErrMemSize) || !errors.Is(o.booted[2][0], vmm.ErrMemSize) ||
				!errors.Is(o.booted[3][0], vmm.ErrConfig) {
				t.Errorf("%v %v %v", o.booted[1], o.booted[2], o.booted[3])
			}
		}},
	}
}

// The seeds of FuzzWorkerMessages, each with what it must hear back; the
// kvm ones need /dev/kvm (KILN_REQUIRE_KVM=1: they cannot skip).
func TestWorkerMessages(t *testing.T) {
	for _, s := range workerSeeds() {
		t.Run(s.name, func(t *testing.T) {
			if s.kvm {
				kvmtest.Require(t)
				kvmtest.Artifact(t, "guests/hello")
				if img, _ := fuzzImage(); !img.kvm {
					t.Fatal("KVM seed without the real kernel and program in the image")
				}
			}
			msgs := s.msgs()
			if got := decodeMsgs(encodeMsgs(msgs...)); encodable(msgs) && len(got) != len(msgs) {
				t.Fatalf("the seed encodes %d messages, decodes as %d", len(msgs), len(got))
			}
			o := runWorkerSequence(t, msgs)
			if s.check != nil {
				s.check(t, o)
			}
		})
	}
}

func FuzzWorkerMessages(f *testing.F) {
	for _, s := range workerSeeds() {
		if !s.kvm || func() bool { img, _ := fuzzImage(); return img.kvm }() {
			if msgs := s.msgs(); encodable(msgs) {
				f.Add(encodeMsgs(msgs...))
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		start := time.Now()
		msgs := decodeMsgs(b)
		runWorkerSequence(t, msgs)
		if d := time.Since(start); d > time.Second && os.Getenv("KILN_FUZZ_SLOW") != "" {
			fl, _ := os.OpenFile(os.Getenv("KILN_FUZZ_SLOW"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			for _, m := range msgs {
				fmt.Fprintf(fl, "%v typ %d id %d tag %d fds %v body %.200q\n", d, m.typ, m.id, m.tag, m.fds, m.body)
			}
			fmt.Fprintln(fl, "--")
			fl.Close()
		}
	})
}
