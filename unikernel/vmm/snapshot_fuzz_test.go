package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// snapSeed is a valid snapshot file written by writeSnapshot, kept as the
// bytes that are not holes, so each fuzz input rebuilds it cheaply.
type snapSeed struct {
	size   int64
	blocks map[int64][]byte // file offset → bytes there; the rest is holes
}

// newSnapSeed writes a snapshot of a small VM that never ran — guest RAM
// holding boot info, a "kernel" page, a program page and a page near the
// top — with the writer's own code (writeSnapshot: mincore, sparse pages,
// sum), and keeps its data.
func newSnapSeed(tb testing.TB) *snapSeed {
	mem, err := newMemory(minMemSize)
	if err != nil {
		tb.Fatal(err)
	}
	defer mem.close()
	bi := abi.BootInfo{Magic: abi.BootMagic, ABIVersion: abi.Version, MemSize: minMemSize}
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, &bi)
	copy(mem.b[abi.BootInfoGPA:], b.Bytes())
	copy(mem.b[abi.KernelBase:], bytes.Repeat([]byte("kiln kernel "), 300))
	copy(mem.b[abi.UserBase:], "\x7fELF a program")
	copy(mem.b[minMemSize-pageSize:], "the stack")
	st := snapState{BootTSC: 1000, WaitGPA: 0x500000, InGPA: 0x600000, InCap: 4096}
	for _, idx := range snapMSRs {
		st.MSRs.Entries[st.MSRs.NMSRs] = kvmMSREntry{Index: idx, Data: 42}
		st.MSRs.NMSRs++
	}
	path := filepath.Join(tb.TempDir(), "seed.snap")
	cfg := &Config{Kernel: []byte("kernel"), Program: []byte("program"), Args: []string{"fn"}}
	if err := writeSnapshot(path, cfg, mem, 2_000_000, &st); err != nil {
		tb.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	s := &snapSeed{size: fi.Size(), blocks: map[int64][]byte{}}
	for off := int64(0); off < s.size; off += pageSize {
		pg := make([]byte, pageSize)
		if _, err := f.ReadAt(pg, off); err != nil {
			tb.Fatal(err)
		}
		if !bytes.Equal(pg, make([]byte, pageSize)) {
			s.blocks[off] = pg
		}
	}
	if len(s.blocks) != 2+4 { // header, state; four pages of RAM
		tb.Fatalf("seed snapshot has %d non-zero blocks, want 6", len(s.blocks))
	}
	return s
}

// write rebuilds the seed file at path.
func (s *snapSeed) write(tb testing.TB, path string) *os.File {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(s.size); err != nil {
		tb.Fatal(err)
	}
	for off, b := range s.blocks {
		if _, err := f.WriteAt(b, off); err != nil {
			tb.Fatal(err)
		}
	}
	return f
}

// at is the seed's byte at off (0 in a hole or past the end).
func (s *snapSeed) at(off int64) byte {
	if b := s.blocks[off-off%pageSize]; b != nil && off < s.size {
		return b[off%pageSize]
	}
	return 0
}

// Fuzz modes: how the mutated file is made consistent again before it is
// opened, so the fuzzer gets past the checks a random edit trips first.
const (
	snapFuzzFit     uint8 = 1 << iota // file size set to what the header claims (up to MemMax)
	snapFuzzRecount                   // header Pages set to the file's non-zero pages
	snapFuzzReseal                    // header Sum recomputed
)

