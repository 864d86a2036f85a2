#include "guest.h"
int main(int argc, char **argv)
{
    for (;;)
        __asm__ volatile("" ::: "memory");
}
