/*
 * test_vmem.c — the address-space bookkeeping over a real host mapping at
 * the addresses the tests use, so zeroing is observed, not assumed.
 */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "ktest.h"
#include "../libos.h"

#define BASE 0x40000000ULL
#define SIZE (64ULL << 20)
#define IMG_END (BASE + 0x100000)
#define STK_LOW (BASE + SIZE - 0x100000)
#define STK_TOP (BASE + SIZE)

static struct vmem vm;

/* A fresh "guest": real zeroed memory at BASE, like fresh guest RAM. */
static void fresh(void)
{
    static int mapped;
    if (mapped)
        munmap((void *)BASE, SIZE);
    void *p = mmap((void *)BASE, SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != (void *)BASE) {
        perror("mmap test area");
        _exit(2);
    }
    mapped = 1;
    vmem_init(&vm, BASE, IMG_END, STK_LOW, STK_TOP);
}

static uint8_t *P(uint64_t a) { return (uint8_t *)(uintptr_t)a; }

static int all_zero(uint64_t a, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (P(a)[i])
            return 0;
    return 1;
}

TEST(brk_grows_shrinks_and_rezeroes)
{
    fresh();
    CHECK_EQ(vmem_brk(&vm, 0), IMG_END);
    CHECK_EQ(vmem_brk(&vm, IMG_END + 10000), IMG_END + 10000);
    CHECK(vmem_valid(&vm, IMG_END, 10000));
    CHECK(vmem_valid(&vm, IMG_END + 10000, 100)); /* rest of the last page */
    CHECK(!vmem_valid(&vm, IMG_END + 3 * 4096, 1));
    memset(P(IMG_END), 0xaa, 10000);
    CHECK_EQ(vmem_brk(&vm, IMG_END + 100), IMG_END + 100);
    CHECK(!vmem_valid(&vm, IMG_END + 4096, 1));
    CHECK_EQ(vmem_brk(&vm, IMG_END + 3 * 4096), IMG_END + 3 * 4096);
    /* Pages given back and taken again read as zero, like Linux. */
    CHECK(all_zero(IMG_END + 4096, 2 * 4096));
    /* Below the base or past the managed area: the old break stays. */
    CHECK_EQ(vmem_brk(&vm, BASE), IMG_END + 3 * 4096);
    CHECK_EQ(vmem_brk(&vm, STK_LOW + 4096), IMG_END + 3 * 4096);
}

TEST(mmap_top_down_and_munmap_split)
{
    fresh();
    int64_t a = vmem_mmap(&vm, 0, 3 * 4096, KPROT_READ | KPROT_WRITE,
                          KMAP_PRIVATE | KMAP_ANONYMOUS);
    CHECK_EQ(a, STK_LOW - 3 * 4096);
    int64_t b = vmem_mmap(&vm, 0, 100, KPROT_READ, KMAP_PRIVATE | KMAP_ANONYMOUS);
    CHECK_EQ(b, a - 4096);
    CHECK_EQ(vm.n, 2);
    CHECK(vmem_valid(&vm, (uint64_t)b, 4 * 4096));
    CHECK_EQ(vmem_munmap(&vm, (uint64_t)a + 4096, 4096), 0);
    CHECK_EQ(vm.n, 3);
    CHECK(!vmem_valid(&vm, (uint64_t)a + 4096, 1));
    CHECK(vmem_valid(&vm, (uint64_t)a, 4096));
    CHECK(vmem_valid(&vm, (uint64_t)a + 8192, 4096));
    CHECK_EQ(vmem_munmap(&vm, (uint64_t)a + 1, 4096), -EINVAL);
    CHECK_EQ(vmem_munmap(&vm, (uint64_t)a, 0), -EINVAL);
    /* The hole is reused first-fit from the top. */
    int64_t c = vmem_mmap(&vm, 0, 4096, KPROT_READ | KPROT_WRITE,
                          KMAP_PRIVATE | KMAP_ANONYMOUS);
    CHECK_EQ(c, a + 4096);
    CHECK_EQ(vm.n, 2); /* merged with equal neighbours */
}

