#include "guest.h"
/* Rings the HC_IO doorbell with an argument struct far outside guest RAM. */
int main(int argc, char **argv)
{
    doorbell(KILN_HC_IO, 0x7fff00000000ULL);
    puts1("ABORT: survived\n");
    return 1;
}
