/*
 * vmemsys.c — the address space's syscalls (mmap, munmap, mprotect,
 * madvise, brk) over vmem.c's bookkeeping.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

void vmemsys_init(const struct kiln_boot_info *bi)
{
    uint64_t img = bi->image_start < KILN_USER_BASE ? KILN_USER_BASE : bi->image_start;
    uint64_t top = bi->stack_top > bi->mem_size ? bi->mem_size : bi->stack_top;
    if (bi->image_end < img || bi->stack_low > top || bi->stack_low < bi->image_end)
        kpanic("boot info: inconsistent memory layout");
    vmem_init(&kiln_vm, img, bi->image_end, bi->stack_low, top);
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

int vmem_syscall(uint64_t nr, const uint64_t *a, int64_t *ret)
{
    switch (nr) {
    case 9: *ret = sys_mmap(a[0], a[1], a[2], a[3], a[4]); return 1;
    case 10: *ret = vmem_mprotect(&kiln_vm, a[0], a[1], (uint32_t)a[2]); return 1;
    case 11: *ret = vmem_munmap(&kiln_vm, a[0], a[1]); return 1;
    case 12: *ret = (int64_t)vmem_brk(&kiln_vm, a[0]); return 1;
    case 28:                                                /* madvise */
        if (a[0] & (PAGE_SIZE - 1))
            *ret = -EINVAL;
        else
            *ret = a[2] == 4 ? vmem_dontneed(&kiln_vm, a[0], a[1]) : 0;
        return 1;
    }
    return 0;
}

int vmem_fault(uint64_t addr, uint64_t err)
{
    (void)addr;
    (void)err;
    return 0; /* everything is mapped up front: any #PF is the program's */
}

int64_t vmem_phys(uint64_t addr, uint64_t len, uint64_t *gpa)
{
    if (!vmem_valid(&kiln_vm, addr, len ? len : 1))
        return -EFAULT;
    *gpa = addr; /* identity mapping */
    return (int64_t)len;
}

void *kalloc_frame(void)
{
    /* Interim: 4 MiB of the identity-mapped area, aligned to 2 MiB. The
     * kernel's frames are never unmapped, so the region stays PROT_NONE
     * to the function (vmem_valid refuses its pointers). */
    int64_t p = vmem_mmap(&kiln_vm, 0, 4ULL << 20, 0, KMAP_PRIVATE | KMAP_ANONYMOUS);
    if (p < 0)
        return 0;
    uint64_t a = ((uint64_t)p + (2ULL << 20) - 1) & ~((2ULL << 20) - 1);
    memset(UPTR(a), 0, 2ULL << 20);
    return UPTR(a);
}

uint64_t vmem_used_bytes(void) { return kiln_bi->mem_size; }
uint64_t vmem_limit_bytes(void) { return kiln_bi->mem_size; }
