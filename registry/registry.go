// Package registry records which functions exist and, for each, every
// version ever deployed: the image it runs and how to run it. Versions are
// immutable; a deploy appends one and moves the alias "latest" to it in the
// same transaction, so a reader never sees a half-finished deploy.
//
// Store is the contract every back-end fills in (the embedded bbolt store
// here, a Redis store for clusters later); package registrytest holds the
// conformance suite they all pass.
package registry

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Sentinel errors of the registry. Wrapped with %w; test with errors.Is.
var (
	// ErrNotFound: no such function, version or alias.
	ErrNotFound = errors.New("registry: not found")
	// ErrInvalidName: a function or alias name outside [a-z0-9][a-z0-9-]{0,62}.
	ErrInvalidName = errors.New("registry: invalid name")
	// ErrInvalidSpec: a spec the platform could not run (unknown kind, no image).
	ErrInvalidSpec = errors.New("registry: invalid function spec")
	// ErrConflict: the change contradicts the registry's state, e.g. moving
	// the alias "latest", which only deploys may move.
	ErrConflict = errors.New("registry: conflict")
)

// Latest is the alias every deploy moves to the version it creates.
const Latest = "latest"

// Kinds of function, as stored.
const (
	KindExec  = "exec"
	KindServe = "serve"
)

// Spec is what a deploy asks for; the store assigns the version and time.
type Spec struct {
	Name        string
	ImageDigest string // "sha256:<hex>" in the image store
	Kind        string // KindExec or KindServe
	MemoryBytes uint64
	TimeoutMs   int64
	Env         []string // "KEY=VALUE"
	Args        []string // argv after argv[0]
	Limits
}

// Limits say who may call a function and how much. Each gateway enforces
// them on its own (they are not shared between gateways), so N gateways
// admit up to N times a concurrency or rate limit. The zero value is a
// public function with no concurrency or rate limit and the gateway's
// default body limit.
type Limits struct {
	// Private functions answer only callers with an API key.
	Private bool `json:"private,omitempty"`
	// MaxConcurrency bounds the invocations in flight at one gateway; 0: none.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// RatePerSecond is a token bucket's refill rate at one gateway, and
	// RateBurst its size (0 → the rate rounded up, at least 1); 0: no limit.
	RatePerSecond float64 `json:"rate_per_second,omitempty"`
	RateBurst     int     `json:"rate_burst,omitempty"`
	// MaxBodyBytes bounds a request body; 0: the gateway's default.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
}

// Function is one immutable version of a function.
type Function struct {
	Name        string    `json:"name"`
	Version     uint64    `json:"version"`
	ImageDigest string    `json:"digest"`
	Kind        string    `json:"kind"`
	MemoryBytes uint64    `json:"memory_bytes"`
	TimeoutMs   int64     `json:"timeout_ms"`
	Env         []string  `json:"env,omitempty"`
	Args        []string  `json:"args,omitempty"`
	Created     time.Time `json:"created"`
	Limits
}

// Store is a function registry. Implementations are safe for concurrent use.
type Store interface {
	// PutFunction records a new version of spec.Name (creating the function
	// on its first deploy) and moves "latest" to it atomically.
	PutFunction(ctx context.Context, spec Spec) (version uint64, err error)
	// GetFunction resolves ref: "" or "latest" for the newest deploy, a
	// decimal version number, or an alias.
	GetFunction(ctx context.Context, name, ref string) (Function, error)
	// ListFunctions returns the latest version of every function, by name.
	ListFunctions(ctx context.Context) ([]Function, error)
	// DeleteFunction removes a function with all its versions and aliases.
	DeleteFunction(ctx context.Context, name string) error
	// Versions returns every version of a function, oldest first.
	Versions(ctx context.Context, name string) ([]Function, error)
	// SetAlias points alias at an existing version. "latest" is reserved.
	SetAlias(ctx context.Context, name, alias string, version uint64) error
	// Close releases the store; calls after Close fail.
	Close() error
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidName reports whether s may name a function or an alias: a DNS label
// in lower case, so it fits in URLs, metric labels and hostnames unchanged.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// CheckName returns ErrInvalidName, with the rule, when s is not a ValidName.
func CheckName(s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%w: %q: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", ErrInvalidName, s)
	}
	return nil
}

// CheckSpec validates a spec before a store records it.
func CheckSpec(s Spec) error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	if s.Kind != KindExec && s.Kind != KindServe {
		return fmt.Errorf("%w: kind %q: want %q or %q", ErrInvalidSpec, s.Kind, KindExec, KindServe)
	}
	if s.ImageDigest == "" {
		return fmt.Errorf("%w: no image digest", ErrInvalidSpec)
	}
	if s.TimeoutMs < 0 {
		return fmt.Errorf("%w: negative timeout %d ms", ErrInvalidSpec, s.TimeoutMs)
	}
	if l := s.Limits; l.MaxConcurrency < 0 || l.RateBurst < 0 || l.MaxBodyBytes < 0 || !(l.RatePerSecond >= 0 && l.RatePerSecond <= 1e9) {
		return fmt.Errorf("%w: limits %+v: each must be 0 (none) or positive", ErrInvalidSpec, l)
	}
	return nil
}

// ParseRef splits a reference into a version number (when ref is decimal)
// or an alias ("" meaning latest).
func ParseRef(ref string) (version uint64, alias string, err error) {
	if ref == "" {
		return 0, Latest, nil
	}
	if ref[0] >= '0' && ref[0] <= '9' {
		if v, err := strconv.ParseUint(ref, 10, 64); err == nil && v > 0 {
			return v, "", nil
		}
	}
	if err := CheckName(ref); err != nil {
		return 0, "", err
	}
	return 0, ref, nil
}

func clone(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}
