/*
 * kiln_abi.h — the whole contract between the Kiln guest kernel and the
 * Kiln VMM (unikernel/vmm). Its Go twin is unikernel/abi/abi.go; the test
 * unikernel/abi/abi_test.go compiles this header and proves that every
 * constant, size and offset agrees. Change both together, append fields only,
 * and bump KILN_ABI_VERSION on any change a running guest could notice.
 *
 * Model: Solo5's hvt_abi.h. A hypercall is one guest store of the
 * guest-physical address of an argument struct to the MMIO doorbell
 * KILN_HC_MMIO_BASE + 8 * nr (from ring 3; no ring-0 entry), or, on the
 * alternative path, one `outl` of that address to port KILN_HC_PIO_BASE + nr
 * from the ring-0 stub. Each struct has IN fields (guest → VMM) and OUT
 * fields (VMM → guest). The VMM bounds-checks every address and length
 * against guest memory: a bad one ends the VM, never the host.
 *
 * Guest physical memory map. The VMM's boot page tables identity-map it with
 * 2 MiB pages, every page user-accessible (one protection domain); the guest
 * kernel then installs its own tables that keep exactly this identity map
 * (its "direct map", below 4 GiB) and map the function's brk heap and mmap
 * regions at virtual addresses above 4 GiB onto 2 MiB frames of guest RAM
 * (unikernel/kernel/libos.h has the virtual layout):
 *
 *   0x0000_0000 ┌──────────────────────────────┐
 *               │ page tables (not mapped:     │  null guard — a NULL
 *               │ PML4, PDPT, PDs)             │  dereference faults
 *   0x0020_0000 ├──────────────────────────────┤
 *               │ boot info (VMM → kernel)     │  KILN_BOOTINFO_GPA
 *               │ GDT, TSS, IDT                │  built by the VMM / kernel
 *               │ ring-0 stack, IST stack      │
 *   0x0021_0000 ├──────────────────────────────┤
 *               │ guest kernel image           │  KILN_KERNEL_BASE
 *   0x0040_0000 ├──────────────────────────────┤
 *               │ function ELF, then brk heap, │  KILN_USER_BASE
 *               │ then mmap area (kernel-      │
 *               │ managed), ...                │
 *               │ initial stack (argv, envp,   │
 *               │ auxv) at the top of memory   │
 *   mem_size    └──────────────────────────────┘
 *   0xFFE0_0000   MMIO doorbells (no memslot)    KILN_HC_MMIO_BASE
 */
#ifndef KILN_ABI_H
#define KILN_ABI_H

#include <stdint.h>

#define KILN_ABI_VERSION 3

/* Guest physical layout. */
#define KILN_PAGETABLE_GPA   0x1000ULL   /* PML4; PDPT at +0x1000; PDs after */
#define KILN_BOOTINFO_GPA    0x200000ULL /* struct kiln_boot_info */
#define KILN_GDT_GPA         0x201000ULL /* Linux layout, see selectors */
#define KILN_TSS_GPA         0x202000ULL
#define KILN_IDT_GPA         0x203000ULL /* 256 gates; the kernel fills it */
#define KILN_R0_STACK_TOP    0x208000ULL /* TSS.RSP0 */
#define KILN_IST_STACK_TOP   0x20C000ULL /* TSS.IST1: NMI, #DF, #MC */
#define KILN_KERNEL_BASE     0x210000ULL /* kernel ELF is linked here */
#define KILN_KERNEL_LIMIT    0x400000ULL /* kernel image must end below */
#define KILN_USER_BASE       0x400000ULL /* lowest address a function uses */
#define KILN_MMIO_GPA        0xFFE00000ULL
#define KILN_MEM_MAX         0xC0000000ULL /* guest RAM stays below MMIO */
#define KILN_MEM_ALIGN       0x200000ULL   /* guest RAM is whole 2 MiB pages */

/* GDT selectors: the Linux x86-64 layout (DESIGN.md explains why). */
#define KILN_SEL_KERNEL_CS   0x10
#define KILN_SEL_KERNEL_DS   0x18
#define KILN_SEL_USER32_CS   0x23
#define KILN_SEL_USER_DS     0x2b
#define KILN_SEL_USER_CS     0x33
#define KILN_SEL_TSS         0x40

/* Hypercalls. */
#define KILN_HC_MMIO_BASE    KILN_MMIO_GPA /* store gpa to BASE + 8*nr */
#define KILN_HC_PIO_BASE     0x500         /* outl gpa to BASE + nr */
#define KILN_HC_IO           1 /* struct kiln_hc_io */
#define KILN_HC_EXIT         2 /* struct kiln_hc_exit */
#define KILN_HC_DISCARD      3 /* struct kiln_hc_discard */
#define KILN_HC_MAX          3

/* kiln_hc_io.flags */
#define KILN_IO_WAIT_INPUT   0x1 /* block until input, EOF or the deadline */

/*
 * KILN_HC_IO: flush the guest's buffered stdout/stderr bytes to the VMM and,
 * if in_cap > 0, receive input (stdin bytes: an exec function's request
 * body, or a serve function's next request frame) straight into in_gpa.
 * With KILN_IO_WAIT_INPUT the vCPU waits in the VMM (no host CPU) until input
 * arrives, the input ends (in_eof = 1), or the guest TSC reaches
 * deadline_tsc (0 = no deadline). With in_cap = 0 and a deadline it is a
 * sleep. A warm serve invocation is exactly one of these: its response is
 * the flushed stdout, its next request the input.
 */
struct kiln_hc_io {
    /* IN */
    uint64_t out_gpa;      /* stdout bytes to flush */
    uint64_t out_len;
    uint64_t err_gpa;      /* stderr bytes to flush */
    uint64_t err_len;
    uint64_t in_gpa;       /* where input goes */
    uint64_t in_cap;       /* 0: flush (and maybe sleep) only */
    uint64_t deadline_tsc; /* 0: none */
    uint32_t flags;        /* KILN_IO_* */
    uint32_t _pad0;
    /* OUT */
    uint64_t in_len;       /* bytes written at in_gpa */
    uint32_t in_eof;       /* 1: no more input will ever come */
    uint32_t _pad1;
};

/* kiln_hc_exit.reason */
#define KILN_EXIT_NORMAL     0 /* exit/exit_group: status is the code */
#define KILN_EXIT_SIGNAL     1 /* the function faulted: signo, fault_* set */
#define KILN_EXIT_PANIC      2 /* the kernel itself failed; message on stderr */

#define KILN_ENOSYS_SLOTS    16

/*
 * KILN_HC_EXIT: the last flush and the end of the VM, in one exit. The VM is
 * destroyed after it; it never returns.
 */
struct kiln_hc_exit {
    /* IN */
    uint64_t out_gpa;
    uint64_t out_len;
    uint64_t err_gpa;
    uint64_t err_len;
    int32_t  status;       /* exit code; 128 + signo for KILN_EXIT_SIGNAL */
    uint32_t reason;       /* KILN_EXIT_* */
    uint32_t signo;        /* SIGSEGV, SIGILL, SIGFPE, SIGTRAP, ... */
    uint32_t fault_vector; /* x86 exception vector */
    uint64_t fault_rip;
    uint64_t fault_addr;   /* CR2 for #PF */
    uint64_t fault_error;  /* exception error code */
    uint64_t syscalls;     /* syscalls handled in this boot */
    uint64_t enosys;       /* of which answered -ENOSYS */
    uint64_t ring0_entries;/* exceptions + int3 gates taken */
    /* The first KILN_ENOSYS_SLOTS distinct unknown syscall numbers seen. */
    uint32_t enosys_nr[KILN_ENOSYS_SLOTS];
    uint32_t enosys_count[KILN_ENOSYS_SLOTS];
    uint64_t mem_used;     /* bytes of guest RAM in use at the end */
    uint64_t mem_peak;     /* the most ever in use */
};

