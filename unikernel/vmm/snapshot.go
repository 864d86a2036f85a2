package vmm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
	"golang.org/x/sys/unix"
)

// Snapshots: a function boots once; when it first blocks waiting for a
// request (its init is done) the VMM saves its memory and vCPU state to a
// file, and every later VM of that function starts from the file instead of
// booting. The restored guest resumes inside that same wait, with its
// request already in the buffer it named.
//
// File layout (little endian):
//
//	[0, 4 KiB)        snapHeader
//	[4 KiB, memOff)   snapState (vCPU registers, XSAVE, MSRs, the pending wait)
//	[memOff, +mem)    guest RAM at its guest-physical offsets, sparse: only
//	                  non-zero pages are written, the rest are holes
//
// The header's checksum covers the header, the state and every non-zero
// page with its address, so a truncated, corrupt or foreign file is refused
// by OpenSnapshot, never restored. The key fields (ABI, kernel, program,
// configuration, memory size, TSC rate) make a stale snapshot detectable:
// Snapshot.Matches says why one does not fit.

// ErrSnapshot: a snapshot file is corrupt, of another format, or does not
// match the VM it was meant to restore. Callers rebuild it by booting.
var ErrSnapshot = errors.New("vmm: unusable snapshot")

const (
	snapMagic   = "KILNSNAP"
	snapFormat  = 1
	snapStateAt = 4096
	snapMemOff  = 2 << 20 // RAM starts 2 MiB into the file, page-aligned for mmap
)

// snapHeader is the first block of a snapshot file.
type snapHeader struct {
	Magic      [8]byte
	Format     uint32
	ABI        uint32
	MemSize    uint64
	MemOff     uint64
	TSCkHz     uint64
	StateLen   uint64
	Pages      uint64   // non-zero pages written
	KernelSum  [32]byte // sha256 of the kernel ELF
	ProgramSum [32]byte // sha256 of the program ELF
	ConfigSum  [32]byte // sha256 of what else shaped the boot (args, env, hostname, flags)
	Created    int64    // Unix ns
	Sum        [32]byte // sha256 of all of the above with Sum zero, the state, and the pages
}

// snapMSRs are the MSRs a restore puts back; EFER travels in the sregs.
var snapMSRs = []uint32{msrSTAR, msrLSTAR, msrCSTAR, msrSFMASK, msrFSBase, msrGSBase, msrKGSBase, msrPAT, msrTSC}

// snapState is the vCPU and VMM state of a guest parked in its first wait
// for input, with the hypercall already completed by KVM (RIP after it).
type snapState struct {
	Regs    kvmRegs
	Sregs   kvmSregs
	XSave   kvmXSave
	XCRs    kvmXCRs
	HasXCRs uint32
	_       uint32
	MSRs    kvmMSRs
	BootTSC uint64 // the guest's boot_tsc: its monotonic clock counts from it
	WaitGPA uint64 // the kiln_hc_io of the pending wait
	InGPA   uint64 // its input buffer
	InCap   uint64
	Deadln  uint64 // its deadline TSC (0: none)
}

// Snapshot is an opened, verified snapshot file. One Snapshot serves any
// number of concurrent restores (each maps its pages copy-on-write, so they
// share them); Close it when none will follow.
type Snapshot struct {
	// f is a sealed memfd holding the verified file's bytes (sealedCopy):
	// what restores map is what verify hashed, whatever later happens to
	// the file at path.
	f     *os.File
	path  string
	hdr   snapHeader
	state snapState
	// nonZero has bit i set when page i of the memory image is not zero,
	// as verify found it: a restore maps only those pages from f, the rest
	// of guest RAM is anonymous (mapSnapshotMemory), and a restored guest's
	// discards depend on it (Memory.discard). One bit per 4 KiB page:
	// 16 KiB for 512 MiB.
	nonZero []uint64
}

// MemSize is the guest RAM size the snapshot holds.
func (s *Snapshot) MemSize() uint64 { return s.hdr.MemSize }

// Pages is the number of non-zero 4 KiB pages the file holds.
func (s *Snapshot) Pages() uint64 { return s.hdr.Pages }

// Path is the file the snapshot was opened from. Opening it again verifies
// the bytes it holds then, which need not be the bytes s holds.
func (s *Snapshot) Path() string { return s.path }

