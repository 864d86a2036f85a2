package vmm

// The KVM ABI (linux/kvm.h, x86-64): ioctl numbers, exit reasons and the
// structs the VMM exchanges with the kernel. Only kvm_unsafe.go passes them
// to ioctl; everything else handles them as ordinary Go values.

const (
	kvmAPIVersion = 12

	ioctlGetAPIVersion      = 0xAE00
	ioctlCreateVM           = 0xAE01
	ioctlCheckExtension     = 0xAE03
	ioctlGetVCPUMmapSize    = 0xAE04
	ioctlGetSupportedCPUID  = 0xC008AE05
	ioctlCreateVCPU         = 0xAE41
	ioctlSetUserMemory      = 0x4020AE46
	ioctlSetTSSAddr         = 0xAE47
	ioctlRun                = 0xAE80
	ioctlGetRegs            = 0x8090AE81
	ioctlSetRegs            = 0x4090AE82
	ioctlGetSregs           = 0x8138AE83
	ioctlSetSregs           = 0x4138AE84
	ioctlGetMSRs            = 0xC008AE88
	ioctlSetMSRs            = 0x4008AE89
	ioctlGetFPU             = 0x81A0AE8C
	ioctlSetFPU             = 0x41A0AE8D
	ioctlSetCPUID2          = 0x4008AE90
	ioctlGetTSCkHz          = 0xAEA3
	ioctlGetXCRs            = 0x8188AEA6
	ioctlSetXCRs            = 0x4188AEA7
	ioctlGetXSave           = 0x9000AEA4
	ioctlSetXSave           = 0x5000AEA5
	kvmCapXCRs              = 56
	kvmMaxCPUIDEntries      = 256
	kvmTSSAddr              = 0xfffbd000 // 3 pages below the 4 GiB line, clear of the doorbells
	kvmMemLogDirtyPages     = 1 << 0
	kvmCPUIDFlagSignificant = 1 << 0
)

// KVMIoctls lists every ioctl request the VMM issues, for a sandbox's
// allow-list (node-agent/vmhost's seccomp filter): a request added above
// must be added here, or a jailed worker dies issuing it.
func KVMIoctls() []uint64 {
	return []uint64{ioctlGetAPIVersion, ioctlCreateVM, ioctlCheckExtension, ioctlGetVCPUMmapSize,
		ioctlGetSupportedCPUID, ioctlCreateVCPU, ioctlSetUserMemory, ioctlSetTSSAddr, ioctlRun,
		ioctlGetRegs, ioctlSetRegs, ioctlGetSregs, ioctlSetSregs, ioctlGetMSRs, ioctlSetMSRs,
		ioctlGetFPU, ioctlSetFPU, ioctlSetCPUID2, ioctlGetTSCkHz, ioctlGetXCRs, ioctlSetXCRs,
		ioctlGetXSave, ioctlSetXSave}
}

// KVM exit reasons (kvm_run.exit_reason).
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHypercall     = 3
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitInternalError = 17
)

var exitNames = map[uint32]string{
	exitUnknown: "KVM_EXIT_UNKNOWN", exitException: "KVM_EXIT_EXCEPTION", exitIO: "KVM_EXIT_IO",
	exitHypercall: "KVM_EXIT_HYPERCALL", exitDebug: "KVM_EXIT_DEBUG", exitHLT: "KVM_EXIT_HLT",
	exitMMIO: "KVM_EXIT_MMIO", exitShutdown: "KVM_EXIT_SHUTDOWN", exitFailEntry: "KVM_EXIT_FAIL_ENTRY",
	exitIntr: "KVM_EXIT_INTR", exitInternalError: "KVM_EXIT_INTERNAL_ERROR",
}

// kvm_run field offsets (the mmap'd page shared with KVM).
const (
	runImmediateExit = 1
	runExitReason    = 8
	runExitUnion     = 32
	runSize          = 2048 // what the VMM reads: the header and the exit union
)

// MSRs the boot programs.
const (
	msrEFER    = 0xC0000080
	msrSTAR    = 0xC0000081
	msrLSTAR   = 0xC0000082
	msrCSTAR   = 0xC0000083
	msrSFMASK  = 0xC0000084
	msrFSBase  = 0xC0000100
	msrGSBase  = 0xC0000101
	msrKGSBase = 0xC0000102
	msrTSC     = 0x10
	msrPAT     = 0x277
)

type kvmUserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type kvmSegment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8
}

type kvmDtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS  kvmSegment
	TR, LDT                 kvmSegment
	GDT, IDT                kvmDtable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64
}

type kvmFPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

type kvmMSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// kvmMSRs is struct kvm_msrs with room for the MSRs the boot sets.
type kvmMSRs struct {
	NMSRs   uint32
	_       uint32
	Entries [16]kvmMSREntry
}

type kvmCPUIDEntry2 struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

type kvmCPUID2 struct {
	NEnt    uint32
	_       uint32
	Entries [kvmMaxCPUIDEntries]kvmCPUIDEntry2
}

// kvmXSave is struct kvm_xsave: the XSAVE area as KVM lays it out (legacy
// FXSAVE region, header, extended components), 4 KiB.
type kvmXSave struct {
	Region [1024]uint32
}

type kvmXCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

type kvmXCRs struct {
	NXCRs uint32
	Flags uint32
	XCRs  [16]kvmXCR
	_     [16]uint64
}
