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

/* ---- vmem.c: the function's address space, as bookkeeping ---- */

/* mmap/mprotect protection bits and flags (Linux values). */
#define KPROT_READ 0x1
#define KPROT_WRITE 0x2
#define KPROT_EXEC 0x4
#define KMAP_SHARED 0x01
#define KMAP_PRIVATE 0x02
#define KMAP_FIXED 0x10
#define KMAP_ANONYMOUS 0x20
#define KMAP_FIXED_NOREPLACE 0x100000

/* One mmap'd range [start, end), page-aligned. */
struct vregion {
    uint64_t start, end;
    uint32_t prot;
    uint32_t _pad;
};

/* Enough for musl and for Go's start-up; a full table is -ENOMEM, not a
 * crash. */
#define VMEM_MAX_REGIONS 512

/*
 * vmem is the function's address space. Everything is identity-mapped RAM
 * already; this only decides which ranges the function owns:
 *   [image_start, image_end)  the ELF image (VMM-loaded)
 *   [brk_base, brk)           the heap, growing up from image_end
 *   regions[]                 mmap'd ranges inside [lo, hi), sorted
 *   [stack_low, stack_top)    the initial stack (VMM-built)
 * [clean_lo, clean_hi) is the part of the managed area never handed out:
 * it still holds the zeros of fresh guest memory, so reusing memory only
 * zeroes what lies outside it (touching a page costs a host fault).
 */
struct vmem {
    uint64_t image_start, image_end;
    uint64_t stack_low, stack_top;
    uint64_t lo, hi;        /* managed area: [image_end, stack_low) */
    uint64_t brk_base, brk; /* brk is the exact value the program set */
    uint64_t clean_lo, clean_hi;
    int n;
    struct vregion r[VMEM_MAX_REGIONS];
};

void vmem_init(struct vmem *vm, uint64_t image_start, uint64_t image_end,
               uint64_t stack_low, uint64_t stack_top);
/* brk(2): returns the new break, or the old one if newbrk is unacceptable. */
uint64_t vmem_brk(struct vmem *vm, uint64_t newbrk);
/* mmap(2) for anonymous memory: the address or -errno. */
int64_t vmem_mmap(struct vmem *vm, uint64_t addr, uint64_t len, uint32_t prot,
                  uint32_t flags);
int64_t vmem_munmap(struct vmem *vm, uint64_t addr, uint64_t len);
int64_t vmem_mprotect(struct vmem *vm, uint64_t addr, uint64_t len,
                      uint32_t prot);
/* madvise(MADV_DONTNEED): zero the mapped pages of the range. */
int64_t vmem_dontneed(struct vmem *vm, uint64_t addr, uint64_t len);
/* Whether the function may hand the kernel [addr, addr+len): the range lies
 * wholly in the image, the heap, accessible mmap'd regions or the stack. */
int vmem_valid(const struct vmem *vm, uint64_t addr, uint64_t len);
/* Length of the NUL-terminated string at addr if it is wholly valid and
 * shorter than max, else -1. */
int64_t vmem_strlen(const struct vmem *vm, uint64_t addr, uint64_t max);

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
