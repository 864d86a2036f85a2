package vmm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// kvmSystem is an open /dev/kvm.
type kvmSystem struct {
	fd int
}

// kvmVM is one KVM virtual machine (a VM fd).
type kvmVM struct {
	fd int
}

// vcpu is the VM's one virtual CPU and its shared kvm_run page.
type vcpu struct {
	fd  int
	run []byte // the kvm_run mapping
}

func wrapIoctl(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", name, err)
}

// Available reports whether this host can run VMs: nil, or ErrNoKVM
// wrapping the reason.
func Available() error {
	s, err := openKVM()
	if err != nil {
		return err
	}
	s.close()
	return nil
}

func openKVM() (*kvmSystem, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoKVM, &os.PathError{Op: "open", Path: "/dev/kvm", Err: err})
	}
	s := &kvmSystem{fd: fd}
	v, err := ioctlVal(fd, ioctlGetAPIVersion, 0)
	if err != nil || v != kvmAPIVersion {
		s.close()
		return nil, fmt.Errorf("%w: KVM API version %d (%v), want %d", ErrNoKVM, v, err, kvmAPIVersion)
	}
	return s, nil
}

func (s *kvmSystem) close() {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

func (s *kvmSystem) createVM() (*kvmVM, error) {
	var fd uintptr
	var err error
	// KVM_CREATE_VM is interrupted by signals (the Go runtime sends them);
	// retrying is what every VMM does.
	for {
		fd, err = ioctlVal(s.fd, ioctlCreateVM, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, wrapIoctl("KVM_CREATE_VM", err)
	}
	unix.CloseOnExec(int(fd))
	return &kvmVM{fd: int(fd)}, nil
}

func (s *kvmSystem) hasCap(c uintptr) bool {
	r, err := ioctlVal(s.fd, ioctlCheckExtension, c)
	return err == nil && r > 0
}

func (v *kvmVM) close() {
	if v.fd >= 0 {
		unix.Close(v.fd)
		v.fd = -1
	}
}

// createVCPU makes vCPU 0 and maps its kvm_run page.
func (v *kvmVM) createVCPU(s *kvmSystem) (*vcpu, error) {
	// Intel VMX needs a TSS area for real-mode emulation; harmless elsewhere.
	_, _ = ioctlVal(v.fd, ioctlSetTSSAddr, kvmTSSAddr)
	fd, err := ioctlVal(v.fd, ioctlCreateVCPU, 0)
	if err != nil {
		return nil, wrapIoctl("KVM_CREATE_VCPU", err)
	}
	unix.CloseOnExec(int(fd))
	size, err := ioctlVal(s.fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		unix.Close(int(fd))
		return nil, wrapIoctl("KVM_GET_VCPU_MMAP_SIZE", err)
	}
	if size < runSize {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm_run is %d bytes, want at least %d", size, runSize)
	}
	run, err := unix.Mmap(int(fd), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run: %w", err)
	}
	return &vcpu{fd: int(fd), run: run}, nil
}

func (c *vcpu) close() {
	if c.run != nil {
		_ = unix.Munmap(c.run)
		c.run = nil
	}
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// tscKHz is the vCPU's TSC frequency.
func (c *vcpu) tscKHz() (uint64, error) {
	r, err := ioctlVal(c.fd, ioctlGetTSCkHz, 0)
	if err != nil {
		return 0, wrapIoctl("KVM_GET_TSC_KHZ", err)
	}
	return uint64(r), nil
}

// enter runs the vCPU until the next exit. EINTR (a kick, or a stray
// signal) is reported as interrupted, not as an error.
func (c *vcpu) enter() (interrupted bool, err error) {
	_, err = ioctlVal(c.fd, ioctlRun, 0)
	if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
		return true, nil
	}
	return false, wrapIoctl("KVM_RUN", err)
}
