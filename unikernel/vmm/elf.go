package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"
)

// The ELF loader. It reads only the ELF header and the program headers,
// checks each against the file and the guest region the image may occupy,
// and copies PT_LOAD segments into guest memory. Fresh guest memory is
// zero, so .bss needs no work.

const (
	elfHeaderSize = 64
	elfPhdrSize   = 56
	elfMaxPhnum   = 128
	ptLoad        = 1
	ptInterp      = 3
	ptPhdr        = 6
	etExec        = 2
	etDyn         = 3
	emX8664       = 62
	pfX           = 1
)

// elfSegment is one PT_LOAD, already relocated to its guest address.
type elfSegment struct {
	GPA    uint64
	MemSz  uint64
	Off    uint64
	FileSz uint64
	Flags  uint32
}

// elfImage is a checked, loadable image.
type elfImage struct {
	Entry    uint64 // relocated
	Bias     uint64 // added to every p_vaddr (static PIE); 0 for ET_EXEC
	Phdr     uint64 // guest address of the program headers; 0 if not loaded
	Phnum    uint64
	Phent    uint64
	Low      uint64 // lowest loaded address
	High     uint64 // end of the highest segment, rounded up to a page
	Segments []elfSegment
}

func badELF(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadELF, fmt.Sprintf(format, args...))
}

// parseELF checks that b is a static x86-64 ELF whose segments all fall in
// guest [lo, hi). ET_DYN (static PIE) is placed so its lowest segment
// starts at pieBase.
func parseELF(b []byte, lo, hi, pieBase uint64) (*elfImage, error) {
	if !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return nil, badELF("not an ELF file (starts with %q)", b[:min(len(b), 4)])
	}
	if len(b) < elfHeaderSize {
		return nil, badELF("%d bytes is too short for an ELF header", len(b))
	}
	if b[4] != 2 {
		return nil, badELF("ELF class %d: not a 64-bit image", b[4])
	}
	if b[5] != 1 {
		return nil, badELF("ELF data encoding %d: not little-endian", b[5])
	}
	le := binary.LittleEndian
	typ := le.Uint16(b[16:])
	machine := le.Uint16(b[18:])
	if machine != emX8664 {
		return nil, badELF("machine %d (%v): not x86-64", machine, elf.Machine(machine))
	}
	if typ != etExec && typ != etDyn {
		return nil, badELF("ELF type %v: not an executable", elf.Type(typ))
	}
	entry := le.Uint64(b[24:])
	phoff := le.Uint64(b[32:])
	phent := uint64(le.Uint16(b[54:]))
	phnum := uint64(le.Uint16(b[56:]))
	if phent != elfPhdrSize {
		return nil, badELF("program header size %d, want %d", phent, elfPhdrSize)
	}
	if phnum == 0 || phnum > elfMaxPhnum {
		return nil, badELF("%d program headers (want 1..%d)", phnum, elfMaxPhnum)
	}
	size := uint64(len(b))
	if phoff > size || phnum*phent > size-phoff {
		return nil, badELF("program headers [%#x, +%#x) run past the end of the %d-byte file", phoff, phnum*phent, size)
	}

	img := &elfImage{Phnum: phnum, Phent: phent}
	var segs []elfSegment
	phdrVaddr, havePhdr := uint64(0), false
	for i := uint64(0); i < phnum; i++ {
		p := b[phoff+i*phent:]
		ptype := le.Uint32(p[0:])
		flags := le.Uint32(p[4:])
		off := le.Uint64(p[8:])
		vaddr := le.Uint64(p[16:])
		filesz := le.Uint64(p[32:])
		memsz := le.Uint64(p[40:])
		switch ptype {
		case ptInterp:
			return nil, badELF("dynamically linked (PT_INTERP): link it statically")
		case ptPhdr:
			phdrVaddr, havePhdr = vaddr, true
		case ptLoad:
			if filesz > memsz {
				return nil, badELF("segment %d: file size %#x exceeds memory size %#x", i, filesz, memsz)
			}
			if off > size || filesz > size-off {
				return nil, badELF("segment %d: file range [%#x, +%#x) runs past the end of the %d-byte file", i, off, filesz, size)
			}
			if memsz == 0 {
				continue
			}
			if vaddr+memsz < vaddr {
				return nil, badELF("segment %d: address range [%#x, +%#x) wraps", i, vaddr, memsz)
			}
			segs = append(segs, elfSegment{GPA: vaddr, MemSz: memsz, Off: off, FileSz: filesz, Flags: flags})
		}
	}
	if len(segs) == 0 {
		return nil, badELF("no loadable segment")
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].GPA < segs[j].GPA })
	if typ == etDyn {
		low := segs[0].GPA &^ (pageSize - 1)
		if pieBase < low {
			return nil, badELF("static PIE linked above its load base (%#x)", low)
		}
		img.Bias = pieBase - low
	}
	for i := range segs {
		s := &segs[i]
		s.GPA += img.Bias
		if s.GPA < s.GPA-img.Bias || s.GPA < lo || s.GPA > hi || s.MemSz > hi-s.GPA {
			return nil, badELF("segment at %#x size %#x is outside the guest region [%#x, %#x)", s.GPA-img.Bias, s.MemSz, lo, hi)
		}
		if i > 0 && segs[i-1].GPA+segs[i-1].MemSz > s.GPA {
			return nil, badELF("segments at %#x and %#x overlap", segs[i-1].GPA-img.Bias, s.GPA-img.Bias)
		}
	}
	img.Segments = segs
	img.Entry = entry + img.Bias
	inExec := false
	for _, s := range segs {
		if img.Entry >= s.GPA && img.Entry < s.GPA+s.MemSz && s.Flags&pfX != 0 {
			inExec = true
		}
	}
	if !inExec {
		return nil, badELF("entry point %#x is not in an executable segment", entry)
	}
	img.Low = segs[0].GPA
	last := segs[len(segs)-1]
	img.High = alignUp(last.GPA+last.MemSz, pageSize)
	if havePhdr {
		img.Phdr = phdrVaddr + img.Bias
	} else {
		// musl's static binaries have no PT_PHDR: find the headers through
		// the segment that maps their file offset, as Linux does.
		for _, s := range segs {
			if phoff >= s.Off && phoff+phnum*phent <= s.Off+s.FileSz {
				img.Phdr = s.GPA + (phoff - s.Off)
			}
		}
	}
	return img, nil
}

// load copies the file-backed part of every segment into guest memory.
// Memory must be fresh (zero), which .bss relies on.
func (img *elfImage) load(mem *Memory, file []byte) error {
	for _, s := range img.Segments {
		if err := mem.Write(s.GPA, file[s.Off:s.Off+s.FileSz]); err != nil {
			return badELF("segment at %#x: %v", s.GPA, err)
		}
	}
	return nil
}

// elfSymbol returns the value of a symbol from b's symbol table.
func elfSymbol(b []byte, name string) (uint64, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return 0, badELF("%v", err)
	}
	syms, err := f.Symbols()
	if err != nil {
		return 0, badELF("no symbol table (%v): cannot find %s", err, name)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value, nil
		}
	}
	return 0, badELF("symbol %s not found", name)
}

const pageSize = 4096

func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }
