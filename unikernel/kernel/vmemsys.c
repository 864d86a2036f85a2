/*
 * vmemsys.c — the address space in the running kernel: the page tables'
 * home, vmem.c's syscalls, demand paging, and giving memory back to the
 * host with KILN_HC_DISCARD.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

/* Enough table pages for the direct map (PML4, PDPT, 4 PDs) and for a Go
 * program's spread of mappings; vmem.c takes a frame when they run out.
 * In .bss, so below KILN_KERNEL_LIMIT, zero and reachable by ring 3. */
#define PT_POOL_PAGES 32
static uint64_t pt_pool[PT_POOL_PAGES][512] __attribute__((aligned(4096)));

/* The host zeroes each range of vm->dc (identity-mapped: its address is its
 * gpa). One exit per batch; vmem.c batches a syscall's worth. */
static void discard_to_host(struct vmem *vm)
{
    if (vm->dc.count)
        arch_hypercall(KILN_HC_DISCARD, &vm->dc);
    vm->dc.count = 0;
}

void vmemsys_init(const struct kiln_boot_info *bi)
{
    uint64_t mem = bi->mem_size;
    if (bi->image_start < KILN_USER_BASE || bi->image_end < bi->image_start ||
        bi->stack_low < bi->image_end || bi->stack_top > mem ||
        bi->stack_top < bi->stack_low || mem > KILN_MEM_MAX || mem % HUGE_SIZE)
        kpanic("boot info: inconsistent memory layout");
    struct vmem_layout l = {
        .mem_size = mem,
        .phys_off = 0,
        .image_start = bi->image_start,
        .image_end = bi->image_end,
        .stack_low = bi->stack_low,
        .stack_top = bi->stack_top,
        .pt_pool = (uint64_t)(uintptr_t)pt_pool,
        .pt_pool_pages = PT_POOL_PAGES,
    };
    if (vmem_init(&kiln_vm, &l, discard_to_host) < 0)
        kpanic("vmem: no memory for the page tables");
    /* Our tables map everything the VMM's did, at the same addresses, so
     * the switch is seamless; the VMM's (below 2 MiB) are never used again. */
    arch_load_cr3(kiln_vm.pml4);
}

/* End of every syscall that changed the address space: the host zeroes
 * what was given back, and stale translations go. */
static void finish(void)
{
    discard_to_host(&kiln_vm);
    kiln_vm.dc_freed = 0;
    if (kiln_vm.need_flush) {
        kiln_vm.need_flush = 0;
        arch_flush_tlb();
    }
    vmem_settle(&kiln_vm);
}

static int64_t sys_mmap(uint64_t addr, uint64_t len, uint64_t prot,
                        uint64_t flags, uint64_t fd)
{
    if (!(flags & KMAP_ANONYMOUS))
        return fd_valid((int64_t)fd) ? -ENODEV : -EBADF;
    uint64_t type = flags & 3;
    if (type == 0 || (prot & ~7ULL))
        return -EINVAL;
    return vmem_mmap(&kiln_vm, addr, len, (uint32_t)prot, (uint32_t)flags);
}

/* mincore: every mapped page of an anonymous mapping counts as resident
 * (an uncommitted one reads as zero without a fault a caller could see). */
static int64_t sys_mincore(uint64_t addr, uint64_t len, uint64_t vec)
{
    if (addr & (PAGE_SIZE - 1))
        return -EINVAL;
    uint64_t pages = PAGE_UP(len) / PAGE_SIZE;
    if (len == 0)
        return 0;
    if (addr + len < addr || !vmem_mapped(&kiln_vm, addr, PAGE_UP(len)))
        return -ENOMEM;
    if (!UVALID(vec, pages))
        return -EFAULT;
    memset(UPTR(vec), 1, pages);
    return 0;
}

int vmem_syscall(uint64_t nr, const uint64_t *a, int64_t *ret)
{
    struct vmem *vm = &kiln_vm;
    switch (nr) {
    case 9: *ret = sys_mmap(a[0], a[1], a[2], a[3], a[4]); break;
    case 10: *ret = vmem_mprotect(vm, a[0], a[1], (uint32_t)a[2]); break;
    case 11: *ret = vmem_munmap(vm, a[0], a[1]); break;
    case 12: *ret = (int64_t)vmem_brk(vm, a[0]); break;
    case 25: *ret = vmem_mremap(vm, a[0], a[1], a[2], a[3]); break;
    case 26:                                                /* msync */
        *ret = (a[0] & (PAGE_SIZE - 1)) ? -EINVAL
               : vmem_mapped(vm, a[0], PAGE_UP(a[1])) ? 0 : -ENOMEM;
        break;
    case 27: *ret = sys_mincore(a[0], a[1], a[2]); break;
    case 28: *ret = vmem_madvise(vm, a[0], a[1], a[2]); break;
    case 149: case 150: case 151: case 152:         /* mlock family */
        *ret = 0; /* nothing here is ever swapped out */
        break;
    default:
        return 0;
    }
    finish();
    return 1;
}

int vmem_fault(uint64_t addr, uint64_t err)
{
    int r = vmem_demand(&kiln_vm, addr, err);
    finish(); /* a page-table frame may have been taken: nothing to drop */
    return r;
}

int64_t vmem_phys(uint64_t addr, uint64_t len, uint64_t *gpa)
{
    int64_t n = vmem_translate(&kiln_vm, addr, len, gpa);
    finish();
    return n;
}

void *kalloc_frame(void)
{
    uint64_t f = vmem_kframe(&kiln_vm);
    finish();
    /* Zero by vmem's invariant (fresh or discarded); the direct map makes
     * its physical address usable as a pointer in every thread. */
    return f ? UPTR(f) : 0;
}

uint64_t vmem_used_bytes(void) { return vmem_used(&kiln_vm); }
uint64_t vmem_limit_bytes(void) { return kiln_vm.mem_size; }
uint64_t vmem_peak_bytes(void) { return vmem_peak(&kiln_vm); }
