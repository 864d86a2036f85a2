package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/internal/cctest"
)

const helloC = `#include <stdio.h>
int main(void) { puts("hello"); return 0; }
`

// compile builds helloC with cc and flags (internal/cctest: a skip where the
// compiler is missing, a failure where KILN_REQUIRE_CC=1).
func compile(t testing.TB, cc string, flags ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(cctest.Build(t, cc, helloC, flags...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantReject(t *testing.T, b []byte, max int64, substr string) {
	t.Helper()
	err := CheckELF(b, max)
	if err == nil {
		t.Fatalf("CheckELF accepted it, want a rejection containing %q", substr)
	}
	var ee *ELFError
	if !errors.Is(err, ErrBadELF) || !errors.As(err, &ee) {
		t.Fatalf("CheckELF err = %#v, want an *ELFError matching ErrBadELF", err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("CheckELF err = %q, want it to contain %q", err, substr)
	}
}

func TestCheckELFAcceptsStaticPrograms(t *testing.T) {
	for _, tc := range []struct {
		name, cc string
		flags    []string
	}{
		{"gcc-static", "gcc", []string{"-static", "-O2"}},
		{"gcc-static-pie", "gcc", []string{"-static-pie", "-O2"}},
		{"musl-static", "musl-gcc", []string{"-static", "-O2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := compile(t, tc.cc, tc.flags...)
			if err := CheckELF(b, 0); err != nil {
				t.Fatalf("CheckELF(%s) = %v", tc.name, err)
			}
		})
	}
}

func TestCheckELFRejectsDynamic(t *testing.T) {
	t.Run("glibc", func(t *testing.T) {
		wantReject(t, compile(t, "gcc"), 0, "dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2): build with -static")
	})
	t.Run("musl", func(t *testing.T) {
		wantReject(t, compile(t, "musl-gcc"), 0, "dynamically linked (interpreter /lib/ld-musl-x86_64.so.1): build with -static")
	})
}

func TestCheckELFRejectsCrafted(t *testing.T) {
	static := compile(t, "gcc", "-static")
	patch := func(f func(b []byte)) []byte {
		b := bytes.Clone(static)
		f(b)
		return b
	}
	phoff := binary.LittleEndian.Uint64(static[32:])

	wantReject(t, []byte("#!/bin/sh\necho hi\n"), 0, "not an ELF file (starts with #!/bin/sh)")
	wantReject(t, []byte("PK\x03\x04\x00\x00binary"), 0, "not an ELF file (starts with bytes 50 4b 03 04")
	wantReject(t, nil, 0, "the file is empty")
	wantReject(t, static[:40], 0, "truncated: the ELF header needs 64 bytes")
	wantReject(t, patch(func(b []byte) { binary.LittleEndian.PutUint16(b[18:], 183) }), 0,
		"built for aarch64, Kiln runs x86-64")
	wantReject(t, patch(func(b []byte) { b[4] = 1 }), 0, "32-bit")
	wantReject(t, patch(func(b []byte) { b[5] = 2 }), 0, "big-endian")
	wantReject(t, patch(func(b []byte) { binary.LittleEndian.PutUint16(b[16:], 1) }), 0, "relocatable object")
	wantReject(t, static[:phoff+3*56+10], 0, "truncated: program header 3 ends past the file")
	wantReject(t, patch(func(b []byte) { binary.LittleEndian.PutUint64(b[32:], uint64(len(b))+1) }), 0,
		"truncated: program headers start at byte")
	wantReject(t, patch(func(b []byte) { binary.LittleEndian.PutUint16(b[56:], 0) }), 0, "no program headers")
	wantReject(t, patch(func(b []byte) { binary.LittleEndian.PutUint16(b[54:], 32) }), 0, "program header size 32")
	// Turn every PT_LOAD into PT_NOTE: nothing left to load.
	wantReject(t, patch(func(b []byte) {
		n := binary.LittleEndian.Uint16(b[56:])
		for i := uint64(0); i < uint64(n); i++ {
			p := b[phoff+i*56:]
			if binary.LittleEndian.Uint32(p) == 1 {
				binary.LittleEndian.PutUint32(p, 4)
			}
		}
	}), 0, "no loadable segment")
	// A file cut inside its last loadable segment.
	f, err := elf.NewFile(bytes.NewReader(static))
	if err != nil {
		t.Fatal(err)
	}
	var end uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Filesz > 0 {
			end = max(end, p.Off+p.Filesz)
		}
	}
	wantReject(t, static[:end-1], 0, "ends past the")
}

func TestCheckELFSizeLimit(t *testing.T) {
	big := make([]byte, 80<<20)
	copy(big, "\x7fELF")
	wantReject(t, big, 0, "too big: 80 MiB, the limit is 64 MiB")
	static := compile(t, "gcc", "-static")
	wantReject(t, static, int64(len(static)-1), "too big")
	if err := CheckELF(static, int64(len(static))); err != nil {
		t.Fatalf("a file exactly at the limit was refused: %v", err)
	}
}

func TestBuild(t *testing.T) {
	prog := compile(t, "musl-gcc", "-static")
	kernel := compile(t, "gcc", "-static") // any bytes will do as the kernel part here
	data, digest, err := Build(Spec{Name: "hello", Kind: image.KindExec, MemoryBytes: 33 << 20, Env: []string{"A=1"}, Args: []string{"x"}}, prog, kernel)
	if err != nil {
		t.Fatal(err)
	}
	if digest != image.Digest(data) {
		t.Fatalf("digest %s does not match the image bytes", digest)
	}
	img, err := image.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	m := img.Manifest
	if m.Name != "hello" || m.Kind != image.KindExec || m.MemoryBytes != 34<<20 || m.TimeoutMS != DefaultTimeoutMs ||
		len(m.Env) != 1 || m.Env[0] != "A=1" || len(m.Args) != 1 || m.Args[0] != "x" {
		t.Fatalf("manifest = %+v; want memory rounded up to 34 MiB and the default timeout", m)
	}
	if !bytes.Equal(img.Program, prog) || !bytes.Equal(img.Kernel, kernel) {
		t.Fatal("image parts differ from the inputs")
	}

	if _, _, err := Build(Spec{Name: "dyn"}, compile(t, "gcc"), kernel); !errors.Is(err, ErrBadELF) {
		t.Fatalf("Build(dynamic) err = %v, want ErrBadELF", err)
	}
	if _, _, err := Build(Spec{Name: "huge", MemoryBytes: 8 << 30}, prog, kernel); !errors.Is(err, ErrBadSpec) {
		t.Fatalf("Build(8 GiB) err = %v, want ErrBadSpec", err)
	}
	if _, _, err := Build(Spec{Name: "k", Kind: "daemon"}, prog, kernel); !errors.Is(err, ErrBadSpec) {
		t.Fatalf("Build(kind daemon) err = %v, want ErrBadSpec", err)
	}
}

func FuzzCheckELF(f *testing.F) {
	if _, err := exec.LookPath("gcc"); err == nil {
		st := compile(f, "gcc", "-static")
		// Only the headers matter to the checker; keep seeds small.
		f.Add(st[:min(len(st), 4096)])
		f.Add(st)
	}
	f.Add([]byte("#!/bin/sh\n"))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := CheckELF(b, 1<<20)
		if err != nil {
			var ee *ELFError
			if !errors.As(err, &ee) || ee.Reason == "" || strings.ContainsAny(ee.Reason, "\n\r\x1b") {
				t.Fatalf("rejection %q is not a one-line ELFError", err)
			}
			return
		}
		// Whatever the checker accepts, the standard library's view of the
		// program headers must agree with, when it can parse the file.
		ef, perr := elf.NewFile(bytes.NewReader(b))
		if perr != nil {
			return
		}
		if ef.Machine != elf.EM_X86_64 || ef.Class != elf.ELFCLASS64 {
			t.Fatalf("accepted machine %v class %v", ef.Machine, ef.Class)
		}
		loads := 0
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatal("accepted a program with PT_INTERP")
			}
			if p.Type == elf.PT_LOAD {
				loads++
				if p.Off+p.Filesz > uint64(len(b)) {
					t.Fatal("accepted a segment past the end of the file")
				}
			}
		}
		if loads == 0 {
			t.Fatal("accepted a program without PT_LOAD")
		}
	})
}
