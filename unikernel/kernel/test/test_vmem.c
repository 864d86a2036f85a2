/*
 * test_vmem.c — the address space on the host: vmem.c's page tables and
 * frames live in a buffer standing in for 64 MiB of guest RAM (phys_off),
 * the discard hook zeroes what the VMM would and records it, and the
 * tests walk the tables as the MMU would.
 */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "ktest.h"
#include "../libos.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define MEM (64 * MiB)
#define IMG_START 0x400000ULL
#define IMG_END 0x500000ULL
#define STK_LOW (MEM - MiB)
#define STK_TOP MEM
#define POOL 0x300000ULL
#define RW (KPROT_READ | KPROT_WRITE)
#define ANON (KMAP_PRIVATE | KMAP_ANONYMOUS)

static struct vmem vm;
static uint8_t *ram;
/* What the hook was handed since the test started. */
static struct kiln_discard_range seen[4096];
static int nseen, ncalls;

static void zero_and_record(struct vmem *v)
{
    ncalls++;
    for (uint32_t i = 0; i < v->dc.count; i++) {
        struct kiln_discard_range r = v->dc.ranges[i];
        if (r.gpa < KILN_KERNEL_LIMIT || r.gpa % PAGE_SIZE || r.len % PAGE_SIZE ||
            r.len == 0 || r.gpa + r.len > MEM) {
            fprintf(stderr, "bad discard range %#llx+%#llx\n",
                    (unsigned long long)r.gpa, (unsigned long long)r.len);
            ktest_failed_checks++;
            continue;
        }
        /* Each byte once per call: a range given twice is a page freed or
         * discarded twice. */
        for (uint32_t j = 0; j < i; j++) {
            struct kiln_discard_range o = v->dc.ranges[j];
            if (o.gpa < r.gpa + r.len && r.gpa < o.gpa + o.len) {
                fprintf(stderr, "overlapping discard ranges %#llx+%#llx\n",
                        (unsigned long long)r.gpa, (unsigned long long)r.len);
                ktest_failed_checks++;
            }
        }
        memset(ram + r.gpa, 0, r.len);
        if (nseen < 4096)
            seen[nseen++] = r;
    }
    v->dc.count = 0;
}

/* What vmemsys does at the end of every syscall. */
static void finish(void)
{
    zero_and_record(&vm);
    vm.dc_freed = 0;
    vm.need_flush = 0;
    vmem_settle(&vm);
}

