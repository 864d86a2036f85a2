#include "guest.h"
int main(int argc, char **argv)
{
    puts1("before\n");
    volatile int *p = (volatile int *)(uintptr_t)((unsigned)argc >> 8); /* 0, opaque to gcc */
    *p = 1;
    puts1("ABORT: survived\n");
    return 1;
}
