package vmm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// The recipe, in the order New (build) and Run run it — one for a cold
// boot and a snapshot restore alike:
//
//	check config → open KVM → create VM → guest memory → memory slot
//	→ vCPU → CPUID → TSC rate → load guest → … Run: start guest → KVM_RUN
//
// Four steps differ between the two, and a guestSource names them (check
// config, guest memory, load guest, start guest): coldBoot (below) checks
// the images, maps fresh memory, loads the kernel and program and builds
// page tables, GDT/TSS, initial stack, boot info and the vCPU's long mode,
// and at start stamps the boot clock; snapshotRestore (snapshot.go) checks
// the memory size, maps the snapshot file, sets the saved vCPU state, and
// at start continues the TSC, refreshes wall clock and entropy and serves
// the pending wait.

// guestSource is what a cold boot and a snapshot restore do differently;
// build runs every other step of the recipe. On error the caller closes
// the VM, which frees what the steps made.
type guestSource interface {
	// check refuses a bad configuration before KVM is touched: it is the
	// caller's error, not the host's.
	check() error
	// memory makes guest RAM, checked and sized by check.
	memory() (*Memory, error)
	// load fills guest RAM and sets the vCPU's state, once the vCPU has
	// its CPUID (feat) and vm.tscKHz is known.
	load(feat cpuFeatures) error
	// start runs in Run just before the guest's first instruction; a
	// non-nil Result ends the run.
	start(ctx context.Context) *Result
}

// build runs the recipe with src's own steps.
func (vm *VM) build(src guestSource) error {
	if err := src.check(); err != nil {
		return err
	}
	var err error
	if vm.sys, err = openKVM(); err != nil {
		return err
	}
	if vm.kvm, err = vm.sys.createVM(); err != nil {
		return err
	}
	if vm.mem, err = src.memory(); err != nil {
		return err
	}
	if err := vm.kvm.setUserMemory(&kvmUserspaceMemoryRegion{
		Slot: 0, GuestPhysAddr: 0, MemorySize: vm.mem.Size(), UserspaceAddr: hostAddr(vm.mem.b),
	}); err != nil {
		return err
	}
	if vm.cpu, err = vm.kvm.createVCPU(vm.sys); err != nil {
		return err
	}
	feat, err := setupCPUID(vm.sys, vm.cpu)
	if err != nil {
		return err
	}
	if vm.tscKHz, err = vm.cpu.tscKHz(); err != nil {
		return err
	}
	if vm.tscKHz == 0 {
		return errors.New("KVM_GET_TSC_KHZ: 0")
	}
	return src.load(feat)
}

// Control register and EFER bits.
const (
	cr0PE         = 1 << 0
	cr0MP         = 1 << 1
	cr0ET         = 1 << 4
	cr0NE         = 1 << 5
	cr0WP         = 1 << 16
	cr0PG         = 1 << 31
	cr4PAE        = 1 << 5
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10
	cr4FSGSBASE   = 1 << 16
	cr4OSXSAVE    = 1 << 18
	eferSCE       = 1 << 0
	eferLME       = 1 << 8
	eferLMA       = 1 << 10
	eferNXE       = 1 << 11

	// sfmask is what `syscall` clears in RFLAGS, Linux's choice: TF, IF,
	// DF, IOPL, NT, AC. DF clear is what the C dispatcher needs; TF clear
	// keeps a single-stepped function from trapping inside the kernel. The
	// dispatcher restores the function's RFLAGS (saved in R11) with popfq,
	// and executes cld itself, so nothing depends on this mask on hosts
	// (PVM) where `syscall` lands at LSTAR in ring 3.
	sfmask = 0x47700

	// sysret returns to STAR[63:48]+16 (CS, 0x33) and +8 (SS, 0x2b);
	// syscall enters at STAR[47:32] (CS 0x10, SS 0x18).
	star = uint64(abi.SelUser32CS)<<48 | uint64(abi.SelKernelCS)<<32

	xcr0X87    = 1 << 0
	xcr0SSE    = 1 << 1
	xcr0AVX    = 1 << 2
	xcr0AVX512 = 7 << 5 // opmask, ZMM_Hi256, Hi16_ZMM: all or none
)

