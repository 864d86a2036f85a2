/*
 * fd.c — the fd table and the syscalls every kind of file shares: read,
 * write and their vector forms, close, the dup family, fcntl, fstat,
 * ioctl, lseek and poll. What a read or a write means is the kind's own
 * business: fds 0–2 are stdio.c's hypercall-backed streams, pipes live in
 * pipe.c, eventfds in eventfd.c, epoll instances in epoll.c.
 *
 * Nothing runs concurrently with this code except across an explicit
 * block (waitq_wait), so the table needs no lock; a syscall that may
 * block holds a reference on its file so a close from another thread
 * cannot free it underneath.
 */
#include "kfile.h"

#define OK(p, n) UVALID(p, n)

/* Enough open file descriptions for a full table plus files a closed fd
 * left behind while another thread still blocks on them. */
#define FILE_MAX (FD_MAX + KTHREAD_MAX)

static struct {
    struct kfile files[FILE_MAX];
    struct {
        struct kfile *f;
        uint8_t cloexec;
    } fd[FD_MAX];
    /* Threads in poll/ppoll: woken on any readiness change (they
     * re-check their own fds). */
    struct kwaitq poll_wq;
} F;

/* ---- open file descriptions ---- */

struct kfile *kfile_new(int kind, uint32_t flags, void *obj)
{
    for (int i = 0; i < FILE_MAX; i++) {
        struct kfile *f = &F.files[i];
        if (f->kind == KF_FREE) {
            f->refs = 1;
            f->kind = (uint16_t)kind;
            f->stdio = 0;
            f->flags = flags;
            f->obj = obj;
            return f;
        }
    }
    return 0;
}

void kfile_put(struct kfile *f)
{
    if (--f->refs > 0)
        return;
    /* As in Linux, an epoll item lives as long as the file it watches,
     * not the fd it was added through. */
    epoll_forget_file(f);
    switch (f->kind) {
    case KF_PIPE_R:
    case KF_PIPE_W:
        pipe_release(f);
        break;
    case KF_EVENTFD:
        eventfd_release(f);
        break;
    case KF_EPOLL:
        epoll_release(f);
        break;
    }
    f->kind = KF_FREE;
    f->obj = 0;
}

struct kpollable *kfile_pollable(struct kfile *f)
{
    switch (f->kind) {
    case KF_PIPE_R:
    case KF_PIPE_W:
        return pipe_pollable(f);
    case KF_EVENTFD:
        return eventfd_pollable(f);
    }
    return 0;
}

uint32_t kfile_poll(struct kfile *f)
{
    switch (f->kind) {
    case KF_STDIO:
        /* Whether input waits in the VMM is unknown without an exit; a
         * read of fd 0 blocks there until some arrives, so it counts as
         * readable. Output is buffered, so always writable. */
        return f->stdio == 0 ? KPOLLIN | KPOLLRDNORM : KPOLLOUT | KPOLLWRNORM;
    case KF_PIPE_R:
    case KF_PIPE_W:
        return pipe_poll(f);
    case KF_EVENTFD:
        return eventfd_poll(f);
    case KF_EPOLL:
        return epoll_poll(f);
    }
    return 0;
}

void fd_notify(struct kpollable *p, uint32_t events)
{
    if (events & (KPOLL_INSIDE | KPOLLERR | KPOLLHUP))
        p->gen_in++;
    if (events & (KPOLL_OUTSIDE | KPOLLERR | KPOLLHUP))
        p->gen_out++;
    if (p->watchers > 0)
        epoll_wake_watchers(p, events);
    waitq_wake(&F.poll_wq, KTHREAD_MAX);
}

int fd_signal_pending(void)
{
    struct kthread *t = sched_current();
    return (t->sigpending & ~t->sigmask) != 0;
}

int64_t fd_sigmask_enter(uint64_t uset, uint64_t size, uint64_t *old)
{
    struct kthread *t = sched_current();
    *old = t->sigmask;
    if (!uset)
        return 0;
    if (size != 8)
        return -EINVAL;
    if (!OK(uset, 8))
        return -EFAULT;
    /* SIGKILL and SIGSTOP cannot be blocked. */
    t->sigmask = *(const uint64_t *)UPTR(uset) & ~((1ULL << 8) | (1ULL << 18));
    return 0;
}

