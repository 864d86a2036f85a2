/* cat — stdin to stdout until EOF: the shape of an `exec` function. */
#include <unistd.h>
#include "guest.h"

static char buf[65536];

int main(void)
{
    for (;;) {
        ssize_t n = read(0, buf, sizeof(buf));
        if (n == 0)
            return 0;
        if (n < 0)
            ABORT("read: %s", strerror(errno));
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, (size_t)(n - off));
            if (w <= 0)
                ABORT("write: %s", strerror(errno));
            off += w;
        }
    }
}