// File is the sealed memfd restores map (Snapshot.f). It can be handed to
// another process (SCM_RIGHTS), which opens it with OpenSnapshotFile
// without copying it again. It stays s's: Close closes it.
func (s *Snapshot) File() *os.File { return s.f }

// Close releases the sealed copy; VMs already restored from it keep
// running (their mappings hold it).
func (s *Snapshot) Close() error { return s.f.Close() }

// configSum digests the parts of a Config that shape a booted guest
// besides its two images.
func configSum(cfg *Config) [32]byte {
	h := sha256.New()
	put := func(s string) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	put(fmt.Sprint(len(cfg.Args)))
	for _, a := range cfg.Args {
		put(a)
	}
	put(fmt.Sprint(len(cfg.Env)))
	for _, e := range cfg.Env {
		put(e)
	}
	put(cfg.Hostname)
	put(fmt.Sprint(cfg.TraceSyscalls, cfg.PortIO))
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// Matches says whether s was taken from a VM booted with cfg's kernel,
// program, arguments, environment, hostname and memory size, under this
// ABI; the error names the first difference.
func (s *Snapshot) Matches(cfg Config) error {
	mem := cfg.MemSize
	if mem == 0 {
		mem = DefaultMemSize
	}
	switch {
	case s.hdr.ABI != abi.Version:
		return fmt.Errorf("%w: taken under ABI %d, this VMM speaks %d", ErrSnapshot, s.hdr.ABI, abi.Version)
	case s.hdr.MemSize != mem:
		return fmt.Errorf("%w: %d bytes of guest RAM, want %d", ErrSnapshot, s.hdr.MemSize, mem)
	case sha256.Sum256(cfg.Kernel) != s.hdr.KernelSum:
		return fmt.Errorf("%w: taken with another guest kernel build", ErrSnapshot)
	case sha256.Sum256(cfg.Program) != s.hdr.ProgramSum:
		return fmt.Errorf("%w: taken from another program image", ErrSnapshot)
	case configSum(&cfg) != s.hdr.ConfigSum:
		return fmt.Errorf("%w: taken with other arguments, environment, hostname or flags", ErrSnapshot)
	}
	return nil
}

// OpenSnapshot opens and verifies a snapshot file: format, checksum over
// every byte that matters, and a TSC rate equal to this host's (the guest's
// clocks are TSC ticks). It reads the whole file once; restores then only
// map it.
//
// Restores never map the file itself: a MAP_PRIVATE mapping shows later
// writes to the file in every page the guest has not written yet (and a
// hole read as zero by discard could then read anything), so a file
// changed after it was verified would reach running and future guests.
// The bytes verify hashes are copied, as they are hashed, into a memfd
// sealed against writing, shrinking and growing (sealedCopy); restores map
// its non-zero pages (mapSnapshotMemory: never its holes, which would grow
// it). It costs the snapshot's non-zero pages in shared memory per process
// that opened it (docs/SNAPSHOTS.md, docs/BENCHMARKS.md).
func OpenSnapshot(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	defer f.Close()
	return openSnapshot(f, path)
}

// OpenSnapshotFile is OpenSnapshot on an open file, such as a descriptor
// another process handed over (Snapshot.File). A memfd already sealed
// against writing, shrinking and growing is verified and mapped as it is
// (nobody can change it); any other file is verified into a sealed copy
// like OpenSnapshot's. f stays the caller's.
func OpenSnapshotFile(f *os.File) (*Snapshot, error) {
	return openSnapshot(f, f.Name())
}

func openSnapshot(src *os.File, name string) (*Snapshot, error) {
	s := &Snapshot{path: name}
	if err := s.verify(src); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSnapshot, name, err)
	}
	return s, nil
}

// snapSeals are the seals that make a memfd's bytes immutable: no write,
// no shared writable mapping, no shrink or growth, no seal removed.
const snapSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// sealed says whether f is a memfd nobody can change any more.
func sealed(f *os.File) bool {
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	return err == nil && seals&snapSeals == snapSeals
}

// sealedCopy is a memfd being filled with a snapshot's verified bytes
// through a shared mapping, then unmapped and sealed.
type sealedCopy struct {
	f *os.File
	b []byte
}