void fd_sigmask_leave(uint64_t uset, uint64_t old)
{
    if (uset)
        sched_current()->sigmask = old;
}

/* ---- the table ---- */

void fd_init(void)
{
    static const uint32_t mode[3] = {KO_RDONLY, KO_WRONLY, KO_WRONLY};
    for (int i = 0; i < 3; i++) {
        struct kfile *f = kfile_new(KF_STDIO, mode[i], 0);
        f->stdio = (uint16_t)i;
        F.fd[i].f = f;
    }
}

static struct kfile *fd_lookup(int64_t fd)
{
    if (fd < 0 || fd >= FD_MAX)
        return 0;
    return F.fd[fd].f;
}

int fd_valid(int64_t fd)
{
    return fd_lookup(fd) != 0;
}

struct kfile *fd_get(int64_t fd)
{
    struct kfile *f = fd_lookup(fd);
    if (f)
        f->refs++;
    return f;
}

/* The lowest free fd at or above min, or -EMFILE. */
static int64_t fd_lowest(int64_t min)
{
    for (int64_t i = min; i < FD_MAX; i++)
        if (!F.fd[i].f)
            return i;
    return -EMFILE;
}

/* Point fd at f (taking over a reference), closing what was there. */
static void fd_set(int64_t fd, struct kfile *f, int cloexec)
{
    struct kfile *old = F.fd[fd].f;
    F.fd[fd].f = f;
    F.fd[fd].cloexec = cloexec != 0;
    if (old)
        kfile_put(old);
}

int64_t fd_install(struct kfile *f, int cloexec)
{
    int64_t fd = fd_lowest(0);
    if (fd >= 0)
        fd_set(fd, f, cloexec);
    return fd;
}

int64_t fd_close(int64_t fd)
{
    struct kfile *f = fd_lookup(fd);
    if (!f)
        return -EBADF;
    F.fd[fd].f = 0;
    F.fd[fd].cloexec = 0;
    kfile_put(f);
    return 0;
}

static int64_t dup_at(struct kfile *f, int64_t min, int cloexec)
{
    int64_t fd = fd_lowest(min);
    if (fd < 0)
        return fd;
    f->refs++;
    fd_set(fd, f, cloexec);
    return fd;
}

static int64_t sys_dup3(int64_t oldfd, int64_t newfd, uint64_t flags, int is_dup2)
{
    struct kfile *f = fd_lookup(oldfd);
    if (is_dup2) {
        if (!f)
            return -EBADF;
        if (newfd < 0 || newfd >= FD_RLIMIT)
            return -EBADF;
        if (oldfd == newfd)
            return newfd;
    } else {
        if (flags & ~(uint64_t)KO_CLOEXEC)
            return -EINVAL;
        if (oldfd == newfd)
            return -EINVAL;
        if (newfd < 0 || newfd >= FD_RLIMIT)
            return -EBADF;
        if (!f)
            return -EBADF;
    }
    /* Under RLIMIT_NOFILE but beyond the table: Linux would grow it. */
    if (newfd >= FD_MAX)
        return -EMFILE;
    f->refs++;
    fd_set(newfd, f, (flags & KO_CLOEXEC) != 0);
    return newfd;
}

/* ---- I/O ---- */

void kiov_init(struct kiov *it, const struct kiovec *v, uint64_t cnt, int uvec)
{
    it->uvec = uvec;
    it->v = v;
    it->cnt = cnt;
    it->i = 0;
    it->off = 0;
}

static uint64_t kiov_copy(struct kiov *it, void *k, uint64_t n, int to_user)
{
    uint64_t done = 0;
    while (done < n && it->i < it->cnt) {
        const struct kiovec *v = &it->v[it->i];
        uint64_t room = v->len - it->off;
        if (room == 0) {
            it->i++;
            it->off = 0;
            continue;
        }
        uint64_t c = n - done < room ? n - done : room;
        char *u = (char *)UPTR(v->base) + it->off;
        if (to_user)
            memcpy(u, (const char *)k + done, c);
        else
            memcpy((char *)k + done, u, c);
        done += c;
        it->off += c;
    }
    return done;
}

int kiov_valid(const struct kiov *it)
{
    if (it->uvec && !OK(it->v, it->cnt * sizeof(struct kiovec)))
        return 0;
    for (uint64_t i = it->i; i < it->cnt; i++)
        if (!OK(it->v[i].base, it->v[i].len))
            return 0;
    return 1;
}

