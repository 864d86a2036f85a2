package vmm

import "errors"

// Sentinel errors of the VMM. Wrapped with %w; test with errors.Is.
var (
	// ErrNoKVM: /dev/kvm is missing or cannot be opened.
	ErrNoKVM = errors.New("vmm: /dev/kvm is not available")
	// ErrBadELF: the kernel or program image is not a loadable static x86-64 ELF.
	ErrBadELF = errors.New("vmm: bad ELF image")
	// ErrMemSize: the requested guest memory is zero, unaligned or too large.
	ErrMemSize = errors.New("vmm: bad guest memory size")
	// ErrTimeout: the VM ran past its context's deadline and was destroyed.
	ErrTimeout = errors.New("vmm: guest ran past its deadline")
	// ErrGuest: the guest ended abnormally (fault, triple fault, bad hypercall).
	ErrGuest = errors.New("vmm: guest failed")
)

// ErrConfig: the Config cannot describe a VM (no kernel, hostname too long,
// arguments too large, ...).
var ErrConfig = errors.New("vmm: bad VM configuration")

// ErrNoKernel: FindKernel looked everywhere and found no kernel image.
var ErrNoKernel = errors.New("vmm: guest kernel image not found")
