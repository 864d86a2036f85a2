package vmm

import (
	"fmt"
	"os"

	"github.com/kilnfaas/kiln/unikernel/abi"
	"golang.org/x/sys/unix"
)

// Memory is the guest's RAM: one anonymous host mapping at guest physical
// address 0. Fresh pages are zero and cost the host nothing until touched.
type Memory struct {
	b    []byte
	file bool // a private mapping of a snapshot file (see zeroFill)
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
func mapSnapshotMemory(f *os.File, off, size uint64) (*Memory, error) {
	b, err := unix.Mmap(int(f.Fd()), int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of snapshot memory: %w", size, err)
	}
	return &Memory{b: b, file: true}, nil
}

// discard gives the host pages behind b (page-aligned guest RAM) back; the
// guest reads zeros there afterwards.
func (m *Memory) discard(b []byte) error {
	if m.file {
		return zeroFill(b)
	}
	return unix.Madvise(b, unix.MADV_DONTNEED)
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
