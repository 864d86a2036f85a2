/*
 * fd-storm — a guest that opens descriptors until it is refused: pipes,
 * eventfds and epoll instances in turn, then dup(2) of one of them, each
 * until the kernel says no. In a Kiln VM every one of them lives in guest
 * memory (the guest kernel's tables: 256 fds, 128 pipes, 64 eventfds, 16
 * epolls), so the storm costs the host nothing; what matters is that the
 * guest is refused cleanly (EMFILE or ENFILE, never a crash), and that
 * closing them gives the slots back. Prints
 *   SUCCESS fds=N pipes=P eventfds=E epolls=X dups=D refused=NAME
 * Natively the counts follow RLIMIT_NOFILE (set here to 256 as well).
 */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>
#include "guest.h"

#define MAXFD 4096

static int fds[MAXFD];
static int nfds;

static const char *errname(int e)
{
    return e == EMFILE ? "EMFILE" : e == ENFILE ? "ENFILE" : e == ENOMEM ? "ENOMEM" : strerror(e);
}

int main(void)
{
    struct rlimit rl = {256, 256};
    setrlimit(RLIMIT_NOFILE, &rl); /* natively; the VM's table is 256 anyway */
    long pipes = 0, evs = 0, eps = 0, dups = 0;
    int last = 0;
    int open_p = 1, open_e = 1, open_x = 1;
    while ((open_p || open_e || open_x) && nfds < MAXFD - 2) {
        if (open_p) {
            int p[2];
            if (pipe(p) == 0) {
                fds[nfds++] = p[0];
                fds[nfds++] = p[1];
                pipes++;
            } else {
                open_p = 0;
                last = errno;
            }
        }
        if (open_e) {
            int e = eventfd(0, 0);
            if (e >= 0) {
                fds[nfds++] = e;
                evs++;
            } else {
                open_e = 0;
                last = errno;
            }
        }
        if (open_x) {
            int x = epoll_create1(0);
            if (x >= 0) {
                fds[nfds++] = x;
                eps++;
            } else {
                open_x = 0;
                last = errno;
            }
        }
    }
    /* Whatever kind is left: dup until the table is full. */
    EXPECT(nfds > 0);
    while (nfds < MAXFD) {
        int d = dup(fds[0]);
        if (d < 0) {
            last = errno;
            break;
        }
        fds[nfds++] = d;
        dups++;
    }
    if (last != EMFILE && last != ENFILE)
        ABORT("refused with %s, want EMFILE or ENFILE", errname(last));
    /* Every one of them is real: a byte through the first pipe. */
    char c = 0;
    EXPECT(write(fds[1], "k", 1) == 1 && read(fds[0], &c, 1) == 1 && c == 'k');
    for (int i = 0; i < nfds; i++)
        EXPECT(close(fds[i]) == 0);
    /* Closed, the slots come back. */
    int p[2];
    EXPECT(pipe(p) == 0 && eventfd(0, 0) >= 0 && epoll_create1(0) >= 0);
    printf("SUCCESS fds=%d pipes=%ld eventfds=%ld epolls=%ld dups=%ld refused=%s\n",
           nfds, pipes, evs, eps, dups, errname(last));
    return 0;
}
