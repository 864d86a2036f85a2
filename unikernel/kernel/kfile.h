/*
 * kfile.h — what the fd-table files (fd.c, pipe.c, eventfd.c, epoll.c)
 * share and nobody else needs: open file descriptions, readiness, and
 * copying through a user iovec. The rest of the kernel sees only ksys.h's
 * fd_init/fd_valid/fd_syscall.
 *
 * As in Linux, an fd points at an open file description (struct kfile)
 * that dup shares, so O_NONBLOCK set through one fd shows through its
 * duplicates, and a pipe end is only closed when its last fd goes.
 */
#ifndef KILN_KFILE_H
#define KILN_KFILE_H

#include "kernel.h"
#include "libos.h"
#include "ksys.h"

#ifndef ENOSPC
#define ENOSPC 28
#endif
#ifndef ENFILE
#define ENFILE 23
#endif

#define FD_MAX 256          /* size of the fd table */
#define FD_RLIMIT 1024      /* RLIMIT_NOFILE as prlimit reports it */
#define PIPE_BUF_BYTES 4096 /* PIPE_BUF: writes this small are atomic */
#define PIPE_CAP (64 * 1024)

/* Linux open flags (x86-64 values) that these files honour. */
#define KO_ACCMODE 3
#define KO_RDONLY 0
#define KO_WRONLY 1
#define KO_RDWR 2
#define KO_APPEND 0x400
#define KO_NONBLOCK 0x800
#define KO_DIRECT 0x4000
#define KO_CLOEXEC 0x80000

/* poll(2) and epoll(7) share these numbers. */
#define KPOLLIN 0x001
#define KPOLLPRI 0x002
#define KPOLLOUT 0x004
#define KPOLLERR 0x008
#define KPOLLHUP 0x010
#define KPOLLNVAL 0x020
#define KPOLLRDNORM 0x040
#define KPOLLRDBAND 0x080
#define KPOLLWRNORM 0x100
#define KPOLLWRBAND 0x200
#define KPOLLMSG 0x400
#define KPOLLRDHUP 0x2000
/* The events that count as "became readable" / "became writable" when
 * deciding whether an edge-triggered epoll item saw a new edge. */
#define KPOLL_INSIDE (KPOLLIN | KPOLLPRI | KPOLLRDNORM | KPOLLRDBAND | KPOLLRDHUP | KPOLLMSG)
#define KPOLL_OUTSIDE (KPOLLOUT | KPOLLWRNORM | KPOLLWRBAND)

enum kfile_kind {
    KF_FREE = 0,
    KF_STDIO,   /* one of the VM's fds 0, 1, 2 (stdio.c) */
    KF_PIPE_R,
    KF_PIPE_W,
    KF_EVENTFD,
    KF_EPOLL,
};

/*
 * What epoll needs from a pollable object to tell edges apart: counters
 * bumped by fd_notify on every event that makes the object more readable
 * (gen_in) or more writable (gen_out) — Linux's wakeup callbacks, counted
 * instead of queued — and how many epoll items watch it, so an object
 * nobody watches pays nothing for a wakeup.
 */
struct kpollable {
    uint32_t gen_in, gen_out;
    int32_t watchers;
};

struct kfile {
    int32_t refs;    /* fds pointing here + syscalls in progress on it */
    uint16_t kind;   /* enum kfile_kind */
    uint16_t stdio;  /* KF_STDIO: 0, 1 or 2 */
    uint32_t flags;  /* access mode | KO_APPEND | KO_NONBLOCK */
    void *obj;       /* struct kpipe, keventfd or kepoll */
};

struct kiovec {
    uint64_t base, len;
};

/* A cursor over a user iovec array whose every buffer the syscall already
 * checked with UVALID. */
struct kiov {
    const struct kiovec *v;
    uint64_t cnt, i, off;
    int uvec; /* v itself is in user memory (readv/writev), not the kernel's */
};

/* ---- fd.c ---- */

