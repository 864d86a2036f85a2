package vmm

import (
	"fmt"
	"os"

	"github.com/kilnfaas/kiln/unikernel/abi"
	"golang.org/x/sys/unix"
)

// Memory is the guest's RAM: one host mapping at guest physical address 0 —
// anonymous for a booted guest, a private mapping of its snapshot file for
// a restored one. Fresh pages are zero and cost the host nothing until
// touched.
//
// The mapping is never split: no discard, however many and however small,
// adds a host mapping (each one would count against the worker's
// vm.max_map_count, shared by every VM of the worker).
type Memory struct {
	b []byte
	// snapNonZero, for a restored guest, has bit i set when page i of the
	// snapshot is not zero (Snapshot.nonZero, shared by its restores, read
	// only). nil for a booted guest.
	snapNonZero []uint64
}

// checkMemSize validates a requested guest RAM size.
func checkMemSize(size uint64) error {
	switch {
	case size < minMemSize:
		return fmt.Errorf("%w: %d bytes, the minimum is %d", ErrMemSize, size, minMemSize)
	case size%abi.MemAlign != 0:
		return fmt.Errorf("%w: %d bytes is not a multiple of 2 MiB", ErrMemSize, size)
	case size > abi.MemMax:
		return fmt.Errorf("%w: %d bytes is above the maximum %d", ErrMemSize, size, uint64(abi.MemMax))
	}
	return nil
}

// newMemory maps size bytes of guest RAM. MAP_NORESERVE: the host pays only
// for pages the guest (or the loader) touches; MADV_HUGEPAGE lets the host
// back the guest's 2 MiB pages with huge pages.
func newMemory(size uint64) (*Memory, error) {
	if err := checkMemSize(size); err != nil {
		return nil, err
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", size, err)
	}
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // advice only; fine if THP is off
	return &Memory{b: b}, nil
}

// mapSnapshotMemory maps size bytes of f at off as guest RAM, private and
// copy-on-write: restored VMs of one snapshot share its page cache and pay
// only for the pages they write.
func mapSnapshotMemory(f *os.File, off, size uint64, nonZero []uint64) (*Memory, error) {
	b, err := unix.Mmap(int(f.Fd()), int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of snapshot memory: %w", size, err)
	}
	return &Memory{b: b, snapNonZero: nonZero}, nil
}

// discard gives the host the pages behind guest RAM [gpa, gpa+n) back
// (page-aligned and inside RAM: the caller checked); the guest reads zeros
// there afterwards. It never fails and never adds a host mapping.
//
// Booted RAM is anonymous: MADV_DONTNEED frees the pages and the next touch
// reads fresh zero pages. Restored RAM is a private mapping of the snapshot
// file, where MADV_DONTNEED drops the guest's private copies and the pages
// read the file again: right for a page that is zero in the snapshot (a
// hole), wrong for one that is not, which is zeroed in place instead (one
// private page stays behind; there are at most Snapshot.Pages of them).
// One madvise or clear per run of pages alike, so a discard costs a
// syscall or two whatever its length. It returns the madvise calls made
// (the discard budget counts them).
func (m *Memory) discard(gpa, n uint64) int {
	if m.snapNonZero == nil {
		dontNeed(m.b[gpa : gpa+n])
		return 1
	}
	calls := 0
	for p, end := gpa, gpa+n; p < end; {
		nz := m.snapPage(p)
		q := m.snapRun(p+pageSize, end, nz)
		if nz {
			clear(m.b[p:q])
		} else {
			dontNeed(m.b[p:q])
			calls++
		}
		p = q
	}
	return calls
}

// snapPage says whether the page at gpa is non-zero in the snapshot.
func (m *Memory) snapPage(gpa uint64) bool {
	i := gpa / pageSize
	return m.snapNonZero[i/64]>>(i%64)&1 != 0
}

// snapRun returns the end of the run of pages from p (before end) whose
// snapshot bit is nz, skipping whole bitmap words where it can.
func (m *Memory) snapRun(p, end uint64, nz bool) uint64 {
	var same uint64 // a bitmap word of 64 pages all of the run's kind
	if nz {
		same = ^uint64(0)
	}
	for p < end {
		i := p / pageSize
		if i%64 == 0 && end-p >= 64*pageSize && m.snapNonZero[i/64] == same {
			p += 64 * pageSize
			continue
		}
		if m.snapPage(p) != nz {
			return p
		}
		p += pageSize
	}
	return end
}

// dontNeed frees the host pages behind b. Should the kernel refuse (it does
// not for the mappings Memory makes), zeroing in place keeps the promise
// the guest relies on at the cost of keeping the pages.
func dontNeed(b []byte) {
	if unix.Madvise(b, unix.MADV_DONTNEED) != nil {
		clear(b)
	}
}

// Size is the guest RAM size in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.b)) }

// Slice returns guest memory [gpa, gpa+n) or an error if any byte of it is
// outside guest RAM (overflow included). Every guest address the VMM uses
// goes through here; the caller decides whether a bad one ends the VM (a
// hypercall) or refuses the boot (the loader).
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	size := uint64(len(m.b))
	if gpa > size || n > size-gpa {
		return nil, fmt.Errorf("guest range [%#x, +%#x) is outside guest RAM (%#x bytes)", gpa, n, size)
	}
	return m.b[gpa : gpa+n : gpa+n], nil
}

// Write copies p to guest address gpa.
func (m *Memory) Write(gpa uint64, p []byte) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

func (m *Memory) close() {
	if m.b != nil {
		_ = unix.Munmap(m.b)
		m.b = nil
	}
}