uint64_t kiov_in(struct kiov *it, void *dst, uint64_t n)
{
    return kiov_copy(it, dst, n, 0);
}

uint64_t kiov_out(struct kiov *it, const void *src, uint64_t n)
{
    return kiov_copy(it, (void *)src, n, 1);
}

/* Validate a user iovec array: 0 and the total length, or -errno. */
static int64_t check_iov(uint64_t iov, uint64_t cnt, uint64_t *total)
{
    if (cnt > 1024) /* UIO_MAXIOV */
        return -EINVAL;
    if (!OK(iov, cnt * sizeof(struct kiovec)))
        return -EFAULT;
    const struct kiovec *v = UPTR(iov);
    uint64_t t = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        if (v[i].len > 0x7fffffffffffffffULL)
            return -EINVAL;
        if (!OK(v[i].base, v[i].len))
            return -EFAULT;
        t += v[i].len;
        if (t > 0x7ffff000ULL)
            return -EINVAL;
    }
    *total = t;
    return 0;
}

static int readable(const struct kfile *f)
{
    return (f->flags & KO_ACCMODE) != KO_WRONLY;
}

static int writable(const struct kfile *f)
{
    return (f->flags & KO_ACCMODE) != KO_RDONLY;
}

static int64_t file_read(struct kfile *f, struct kiov *it, uint64_t n)
{
    switch (f->kind) {
    case KF_STDIO:
        /* One hypercall into the first non-empty buffer: a short read, as
         * a pipe gives, and still zero copies. */
        for (uint64_t i = 0; i < it->cnt; i++)
            if (it->v[i].len)
                return stdio_read(UPTR(it->v[i].base), it->v[i].len);
        return 0;
    case KF_PIPE_R:
        return pipe_read(f, it, n);
    case KF_EVENTFD:
        return eventfd_read(f, it, n);
    }
    return -EINVAL;
}

static int64_t file_write(struct kfile *f, struct kiov *it, uint64_t n)
{
    switch (f->kind) {
    case KF_STDIO:
        for (uint64_t i = 0; i < it->cnt; i++)
            stdio_write(f->stdio, UPTR(it->v[i].base), it->v[i].len);
        return (int64_t)n;
    case KF_PIPE_W:
        return pipe_write(f, it, n);
    case KF_EVENTFD:
        return eventfd_write(f, it, n);
    }
    return -EINVAL;
}

/* read/write/readv/writev: one path, a single buffer being a one-element
 * iovec. */
static int64_t do_rw(int64_t fd, const struct kiovec *v, uint64_t cnt,
                     int uvec, uint64_t n, int write)
{
    struct kfile *f = fd_get(fd);
    if (!f)
        return -EBADF;
    int64_t r;
    if (write ? !writable(f) : !readable(f)) {
        r = -EBADF;
    } else {
        struct kiov it;
        kiov_init(&it, v, cnt, uvec);
        r = write ? file_write(f, &it, n) : file_read(f, &it, n);
    }
    kfile_put(f);
    return r;
}

static int64_t sys_rw(int64_t fd, uint64_t buf, uint64_t n, int write)
{
    struct kfile *f = fd_lookup(fd);
    if (!f || (write ? !writable(f) : !readable(f)))
        return -EBADF;
    if (n > 0x7ffff000ULL) /* MAX_RW_COUNT: Linux shortens, not fails */
        n = 0x7ffff000ULL;
    if (!OK(buf, n))
        return -EFAULT;
    struct kiovec v = {buf, n};
    return do_rw(fd, &v, 1, 0, n, write);
}

static int64_t sys_rwv(int64_t fd, uint64_t iov, uint64_t cnt, int write)
{
    struct kfile *f = fd_lookup(fd);
    if (!f || (write ? !writable(f) : !readable(f)))
        return -EBADF;
    uint64_t total;
    int64_t e = check_iov(iov, cnt, &total);
    if (e)
        return e;
    return do_rw(fd, UPTR(iov), cnt, 1, total, write);
}

