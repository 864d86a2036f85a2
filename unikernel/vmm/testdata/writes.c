#include "guest.h"
/* argv[1] write(2) syscalls of one byte each: what the kernel turns into
 * hypercalls (MMIO or port I/O) is what BenchmarkHypercall* measures. */
int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? atoul(argv[1]) : 0;
    for (unsigned long i = 0; i < n; i++)
        sys_write(2, ".", 1);
    return 0;
}
