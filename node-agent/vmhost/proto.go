package vmhost

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// The control protocol: one SOCK_SEQPACKET socketpair per worker, so each
// send is one message with its boundaries kept and file descriptors ride
// along as SCM_RIGHTS. Every message is a 17-byte header (type, VM id, tag)
// and a body whose encoding depends on the type: JSON for the rare, rich
// ones (boot, result), fixed binary for the frequent small ones (stats).

// Message types. A→W: agent to worker; W→A: worker to agent.
const (
	mBoot      byte = iota + 1 // A→W: bootMsg (JSON, inline or in the image memfd) + fds
	mRun                       // A→W: start Run
	mCancel                    // A→W: end the Run in progress (its context is done)
	mClose                     // A→W: close the VM; answered by mClosed
	mStats                     // A→W: tag; W→A: tag + Stats (binary)
	mAck                       // A→W: the agent ran the callback the worker waits on
	mBooted                    // W→A: wireErr (empty: booted)
	mSnapshot                  // W→A: OnSnapshot(wireErr); the worker waits for mAck
	mFirstWait                 // W→A: OnFirstWait; the worker waits for mAck
	mStdin                     // W→A: the guest started reading stdin: start feeding its pipe
	mResult                    // W→A: resultMsg (JSON)
	mClosed                    // W→A: the VM is freed; body: its final Stats
	mHello                     // W→A: first, the worker loop runs (RunWorker was called); no VM
	mPing                      // A→W: tag; the watchdog's heartbeat (watchdog.go)
	mPong                      // W→A: tag; the ping answered by the worker's reader itself
)

const (
	headerLen = 17
	// maxMsg bounds a message; a boot configuration larger than
	// inlineMax travels in the image memfd instead.
	maxMsg    = 64 << 10
	inlineMax = 32 << 10
	maxFDs    = 8
)

// message is one decoded packet.
type message struct {
	typ  byte
	id   uint64 // the VM
	tag  uint64 // matches a stats reply to its request
	body []byte
	fds  []int // received descriptors, owned by the receiver
}

// closeFDs closes descriptors a message carried that nobody took.
func (m *message) closeFDs() {
	for _, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	m.fds = nil
}

// conn is one end of a control socket. Sends are serialized; one reader
// goroutine calls recv.
type conn struct {
	c   *net.UnixConn
	wmu sync.Mutex
	buf []byte
	oob []byte
	// sendWithin bounds one send (0: none). The agent's side sets it: a
	// stopped worker stops reading, its socket's buffer fills, and an
	// unbounded send would hold wmu, and every sender behind it, forever.
	sendWithin time.Duration
}

// newConn takes over f, a SOCK_SEQPACKET socket.
func newConn(f *os.File) (*conn, error) {
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, fmt.Errorf("control socket is a %T", fc)
	}
	return &conn{c: uc, buf: make([]byte, maxMsg+1), oob: make([]byte, unix.CmsgSpace(maxFDs*4))}, nil
}

func (c *conn) send(typ byte, id, tag uint64, body []byte, fds ...int) error {
	if headerLen+len(body) > maxMsg {
		return fmt.Errorf("vmhost: a %d-byte control message", headerLen+len(body))
	}
	b := make([]byte, headerLen+len(body))
	b[0] = typ
	binary.LittleEndian.PutUint64(b[1:], id)
	binary.LittleEndian.PutUint64(b[9:], tag)
	copy(b[headerLen:], body)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var end time.Time
	if c.sendWithin > 0 {
		end = time.Now().Add(c.sendWithin)
	}
	for {
		// The peer's queue holds only net.unix.max_dgram_qlen messages
		// (10 by default): a send waits for it to drain, and is tried
		// again every retrySend in case the wake-up never comes.
		try := time.Now().Add(retrySend)
		if !end.IsZero() && try.After(end) {
			try = end
		}
		c.c.SetWriteDeadline(try)
		_, _, err := c.c.WriteMsgUnix(b, oob, nil)
		if !errors.Is(err, os.ErrDeadlineExceeded) || (!end.IsZero() && !time.Now().Before(end)) {
			return err
		}
	}
}

// retrySend is how often a send waiting for room is tried again.
const retrySend = time.Second

