/*
 * libos.h — internal interfaces of the Kiln library OS (everything in
 * unikernel/kernel/ outside arch/). The pure parts (vmem.c, chacha.c,
 * ktime.c, kfmt.c) depend on nothing but this header and the four klib
 * memory functions, so unikernel/kernel/test compiles them natively and
 * tests them with the host's gcc and libc.
 */
#ifndef KILN_LIBOS_H
#define KILN_LIBOS_H

#include <stdint.h>
#include <stddef.h>

/* Provided by arch/klib in the kernel and by libc in host tests. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#define PAGE_SIZE 4096ULL
#define PAGE_UP(x) (((x) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
#define PAGE_DOWN(x) ((x) & ~(PAGE_SIZE - 1))

/* Linux errno values the library OS returns (negated). */
#define EPERM 1
#define ENOENT 2
#define ESRCH 3
#define EINTR 4
#define EIO 5
#define EBADF 9
#define EAGAIN 11
#define ENOMEM 12
#define EACCES 13
#define EFAULT 14
#define EEXIST 17
#define ENODEV 19
#define EINVAL 22
#define EMFILE 24
#define ENOTTY 25
#define ENOSYS 38
#define ESPIPE 29
#define EPIPE 32
#define ERANGE 34
#define ENOTSUP 95
#define ETIMEDOUT 110
#define EOVERFLOW 75

/* ---- vmem.c: the function's address space ---- */

#include "kiln_abi.h"

/* mmap/mprotect protection bits, flags and madvise advice (Linux values). */
#define KPROT_READ 0x1
#define KPROT_WRITE 0x2
#define KPROT_EXEC 0x4
#define KMAP_SHARED 0x01
#define KMAP_PRIVATE 0x02
#define KMAP_FIXED 0x10
#define KMAP_ANONYMOUS 0x20
#define KMAP_NORESERVE 0x4000
#define KMAP_POPULATE 0x8000
#define KMAP_FIXED_NOREPLACE 0x100000
#define KMADV_DONTNEED 4
#define KMADV_FREE 8
#define KMADV_REMOVE 9

#define HUGE_SIZE (2ULL << 20)
#define HUGE_DOWN(x) ((x) & ~(HUGE_SIZE - 1))
#define HUGE_UP(x) (((x) + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1))

/*
 * The virtual layout (guest-virtual addresses; the kernel's page tables):
 *   [0, 4 GiB)            the direct map: guest RAM at its physical address
 *                         (kernel, ELF image, initial stack, every frame)
 *                         and the MMIO doorbells; never handed out
 *   [4 GiB, 64 GiB)       the brk heap, from VMEM_BRK_BASE up
 *   [64 GiB, TASK_SIZE)   mmap: hints and MAP_FIXED anywhere here; without
 *                         a usable hint, top-down from VMEM_MMAP_TOP
 */
#define VMEM_DIRECT_END 0x100000000ULL
#define VMEM_BRK_BASE 0x100000000ULL
#define VMEM_BRK_END 0x1000000000ULL
#define VMEM_MMAP_LO 0x1000000000ULL
#define VMEM_MMAP_TOP 0x7f0000000000ULL
#define VMEM_MMAP_HI 0x7ffffffff000ULL /* Linux's TASK_SIZE */

/* Accessible anonymous mappings up to this size are committed at mmap, so
 * a program that allocates until malloc fails (rather than until it is
 * killed) sees -ENOMEM, as under Linux's overcommit heuristic; bigger ones
 * (sparse tables, arenas) are committed page by page on first touch. */
#define VMEM_EAGER_MAX (4ULL << 20)

/* One mmap'd range [start, end), page-aligned. */
struct vregion {
    uint64_t start, end;
    uint32_t prot;
    uint32_t _pad;
};

/* Enough for musl and for Go's start-up; a full table is -ENOMEM, not a
 * crash. */
#define VMEM_MAX_REGIONS 512
#define VMEM_MAX_FRAMES (KILN_MEM_MAX / HUGE_SIZE)
/* 4 KiB pages per 2 MiB page, and the first cluster a demand fault maps
 * (it doubles with the pages the table already holds, so dense touching
 * costs ≈ 6 faults per 2 MiB and sparse touching 64 KiB each). */
