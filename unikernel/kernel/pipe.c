/*
 * pipe.c — pipe(2)/pipe2(2): a 64 KiB ring per pipe, blocking through
 * wait queues, EOF once every writer is gone, -EPIPE once every reader is
 * (no SIGPIPE: see docs/SYSCALLS.md), and PIPE_BUF atomicity — a write of
 * at most 4096 bytes lands whole or waits.
 *
 * Ring buffers come from kalloc_frame() (2 MiB frames cut in 32) rather
 * than .bss, which must keep the kernel image under 0x400000; a freed
 * ring goes to a free list for the next pipe, and is never zeroed — no
 * byte of it is read before it is written again.
 */
#include "kfile.h"

#define OK(p, n) UVALID(p, n)
#define PIPE_MAX 128
#define RINGS_PER_FRAME ((2u << 20) / PIPE_CAP)

struct kpipe {
    struct kpollable pl;
    struct kwaitq rq, wq; /* readers waiting for data, writers for room */
    char *buf;
    uint32_t head, count; /* the unread bytes: [head, head+count) mod cap */
    int32_t readers, writers;
    uint64_t ino;
    int32_t used;
};

static struct {
    struct kpipe pipes[PIPE_MAX];
    char *free_rings;   /* freed rings, linked through their first word */
    char *frame;        /* the frame rings are being cut from */
    uint32_t frame_left;
    uint64_t next_ino;
} P;

static char *ring_alloc(void)
{
    if (P.free_rings) {
        char *r = P.free_rings;
        P.free_rings = *(char **)r;
        return r;
    }
    if (P.frame_left == 0) {
        P.frame = kalloc_frame();
        if (!P.frame)
            return 0;
        P.frame_left = RINGS_PER_FRAME;
    }
    char *r = P.frame;
    P.frame += PIPE_CAP;
    P.frame_left--;
    return r;
}

static void ring_free(char *r)
{
    *(char **)r = P.free_rings;
    P.free_rings = r;
}

static struct kpipe *pipe_of(const struct kfile *f)
{
    return (struct kpipe *)f->obj;
}

int64_t pipe_create(uint64_t ufds, uint64_t flags)
{
    if (flags & ~(uint64_t)(KO_NONBLOCK | KO_CLOEXEC))
        return -EINVAL; /* O_DIRECT (packet mode) is not supported */
    if (!OK(ufds, 2 * sizeof(int32_t)))
        return -EFAULT;
    struct kpipe *p = 0;
    for (int i = 0; i < PIPE_MAX && !p; i++)
        if (!P.pipes[i].used)
            p = &P.pipes[i];
    if (!p)
        return -ENFILE;
    char *buf = ring_alloc();
    if (!buf)
        return -ENOMEM;
    uint32_t nb = (uint32_t)flags & KO_NONBLOCK;
    struct kfile *r = kfile_new(KF_PIPE_R, KO_RDONLY | nb, p);
    struct kfile *w = r ? kfile_new(KF_PIPE_W, KO_WRONLY | nb, p) : 0;
    if (!w) {
        if (r)
            r->kind = KF_FREE;
        ring_free(buf);
        return -ENFILE;
    }
    memset(p, 0, sizeof(*p));
    p->used = 1;
    p->buf = buf;
    p->readers = p->writers = 1;
    p->ino = 4000 + ++P.next_ino;
    int cloexec = (flags & KO_CLOEXEC) != 0;
    int64_t rfd = fd_install(r, cloexec);
    if (rfd < 0) {
        kfile_put(w);
        kfile_put(r);
        return rfd;
    }
    int64_t wfd = fd_install(w, cloexec);
    if (wfd < 0) {
        kfile_put(w);
        fd_close(rfd);
        return wfd;
    }
    int32_t *fds = UPTR(ufds);
    fds[0] = (int32_t)rfd;
    fds[1] = (int32_t)wfd;
    return 0;
}

static uint32_t ring_room(const struct kpipe *p)
{
    return PIPE_CAP - p->count;
}

static void ring_put(struct kpipe *p, struct kiov *it, uint32_t k)
{
    uint32_t tail = (p->head + p->count) & (PIPE_CAP - 1);
    uint32_t first = PIPE_CAP - tail < k ? PIPE_CAP - tail : k;
    kiov_in(it, p->buf + tail, first);
    if (k > first)
        kiov_in(it, p->buf, k - first);
    p->count += k;
}

