/* enosys — unknown syscalls answer -ENOSYS and the program carries on. */
#include <unistd.h>
#include "guest.h"

int main(void)
{
    errno = 0;
    EXPECT(syscall(1000) == -1 && errno == ENOSYS);
    errno = 0;
    EXPECT(syscall(335, 1, 2, 3) == -1 && errno == ENOSYS);
    errno = 0;
    EXPECT(syscall(1000) == -1 && errno == ENOSYS);
    printf("SUCCESS\n");
    return 0;
}
