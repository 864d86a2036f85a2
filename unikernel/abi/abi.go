// Package abi is the Go half of the guest/VMM contract; kiln_abi.h in this
// directory is the C half and the authority on comments. abi_test.go compiles
// the header with gcc and proves that every constant, size and offset here
// agrees with it. Append fields only; bump Version on any change a running
// guest could notice.
package abi

// Version is KILN_ABI_VERSION.
const Version = 3

// Guest physical layout (see the map in kiln_abi.h).
const (
	PageTableGPA = 0x1000
	BootInfoGPA  = 0x200000
	GDTGPA       = 0x201000
	TSSGPA       = 0x202000
	IDTGPA       = 0x203000
	R0StackTop   = 0x208000
	ISTStackTop  = 0x20C000
	KernelBase   = 0x210000
	KernelLimit  = 0x400000
	UserBase     = 0x400000
	MMIOGPA      = 0xFFE00000
	MemMax       = 0xC0000000
	MemAlign     = 0x200000
	HostnameMax  = 64
	EnosysSlots  = 16
	BootMagic    = 0x544f4f424e4c494b
	HCMMIOBase   = MMIOGPA
	HCPIOBase    = 0x500
	HCIO         = 1
	HCExit       = 2
	HCDiscard    = 3
	HCMax        = 3
	DiscardMax   = 32
	IOWaitInput  = 0x1
	ExitNormal   = 0
	ExitSignal   = 1
	ExitPanic    = 2
	BootFSGSBase = 0x1
	BootHCPIO    = 0x2
	BootTrace    = 0x4
	SelKernelCS  = 0x10
	SelKernelDS  = 0x18
	SelUser32CS  = 0x23
	SelUserDS    = 0x2b
	SelUserCS    = 0x33
	SelTSS       = 0x40
)

// HCIOArgs is struct kiln_hc_io.
type HCIOArgs struct {
	// IN
	OutGPA      uint64
	OutLen      uint64
	ErrGPA      uint64
	ErrLen      uint64
	InGPA       uint64
	InCap       uint64
	DeadlineTSC uint64
	Flags       uint32
	_           uint32
	// OUT
	InLen uint64
	InEOF uint32
	_     uint32
}

// HCExitArgs is struct kiln_hc_exit.
type HCExitArgs struct {
	OutGPA       uint64
	OutLen       uint64
	ErrGPA       uint64
	ErrLen       uint64
	Status       int32
	Reason       uint32
	Signo        uint32
	FaultVector  uint32
	FaultRIP     uint64
	FaultAddr    uint64
	FaultError   uint64
	Syscalls     uint64
	Enosys       uint64
	Ring0Entries uint64
	EnosysNr     [EnosysSlots]uint32
	EnosysCount  [EnosysSlots]uint32
	MemUsed      uint64
	MemPeak      uint64
}

// DiscardRange is struct kiln_discard_range.
type DiscardRange struct {
	GPA uint64
	Len uint64
}

// HCDiscardArgs is struct kiln_hc_discard.
type HCDiscardArgs struct {
	Count  uint32
	_      uint32
	Ranges [DiscardMax]DiscardRange
}

// BootInfo is struct kiln_boot_info.
type BootInfo struct {
	Magic      uint64
	ABIVersion uint32
	Flags      uint32
	MemSize    uint64
	TSCkHz     uint64
	BootTSC    uint64
	BootWallNs uint64
	Entropy    [32]byte
	Entry      uint64
	Phdr       uint64
	Phnum      uint64
	Phent      uint64
	ImageStart uint64
	ImageEnd   uint64
	StackLow   uint64
	StackTop   uint64
	InitialRSP uint64
	Hostname   [HostnameMax]byte
	EntropyGen uint64 // bumped with each new Entropy (snapshot restore): the kernel reseeds
}
