/*
 * fd-dup — the fd table itself, checked natively and in a Kiln VM: lowest
 * free fd first, dup/dup2/dup3/F_DUPFD/F_DUPFD_CLOEXEC, close-on-exec
 * flags per fd and status flags shared by duplicates, dup2 onto stdout
 * then writing (the line must reach the real stdout), closing fd 0 and
 * getting it back from pipe(). Prints "dup: ..." lines fd_test.go
 * compares.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "guest.h"

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0); /* writes below must stay in order */
    int p[2];
    EXPECT(pipe(p) == 0 && p[0] == 3 && p[1] == 4);
    EXPECT(dup(p[0]) == 5);
    EXPECT(close(3) == 0);
    EXPECT(dup(p[1]) == 3); /* lowest free */
    EXPECT(fcntl(4, F_DUPFD, 40) == 40);
    EXPECT(fcntl(4, F_DUPFD_CLOEXEC, 40) == 41);
    EXPECT(fcntl(40, F_GETFD) == 0 && fcntl(41, F_GETFD) == FD_CLOEXEC);
    EXPECT(fcntl(41, F_SETFD, 0) == 0 && fcntl(41, F_GETFD) == 0);
    EXPECT(ioctl(41, FIOCLEX) == 0 && fcntl(41, F_GETFD) == FD_CLOEXEC);
    EXPECT(ioctl(41, FIONCLEX) == 0 && fcntl(41, F_GETFD) == 0);
    /* Status flags live in the open file, shared by every duplicate. */
    EXPECT(fcntl(4, F_SETFL, O_NONBLOCK) == 0);
    EXPECT(fcntl(40, F_GETFL) == (O_WRONLY | O_NONBLOCK));
    EXPECT(fcntl(3, F_GETFL) == (O_WRONLY | O_NONBLOCK));
    EXPECT(fcntl(5, F_GETFL) == O_RDONLY);
    EXPECT(fcntl(4, F_SETFL, O_APPEND) == 0 && fcntl(4, F_GETFL) == (O_WRONLY | O_APPEND));
    /* dup2 and dup3. */
    EXPECT(dup2(5, 20) == 20 && fcntl(20, F_GETFD) == 0);
    EXPECT(dup3(5, 21, O_CLOEXEC) == 21 && fcntl(21, F_GETFD) == FD_CLOEXEC);
    EXPECT(dup2(21, 21) == 21);
    EXPECT(syscall(SYS_dup3, 21, 21, 0) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_dup3, 5, 22, 1) == -1 && errno == EINVAL);
    EXPECT(dup2(99, 23) == -1 && errno == EBADF);
    EXPECT(dup2(99, 99) == -1 && errno == EBADF);
    EXPECT(dup2(5, -1) == -1 && errno == EBADF);
    EXPECT(dup(99) == -1 && errno == EBADF);
    EXPECT(fcntl(99, F_GETFD) == -1 && errno == EBADF);
    EXPECT(fcntl(5, F_DUPFD, -1) == -1 && errno == EINVAL);
    EXPECT(fcntl(5, 9999) == -1 && errno == EINVAL);
    /* dup2 over an open fd closes it silently: 20 now reads the pipe. */
    EXPECT(write(4, "q", 1) == 1);
    char c = 0;
    EXPECT(dup2(5, 20) == 20 && read(20, &c, 1) == 1 && c == 'q');
    /* The pipe stays open until its last write fd closes. */
    int wfds[] = {3, 4, 40, 41};
    for (int i = 0; i < 4; i++)
        EXPECT(close(wfds[i]) == 0);
    EXPECT(read(5, &c, 1) == 0);
    EXPECT(close(5) == 0 && close(20) == 0 && close(21) == 0);
    printf("dup: table ok\n");

    /* dup2 onto stdout, write, put stdout back. */
    int saved = dup(1);
    EXPECT(saved >= 3);
    EXPECT(pipe(p) == 0);
    EXPECT(dup2(p[1], 1) == 1);
    EXPECT(write(1, "into the pipe", 13) == 13);
    struct iovec v[2] = {{"+", 1}, {"v", 1}};
    EXPECT(writev(1, v, 2) == 2);
    EXPECT(dup2(saved, 1) == 1 && close(saved) == 0);
    char buf[32] = {0};
    EXPECT(read(p[0], buf, sizeof(buf)) == 15 && strcmp(buf, "into the pipe+v") == 0);
    /* And the other way: a duplicate of stdout writes to stdout. */
    int o = dup(1);
    EXPECT(write(o, "dup: via a dup of stdout\n", 25) == 25);
    EXPECT(fcntl(o, F_GETFL) == fcntl(1, F_GETFL));
    close(o);
    close(p[0]);
    close(p[1]);

    /* Close fd 0: the next pipe gets it. */
    EXPECT(close(0) == 0);
    EXPECT(read(0, buf, 1) == -1 && errno == EBADF);
    EXPECT(pipe(p) == 0 && p[0] == 0);
    EXPECT(write(p[1], "z", 1) == 1 && read(0, buf, 1) == 1 && buf[0] == 'z');
    printf("dup: stdout and stdin redirection ok\n");
    printf("SUCCESS\n");
    return 0;
}
