/*
 * vmem.c — the function's address space: regions (what the function owns,
 * exact to 4 KiB, for syscall pointer checks), 2 MiB frames of guest RAM
 * (the pool is the function's memory limit), and the page tables mapping
 * one to the other with two page sizes.
 *
 * Dense memory (Go's heap arenas growing by MAP_FIXED in ≥ 4 MiB steps, big
 * eager mappings, big brk steps) takes a whole frame per 2 MiB page: one PD
 * entry, no page-table writes per 4 KiB (those trap under PVM, where the
 * host shadows page tables) and huge pages on the host. Sparse memory (Go
 * touches a few 4 KiB pages in each of many regions: allocator summaries
 * inside PROT_NONE reservations, a 32 MiB heap index, persistentalloc
 * chunks, thread stacks) takes 4 KiB pages carved from frames, so it costs
 * what it uses rather than 2 MiB a region. Eager commits use a frame for
 * each untouched 2 MiB page they wholly cover and 4 KiB pages elsewhere;
 * first touches commit 4 KiB clusters (a #PF costs ≈ 45 µs under PVM, a
 * committed page nobody touches costs the host nothing, so the cluster
 * grows with what the 2 MiB page already holds). A 2 MiB page once mapped
 * with 4 KiB pages stays so until its last page goes (no promotion).
 *
 * Pure logic: no hypercalls, no globals. Every table and frame is reached
 * through vm->phys_off + gpa, so unikernel/kernel/test runs all of it on
 * the host over a buffer standing in for guest RAM; giving memory back to
 * the host goes through the vm->discard hook.
 */
#include "libos.h"

#define PTE_P 0x1ULL
#define PTE_W 0x2ULL
#define PTE_U 0x4ULL
#define PTE_PWT 0x8ULL
#define PTE_PCD 0x10ULL
#define PTE_PS 0x80ULL
#define PTE_COMMITTED 0x200ULL /* software bit: a user page owns a frame */
#define PTE_ADDR 0x000ffffffffff000ULL
#define PTE_MAPPED (PTE_P | PTE_W | PTE_U)
#define TABLE_FLAGS (PTE_P | PTE_W | PTE_U)

static uint64_t umin(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }

static uint64_t *table(const struct vmem *vm, uint64_t gpa)
{
    return (uint64_t *)(uintptr_t)(gpa + vm->phys_off);
}

/* ---- frames ---- */

static int frame_used(const struct vmem *vm, uint32_t i)
{
    return (vm->frames[i / 64] >> (i % 64)) & 1;
}

static void frame_set(struct vmem *vm, uint32_t i, int used)
{
    if (used)
        vm->frames[i / 64] |= 1ULL << (i % 64);
    else
        vm->frames[i / 64] &= ~(1ULL << (i % 64));
}

/* Bytes really in use: whole frames, and the pages of small-page frames. */
static uint64_t used_bytes(const struct vmem *vm)
{
    uint32_t whole = vm->nframes - vm->free_frames - vm->sp_frames;
    return (uint64_t)whole * HUGE_SIZE + (uint64_t)vm->sp_used * PAGE_SIZE;
}

static void note_peak(struct vmem *vm)
{
    uint64_t used = used_bytes(vm);
    if (used > vm->peak)
        vm->peak = used;
}

/* Hand pending discards to the host now. */
static void discard_flush(struct vmem *vm)
{
    if (vm->dc.count)
        vm->discard(vm);
    vm->dc.count = 0;
    vm->dc_freed = 0;
}

/* The contents of guest RAM [gpa, gpa+len) are garbage from now on: the
 * host zeroes them before the syscall returns (or before the memory is
 * handed out again). Freed 4 KiB pages arrive one by one and in no order,
 * so a range joins any pending one it touches: one exit per syscall as
 * long as the ranges fit. */
static void discard_add(struct vmem *vm, uint64_t gpa, uint64_t len)
{
    if (len == 0)
        return;
    uint32_t c = vm->dc.count;
    for (uint32_t i = c; i-- > 0;) {
        struct kiln_discard_range *r = &vm->dc.ranges[i];
        if (r->gpa + r->len == gpa) {
            r->len += len;
            return;
        }
        if (gpa + len == r->gpa) {
            r->gpa = gpa;
            r->len += len;
            return;
        }
    }
    if (c == KILN_DISCARD_MAX) {
        discard_flush(vm);
        c = 0;
    }
    vm->dc.ranges[c].gpa = gpa;
    vm->dc.ranges[c].len = len;
    vm->dc.count = c + 1;
}

/* A zero frame's gpa, or 0 when the pool is empty. Not yet counted in the
 * peak: the caller decides whether it is used whole or carved. */
static uint64_t frame_take(struct vmem *vm)
{
    if (vm->free_frames == 0)
        return 0;
    /* Memory freed in this syscall is zero only once the host has it. */
    if (vm->dc_freed)
        discard_flush(vm);
    for (uint32_t w = 0; w < (vm->nframes + 63) / 64; w++) {
        if (vm->frames[w] == ~0ULL)
            continue;
        uint32_t i = w * 64 + (uint32_t)__builtin_ctzll(~vm->frames[w]);
        if (i >= vm->nframes)
            break;
        frame_set(vm, i, 1);
        vm->free_frames--;
        return (uint64_t)i * HUGE_SIZE;
    }
    return 0;
}