// newSealedCopy makes the memfd for the snapshot file name, named after it
// so that /proc/PID/maps says which snapshot a mapping is
// ("/memfd:kiln-snapshot:NAME (deleted)").
func newSealedCopy(name string, size int64) (*sealedCopy, error) {
	name = "kiln-snapshot:" + filepath.Base(name)
	fd, err := unix.MemfdCreate(name[:min(len(name), 249)], unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	c := &sealedCopy{f: os.NewFile(uintptr(fd), "/memfd:"+name)}
	if err := unix.Ftruncate(fd, size); err != nil {
		c.f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	if c.b, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		c.f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return c, nil
}

// seal unmaps the copy (a shared writable mapping would refuse
// F_SEAL_WRITE) and seals it; abort drops it.
func (c *sealedCopy) seal() (*os.File, error) {
	err := unix.Munmap(c.b)
	c.b = nil
	if err == nil {
		_, err = unix.FcntlInt(c.f.Fd(), unix.F_ADD_SEALS, snapSeals)
	}
	if err != nil {
		c.f.Close()
		return nil, fmt.Errorf("sealing the copy: %w", err)
	}
	return c.f, nil
}

func (c *sealedCopy) abort() {
	if c.b != nil {
		unix.Munmap(c.b)
	}
	c.f.Close()
}

// verify checks src and sets s.f: src itself (dup'ed) when it is a sealed
// memfd, else a sealed copy of exactly the bytes checked.
func (s *Snapshot) verify(src *os.File) (err error) {
	st, err := src.Stat()
	if err != nil {
		return err
	}
	hb := make([]byte, binary.Size(snapHeader{}))
	if _, err := src.ReadAt(hb, 0); errors.Is(err, io.EOF) {
		return fmt.Errorf("file is %d bytes, too short for a snapshot header", st.Size())
	} else if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	h := &s.hdr
	_ = binary.Read(bytes.NewReader(hb), binary.LittleEndian, h)
	stateLen := uint64(binary.Size(snapState{}))
	switch {
	case string(h.Magic[:]) != snapMagic:
		return errors.New("not a Kiln snapshot (bad magic)")
	case h.Format != snapFormat:
		return fmt.Errorf("format %d, this VMM reads %d", h.Format, snapFormat)
	case h.MemOff != snapMemOff || h.StateLen != stateLen:
		return fmt.Errorf("layout: memory at %#x, state %d bytes", h.MemOff, h.StateLen)
	case checkMemSize(h.MemSize) != nil:
		return fmt.Errorf("memory size %d", h.MemSize)
	case uint64(st.Size()) != h.MemOff+h.MemSize:
		return fmt.Errorf("file is %d bytes, want %d (truncated?)", st.Size(), h.MemOff+h.MemSize)
	}
	sb := make([]byte, stateLen)
	if _, err := src.ReadAt(sb, snapStateAt); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	_ = binary.Read(bytes.NewReader(sb), binary.LittleEndian, &s.state)
	if s.state.MSRs.NMSRs > uint32(len(s.state.MSRs.Entries)) || s.state.XCRs.NXCRs > uint32(len(s.state.XCRs.XCRs)) {
		return errors.New("state: bad MSR or XCR count")
	}
	var cp *sealedCopy
	if !sealed(src) {
		if cp, err = newSealedCopy(src.Name(), st.Size()); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				cp.abort()
			}
		}()
		copy(cp.b, hb)
		copy(cp.b[snapStateAt:], sb)
	}
	s.nonZero = make([]uint64, (h.MemSize/pageSize+63)/64)
	sum, pages, err := snapshotSum(src, h, sb, func(gpa uint64, pg []byte) {
		s.nonZero[gpa/pageSize/64] |= 1 << (gpa / pageSize % 64)
		if cp != nil {
			copy(cp.b[h.MemOff+gpa:], pg)
		}
	})
	if err != nil {
		return err
	}
	if pages != h.Pages || sum != h.Sum {
		return errors.New("checksum mismatch: the file is corrupt")
	}
	if cp != nil {
		s.f, err = cp.seal()
		return err
	}
	fd, err := unix.FcntlInt(src.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("dup: %w", err)
	}
	s.f = os.NewFile(uintptr(fd), src.Name())
	return nil
}

