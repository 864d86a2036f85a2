/*
 * fd-pipe — pipes as Linux gives them, checked the same way natively and
 * in a Kiln VM: round trip, EOF, EPIPE, O_NONBLOCK and EAGAIN, PIPE_BUF
 * atomicity, the 64 KiB capacity, FIONREAD, fstat, fcntl flags and the
 * errors of the calls a pipe refuses (lseek, pread, the wrong end). Prints
 * "pipe: ..." lines that fd_test.go compares with the native run.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "guest.h"

static char big[70000];

static void round_trip(void)
{
    int p[2];
    EXPECT(pipe(p) == 0);
    EXPECT(p[0] >= 3 && p[1] == p[0] + 1);
    EXPECT(write(p[1], "hello, pipe", 11) == 11);
    int n = -1;
    EXPECT(ioctl(p[0], FIONREAD, &n) == 0 && n == 11);
    char buf[64];
    EXPECT(read(p[0], buf, 5) == 5 && memcmp(buf, "hello", 5) == 0);
    EXPECT(read(p[0], buf, sizeof(buf)) == 6 && memcmp(buf, ", pipe", 6) == 0);
    /* writev gathers, readv scatters. */
    struct iovec w[3] = {{"ab", 2}, {"", 0}, {"cdef", 4}};
    EXPECT(writev(p[1], w, 3) == 6);
    char x[3], y[10];
    struct iovec r[2] = {{x, 3}, {y, 10}};
    EXPECT(readv(p[0], r, 2) == 6 && memcmp(x, "abc", 3) == 0 && memcmp(y, "def", 3) == 0);
    /* Zero-length I/O succeeds without blocking. */
    EXPECT(read(p[0], buf, 0) == 0);
    EXPECT(write(p[1], buf, 0) == 0);
    /* EOF once the last writer is gone, after the data. */
    EXPECT(write(p[1], "tail", 4) == 4);
    int w2 = dup(p[1]);
    EXPECT(w2 > p[1]);
    EXPECT(close(p[1]) == 0);
    EXPECT(write(w2, "!", 1) == 1); /* the dup keeps the write end open */
    EXPECT(close(w2) == 0);
    EXPECT(read(p[0], buf, sizeof(buf)) == 5 && memcmp(buf, "tail!", 5) == 0);
    EXPECT(read(p[0], buf, sizeof(buf)) == 0);
    EXPECT(read(p[0], buf, sizeof(buf)) == 0);
    EXPECT(close(p[0]) == 0);
    EXPECT(close(p[0]) == -1 && errno == EBADF);
    printf("pipe: round trip, EOF ok\n");
}

static void epipe(void)
{
    int p[2];
    EXPECT(pipe(p) == 0);
    EXPECT(close(p[0]) == 0);
    /* Natively SIGPIPE would end us; Kiln raises no SIGPIPE at all. */
    EXPECT(write(p[1], "x", 1) == -1 && errno == EPIPE);
    struct iovec v = {"yy", 2};
    EXPECT(writev(p[1], &v, 1) == -1 && errno == EPIPE);
    EXPECT(close(p[1]) == 0);
    printf("pipe: EPIPE ok\n");
}

