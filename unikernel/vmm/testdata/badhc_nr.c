#include "guest.h"
/* Rings a doorbell no hypercall owns. */
static struct kiln_hc_io io;
int main(int argc, char **argv)
{
    doorbell(KILN_HC_MAX + 5, (uint64_t)(uintptr_t)&io);
    puts1("ABORT: survived\n");
    return 1;
}
