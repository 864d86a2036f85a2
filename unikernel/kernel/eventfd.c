/*
 * eventfd.c — eventfd(2)/eventfd2(2): a 64-bit counter as eventfd(2)
 * defines it. A write adds (blocking while the sum would reach
 * 0xffffffffffffffff), a read takes the whole count — or 1 with
 * EFD_SEMAPHORE — and blocks while it is zero. The Go runtime's netpoller
 * is woken through one of these (netpollBreak).
 */
#include "kfile.h"

#define EVENTFD_MAX 64
#define EFD_SEMAPHORE 1
#define COUNT_MAX 0xfffffffffffffffeULL

struct keventfd {
    struct kpollable pl;
    struct kwaitq rq, wq;
    uint64_t count;
    int32_t semaphore;
    int32_t used;
};

static struct keventfd E[EVENTFD_MAX];

static struct keventfd *efd_of(const struct kfile *f)
{
    return (struct keventfd *)f->obj;
}

int64_t eventfd_create(uint64_t initval, uint64_t flags)
{
    if (flags & ~(uint64_t)(EFD_SEMAPHORE | KO_NONBLOCK | KO_CLOEXEC))
        return -EINVAL;
    struct keventfd *e = 0;
    for (int i = 0; i < EVENTFD_MAX && !e; i++)
        if (!E[i].used)
            e = &E[i];
    if (!e)
        return -ENFILE;
    struct kfile *f = kfile_new(KF_EVENTFD, KO_RDWR | ((uint32_t)flags & KO_NONBLOCK), e);
    if (!f)
        return -ENFILE;
    memset(e, 0, sizeof(*e));
    e->used = 1;
    e->count = initval;
    e->semaphore = (flags & EFD_SEMAPHORE) != 0;
    int64_t fd = fd_install(f, (flags & KO_CLOEXEC) != 0);
    if (fd < 0)
        kfile_put(f);
    return fd;
}

int64_t eventfd_read(struct kfile *f, struct kiov *it, uint64_t n)
{
    struct keventfd *e = efd_of(f);
    if (n < 8)
        return -EINVAL;
    for (;;) {
        if (e->count) {
            uint64_t v = e->semaphore ? 1 : e->count;
            e->count -= v;
            kiov_out(it, &v, 8);
            waitq_wake(&e->wq, KTHREAD_MAX);
            fd_notify(&e->pl, KPOLLOUT);
            return 8;
        }
        if (f->flags & KO_NONBLOCK)
            return -EAGAIN;
        if (fd_signal_pending())
            return -EINTR;
        waitq_wait(&e->rq, 0);
        if (!kiov_valid(it))
            return -EFAULT;
    }
}

int64_t eventfd_write(struct kfile *f, struct kiov *it, uint64_t n)
{
    struct keventfd *e = efd_of(f);
    uint64_t v;
    if (n < 8)
        return -EINVAL;
    kiov_in(it, &v, 8);
    if (v == UINT64_MAX)
        return -EINVAL;
    for (;;) {
        if (COUNT_MAX - e->count >= v) {
            e->count += v;
            /* Linux wakes readers even for a zero add; an edge-triggered
             * watcher then looks and finds nothing, as there. */
            waitq_wake(&e->rq, KTHREAD_MAX);
            fd_notify(&e->pl, KPOLLIN);
            return 8;
        }
        if (f->flags & KO_NONBLOCK)
            return -EAGAIN;
        if (fd_signal_pending())
            return -EINTR;
        waitq_wait(&e->wq, 0);
    }
}

uint32_t eventfd_poll(const struct kfile *f)
{
    const struct keventfd *e = efd_of(f);
    uint32_t m = 0;
    if (e->count > 0)
        m |= KPOLLIN;
    if (e->count < COUNT_MAX)
        m |= KPOLLOUT;
    return m;
}

struct kpollable *eventfd_pollable(const struct kfile *f)
{
    return &efd_of(f)->pl;
}

void eventfd_release(struct kfile *f)
{
    efd_of(f)->used = 0;
}
