package vmm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues one KVM ioctl whose argument is a pointer to a Go value.
//
// SAFETY: the caller's arg points at a live Go value of exactly the size
// the request encodes (the struct types in kvm.go mirror linux/kvm.h).
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	// SAFETY: arg becomes a uintptr inside the call expression, so
	// unix.Syscall keeps the value alive and unmoved until the call returns
	// (unsafe.Pointer's rule for syscalls).
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlVal issues a KVM ioctl whose argument is an integer.
func ioctlVal(fd int, req, val uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, val)
	if e != 0 {
		return r, e
	}
	return r, nil
}

func ioctlPtr[T any](fd int, req uintptr, v *T) error {
	// SAFETY: v is a non-nil pointer to a struct laid out as the kernel expects.
	_, err := ioctl(fd, req, unsafe.Pointer(v))
	return err
}

func (c *vcpu) getRegs() (kvmRegs, error) {
	var r kvmRegs
	return r, wrapIoctl("KVM_GET_REGS", ioctlPtr(c.fd, ioctlGetRegs, &r))
}

func (c *vcpu) setRegs(r *kvmRegs) error {
	return wrapIoctl("KVM_SET_REGS", ioctlPtr(c.fd, ioctlSetRegs, r))
}

func (c *vcpu) getSregs() (kvmSregs, error) {
	var s kvmSregs
	return s, wrapIoctl("KVM_GET_SREGS", ioctlPtr(c.fd, ioctlGetSregs, &s))
}

func (c *vcpu) setSregs(s *kvmSregs) error {
	return wrapIoctl("KVM_SET_SREGS", ioctlPtr(c.fd, ioctlSetSregs, s))
}

func (c *vcpu) setFPU(f *kvmFPU) error {
	return wrapIoctl("KVM_SET_FPU", ioctlPtr(c.fd, ioctlSetFPU, f))
}

func (c *vcpu) getXCRs() (kvmXCRs, error) {
	var x kvmXCRs
	return x, wrapIoctl("KVM_GET_XCRS", ioctlPtr(c.fd, ioctlGetXCRs, &x))
}

func (c *vcpu) getXSave() (kvmXSave, error) {
	var x kvmXSave
	return x, wrapIoctl("KVM_GET_XSAVE", ioctlPtr(c.fd, ioctlGetXSave, &x))
}

func (c *vcpu) setXSave(x *kvmXSave) error {
	return wrapIoctl("KVM_SET_XSAVE", ioctlPtr(c.fd, ioctlSetXSave, x))
}

// getMSRs reads every entry of m (their Index set) or fails.
func (c *vcpu) getMSRs(m *kvmMSRs) error {
	// SAFETY: m is a kvmMSRs whose NMSRs ≤ len(Entries).
	n, err := ioctl(c.fd, ioctlGetMSRs, unsafe.Pointer(m))
	if err != nil {
		return wrapIoctl("KVM_GET_MSRS", err)
	}
	if uint32(n) != m.NMSRs {
		return fmt.Errorf("KVM_GET_MSRS: MSR %#x not readable", m.Entries[n].Index)
	}
	return nil
}

func (c *vcpu) setXCRs(x *kvmXCRs) error {
	return wrapIoctl("KVM_SET_XCRS", ioctlPtr(c.fd, ioctlSetXCRs, x))
}

func (c *vcpu) setCPUID(cp *kvmCPUID2) error {
	return wrapIoctl("KVM_SET_CPUID2", ioctlPtr(c.fd, ioctlSetCPUID2, cp))
}

// setMSRs sets every entry or fails: KVM returns how many it accepted.
func (c *vcpu) setMSRs(m *kvmMSRs) error {
	// SAFETY: m is a kvmMSRs whose NMSRs ≤ len(Entries).
	n, err := ioctl(c.fd, ioctlSetMSRs, unsafe.Pointer(m))
	if err != nil {
		return wrapIoctl("KVM_SET_MSRS", err)
	}
	if uint32(n) != m.NMSRs {
		return fmt.Errorf("KVM_SET_MSRS: KVM refused MSR %#x", m.Entries[n].Index)
	}
	return nil
}

func (c *vcpu) getMSR(index uint32) (uint64, error) {
	m := kvmMSRs{NMSRs: 1}
	m.Entries[0].Index = index
	// SAFETY: as in setMSRs.
	n, err := ioctl(c.fd, ioctlGetMSRs, unsafe.Pointer(&m))
	if err != nil {
		return 0, wrapIoctl("KVM_GET_MSRS", err)
	}
	if n != 1 {
		return 0, fmt.Errorf("KVM_GET_MSRS: MSR %#x not readable", index)
	}
	return m.Entries[0].Data, nil
}

