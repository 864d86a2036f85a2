// Package image is Kiln's function image format: the guest kernel ELF, the
// function's ELF and a manifest saying how to run them, packed in one tar
// archive that the image store addresses by its sha256. The builder writes
// images with Build; node-agents read them with Decode, which treats every
// byte as hostile (it may come from a corrupted store or cache) and checks
// sizes, the member set, both part hashes and the manifest's values.
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// Member names inside the tar archive, in the order Build writes them.
const (
	ManifestFile = "manifest.json"
	KernelFile   = "kernel.elf"
	ProgramFile  = "program.elf"
)

// Size limits Decode enforces before reading a member, so a hostile header
// cannot make it allocate more than these.
const (
	MaxManifestSize = 64 << 10
	MaxKernelSize   = 16 << 20  // the guest kernel is a few hundred KiB
	MaxProgramSize  = 256 << 20 // a large static Go binary is well below
)

// Function kinds (Manifest.Kind).
const (
	KindExec  = "exec"  // stdin → stdout, one VM per invocation
	KindServe = "serve" // speaks docs/WIRE.md on fd 0/1, many requests per boot
)

// Bounds of Manifest.MemoryBytes and Manifest.TimeoutMS.
const (
	MemAlign   = 2 << 20 // guest memory is mapped with 2 MiB pages
	MinMemory  = 4 << 20
	MaxMemory  = 3 << 30 // abi.MemMax: the guest map ends at the MMIO hole
	MinTimeout = time.Millisecond
	MaxTimeout = 15 * time.Minute
)

// MaxNameLen bounds Manifest.Name.
const MaxNameLen = 128

// Manifest says how to run the function in an image. Field names are the JSON
// keys of manifest.json; fields are only ever appended.
type Manifest struct {
	ABIVersion    uint32    `json:"abi_version"`
	Name          string    `json:"name"`
	Kind          string    `json:"kind"`
	MemoryBytes   uint64    `json:"memory_bytes"`
	TimeoutMS     int64     `json:"timeout_ms"`
	Env           []string  `json:"env"`  // "KEY=VALUE"
	Args          []string  `json:"args"` // argv after argv[0]
	KernelSHA256  string    `json:"kernel_sha256"`
	ProgramSHA256 string    `json:"program_sha256"`
	ProgramSize   int64     `json:"program_size"`
	Created       time.Time `json:"created"` // RFC 3339
}

// Timeout is TimeoutMS as a duration.
func (m *Manifest) Timeout() time.Duration { return time.Duration(m.TimeoutMS) * time.Millisecond }

// Validate checks the values a node relies on to boot the function. It does
// not check the hashes against any bytes (Decode does); it does check that
// they look like sha256 hex digests. Errors wrap ErrInvalid, or ErrUnsupported
// for an ABI version this build cannot run.
func (m *Manifest) Validate() error {
	if m.ABIVersion != abi.Version {
		return fmt.Errorf("%w: abi_version %d, this node runs %d", ErrUnsupported, m.ABIVersion, abi.Version)
	}
	if err := checkName(m.Name); err != nil {
		return err
	}
	if m.Kind != KindExec && m.Kind != KindServe {
		return fmt.Errorf("%w: kind %q is neither %q nor %q", ErrInvalid, m.Kind, KindExec, KindServe)
	}
	if m.MemoryBytes%MemAlign != 0 || m.MemoryBytes < MinMemory || m.MemoryBytes > MaxMemory {
		return fmt.Errorf("%w: memory_bytes %d is not a multiple of 2 MiB between 4 MiB and 3 GiB", ErrInvalid, m.MemoryBytes)
	}
	if t := m.TimeoutMS; t < MinTimeout.Milliseconds() || t > MaxTimeout.Milliseconds() {
		return fmt.Errorf("%w: timeout_ms %d is outside 1 ms – 15 min", ErrInvalid, t)
	}
	for _, e := range m.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
			return fmt.Errorf("%w: env entry %q is not KEY=VALUE", ErrInvalid, e)
		}
	}
	for _, a := range m.Args {
		// The guest's argv is NUL-terminated C strings.
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: argument %q contains NUL", ErrInvalid, a)
		}
	}
	if !isHexDigest(m.KernelSHA256) || !isHexDigest(m.ProgramSHA256) {
		return fmt.Errorf("%w: kernel_sha256/program_sha256 must be 64 lower-case hex digits", ErrInvalid)
	}
	if m.ProgramSize <= 0 || m.ProgramSize > MaxProgramSize {
		return fmt.Errorf("%w: program_size %d outside 1 – %d", ErrInvalid, m.ProgramSize, MaxProgramSize)
	}
	if m.Created.IsZero() {
		return fmt.Errorf("%w: created is missing", ErrInvalid)
	}
	return nil
}

// checkName accepts the characters that are safe in URLs, metric labels and
// file names alike, so that no consumer needs its own escaping.
func checkName(n string) error {
	if n == "" || len(n) > MaxNameLen {
		return fmt.Errorf("%w: name must be 1–%d characters", ErrInvalid, MaxNameLen)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w: name %q may only contain letters, digits, '-', '_' and '.'", ErrInvalid, n)
		}
	}
	return nil
}