/* A new open file description with one reference, or NULL if all are in
 * use. */
struct kfile *kfile_new(int kind, uint32_t flags, void *obj);
/* Drop a reference; the last one releases the object behind it. */
void kfile_put(struct kfile *f);
/* Install f at the lowest free fd (taking over the caller's reference):
 * the fd, or -EMFILE. */
int64_t fd_install(struct kfile *f, int cloexec);
/* close(2): 0 or -EBADF. */
int64_t fd_close(int64_t fd);
/* The file at fd with a reference taken for the caller, or NULL. */
struct kfile *fd_get(int64_t fd);
/* What f is ready for now (KPOLL* bits, as poll(2) would report them
 * before masking with the requested events). */
uint32_t kfile_poll(struct kfile *f);
/* The object behind f that epoll can watch, or NULL if f is not
 * pollable (stdio). */
struct kpollable *kfile_pollable(struct kfile *f);
/* Something happened on p (events: what it became ready for): record the
 * edge and wake the epoll and poll waiters that might care. */
void fd_notify(struct kpollable *p, uint32_t events);
/* Whether the current thread has an unblocked signal pending, so a
 * blocking call should give up with -EINTR. */
int fd_signal_pending(void);
/* Swap in the signal mask a p-variant call (ppoll, epoll_pwait) names at
 * uset (0 = none): 0 with *old set, or -EINVAL/-EFAULT. */
int64_t fd_sigmask_enter(uint64_t uset, uint64_t size, uint64_t *old);
void fd_sigmask_leave(uint64_t uset, uint64_t old);

void kiov_init(struct kiov *it, const struct kiovec *v, uint64_t cnt, int uvec);
/* Whether the buffers still lie in the function's memory: after a block,
 * another thread may have unmapped them, and the kernel must answer
 * -EFAULT rather than fault itself. */
int kiov_valid(const struct kiov *it);
/* Copy n bytes from the user buffers at the cursor into dst (kiov_in) or
 * from src out to them (kiov_out); returns how many fit. */
uint64_t kiov_in(struct kiov *it, void *dst, uint64_t n);
uint64_t kiov_out(struct kiov *it, const void *src, uint64_t n);

/* ---- pipe.c ---- */

int64_t pipe_create(uint64_t ufds, uint64_t flags);
int64_t pipe_read(struct kfile *f, struct kiov *it, uint64_t n);
int64_t pipe_write(struct kfile *f, struct kiov *it, uint64_t n);
uint32_t pipe_poll(const struct kfile *f);
uint64_t pipe_unread(const struct kfile *f);
uint64_t pipe_ino(const struct kfile *f);
struct kpollable *pipe_pollable(const struct kfile *f);
void pipe_release(struct kfile *f);

/* ---- eventfd.c ---- */

int64_t eventfd_create(uint64_t initval, uint64_t flags);
int64_t eventfd_read(struct kfile *f, struct kiov *it, uint64_t n);
int64_t eventfd_write(struct kfile *f, struct kiov *it, uint64_t n);
uint32_t eventfd_poll(const struct kfile *f);
struct kpollable *eventfd_pollable(const struct kfile *f);
void eventfd_release(struct kfile *f);

/* ---- epoll.c ---- */

int64_t epoll_create(uint64_t flags);
int64_t epoll_ctl(uint64_t epfd, uint64_t op, uint64_t fd, uint64_t uevent);
/* deadline_tsc: 0 = wait forever, 1 = do not wait, else a TSC deadline. */
int64_t epoll_wait(uint64_t epfd, uint64_t uevents, uint64_t maxevents,
                   uint64_t deadline_tsc);
uint32_t epoll_poll(const struct kfile *f);
/* The watched file f is going away: drop every item that watches it. */
void epoll_forget_file(struct kfile *f);
/* Wake the epoll instances with an item on p interested in events. */
void epoll_wake_watchers(struct kpollable *p, uint32_t events);
void epoll_release(struct kfile *f);

#endif /* KILN_KFILE_H */
