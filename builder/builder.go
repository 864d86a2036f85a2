// Package builder turns what a user uploads into a function image: it
// checks that the program is something Kiln can boot (CheckELF) and packs
// it with the guest kernel and a manifest (package image). Every rejection
// is one sentence the user can act on.
package builder

import (
	"errors"
	"fmt"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/unikernel/abi"
)

// Sentinel errors of the builder. Wrapped with %w; test with errors.Is.
var (
	// ErrBadELF: the upload is not a static x86-64 executable (see ELFError).
	ErrBadELF = errors.New("builder: not a bootable program")
	// ErrBadSpec: the function's settings are out of range.
	ErrBadSpec = errors.New("builder: bad function settings")
)

// Defaults for settings a deploy leaves out.
const (
	DefaultMemoryBytes = 64 << 20
	DefaultTimeoutMs   = 30_000
)

// Spec is how to run the program being built.
type Spec struct {
	Name        string
	Kind        string // image.KindExec or image.KindServe; "" → serve
	MemoryBytes uint64 // rounded up to 2 MiB; 0 → DefaultMemoryBytes
	TimeoutMs   int64  // 0 → DefaultTimeoutMs
	Env         []string
	Args        []string
}

// Normalize fills defaults and rounds memory up to whole 2 MiB pages, the
// unit the VMM maps guest memory in.
func (s Spec) Normalize() Spec {
	if s.Kind == "" {
		s.Kind = image.KindServe
	}
	if s.MemoryBytes == 0 {
		s.MemoryBytes = DefaultMemoryBytes
	}
	if r := s.MemoryBytes % image.MemAlign; r != 0 {
		s.MemoryBytes += image.MemAlign - r
	}
	if s.TimeoutMs == 0 {
		s.TimeoutMs = DefaultTimeoutMs
	}
	return s
}

// Build checks program and packs it with kernel into an image, returning
// the image bytes and their digest. A bad program is an *ELFError (ErrBadELF),
// bad settings ErrBadSpec.
func Build(spec Spec, program, kernel []byte) (data []byte, digest string, err error) {
	if err := CheckELF(program, DefaultMaxSize); err != nil {
		return nil, "", err
	}
	spec = spec.Normalize()
	m := image.Manifest{
		ABIVersion:  abi.Version,
		Name:        spec.Name,
		Kind:        spec.Kind,
		MemoryBytes: spec.MemoryBytes,
		TimeoutMS:   spec.TimeoutMs,
		Env:         spec.Env,
		Args:        spec.Args,
	}
	data, digest, err = image.Build(m, kernel, program)
	if err != nil {
		if errors.Is(err, image.ErrInvalid) {
			return nil, "", fmt.Errorf("%w: %v", ErrBadSpec, err)
		}
		return nil, "", fmt.Errorf("builder: %w", err)
	}
	return data, digest, nil
}