// FuzzOpenSnapshot: any file mutated from a valid snapshot — a patch in the
// header, the vCPU state, the memory image or anywhere, the file cut or
// grown, then optionally resized, recounted and resealed as the writer
// would — is either refused by OpenSnapshot with ErrSnapshot and a message
// naming the file and the fault, or opened as a snapshot whose every
// promise holds: RAM size valid and the file exactly that long (a mapping
// past the end would SIGBUS the worker), the non-zero page map the size of
// RAM and true to the file, MSR and XCR counts within their arrays. The
// opened snapshot is then restored as far as needs no KVM: RAM mapped and
// read, every page discarded, the boot info read back and the pending wait
// served, none of which may panic or reach outside RAM. An unmodified
// file always opens.
func FuzzOpenSnapshot(f *testing.F) {
	seed := newSnapSeed(f)
	stateLen := uint32(binary.Size(snapState{}))
	le := binary.LittleEndian
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	const hdr, state, ram, abs = 0, 1, 2, 3
	all := uint8(snapFuzzFit | snapFuzzRecount | snapFuzzReseal)
	f.Add(uint8(hdr), uint32(0), []byte(nil), int64(0), uint8(0))                              // untouched
	f.Add(uint8(hdr), uint32(0), []byte(nil), int64(0), all)                                   // resealed as is
	f.Add(uint8(hdr), uint32(0), []byte("KILNSNAQ"), int64(0), all)                            // magic
	f.Add(uint8(hdr), uint32(8), u32(2), int64(0), all)                                        // format
	f.Add(uint8(hdr), uint32(12), u32(abi.Version+1), int64(0), all)                           // ABI (Matches refuses it)
	f.Add(uint8(hdr), uint32(16), u64(16<<20), int64(0), all)                                  // memory size, file fitted
	f.Add(uint8(hdr), uint32(16), u64(abi.MemMax), int64(0), all)                              // the largest
	f.Add(uint8(hdr), uint32(16), u64(abi.MemMax+2<<20), int64(0), all)                        // too large
	f.Add(uint8(hdr), uint32(16), u64(4<<20), int64(0), all)                                   // too small
	f.Add(uint8(hdr), uint32(16), u64(^uint64(0)-snapMemOff+1), int64(0), all)                 // MemOff+MemSize wraps
	f.Add(uint8(hdr), uint32(24), u64(4096), int64(0), all)                                    // memory offset
	f.Add(uint8(hdr), uint32(40), u64(8), int64(0), all)                                       // state length
	f.Add(uint8(hdr), uint32(48), u64(1), int64(0), snapFuzzReseal)                            // page count
	f.Add(uint8(hdr), uint32(170), []byte{1}, int64(0), uint8(0))                              // the sum
	f.Add(uint8(state), uint32(binary.Size(snapState{}.Regs)), []byte{9}, int64(0), all)       // a register
	f.Add(uint8(state), stateLen-8*5-uint32(binary.Size(kvmMSRs{})), u32(17), int64(0), all)   // MSR count
	f.Add(uint8(state), stateLen-8*5-uint32(binary.Size(kvmMSRs{}))-8, u32(1), int64(0), all)  // has XCRs
	f.Add(uint8(state), stateLen-8*4, u64(0x1000), int64(0), all)                              // wait below mapped RAM
	f.Add(uint8(state), stateLen-8*3, u64(minMemSize-16), int64(0), all)                       // input past RAM
	f.Add(uint8(state), stateLen-8*2, u64(^uint64(0)), int64(0), all)                          // input capacity
	f.Add(uint8(ram), uint32(abi.BootInfoGPA), []byte{0}, int64(0), all)                       // boot info magic
	f.Add(uint8(ram), uint32(0x300000), []byte("new page"), int64(0), all)                     // a page gained
	f.Add(uint8(ram), uint32(abi.KernelBase), make([]byte, 2*pageSize), int64(0), all)         // a page lost
	f.Add(uint8(ram), uint32(abi.KernelBase+100), []byte{'K'}, int64(0), uint8(0))             // RAM flipped
	f.Add(uint8(abs), uint32(0), []byte(nil), int64(seed.size-pageSize), uint8(0))             // truncated
	f.Add(uint8(abs), uint32(0), []byte(nil), int64(seed.size-pageSize), all&^snapFuzzFit)     // truncated, resealed
	f.Add(uint8(abs), uint32(0), []byte(nil), int64(seed.size+pageSize), uint8(0))             // grown
	f.Add(uint8(abs), uint32(0), []byte(nil), int64(100), uint8(0))                            // inside the header
	f.Add(uint8(abs), uint32(0), []byte(nil), int64(-1), uint8(0))                             // empty
	f.Add(uint8(abs), uint32(seed.size+pageSize), []byte("tail"), int64(0), snapFuzzReseal)    // data past the end
	f.Add(uint8(abs), uint32(snapStateAt+stateLen+8), []byte("gap"), int64(0), snapFuzzReseal) // between state and RAM

	path := filepath.Join(f.TempDir(), "fuzz.snap")
	f.Fuzz(func(t *testing.T, region uint8, off uint32, patch []byte, size int64, mode uint8) {
		file := seed.write(t, path)
		defer file.Close()
		var at int64
		switch region % 4 {
		case hdr:
			at = int64(off % pageSize)
		case state:
			at = snapStateAt + int64(off%stateLen)
		case ram:
			at = snapMemOff + int64(off%minMemSize)
		default:
			at = int64(off) % (seed.size + 4*pageSize)
		}
		patch = patch[:min(len(patch), 64<<10)]
		changed := false
		for i, c := range patch {
			changed = changed || seed.at(at+int64(i)) != c
		}
		changed = changed || at+int64(len(patch)) > seed.size
		if _, err := file.WriteAt(patch, at); err != nil {
			t.Fatal(err)
		}
		if size != 0 {
			n := int64(0) // -1 and below: empty
			if size > 0 {
				n = size % (seed.size + 4*pageSize)
			}
			changed = changed || n != seed.size
			if err := file.Truncate(n); err != nil {
				t.Fatal(err)
			}
		}
		if mode != 0 {
			snapFuzzRepair(t, file, mode)
		}
		s, err := OpenSnapshot(path)
		if err != nil {
			prefix := ErrSnapshot.Error() + ": " + path + ": "
			if !errors.Is(err, ErrSnapshot) || !strings.HasPrefix(err.Error(), prefix) || len(err.Error()) < len(prefix)+8 {
				t.Fatalf("refused with %q: want ErrSnapshot, the path and why", err)
			}
			if !changed {
				t.Fatalf("the unmodified snapshot was refused: %v", err)
			}
			return
		}
		defer s.Close()
		checkOpenedSnapshot(t, s)
	})
}