/* pread/pwrite/preadv/pwritev and lseek: nothing here has a position. */
static int64_t sys_positioned(int64_t fd, int64_t pos, int write)
{
    struct kfile *f = fd_lookup(fd);
    if (!f || (write ? !writable(f) : !readable(f)))
        return -EBADF;
    if (pos < 0)
        return -EINVAL;
    return -ESPIPE;
}

/* ---- metadata ---- */

/* struct stat on x86-64 */
struct kstat {
    uint64_t dev, ino, nlink;
    uint32_t mode, uid, gid, pad0;
    uint64_t rdev;
    int64_t size, blksize, blocks;
    int64_t atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
    int64_t unused[3];
};

#define S_IFIFO 0010000

static int64_t sys_fstat(int64_t fd, uint64_t buf)
{
    struct kfile *f = fd_lookup(fd);
    if (!f)
        return -EBADF;
    if (!OK(buf, sizeof(struct kstat)))
        return -EFAULT;
    struct kstat *st = UPTR(buf);
    memset(st, 0, sizeof(*st));
    st->nlink = 1;
    st->blksize = 4096;
    switch (f->kind) {
    case KF_STDIO:
        st->dev = 0xc; /* Linux's pipefs */
        st->ino = 1000 + f->stdio;
        st->mode = S_IFIFO | 0600;
        break;
    case KF_PIPE_R:
    case KF_PIPE_W:
        st->dev = 0xc;
        st->ino = pipe_ino(f);
        st->mode = S_IFIFO | 0600;
        break;
    default:
        /* eventfd and epoll are Linux anon inodes: one shared inode with
         * no file type bits. */
        st->dev = 0xf;
        st->ino = 1;
        st->mode = 0600;
        break;
    }
    int64_t t = (int64_t)(kiln_bi->boot_wall_ns / NSEC_PER_SEC);
    st->atime = st->mtime = st->ctime = t;
    return 0;
}

static int64_t sys_newfstatat(int64_t dirfd, uint64_t path, uint64_t buf,
                              uint64_t flags)
{
    int64_t n = vmem_strlen(&kiln_vm, path, 4096);
    if (n < 0)
        return -EFAULT;
    if (n == 0 && (flags & 0x1000)) /* AT_EMPTY_PATH */
        return sys_fstat(dirfd, buf);
    return -ENOENT;
}

#define F_DUPFD 0
#define F_GETFD 1
#define F_SETFD 2
#define F_GETFL 3
#define F_SETFL 4
#define F_DUPFD_CLOEXEC 1030
#define F_SETPIPE_SZ 1031
#define F_GETPIPE_SZ 1032

static int64_t sys_fcntl(int64_t fd, uint64_t cmd, uint64_t arg)
{
    struct kfile *f = fd_lookup(fd);
    if (!f)
        return -EBADF;
    switch (cmd) {
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
        if (arg >= FD_RLIMIT)
            return -EINVAL;
        return dup_at(f, (int64_t)arg, cmd == F_DUPFD_CLOEXEC);
    case F_GETFD:
        return F.fd[fd].cloexec;
    case F_SETFD:
        F.fd[fd].cloexec = arg & 1;
        return 0;
    case F_GETFL:
        return f->flags;
    case F_SETFL:
        /* Linux lets only these status flags change (O_ASYNC, O_DIRECT and
         * O_NOATIME mean nothing here and are dropped). */
        f->flags = (f->flags & ~(uint32_t)(KO_APPEND | KO_NONBLOCK)) |
                   ((uint32_t)arg & (KO_APPEND | KO_NONBLOCK));
        return 0;
    case F_GETPIPE_SZ:
    case F_SETPIPE_SZ:
        if (f->kind != KF_PIPE_R && f->kind != KF_PIPE_W)
            return -EBADF;
        /* The ring is fixed at 64 KiB: a request it already satisfies
         * succeeds, a bigger one is refused as for an unprivileged user
         * above the limit. */
        if (cmd == F_SETPIPE_SZ && (uint32_t)arg > PIPE_CAP)
            return -EPERM;
        return PIPE_CAP;
    }
    return -EINVAL;
}

#define FIONREAD 0x541b
#define FIONBIO 0x5421
#define FIONCLEX 0x5450
#define FIOCLEX 0x5451

