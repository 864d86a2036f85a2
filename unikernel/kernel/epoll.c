/*
 * epoll.c — epoll_create/epoll_create1, epoll_ctl and the epoll_wait
 * family over pipes and eventfds, level- and edge-triggered as Linux.
 *
 * Linux queues an item on its instance's ready list from the watched
 * file's wakeup callback and re-polls it when reporting. Here the wakeup
 * only bumps the watched object's generation counters (fd_notify) and
 * wakes the waiting threads; epoll_wait walks the instance's items and
 * polls each: a level-triggered item is reported while it is ready, an
 * edge-triggered one only if a counter it cares about moved since it was
 * last looked at (or it was just added/modified). That is the same
 * observable behaviour with a handful of items per instance — what Go's
 * netpoller and a small serve function have — at the cost of a walk per
 * wait. Reported level-triggered items move to the back of the list so a
 * small maxevents cannot starve the others, as Linux's requeueing does.
 *
 * fds 0–2 are not pollable here (epoll_ctl says -EPERM, as Linux does for
 * regular files): Go then does blocking reads and writes on them, which
 * is what the VMM's stdio wants.
 */
#include "kfile.h"

#define OK(p, n) UVALID(p, n)
#define EPOLL_MAX 16
#define EPITEM_MAX 512

#define EPOLL_CTL_ADD 1
#define EPOLL_CTL_DEL 2
#define EPOLL_CTL_MOD 3

#define EPOLLEXCLUSIVE (1u << 28)
#define EPOLLWAKEUP (1u << 29)
#define EPOLLONESHOT (1u << 30)
#define EPOLLET (1u << 31)
#define EP_PRIVATE (EPOLLEXCLUSIVE | EPOLLWAKEUP | EPOLLONESHOT | EPOLLET)
/* What EPOLLEXCLUSIVE may be combined with (Linux's EPOLLEXCLUSIVE_OK_BITS). */
#define EXCLUSIVE_OK (KPOLLIN | KPOLLOUT | KPOLLERR | KPOLLHUP | EPOLLWAKEUP | EPOLLET | EPOLLEXCLUSIVE)

/* struct epoll_event is packed on x86-64: 12 bytes. */
struct kepoll_event {
    uint32_t events;
    uint64_t data;
} __attribute__((packed));

struct kepoll;

struct kepitem {
    struct kepitem *next; /* in its instance's list */
    struct kepoll *ep;
    struct kfile *file;   /* what is watched: the (file, fd) pair is the key */
    struct kpollable *obj;
    int32_t fd;
    uint32_t events;      /* requested | ERR | HUP | private flags */
    uint64_t data;
    uint32_t last_in, last_out; /* obj's counters when last looked at */
    uint8_t pending;      /* edge-triggered: look once even if unchanged */
    uint8_t used;
};

struct kepoll {
    struct kwaitq wq;
    struct kepitem *head, *tail;
    int32_t used;
};

static struct {
    struct kepoll eps[EPOLL_MAX];
    struct kepitem items[EPITEM_MAX];
} EP;

static struct kepoll *ep_of(const struct kfile *f)
{
    return (struct kepoll *)f->obj;
}

int64_t epoll_create(uint64_t flags)
{
    if (flags & ~(uint64_t)KO_CLOEXEC)
        return -EINVAL;
    struct kepoll *ep = 0;
    for (int i = 0; i < EPOLL_MAX && !ep; i++)
        if (!EP.eps[i].used)
            ep = &EP.eps[i];
    if (!ep)
        return -ENFILE;
    struct kfile *f = kfile_new(KF_EPOLL, KO_RDWR, ep);
    if (!f)
        return -ENFILE;
    memset(ep, 0, sizeof(*ep));
    ep->used = 1;
    int64_t fd = fd_install(f, (flags & KO_CLOEXEC) != 0);
    if (fd < 0)
        kfile_put(f);
    return fd;
}

static void ep_unlink(struct kepoll *ep, struct kepitem *it)
{
    struct kepitem *prev = 0;
    for (struct kepitem *p = ep->head; p; prev = p, p = p->next) {
        if (p != it)
            continue;
        if (prev)
            prev->next = p->next;
        else
            ep->head = p->next;
        if (ep->tail == p)
            ep->tail = prev;
        break;
    }
    it->next = 0;
}