static void nonblocking(void)
{
    int p[2];
    EXPECT(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    EXPECT(fcntl(p[0], F_GETFL) == (O_RDONLY | O_NONBLOCK));
    EXPECT(fcntl(p[1], F_GETFL) == (O_WRONLY | O_NONBLOCK));
    EXPECT(fcntl(p[0], F_GETFD) == FD_CLOEXEC && fcntl(p[1], F_GETFD) == FD_CLOEXEC);
    char buf[4096];
    EXPECT(read(p[0], buf, 1) == -1 && errno == EAGAIN);
    /* Fill it: exactly 64 KiB fit. */
    memset(buf, 'a', sizeof(buf));
    long total = 0;
    for (;;) {
        ssize_t n = write(p[1], buf, sizeof(buf));
        if (n < 0) {
            EXPECT(errno == EAGAIN);
            break;
        }
        EXPECT(n == (ssize_t)sizeof(buf));
        total += n;
        EXPECT(total <= 65536);
    }
    EXPECT(total == 65536);
    EXPECT(fcntl(p[1], F_GETPIPE_SZ) == 65536);
    int n = -1;
    EXPECT(ioctl(p[0], FIONREAD, &n) == 0 && n == 65536);
    /* A small write into a full pipe is refused whole (PIPE_BUF). */
    EXPECT(write(p[1], buf, 100) == -1 && errno == EAGAIN);
    /* Room for one PIPE_BUF write: it goes in whole. */
    EXPECT(read(p[0], big, 4096) == 4096);
    EXPECT(write(p[1], buf, 4096) == 4096);
    EXPECT(write(p[1], buf, 1) == -1 && errno == EAGAIN);
    /* Drain it and check the bytes came through in order. */
    total = 0;
    for (;;) {
        ssize_t k = read(p[0], big, sizeof(big));
        if (k < 0) {
            EXPECT(errno == EAGAIN);
            break;
        }
        for (ssize_t i = 0; i < k; i++)
            EXPECT(big[i] == 'a');
        total += k;
    }
    EXPECT(total == 65536);
    /* A write bigger than the pipe is partial when nonblocking. */
    memset(big, 'b', sizeof(big));
    EXPECT(write(p[1], big, sizeof(big)) == 65536);
    EXPECT(read(p[0], big, sizeof(big)) == 65536);
    /* F_SETFL clears O_NONBLOCK, FIONBIO sets it again. */
    EXPECT(fcntl(p[0], F_SETFL, 0) == 0 && fcntl(p[0], F_GETFL) == O_RDONLY);
    int on = 1;
    EXPECT(ioctl(p[0], FIONBIO, &on) == 0 && fcntl(p[0], F_GETFL) == (O_RDONLY | O_NONBLOCK));
    EXPECT(read(p[0], buf, 1) == -1 && errno == EAGAIN);
    /* Wrap-around: bytes written across the ring's end read back in order. */
    char seq[3000];
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < (int)sizeof(seq); i++)
            seq[i] = (char)(round * 7 + i);
        EXPECT(write(p[1], seq, sizeof(seq)) == (ssize_t)sizeof(seq));
        char got[3000];
        EXPECT(read(p[0], got, sizeof(got)) == (ssize_t)sizeof(got));
        EXPECT(memcmp(seq, got, sizeof(got)) == 0);
    }
    close(p[0]);
    close(p[1]);
    printf("pipe: nonblocking, capacity %ld, PIPE_BUF ok\n", total);
}

static void refusals(void)
{
    int p[2];
    EXPECT(pipe(p) == 0);
    char c;
    EXPECT(write(p[0], "x", 1) == -1 && errno == EBADF);
    EXPECT(read(p[1], &c, 1) == -1 && errno == EBADF);
    EXPECT(lseek(p[0], 0, SEEK_CUR) == -1 && errno == ESPIPE);
    EXPECT(pread(p[0], &c, 1, 0) == -1 && errno == ESPIPE);
    EXPECT(pwrite(p[1], "x", 1, 0) == -1 && errno == ESPIPE);
    EXPECT(pipe2(p, 0x1) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_pipe2, (void *)8, 0) == -1 && errno == EFAULT);
    /* A bad buffer is EFAULT and consumes nothing. */
    EXPECT(write(p[1], "f", 1) == 1);
    EXPECT(read(p[0], (void *)8, 1) == -1 && errno == EFAULT);
    EXPECT(read(p[0], &c, 1) == 1 && c == 'f');
    EXPECT(fcntl(p[0], F_SETPIPE_SZ, 4096) >= 4096);
    struct stat a, b;
    EXPECT(fstat(p[0], &a) == 0 && fstat(p[1], &b) == 0);
    EXPECT(S_ISFIFO(a.st_mode) && S_ISFIFO(b.st_mode));
    EXPECT((a.st_mode & 0777) == 0600);
    EXPECT(a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == 0);
    int q[2];
    EXPECT(pipe(q) == 0);
    struct stat s;
    EXPECT(fstat(q[0], &s) == 0 && s.st_ino != a.st_ino);
    EXPECT(ioctl(p[0], TIOCGWINSZ, &s) == -1 && errno == ENOTTY);
    close(q[0]);
    close(q[1]);
    close(p[0]);
    close(p[1]);
    printf("pipe: refusals ok\n");
}

/* Every pipe freed: a program may make and drop pipes forever. */
static void churn(void)
{
    for (int i = 0; i < 1000; i++) {
        int p[2];
        EXPECT(pipe(p) == 0);
        EXPECT(p[0] == 3 && p[1] == 4);
        EXPECT(write(p[1], "z", 1) == 1);
        close(p[0]);
        close(p[1]);
    }
    printf("pipe: churn ok\n");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    round_trip();
    epipe();
    nonblocking();
    refusals();
    churn();
    printf("SUCCESS\n");
    return 0;
}