static int64_t sys_ioctl(int64_t fd, uint64_t req, uint64_t arg)
{
    struct kfile *f = fd_lookup(fd);
    if (!f)
        return -EBADF;
    switch ((uint32_t)req) {
    case FIOCLEX:
    case FIONCLEX:
        F.fd[fd].cloexec = (uint32_t)req == FIOCLEX;
        return 0;
    case FIONBIO:
        if (!OK(arg, 4))
            return -EFAULT;
        if (*(const int32_t *)UPTR(arg))
            f->flags |= KO_NONBLOCK;
        else
            f->flags &= ~(uint32_t)KO_NONBLOCK;
        return 0;
    case FIONREAD:
        if (f->kind != KF_PIPE_R && f->kind != KF_PIPE_W)
            break;
        if (!OK(arg, 4))
            return -EFAULT;
        *(int32_t *)UPTR(arg) = (int32_t)pipe_unread(f);
        return 0;
    }
    /* Not a terminal, whatever was asked (musl asks TIOCGWINSZ). */
    return -ENOTTY;
}

/* ---- poll ---- */

struct kpollfd {
    int32_t fd;
    int16_t events, revents;
};

/* A TSC deadline ns nanoseconds from now (1: already due). */
static uint64_t deadline_in(uint64_t ns)
{
    if (ns == 0)
        return 1;
    uint64_t now = clock_ns(1);
    uint64_t at = now + ns < now ? UINT64_MAX : now + ns;
    return clock_deadline_tsc(1, at);
}

/* deadline_tsc: 0 = forever, 1 = do not wait. */
static int64_t do_poll(uint64_t ufds, uint64_t nfds, uint64_t deadline)
{
    if (nfds > FD_RLIMIT)
        return -EINVAL;
    if (nfds && !OK(ufds, nfds * sizeof(struct kpollfd)))
        return -EFAULT;
    struct kpollfd *p = UPTR(ufds);
    for (;;) {
        int64_t n = 0;
        for (uint64_t i = 0; i < nfds; i++) {
            uint32_t rev = 0;
            if (p[i].fd >= 0) {
                struct kfile *f = fd_lookup(p[i].fd);
                uint32_t want = (uint16_t)p[i].events | KPOLLERR | KPOLLHUP;
                rev = f ? kfile_poll(f) & want : KPOLLNVAL;
            }
            p[i].revents = (int16_t)rev;
            if (rev)
                n++;
        }
        if (n || deadline == 1)
            return n;
        if (fd_signal_pending())
            return -EINTR;
        if (waitq_wait(&F.poll_wq, deadline) == -ETIMEDOUT)
            deadline = 1; /* one last look, then report nothing ready */
        if (!OK(ufds, nfds * sizeof(struct kpollfd)))
            return -EFAULT; /* unmapped by another thread meanwhile */
    }
}

static int64_t sys_poll(uint64_t ufds, uint64_t nfds, int64_t timeout_ms)
{
    uint64_t d = 0;
    if (timeout_ms >= 0)
        d = deadline_in((uint64_t)timeout_ms * 1000000ULL);
    return do_poll(ufds, nfds, d);
}

static int64_t sys_ppoll(uint64_t ufds, uint64_t nfds, uint64_t uts,
                         uint64_t uset, uint64_t setsize)
{
    uint64_t d = 0, ns = 0;
    if (uts) {
        int64_t e = read_timespec(uts, &ns);
        if (e)
            return e;
        d = deadline_in(ns);
    }
    uint64_t end = clock_ns(1) + ns;
    uint64_t old;
    int64_t e = fd_sigmask_enter(uset, setsize, &old);
    if (e)
        return e;
    int64_t r = do_poll(ufds, nfds, d);
    fd_sigmask_leave(uset, old);
    if (uts) {
        /* Linux writes back the time left. */
        uint64_t now = clock_ns(1);
        uint64_t left = end > now ? end - now : 0;
        struct ktimespec *ts = UPTR(uts);
        ts->sec = (int64_t)(left / NSEC_PER_SEC);
        ts->nsec = (int64_t)(left % NSEC_PER_SEC);
    }
    return r;
}

/* epoll_wait's timeout in ms, and epoll_pwait2's timespec. */
static int64_t sys_epoll_wait(uint64_t epfd, uint64_t ev, uint64_t max,
                              int64_t timeout_ms, uint64_t uset, uint64_t setsize)
{
    uint64_t d = 0;
    if (timeout_ms >= 0)
        d = deadline_in((uint64_t)timeout_ms * 1000000ULL);
    uint64_t old;
    int64_t e = fd_sigmask_enter(uset, setsize, &old);
    if (e)
        return e;
    int64_t r = epoll_wait(epfd, ev, max, d);
    fd_sigmask_leave(uset, old);
    return r;
}