static void fresh_pool(uint64_t pool_pages)
{
    if (!ram) {
        ram = mmap(0, MEM, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (ram == MAP_FAILED) {
            perror("mmap fake guest RAM");
            _exit(2);
        }
    } else {
        /* Fresh guest RAM is zero. */
        madvise(ram, MEM, MADV_DONTNEED);
    }
    nseen = ncalls = 0;
    struct vmem_layout l = {
        .mem_size = MEM, .phys_off = (uint64_t)(uintptr_t)ram,
        .image_start = IMG_START, .image_end = IMG_END,
        .stack_low = STK_LOW, .stack_top = STK_TOP,
        .pt_pool = POOL, .pt_pool_pages = pool_pages,
    };
    CHECK_EQ(vmem_init(&vm, &l, zero_and_record), 0);
}

static void fresh(void) { fresh_pool(32); }

/* The MMU's view: the PD entry of va (0 if no table covers it). */
static uint64_t pde(uint64_t va)
{
    uint64_t t = vm.pml4;
    int shifts[3] = {39, 30, 21};
    for (int l = 0; l < 3; l++) {
        uint64_t e = ((uint64_t *)(ram + t))[(va >> shifts[l]) & 511];
        if (l == 2)
            return e;
        if (!(e & 1))
            return 0;
        t = e & 0x000ffffffffff000ULL;
    }
    return 0;
}

/* The entry that maps va — a 2 MiB leaf or a 4 KiB PTE — and the size of
 * its page (0 if neither). */
static uint64_t leaf(uint64_t va, uint64_t *size)
{
    uint64_t e = pde(va);
    *size = 0;
    if (!(e & 1))
        return 0;
    if (e & 0x80) {
        *size = HUGE_SIZE;
        return e;
    }
    *size = PAGE_SIZE;
    return ((uint64_t *)(ram + (e & 0x000ffffffffff000ULL)))[(va >> 12) & 511];
}

static int present(uint64_t va)
{
    uint64_t size, e = leaf(va, &size);
    return (e & 7) == 7;
}

/* Whether va is mapped by a 4 KiB page. */
static int small_page(uint64_t va)
{
    uint64_t size;
    leaf(va, &size);
    return size == PAGE_SIZE;
}

/* The byte the function sees at va (the page must be present). */
static uint8_t *U(uint64_t va)
{
    uint64_t size, e = leaf(va, &size);
    if (!(e & 1)) {
        fprintf(stderr, "U(%#llx): not present\n", (unsigned long long)va);
        ktest_failed_checks++;
        static uint8_t dummy[8];
        return dummy;
    }
    return ram + (e & 0x000ffffffffff000ULL & ~(size - 1)) + (va & (size - 1));
}

/* memset through the MMU's view, page by page. */
static void fill(uint64_t va, int c, uint64_t n)
{
    for (uint64_t i = 0; i < n;) {
        uint64_t size;
        leaf(va + i, &size);
        uint64_t chunk = size ? size - ((va + i) & (size - 1)) : 1;
        if (chunk > n - i)
            chunk = n - i;
        memset(U(va + i), c, chunk);
        i += chunk;
    }
}

static int all_zero(uint64_t va, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (*U(va + i))
            return 0;
    return 1;
}

static uint64_t used_mib(void) { return vmem_used(&vm) / MiB; }
static uint64_t used_kib(void) { return vmem_used(&vm) / 1024; }

TEST(vmem_direct_map_and_pool)
{
    fresh();
    /* Identity map of RAM from 2 MiB, 2 MiB pages, user RW; nothing below. */
    CHECK_EQ(pde(0), 0);
    CHECK_EQ(pde(0x200000), 0x200000 | 0x87);
    CHECK_EQ(pde(MEM - HUGE_SIZE), (MEM - HUGE_SIZE) | 0x87);
    CHECK_EQ(pde(MEM) & 1, 0);
    CHECK_EQ(pde(KILN_MMIO_GPA), KILN_MMIO_GPA | 0x87 | 0x18); /* PCD|PWT */
    /* Kept: frames 0, 1 (tables, kernel), the image's, the stack's. */
    CHECK_EQ(vm.nframes, 32);
    CHECK_EQ(vm.free_frames, 32 - 4);
    CHECK_EQ(used_mib(), 8);
    CHECK_EQ(vmem_peak(&vm), 8 * MiB);
    CHECK(vmem_valid(&vm, IMG_START, IMG_END - IMG_START));
    CHECK(vmem_valid(&vm, STK_LOW, STK_TOP - STK_LOW));
    CHECK(!vmem_valid(&vm, IMG_END, 1));
    CHECK(!vmem_valid(&vm, 0x800000, 1)); /* a free frame via the direct map */
}

TEST(vmem_prot_none_costs_nothing_and_hints)
{
    fresh();
    /* Go's arena hint: honoured, 1 GiB of PROT_NONE in a 64 MiB VM. */
    int64_t a = vmem_mmap(&vm, 0xc000000000ULL, GiB, 0, ANON);
    finish();
    CHECK_EQ(a, 0xc000000000LL);
    CHECK_EQ(used_mib(), 8);
    CHECK(!vmem_valid(&vm, (uint64_t)a, 1));
    CHECK(vmem_mapped(&vm, (uint64_t)a, GiB));
    /* The same hint again is taken: top-down instead. */
    int64_t b = vmem_mmap(&vm, 0xc000000000ULL, 64 * MiB, 0, ANON);
    CHECK_EQ(b, (int64_t)(VMEM_MMAP_TOP - 64 * MiB));
    /* A hint in the direct map or the brk area is not usable. */
    int64_t c = vmem_mmap(&vm, 0x800000, 4096, 0, ANON);
    CHECK_EQ(c, b - 4096);
    int64_t d = vmem_mmap(&vm, VMEM_BRK_BASE, 4096, 0, ANON);
    CHECK_EQ(d, c - 4096);
    CHECK_EQ(vm.n, 2); /* the top-down ones merged */
    /* An unaligned hint is rounded down, like Linux. */
    int64_t e = vmem_mmap(&vm, 0x2000000123ULL, 4096, 0, ANON);
    CHECK_EQ(e, 0x2000000000LL);
}

TEST(vmem_fixed_commits_eagerly)
{
    fresh();
    uint64_t base = 0xc000000000ULL;
    CHECK_EQ(vmem_mmap(&vm, base, GiB, 0, ANON), (int64_t)base);
    /* MAP_FIXED RW over part of the reservation: committed at once. */
    CHECK_EQ(vmem_mmap(&vm, base + 4 * MiB, 4 * MiB, RW, ANON | KMAP_FIXED),
             (int64_t)(base + 4 * MiB));
    finish();
    CHECK_EQ(used_mib(), 12);
    CHECK(present(base + 4 * MiB) && present(base + 6 * MiB));
    CHECK(!present(base + 2 * MiB) && !present(base + 8 * MiB));
    CHECK(vmem_valid(&vm, base + 4 * MiB, 4 * MiB));
    CHECK(!vmem_valid(&vm, base + 4 * MiB - 1, 2));
    CHECK_EQ(vm.n, 3);
    *U(base + 5 * MiB) = 7;
    CHECK_EQ(vmem_lookup(&vm, base + 5 * MiB) != 0, 1);
    /* Over the limit: -ENOMEM and nothing changed. */
    int n = vm.n;
    uint32_t free = vm.free_frames;
    CHECK_EQ(vmem_mmap(&vm, base + 64 * MiB, 64 * MiB, RW, ANON | KMAP_FIXED), -ENOMEM);
    CHECK_EQ(vm.n, n);
    CHECK_EQ(vm.free_frames, free);
    CHECK(!vmem_valid(&vm, base + 64 * MiB, 1));
    /* NOREPLACE over anything mapped, PROT_NONE included. */
    CHECK_EQ(vmem_mmap(&vm, base + 100 * MiB, 4096, RW, ANON | KMAP_FIXED_NOREPLACE), -EEXIST);
    CHECK_EQ(vmem_mmap(&vm, 0x3000000000ULL, 4096, RW, ANON | KMAP_FIXED_NOREPLACE),
             0x3000000000LL);
    /* MAP_FIXED outside the mmap area, or unaligned. */
    CHECK_EQ(vmem_mmap(&vm, 0x800000, 4096, RW, ANON | KMAP_FIXED), -ENOMEM);
    CHECK_EQ(vmem_mmap(&vm, base + 1, 4096, RW, ANON | KMAP_FIXED), -EINVAL);
}

TEST(vmem_mixed_page_sizes)
{
    fresh();
    /* MAP_FIXED [1, 7) MiB into a 2 MiB-aligned base: 4 KiB pages for the
     * partial 2 MiB pages at both ends, leaves for the two whole ones. */
    uint64_t base = 0x4200000000ULL;
    CHECK_EQ(vmem_mmap(&vm, base + MiB, 6 * MiB, RW, ANON | KMAP_FIXED), (int64_t)(base + MiB));
    finish();
    CHECK(small_page(base + MiB) && small_page(base + 6 * MiB));
    CHECK(!small_page(base + 2 * MiB) && !small_page(base + 4 * MiB));
    CHECK(!present(base + MiB - 4096) && !present(base + 7 * MiB));
    CHECK_EQ(used_mib(), 8 + 6);
    CHECK_EQ(vm.sp_frames, 1); /* 2 × 256 pages fill one frame */
    fill(base + MiB, 0x3c, 6 * MiB);
    /* Unmap 8 KiB of the 4 KiB part: exactly those pages go, one discard
     * range (they are adjacent in the frame), the rest keeps its bytes. */
    nseen = 0;
    int calls = ncalls;
    CHECK_EQ(vmem_munmap(&vm, base + MiB + 16384, 8192), 0);
    CHECK(vm.need_flush);
    finish();
    CHECK_EQ(ncalls, calls + 1);
    CHECK_EQ(nseen, 1);
    CHECK_EQ(seen[0].len, 8192);
    CHECK_EQ(used_kib(), (8 + 6) * 1024 - 8);
    CHECK(!present(base + MiB + 16384) && present(base + MiB + 24576));
    CHECK_EQ(*U(base + MiB + 16383), 0x3c);
    CHECK_EQ(*U(base + MiB + 24576), 0x3c);
    /* Mapped again: fresh pages, zero (the freed ones came back zeroed). */
    CHECK_EQ(vmem_mmap(&vm, base + MiB + 16384, 8192, RW, ANON | KMAP_FIXED),
             (int64_t)(base + MiB + 16384));
    finish();
    CHECK(all_zero(base + MiB + 16384, 8192));
    CHECK_EQ(used_mib(), 8 + 6);
    /* Unmapping the whole: every page and both tables go, the carved frame
     * returns to the pool in one discard call. */
    calls = ncalls;
    CHECK_EQ(vmem_munmap(&vm, base, 8 * MiB), 0);
    finish();
    CHECK_EQ(ncalls, calls + 1);
    CHECK_EQ(used_mib(), 8);
    CHECK_EQ(vm.sp_frames, 0);
    CHECK_EQ(vm.free_frames, 32 - 4);
    CHECK_EQ(pde(base + MiB), 0);
    CHECK_EQ(pde(base + 6 * MiB), 0);
    /* The frames come back zero: a whole new leaf reads zero. */
    CHECK_EQ(vmem_mmap(&vm, base, 8 * MiB, RW, ANON | KMAP_FIXED), (int64_t)base);
    finish();
    CHECK(!small_page(base));
    CHECK(all_zero(base, 8 * MiB));
}

TEST(vmem_sparse_touches_cost_pages)
{
    fresh();
    /* Go's page-allocator summaries: small MAP_FIXED RW pieces inside big
     * PROT_NONE reservations; and a 32 MiB index touched at one page. */
    uint64_t res = 0x5000000000ULL;
    CHECK_EQ(vmem_mmap(&vm, res, 5 * 64 * MiB, 0, ANON), (int64_t)res);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(vmem_mmap(&vm, res + (uint64_t)i * 64 * MiB, 8192, RW, ANON | KMAP_FIXED),
                 (int64_t)(res + (uint64_t)i * 64 * MiB));
    int64_t idx = vmem_mmap(&vm, 0, 32 * MiB, RW, ANON);
    CHECK_EQ(vmem_demand(&vm, (uint64_t)idx + 17 * MiB + 123, 2), 1);
    finish();
    /* 5 × 8 KiB and one 64 KiB cluster, all in one carved frame. */
    CHECK_EQ(used_kib(), 8 * 1024 + 5 * 8 + 64);
    CHECK_EQ(vm.sp_frames, 1);
    CHECK_EQ(vm.free_frames, 32 - 5);
    /* The PROT_NONE part of a piece's 2 MiB page is not the function's. */
    CHECK_EQ(vmem_demand(&vm, res + 8192, 2), 0);
    CHECK(!present(res + 8192));
}

TEST(vmem_fixed_replace_zeroes_old_contents)
{
    fresh();
    uint64_t base = 0x4000000000ULL;
    CHECK_EQ(vmem_mmap(&vm, base, 2 * MiB, RW, ANON | KMAP_FIXED), (int64_t)base);
    finish();
    fill(base, 0x5a, 2 * MiB);
    uint32_t free = vm.free_frames;
    /* Replace the middle 8 KiB: same frame, those bytes read zero. */
    CHECK_EQ(vmem_mmap(&vm, base + 0x10000, 0x2000, KPROT_READ, ANON | KMAP_FIXED),
             (int64_t)(base + 0x10000));
    finish();
    CHECK_EQ(vm.free_frames, free);
    CHECK(all_zero(base + 0x10000, 0x2000));
    CHECK_EQ(*U(base + 0xffff), 0x5a);
    CHECK_EQ(*U(base + 0x12000), 0x5a);
    CHECK_EQ(vm.n, 3);
    CHECK_EQ(vm.r[1].prot, KPROT_READ);
}

TEST(vmem_lazy_mapping_demand_faults)
{
    fresh();
    /* A big sparse table (Go's heap index): lazy, costs a 64 KiB cluster of
     * 4 KiB pages per touch, and may be bigger than memory. */
    int64_t a = vmem_mmap(&vm, 0, 64 * MiB, RW, ANON);
    finish();
    CHECK_EQ(a, (int64_t)(VMEM_MMAP_TOP - 64 * MiB));
    CHECK_EQ(used_mib(), 8);
    CHECK(!present((uint64_t)a));
    CHECK(vmem_valid(&vm, (uint64_t)a, 64 * MiB));
    CHECK_EQ(vmem_strlen(&vm, (uint64_t)a + 100, 10), 0); /* reads as zero */
    CHECK_EQ(vmem_demand(&vm, (uint64_t)a + 5 * MiB + 5000, 2), 1);
    CHECK(present((uint64_t)a + 5 * MiB) && small_page((uint64_t)a + 5 * MiB));
    CHECK(present((uint64_t)a + 5 * MiB + 60 * 1024));
    CHECK(!present((uint64_t)a + 5 * MiB + 64 * 1024));
    CHECK(!present((uint64_t)a + 5 * MiB - 4096));
    CHECK(!present((uint64_t)a + 4 * MiB) && !present((uint64_t)a + 6 * MiB));
    CHECK_EQ(used_kib(), 8 * 1024 + 64); /* the page table is a pool page */
    CHECK_EQ(vm.free_frames, 32 - 5);    /* one frame carved into pages */
    CHECK(all_zero((uint64_t)a + 5 * MiB, 64 * 1024));
    /* Dense touching in one 2 MiB page: the cluster doubles with what the
     * table holds, 16+16+32+64+128+256 pages, six faults. */
    uint64_t pg = (uint64_t)a + 8 * MiB;
    int faults = 0;
    for (uint64_t off = 0; off < HUGE_SIZE; off += PAGE_SIZE)
        if (!present(pg + off)) {
            CHECK_EQ(vmem_demand(&vm, pg + off, 2), 1);
            faults++;
        }
    CHECK_EQ(faults, 6);
    CHECK_EQ(used_kib(), 10 * 1024 + 64);
    CHECK(all_zero(pg, HUGE_SIZE));
    /* Not the program's memory, or a protection fault: not ours. */
    CHECK_EQ(vmem_demand(&vm, (uint64_t)a - 4096, 2), 0);
    CHECK_EQ(vmem_demand(&vm, (uint64_t)a + 5 * MiB, 3), 0);
    CHECK_EQ(vmem_demand(&vm, 0x800000, 2), 0);
    /* Touch page by page until memory is exhausted: every 4 KiB page of
     * every frame is handed out (the last clusters shrink to single pages)
     * before -ENOMEM. */
    int oom = 0;
    for (uint64_t off = 0; off < 64 * MiB && !oom; off += PAGE_SIZE)
        if (!present((uint64_t)a + off))
            oom = vmem_demand(&vm, (uint64_t)a + off, 2) == -ENOMEM;
    finish();
    CHECK(oom);
    CHECK_EQ(vm.free_frames, 0);
    CHECK_EQ(vm.sp_used, vm.sp_frames * VMEM_PTES);
    CHECK_EQ(used_mib(), 64);
    CHECK_EQ(vmem_peak(&vm), 64 * MiB);
    /* A small mapping now fails at mmap (eager), a big one only at touch. */
    CHECK_EQ(vmem_mmap(&vm, 0, 4096, RW, ANON), -ENOMEM);
    CHECK(vmem_mmap(&vm, 0, 64 * MiB, RW, ANON) > 0);
}

TEST(vmem_small_mmaps_cost_their_pages)
{
    fresh();
    int64_t first = vmem_mmap(&vm, 0, 4096, RW, ANON);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(vmem_mmap(&vm, 0, 4096 * 3, RW, ANON), first - 3 * 4096 * (i + 1));
    finish();
    CHECK_EQ(vm.n, 1);
    /* 1204 KiB of small mappings in 4 KiB pages of one carved frame. */
    CHECK_EQ(used_kib(), 8 * 1024 + 1204);
    CHECK_EQ(vm.sp_frames, 1);
    CHECK(present((uint64_t)first) && small_page((uint64_t)first));
    /* One that crosses into the next 2 MiB page: its pages, no more. */
    CHECK(vmem_mmap(&vm, 0, MiB, RW, ANON) > 0);
    CHECK_EQ(used_kib(), 8 * 1024 + 1204 + 1024);
    CHECK_EQ(vm.sp_frames, 2);
    /* Eager, so the limit shows at mmap: pages until the pool is dry. */
    int n = 0;
    while (vmem_mmap(&vm, 0, 64 * 1024, RW, ANON) > 0)
        n++;
    finish();
    CHECK_EQ(vm.free_frames, 0);
    /* 64 MiB less the 8 kept and the 2228 KiB above, in 64 KiB pieces,
     * some pages going to page tables. */
    CHECK(n <= (56 * 1024 - 2228) / 64 && n >= (56 * 1024 - 2228) / 64 - 2);
    CHECK(used_kib() > 64 * 1024 - 64);
}

TEST(vmem_munmap_splits_frees_and_zeroes)
{
    fresh();
    uint64_t base = 0x5000000000ULL;
    CHECK_EQ(vmem_mmap(&vm, base, 8 * MiB, RW, ANON | KMAP_FIXED), (int64_t)base);
    finish();
    fill(base, 0xee, 8 * MiB);
    CHECK_EQ(used_mib(), 16);
    nseen = 0;
    /* Unmap [1 MiB, 5 MiB): page 2–4 MiB goes whole, the edges are zeroed. */
    CHECK_EQ(vmem_munmap(&vm, base + MiB, 4 * MiB), 0);
    CHECK_EQ(vm.n, 2);
    CHECK(vm.need_flush);
    finish();
    CHECK_EQ(used_mib(), 14);
    CHECK(!present(base + 2 * MiB));
    CHECK(present(base) && present(base + 4 * MiB));
    CHECK(all_zero(base + MiB, MiB));
    CHECK(all_zero(base + 4 * MiB, MiB));
    CHECK_EQ(*U(base + MiB - 1), 0xee);
    CHECK_EQ(*U(base + 5 * MiB), 0xee);
    CHECK(!vmem_valid(&vm, base + MiB, 1));
    CHECK(vmem_valid(&vm, base + 5 * MiB, 3 * MiB));
    /* The freed frame and the two partial ranges, 4 MiB in all (ranges of
     * adjacent frames are merged). */
    uint64_t total = 0;
    for (int i = 0; i < nseen; i++)
        total += seen[i].len;
    CHECK_EQ(total, 4 * MiB);
    CHECK(nseen >= 1 && nseen <= 3);
    /* Mapping there again reads zero (the frames were kept or are fresh). */
    CHECK_EQ(vmem_mmap(&vm, base + MiB, 4 * MiB, RW, ANON | KMAP_FIXED), (int64_t)(base + MiB));
    finish();
    CHECK(all_zero(base + MiB, 4 * MiB));
    CHECK_EQ(vm.n, 1);
    /* Unmapping everything gives every frame back. */
    CHECK_EQ(vmem_munmap(&vm, base, 8 * MiB), 0);
    finish();
    CHECK_EQ(used_mib(), 8);
    CHECK_EQ(vm.n, 0);
    CHECK_EQ(vmem_munmap(&vm, base + 1, 4096), -EINVAL);
    CHECK_EQ(vmem_munmap(&vm, base, 0), -EINVAL);
}

TEST(vmem_dontneed_whole_and_partial)
{
    fresh();
    uint64_t base = 0x6000000000ULL;
    CHECK_EQ(vmem_mmap(&vm, base, 6 * MiB, RW, ANON | KMAP_FIXED), (int64_t)base);
    finish();
    fill(base, 0x11, 6 * MiB);
    CHECK_EQ(used_mib(), 14);
    /* [1 MiB, 4 MiB): page 2–4 MiB is dropped whole (lazy again), the
     * first page keeps its frame with [1, 2) MiB zeroed. */
    CHECK_EQ(vmem_madvise(&vm, base + MiB, 3 * MiB, KMADV_DONTNEED), 0);
    finish();
    CHECK_EQ(used_mib(), 12);
    CHECK(!present(base + 2 * MiB));
    CHECK(vmem_valid(&vm, base, 6 * MiB)); /* still mapped */
    CHECK(all_zero(base + MiB, MiB));
    CHECK_EQ(*U(base), 0x11);
    CHECK_EQ(*U(base + 4 * MiB), 0x11);
    /* Touched again without re-mapping: fresh zero 4 KiB pages on demand. */
    CHECK_EQ(vmem_demand(&vm, base + 3 * MiB, 2), 1);
    CHECK(small_page(base + 3 * MiB));
    CHECK(all_zero(base + 3 * MiB, 64 * 1024));
    CHECK_EQ(used_kib(), 12 * 1024 + 64);
    /* Other advice: nothing happens. */
    CHECK_EQ(vmem_madvise(&vm, base, 6 * MiB, 14 /* MADV_HUGEPAGE */), 0);
    CHECK_EQ(*U(base), 0x11);
    CHECK_EQ(vmem_madvise(&vm, base + 1, 4096, KMADV_DONTNEED), -EINVAL);
    /* MADV_FREE of the last page, unaligned length: rounded up. */
    CHECK_EQ(vmem_madvise(&vm, base + 4 * MiB, 2 * MiB - 100, KMADV_FREE), 0);
    finish();
    CHECK(!present(base + 4 * MiB));
    CHECK_EQ(used_kib(), 10 * 1024 + 64);
    /* DONTNEED of 4 KiB pages frees them; the table goes with the last. */
    CHECK_EQ(vmem_madvise(&vm, base + 3 * MiB + 4096, 4096, KMADV_DONTNEED), 0);
    finish();
    CHECK(!present(base + 3 * MiB + 4096) && present(base + 3 * MiB));
    CHECK_EQ(used_kib(), 10 * 1024 + 60);
    CHECK_EQ(vmem_madvise(&vm, base + 2 * MiB, 2 * MiB, KMADV_DONTNEED), 0);
    finish();
    CHECK_EQ(pde(base + 2 * MiB), 0);
    CHECK_EQ(used_mib(), 10);
    CHECK_EQ(vm.sp_frames, 0); /* the small-page frame went back whole */
}

TEST(vmem_mprotect_maps_and_unmaps_pages)
{
    fresh();
    uint64_t base = 0x7000000000ULL;
    CHECK_EQ(vmem_mmap(&vm, base, 4 * MiB, RW, ANON | KMAP_FIXED), (int64_t)base);
    finish();
    *U(base + 2 * MiB) = 42;
    /* PROT_NONE over a whole page: unmapped, the frame and data kept. */
    CHECK_EQ(vmem_mprotect(&vm, base + 2 * MiB, 2 * MiB, 0), 0);
    CHECK(vm.need_flush);
    finish();
    CHECK(!present(base + 2 * MiB));
    CHECK_EQ(used_mib(), 12);
    CHECK(!vmem_valid(&vm, base + 2 * MiB, 1));
    CHECK_EQ(vmem_demand(&vm, base + 2 * MiB, 2), 0); /* SIGSEGV */
    CHECK_EQ(vmem_mprotect(&vm, base + 2 * MiB, 2 * MiB, RW), 0);
    finish();
    CHECK(present(base + 2 * MiB));
    CHECK_EQ(*U(base + 2 * MiB), 42);
    CHECK_EQ(vm.n, 1); /* merged back */
    /* 4 KiB PROT_NONE inside a page that stays mapped: exact for syscall
     * pointers, the page stays present. */
    CHECK_EQ(vmem_mprotect(&vm, base + 4096, 4096, 0), 0);
    CHECK(present(base));
    CHECK(!vmem_valid(&vm, base + 4096, 1));
    CHECK(vmem_valid(&vm, base, 4096));
    CHECK_EQ(vm.n, 3);
    /* Not wholly mapped: -ENOMEM; bad prot: -EINVAL. */
    CHECK_EQ(vmem_mprotect(&vm, base + 4 * MiB - 4096, 8192, RW), -ENOMEM);
    CHECK_EQ(vmem_mprotect(&vm, base, 4096, 0x1000000), -EINVAL);
    /* The image and stack accept it and stay accessible. */
    CHECK_EQ(vmem_mprotect(&vm, IMG_START, 4096, KPROT_READ), 0);
    CHECK(vmem_valid(&vm, IMG_START, 4096));
    /* A PROT_NONE region made accessible is lazy. */
    int64_t a = vmem_mmap(&vm, 0x7100000000ULL, 8 * MiB, 0, ANON);
    CHECK_EQ(vmem_mprotect(&vm, (uint64_t)a, 8 * MiB, RW), 0);
    CHECK(!present((uint64_t)a));
    CHECK_EQ(vmem_demand(&vm, (uint64_t)a, 2), 1);
}

TEST(vmem_brk_virtual_eager_and_shrinks)
{
    fresh();
    CHECK_EQ(vmem_brk(&vm, 0), VMEM_BRK_BASE);
    CHECK_EQ(vmem_brk(&vm, VMEM_BRK_BASE + 10000), VMEM_BRK_BASE + 10000);
    finish();
    CHECK(present(VMEM_BRK_BASE) && small_page(VMEM_BRK_BASE));
    CHECK(!present(VMEM_BRK_BASE + 12288));
    CHECK_EQ(used_kib(), 8 * 1024 + 12);
    CHECK(vmem_valid(&vm, VMEM_BRK_BASE, 12288));
    CHECK(!vmem_valid(&vm, VMEM_BRK_BASE + 12288, 1));
    fill(VMEM_BRK_BASE, 0xaa, 10000);
    /* Shrink: the pages above the break read zero when they come back. */
    CHECK_EQ(vmem_brk(&vm, VMEM_BRK_BASE + 100), VMEM_BRK_BASE + 100);
    finish();
    CHECK_EQ(vmem_brk(&vm, VMEM_BRK_BASE + 3 * 4096), VMEM_BRK_BASE + 3 * 4096);
    finish();
    CHECK(all_zero(VMEM_BRK_BASE + 4096, 2 * 4096));
    CHECK_EQ(*U(VMEM_BRK_BASE + 99), 0xaa);
    /* Growth the pool cannot cover: the old break stays. */
    uint64_t before = vmem_brk(&vm, 0);
    CHECK_EQ(vmem_brk(&vm, VMEM_BRK_BASE + 100 * MiB), before);
    CHECK_EQ(used_kib(), 8 * 1024 + 12);
    /* A big step: the first 2 MiB page is filled with 4 KiB pages, the
     * nine whole ones above take 2 MiB leaves. */
    CHECK_EQ(vmem_brk(&vm, VMEM_BRK_BASE + 20 * MiB), VMEM_BRK_BASE + 20 * MiB);
    CHECK_EQ(used_mib(), 28);
    CHECK(small_page(VMEM_BRK_BASE + 2 * MiB - 4096));
    CHECK(!small_page(VMEM_BRK_BASE + 2 * MiB) && present(VMEM_BRK_BASE + 2 * MiB));
    /* Shrinking to the base frees every frame. */
    CHECK_EQ(vmem_brk(&vm, VMEM_BRK_BASE), VMEM_BRK_BASE);
    finish();
    CHECK_EQ(used_mib(), 8);
    CHECK_EQ(vmem_peak(&vm), 28 * MiB);
    CHECK_EQ(vmem_brk(&vm, IMG_END), VMEM_BRK_BASE);
}

TEST(vmem_freed_frame_is_zero_before_reuse)
{
    fresh();
    uint64_t a = 0x4000000000ULL, b = 0x4100000000ULL;
    CHECK_EQ(vmem_mmap(&vm, a, 2 * MiB, RW, ANON | KMAP_FIXED), (int64_t)a);
    finish();
    uint64_t f = vmem_lookup(&vm, a);
    fill(a, 0x77, 2 * MiB);
    /* One syscall frees the frame and takes one: the same frame comes back
     * only after the host zeroed it. */
    int calls = ncalls;
    CHECK_EQ(vmem_munmap(&vm, a, 2 * MiB), 0);
    CHECK_EQ(vmem_mmap(&vm, b, 2 * MiB, RW, ANON | KMAP_FIXED), (int64_t)b);
    CHECK_EQ(vmem_lookup(&vm, b), f);
    CHECK(ncalls > calls);
    CHECK(all_zero(b, 2 * MiB));
    finish();
}

TEST(vmem_kernel_frames_and_translate)
{
    fresh();
    uint64_t k = vmem_kframe(&vm);
    CHECK(k >= KILN_USER_BASE && k % HUGE_SIZE == 0 && k < MEM);
    CHECK_EQ(used_mib(), 10);
    CHECK(!vmem_valid(&vm, k, 1)); /* never the function's */
    int64_t a = vmem_mmap(&vm, 0, 16 * MiB, RW, ANON);
    uint64_t gpa;
    /* Commits the page and stops at its end (a 4 KiB one here). */
    CHECK_EQ(vmem_translate(&vm, (uint64_t)a + HUGE_SIZE - 10, 100, &gpa), 10);
    CHECK_EQ(gpa, vmem_lookup(&vm, (uint64_t)a + HUGE_SIZE - 10));
    CHECK(gpa != 0);
    CHECK_EQ(vmem_translate(&vm, (uint64_t)a + 4096 - 10, 100, &gpa), 100);
    CHECK_EQ(gpa % PAGE_SIZE, PAGE_SIZE - 10);
    /* A committed cluster's pages lie side by side: the run spans them
     * and stops at the end of the cluster (the next page is not there). */
    CHECK_EQ(vmem_translate(&vm, (uint64_t)a + 4096, 1 << 20, &gpa), 15 * 4096);
    CHECK_EQ(vmem_lookup(&vm, (uint64_t)a + 15 * 4096), gpa + 14 * 4096);
    /* In a 2 MiB leaf it runs to the end of the leaf. */
    int64_t f = vmem_mmap(&vm, 0x4000000000ULL, 4 * MiB, RW, ANON | KMAP_FIXED);
    CHECK_EQ(vmem_translate(&vm, (uint64_t)f + 4096 - 10, 100, &gpa), 100);
    CHECK_EQ(vmem_translate(&vm, (uint64_t)f + HUGE_SIZE - 10, 100, &gpa), 10);
    CHECK_EQ(vmem_translate(&vm, IMG_START + 8, 100, &gpa), 100);
    CHECK_EQ(gpa, IMG_START + 8);
    CHECK_EQ(vmem_translate(&vm, k, 100, &gpa), -EFAULT);
    CHECK_EQ(vmem_translate(&vm, (uint64_t)a - 4096, 100, &gpa), -EFAULT);
    /* Drain the pool of whole frames: the partly used small-page frame
     * still has pages (the limit counted it whole), then -ENOMEM. */
    while (vmem_kframe(&vm))
        ;
    finish();
    uint64_t used = vmem_used(&vm);
    CHECK_EQ(vmem_translate(&vm, (uint64_t)a + 8 * MiB, 1, &gpa), 1);
    CHECK(vmem_used(&vm) > used);
    int64_t r = 1;
    for (uint64_t off = 0; off < 16 * MiB && r == 1; off += PAGE_SIZE)
        r = vmem_translate(&vm, (uint64_t)a + off, 1, &gpa);
    CHECK_EQ(r, -ENOMEM);
    CHECK_EQ(used_mib(), 64);
}

TEST(vmem_tables_spill_into_small_pages)
{
    /* Two table pages only: the PML4 and direct map need more, so tables
     * come from 4 KiB pages of a carved frame and everything still works. */
    fresh_pool(2);
    CHECK_EQ(pde(0x200000), 0x200000 | 0x87);
    uint64_t boot = used_kib();
    CHECK(boot > 8 * 1024 && boot <= 8 * 1024 + 4 * 4);
    for (int i = 0; i < 20; i++) {
        uint64_t va = 0x10000000000ULL * (uint64_t)(i + 1);
        CHECK_EQ(vmem_mmap(&vm, va, 4096, RW, ANON | KMAP_FIXED), (int64_t)va);
    }
    finish();
    /* Each: a PDPT, a PD, a page table and the data page. */
    CHECK_EQ(used_kib(), boot + 20 * 16);
    CHECK_EQ(vm.sp_frames, 1);
    CHECK(present(0x10000000000ULL) && present(0x140000000000ULL));
    /* Unmapped, the data page and page table go back (the upper tables
     * stay); a mapping elsewhere reuses them. */
    CHECK_EQ(vmem_munmap(&vm, 0x10000000000ULL, 4096), 0);
    finish();
    CHECK_EQ(used_kib(), boot + 19 * 16 + 8);
    CHECK_EQ(vmem_mmap(&vm, 0x10000200000ULL, 4096, RW, ANON | KMAP_FIXED), 0x10000200000LL);
    finish();
    CHECK_EQ(used_kib(), boot + 20 * 16);
}

TEST(vmem_region_table_full_is_enomem)
{
    fresh();
    /* Alternating protections never merge. */
    uint64_t base = 0x2000000000ULL;
    int i;
    for (i = 0; i < VMEM_MAX_REGIONS; i++) {
        int64_t r = vmem_mmap(&vm, base + (uint64_t)i * 8192, 4096,
                              (i & 1) ? KPROT_READ : 0, ANON | KMAP_FIXED);
        if (r < 0) {
            CHECK_EQ(r, -ENOMEM);
            break;
        }
    }
    CHECK(i >= VMEM_MAX_REGIONS - 2);
    CHECK(vm.n <= VMEM_MAX_REGIONS);
    finish();
}

TEST(vmem_strlen_and_valid_edges)
{
    fresh();
    int64_t a = vmem_mmap(&vm, 0x4000000000ULL, 4 * MiB, RW, ANON | KMAP_FIXED);
    finish();
    /* A string across the 2 MiB boundary: two frames, not contiguous. */
    uint64_t s = (uint64_t)a + HUGE_SIZE - 3;
    memcpy(U(s), "ab", 2);
    *U(s + 2) = 'c';
    memcpy(U(s + 3), "de", 3);
    CHECK_EQ(vmem_strlen(&vm, s, 100), 5);
    CHECK_EQ(vmem_strlen(&vm, s, 4), -1);
    fill((uint64_t)a + 4 * MiB - 4, 'x', 4);
    CHECK_EQ(vmem_strlen(&vm, (uint64_t)a + 4 * MiB - 4, 100), -1);
    CHECK(!vmem_valid(&vm, ~0ULL - 10, 20));
    /* Lengths that wrap when rounded up to a page are refused whole. */
    int n = vm.n;
    CHECK_EQ(vmem_mprotect(&vm, (uint64_t)a, ~0ULL - (uint64_t)a - 10, 0), -ENOMEM);
    CHECK_EQ(vmem_munmap(&vm, (uint64_t)a, ~0ULL - (uint64_t)a - 10), -EINVAL);
    CHECK_EQ(vmem_madvise(&vm, (uint64_t)a, ~0ULL - (uint64_t)a - 10, KMADV_DONTNEED), -EINVAL);
    CHECK_EQ(vmem_mmap(&vm, 0, ~0ULL - 10, RW, ANON), -ENOMEM);
    CHECK_EQ(vm.n, n);
    CHECK(vmem_valid(&vm, (uint64_t)a, 4 * MiB));
    CHECK(vmem_valid(&vm, 12345, 0));
    CHECK_EQ(vmem_mremap(&vm, (uint64_t)a, 4 * MiB, 4 * MiB, 1), a);
    CHECK_EQ(vmem_mremap(&vm, (uint64_t)a, 4 * MiB, 8 * MiB, 1), -ENOMEM);
    CHECK_EQ(vmem_mremap(&vm, (uint64_t)a, 4 * MiB, 2 * MiB, 0), a);
    finish();
    CHECK(!vmem_valid(&vm, (uint64_t)a + 2 * MiB, 1));
    CHECK_EQ(used_mib(), 10);
}

/* ---- random operation sequences against the invariants ---- */

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Whether 4 KiB page va is covered by a region or the heap. */
static int covered_page(uint64_t va, int *acc)
{
    if (va >= vm.brk_base && va < PAGE_UP(vm.brk)) {
        *acc = 1;
        return 1;
    }
    for (int i = 0; i < vm.n; i++)
        if (vm.r[i].start <= va && va < vm.r[i].end) {
            *acc = vm.r[i].prot != 0;
            return 1;
        }
    *acc = 0;
    return 0;
}

static int small_bit(uint32_t fi, uint32_t j)
{
    return (vm.sp_bits[fi][j / 64] >> (j % 64)) & 1;
}

/* Everything vmem promises, checked from the outside after a syscall. */
static int invariants_hold(void)
{
    int bad = 0;
    for (int i = 0; i < vm.n; i++) {
        struct vregion *r = &vm.r[i];
        if (r->start >= r->end || r->start % PAGE_SIZE || r->end % PAGE_SIZE)
            bad |= 1;
        if (i > 0 && (vm.r[i - 1].end > r->start ||
                      (vm.r[i - 1].end == r->start && vm.r[i - 1].prot == r->prot)))
            bad |= 2;
    }
    /* Walk every user table: a 2 MiB leaf owns a whole used frame, a 4 KiB
     * page one used page of a small-page frame, and nothing is owned
     * twice; a leaf is present exactly while something accessible overlaps
     * it and reads zero wherever no region covers it; a 4 KiB page is
     * committed only while covered and present exactly while accessible;
     * a page table is never empty. */
    static uint8_t owner[VMEM_MAX_FRAMES];
    static uint8_t powner[VMEM_MAX_FRAMES][VMEM_PTES];
    memset(owner, 0, sizeof(owner));
    memset(powner, 0, sizeof(powner));
    uint32_t leaves = 0, pages = 0;
    uint64_t *pml4 = (uint64_t *)(ram + vm.pml4);
    for (uint64_t i4 = 0; i4 < 256; i4++) {
        if (!(pml4[i4] & 1))
            continue;
        uint64_t pdpt_gpa = pml4[i4] & 0x000ffffffffff000ULL;
        uint64_t *pdpt = (uint64_t *)(ram + pdpt_gpa);
        for (uint64_t i3 = 0; i3 < 512; i3++) {
            uint64_t base = (i4 << 39) | (i3 << 30);
            if (!(pdpt[i3] & 1) || base < VMEM_DIRECT_END)
                continue;
            uint64_t *pd = (uint64_t *)(ram + (pdpt[i3] & 0x000ffffffffff000ULL));
            for (uint64_t i2 = 0; i2 < 512; i2++) {
                uint64_t e = pd[i2], pg = base | (i2 << 21);
                if (!e)
                    continue;
                if (!(e & 0x80)) {
                    /* A page table. */
                    uint64_t *pt = (uint64_t *)(ram + (e & 0x000ffffffffff000ULL));
                    int n = 0;
                    for (uint64_t i1 = 0; i1 < 512; i1++) {
                        uint64_t p = pt[i1], va = pg | (i1 << 12);
                        if (!p)
                            continue;
                        n++;
                        if (!(p & 0x200)) {
                            bad |= 4;
                            continue;
                        }
                        pages++;
                        uint64_t g = p & 0x000ffffffffff000ULL;
                        uint32_t fi = (uint32_t)(g / HUGE_SIZE), j = (uint32_t)((g % HUGE_SIZE) / PAGE_SIZE);
                        if (fi >= vm.nframes || !((vm.small[fi / 64] >> (fi % 64)) & 1) ||
                            !small_bit(fi, j) || powner[fi][j])
                            bad |= 0x100;
                        if (fi < vm.nframes)
                            powner[fi][j] = 1;
                        int acc;
                        if (!covered_page(va, &acc))
                            bad |= 32;
                        if (acc != ((p & 7) == 7))
                            bad |= 64;
                    }
                    if (n == 0)
                        bad |= 0x200;
                    continue;
                }
                if (!(e & 0x200)) {
                    bad |= 4;
                    continue;
                }
                leaves++;
                uint64_t f = e & 0x000fffffffe00000ULL;
                uint32_t fi = (uint32_t)(f / HUGE_SIZE);
                if (fi >= vm.nframes || owner[fi] || !((vm.frames[fi / 64] >> (fi % 64)) & 1) ||
                    ((vm.small[fi / 64] >> (fi % 64)) & 1))
                    bad |= 8;
                if (fi < vm.nframes)
                    owner[fi] = 1;
                int any = 0, anyacc = 0;
                for (uint64_t p = pg; p < pg + HUGE_SIZE; p += PAGE_SIZE) {
                    int acc;
                    if (covered_page(p, &acc)) {
                        any = 1;
                        anyacc |= acc;
                    } else {
                        const uint8_t *m = ram + f + (p - pg);
                        if (m[0] | m[17] | m[PAGE_SIZE - 1])
                            bad |= 16;
                    }
                }
                if (!any)
                    bad |= 32;
                if (anyacc != ((e & 0x87) == 0x87))
                    bad |= 64;
            }
        }
    }
    /* Small-page frames: each used page is a mapped page or a table; the
     * counts agree with the bitmaps; free pages and free frames read zero. */
    uint32_t sframes = 0, sused = 0, tables = 0;
    for (uint32_t fi = 0; fi < vm.nframes; fi++) {
        int used = (vm.frames[fi / 64] >> (fi % 64)) & 1;
        int small = (vm.small[fi / 64] >> (fi % 64)) & 1;
        if (small && !used)
            bad |= 0x400;
        uint32_t cnt = 0;
        for (uint32_t j = 0; j < VMEM_PTES; j++) {
            const uint8_t *m = ram + (uint64_t)fi * HUGE_SIZE + (uint64_t)j * PAGE_SIZE;
            int bit = small && small_bit(fi, j);
            if (bit) {
                cnt++;
                if (!powner[fi][j])
                    tables++; /* checked below: must be a table page */
            } else if ((!used || small) && (m[0] | m[99] | m[PAGE_SIZE - 1])) {
                bad |= 0x800;
            }
        }
        if (small) {
            sframes++;
            sused += cnt;
            if (cnt != vm.sp_count[fi] || cnt == 0)
                bad |= 0x1000;
        }
    }
    if (sframes != vm.sp_frames || sused != vm.sp_used || sused != pages + tables)
        bad |= 0x2000;
    /* Emptied tables kept for reuse after a syscall: boot-pool pages only
     * (small ones went back), all zero. */
    int kept = 0;
    for (uint32_t i = 0; i < vm.ntfree; i++) {
        uint64_t t = vm.tfree[i];
        const uint64_t *pt = (const uint64_t *)(ram + t);
        kept |= t < POOL || t >= vm.pt_end;
        for (int k = 0; k < 512; k++)
            kept |= pt[k] != 0;
    }
    if (vm.nframes - vm.free_frames != 4 + leaves + sframes)
        bad |= 128;
    if (vmem_used(&vm) != (uint64_t)(4 + leaves) * HUGE_SIZE + (uint64_t)sused * PAGE_SIZE)
        bad |= 0x4000;
    if (kept != 0)
        bad |= 0x8000;
    if (bad)
        fprintf(stderr, "invariants broken: %#x (leaves %u, pages %u, tables %u, free %u)\n",
                bad, leaves, pages, tables, vm.free_frames);
    return bad == 0;
}

TEST(vmem_random_operations_keep_invariants)
{
    const uint64_t W = 0x4000000000ULL; /* a 64 MiB window for fixed ops */
    for (uint64_t seed = 1; seed <= 12; seed++) {
        fresh();
        rng_state = seed * 0x9e3779b97f4a7c15ULL;
        int ok = 1;
        for (int step = 0; step < 250 && ok; step++) {
            uint64_t a = W + (rnd() % (64 * MiB / PAGE_SIZE)) * PAGE_SIZE;
            uint64_t len = (rnd() % 4 == 0) ? (rnd() % 16 + 1) * HUGE_SIZE
                                            : (rnd() % 600 + 1) * PAGE_SIZE;
            uint32_t prot = (uint32_t)(rnd() % 3 == 0 ? 0 : RW);
            switch (rnd() % 8) {
            case 0: vmem_mmap(&vm, a, len, prot, ANON | KMAP_FIXED); break;
            case 1: vmem_mmap(&vm, rnd() % 2 ? a : 0, len, prot, ANON); break;
            case 2: vmem_munmap(&vm, a, len); break;
            case 3: vmem_mprotect(&vm, a, len, prot); break;
            case 4: vmem_madvise(&vm, a, len, KMADV_DONTNEED); break;
            case 5: vmem_brk(&vm, VMEM_BRK_BASE + rnd() % (12 * MiB)); break;
            default: {
                /* The program touches a random valid page and dirties it. */
                uint64_t t = vm.n ? vm.r[rnd() % (uint64_t)vm.n].start : a;
                t += (rnd() % 64) * PAGE_SIZE;
                if (vmem_valid(&vm, t, PAGE_SIZE) && vmem_demand(&vm, t, 2) == 1)
                    fill(t, (int)(rnd() | 1), PAGE_SIZE);
            }
            }
            finish();
            ok = invariants_hold();
            if (!ok)
                fprintf(stderr, "seed %llu step %d\n", (unsigned long long)seed, step);
        }
        CHECK(ok);
    }
}