// cpuFeatures is what the guest CPUID offers that the boot depends on.
type cpuFeatures struct {
	xsave    bool
	xcr0     uint64
	fsgsbase bool
	hwcap    uint64 // CPUID.1:EDX, Linux's AT_HWCAP on x86-64
}

// setupCPUID gives the vCPU what KVM supports, with the hypervisor bit set.
func setupCPUID(sys *kvmSystem, c *vcpu) (cpuFeatures, error) {
	var f cpuFeatures
	cp, err := sys.supportedCPUID()
	if err != nil {
		return f, err
	}
	if cp.NEnt > kvmMaxCPUIDEntries {
		return f, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %d entries", cp.NEnt)
	}
	for i := range cp.Entries[:cp.NEnt] {
		e := &cp.Entries[i]
		switch {
		case e.Function == 1:
			e.ECX |= 1 << 31 // hypervisor present
			f.xsave = e.ECX&(1<<26) != 0
			f.hwcap = uint64(e.EDX)
			if e.ECX&(1<<28) != 0 {
				f.xcr0 |= xcr0AVX
			}
		case e.Function == 7 && e.Index == 0:
			f.fsgsbase = e.EBX&1 != 0
		}
	}
	for _, e := range cp.Entries[:cp.NEnt] {
		if e.Function == 0xd && e.Index == 0 {
			supported := uint64(e.EDX)<<32 | uint64(e.EAX)
			x := uint64(xcr0X87 | xcr0SSE)
			if f.xcr0&xcr0AVX != 0 && supported&xcr0AVX != 0 {
				x |= xcr0AVX
				if supported&xcr0AVX512 == xcr0AVX512 {
					x |= xcr0AVX512
				}
			}
			f.xcr0 = x
		}
	}
	if f.xsave && f.xcr0&xcr0SSE == 0 {
		f.xcr0 = xcr0X87 | xcr0SSE // no leaf 0xD: the architectural minimum
	}
	return f, c.setCPUID(cp)
}

// loadKernel checks and loads the kernel ELF; it returns the entry point
// and the syscall entry (LSTAR).
func loadKernel(mem *Memory, k []byte) (entry, lstar uint64, err error) {
	img, err := parseELF(k, abi.KernelBase, abi.KernelLimit, abi.KernelBase)
	if err != nil {
		return 0, 0, fmt.Errorf("kernel: %w", err)
	}
	lstar, err = elfSymbol(k, "kiln_syscall_entry")
	if err != nil {
		return 0, 0, fmt.Errorf("kernel: %w", err)
	}
	if lstar < img.Low || lstar >= img.High {
		return 0, 0, fmt.Errorf("kernel: %w: kiln_syscall_entry %#x is outside the image", ErrBadELF, lstar)
	}
	return img.Entry, lstar, img.load(mem, k)
}

// writeSystemTables places the page tables, GDT and TSS.
func writeSystemTables(mem *Memory) error {
	for _, w := range []struct {
		gpa uint64
		b   []byte
	}{{pml4GPA, pageTables(mem.Size())}, {abi.GDTGPA, gdtBytes()}, {abi.TSSGPA, tssBytes()}} {
		if err := mem.Write(w.gpa, w.b); err != nil {
			return err
		}
	}
	return nil
}

// bootInfo builds the boot-info page; the TSC/wall-clock pair is stamped
// by Run.
func bootInfo(cfg *Config, mem *Memory, prog *elfImage, rsp uint64, flags uint32) (*abi.BootInfo, error) {
	bi := &abi.BootInfo{
		Magic:      abi.BootMagic,
		ABIVersion: abi.Version,
		Flags:      flags,
		MemSize:    mem.Size(),
		Entry:      prog.Entry,
		Phdr:       prog.Phdr,
		Phnum:      prog.Phnum,
		Phent:      prog.Phent,
		ImageStart: prog.Low,
		ImageEnd:   prog.High,
		StackLow:   mem.Size() - stackSize,
		StackTop:   mem.Size(),
		InitialRSP: rsp,
	}
	if _, err := rand.Read(bi.Entropy[:]); err != nil {
		return nil, fmt.Errorf("entropy: %w", err)
	}
	host := cfg.Hostname
	if host == "" {
		host = "kiln"
	}
	if len(host) >= abi.HostnameMax || bytes.IndexByte([]byte(host), 0) >= 0 {
		return nil, fmt.Errorf("%w: hostname %q: at most %d bytes, no NUL", ErrConfig, host, abi.HostnameMax-1)
	}
	copy(bi.Hostname[:], host)
	return bi, nil
}

