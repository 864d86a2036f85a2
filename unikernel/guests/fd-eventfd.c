/*
 * fd-eventfd — eventfd(2)'s counter, checked the same way natively and in
 * a Kiln VM: adds, whole-count reads, EFD_SEMAPHORE, EFD_NONBLOCK and
 * EAGAIN at zero and at the ceiling, the EINVAL cases, poll readiness and
 * fstat/fcntl. Prints "eventfd: ..." lines fd_test.go compares.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

static uint64_t rd(int fd)
{
    uint64_t v = 0;
    EXPECT(read(fd, &v, 8) == 8);
    return v;
}

static void wr(int fd, uint64_t v)
{
    EXPECT(write(fd, &v, 8) == 8);
}

static short revents(int fd, short events)
{
    struct pollfd p = {fd, events, 0};
    EXPECT(poll(&p, 1, 0) >= 0);
    return p.revents;
}

int main(void)
{
    int fd = eventfd(3, EFD_NONBLOCK | EFD_CLOEXEC);
    EXPECT(fd >= 3);
    EXPECT(fcntl(fd, F_GETFL) == (O_RDWR | O_NONBLOCK));
    EXPECT(fcntl(fd, F_GETFD) == FD_CLOEXEC);
    EXPECT(revents(fd, POLLIN | POLLOUT) == (POLLIN | POLLOUT));
    wr(fd, 4);
    wr(fd, 0);
    EXPECT(rd(fd) == 7);
    uint64_t v;
    EXPECT(read(fd, &v, 8) == -1 && errno == EAGAIN);
    EXPECT(revents(fd, POLLIN | POLLOUT) == POLLOUT);
    /* Short buffers and the reserved value are EINVAL. */
    EXPECT(read(fd, &v, 7) == -1 && errno == EINVAL);
    EXPECT(write(fd, &v, 4) == -1 && errno == EINVAL);
    v = UINT64_MAX;
    EXPECT(write(fd, &v, 8) == -1 && errno == EINVAL);
    /* The ceiling: the count stops at 0xfffffffffffffffe. */
    wr(fd, 0xfffffffffffffffeULL);
    v = 1;
    EXPECT(write(fd, &v, 8) == -1 && errno == EAGAIN);
    EXPECT(revents(fd, POLLIN | POLLOUT) == POLLIN);
    EXPECT(rd(fd) == 0xfffffffffffffffeULL);
    printf("eventfd: counter ok\n");

    /* Semaphore mode: each read takes 1. */
    int s = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
    EXPECT(s > fd);
    EXPECT(rd(s) == 1 && rd(s) == 1);
    EXPECT(read(s, &v, 8) == -1 && errno == EAGAIN);
    wr(s, 3);
    EXPECT(rd(s) == 1 && rd(s) == 1 && rd(s) == 1);
    EXPECT(read(s, &v, 8) == -1 && errno == EAGAIN);
    printf("eventfd: semaphore ok\n");

    /* Blocking mode with a count: no wait. */
    int b = eventfd(5, 0);
    EXPECT(fcntl(b, F_GETFL) == O_RDWR && fcntl(b, F_GETFD) == 0);
    EXPECT(rd(b) == 5);
    EXPECT(fcntl(b, F_SETFL, O_NONBLOCK) == 0);
    EXPECT(read(b, &v, 8) == -1 && errno == EAGAIN);
    EXPECT(syscall(SYS_eventfd2, 0, 0x4) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_eventfd, 1) >= 0);

    struct stat st;
    EXPECT(fstat(fd, &st) == 0);
    printf("eventfd: fstat type %o perm %o\n", st.st_mode & S_IFMT, st.st_mode & 0777);
    printf("SUCCESS\n");
    return 0;
}