TEST(mmap_reuse_zeroes_only_dirty_memory)
{
    fresh();
    int64_t a = vmem_mmap(&vm, 0, 8192, 3, KMAP_PRIVATE | KMAP_ANONYMOUS);
    memset(P(a), 0x5a, 8192);
    CHECK_EQ(vmem_munmap(&vm, a, 8192), 0);
    int64_t b = vmem_mmap(&vm, 0, 8192, 3, KMAP_PRIVATE | KMAP_ANONYMOUS);
    CHECK_EQ(b, a);
    CHECK(all_zero(b, 8192));
    /* Memory never handed out is not written (a canary planted there
     * survives), since fresh guest memory is zero already. */
    uint64_t next = (uint64_t)b - 4096;
    P(next)[17] = 0x77;
    int64_t c = vmem_mmap(&vm, 0, 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS);
    CHECK_EQ(c, next);
    CHECK_EQ(P(next)[17], 0x77);
}

TEST(mmap_fixed_and_hints)
{
    fresh();
    uint64_t mid = BASE + 0x1000000;
    CHECK_EQ(vmem_mmap(&vm, mid, 4 * 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED), mid);
    memset(P(mid), 1, 4 * 4096);
    /* MAP_FIXED over part of it replaces and zeroes that part only. */
    CHECK_EQ(vmem_mmap(&vm, mid + 4096, 4096, 1, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED), mid + 4096);
    CHECK(all_zero(mid + 4096, 4096));
    CHECK_EQ(P(mid)[0], 1);
    CHECK_EQ(P(mid + 2 * 4096)[0], 1);
    CHECK_EQ(vm.n, 3);
    CHECK_EQ(vmem_mmap(&vm, mid, 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED_NOREPLACE), -EEXIST);
    CHECK_EQ(vmem_mmap(&vm, mid + 1, 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED), -EINVAL);
    /* Outside the managed area (kernel, stack, past RAM) MAP_FIXED fails. */
    CHECK_EQ(vmem_mmap(&vm, 0x200000, 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED), -ENOMEM);
    CHECK_EQ(vmem_mmap(&vm, STK_LOW, 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED), -ENOMEM);
    CHECK_EQ(vmem_mmap(&vm, BASE, 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS | KMAP_FIXED), -ENOMEM);
    /* A free hint is honoured; a taken one falls back to top-down. */
    uint64_t h = BASE + 0x2000000;
    CHECK_EQ(vmem_mmap(&vm, h, 8192, 3, KMAP_PRIVATE | KMAP_ANONYMOUS), h);
    CHECK_EQ(vmem_mmap(&vm, h, 8192, 3, KMAP_PRIVATE | KMAP_ANONYMOUS), STK_LOW - 8192);
    /* The heap cannot grow into a mapping. */
    CHECK_EQ(vmem_brk(&vm, mid + 100), IMG_END);
    CHECK_EQ(vmem_brk(&vm, mid), mid);
}

TEST(mprotect_splits_and_prot_none_is_invalid)
{
    fresh();
    int64_t a = vmem_mmap(&vm, 0, 4 * 4096, 0, KMAP_PRIVATE | KMAP_ANONYMOUS);
    CHECK(!vmem_valid(&vm, a, 1)); /* PROT_NONE reservation */
    CHECK_EQ(vmem_mprotect(&vm, a + 4096, 4096, 3), 0);
    CHECK_EQ(vm.n, 3);
    CHECK(vmem_valid(&vm, a + 4096, 4096));
    CHECK(!vmem_valid(&vm, a + 4096, 4097));
    CHECK_EQ(vmem_mprotect(&vm, a + 4096, 4096, 0), 0);
    CHECK_EQ(vm.n, 1); /* merged back */
    CHECK_EQ(vmem_mprotect(&vm, a + 1, 4096, 3), -EINVAL);
    CHECK_EQ(vmem_mprotect(&vm, BASE + 0x1000000, 4096, 3), -ENOMEM); /* unmapped */
    CHECK_EQ(vmem_mprotect(&vm, BASE, 4096, 1), 0); /* image: accepted */
}