#define VMEM_PTES 512
#define VMEM_FAULT_CLUSTER 16
#define VMEM_TFREE 64

/* Where vmem_init finds memory and what it must keep. */
struct vmem_layout {
    uint64_t mem_size;      /* guest RAM bytes, a multiple of 2 MiB */
    uint64_t phys_off;      /* where guest-physical 0 is (0 in the kernel;
                               a host buffer in the host tests) */
    uint64_t image_start, image_end;
    uint64_t stack_low, stack_top;
    uint64_t pt_pool;       /* gpa of zeroed 4 KiB pages for page tables */
    uint64_t pt_pool_pages;
};

/*
 * vmem is the function's address space: the regions it owns (so the kernel
 * can refuse every other pointer), the 2 MiB frames of guest RAM, and the
 * page tables that map the first to the second.
 *
 * A user 2 MiB virtual page is in one of three states, told by its PD
 * entry: 0 = nothing committed; a leaf (frame | PS | PTE_COMMITTED, plus
 * P|RW|US while some accessible region overlaps it) for dense memory; or a
 * page table of 4 KiB entries (pte = page | PTE_COMMITTED, plus P|RW|US
 * while an accessible region covers that page; 0 = not committed) for
 * sparse memory. 4 KiB pages come from "small-page frames": 2 MiB frames
 * carved into 512 pages with a bitmap each; a frame goes back to the pool
 * when its last page is freed. A table never holds an empty page table: the
 * last page leaving unlinks it.
 *
 * Two invariants keep memory zero without the kernel writing it: a free
 * frame or page reads as zero, and so does every byte of committed memory
 * that no region covers — both because whatever loses its contents goes to
 * the host in a discard (dc) before the syscall ends (or, within one
 * syscall, before freed memory is handed out again).
 *
 * The memory limit is the frame pool (a partly used small-page frame counts
 * whole); vmem_used reports what is really committed: whole frames and
 * 4 KiB pages.
 */
struct vmem {
    uint64_t phys_off, mem_size;
    uint64_t image_start, image_end;
    uint64_t stack_low, stack_top;
    uint64_t brk_base, brk;  /* brk is the exact value the program set */
    uint64_t pml4;           /* gpa of the root table */
    uint64_t pt_next, pt_end;/* unused boot-pool table pages [pt_next, pt_end) */
    uint32_t nframes, free_frames;
    uint32_t sp_frames;      /* frames carved into 4 KiB pages */
    uint32_t sp_used;        /* pages in use in them (data and tables) */
    uint32_t sp_hint;        /* small-page frame to try first */
    uint32_t ntfree;         /* emptied page tables kept for reuse */
    uint64_t peak;           /* most bytes ever in use (see vmem_used) */
    int need_flush;          /* a present entry was removed or changed */
    int dc_freed;            /* dc holds memory marked free */
    /* Hands dc to the host (which zeroes every range) and empties it. */
    void (*discard)(struct vmem *vm);
    struct kiln_hc_discard dc;
    uint64_t frames[(VMEM_MAX_FRAMES + 63) / 64]; /* 1 = in use */
    uint64_t small[(VMEM_MAX_FRAMES + 63) / 64];  /* 1 = carved into pages */
    uint16_t sp_count[VMEM_MAX_FRAMES];            /* pages used per frame */
    uint64_t sp_bits[VMEM_MAX_FRAMES][8];          /* 1 = page in use */
    uint64_t tfree[VMEM_TFREE];
    int n;
    struct vregion r[VMEM_MAX_REGIONS];
};

/* Build the page tables (direct map of [2 MiB, mem_size) and the doorbell
 * page) and the frame pool; 0 or -ENOMEM. The caller loads vm->pml4. */
int vmem_init(struct vmem *vm, const struct vmem_layout *l,
              void (*discard)(struct vmem *vm));
/* brk(2): returns the new break, or the old one if newbrk is unacceptable
 * or memory cannot cover it. */
uint64_t vmem_brk(struct vmem *vm, uint64_t newbrk);
/* mmap(2) for anonymous memory: the address or -errno. */
int64_t vmem_mmap(struct vmem *vm, uint64_t addr, uint64_t len, uint32_t prot,
                  uint32_t flags);