static uint64_t frame_alloc(struct vmem *vm)
{
    uint64_t f = frame_take(vm);
    note_peak(vm);
    return f;
}

static void frame_free(struct vmem *vm, uint64_t gpa)
{
    uint32_t i = (uint32_t)(gpa / HUGE_SIZE);
    if (i >= vm->nframes || !frame_used(vm, i))
        return;
    discard_add(vm, gpa, HUGE_SIZE);
    vm->dc_freed = 1;
    frame_set(vm, i, 0);
    vm->free_frames++;
}

/* ---- 4 KiB pages ---- */

static int is_small(const struct vmem *vm, uint32_t i)
{
    return (vm->small[i / 64] >> (i % 64)) & 1;
}

/* 4 KiB pages that can still be had: free ones in small-page frames and
 * all of every free frame. */
static uint64_t pages_free(const struct vmem *vm)
{
    return (uint64_t)vm->sp_frames * VMEM_PTES - vm->sp_used +
           (uint64_t)vm->free_frames * VMEM_PTES;
}

/* A zero 4 KiB page's gpa, or 0 when memory is exhausted. Pages are taken
 * lowest first from one frame at a time, so the pages of one mapping tend
 * to be contiguous (fewer discard ranges, host huge pages stay dense). */
static uint64_t page_alloc(struct vmem *vm)
{
    if (vm->dc_freed)
        discard_flush(vm);
    uint32_t i = vm->sp_hint;
    if (i >= vm->nframes || !is_small(vm, i) || vm->sp_count[i] == VMEM_PTES) {
        for (i = 0; i < vm->nframes; i++)
            if (is_small(vm, i) && vm->sp_count[i] < VMEM_PTES)
                break;
        if (i == vm->nframes) {
            uint64_t f = frame_take(vm);
            if (f == 0)
                return 0;
            i = (uint32_t)(f / HUGE_SIZE);
            vm->small[i / 64] |= 1ULL << (i % 64);
            vm->sp_frames++;
        }
        vm->sp_hint = i;
    }
    uint64_t *bits = vm->sp_bits[i];
    for (uint32_t w = 0; w < VMEM_PTES / 64; w++) {
        if (bits[w] == ~0ULL)
            continue;
        uint32_t j = w * 64 + (uint32_t)__builtin_ctzll(~bits[w]);
        bits[w] |= 1ULL << (j % 64);
        vm->sp_count[i]++;
        vm->sp_used++;
        note_peak(vm);
        return (uint64_t)i * HUGE_SIZE + (uint64_t)j * PAGE_SIZE;
    }
    return 0; /* unreachable: sp_count said there was room */
}

/* Give a 4 KiB page back; its contents go to the host unless the caller
 * knows it is zero (an emptied page table). */
static void page_free(struct vmem *vm, uint64_t gpa, int dirty)
{
    uint32_t i = (uint32_t)(gpa / HUGE_SIZE), j = (uint32_t)((gpa % HUGE_SIZE) / PAGE_SIZE);
    if (i >= vm->nframes || !is_small(vm, i) || !((vm->sp_bits[i][j / 64] >> (j % 64)) & 1))
        return;
    vm->sp_bits[i][j / 64] &= ~(1ULL << (j % 64));
    vm->sp_count[i]--;
    vm->sp_used--;
    if (dirty)
        discard_add(vm, gpa, PAGE_SIZE);
    vm->dc_freed = 1;
    if (vm->sp_count[i] == 0) {
        /* Every page is zero or in dc: the whole frame is as a free one. */
        vm->small[i / 64] &= ~(1ULL << (i % 64));
        vm->sp_frames--;
        frame_set(vm, i, 0);
        vm->free_frames++;
    }
}

/* ---- page tables ---- */

/* A zeroed 4 KiB table page: from the boot pool, else an emptied page
 * table, else a small page. 0 when out of memory. */
static uint64_t table_alloc(struct vmem *vm)
{
    if (vm->pt_next < vm->pt_end) {
        uint64_t t = vm->pt_next;
        vm->pt_next += PAGE_SIZE;
        return t;
    }
    if (vm->ntfree)
        return vm->tfree[--vm->ntfree];
    return page_alloc(vm);
}

/* An emptied (all-zero) page table. Kept for the next table rather than
 * freed: until the TLB flush at the end of the syscall the CPU may still
 * cache the link to it, so it must not become data in the meantime. */
static void table_free(struct vmem *vm, uint64_t t)
{
    if (vm->ntfree < VMEM_TFREE)
        vm->tfree[vm->ntfree++] = t;
    else
        page_free(vm, t, 0); /* a boot-pool page is not a small page: kept */
}

/*
 * The PD entry of va, creating the PDPT and PD on the way when create is
 * set (NULL if that runs out of memory). Without create, NULL means no
 * table covers va, and *skip is the next address that may have one.
 */