func (s *kvmSystem) supportedCPUID() (*kvmCPUID2, error) {
	cp := &kvmCPUID2{NEnt: kvmMaxCPUIDEntries}
	return cp, wrapIoctl("KVM_GET_SUPPORTED_CPUID", ioctlPtr(s.fd, ioctlGetSupportedCPUID, cp))
}

func (v *kvmVM) setUserMemory(r *kvmUserspaceMemoryRegion) error {
	return wrapIoctl("KVM_SET_USER_MEMORY_REGION", ioctlPtr(v.fd, ioctlSetUserMemory, r))
}

// hostAddr is the host virtual address of b's first byte, for
// KVM_SET_USER_MEMORY_REGION.
func hostAddr(b []byte) uint64 {
	// SAFETY: b is the non-empty guest RAM mapping, which stays mapped until
	// the VM (and with it the memslot) is closed.
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// mincore fills v with one byte per page of b (x/sys/unix has no wrapper).
func mincore(b, v []byte) error {
	if len(b) == 0 {
		return nil
	}
	// SAFETY: b is a live mapping and v holds a byte for each of its pages.
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&v[0])))
	if e != 0 {
		return e
	}
	return nil
}

// clearImmediateExit undoes setImmediateExit, from the vCPU thread.
func (c *vcpu) clearImmediateExit() {
	// SAFETY: as in setImmediateExit.
	p := (*uint32)(unsafe.Pointer(&c.run[0]))
	for {
		old := atomic.LoadUint32(p)
		if atomic.CompareAndSwapUint32(p, old, old&^(1<<(8*runImmediateExit))) {
			return
		}
	}
}

// setImmediateExit tells KVM_RUN to return at once; another goroutine calls
// it while the vCPU thread may be inside KVM_RUN.
func (c *vcpu) setImmediateExit() {
	// SAFETY: c.run is the vCPU's kvm_run mapping (at least one page); byte 1
	// is immediate_exit, which KVM only reads. The atomic store makes the write
	// visible to the vCPU thread without tearing.
	p := (*uint32)(unsafe.Pointer(&c.run[0]))
	for {
		old := atomic.LoadUint32(p)
		if atomic.CompareAndSwapUint32(p, old, old|1<<(8*runImmediateExit)) {
			return
		}
	}
}

// StatsSize is the size of a Config.StatsPage.
//
// SAFETY: Sizeof only measures the type at compile time; no memory is
// touched.
const StatsSize = int(unsafe.Sizeof(stats{}))

// statsIn places the counters in page, which outlives the VM. page is
// usually memory shared with another process: vmhost's worker keeps a VM's
// counters in a memfd its agent maps too, and the agent reads them with
// ReadStats.
func statsIn(page []byte) (*stats, error) {
	// SAFETY: the address is only tested for alignment, never kept as a
	// uintptr.
	if len(page) < StatsSize || uintptr(unsafe.Pointer(&page[0]))%8 != 0 {
		return nil, fmt.Errorf("%w: a StatsPage must be %d bytes, 8-byte aligned", ErrConfig, StatsSize)
	}
	// SAFETY: page holds at least StatsSize bytes at an 8-byte aligned
	// address (checked above), all a stats needs: its fields are 64-bit
	// atomic integers only, so any bytes are a valid value, there is no
	// pointer the garbage collector would have to find in memory it does
	// not manage, and every access is a whole aligned atomic load or add,
	// so another process writing or reading the same shared page never
	// sees a torn count. The page stays mapped while anything uses the
	// result: Config.StatsPage outlives the VM (vmhost's worker never
	// unmaps it, its agent unmaps its side only once the worker is dead),
	// and a page on the Go heap is kept alive by this interior pointer.
	return (*stats)(unsafe.Pointer(&page[0])), nil
}

// ReadStats reads the counters a VM keeps in page (its Config.StatsPage),
// from any process that maps the same memory.
func ReadStats(page []byte) Stats {
	s, err := statsIn(page)
	if err != nil {
		return Stats{}
	}
	return s.snapshot()
}

// mapFileAt maps len(b) bytes of fd from off over b, private and
// copy-on-write (MAP_FIXED: b's pages are replaced, at the same address).
func mapFileAt(b []byte, fd int, off int64) error {
	// SAFETY: b is a page-aligned piece of a mapping its Memory owns and
	// is still making (mapSnapshotMemory: before KVM or the guest sees it,
	// nothing else points into it); MAP_FIXED replaces exactly those pages
	// with a mapping of the same length at the same address, so b and every
	// slice of the Memory stay valid. The address returned is checked.
	addr := unsafe.Pointer(&b[0])
	p, err := unix.MmapPtr(fd, off, addr, uintptr(len(b)), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	if p != addr {
		return fmt.Errorf("mapped at %p, not %p", p, addr)
	}
	return nil
}