int64_t vmem_munmap(struct vmem *vm, uint64_t addr, uint64_t len);
int64_t vmem_mprotect(struct vmem *vm, uint64_t addr, uint64_t len,
                      uint32_t prot);
int64_t vmem_madvise(struct vmem *vm, uint64_t addr, uint64_t len,
                     uint64_t advice);
/* mremap(2): only staying put (same size, or shrinking in place). */
int64_t vmem_mremap(struct vmem *vm, uint64_t addr, uint64_t old_len,
                    uint64_t new_len, uint64_t flags);
/* Whether the function may hand the kernel [addr, addr+len): the range lies
 * wholly in the image, the heap, accessible mmap'd regions or the stack. */
int vmem_valid(const struct vmem *vm, uint64_t addr, uint64_t len);
/* Whether [addr, addr+len) is wholly mapped, PROT_NONE included. */
int vmem_mapped(const struct vmem *vm, uint64_t addr, uint64_t len);
/* Length of the NUL-terminated string at addr if it is wholly valid and
 * shorter than max, else -1. Reads through the direct map, so it never
 * faults (an uncommitted page reads as the zeros it would hold). */
int64_t vmem_strlen(const struct vmem *vm, uint64_t addr, uint64_t max);
/* The guest-physical address addr is backed by, or 0 if not committed. */
uint64_t vmem_lookup(const struct vmem *vm, uint64_t addr);
/* A #PF at addr with error code err: 1 if a page was committed or mapped
 * (resume), 0 if the access is the program's fault, -ENOMEM if no frame
 * is left. */
int vmem_demand(struct vmem *vm, uint64_t addr, uint64_t err);
/* Commit the page of addr and give its gpa and the bytes contiguous from
 * it (≤ len, to the end of its 2 MiB or 4 KiB page): -EFAULT or -ENOMEM. */
int64_t vmem_translate(struct vmem *vm, uint64_t addr, uint64_t len,
                       uint64_t *gpa);
/* A free frame for the kernel (zero by the invariant): its gpa, or 0. */
uint64_t vmem_kframe(struct vmem *vm);
/* Bytes of guest RAM in use (kernel, image, stack, tables, whole frames and
 * 4 KiB pages) now and at most so far. */
uint64_t vmem_used(const struct vmem *vm);
uint64_t vmem_peak(const struct vmem *vm);
/* After the TLB flush that ends a syscall: page tables emptied during it
 * go back to the pool (until then the CPU may still hold links to them). */
void vmem_settle(struct vmem *vm);

/* ---- chacha.c: ChaCha20 (RFC 8439) and the getrandom CSPRNG ---- */

void chacha20_block(const uint32_t key[8], uint32_t counter,
                    const uint32_t nonce[3], uint8_t out[64]);

/* Fast-key-erasure generator: every fill draws a fresh key from the first
 * keystream block, so earlier output cannot be recomputed from the state. */
struct csprng {
    uint32_t key[8];
    uint64_t fills;
};
void csprng_seed(struct csprng *g, const uint8_t seed[32]);
void csprng_fill(struct csprng *g, uint8_t *out, size_t n);

/* ---- ktime.c: TSC ↔ nanoseconds without 128-bit division ---- */

#define NSEC_PER_SEC 1000000000ULL
/* Nanoseconds that tsc_delta ticks take at tsc_khz. */
uint64_t tsc_to_ns(uint64_t tsc_delta, uint64_t tsc_khz);
/* Ticks that ns nanoseconds take at tsc_khz, saturating at UINT64_MAX. */
uint64_t ns_to_tsc(uint64_t ns, uint64_t tsc_khz);

/* ---- kfmt.c: the few formats the kernel prints ---- */

/* A fixed buffer that silently truncates. */
struct kbuf {
    char *p;
    size_t len, cap;
};
void kb_str(struct kbuf *b, const char *s);
void kb_mem(struct kbuf *b, const char *s, size_t n);
void kb_hex(struct kbuf *b, uint64_t v);  /* 0x-prefixed */
void kb_dec(struct kbuf *b, int64_t v);
void kb_udec(struct kbuf *b, uint64_t v);

#endif /* KILN_LIBOS_H */