TEST(pointer_validation)
{
    fresh();
    CHECK(vmem_valid(&vm, BASE, 16));
    CHECK(vmem_valid(&vm, STK_TOP - 8, 8));
    CHECK(!vmem_valid(&vm, STK_TOP - 8, 9));
    CHECK(!vmem_valid(&vm, 0x10, 4));
    CHECK(!vmem_valid(&vm, 0x210000, 4));        /* the kernel's */
    CHECK(!vmem_valid(&vm, BASE - 1, 2));
    CHECK(!vmem_valid(&vm, ~0ULL - 3, 8));        /* wraps */
    CHECK(!vmem_valid(&vm, STK_TOP, 1));          /* past RAM */
    CHECK(vmem_valid(&vm, 0x10, 0));              /* nothing to touch */
    CHECK(!vmem_valid(&vm, IMG_END, 1));          /* empty heap */
    CHECK(vmem_valid(&vm, IMG_END - 8, 8));
    memcpy(P(BASE + 100), "hello", 6);
    CHECK_EQ(vmem_strlen(&vm, BASE + 100, 4096), 5);
    CHECK_EQ(vmem_strlen(&vm, BASE + 100, 3), -1);
    memset(P(IMG_END - 4), 'x', 4); /* runs off the image into nothing */
    CHECK_EQ(vmem_strlen(&vm, IMG_END - 4, 4096), -1);
    CHECK_EQ(vmem_strlen(&vm, 0x1000, 4096), -1);
}

TEST(dontneed_zeroes)
{
    fresh();
    int64_t a = vmem_mmap(&vm, 0, 3 * 4096, 3, KMAP_PRIVATE | KMAP_ANONYMOUS);
    memset(P(a), 9, 3 * 4096);
    CHECK_EQ(vmem_dontneed(&vm, a + 4096, 4096), 0);
    CHECK(all_zero(a + 4096, 4096));
    CHECK_EQ(P(a)[4095], 9);
    CHECK_EQ(P(a + 8192)[0], 9);
    vmem_brk(&vm, IMG_END + 8192);
    memset(P(IMG_END), 3, 8192);
    CHECK_EQ(vmem_dontneed(&vm, IMG_END, 8192), 0);
    CHECK(all_zero(IMG_END, 8192));
}

TEST(memory_bomb_gets_enomem)
{
    fresh();
    int n = 0;
    for (;;) {
        int64_t a = vmem_mmap(&vm, 0, 1 << 20, 3, KMAP_PRIVATE | KMAP_ANONYMOUS);
        if (a < 0) {
            CHECK_EQ(a, -ENOMEM);
            break;
        }
        P(a)[0] = 1;
        n++;
        if (n > 1000)
            break;
    }
    CHECK_EQ(n, 62); /* 62 MiB of managed area */
    /* brk cannot go anywhere now either, and nothing crashed. */
    CHECK_EQ(vmem_brk(&vm, IMG_END + (2 << 20)), IMG_END);
}

TEST(region_table_full_is_enomem)
{
    fresh();
    int64_t last = 0;
    int i;
    /* Alternating protections never merge: one slot each. */
    for (i = 0; i < VMEM_MAX_REGIONS + 10; i++) {
        last = vmem_mmap(&vm, 0, 4096, (i & 1) ? 1 : 3, KMAP_PRIVATE | KMAP_ANONYMOUS);
        if (last < 0)
            break;
    }
    CHECK_EQ(last, -ENOMEM);
    CHECK(vm.n <= VMEM_MAX_REGIONS);
    CHECK(i >= VMEM_MAX_REGIONS - 2);
}