static int64_t sys_epoll_pwait2(uint64_t epfd, uint64_t ev, uint64_t max,
                                uint64_t uts, uint64_t uset, uint64_t setsize)
{
    uint64_t d = 0;
    if (uts) {
        uint64_t ns;
        int64_t e = read_timespec(uts, &ns);
        if (e)
            return e;
        d = deadline_in(ns);
    }
    uint64_t old;
    int64_t e = fd_sigmask_enter(uset, setsize, &old);
    if (e)
        return e;
    int64_t r = epoll_wait(epfd, ev, max, d);
    fd_sigmask_leave(uset, old);
    return r;
}

int fd_syscall(uint64_t nr, const uint64_t *a, int64_t *ret)
{
    int64_t fd = (int64_t)(int32_t)a[0]; /* fds are C ints */
    switch (nr) {
    case 0: *ret = sys_rw(fd, a[1], a[2], 0); return 1;             /* read */
    case 1: *ret = sys_rw(fd, a[1], a[2], 1); return 1;             /* write */
    case 3: *ret = fd_close(fd); return 1;
    case 5: *ret = sys_fstat(fd, a[1]); return 1;
    case 7: *ret = sys_poll(a[0], a[1], (int32_t)a[2]); return 1;
    case 8:                                                          /* lseek */
        *ret = fd_lookup(fd) ? -ESPIPE : -EBADF;
        return 1;
    case 16: *ret = sys_ioctl(fd, a[1], a[2]); return 1;
    case 17: *ret = sys_positioned(fd, (int64_t)a[3], 0); return 1; /* pread64 */
    case 18: *ret = sys_positioned(fd, (int64_t)a[3], 1); return 1; /* pwrite64 */
    case 19: *ret = sys_rwv(fd, a[1], a[2], 0); return 1;           /* readv */
    case 20: *ret = sys_rwv(fd, a[1], a[2], 1); return 1;           /* writev */
    case 22: *ret = pipe_create(a[0], 0); return 1;                 /* pipe */
    case 32:                                                         /* dup */
        *ret = fd_lookup(fd) ? dup_at(fd_lookup(fd), 0, 0) : -EBADF;
        return 1;
    case 33: *ret = sys_dup3(fd, (int32_t)a[1], 0, 1); return 1;    /* dup2 */
    case 72: *ret = sys_fcntl(fd, a[1], a[2]); return 1;
    case 213:                                                        /* epoll_create */
        *ret = (int32_t)a[0] <= 0 ? -EINVAL : epoll_create(0);
        return 1;
    case 232: *ret = sys_epoll_wait(a[0], a[1], a[2], (int32_t)a[3], 0, 0); return 1;
    case 233: *ret = epoll_ctl(a[0], a[1], a[2], a[3]); return 1;
    case 262: *ret = sys_newfstatat((int32_t)a[0], a[1], a[2], a[3]); return 1;
    case 271: *ret = sys_ppoll(a[0], a[1], a[2], a[3], a[4]); return 1;
    case 281: *ret = sys_epoll_wait(a[0], a[1], a[2], (int32_t)a[3], a[4], a[5]); return 1;
    case 284: *ret = eventfd_create((uint32_t)a[0], 0); return 1;   /* eventfd */
    case 290: *ret = eventfd_create((uint32_t)a[0], a[1]); return 1; /* eventfd2 */
    case 291: *ret = epoll_create(a[0]); return 1;                  /* epoll_create1 */
    case 292: *ret = sys_dup3(fd, (int32_t)a[1], a[2], 0); return 1; /* dup3 */
    case 293: *ret = pipe_create(a[0], a[1]); return 1;             /* pipe2 */
    case 295: *ret = sys_positioned(fd, (int64_t)a[3], 0); return 1; /* preadv */
    case 296: *ret = sys_positioned(fd, (int64_t)a[3], 1); return 1; /* pwritev */
    case 441: *ret = sys_epoll_pwait2(a[0], a[1], a[2], a[3], a[4], a[5]); return 1;
    }
    return 0;
}