// recv reads the next message. Descriptors come in close-on-exec (the Go
// runtime asks for MSG_CMSG_CLOEXEC).
func (c *conn) recv() (message, error) {
	n, oobn, flags, _, err := c.c.ReadMsgUnix(c.buf, c.oob)
	var m message
	if oobn > 0 {
		if cms, perr := unix.ParseSocketControlMessage(c.oob[:oobn]); perr == nil {
			for _, cm := range cms {
				if fds, rerr := unix.ParseUnixRights(&cm); rerr == nil {
					m.fds = append(m.fds, fds...)
				}
			}
		}
	}
	if err != nil {
		m.closeFDs()
		return m, err
	}
	if n == 0 {
		// A zero-length read on a SOCK_SEQPACKET socket is its peer's end.
		m.closeFDs()
		return m, errEOF
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n < headerLen || n > maxMsg {
		m.closeFDs()
		return m, fmt.Errorf("%w (%d bytes, flags %#x)", errMalformed, n, flags)
	}
	m.typ = c.buf[0]
	m.id = binary.LittleEndian.Uint64(c.buf[1:])
	m.tag = binary.LittleEndian.Uint64(c.buf[9:])
	m.body = append([]byte(nil), c.buf[headerLen:n]...)
	return m, nil
}

func (c *conn) close() error { return c.c.Close() }

var errEOF = errors.New("control socket closed by its peer")

// errMalformed: one packet was not a message (too short, too long, or
// more descriptors than maxFDs); the socket itself is still good.
var errMalformed = errors.New("vmhost: malformed control message")

// bootMsg is a vmm.Config without its images, streams and callbacks: the
// images travel in a memfd, the streams as descriptors, and the callbacks
// become W→A messages.
type bootMsg struct {
	Args          []string `json:"args,omitempty"`
	Env           []string `json:"env,omitempty"`
	MemSize       uint64   `json:"mem,omitempty"`
	Hostname      string   `json:"host,omitempty"`
	TraceSyscalls bool     `json:"trace,omitempty"`
	PortIO        bool     `json:"portio,omitempty"`
	SnapshotPath  string   `json:"snap_path,omitempty"`
	OnSnapshot    bool     `json:"on_snap,omitempty"`
	OnFirstWait   bool     `json:"on_wait,omitempty"`
	Restore       string   `json:"restore,omitempty"` // Snapshot.Path(): the worker's cache key
	// RestoreFile: the snapshot to restore, the agent's open file.
	// SnapshotOut: an empty file beside SnapshotPath for the VM to write
	// its snapshot into, which the agent renames into place.
	RestoreFile int `json:"restore_file"`
	SnapshotOut int `json:"snap_out"`
	StatsSlot   int `json:"stats_slot"` // where in the shared stats memory; -1: none
	// Indexes into the message's descriptors; -1: none.
	Image  int `json:"image"`
	Stdin  int `json:"stdin"`
	Stdout int `json:"stdout"`
	Stderr int `json:"stderr"`
	// StdinNotify: stdin is the agent's pipe, fed once the guest reads.
	StdinNotify bool `json:"stdin_notify,omitempty"`
	// The image memfd holds [ConfigLen bytes of this message's remainder,
	// when it did not fit inline][kernel][program].
	KernelLen  int `json:"kernel_len,omitempty"`
	ProgramLen int `json:"program_len,omitempty"`
}

// Boot bodies start with one byte: bootInline (the JSON follows) or
// bootInImage (a uint32 length follows; the JSON opens the image memfd).
const (
	bootInline  byte = 0
	bootInImage byte = 1
)

// resultMsg is Run's answer.
type resultMsg struct {
	Result *vmm.Result `json:"result"`
	Err    *wireErr    `json:"err,omitempty"`
}

// wireErr is an error reduced to its text and the sentinels it wraps.
type wireErr struct {
	Kinds uint32 `json:"k"`
	Msg   string `json:"m"`
}

// sentinels are the errors a caller tests with errors.Is; their position
// is their bit in wireErr.Kinds, so only append.
var sentinels = []error{
	vmm.ErrNoKVM, vmm.ErrBadELF, vmm.ErrMemSize, vmm.ErrTimeout, vmm.ErrGuest,
	vmm.ErrConfig, vmm.ErrNoKernel, vmm.ErrSnapshot, fs.ErrNotExist, fs.ErrPermission, ErrWorker,
}

// maxText bounds a message or register dump sent across, so that a
// result always fits one control message.
const maxText = 16 << 10

func clip(s string) string {
	if len(s) > maxText {
		return s[:maxText] + " …[truncated]"
	}
	return s
}

func toWire(err error) *wireErr {
	if err == nil {
		return nil
	}
	w := &wireErr{Msg: clip(err.Error())}
	for i, s := range sentinels {
		if errors.Is(err, s) {
			w.Kinds |= 1 << i
		}
	}
	return w
}

// remoteError is an error that happened in a worker: the same text, and
// errors.Is matches the same sentinels.
type remoteError struct {
	msg   string
	kinds []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.kinds }

func (w *wireErr) err() error {
	if w == nil {
		return nil
	}
	e := &remoteError{msg: w.Msg}
	for i, s := range sentinels {
		if w.Kinds&(1<<i) != 0 {
			e.kinds = append(e.kinds, s)
		}
	}
	return e
}

// encodeResult is Run's answer, cut down to one control message if need
// be (a vmm.Result's text is small, but nothing bounds it).
func encodeResult(r *vmm.Result, err error) []byte {
	b, _ := json.Marshal(resultMsg{Result: r, Err: toWire(err)})
	if len(b) <= maxMsg-headerLen || r == nil {
		return b
	}
	c := *r
	c.Message, c.Regs, c.EnosysByNr = clip(c.Message), clip(c.Regs), nil
	b, _ = json.Marshal(resultMsg{Result: &c, Err: toWire(err)})
	return b
}

func encodeErr(err error) []byte {
	if err == nil {
		return nil
	}
	b, _ := json.Marshal(toWire(err))
	return b
}

func decodeErr(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	var w wireErr
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("vmhost: undecodable error from the worker: %w", err)
	}
	return w.err()
}

const statsLen = 8 * 8

func encodeStats(s vmm.Stats) []byte {
	b := make([]byte, statsLen)
	for i, v := range []uint64{s.Exits, s.IOExits, s.MMIOExits, s.Hypercalls, s.InputWaits,
		s.Discards, s.Discarded, uint64(s.GuestTime)} {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}

func decodeStats(b []byte) (vmm.Stats, bool) {
	if len(b) != statsLen {
		return vmm.Stats{}, false
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return vmm.Stats{Exits: u(0), IOExits: u(1), MMIOExits: u(2), Hypercalls: u(3), InputWaits: u(4),
		Discards: u(5), Discarded: u(6), GuestTime: time.Duration(u(7))}, true
}
