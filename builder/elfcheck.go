package builder

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode"
)

// DefaultMaxSize is the largest program CheckELF accepts when given no limit.
const DefaultMaxSize = 64 << 20

// ELF constants CheckELF needs; debug/elf has them too, but the checker reads
// the raw header itself so that every rejection can name the exact byte
// range at fault, and so a hostile file never reaches a general parser.
const (
	ehdrSize    = 64
	phdrSize    = 56
	elfClass64  = 2
	elfClass32  = 1
	elfDataLE   = 1
	etExec      = 2
	etDyn       = 3
	emX86_64    = 62
	ptLoad      = 1
	ptInterp    = 3
	maxPhnum    = 0xffff
	maxInterpSz = 4096
)

var machines = map[uint16]string{
	0: "no machine", 2: "SPARC", 3: "i386", 8: "MIPS", 20: "PowerPC", 21: "ppc64", 22: "s390x",
	40: "32-bit ARM", 43: "SPARC64", 50: "IA-64", 183: "aarch64", 243: "riscv64", 258: "loongarch64",
}

var elfTypes = map[uint16]string{0: "ET_NONE", 1: "a relocatable object (ET_REL)", 4: "a core dump (ET_CORE)"}

// CheckELF accepts exactly the programs Kiln can boot: a 64-bit
// little-endian x86-64 ELF executable, statically linked (ET_EXEC, or
// ET_DYN without an interpreter: static-pie), with at least one loadable
// segment, every program header and segment inside the file, and at most
// maxSize bytes (0 → DefaultMaxSize). A rejection is an *ELFError whose
// message is one sentence telling the user what is wrong and what to do.
func CheckELF(b []byte, maxSize int64) error {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if int64(len(b)) > maxSize {
		return reject("too big: %s, the limit is %s", mib(int64(len(b))), mib(maxSize))
	}
	if len(b) < 4 || string(b[:4]) != "\x7fELF" {
		return reject("not an ELF file (starts with %s): upload a static x86-64 Linux executable", describeStart(b))
	}
	if len(b) < ehdrSize {
		return reject("truncated: the ELF header needs %d bytes, the file has %d", ehdrSize, len(b))
	}
	switch b[4] {
	case elfClass64:
	case elfClass32:
		return reject("a 32-bit ELF (ELFCLASS32): Kiln runs 64-bit x86-64 programs, build without -m32")
	default:
		return reject("bad ELF class %d: not a valid ELF file", b[4])
	}
	if b[5] != elfDataLE {
		return reject("a big-endian ELF: Kiln runs little-endian x86-64 programs")
	}
	le := binary.LittleEndian
	machine := le.Uint16(b[18:])
	if machine != emX86_64 {
		name, ok := machines[machine]
		if !ok {
			name = fmt.Sprintf("machine %d", machine)
		}
		return reject("built for %s, Kiln runs x86-64: cross-compile with GOARCH=amd64 or an x86_64 compiler", name)
	}
	typ := le.Uint16(b[16:])
	if typ != etExec && typ != etDyn {
		name, ok := elfTypes[typ]
		if !ok {
			name = fmt.Sprintf("ELF type %d", typ)
		}
		return reject("%s, not an executable: link it into a static executable", name)
	}
	phoff := le.Uint64(b[32:])
	phentsize := le.Uint16(b[54:])
	phnum := le.Uint16(b[56:])
	if phnum == 0 {
		return reject("no program headers: not a loadable executable")
	}
	if phentsize != phdrSize {
		return reject("program header size %d, want %d: not a valid ELF64 file", phentsize, phdrSize)
	}
	size := uint64(len(b))
	if phoff > size {
		return reject("truncated: program headers start at byte %d, past the end of the %d-byte file", phoff, size)
	}
	var loads int
	var interp string
	// All headers must be in the file before any is interpreted, so the
	// sentence names the first missing header rather than a segment that a
	// cut header table happens to point past.
	if end := phoff + uint64(phnum)*phdrSize; end > size {
		return reject("truncated: program header %d ends past the file", (size-phoff)/phdrSize)
	}
	for i := uint64(0); i < uint64(phnum); i++ {
		off := phoff + i*phdrSize
		ph := b[off : off+phdrSize]
		ptype := le.Uint32(ph[0:])
		pOffset := le.Uint64(ph[8:])
		pFilesz := le.Uint64(ph[32:])
		pMemsz := le.Uint64(ph[40:])
		switch ptype {
		case ptLoad:
			loads++
			if pOffset > size || pFilesz > size-pOffset {
				return reject("truncated: segment %d (offset %d, %d bytes) ends past the %d-byte file", i, pOffset, pFilesz, size)
			}
			if pMemsz < pFilesz {
				return reject("segment %d is smaller in memory (%d bytes) than in the file (%d): not a valid ELF file", i, pMemsz, pFilesz)
			}
		case ptInterp:
			if pOffset > size || pFilesz > size-pOffset {
				return reject("truncated: the interpreter path (program header %d) ends past the file", i)
			}
			s := b[pOffset : pOffset+pFilesz]
			if len(s) > maxInterpSz {
				s = s[:maxInterpSz]
			}
			interp = printable(strings.TrimRight(string(s), "\x00"))
			if interp == "" {
				interp = "unnamed"
			}
		}
	}
	if interp != "" {
		return reject("dynamically linked (interpreter %s): build with -static (C) or CGO_ENABLED=0 (Go)", interp)
	}
	if loads == 0 {
		return reject("no loadable segment (PT_LOAD): not an executable")
	}
	return nil
}

// ELFError is why CheckELF refused a program. Its message is meant for the
// user as it stands; it matches ErrBadELF with errors.Is.
type ELFError struct{ Reason string }

func (e *ELFError) Error() string { return e.Reason }

// Unwrap makes errors.Is(err, ErrBadELF) true.
func (e *ELFError) Unwrap() error { return ErrBadELF }

func reject(format string, args ...any) error {
	return &ELFError{Reason: fmt.Sprintf(format, args...)}
}

func mib(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// describeStart names what a non-ELF upload looks like: its first line when
// that is text (a script's #! line, say), else its first bytes in hex.
func describeStart(b []byte) string {
	if len(b) == 0 {
		return "nothing: the file is empty"
	}
	line := b
	if i := strings.IndexByte(string(b[:min(len(b), 200)]), '\n'); i >= 0 {
		line = b[:i]
	}
	if len(line) > 40 {
		line = line[:40]
	}
	text := true
	for _, r := range string(line) {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) && r != '\t' {
			text = false
			break
		}
	}
	if text && len(line) > 0 {
		return string(line)
	}
	n := min(len(b), 8)
	return fmt.Sprintf("bytes % x", b[:n])
}

// printable keeps an attacker-chosen string from carrying control characters
// into logs and terminals.
func printable(s string) string {
	if len(s) > 256 {
		s = s[:256] + "…"
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}