// snapshotSum is the checksum of the snapshot file f as its header's Sum
// holds it: over the header h (Sum zeroed), the state bytes sb and every
// non-zero page of the memory image h places in f, each named (with its
// bytes, valid only during the call) to mark if set. It also returns how many pages. The writer and OpenSnapshot both
// compute it here, so they cannot disagree on what it covers.
func snapshotSum(f *os.File, h *snapHeader, sb []byte, mark func(gpa uint64, page []byte)) (sum [32]byte, pages uint64, err error) {
	d := sha256.New()
	hashHeader(d, h)
	d.Write(sb)
	if pages, err = hashPages(d, f, h.MemOff, h.MemSize, mark); err != nil {
		return sum, 0, err
	}
	copy(sum[:], d.Sum(nil))
	return sum, pages, nil
}

// hashHeader feeds w the header with its Sum field zeroed.
func hashHeader(w io.Writer, h *snapHeader) {
	c := *h
	c.Sum = [32]byte{}
	_ = binary.Write(w, binary.LittleEndian, &c)
}

// hashPages feeds every non-zero page of the memory image (address, then
// bytes) to h, walking only the file's data extents, and names each one
// to mark if set: its guest address and the very bytes hashed. It returns how many.
func hashPages(h hash.Hash, f *os.File, off, size uint64, mark func(gpa uint64, page []byte)) (uint64, error) {
	fd := int(f.Fd())
	end := int64(off + size)
	buf := make([]byte, 1<<20)
	var zero [pageSize]byte
	var n uint64
	for pos := int64(off); pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // nothing but holes up to the end
		}
		if err != nil {
			return 0, fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return 0, fmt.Errorf("seek hole: %w", err)
		}
		data -= data % pageSize
		for p := data; p < hole && p < end; {
			chunk := min(int64(len(buf)), hole-p, end-p)
			chunk -= chunk % pageSize
			if chunk == 0 {
				chunk = pageSize
			}
			if _, err := f.ReadAt(buf[:chunk], p); err != nil {
				return 0, fmt.Errorf("read memory image: %w", err)
			}
			for i := int64(0); i < chunk; i += pageSize {
				pg := buf[i : i+pageSize]
				if bytes.Equal(pg, zero[:]) {
					continue
				}
				var a [8]byte
				gpa := uint64(p+i) - off
				binary.LittleEndian.PutUint64(a[:], gpa)
				h.Write(a[:])
				h.Write(pg)
				if mark != nil {
					mark(gpa, pg)
				}
				n++
			}
			p += chunk
		}
		pos = hole
	}
	return n, nil
}

// takeSnapshot saves the VM, parked in the KILN_HC_IO at gpa that waits for
// its first input, to cfg.SnapshotPath. It runs on the vCPU thread.
func (vm *VM) takeSnapshot(gpa uint64, a abi.HCIOArgs) error {
	// KVM finishes an MMIO exit only on the next KVM_RUN; immediate_exit
	// makes that run complete the store and return before any guest code,
	// so the saved RIP is past the doorbell.
	vm.cpu.setImmediateExit()
	_, err := vm.cpu.enter()
	vm.cpu.clearImmediateExit()
	if err != nil {
		return err
	}
	st := snapState{BootTSC: vm.bootTSC, WaitGPA: gpa, InGPA: a.InGPA, InCap: a.InCap, Deadln: a.DeadlineTSC}
	if st.Regs, err = vm.cpu.getRegs(); err != nil {
		return err
	}
	if st.Sregs, err = vm.cpu.getSregs(); err != nil {
		return err
	}
	if st.XSave, err = vm.cpu.getXSave(); err != nil {
		return err
	}
	if st.Sregs.CR4&cr4OSXSAVE != 0 {
		if st.XCRs, err = vm.cpu.getXCRs(); err != nil {
			return err
		}
		st.HasXCRs = 1
	}
	for _, idx := range snapMSRs {
		st.MSRs.Entries[st.MSRs.NMSRs].Index = idx
		st.MSRs.NMSRs++
	}
	if err := vm.cpu.getMSRs(&st.MSRs); err != nil {
		return err
	}
	if vm.cfg.SnapshotFile != nil {
		return writeSnapshotTo(vm.cfg.SnapshotFile, &vm.cfg, vm.mem, vm.tscKHz, &st)
	}
	return writeSnapshot(vm.cfg.SnapshotPath, &vm.cfg, vm.mem, vm.tscKHz, &st)
}

// writeSnapshot writes the file beside its final name and renames it into
// place, so a crash leaves either no snapshot or a whole one.
func writeSnapshot(path string, cfg *Config, mem *Memory, khz uint64, st *snapState) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".snap-*")
	if err != nil {
		return err
	}
	if err := writeSnapshotTo(tmp, cfg, mem, khz, st); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// writeSnapshotTo writes the snapshot into tmp, an empty file open for
// reading and writing, syncs and closes it (on error too).
func writeSnapshotTo(tmp *os.File, cfg *Config, mem *Memory, khz uint64, st *snapState) (err error) {
	defer func() {
		if err != nil {
			tmp.Close()
		}
	}()
	h := snapHeader{
		Format: snapFormat, ABI: abi.Version, MemSize: mem.Size(), MemOff: snapMemOff, TSCkHz: khz,
		StateLen: uint64(binary.Size(st)), KernelSum: sha256.Sum256(cfg.Kernel),
		ProgramSum: sha256.Sum256(cfg.Program), ConfigSum: configSum(cfg), Created: time.Now().UnixNano(),
	}
	copy(h.Magic[:], snapMagic)
	if err := tmp.Truncate(int64(snapMemOff + mem.Size())); err != nil {
		return err
	}
	var sb bytes.Buffer
	_ = binary.Write(&sb, binary.LittleEndian, st)
	// Resident pages only (mincore), and of those only non-zero ones: the
	// rest stay holes, so the file costs what the guest touched.
	resident, err := residentPages(mem.b)
	if err != nil {
		return err
	}
	var zero [pageSize]byte
	for i, in := range resident {
		if in&1 == 0 {
			continue
		}
		gpa := uint64(i) * pageSize
		pg := mem.b[gpa : gpa+pageSize]
		if bytes.Equal(pg, zero[:]) {
			continue
		}
		if _, err := tmp.WriteAt(pg, int64(snapMemOff+gpa)); err != nil {
			return err
		}
		h.Pages++
	}
	// The sum is computed as OpenSnapshot will: over the file's data
	// extents (a second pass, from the page cache, paid once per function).
	if h.Sum, _, err = snapshotSum(tmp, &h, sb.Bytes(), nil); err != nil {
		return err
	}
	var hb bytes.Buffer
	_ = binary.Write(&hb, binary.LittleEndian, &h)
	if _, err := tmp.WriteAt(hb.Bytes(), 0); err != nil {
		return err
	}
	if _, err := tmp.WriteAt(sb.Bytes(), snapStateAt); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	return tmp.Close()
}

// residentPages is mincore over guest RAM: one byte per 4 KiB page, bit 0
// set when the host has a page behind it.
func residentPages(b []byte) ([]byte, error) {
	v := make([]byte, (len(b)+pageSize-1)/pageSize)
	if err := mincore(b, v); err != nil {
		return nil, fmt.Errorf("mincore: %w", err)
	}
	return v, nil
}

// snapshotRestore is the guest source of a VM restored from a snapshot
// instead of booted: guest RAM is anonymous with the snapshot's pages
// mapped over it copy-on-write (mapSnapshotMemory), the vCPU gets the
// saved state, and start settles the clock, the entropy and the pending
// wait.
type snapshotRestore struct {
	vm   *VM
	snap *Snapshot
}

// check takes the snapshot's memory size, or refuses a different one.
func (r *snapshotRestore) check() error {
	cfg, s := &r.vm.cfg, r.snap
	if cfg.MemSize == 0 {
		cfg.MemSize = s.hdr.MemSize
	}
	if cfg.MemSize != s.hdr.MemSize {
		return fmt.Errorf("%w: snapshot holds %d bytes of RAM, config asks %d", ErrSnapshot, s.hdr.MemSize, cfg.MemSize)
	}
	return nil
}

// memory is the snapshot's RAM: its pages mapped copy-on-write over
// anonymous memory.
func (r *snapshotRestore) memory() (*Memory, error) {
	return mapSnapshotMemory(r.snap.f, r.snap.hdr.MemOff, r.snap.hdr.MemSize, r.snap.nonZero)
}

