/*
 * efault — bad pointers handed to the kernel come back as EFAULT, never as
 * a crash: NULL page, the kernel's own area, far past guest RAM. Natively
 * Linux agrees as long as stdin has bytes to copy (feed it some).
 */
#include <sys/utsname.h>
#include <unistd.h>
#include "guest.h"

int main(void)
{
    errno = 0;
    EXPECT(write(1, (void *)0x10, 4) == -1 && errno == EFAULT);
    errno = 0;
    EXPECT(read(0, (void *)0x100000, 4) == -1 && errno == EFAULT);
    errno = 0;
    EXPECT(read(0, (void *)0x500000000000ULL, 4) == -1 && errno == EFAULT);
    errno = 0;
    EXPECT(uname(NULL) == -1 && errno == EFAULT);
    /* A good pointer still works afterwards. */
    EXPECT(write(1, "ok\n", 3) == 3);
    printf("SUCCESS\n");
    return 0;
}