#define KILN_DISCARD_MAX     32

/* One guest-physical range of a discard: both multiples of 4 KiB. */
struct kiln_discard_range {
    uint64_t gpa;
    uint64_t len;
};

/*
 * KILN_HC_DISCARD: the guest no longer needs the contents of up to
 * KILN_DISCARD_MAX ranges of its RAM (freed 2 MiB frames, or unmapped
 * parts of frames it keeps). The VMM gives the host memory back; every
 * byte of every range reads as zero afterwards, which is what lets the
 * guest hand out freed frames without zeroing them itself. Each range
 * must lie inside guest RAM at or above KILN_KERNEL_LIMIT, page-aligned
 * and non-empty; any bad range ends the VM and nothing is discarded.
 */
struct kiln_hc_discard {
    /* IN */
    uint32_t count;        /* ranges used, 0..KILN_DISCARD_MAX */
    uint32_t _pad0;
    struct kiln_discard_range ranges[KILN_DISCARD_MAX];
};

/* kiln_boot_info.magic: "KILNBOOT" little-endian. */
#define KILN_BOOT_MAGIC      0x544f4f424e4c494bULL

/* kiln_boot_info.flags */
#define KILN_BOOT_FSGSBASE   0x1 /* CR4.FSGSBASE is set: wrfsbase works */
#define KILN_BOOT_HC_PIO     0x2 /* use the port-I/O hypercall path */
#define KILN_BOOT_TRACE      0x4 /* log every syscall to stderr */

#define KILN_HOSTNAME_MAX    64

/*
 * The boot-info page, written by the VMM at KILN_BOOTINFO_GPA before the
 * first instruction. The VMM also builds the function's initial stack at
 * initial_rsp exactly as Linux's execve leaves it (argc, argv, envp, auxv).
 */
struct kiln_boot_info {
    uint64_t magic;        /* KILN_BOOT_MAGIC */
    uint32_t abi_version;  /* KILN_ABI_VERSION */
    uint32_t flags;        /* KILN_BOOT_* */
    uint64_t mem_size;     /* guest RAM bytes, from GPA 0 */
    uint64_t tsc_khz;
    uint64_t boot_tsc;     /* TSC value at which boot_wall_ns was read */
    uint64_t boot_wall_ns; /* Unix time in ns at boot_tsc */
    uint8_t  entropy[32];  /* fresh host randomness, seeds getrandom */
    uint64_t entry;        /* function ELF entry point */
    uint64_t phdr;         /* guest address of the program headers */
    uint64_t phnum;
    uint64_t phent;
    uint64_t image_start;  /* lowest loaded address of the function */
    uint64_t image_end;    /* page-aligned end of its highest segment */
    uint64_t stack_low;    /* the stack region: [stack_low, stack_top) */
    uint64_t stack_top;
    uint64_t initial_rsp;  /* points at argc */
    char     hostname[KILN_HOSTNAME_MAX];
    /* Bumped by the VMM whenever it writes new entropy (each snapshot
     * restore): the kernel reseeds getrandom when it changes, so clones of
     * one snapshot never share a stream. The VMM also moves boot_wall_ns
     * then (boot_tsc and the TSC stay continuous: monotonic time never
     * jumps, the wall clock is the host's again). */
    uint64_t entropy_gen;
};

_Static_assert(sizeof(struct kiln_hc_io) == 80, "kiln_hc_io size");
_Static_assert(sizeof(struct kiln_hc_exit) == 240, "kiln_hc_exit size");
_Static_assert(sizeof(struct kiln_hc_discard) == 520, "kiln_hc_discard size");
_Static_assert(sizeof(struct kiln_boot_info) == 224, "kiln_boot_info size");

#endif /* KILN_ABI_H */
