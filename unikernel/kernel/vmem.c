/*
 * vmem.c — the function's address space as bookkeeping. The VMM maps all
 * guest RAM up front with 2 MiB pages, so brk, mmap, munmap and mprotect
 * never edit page tables here: they decide which ranges the function owns
 * (so the kernel can refuse every other pointer) and keep memory the
 * function gets fresh zeroed, as Linux promises for anonymous memory.
 *
 * Pure logic: no hypercalls, no globals. unikernel/kernel/test runs it on
 * the host over a real mapping at the same addresses.
 */
#include "libos.h"

void vmem_init(struct vmem *vm, uint64_t image_start, uint64_t image_end,
               uint64_t stack_low, uint64_t stack_top)
{
    memset(vm, 0, sizeof(*vm));
    vm->image_start = image_start;
    vm->image_end = image_end;
    vm->stack_low = stack_low;
    vm->stack_top = stack_top;
    vm->lo = PAGE_UP(image_end);
    vm->hi = PAGE_DOWN(stack_low);
    if (vm->hi < vm->lo)
        vm->hi = vm->lo;
    vm->brk_base = vm->brk = vm->lo;
    vm->clean_lo = vm->lo;
    vm->clean_hi = vm->hi;
}

static uint64_t umin(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Zero what of [a, b) the function may have dirtied: everything outside
 * the never-handed-out range. Fresh pages stay untouched (a host fault
 * each). */
static void zero_dirty(struct vmem *vm, uint64_t a, uint64_t b)
{
    uint64_t e1 = umin(b, vm->clean_lo);
    if (a < e1)
        memset((void *)(uintptr_t)a, 0, e1 - a);
    uint64_t s2 = umax(a, vm->clean_hi);
    if (s2 < b)
        memset((void *)(uintptr_t)s2, 0, b - s2);
}

/* [a, b) is now the function's: shrink the clean range, keeping its larger
 * side when [a, b) falls in the middle (losing clean memory only costs
 * zeroing later, never correctness). */
static void mark_used(struct vmem *vm, uint64_t a, uint64_t b)
{
    if (b <= vm->clean_lo || a >= vm->clean_hi)
        return;
    uint64_t left = a > vm->clean_lo ? a - vm->clean_lo : 0;
    uint64_t right = b < vm->clean_hi ? vm->clean_hi - b : 0;
    if (left == 0 && right == 0) {
        vm->clean_lo = vm->clean_hi = vm->hi;
    } else if (left >= right) {
        vm->clean_hi = a;
    } else {
        vm->clean_lo = b;
    }
}

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

/* The lowest address mmap may use: the heap owns everything below. */
static uint64_t heap_top(const struct vmem *vm) { return PAGE_UP(vm->brk); }

uint64_t vmem_brk(struct vmem *vm, uint64_t newbrk)
{
    if (newbrk < vm->brk_base || newbrk > vm->hi)
        return vm->brk;
    uint64_t old_top = heap_top(vm), new_top = PAGE_UP(newbrk);
    if (new_top > old_top) {
        if (overlaps_any(vm, old_top, new_top))
            return vm->brk;
        zero_dirty(vm, old_top, new_top);
        mark_used(vm, old_top, new_top);
    }
    vm->brk = newbrk;
    return vm->brk;
}

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

/* Highest free gap of len bytes in [heap_top, hi): its start, or 0. */
static uint64_t find_top_down(const struct vmem *vm, uint64_t len)
{
    uint64_t floor = heap_top(vm);
    uint64_t end = vm->hi;
    for (int i = vm->n - 1; i >= -1; i--) {
        uint64_t start = i >= 0 ? vm->r[i].end : floor;
        if (start < floor)
            start = floor;
        if (end >= start && end - start >= len)
            return end - len;
        if (i >= 0)
            end = vm->r[i].start;
        if (end <= floor)
            break;
    }
    return 0;
}

int64_t vmem_mmap(struct vmem *vm, uint64_t addr, uint64_t len, uint32_t prot,
                  uint32_t flags)
{
    if (len == 0 || len > vm->hi)
        return -EINVAL;
    len = PAGE_UP(len);
    int fixed = (flags & (KMAP_FIXED | KMAP_FIXED_NOREPLACE)) != 0;
    if (fixed && (addr & (PAGE_SIZE - 1)))
        return -EINVAL;
    /* Room for a carve split and an insert, so nothing fails half done. */
    if (vm->n + 2 > VMEM_MAX_REGIONS)
        return -ENOMEM;

    uint64_t a = 0;
    if (fixed) {
        if (addr < heap_top(vm) || addr > vm->hi || vm->hi - addr < len)
            return -ENOMEM;
        if (overlaps_any(vm, addr, addr + len)) {
            if (flags & KMAP_FIXED_NOREPLACE)
                return -EEXIST;
            carve(vm, addr, addr + len);
        }
        a = addr;
    } else {
        addr = PAGE_DOWN(addr);
        if (addr != 0 && addr >= heap_top(vm) && addr <= vm->hi &&
            vm->hi - addr >= len && !overlaps_any(vm, addr, addr + len))
            a = addr;
        else
            a = find_top_down(vm, len);
        if (a == 0)
            return -ENOMEM;
    }
    zero_dirty(vm, a, a + len);
    mark_used(vm, a, a + len);
    insert(vm, a, a + len, prot);
    return (int64_t)a;
}

int64_t vmem_munmap(struct vmem *vm, uint64_t addr, uint64_t len)
{
    if ((addr & (PAGE_SIZE - 1)) || len == 0 || addr + len < addr)
        return -EINVAL;
    uint64_t b = PAGE_UP(addr + len);
    int i = first_above(vm, addr);
    if (i < vm->n && vm->r[i].start < addr && vm->r[i].end > b &&
        vm->n + 1 > VMEM_MAX_REGIONS)
        return -ENOMEM;
    carve(vm, addr, b);
    return 0;
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

static int in_fixed_areas(const struct vmem *vm, uint64_t a, uint64_t b)
{
    return (a >= vm->image_start && b <= heap_top(vm)) ||
           (a >= vm->stack_low && b <= vm->stack_top);
}

int64_t vmem_mprotect(struct vmem *vm, uint64_t addr, uint64_t len,
                      uint32_t prot)
{
    if ((addr & (PAGE_SIZE - 1)) || addr + len < addr)
        return -EINVAL;
    if (len == 0)
        return 0;
    uint64_t b = PAGE_UP(addr + len);
    if (covered(vm, addr, b)) {
        if (vm->n + 2 > VMEM_MAX_REGIONS)
            return -ENOMEM;
        carve(vm, addr, b);
        insert(vm, addr, b, prot);
        return 0;
    }
    /* The image, heap and stack are always accessible to the function; a
     * change there is accepted and has no effect. */
    if (in_fixed_areas(vm, addr, b))
        return 0;
    return -ENOMEM;
}

int64_t vmem_dontneed(struct vmem *vm, uint64_t addr, uint64_t len)
{
    if ((addr & (PAGE_SIZE - 1)) || addr + len < addr)
        return -EINVAL;
    uint64_t b = PAGE_UP(addr + len);
    /* Private anonymous memory reads back as zeros after MADV_DONTNEED. */
    for (int i = first_above(vm, addr); i < vm->n && vm->r[i].start < b; i++) {
        uint64_t s = umax(addr, vm->r[i].start), e = umin(b, vm->r[i].end);
        if (vm->r[i].prot != 0 && s < e)
            memset((void *)(uintptr_t)s, 0, e - s);
    }
    uint64_t s = umax(addr, vm->brk_base), e = umin(b, heap_top(vm));
    if (s < e)
        memset((void *)(uintptr_t)s, 0, e - s);
    return 0;
}

/* End of the run of accessible memory that contains addr, or 0. */
static uint64_t valid_end(const struct vmem *vm, uint64_t addr)
{
    if (addr >= vm->image_start && addr < vm->image_end)
        return vm->image_end == vm->brk_base ? heap_top(vm) : vm->image_end;
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

int64_t vmem_strlen(const struct vmem *vm, uint64_t addr, uint64_t max)
{
    uint64_t n = 0;
    while (n < max) {
        uint64_t e = valid_end(vm, addr + n);
        if (e == 0)
            return -1;
        const char *p = (const char *)(uintptr_t)(addr + n);
        for (; addr + n < e && n < max; n++, p++)
            if (*p == 0)
                return (int64_t)n;
    }
    return -1;
}
