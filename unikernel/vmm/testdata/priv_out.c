#include "guest.h"
/* One instruction ring 3 may not run (or a trap): the kernel must turn it
 * into the signal Linux would send. */
int main(int argc, char **argv)
{
    puts1("before\n");
    __asm__ volatile("outb %%al, $0x80" ::: "memory");
    puts1("ABORT: survived\n");
    return 1;
}
