/*
 * vm-mem — the address space as Go uses it, in a 64 MiB VM: a 1 GiB
 * PROT_NONE reservation at a hint, MAP_FIXED RW over part of it, memory
 * given back with MADV_DONTNEED and touched again, mprotect, munmap, and
 * the memory limit seen as ENOMEM from MAP_FIXED. argv[1] picks the part:
 *   reserve   all of the above; prints SUCCESS
 *   grow      MAP_FIXED 4 MiB steps until ENOMEM, then prints the MiB
 *             (Go's heap growth: it must end in ENOMEM, not a crash)
 *   lazy      touches a 256 MiB lazy mapping page by page: the VM must
 *             end with SIGKILL (status 137) partway
 *   sparse    touches one byte per 2 MiB of a 256 MiB lazy mapping: fits
 *             (4 KiB pages), prints SUCCESS
 *   readlazy  read(0) into an untouched lazy mapping, echo it back
 */
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
#include "guest.h"

#define MiB (1UL << 20)
#define HINT ((char *)0xc000000000UL)

static void all(char *p, size_t n, int c, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (char)c)
            ABORT("%s: byte %zu is %d, want %d", what, i, p[i], c);
}

static void reserve(void)
{
    char *r = mmap(HINT, 1UL << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(r == HINT);
    /* Heap growth inside the reservation, as Go's sysMap. */
    char *h = mmap(r + 4 * MiB, 8 * MiB, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    EXPECT(h == r + 4 * MiB);
    all(h, 8 * MiB, 0, "fresh MAP_FIXED memory");
    memset(h, 0x5a, 8 * MiB);
    /* Given back: a whole 2 MiB page and a partial range; both read zero
     * afterwards, without re-mapping, and the rest is untouched. */
    EXPECT(madvise(h + 2 * MiB, 2 * MiB, MADV_DONTNEED) == 0);
    EXPECT(madvise(h + 5 * MiB, 64 * 1024, MADV_DONTNEED) == 0);
    all(h + 2 * MiB, 2 * MiB, 0, "after DONTNEED of a whole page");
    all(h + 5 * MiB, 64 * 1024, 0, "after DONTNEED of a partial range");
    all(h, 2 * MiB, 0x5a, "before the DONTNEED range");
    all(h + 5 * MiB + 64 * 1024, 64 * 1024, 0x5a, "after the partial range");
    memset(h + 2 * MiB, 0x33, 2 * MiB);
    /* PROT_NONE keeps the contents; back to RW they are still there. */
    EXPECT(mprotect(h, 2 * MiB, PROT_NONE) == 0);
    EXPECT(write(1, h, 1) == -1 && errno == EFAULT);
    EXPECT(mprotect(h, 2 * MiB, PROT_READ | PROT_WRITE) == 0);
    all(h, 2 * MiB, 0x5a, "after mprotect NONE and back");
    /* munmap of the middle: mapping it again reads zero. */
    EXPECT(munmap(h + 2 * MiB, 2 * MiB) == 0);
    EXPECT(write(1, h + 2 * MiB, 1) == -1 && errno == EFAULT);
    EXPECT(mmap(h + 2 * MiB, 2 * MiB, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == h + 2 * MiB);
    all(h + 2 * MiB, 2 * MiB, 0, "re-mapped after munmap");
    EXPECT(mmap(h, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == MAP_FAILED &&
           errno == EEXIST);
    /* More than the VM has, at once: ENOMEM, and the old mapping stays. */
    EXPECT(mmap(r + 512 * MiB, 128 * MiB, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED && errno == ENOMEM);
    EXPECT(write(1, r + 512 * MiB, 1) == -1 && errno == EFAULT);
    /* A big lazy mapping touched sparsely costs what is touched. */
    char *big = mmap(0, 32 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(big != MAP_FAILED);
    big[12345] = 1;
    big[32 * MiB - 1] = 2;
    EXPECT(big[12345] + big[32 * MiB - 1] == 3 && big[16 * MiB] == 0);
    EXPECT(munmap(big, 32 * MiB) == 0);
    EXPECT(munmap(r, 1UL << 30) == 0);
    printf("SUCCESS\n");
}

static void grow(void)
{
    char *r = mmap(HINT, 1UL << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(r == HINT);
    size_t n = 0;
    for (;;) {
        char *p = mmap(r + n, 4 * MiB, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) {
            EXPECT(errno == ENOMEM);
            break;
        }
        memset(p, 1, 4 * MiB);
        n += 4 * MiB;
    }
    /* Memory given back can be taken again. */
    EXPECT(madvise(r, n, MADV_DONTNEED) == 0);
    EXPECT(mmap(r + n, 4 * MiB, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == r + n);
    printf("SUCCESS: %zu MiB\n", n / MiB);
}

static void lazy(void)
{
    char *p = mmap(0, 256 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(p != MAP_FAILED);
    for (size_t off = 0; off < 256 * MiB; off += 4096) {
        p[off] = 1;
        if ((off + 4096) % (2 * MiB) == 0)
            dprintf(2, "touched %zu MiB\n", (off + 4096) / MiB);
    }
    printf("ABORT: 256 MiB touched in a 64 MiB VM\n");
}

/* One byte in every 2 MiB of a 256 MiB lazy mapping (a sparse index): each
 * touch commits a few 4 KiB pages, not a 2 MiB frame, so it all fits. */
static void sparse(void)
{
    char *p = mmap(0, 256 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(p != MAP_FAILED);
    for (size_t off = 0; off < 256 * MiB; off += 2 * MiB)
        p[off + (off / MiB) * 4096] = (char)(off / MiB + 1);
    for (size_t off = 0; off < 256 * MiB; off += 2 * MiB) {
        EXPECT(p[off + (off / MiB) * 4096] == (char)(off / MiB + 1));
        EXPECT(p[off + (off / MiB) * 4096 + 1] == 0);
    }
    printf("SUCCESS\n");
}

static void readlazy(void)
{
    char *p = mmap(0, 64 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(p != MAP_FAILED);
    char *at = p + 6 * MiB - 100; /* across a 2 MiB boundary */
    size_t got = 0;
    for (;;) {
        ssize_t n = read(0, at + got, 4096);
        EXPECT(n >= 0);
        if (n == 0)
            break;
        got += (size_t)n;
    }
    EXPECT(write(1, at, got) == (ssize_t)got);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "reserve";
    if (!strcmp(what, "reserve"))
        reserve();
    else if (!strcmp(what, "grow"))
        grow();
    else if (!strcmp(what, "lazy"))
        lazy();
    else if (!strcmp(what, "sparse"))
        sparse();
    else if (!strcmp(what, "readlazy"))
        readlazy();
    else
        ABORT("unknown part %s", what);
    return 0;
}