// load sets the saved vCPU state and reads the boot info back; the
// guest's clocks count TSC ticks, so the host's rate must be the
// snapshot's.
func (r *snapshotRestore) load(cpuFeatures) error {
	vm, s := r.vm, r.snap
	if vm.tscKHz != s.hdr.TSCkHz {
		return fmt.Errorf("%w: taken at a TSC of %d kHz, this host's is %d kHz", ErrSnapshot, s.hdr.TSCkHz, vm.tscKHz)
	}
	st := &s.state
	if err := vm.cpu.setSregs(&st.Sregs); err != nil {
		return err
	}
	if st.HasXCRs != 0 {
		if err := vm.cpu.setXCRs(&st.XCRs); err != nil {
			return err
		}
	}
	if err := vm.cpu.setXSave(&st.XSave); err != nil {
		return err
	}
	msrs := st.MSRs
	if err := vm.cpu.setMSRs(&msrs); err != nil {
		return err
	}
	if err := vm.cpu.setRegs(&st.Regs); err != nil {
		return err
	}
	bi, err := readBootInfo(vm.mem)
	if err != nil {
		return err
	}
	vm.bootInfo = bi
	vm.bootTSC = st.BootTSC
	return nil
}

// start runs just before a restored guest's first instruction: the TSC
// continues from the snapshot where the host can offset it (on nested PVM
// the guest's monotonic clock jumps forward by the time since the
// snapshot), the wall clock is re-published against what the TSC reads, new entropy with a new
// generation makes the kernel reseed getrandom, and the pending wait gets
// its input.
func (r *snapshotRestore) start(ctx context.Context) *Result {
	vm, st := r.vm, &r.snap.state
	var tsc uint64
	for i := 0; i < int(st.MSRs.NMSRs); i++ {
		if st.MSRs.Entries[i].Index == msrTSC {
			tsc = st.MSRs.Entries[i].Data
		}
	}
	m := kvmMSRs{NMSRs: 1}
	m.Entries[0] = kvmMSREntry{Index: msrTSC, Data: tsc}
	// The guest's TSC goes on from the snapshot's, so its monotonic clock
	// does not jump. Where the host cannot offset a guest's TSC (nested PVM:
	// the guest reads the host's TSC, whatever is set), the set has no
	// effect, so the clock is anchored to what the guest's TSC really reads
	// now, read back: anchoring it to the value set put a restored guest's
	// wall clock ahead by the time since its snapshot was taken.
	if err := vm.cpu.setMSRs(&m); err != nil {
		return vm.internal(err)
	}
	now, err := atHostTime(func() (err error) {
		tsc, err = vm.cpu.getMSR(msrTSC)
		return err
	})
	if err != nil {
		return vm.internal(err)
	}
	since := time.Duration(0)
	if tsc > st.BootTSC {
		since = tscDuration(tsc-st.BootTSC, vm.tscKHz)
	}
	vm.bootTime = now.Add(-since)
	vm.bootInfo.BootWallNs = uint64(vm.bootTime.UnixNano())
	if _, err := rand.Read(vm.bootInfo.Entropy[:]); err != nil {
		return vm.internal(fmt.Errorf("entropy: %w", err))
	}
	vm.bootInfo.EntropyGen++
	if err := writeBootInfo(vm.mem, vm.bootInfo); err != nil {
		return vm.internal(err)
	}
	a := abi.HCIOArgs{InGPA: st.InGPA, InCap: st.InCap, DeadlineTSC: st.Deadln, Flags: abi.IOWaitInput}
	return vm.completeWait(ctx, st.WaitGPA, a)
}

// tscDuration converts TSC ticks at khz to a duration.
func tscDuration(ticks, khz uint64) time.Duration {
	hi, lo := bits.Mul64(ticks, 1_000_000)
	if khz == 0 || hi >= khz {
		return time.Duration(math.MaxInt64)
	}
	ns, _ := bits.Div64(hi, lo, khz)
	if ns > math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(ns)
}

// readBootInfo reads the boot-info page back from guest RAM.
func readBootInfo(mem *Memory) (*abi.BootInfo, error) {
	raw, err := mem.Slice(abi.BootInfoGPA, uint64(binary.Size(abi.BootInfo{})))
	if err != nil {
		return nil, err
	}
	bi := &abi.BootInfo{}
	_ = binary.Read(bytes.NewReader(raw), binary.LittleEndian, bi)
	if bi.Magic != abi.BootMagic || bi.ABIVersion != abi.Version {
		return nil, fmt.Errorf("%w: boot info in the snapshot has magic %#x, ABI %d", ErrSnapshot, bi.Magic, bi.ABIVersion)
	}
	return bi, nil
}