static void ep_append(struct kepoll *ep, struct kepitem *it)
{
    it->next = 0;
    if (ep->tail)
        ep->tail->next = it;
    else
        ep->head = it;
    ep->tail = it;
}

static void item_drop(struct kepitem *it)
{
    ep_unlink(it->ep, it);
    it->obj->watchers--;
    it->used = 0;
}

static struct kepitem *ep_find(struct kepoll *ep, struct kfile *f, int32_t fd)
{
    for (struct kepitem *it = ep->head; it; it = it->next)
        if (it->file == f && it->fd == fd)
            return it;
    return 0;
}

/* Start an item's edge tracking afresh: Linux polls an item when it is
 * added or modified and queues it if ready then. */
static void item_arm(struct kepitem *it)
{
    it->pending = 1;
    it->last_in = it->obj->gen_in;
    it->last_out = it->obj->gen_out;
    if (kfile_poll(it->file) & it->events)
        waitq_wake(&it->ep->wq, KTHREAD_MAX);
}

int64_t epoll_ctl(uint64_t epfd, uint64_t op, uint64_t fd, uint64_t uevent)
{
    struct kepoll_event ev = {0, 0};
    if (op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) {
        if (!OK(uevent, sizeof(ev)))
            return -EFAULT;
        memcpy(&ev, UPTR(uevent), sizeof(ev));
    }
    struct kfile *ef = fd_get((int32_t)epfd);
    if (!ef)
        return -EBADF;
    struct kfile *tf = fd_get((int32_t)fd);
    int64_t r;
    if (!tf) {
        r = -EBADF;
        goto out_ef;
    }
    if (tf->kind == KF_STDIO) {
        r = -EPERM;
        goto out;
    }
    /* Nested epoll (an epoll fd watched by another) is not supported. */
    if (ef->kind != KF_EPOLL || tf == ef || tf->kind == KF_EPOLL) {
        r = -EINVAL;
        goto out;
    }
    if ((op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) && (ev.events & EPOLLEXCLUSIVE) &&
        (op == EPOLL_CTL_MOD ||
         (ev.events & ~EXCLUSIVE_OK))) {
        r = -EINVAL;
        goto out;
    }
    struct kepoll *ep = ep_of(ef);
    struct kepitem *it = ep_find(ep, tf, (int32_t)fd);
    switch (op) {
    case EPOLL_CTL_ADD:
        if (it) {
            r = -EEXIST;
            break;
        }
        for (int i = 0; i < EPITEM_MAX && !it; i++)
            if (!EP.items[i].used)
                it = &EP.items[i];
        if (!it) {
            r = -ENOSPC; /* as Linux past max_user_watches */
            break;
        }
        memset(it, 0, sizeof(*it));
        it->used = 1;
        it->ep = ep;
        it->file = tf;
        it->obj = kfile_pollable(tf);
        it->obj->watchers++;
        it->fd = (int32_t)fd;
        it->events = ev.events | KPOLLERR | KPOLLHUP;
        it->data = ev.data;
        ep_append(ep, it);
        item_arm(it);
        r = 0;
        break;
    case EPOLL_CTL_MOD:
        if (!it) {
            r = -ENOENT;
            break;
        }
        if (!(it->events & EPOLLEXCLUSIVE)) {
            it->events = ev.events | KPOLLERR | KPOLLHUP;
            it->data = ev.data;
            item_arm(it);
        }
        r = 0;
        break;
    case EPOLL_CTL_DEL:
        if (!it) {
            r = -ENOENT;
            break;
        }
        item_drop(it);
        r = 0;
        break;
    default:
        r = -EINVAL;
    }
out:
    kfile_put(tf);
out_ef:
    kfile_put(ef);
    return r;
}

/* What the item has to report now (0: nothing). consume: an
 * edge-triggered item's edge is used up by looking, as Linux takes it off
 * the ready list whether or not the re-poll finds it ready. */
