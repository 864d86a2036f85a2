package vmm

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// mkELF builds a minimal x86-64 ELF: one header, the given program headers
// (type, flags, off, vaddr, filesz, memsz) and size bytes of file.
func mkELF(typ uint16, entry uint64, size int, phdrs ...[6]uint64) []byte {
	b := make([]byte, max(size, elfHeaderSize+len(phdrs)*elfPhdrSize))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], typ)
	le.PutUint16(b[18:], emX8664)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], entry)
	le.PutUint64(b[32:], elfHeaderSize)
	le.PutUint16(b[52:], elfHeaderSize)
	le.PutUint16(b[54:], elfPhdrSize)
	le.PutUint16(b[56:], uint16(len(phdrs)))
	for i, p := range phdrs {
		o := elfHeaderSize + i*elfPhdrSize
		le.PutUint32(b[o:], uint32(p[0]))
		le.PutUint32(b[o+4:], uint32(p[1]))
		le.PutUint64(b[o+8:], p[2])
		le.PutUint64(b[o+16:], p[3])
		le.PutUint64(b[o+32:], p[4])
		le.PutUint64(b[o+40:], p[5])
	}
	return b
}

const testHi = 64<<20 - stackSize

func TestParseELF(t *testing.T) {
	good := mkELF(etExec, 0x401000, 0x3000,
		[6]uint64{ptLoad, 4, 0, 0x400000, 0x1000, 0x1000},
		[6]uint64{ptLoad, 5, 0x1000, 0x401000, 0x1000, 0x1000},
		[6]uint64{ptLoad, 6, 0x2000, 0x402000, 0x800, 0x5000})
	img, err := parseELF(good, abi.UserBase, testHi, abi.UserBase)
	if err != nil {
		t.Fatal(err)
	}
	if img.Entry != 0x401000 || img.Low != 0x400000 || img.High != 0x407000 || len(img.Segments) != 3 {
		t.Errorf("image %+v", img)
	}
	if img.Phdr != 0x400000+elfHeaderSize || img.Phnum != 3 || img.Phent != elfPhdrSize {
		t.Errorf("phdr %#x phnum %d phent %d: AT_PHDR must come from e_phoff without PT_PHDR", img.Phdr, img.Phnum, img.Phent)
	}

	pie := mkELF(etDyn, 0x1000, 0x2000,
		[6]uint64{ptLoad, 5, 0, 0, 0x2000, 0x2000}, [6]uint64{ptPhdr, 4, 64, 64, 56 * 2, 56 * 2})
	img, err = parseELF(pie, abi.UserBase, testHi, abi.UserBase)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bias != abi.UserBase || img.Entry != abi.UserBase+0x1000 || img.Phdr != abi.UserBase+64 {
		t.Errorf("static PIE: %+v", img)
	}

	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "not an ELF"},
		{"short", []byte("\x7fELF\x02\x01"), "too short"},
		{"interp", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptInterp, 4, 0, 0, 10, 10},
			[6]uint64{ptLoad, 5, 0, 0x401000, 0x100, 0x100}), "PT_INTERP"},
		{"filesz>memsz", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0, 0x401000, 0x200, 0x100}), "exceeds memory size"},
		{"past file", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0x1000, 0x401000, 0x2000, 0x2000}), "past the end"},
		{"below region", mkELF(etExec, 0x300000, 0x2000, [6]uint64{ptLoad, 5, 0, 0x300000, 0x100, 0x100}), "outside the guest region"},
		{"huge", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0, 0x401000, 0x100, 1 << 62}), "outside the guest region"},
		{"wraps", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0, 0xfffffffffffff000, 0x100, 0x2000}), "wraps"},
		{"overlap", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0, 0x401000, 0x100, 0x2000},
			[6]uint64{ptLoad, 6, 0, 0x402000, 0x100, 0x100}), "overlap"},
		{"entry outside", mkELF(etExec, 0x500000, 0x2000, [6]uint64{ptLoad, 5, 0, 0x401000, 0x100, 0x100}), "entry point"},
		{"entry not exec", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 6, 0, 0x401000, 0x100, 0x100}), "entry point"},
		{"no load", mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptPhdr, 4, 0, 0, 0, 0}), "no loadable"},
		{"no phdrs", mkELF(etExec, 0x401000, 0x2000), "0 program headers"},
	} {
		_, err := parseELF(tc.b, abi.UserBase, testHi, abi.UserBase)
		if !errors.Is(err, ErrBadELF) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadELF with %q", tc.name, err, tc.want)
		}
	}
	mut := func(off int, v ...byte) []byte {
		b := append([]byte(nil), good...)
		copy(b[off:], v)
		return b
	}
	for name, b := range map[string][]byte{
		"32-bit":      mut(4, 1),
		"big-endian":  mut(5, 2),
		"aarch64":     mut(18, 183, 0),
		"relocatable": mut(16, 1, 0),
		"phentsize":   mut(54, 32, 0),
		"phoff":       mut(32, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
	} {
		if _, err := parseELF(b, abi.UserBase, testHi, abi.UserBase); !errors.Is(err, ErrBadELF) {
			t.Errorf("%s: %v, want ErrBadELF", name, err)
		}
	}
}

func TestLoadELF(t *testing.T) {
	mem, err := newMemory(minMemSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	b := mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0x1000, 0x401000, 0x10, 0x100})
	copy(b[0x1000:], "0123456789abcdef")
	img, err := parseELF(b, abi.UserBase, mem.Size()-stackSize, abi.UserBase)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.load(mem, b); err != nil {
		t.Fatal(err)
	}
	got, _ := mem.Slice(0x401000, 0x20)
	if string(got[:16]) != "0123456789abcdef" || string(got[16:]) != string(make([]byte, 16)) {
		t.Errorf("loaded %q", got)
	}
}

// FuzzLoadELF: whatever the bytes, the loader returns an image that lies
// inside its region and the file, or ErrBadELF — never a panic.
func FuzzLoadELF(f *testing.F) {
	f.Add(mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptLoad, 5, 0, 0x401000, 0x100, 0x100}))
	f.Add(mkELF(etDyn, 0x10, 0x2000, [6]uint64{ptLoad, 5, 0, 0, 0x100, 0x1000}, [6]uint64{ptPhdr, 4, 64, 64, 112, 112}))
	f.Add(mkELF(etExec, 0x401000, 0x2000, [6]uint64{ptInterp, 4, 0, 0, 1, 1}))
	f.Add([]byte("\x7fELF"))
	f.Add([]byte{})
	mem, err := newMemory(minMemSize)
	if err != nil {
		f.Fatal(err)
	}
	hi := mem.Size() - stackSize
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := parseELF(b, abi.UserBase, hi, abi.UserBase)
		if err != nil {
			if !errors.Is(err, ErrBadELF) {
				t.Fatalf("error %v does not wrap ErrBadELF", err)
			}
			return
		}
		for _, s := range img.Segments {
			if s.GPA < abi.UserBase || s.GPA+s.MemSz > hi || s.Off+s.FileSz > uint64(len(b)) || s.FileSz > s.MemSz {
				t.Fatalf("accepted a bad segment %+v", s)
			}
		}
		if err := img.load(mem, b); err != nil {
			t.Fatalf("load of an accepted image: %v", err)
		}
	})
}