// snapFuzzRepair does to file what mode asks, reading the header as it is
// now (however mangled).
func snapFuzzRepair(t *testing.T, file *os.File, mode uint8) {
	var h snapHeader
	hb := make([]byte, binary.Size(h))
	if _, err := file.ReadAt(hb, 0); err != nil {
		return // too short to have a header
	}
	_ = binary.Read(bytes.NewReader(hb), binary.LittleEndian, &h)
	if mode&snapFuzzFit != 0 && h.MemOff <= abi.MemMax && h.MemSize <= abi.MemMax {
		if err := file.Truncate(int64(h.MemOff + h.MemSize)); err != nil {
			t.Fatal(err)
		}
	}
	if mode&(snapFuzzRecount|snapFuzzReseal) == 0 {
		return
	}
	sb := make([]byte, binary.Size(snapState{}))
	_, _ = file.ReadAt(sb, snapStateAt) // short: zeros, as they would read
	sum, pages, err := snapshotSum(file, &h, sb, nil)
	if err != nil {
		return
	}
	if mode&snapFuzzRecount != 0 {
		h.Pages = pages
	}
	if mode&snapFuzzReseal != 0 {
		if mode&snapFuzzRecount != 0 {
			sum, _, _ = snapshotSum(file, &h, sb, nil) // Pages is in the header it covers
		}
		h.Sum = sum
	}
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, &h)
	if _, err := file.WriteAt(b.Bytes(), 0); err != nil {
		t.Fatal(err)
	}
}

// checkOpenedSnapshot checks what OpenSnapshot promised about s, then
// restores it as far as that needs no KVM.
func checkOpenedSnapshot(t *testing.T, s *Snapshot) {
	h, st := &s.hdr, &s.state
	fi, err := s.f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case checkMemSize(h.MemSize) != nil:
		t.Fatalf("opened with RAM of %d bytes", h.MemSize)
	case h.MemOff != snapMemOff || uint64(fi.Size()) != h.MemOff+h.MemSize:
		t.Fatalf("opened a %d-byte file claiming RAM of %d bytes at %#x", fi.Size(), h.MemSize, h.MemOff)
	case uint64(len(s.nonZero))*64*pageSize < h.MemSize:
		t.Fatalf("page map of %d words for %d bytes of RAM", len(s.nonZero), h.MemSize)
	case st.MSRs.NMSRs > uint32(len(st.MSRs.Entries)) || st.XCRs.NXCRs > uint32(len(st.XCRs.XCRs)):
		t.Fatalf("opened with %d MSRs and %d XCRs", st.MSRs.NMSRs, st.XCRs.NXCRs)
	}
	pages := 0
	for _, w := range s.nonZero {
		pages += bits.OnesCount64(w)
	}
	if uint64(pages) != h.Pages {
		t.Fatalf("page map has %d pages, header %d", pages, h.Pages)
	}

	mem, err := mapSnapshotMemory(s.f, h.MemOff, h.MemSize, s.nonZero)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	// Pages against the file and the map: the ones the map names and the
	// last (a mapping past the file's end faults there), and every one
	// when RAM is small enough to read whole.
	whole := h.MemSize <= 64<<20
	zero := make([]byte, pageSize)
	fb := make([]byte, 1<<20)
	for gpa := uint64(0); gpa < h.MemSize; {
		n := uint64(pageSize)
		if whole {
			n = min(uint64(len(fb)), h.MemSize-gpa)
		} else if !mem.snapPage(gpa) && gpa+pageSize != h.MemSize {
			gpa += pageSize
			continue
		}
		if _, err := s.f.ReadAt(fb[:n], int64(h.MemOff+gpa)); err != nil {
			t.Fatalf("read RAM [%#x, +%#x): %v", gpa, n, err)
		}
		for p := uint64(0); p < n; p += pageSize {
			pg := mem.b[gpa+p : gpa+p+pageSize]
			if !bytes.Equal(pg, fb[p:p+pageSize]) {
				t.Fatalf("mapped page %#x differs from the file", gpa+p)
			}
			if nz := !bytes.Equal(pg, zero); nz != mem.snapPage(gpa+p) {
				t.Fatalf("page %#x: non-zero %v, page map says %v", gpa+p, nz, !nz)
			}
		}
		gpa += n
	}
	_ = s.Matches(Config{Kernel: []byte("kernel"), Program: []byte("program"), Args: []string{"fn"}})

	// The pending wait, served as a restored VM's start serves it: its
	// addresses come from the file, so they are checked like a guest's.
	vm := &VM{mem: mem, cpu: &vcpu{fd: -1}, stats: &stats{}, input: newInputPump(nil)}
	bi, err := readBootInfo(mem)
	if err != nil && !errors.Is(err, ErrSnapshot) {
		t.Fatalf("boot info: %v, want ErrSnapshot", err)
	}
	if err == nil {
		vm.bootInfo = bi
		if err := writeBootInfo(mem, bi); err != nil {
			t.Fatalf("boot info read back but not written: %v", err)
		}
	}
	a := abi.HCIOArgs{InGPA: st.InGPA, InCap: st.InCap, DeadlineTSC: st.Deadln, Flags: abi.IOWaitInput}
	if r := vm.completeWait(context.Background(), st.WaitGPA, a); r != nil && r.Reason != ReasonBadHypercall {
		t.Fatalf("pending wait ended with reason %d: %s", r.Reason, r.Message)
	}

	// Every page given back: each reads zero after, whatever the map said.
	mem.discard(abi.KernelLimit, h.MemSize-abi.KernelLimit)
	for gpa := uint64(abi.KernelLimit); gpa < h.MemSize; gpa += pageSize {
		if (whole || mem.snapPage(gpa) || gpa+pageSize == h.MemSize) && !bytes.Equal(mem.b[gpa:gpa+pageSize], zero) {
			t.Fatalf("page %#x not zero after its discard", gpa)
		}
	}
}