func writeBootInfo(mem *Memory, bi *abi.BootInfo) error {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, bi); err != nil {
		return err
	}
	return mem.Write(abi.BootInfoGPA, b.Bytes())
}

// setupVCPU puts the vCPU in 64-bit long mode at the kernel's entry, ring 0.
// It returns whether CR4.FSGSBASE took.
func setupVCPU(c *vcpu, f cpuFeatures, entry, lstar uint64) (fsgsbase bool, err error) {
	s, err := c.getSregs()
	if err != nil {
		return false, err
	}
	code := kvmSegment{Base: 0, Limit: 0xffffffff, Selector: abi.SelKernelCS, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	data := kvmSegment{Base: 0, Limit: 0xffffffff, Selector: abi.SelKernelDS, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvmSegment{Base: abi.TSSGPA, Limit: tssLimit, Selector: abi.SelTSS, Type: 11, Present: 1}
	s.LDT = kvmSegment{Type: 2, Present: 1, Limit: 0xffff}
	s.GDT = kvmDtable{Base: abi.GDTGPA, Limit: uint16(len(gdtBytes()) - 1)}
	s.IDT = kvmDtable{Base: abi.IDTGPA, Limit: 4095}
	s.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0PG
	s.CR3 = pml4GPA
	s.CR4 = cr4PAE | cr4OSFXSR | cr4OSXMMEXCPT
	if f.xsave {
		s.CR4 |= cr4OSXSAVE
	}
	s.EFER = eferSCE | eferLME | eferLMA | eferNXE
	fsgsbase = f.fsgsbase
	if fsgsbase {
		s2 := s
		s2.CR4 |= cr4FSGSBASE
		if err := c.setSregs(&s2); err != nil {
			fsgsbase = false // KVM refused the bit: the wrmsr gate it is
		}
	}
	if !fsgsbase {
		if err := c.setSregs(&s); err != nil {
			return false, err
		}
	}
	if f.xsave {
		x := kvmXCRs{NXCRs: 1}
		x.XCRs[0] = kvmXCR{XCR: 0, Value: f.xcr0}
		if err := c.setXCRs(&x); err != nil {
			return false, err
		}
	}
	fpu := kvmFPU{FCW: 0x37f, MXCSR: 0x1f80}
	if err := c.setFPU(&fpu); err != nil {
		return false, err
	}
	m := kvmMSRs{}
	for _, e := range []kvmMSREntry{
		{Index: msrSTAR, Data: star},
		{Index: msrLSTAR, Data: lstar},
		{Index: msrCSTAR, Data: 0},
		{Index: msrSFMASK, Data: sfmask},
		{Index: msrFSBase, Data: 0},
		{Index: msrGSBase, Data: 0},
		{Index: msrKGSBase, Data: 0},
		{Index: msrPAT, Data: 0x0007040600070406},
	} {
		m.Entries[m.NMSRs] = e
		m.NMSRs++
	}
	if err := c.setMSRs(&m); err != nil {
		return false, err
	}
	regs := kvmRegs{RIP: entry, RSP: abi.R0StackTop, RFLAGS: 2}
	return fsgsbase, c.setRegs(&regs)
}

// stampClock writes the (TSC, wall clock) pair into the boot info just
// before the first instruction; the guest's clocks start from it.
func (vm *VM) stampClock() error {
	var tsc uint64
	now, err := atHostTime(func() (err error) {
		tsc, err = vm.cpu.getMSR(msrTSC)
		return err
	})
	if err != nil {
		return err
	}
	vm.bootTSC, vm.bootTime = tsc, now
	vm.bootInfo.BootTSC = tsc
	vm.bootInfo.BootWallNs = uint64(now.UnixNano())
	vm.bootInfo.TSCkHz = vm.tscKHz
	return writeBootInfo(vm.mem, vm.bootInfo)
}

// atHostTime runs op — an ioctl that reads or sets the guest's TSC — and
// returns the host time it took effect at: the midpoint of two clock reads
// around it. A try whose reads are far apart (the thread was preempted:
// hundreds of milliseconds under emulation) is repeated, because the pair
// anchors every guest deadline and wall-clock reading: a gap between the
// ioctl and the clock read would shift all of them by the same amount.
func atHostTime(op func() error) (time.Time, error) {
	var at time.Time
	for try := 0; try < 5; try++ {
		t0 := time.Now()
		if err := op(); err != nil {
			return time.Time{}, err
		}
		t1 := time.Now()
		at = t0.Add(t1.Sub(t0) / 2)
		if t1.Sub(t0) < time.Millisecond {
			break
		}
	}
	return at, nil
}

// coldBoot is the guest source of a VM booted from its images, vm.cfg's
// Kernel and Program.
type coldBoot struct {
	vm   *VM
	prog *elfImage // the program, parsed by check
}

// check fills in the default memory size and parses both images: a bad ELF
// is the caller's error.
func (b *coldBoot) check() error {
	cfg := &b.vm.cfg
	if len(cfg.Kernel) == 0 {
		return fmt.Errorf("%w: no kernel image", ErrConfig)
	}
	if len(cfg.Program) == 0 {
		return fmt.Errorf("%w: no program image", ErrConfig)
	}
	if cfg.MemSize == 0 {
		cfg.MemSize = DefaultMemSize
	}
	if err := checkMemSize(cfg.MemSize); err != nil {
		return err
	}
	prog, err := parseELF(cfg.Program, abi.UserBase, cfg.MemSize-stackSize, abi.UserBase)
	if err != nil {
		return fmt.Errorf("program: %w", err)
	}
	if _, err := parseELF(cfg.Kernel, abi.KernelBase, abi.KernelLimit, abi.KernelBase); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	b.prog = prog
	return nil
}

// memory is fresh, zero guest RAM.
func (b *coldBoot) memory() (*Memory, error) { return newMemory(b.vm.cfg.MemSize) }

// load places kernel, program, system tables, initial stack and boot info
// and puts the vCPU in long mode at the kernel's entry.
func (b *coldBoot) load(feat cpuFeatures) error {
	vm, cfg, prog := b.vm, &b.vm.cfg, b.prog
	entry, lstar, err := loadKernel(vm.mem, cfg.Kernel)
	if err != nil {
		return err
	}
	if err := prog.load(vm.mem, cfg.Program); err != nil {
		return fmt.Errorf("program: %w", err)
	}
	if err := writeSystemTables(vm.mem); err != nil {
		return err
	}
	si := stackInfo{Phdr: prog.Phdr, Phent: prog.Phent, Phnum: prog.Phnum, Entry: prog.Entry, Hwcap: feat.hwcap}
	if _, err := rand.Read(si.Random[:]); err != nil {
		return fmt.Errorf("AT_RANDOM: %w", err)
	}
	args := cfg.Args
	if len(args) == 0 {
		args = []string{"function"}
	}
	rsp, stack, err := buildStack(vm.mem.Size(), args, cfg.Env, si)
	if err != nil {
		return err
	}
	if err := vm.mem.Write(rsp, stack); err != nil {
		return err
	}
	fsgs, err := setupVCPU(vm.cpu, feat, entry, lstar)
	if err != nil {
		return err
	}
	var flags uint32
	if fsgs {
		flags |= abi.BootFSGSBase
	}
	if cfg.PortIO {
		flags |= abi.BootHCPIO
	}
	if cfg.TraceSyscalls {
		flags |= abi.BootTrace
	}
	if vm.bootInfo, err = bootInfo(cfg, vm.mem, prog, rsp, flags); err != nil {
		return err
	}
	return writeBootInfo(vm.mem, vm.bootInfo)
}

// start stamps the boot clock.
func (b *coldBoot) start(context.Context) *Result {
	if err := b.vm.stampClock(); err != nil {
		return b.vm.internal(err)
	}
	return nil
}
