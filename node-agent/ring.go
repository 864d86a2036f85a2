package nodeagent

import (
	"bytes"
	"sync"
)

// StderrRing is how much of each instance's stderr the agent keeps.
const StderrRing = 64 << 10

// TailLines is how many stderr lines an error response carries.
const TailLines = 20

// ring keeps the last cap bytes written to it. The VM's output arrives on
// a goroutine of its own (its vCPU thread, or vmhost's pump for a VM in a
// worker process) while invocations read the tail, hence the lock.
type ring struct {
	mu   sync.Mutex
	buf  []byte
	cap  int
	mark int64 // total bytes ever written
}

func newRing(capacity int) *ring { return &ring{cap: capacity} }

func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	r.mark += int64(n)
	if len(p) >= r.cap {
		r.buf = append(r.buf[:0], p[len(p)-r.cap:]...)
		return n, nil
	}
	if over := len(r.buf) + len(p) - r.cap; over > 0 {
		r.buf = append(r.buf[:0], r.buf[over:]...)
	}
	r.buf = append(r.buf, p...)
	return n, nil
}

// written is the count of bytes ever written.
func (r *ring) written() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mark
}

// since returns what was written after the point mark (a value of
// written()), as far as the ring still holds it: one invocation's stderr.
func (r *ring) since(mark int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buf
	if fresh := r.mark - mark; fresh < int64(len(b)) {
		b = b[int64(len(b))-fresh:]
	}
	return bytes.Clone(b)
}

// tail returns the last n lines of what was written after the point
// `since` (a value of written()), as far as the ring still holds it.
func (r *ring) tail(n int, since int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buf
	if fresh := r.mark - since; fresh < int64(len(b)) {
		b = b[int64(len(b))-fresh:]
	}
	return lastLines(b, n)
}

// lastLines is the suffix of b holding its last n lines (all of b if it has
// fewer); a final newline does not start another line.
func lastLines(b []byte, n int) []byte {
	if n <= 0 {
		// No lines: nothing (b[pos+1:] below would be past the end when b
		// has no final newline; FuzzRing found it).
		return nil
	}
	pos := len(b)
	if pos > 0 && b[pos-1] == '\n' {
		pos--
	}
	for i := 0; i < n; i++ {
		j := bytes.LastIndexByte(b[:pos], '\n')
		if j < 0 {
			return bytes.Clone(b)
		}
		pos = j
	}
	return bytes.Clone(b[pos+1:])
}