static void ring_get(struct kpipe *p, struct kiov *it, uint32_t k)
{
    uint32_t first = PIPE_CAP - p->head < k ? PIPE_CAP - p->head : k;
    kiov_out(it, p->buf + p->head, first);
    if (k > first)
        kiov_out(it, p->buf, k - first);
    p->head = (p->head + k) & (PIPE_CAP - 1);
    p->count -= k;
}

int64_t pipe_read(struct kfile *f, struct kiov *it, uint64_t n)
{
    struct kpipe *p = pipe_of(f);
    if (n == 0)
        return 0;
    for (;;) {
        if (p->count) {
            uint32_t k = n < p->count ? (uint32_t)n : p->count;
            ring_get(p, it, k);
            waitq_wake(&p->wq, KTHREAD_MAX);
            fd_notify(&p->pl, KPOLLOUT | KPOLLWRNORM);
            return k;
        }
        if (p->writers == 0)
            return 0;
        if (f->flags & KO_NONBLOCK)
            return -EAGAIN;
        if (fd_signal_pending())
            return -EINTR;
        waitq_wait(&p->rq, 0);
        if (!kiov_valid(it))
            return -EFAULT;
    }
}

int64_t pipe_write(struct kfile *f, struct kiov *it, uint64_t n)
{
    struct kpipe *p = pipe_of(f);
    uint64_t done = 0;
    if (n == 0)
        return 0;
    for (;;) {
        if (p->readers == 0)
            return done ? (int64_t)done : -EPIPE;
        uint64_t want = n - done;
        uint32_t room = ring_room(p);
        /* Up to PIPE_BUF bytes go in whole or not at all; bigger writes
         * take what room there is. */
        if (want <= PIPE_BUF_BYTES ? room >= want : room > 0) {
            uint32_t k = want < room ? (uint32_t)want : room;
            ring_put(p, it, k);
            done += k;
            waitq_wake(&p->rq, KTHREAD_MAX);
            fd_notify(&p->pl, KPOLLIN | KPOLLRDNORM);
            if (done == n)
                return (int64_t)done;
            continue;
        }
        if (f->flags & KO_NONBLOCK)
            return done ? (int64_t)done : -EAGAIN;
        if (fd_signal_pending())
            return done ? (int64_t)done : -EINTR;
        waitq_wait(&p->wq, 0);
        if (!kiov_valid(it))
            return done ? (int64_t)done : -EFAULT;
    }
}

uint32_t pipe_poll(const struct kfile *f)
{
    const struct kpipe *p = pipe_of(f);
    uint32_t m = 0;
    if (f->kind == KF_PIPE_R) {
        if (p->count)
            m |= KPOLLIN | KPOLLRDNORM;
        if (p->writers == 0)
            m |= KPOLLHUP;
    } else {
        if (ring_room(p) >= PIPE_BUF_BYTES)
            m |= KPOLLOUT | KPOLLWRNORM;
        if (p->readers == 0)
            m |= KPOLLERR;
    }
    return m;
}

uint64_t pipe_unread(const struct kfile *f)
{
    return pipe_of(f)->count;
}

uint64_t pipe_ino(const struct kfile *f)
{
    return pipe_of(f)->ino;
}

struct kpollable *pipe_pollable(const struct kfile *f)
{
    return &pipe_of(f)->pl;
}

void pipe_release(struct kfile *f)
{
    struct kpipe *p = pipe_of(f);
    if (f->kind == KF_PIPE_R) {
        p->readers--;
        /* Blocked writers must see EPIPE. */
        waitq_wake(&p->wq, KTHREAD_MAX);
        fd_notify(&p->pl, KPOLLERR);
    } else {
        p->writers--;
        /* Blocked readers must see EOF. */
        waitq_wake(&p->rq, KTHREAD_MAX);
        fd_notify(&p->pl, KPOLLHUP);
    }
    if (p->readers == 0 && p->writers == 0) {
        ring_free(p->buf);
        p->buf = 0;
        p->used = 0;
    }
}
