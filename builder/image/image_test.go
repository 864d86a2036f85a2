package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

var created = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func manifest() Manifest {
	return Manifest{
		ABIVersion:  abi.Version,
		Name:        "hello",
		Kind:        KindServe,
		MemoryBytes: 64 << 20,
		TimeoutMS:   5000,
		Env:         []string{"A=1", "EMPTY="},
		Args:        []string{"--flag", ""},
		Created:     created,
	}
}

var (
	kernel  = []byte("\x7fELF kernel bytes")
	program = []byte("\x7fELF program bytes, a little longer")
)

func TestBuildDecodeRoundTrip(t *testing.T) {
	data, digest, err := Build(manifest(), kernel, program)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != 7+64 || digest != Digest(data) {
		t.Fatalf("digest %q", digest)
	}
	if err := Verify(data, digest); err != nil {
		t.Fatal(err)
	}
	img, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img.Kernel, kernel) || !bytes.Equal(img.Program, program) {
		t.Fatal("parts differ after round trip")
	}
	m := img.Manifest
	if m.Name != "hello" || m.Kind != KindServe || m.MemoryBytes != 64<<20 || m.Timeout() != 5*time.Second ||
		strings.Join(m.Env, ",") != "A=1,EMPTY=" || len(m.Args) != 2 || m.Args[0] != "--flag" ||
		m.ProgramSize != int64(len(program)) || !m.Created.Equal(created) {
		t.Fatalf("manifest after round trip: %+v", m)
	}
	if m.KernelSHA256 != sum(kernel) || m.ProgramSHA256 != sum(program) {
		t.Fatal("hashes not filled")
	}
	// Same inputs, same digest: the image store deduplicates on it.
	_, digest2, err := Build(manifest(), kernel, program)
	if err != nil || digest2 != digest {
		t.Fatalf("Build is not reproducible: %s vs %s (%v)", digest, digest2, err)
	}
	// The member order and names are part of the format.
	tr := tar.NewReader(bytes.NewReader(data))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if strings.Join(names, " ") != "manifest.json kernel.elf program.elf" {
		t.Fatalf("members %v", names)
	}
}

func TestBuildFillsCreated(t *testing.T) {
	m := manifest()
	m.Created = time.Time{}
	data, _, err := Build(m, kernel, program)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(img.Manifest.Created) > time.Minute || img.Manifest.Created.After(time.Now()) {
		t.Fatalf("created %v", img.Manifest.Created)
	}
}

func TestValidate(t *testing.T) {
	base := manifest()
	base.KernelSHA256 = sum(kernel)
	base.ProgramSHA256 = sum(program)
	base.ProgramSize = int64(len(program))
	if err := base.Validate(); err != nil {
		t.Fatalf("valid manifest: %v", err)
	}
	tests := []struct {
		name string
		edit func(*Manifest)
		want error
	}{
		{"abi", func(m *Manifest) { m.ABIVersion = abi.Version + 1 }, ErrUnsupported},
		{"no name", func(m *Manifest) { m.Name = "" }, ErrInvalid},
		{"slash in name", func(m *Manifest) { m.Name = "a/b" }, ErrInvalid},
		{"long name", func(m *Manifest) { m.Name = strings.Repeat("a", MaxNameLen+1) }, ErrInvalid},
		{"kind", func(m *Manifest) { m.Kind = "daemon" }, ErrInvalid},
		{"no kind", func(m *Manifest) { m.Kind = "" }, ErrInvalid},
		{"memory unaligned", func(m *Manifest) { m.MemoryBytes = 65<<20 + 4096 }, ErrInvalid},
		{"memory small", func(m *Manifest) { m.MemoryBytes = 2 << 20 }, ErrInvalid},
		{"memory big", func(m *Manifest) { m.MemoryBytes = 3<<30 + 2<<20 }, ErrInvalid},
		{"timeout zero", func(m *Manifest) { m.TimeoutMS = 0 }, ErrInvalid},
		{"timeout long", func(m *Manifest) { m.TimeoutMS = 15*60*1000 + 1 }, ErrInvalid},
		{"env without =", func(m *Manifest) { m.Env = []string{"A"} }, ErrInvalid},
		{"env empty key", func(m *Manifest) { m.Env = []string{"=x"} }, ErrInvalid},
		{"arg NUL", func(m *Manifest) { m.Args = []string{"a\x00b"} }, ErrInvalid},
		{"hash upper", func(m *Manifest) { m.KernelSHA256 = strings.ToUpper(m.KernelSHA256) }, ErrInvalid},
		{"hash short", func(m *Manifest) { m.ProgramSHA256 = m.ProgramSHA256[:10] }, ErrInvalid},
		{"size", func(m *Manifest) { m.ProgramSize = 0 }, ErrInvalid},
		{"created", func(m *Manifest) { m.Created = time.Time{} }, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := base
			tc.edit(&m)
			if err := m.Validate(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// The edges of the ranges are accepted.
	for _, mem := range []uint64{MinMemory, MaxMemory} {
		m := base
		m.MemoryBytes = mem
		m.TimeoutMS = MaxTimeout.Milliseconds()
		if err := m.Validate(); err != nil {
			t.Errorf("memory %d: %v", mem, err)
		}
	}
}

func TestBuildRejects(t *testing.T) {
	if _, _, err := Build(manifest(), nil, program); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty kernel: %v", err)
	}
	if _, _, err := Build(manifest(), kernel, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty program: %v", err)
	}
	m := manifest()
	m.Kind = "x"
	if _, _, err := Build(m, kernel, program); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad kind: %v", err)
	}
}

type member struct {
	name string
	typ  byte
	data []byte
}

// rawTar writes members as given, so tests can build archives Build refuses to.
func rawTar(t *testing.T, ms ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Typeflag: m.typ, Mode: 0o644, Size: int64(len(m.data))}
		if m.typ != tar.TypeReg {
			h.Size = 0
			h.Linkname = "x"
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if m.typ == tar.TypeReg {
			tw.Write(m.data)
		}
	}
	tw.Close()
	return buf.Bytes()
}

func manifestJSON(t *testing.T, edit func(*Manifest)) []byte {
	m := manifest()
	m.KernelSHA256 = sum(kernel)
	m.ProgramSHA256 = sum(program)
	m.ProgramSize = int64(len(program))
	if edit != nil {
		edit(&m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRejects(t *testing.T) {
	good := manifestJSON(t, nil)
	reg := byte(tar.TypeReg)
	if _, err := Decode(rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program})); err != nil {
		t.Fatalf("the control archive must decode: %v", err)
	}
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrCorrupt},
		{"not tar", []byte("hello, this is not a tar archive at all"), ErrCorrupt},
		{"missing program", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}), ErrCorrupt},
		{"extra member", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}, member{"x", reg, nil}), ErrCorrupt},
		{"duplicate", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}, member{KernelFile, reg, kernel}), ErrCorrupt},
		{"symlink", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}, member{ProgramFile, tar.TypeSymlink, nil}), ErrCorrupt},
		{"path", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}, member{"./" + ProgramFile, reg, program}), ErrCorrupt},
		{"program swapped", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, append([]byte{}, kernel...)}), ErrCorrupt},
		{"kernel tampered", rawTar(t, member{ManifestFile, reg, good}, member{KernelFile, reg, []byte("\x7fELF kernel bytez")}, member{ProgramFile, reg, program}), ErrCorrupt},
		{"bad json", rawTar(t, member{ManifestFile, reg, []byte("{")}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}), ErrCorrupt},
		{"size lies", rawTar(t, member{ManifestFile, reg, manifestJSON(t, func(m *Manifest) { m.ProgramSize++ })}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}), ErrCorrupt},
		{"bad memory", rawTar(t, member{ManifestFile, reg, manifestJSON(t, func(m *Manifest) { m.MemoryBytes = 1 })}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}), ErrInvalid},
		{"other abi", rawTar(t, member{ManifestFile, reg, manifestJSON(t, func(m *Manifest) { m.ABIVersion = 99 })}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}), ErrUnsupported},
		{"huge manifest", rawTar(t, member{ManifestFile, reg, make([]byte, MaxManifestSize+1)}, member{KernelFile, reg, kernel}, member{ProgramFile, reg, program}), ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Decode(tc.data)
			if !errors.Is(err, tc.want) || img != nil {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodeTruncatedAndFlipped(t *testing.T) {
	data, _, err := Build(manifest(), kernel, program)
	if err != nil {
		t.Fatal(err)
	}
	// Offsets of the kernel's and the program's data: each member is a
	// 512-byte header followed by its data padded to 512 bytes.
	mlen := 0
	tr := tar.NewReader(bytes.NewReader(data))
	if h, err := tr.Next(); err == nil {
		mlen = int(h.Size)
	}
	pad := func(n int) int { return (n + 511) &^ 511 }
	kOff := 512 + pad(mlen) + 512
	pOff := kOff + pad(len(kernel)) + 512
	if !bytes.Equal(data[kOff:kOff+len(kernel)], kernel) || !bytes.Equal(data[pOff:pOff+len(program)], program) {
		t.Fatal("layout assumption wrong")
	}
	// Every truncation that cuts into a member must fail, never return a
	// partial image.
	for n := 0; n < pOff+len(program); n += 7 {
		if _, err := Decode(data[:n]); err == nil {
			t.Fatalf("truncated to %d bytes decoded", n)
		}
	}
	// Any flipped byte of the kernel or the program is caught by its hash.
	for _, r := range [][2]int{{kOff, kOff + len(kernel)}, {pOff, pOff + len(program)}} {
		for i := r[0]; i < r[1]; i++ {
			d := bytes.Clone(data)
			d[i] ^= 0x20
			if _, err := Decode(d); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flipping byte %d: %v", i, err)
			}
		}
	}
}

func TestVerifyAndCheckDigest(t *testing.T) {
	data, digest, err := Build(manifest(), kernel, program)
	if err != nil {
		t.Fatal(err)
	}
	other := Digest([]byte("other"))
	if err := Verify(data, other); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("wrong digest: %v", err)
	}
	d := bytes.Clone(data)
	d[len(d)-1] ^= 1
	if err := Verify(d, digest); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("changed data: %v", err)
	}
	for _, bad := range []string{"", "sha256", "sha256:", "sha256:xyz", digest[:len(digest)-1], strings.ToUpper(digest[7:]), "sha256:" + strings.ToUpper(digest[7:]), "sha256:../../etc/passwd"} {
		if err := CheckDigest(bad); !errors.Is(err, ErrBadDigest) {
			t.Errorf("CheckDigest(%q) = %v", bad, err)
		}
	}
	if err := CheckDigest("sha512:" + digest[7:]); !errors.Is(err, ErrUnsupported) {
		t.Errorf("sha512: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	data, _, err := Build(manifest(), kernel, program)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:600])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		// Whatever decodes is self-consistent and can be rebuilt into an
		// image that decodes to the same thing.
		if err := img.Manifest.Validate(); err != nil {
			t.Fatal(err)
		}
		if sum(img.Program) != img.Manifest.ProgramSHA256 || sum(img.Kernel) != img.Manifest.KernelSHA256 {
			t.Fatal("hash mismatch accepted")
		}
		re, _, err := Build(img.Manifest, img.Kernel, img.Program)
		if err != nil {
			t.Fatalf("rebuild: %v", err)
		}
		img2, err := Decode(re)
		if err != nil {
			t.Fatalf("decode rebuilt: %v", err)
		}
		if !bytes.Equal(img2.Program, img.Program) || img2.Manifest.Name != img.Manifest.Name {
			t.Fatal("rebuild changed the image")
		}
	})
}
