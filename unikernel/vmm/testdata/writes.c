#include "guest.h"
/* argv[1] write(2) syscalls of one byte each: what the kernel turns into
 * hypercalls (MMIO or port I/O) is what BenchmarkHypercall* measures. The
 * guest times the loop itself with the TSC and prints "TICKS KHZ\n" (the
 * TSC rate comes from the boot-info page, readable like all memory). */
static char *utoa(char *end, unsigned long v)
{
    *--end = 0;
    do
        *--end = (char)('0' + v % 10);
    while (v /= 10);
    return end;
}

static inline uint64_t tsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? atoul(argv[1]) : 0;
    uint64_t t0 = tsc();
    for (unsigned long i = 0; i < n; i++)
        sys_write(2, ".", 1);
    uint64_t t1 = tsc();
    char a[32], b[32];
    const struct kiln_boot_info *bi = (const struct kiln_boot_info *)(uintptr_t)KILN_BOOTINFO_GPA;
    puts1(utoa(a + sizeof a, t1 - t0));
    puts1(" ");
    puts1(utoa(b + sizeof b, bi->tsc_khz));
    puts1("\n");
    return 0;
}