func isHexDigest(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Image is a decoded, verified function image.
type Image struct {
	Manifest Manifest
	Kernel   []byte
	Program  []byte
}

// Build packs kernel and program with m into an image. It fills the hashes
// and ProgramSize of m, and Created with the current time when it is zero
// (set it to make Build reproducible: the same inputs then give the same
// digest). It returns the archive and its digest ("sha256:<hex>").
func Build(m Manifest, kernel, program []byte) (data []byte, digest string, err error) {
	if len(kernel) == 0 || len(kernel) > MaxKernelSize {
		return nil, "", fmt.Errorf("%w: kernel is %d bytes, want 1 – %d", ErrInvalid, len(kernel), MaxKernelSize)
	}
	if len(program) == 0 || len(program) > MaxProgramSize {
		return nil, "", fmt.Errorf("%w: program is %d bytes, want 1 – %d", ErrInvalid, len(program), MaxProgramSize)
	}
	m.KernelSHA256 = sum(kernel)
	m.ProgramSHA256 = sum(program)
	m.ProgramSize = int64(len(program))
	if m.Created.IsZero() {
		m.Created = time.Now()
	}
	// Whole seconds in UTC: the tar header keeps no more, and a manifest that
	// round-trips byte for byte keeps digests stable.
	m.Created = m.Created.UTC().Truncate(time.Second)
	if err := m.Validate(); err != nil {
		return nil, "", err
	}
	mj, err := json.Marshal(&m)
	if err != nil {
		return nil, "", fmt.Errorf("image: encoding manifest: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{{ManifestFile, mj}, {KernelFile, kernel}, {ProgramFile, program}} {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     f.name,
			Mode:     0o644,
			Size:     int64(len(f.data)),
			ModTime:  m.Created,
			Format:   tar.FormatUSTAR,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, "", fmt.Errorf("image: writing %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, "", fmt.Errorf("image: writing %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", fmt.Errorf("image: closing archive: %w", err)
	}
	data = buf.Bytes()
	return data, Digest(data), nil
}

// Decode parses and verifies an image. Errors wrap ErrCorrupt (bad archive,
// wrong members, hash mismatch, invalid manifest) or ErrUnsupported (an ABI
// version this node cannot run). Unknown manifest keys are ignored so that
// fields appended later do not make older nodes refuse newer images.
func Decode(data []byte) (*Image, error) {
	tr := tar.NewReader(bytes.NewReader(data))
	var mj []byte
	img := &Image{}
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: reading archive: %v", ErrCorrupt, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: member %q is not a regular file", ErrCorrupt, hdr.Name)
		}
		var limit int64
		var dst *[]byte
		switch hdr.Name {
		case ManifestFile:
			limit, dst = MaxManifestSize, &mj
		case KernelFile:
			limit, dst = MaxKernelSize, &img.Kernel
		case ProgramFile:
			limit, dst = MaxProgramSize, &img.Program
		default:
			return nil, fmt.Errorf("%w: unexpected member %q", ErrCorrupt, hdr.Name)
		}
		if seen[hdr.Name] {
			return nil, fmt.Errorf("%w: member %q appears twice", ErrCorrupt, hdr.Name)
		}
		seen[hdr.Name] = true
		// A header may claim any size; the bytes actually present bound it too.
		if hdr.Size < 0 || hdr.Size > limit || hdr.Size > int64(len(data)) {
			return nil, fmt.Errorf("%w: member %q claims %d bytes (limit %d)", ErrCorrupt, hdr.Name, hdr.Size, limit)
		}
		b := make([]byte, hdr.Size)
		if _, err := io.ReadFull(tr, b); err != nil {
			return nil, fmt.Errorf("%w: reading %q: %v", ErrCorrupt, hdr.Name, err)
		}
		*dst = b
	}
	for _, n := range []string{ManifestFile, KernelFile, ProgramFile} {
		if !seen[n] {
			return nil, fmt.Errorf("%w: member %q is missing", ErrCorrupt, n)
		}
	}
	if err := json.Unmarshal(mj, &img.Manifest); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	m := &img.Manifest
	if err := m.Validate(); err != nil {
		if errors.Is(err, ErrUnsupported) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if sum(img.Kernel) != m.KernelSHA256 {
		return nil, fmt.Errorf("%w: kernel.elf does not match kernel_sha256", ErrCorrupt)
	}
	if sum(img.Program) != m.ProgramSHA256 {
		return nil, fmt.Errorf("%w: program.elf does not match program_sha256", ErrCorrupt)
	}
	if int64(len(img.Program)) != m.ProgramSize {
		return nil, fmt.Errorf("%w: program.elf is %d bytes, manifest says %d", ErrCorrupt, len(img.Program), m.ProgramSize)
	}
	if len(img.Kernel) == 0 {
		return nil, fmt.Errorf("%w: kernel.elf is empty", ErrCorrupt)
	}
	return img, nil
}

// DigestPrefix starts every image digest.
const DigestPrefix = "sha256:"

// Digest is the content address of an image: "sha256:<hex of data>".
func Digest(data []byte) string { return DigestPrefix + sum(data) }

// CheckDigest reports whether d is a well-formed image digest. A digest that
// passes is safe to use as a file name. Errors wrap ErrBadDigest, or
// ErrUnsupported for an algorithm other than sha256.
func CheckDigest(d string) error {
	algo, hexpart, ok := strings.Cut(d, ":")
	if !ok {
		return fmt.Errorf("%w: %q has no algorithm prefix", ErrBadDigest, d)
	}
	if algo != "sha256" {
		return fmt.Errorf("%w: digest algorithm %q", ErrUnsupported, algo)
	}
	if !isHexDigest(hexpart) {
		return fmt.Errorf("%w: %q is not 64 lower-case hex digits", ErrBadDigest, hexpart)
	}
	return nil
}

// Verify checks that data is the image addressed by digest.
func Verify(data []byte, digest string) error {
	if err := CheckDigest(digest); err != nil {
		return err
	}
	if got := Digest(data); got != digest {
		return fmt.Errorf("%w: want %s, got %s", ErrDigestMismatch, digest, got)
	}
	return nil
}