static uint32_t item_ready(struct kepitem *it, int consume)
{
    uint32_t mask = it->events & ~EP_PRIVATE;
    if (!mask)
        return 0; /* a one-shot item that fired, until EPOLL_CTL_MOD */
    if (it->events & EPOLLET) {
        int in = it->obj->gen_in != it->last_in;
        int out = it->obj->gen_out != it->last_out;
        int edge;
        if (mask & (KPOLL_INSIDE | KPOLL_OUTSIDE))
            edge = ((mask & KPOLL_INSIDE) && in) || ((mask & KPOLL_OUTSIDE) && out);
        else
            edge = in || out;
        if (!it->pending && !edge)
            return 0;
        if (consume) {
            it->pending = 0;
            it->last_in = it->obj->gen_in;
            it->last_out = it->obj->gen_out;
        }
    }
    return kfile_poll(it->file) & mask;
}

static int ep_collect(struct kepoll *ep, struct kepoll_event *out, int max)
{
    int n = 0;
    struct kepitem *prev = 0, *it = ep->head;
    struct kepitem *rot_head = 0, *rot_tail = 0;
    while (it && n < max) {
        struct kepitem *next = it->next;
        uint32_t ready = item_ready(it, 1);
        if (ready) {
            out[n].events = ready;
            out[n].data = it->data;
            n++;
            if (it->events & EPOLLONESHOT) {
                it->events &= EP_PRIVATE;
            } else if (!(it->events & EPOLLET)) {
                /* Level-triggered and still ready: to the back. */
                if (prev)
                    prev->next = next;
                else
                    ep->head = next;
                if (ep->tail == it)
                    ep->tail = prev;
                it->next = 0;
                if (rot_tail)
                    rot_tail->next = it;
                else
                    rot_head = it;
                rot_tail = it;
                it = next;
                continue;
            }
        }
        prev = it;
        it = next;
    }
    if (rot_head) {
        if (ep->tail)
            ep->tail->next = rot_head;
        else
            ep->head = rot_head;
        ep->tail = rot_tail;
    }
    return n;
}

int64_t epoll_wait(uint64_t epfd, uint64_t uevents, uint64_t maxevents,
                   uint64_t deadline)
{
    int32_t max = (int32_t)maxevents;
    if (max <= 0 || (uint64_t)max > 0x7fffffffULL / sizeof(struct kepoll_event))
        return -EINVAL;
    if (!OK(uevents, (uint64_t)max * sizeof(struct kepoll_event)))
        return -EFAULT;
    struct kfile *f = fd_get((int32_t)epfd);
    if (!f)
        return -EBADF;
    int64_t r;
    if (f->kind != KF_EPOLL) {
        r = -EINVAL;
        goto out;
    }
    struct kepoll *ep = ep_of(f);
    for (;;) {
        int n = ep_collect(ep, UPTR(uevents), max);
        if (n || deadline == 1) {
            r = n;
            break;
        }
        if (fd_signal_pending()) {
            r = -EINTR;
            break;
        }
        if (waitq_wait(&ep->wq, deadline) == -ETIMEDOUT)
            deadline = 1; /* one last look, then report the timeout */
        if (!OK(uevents, (uint64_t)max * sizeof(struct kepoll_event))) {
            r = -EFAULT; /* unmapped by another thread meanwhile */
            break;
        }
    }
out:
    kfile_put(f);
    return r;
}

uint32_t epoll_poll(const struct kfile *f)
{
    for (struct kepitem *it = ep_of(f)->head; it; it = it->next)
        if (item_ready(it, 0))
            return KPOLLIN | KPOLLRDNORM;
    return 0;
}

void epoll_forget_file(struct kfile *f)
{
    struct kpollable *p = kfile_pollable(f);
    if (!p || p->watchers == 0)
        return;
    for (int i = 0; i < EPITEM_MAX; i++)
        if (EP.items[i].used && EP.items[i].file == f)
            item_drop(&EP.items[i]);
}

void epoll_wake_watchers(struct kpollable *p, uint32_t events)
{
    for (int i = 0; i < EPITEM_MAX; i++) {
        struct kepitem *it = &EP.items[i];
        if (it->used && it->obj == p && (it->events & events & ~EP_PRIVATE))
            waitq_wake(&it->ep->wq, KTHREAD_MAX);
    }
}

void epoll_release(struct kfile *f)
{
    struct kepoll *ep = ep_of(f);
    while (ep->head)
        item_drop(ep->head);
    ep->used = 0;
}
