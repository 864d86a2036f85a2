#include "guest.h"
int main(int argc, char **argv)
{
    puts1("before\n");
    volatile int zero = 0;
    volatile int x = 7 / zero;
    (void)x;
    puts1("ABORT: survived\n");
    return 1;
}
