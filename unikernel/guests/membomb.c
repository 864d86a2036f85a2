/*
 * membomb — allocate and touch 1 MiB chunks until malloc says no. Inside a
 * VM the kernel must answer -ENOMEM, never crash; natively RLIMIT_AS (set
 * here to 512 MiB) plays the part of the VM's memory size.
 */
#include <sys/resource.h>
#include "guest.h"

int main(void)
{
    struct rlimit rl = {512 << 20, 512 << 20};
    EXPECT(setrlimit(RLIMIT_AS, &rl) == 0);
    long n = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p)
            break;
        for (long i = 0; i < (1 << 20); i += 4096)
            p[i] = (char)i;
        n++;
    }
    /* Still alive and able to allocate small things after running out. */
    printf("SUCCESS: %ld chunks\n", n);
    return 0;
}
