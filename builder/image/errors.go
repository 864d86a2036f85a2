package image

import "errors"

// Sentinel errors of package image. Wrapped with %w; test with errors.Is.
var (
	// ErrCorrupt: the bytes are not a well-formed, self-consistent image.
	ErrCorrupt = errors.New("image: corrupt image")
	// ErrDigestMismatch: the bytes are an image, but not the one asked for.
	ErrDigestMismatch = errors.New("image: digest mismatch")
	// ErrUnsupported: a well-formed image (or digest) this build cannot use,
	// such as another ABI version or hash algorithm.
	ErrUnsupported = errors.New("image: unsupported")
	// ErrInvalid: a manifest value out of range (from Validate and Build).
	ErrInvalid = errors.New("image: invalid manifest")
	// ErrBadDigest: a digest string that is not "sha256:<64 hex digits>".
	ErrBadDigest = errors.New("image: malformed digest")
)