static uint64_t *pd_entry(struct vmem *vm, uint64_t va, int create, uint64_t *skip)
{
    static const int shift[2] = {39, 30};
    uint64_t t = vm->pml4;
    for (int level = 0; level < 2; level++) {
        uint64_t *e = &table(vm, t)[(va >> shift[level]) & 511];
        if (!(*e & PTE_P)) {
            if (!create) {
                if (skip)
                    *skip = (va | ((1ULL << shift[level]) - 1)) + 1;
                return 0;
            }
            uint64_t n = table_alloc(vm);
            if (n == 0)
                return 0;
            /* The new table is zero, i.e. complete, before it is linked. */
            *e = n | TABLE_FLAGS;
        }
        t = *e & PTE_ADDR;
    }
    return &table(vm, t)[(va >> 21) & 511];
}

static uint64_t *pd_lookup(const struct vmem *vm, uint64_t va)
{
    return pd_entry((struct vmem *)vm, va, 0, 0);
}

/* ---- regions ---- */

/* Index of the first region whose end is above addr (n if none). */
static int first_above(const struct vmem *vm, uint64_t addr)
{
    int lo = 0, hi = vm->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (vm->r[mid].end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int overlaps_any(const struct vmem *vm, uint64_t a, uint64_t b)
{
    int i = first_above(vm, a);
    return i < vm->n && vm->r[i].start < b;
}

static uint64_t heap_top(const struct vmem *vm) { return PAGE_UP(vm->brk); }

/* Remove [a, b) from the region table, splitting where needed. The caller
 * guarantees a free slot for one split. */
static void carve(struct vmem *vm, uint64_t a, uint64_t b)
{
    int i = first_above(vm, a);
    while (i < vm->n && vm->r[i].start < b) {
        struct vregion *r = &vm->r[i];
        if (r->start < a && r->end > b) {
            memmove(&vm->r[i + 1], &vm->r[i], (size_t)(vm->n - i) * sizeof(*r));
            vm->n++;
            vm->r[i].end = a;
            vm->r[i + 1].start = b;
            return;
        }
        if (r->start < a) {
            r->end = a;
            i++;
        } else if (r->end > b) {
            r->start = b;
            return;
        } else {
            memmove(&vm->r[i], &vm->r[i + 1], (size_t)(vm->n - i - 1) * sizeof(*r));
            vm->n--;
        }
    }
}

/* Add [a, b) (free of regions) with prot, merging equal neighbours. The
 * caller guarantees a free slot. */
static void insert(struct vmem *vm, uint64_t a, uint64_t b, uint32_t prot)
{
    int i = first_above(vm, a);
    int merge_prev = i > 0 && vm->r[i - 1].end == a && vm->r[i - 1].prot == prot;
    int merge_next = i < vm->n && vm->r[i].start == b && vm->r[i].prot == prot;
    if (merge_prev && merge_next) {
        vm->r[i - 1].end = vm->r[i].end;
        memmove(&vm->r[i], &vm->r[i + 1], (size_t)(vm->n - i - 1) * sizeof(vm->r[0]));
        vm->n--;
    } else if (merge_prev) {
        vm->r[i - 1].end = b;
    } else if (merge_next) {
        vm->r[i].start = a;
    } else {
        memmove(&vm->r[i + 1], &vm->r[i], (size_t)(vm->n - i) * sizeof(vm->r[0]));
        vm->r[i].start = a;
        vm->r[i].end = b;
        vm->r[i].prot = prot;
        vm->r[i]._pad = 0;
        vm->n++;
    }
}

/* Whether [a, b) is wholly covered by regions. */
static int covered(const struct vmem *vm, uint64_t a, uint64_t b)
{
    int i = first_above(vm, a);
    uint64_t cur = a;
    while (cur < b) {
        if (i >= vm->n || vm->r[i].start > cur)
            return 0;
        cur = vm->r[i].end;
        i++;
    }
    return 1;
}

/* What overlaps [pg, pg+size): *any region (PROT_NONE included), *acc an
 * accessible one. The brk heap is an accessible region here. */
static void page_users(const struct vmem *vm, uint64_t pg, uint64_t size,
                       int *any, int *acc)
{
    uint64_t end = pg + size;
    *any = *acc = 0;
    if (vm->brk_base < end && heap_top(vm) > pg && heap_top(vm) > vm->brk_base) {
        *any = *acc = 1;
        return;
    }
    for (int i = first_above(vm, pg); i < vm->n && vm->r[i].start < end; i++) {
        *any = 1;
        if (vm->r[i].prot) {
            *acc = 1;
            return;
        }
    }
}

static int is_leaf(uint64_t e) { return (e & PTE_PS) != 0; }

static uint64_t *pt_of(const struct vmem *vm, uint64_t e)
{
    return table(vm, e & PTE_ADDR);
}

/*
 * Bring a committed entry (a 2 MiB leaf or a 4 KiB PTE covering [va,
 * va+size)) in line with the regions over it: free its memory when nothing
 * covers it any more, map it while something accessible does, unmap it
 * (keeping the memory) while only PROT_NONE does.
 */
static void sync_entry(struct vmem *vm, uint64_t *e, uint64_t va, uint64_t size)
{
    if (!(*e & PTE_COMMITTED))
        return;
    int any, acc;
    page_users(vm, va, size, &any, &acc);
    if (!any) {
        if (*e & PTE_P)
            vm->need_flush = 1;
        if (size == HUGE_SIZE)
            frame_free(vm, *e & PTE_ADDR);
        else
            page_free(vm, *e & PTE_ADDR, 1);
        *e = 0;
    } else if (acc && !(*e & PTE_P)) {
        *e |= PTE_MAPPED;
    } else if (!acc && (*e & PTE_P)) {
        *e &= ~PTE_MAPPED;
        vm->need_flush = 1;
    }
}

/* A PD entry whose page table lost its last page: unlink and keep it. */
static void drop_if_empty(struct vmem *vm, uint64_t *e)
{
    const uint64_t *pt = pt_of(vm, *e);
    for (int i = 0; i < VMEM_PTES; i++)
        if (pt[i])
            return;
    table_free(vm, *e & PTE_ADDR);
    *e = 0;
    vm->need_flush = 1;
}

/* Re-derive the committed entries of 2 MiB page pg within [a, b). */
static void sync_span(struct vmem *vm, uint64_t *e, uint64_t pg, uint64_t a, uint64_t b)
{
    if (!*e)
        return;
    if (is_leaf(*e)) {
        sync_entry(vm, e, pg, HUGE_SIZE);
        return;
    }
    uint64_t *pt = pt_of(vm, *e);
    uint64_t s = umax(a, pg), t = umin(b, pg + HUGE_SIZE);
    for (uint64_t va = s; va < t; va += PAGE_SIZE)
        sync_entry(vm, &pt[(va >> 12) & 511], va, PAGE_SIZE);
    drop_if_empty(vm, e);
}

/*
 * [a, b) (page-aligned, user addresses) lost its contents — unmapped,
 * replaced or advised away. Committed memory that no region covers any
 * more is freed; of the rest the host zeroes the range. With whole set
 * (DONTNEED) memory wholly inside goes instead — a 2 MiB leaf when the
 * range spans it, each 4 KiB page — and the next touch commits afresh.
 */
static void release(struct vmem *vm, uint64_t a, uint64_t b, int whole)
{
    uint64_t pg = HUGE_DOWN(a);
    while (pg < b) {
        uint64_t skip;
        uint64_t *e = pd_entry(vm, pg, 0, &skip);
        if (!e) {
            pg = HUGE_DOWN(skip);
            continue;
        }
        uint64_t s = umax(a, pg), t = umin(b, pg + HUGE_SIZE);
        if (*e && is_leaf(*e) && (*e & PTE_COMMITTED)) {
            int any, acc;
            page_users(vm, pg, HUGE_SIZE, &any, &acc);
            if (!any || (whole && s == pg && t == pg + HUGE_SIZE)) {
                if (*e & PTE_P)
                    vm->need_flush = 1;
                frame_free(vm, *e & PTE_ADDR);
                *e = 0;
            } else {
                discard_add(vm, (*e & PTE_ADDR) + (s - pg), t - s);
                sync_entry(vm, e, pg, HUGE_SIZE);
            }
        } else if (*e && !is_leaf(*e)) {
            uint64_t *pt = pt_of(vm, *e);
            for (uint64_t va = s; va < t; va += PAGE_SIZE) {
                uint64_t *pte = &pt[(va >> 12) & 511];
                if (!(*pte & PTE_COMMITTED))
                    continue;
                int any, acc;
                page_users(vm, va, PAGE_SIZE, &any, &acc);
                if (whole || !any) {
                    if (*pte & PTE_P)
                        vm->need_flush = 1;
                    page_free(vm, *pte & PTE_ADDR, 1);
                    *pte = 0;
                } else {
                    discard_add(vm, *pte & PTE_ADDR, PAGE_SIZE);
                    sync_entry(vm, pte, va, PAGE_SIZE);
                }
            }
            drop_if_empty(vm, e);
        }
        pg += HUGE_SIZE;
    }
}

/* Re-derive every committed entry of the pages touching [a, b). */
static void sync_range(struct vmem *vm, uint64_t a, uint64_t b)
{
    uint64_t pg = HUGE_DOWN(a);
    while (pg < b) {
        uint64_t skip;
        uint64_t *e = pd_entry(vm, pg, 0, &skip);
        if (!e) {
            pg = HUGE_DOWN(skip);
            continue;
        }
        sync_span(vm, e, pg, a, b);
        pg += HUGE_SIZE;
    }
}

/* Whether the 4 KiB page at va is the function's and accessible. */
static int page_accessible(const struct vmem *vm, uint64_t va)
{
    int any, acc;
    page_users(vm, va, PAGE_SIZE, &any, &acc);
    return acc;
}

/*
 * Commit [s, t) of 2 MiB page pg (page-aligned; only pages an accessible
 * region covers when only_acc is set). A 2 MiB leaf when huge is allowed
 * and the span is the whole, untouched page; else 4 KiB pages, a new page
 * table being filled before it is linked (under PVM the host shadows live
 * tables: each write to one traps). Stops at the first page that cannot be
 * had: -ENOMEM, with what was committed so far kept.
 */
static int commit_span(struct vmem *vm, uint64_t pg, uint64_t s, uint64_t t,
                       int huge, int only_acc)
{
    uint64_t *e = pd_entry(vm, pg, 1, 0);
    if (!e)
        return -ENOMEM;
    if (*e && is_leaf(*e)) {
        sync_entry(vm, e, pg, HUGE_SIZE);
        return 0;
    }
    if (!*e && huge && s == pg && t == pg + HUGE_SIZE) {
        uint64_t f = frame_alloc(vm);
        if (f == 0)
            return -ENOMEM;
        *e = f | PTE_PS | PTE_COMMITTED;
        sync_entry(vm, e, pg, HUGE_SIZE);
        return 0;
    }
    int fresh = !*e;
    uint64_t ptg = fresh ? table_alloc(vm) : (*e & PTE_ADDR);
    if (ptg == 0)
        return -ENOMEM;
    uint64_t *pt = table(vm, ptg);
    int r = 0;
    for (uint64_t va = s; va < t; va += PAGE_SIZE) {
        uint64_t *pte = &pt[(va >> 12) & 511];
        if (*pte & PTE_COMMITTED) {
            sync_entry(vm, pte, va, PAGE_SIZE);
            continue;
        }
        if (only_acc && !page_accessible(vm, va))
            continue;
        uint64_t p = page_alloc(vm);
        if (p == 0) {
            r = -ENOMEM;
            break;
        }
        *pte = p | PTE_COMMITTED;
        sync_entry(vm, pte, va, PAGE_SIZE);
    }
    if (fresh) {
        int empty = 1;
        for (int i = 0; i < VMEM_PTES && empty; i++)
            empty = pt[i] == 0;
        if (empty)
            table_free(vm, ptg);
        else
            *e = ptg | TABLE_FLAGS;
    }
    return r;
}

/*
 * Make sure memory can back [a, b) (page-aligned) before anything is
 * committed: creates the upper tables and counts. 1 if whole untouched
 * 2 MiB pages may take leaves, 0 if only 4 KiB pages fit (the pool has
 * pages but not enough whole frames), -ENOMEM if nothing changes.
 */
static int reserve(struct vmem *vm, uint64_t a, uint64_t b)
{
    uint64_t leaves = 0, pages = 0;
    for (uint64_t pg = HUGE_DOWN(a); pg < b; pg += HUGE_SIZE) {
        uint64_t *e = pd_entry(vm, pg, 1, 0);
        if (!e)
            return -ENOMEM;
        uint64_t s = umax(a, pg), t = umin(b, pg + HUGE_SIZE);
        if (*e && is_leaf(*e))
            continue;
        if (!*e && s == pg && t == pg + HUGE_SIZE) {
            leaves++;
            continue;
        }
        if (!*e)
            pages++; /* its page table */
        const uint64_t *pt = *e ? pt_of(vm, *e) : 0;
        for (uint64_t va = s; va < t; va += PAGE_SIZE)
            if (!pt || !(pt[(va >> 12) & 511] & PTE_COMMITTED))
                pages++;
    }
    uint64_t have = pages_free(vm);
    if (leaves <= vm->free_frames &&
        pages <= have - leaves * VMEM_PTES)
        return 1;
    /* As 4 KiB pages each leaf costs its 512 pages and a table. */
    return pages + leaves * (VMEM_PTES + 1) <= have ? 0 : -ENOMEM;
}

/* Commit every page touching [a, b) after reserve said how it fits. */
static void commit_range(struct vmem *vm, uint64_t a, uint64_t b, int huge)
{
    for (uint64_t pg = HUGE_DOWN(a); pg < b; pg += HUGE_SIZE)
        (void)commit_span(vm, pg, umax(a, pg), umin(b, pg + HUGE_SIZE), huge, 0);
}

/*
 * The page of a first touch at addr (accessible, committed nowhere yet, or
 * a leaf only PROT_NONE kept unmapped): a cluster of 4 KiB pages around it,
 * VMEM_FAULT_CLUSTER pages at first and as many as the table already
 * holds after that — sparse use costs 64 KiB a touch, dense use a handful
 * of faults per 2 MiB (each ≈ 45 µs under PVM, where committing a page
 * nobody touches costs the host nothing). 1 if addr is now committed.
 */
static int commit_touch(struct vmem *vm, uint64_t addr)
{
    uint64_t pg = HUGE_DOWN(addr);
    uint64_t *e = pd_entry(vm, pg, 1, 0);
    if (!e)
        return -ENOMEM;
    if (*e && is_leaf(*e)) {
        sync_entry(vm, e, pg, HUGE_SIZE);
        return 1;
    }
    uint64_t held = 0, want = 1; /* want: pages needed, the table included */
    const uint64_t *pt = *e ? pt_of(vm, *e) : 0;
    if (pt) {
        for (int i = 0; i < VMEM_PTES; i++)
            held += (pt[i] & PTE_COMMITTED) != 0;
        if (pt[(addr >> 12) & 511] & PTE_COMMITTED) {
            sync_entry(vm, (uint64_t *)&pt[(addr >> 12) & 511], PAGE_DOWN(addr), PAGE_SIZE);
            return 1;
        }
        want = 0;
    }
    uint64_t n = VMEM_FAULT_CLUSTER;
    while (n < held && n < VMEM_PTES)
        n *= 2;
    uint64_t s = addr & ~(n * PAGE_SIZE - 1), t = s + n * PAGE_SIZE;
    for (uint64_t va = s; va < t; va += PAGE_SIZE)
        if (!(pt && (pt[(va >> 12) & 511] & PTE_COMMITTED)) && page_accessible(vm, va))
            want++;
    if (want > pages_free(vm)) {
        /* Not the whole cluster: the page itself, if anything. */
        s = PAGE_DOWN(addr);
        t = s + PAGE_SIZE;
    }
    (void)commit_span(vm, pg, s, t, 0, 1);
    return vmem_lookup(vm, addr) ? 1 : -ENOMEM;
}

/* ---- set-up ---- */

int vmem_init(struct vmem *vm, const struct vmem_layout *l,
              void (*discard)(struct vmem *vm))
{
    memset(vm, 0, sizeof(*vm));
    vm->phys_off = l->phys_off;
    vm->mem_size = HUGE_DOWN(umin(l->mem_size, KILN_MEM_MAX));
    vm->image_start = l->image_start;
    vm->image_end = l->image_end;
    vm->stack_low = l->stack_low;
    vm->stack_top = l->stack_top;
    vm->brk_base = vm->brk = VMEM_BRK_BASE;
    vm->pt_next = l->pt_pool;
    vm->pt_end = l->pt_pool + l->pt_pool_pages * PAGE_SIZE;
    vm->discard = discard;
    vm->nframes = (uint32_t)(vm->mem_size / HUGE_SIZE);
    vm->free_frames = vm->nframes;

    /* What the VMM placed stays where it is: page tables and kernel below
     * KILN_USER_BASE, the image, the stack. */
    for (uint32_t i = 0; i < vm->nframes; i++) {
        uint64_t f = (uint64_t)i * HUGE_SIZE, fe = f + HUGE_SIZE;
        int keep = f < KILN_USER_BASE ||
                   (f < vm->image_end && fe > vm->image_start) ||
                   (f < vm->stack_top && fe > vm->stack_low);
        if (keep) {
            frame_set(vm, i, 1);
            vm->free_frames--;
        }
    }
    note_peak(vm);

    vm->pml4 = table_alloc(vm);
    if (vm->pml4 == 0)
        return -ENOMEM;
    /* The direct map, as the VMM built it: RAM from 2 MiB and the doorbell
     * page (uncached: device memory). */
    for (uint64_t gpa = HUGE_SIZE; gpa < vm->mem_size; gpa += HUGE_SIZE) {
        uint64_t *e = pd_entry(vm, gpa, 1, 0);
        if (!e)
            return -ENOMEM;
        *e = gpa | PTE_MAPPED | PTE_PS;
    }
    uint64_t *e = pd_entry(vm, KILN_MMIO_GPA, 1, 0);
    if (!e)
        return -ENOMEM;
    *e = HUGE_DOWN(KILN_MMIO_GPA) | PTE_MAPPED | PTE_PS | PTE_PCD | PTE_PWT;
    return 0;
}

/* ---- syscalls ---- */

uint64_t vmem_brk(struct vmem *vm, uint64_t newbrk)
{
    if (newbrk < vm->brk_base || newbrk > VMEM_BRK_END)
        return vm->brk;
    uint64_t old_top = heap_top(vm), new_top = PAGE_UP(newbrk);
    if (new_top > old_top) {
        int huge = reserve(vm, old_top, new_top);
        if (huge < 0)
            return vm->brk;
        vm->brk = newbrk;
        commit_range(vm, old_top, new_top, huge);
    } else {
        vm->brk = newbrk;
        if (new_top < old_top)
            release(vm, new_top, old_top, 0);
    }
    return vm->brk;
}

/* Highest free gap of len bytes below VMEM_MMAP_TOP: its start, or 0. */
static uint64_t find_top_down(const struct vmem *vm, uint64_t len)
{
    uint64_t floor = VMEM_MMAP_LO, end = VMEM_MMAP_TOP;
    int i = first_above(vm, end);
    if (i < vm->n && vm->r[i].start < end)
        end = vm->r[i].start;
    for (int j = i - 1;; j--) {
        uint64_t start = j >= 0 ? umax(vm->r[j].end, floor) : floor;
        if (end >= start && end - start >= len)
            return end - len;
        if (j < 0)
            break;
        end = vm->r[j].start;
        if (end <= floor)
            break;
    }
    return 0;
}

static int in_mmap_area(uint64_t a, uint64_t len)
{
    return a >= VMEM_MMAP_LO && a <= VMEM_MMAP_HI && VMEM_MMAP_HI - a >= len;
}

int64_t vmem_mmap(struct vmem *vm, uint64_t addr, uint64_t len, uint32_t prot,
                  uint32_t flags)
{
    if (len == 0)
        return -EINVAL;
    if (len > VMEM_MMAP_HI - VMEM_MMAP_LO)
        return -ENOMEM;
    len = PAGE_UP(len);
    int fixed = (flags & (KMAP_FIXED | KMAP_FIXED_NOREPLACE)) != 0;
    if (fixed && (addr & (PAGE_SIZE - 1)))
        return -EINVAL;
    /* Room for a carve split and an insert, so nothing fails half done. */
    if (vm->n + 2 > VMEM_MAX_REGIONS)
        return -ENOMEM;

    uint64_t a;
    int replace = 0;
    if (fixed) {
        if (!in_mmap_area(addr, len))
            return -ENOMEM;
        if (overlaps_any(vm, addr, addr + len)) {
            if (flags & KMAP_FIXED_NOREPLACE)
                return -EEXIST;
            replace = 1;
        }
        a = addr;
    } else {
        addr = PAGE_DOWN(addr);
        if (addr != 0 && in_mmap_area(addr, len) && !overlaps_any(vm, addr, addr + len))
            a = addr;
        else
            a = find_top_down(vm, len);
        if (a == 0)
            return -ENOMEM;
    }
    int eager = (prot & 7) && !(flags & KMAP_NORESERVE) &&
                (fixed || (flags & KMAP_POPULATE) || len <= VMEM_EAGER_MAX);
    int huge = eager ? reserve(vm, a, a + len) : 0;
    if (huge < 0)
        return -ENOMEM;
    if (replace)
        carve(vm, a, a + len);
    insert(vm, a, a + len, prot);
    if (replace)
        release(vm, a, a + len, 0); /* old contents go; the frames stay */
    else
        sync_range(vm, a, a + len);  /* pages shared with neighbours */
    if (eager)
        commit_range(vm, a, a + len, huge);
    return (int64_t)a;
}

int64_t vmem_munmap(struct vmem *vm, uint64_t addr, uint64_t len)
{
    if ((addr & (PAGE_SIZE - 1)) || len == 0 || addr + len < addr)
        return -EINVAL;
    uint64_t b = PAGE_UP(addr + len);
    if (b < addr)
        return -EINVAL;
    int i = first_above(vm, addr);
    if (i < vm->n && vm->r[i].start < addr && vm->r[i].end > b &&
        vm->n + 1 > VMEM_MAX_REGIONS)
        return -ENOMEM;
    if (!overlaps_any(vm, addr, b))
        return 0;
    carve(vm, addr, b);
    release(vm, umax(addr, VMEM_MMAP_LO), b, 0);
    return 0;
}

static int in_fixed_areas(const struct vmem *vm, uint64_t a, uint64_t b)
{
    return (a >= vm->image_start && b <= vm->image_end) ||
           (a >= vm->brk_base && b <= heap_top(vm)) ||
           (a >= vm->stack_low && b <= vm->stack_top);
}

int64_t vmem_mprotect(struct vmem *vm, uint64_t addr, uint64_t len,
                      uint32_t prot)
{
    if ((addr & (PAGE_SIZE - 1)) || addr + len < addr || (prot & ~7U))
        return -EINVAL;
    if (len == 0)
        return 0;
    uint64_t b = PAGE_UP(addr + len);
    if (b < addr) /* rounding up wrapped past the top */
        return -ENOMEM;
    if (covered(vm, addr, b)) {
        if (vm->n + 2 > VMEM_MAX_REGIONS)
            return -ENOMEM;
        carve(vm, addr, b);
        insert(vm, addr, b, prot);
        sync_range(vm, addr, b);
        return 0;
    }
    /* The image, heap and stack are always accessible to the function (the
     * direct map is never narrowed); a change there is accepted. */
    if (in_fixed_areas(vm, addr, b))
        return 0;
    return -ENOMEM;
}

int64_t vmem_madvise(struct vmem *vm, uint64_t addr, uint64_t len,
                     uint64_t advice)
{
    if ((addr & (PAGE_SIZE - 1)) || addr + len < addr)
        return -EINVAL;
    if (advice != KMADV_DONTNEED && advice != KMADV_FREE && advice != KMADV_REMOVE)
        return 0;
    uint64_t b = PAGE_UP(addr + len);
    if (b < addr)
        return -EINVAL;
    /* Private anonymous memory reads back as zeros afterwards. The image
     * and the initial stack live in the direct map and are left alone. */
    uint64_t lo = umax(addr, VMEM_DIRECT_END);
    if (lo < b)
        release(vm, lo, b, 1);
    return 0;
}

int64_t vmem_mremap(struct vmem *vm, uint64_t addr, uint64_t old_len,
                    uint64_t new_len, uint64_t flags)
{
    if ((addr & (PAGE_SIZE - 1)) || new_len == 0 || (flags & ~7ULL))
        return -EINVAL;
    old_len = PAGE_UP(old_len);
    new_len = PAGE_UP(new_len);
    if (old_len == 0 || addr + old_len < addr || !covered(vm, addr, addr + old_len))
        return -EFAULT;
    if (new_len > old_len)
        return -ENOMEM; /* growing would move it or need the room above */
    if (new_len < old_len) {
        int64_t r = vmem_munmap(vm, addr + new_len, old_len - new_len);
        if (r < 0)
            return r;
    }
    return (int64_t)addr;
}

/* ---- lookups ---- */

/* End of the run of accessible memory that contains addr, or 0. */
static uint64_t valid_end(const struct vmem *vm, uint64_t addr)
{
    if (addr >= vm->image_start && addr < vm->image_end)
        return vm->image_end;
    if (addr >= vm->brk_base && addr < heap_top(vm))
        return heap_top(vm);
    if (addr >= vm->stack_low && addr < vm->stack_top)
        return vm->stack_top;
    int i = first_above(vm, addr);
    if (i < vm->n && vm->r[i].start <= addr && vm->r[i].prot != 0)
        return vm->r[i].end;
    return 0;
}

int vmem_valid(const struct vmem *vm, uint64_t addr, uint64_t len)
{
    if (len == 0)
        return 1;
    uint64_t end = addr + len;
    if (end < addr)
        return 0;
    while (addr < end) {
        uint64_t e = valid_end(vm, addr);
        if (e == 0)
            return 0;
        addr = e;
    }
    return 1;
}

int vmem_mapped(const struct vmem *vm, uint64_t addr, uint64_t len)
{
    uint64_t end = addr + len;
    if (end < addr)
        return 0;
    if (len == 0 || in_fixed_areas(vm, addr, end))
        return 1;
    return covered(vm, addr, end);
}

uint64_t vmem_lookup(const struct vmem *vm, uint64_t addr)
{
    if (addr < VMEM_DIRECT_END)
        return addr < vm->mem_size ? addr : 0;
    const uint64_t *e = pd_lookup(vm, addr);
    if (!e || !*e)
        return 0;
    if (is_leaf(*e))
        return (*e & PTE_COMMITTED) ? (*e & PTE_ADDR) + (addr & (HUGE_SIZE - 1)) : 0;
    uint64_t pte = pt_of(vm, *e)[(addr >> 12) & 511];
    if (!(pte & PTE_COMMITTED))
        return 0;
    return (pte & PTE_ADDR) + (addr & (PAGE_SIZE - 1));
}

int64_t vmem_strlen(const struct vmem *vm, uint64_t addr, uint64_t max)
{
    uint64_t n = 0;
    while (n < max) {
        uint64_t a = addr + n;
        uint64_t e = valid_end(vm, a);
        if (e == 0)
            return -1;
        e = umin(e, PAGE_DOWN(a) + PAGE_SIZE); /* one page at a time */
        uint64_t gpa = vmem_lookup(vm, a);
        if (gpa == 0)
            return (int64_t)n; /* never touched: reads as zero */
        const char *p = (const char *)(uintptr_t)(gpa + vm->phys_off);
        for (; addr + n < e && n < max; n++, p++)
            if (*p == 0)
                return (int64_t)n;
    }
    return -1;
}

int vmem_demand(struct vmem *vm, uint64_t addr, uint64_t err)
{
    if ((err & 1) || addr < VMEM_DIRECT_END || !vmem_valid(vm, addr, 1))
        return 0;
    return commit_touch(vm, addr) < 0 ? -ENOMEM : 1;
}

int64_t vmem_translate(struct vmem *vm, uint64_t addr, uint64_t len,
                       uint64_t *gpa)
{
    if (!vmem_valid(vm, addr, len ? len : 1))
        return -EFAULT;
    if (addr < VMEM_DIRECT_END) {
        *gpa = addr;
        return (int64_t)len;
    }
    if (commit_touch(vm, addr) < 0)
        return -ENOMEM;
    *gpa = vmem_lookup(vm, addr);
    const uint64_t *e = pd_lookup(vm, addr);
    if (is_leaf(*e))
        return (int64_t)umin(len, HUGE_DOWN(addr) + HUGE_SIZE - addr);
    /* Pages of one cluster usually sit side by side in their frame: the
     * run goes on while they do, so a big read or write needs fewer
     * hypercalls. */
    const uint64_t *pt = pt_of(vm, *e);
    uint64_t end = PAGE_DOWN(addr) + PAGE_SIZE, pend = HUGE_DOWN(addr) + HUGE_SIZE;
    uint64_t next = PAGE_DOWN(*gpa) + PAGE_SIZE;
    while (end < pend && end - addr < len) {
        uint64_t pte = pt[(end >> 12) & 511];
        if (!(pte & PTE_COMMITTED) || (pte & PTE_ADDR) != next)
            break;
        end += PAGE_SIZE;
        next += PAGE_SIZE;
    }
    return (int64_t)umin(len, end - addr);
}

uint64_t vmem_kframe(struct vmem *vm)
{
    return frame_alloc(vm);
}

uint64_t vmem_used(const struct vmem *vm)
{
    return used_bytes(vm);
}

uint64_t vmem_peak(const struct vmem *vm)
{
    return vm->peak;
}

void vmem_settle(struct vmem *vm)
{
    uint32_t keep = 0;
    for (uint32_t i = 0; i < vm->ntfree; i++) {
        uint64_t t = vm->tfree[i];
        if (is_small(vm, (uint32_t)(t / HUGE_SIZE)))
            page_free(vm, t, 0);
        else
            vm->tfree[keep++] = t; /* a boot-pool page stays a table page */
    }
    vm->ntfree = keep;
}
