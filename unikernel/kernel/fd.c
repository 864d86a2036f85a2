/*
 * fd.c — the fd table. Today fds 0, 1 and 2 only: stdin (requests), stdout
 * (responses) and stderr (the log), each turned into hypercalls by
 * stdio.c.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

#define OK(p, n) UVALID(p, n)

static struct {
    uint32_t closed, cloexec, fl[3];
} F;

void fd_init(void)
{
    F.fl[0] = 0;          /* O_RDONLY */
    F.fl[1] = F.fl[2] = 1; /* O_WRONLY */
}

int fd_valid(int64_t fd)
{
    return fd >= 0 && fd < 3 && !(F.closed & (1u << fd));
}


static int64_t sys_write(uint64_t fd, uint64_t buf, uint64_t n)
{
    if (!fd_valid(fd) || fd == 0)
        return -EBADF;
    if (!OK(buf, n))
        return -EFAULT;
    stdio_write((int)fd, UPTR(buf), n);
    return (int64_t)n;
}

static int64_t sys_read(uint64_t fd, uint64_t buf, uint64_t n)
{
    if (!fd_valid(fd) || fd != 0)
        return -EBADF;
    if (!OK(buf, n))
        return -EFAULT;
    return stdio_read(UPTR(buf), n);
}

struct kiovec {
    uint64_t base, len;
};

static int64_t check_iov(uint64_t iov, uint64_t cnt)
{
    if (cnt > 1024)
        return -EINVAL;
    if (!OK(iov, cnt * sizeof(struct kiovec)))
        return -EFAULT;
    const struct kiovec *v = UPTR(iov);
    uint64_t total = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        if (!OK(v[i].base, v[i].len))
            return -EFAULT;
        total += v[i].len;
        if (total > 0x7ffff000ULL)
            return -EINVAL;
    }
    return 0;
}

static int64_t sys_writev(uint64_t fd, uint64_t iov, uint64_t cnt)
{
    if (!fd_valid(fd) || fd == 0)
        return -EBADF;
    int64_t e = check_iov(iov, cnt);
    if (e)
        return e;
    const struct kiovec *v = UPTR(iov);
    int64_t total = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        stdio_write((int)fd, UPTR(v[i].base), v[i].len);
        total += (int64_t)v[i].len;
    }
    return total;
}

static int64_t sys_readv(uint64_t fd, uint64_t iov, uint64_t cnt)
{
    if (!fd_valid(fd) || fd != 0)
        return -EBADF;
    int64_t e = check_iov(iov, cnt);
    if (e)
        return e;
    /* One hypercall into the first non-empty buffer: a short read, as a
     * pipe gives, and still zero copies. */
    const struct kiovec *v = UPTR(iov);
    for (uint64_t i = 0; i < cnt; i++)
        if (v[i].len)
            return stdio_read(UPTR(v[i].base), v[i].len);
    return 0;
}

/* struct stat on x86-64 */
struct kstat {
    uint64_t dev, ino, nlink;
    uint32_t mode, uid, gid, pad0;
    uint64_t rdev;
    int64_t size, blksize, blocks;
    int64_t atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
    int64_t unused[3];
};

static int64_t sys_fstat(uint64_t fd, uint64_t buf)
{
    if (!fd_valid(fd))
        return -EBADF;
    if (!OK(buf, sizeof(struct kstat)))
        return -EFAULT;
    struct kstat *st = UPTR(buf);
    memset(st, 0, sizeof(*st));
    st->dev = 0xc;                 /* Linux's pipefs */
    st->ino = 1000 + fd;
    st->nlink = 1;
    st->mode = 0010000 | 0600;     /* S_IFIFO, rw------- */
    st->blksize = 4096;
    int64_t t = (int64_t)(kiln_bi->boot_wall_ns / NSEC_PER_SEC);
    st->atime = st->mtime = st->ctime = t;
    return 0;
}

static int64_t sys_newfstatat(uint64_t dirfd, uint64_t path, uint64_t buf,
                              uint64_t flags)
{
    int64_t n = vmem_strlen(&kiln_vm, path, 4096);
    if (n < 0)
        return -EFAULT;
    if (n == 0 && (flags & 0x1000)) /* AT_EMPTY_PATH */
        return sys_fstat(dirfd, buf);
    return -ENOENT;
}

static int64_t sys_fcntl(uint64_t fd, uint64_t cmd, uint64_t arg)
{
    if (!fd_valid(fd))
        return -EBADF;
    switch (cmd) {
    case 1: /* F_GETFD */
        return (F.cloexec >> fd) & 1;
    case 2: /* F_SETFD */
        F.cloexec = (F.cloexec & ~(1u << fd)) | ((uint32_t)(arg & 1) << fd);
        return 0;
    case 3: /* F_GETFL */
        return F.fl[fd];
    case 4: /* F_SETFL: only O_APPEND and O_NONBLOCK change */
        F.fl[fd] = (F.fl[fd] & ~0xc00u) | (uint32_t)(arg & 0xc00);
        return 0;
    }
    return -EINVAL;
}


int fd_syscall(uint64_t nr, const uint64_t *a, int64_t *ret)
{
    switch (nr) {
    case 0: *ret = sys_read(a[0], a[1], a[2]); return 1;
    case 1: *ret = sys_write(a[0], a[1], a[2]); return 1;
    case 3:                                                 /* close */
        if (!fd_valid((int64_t)a[0])) {
            *ret = -EBADF;
        } else {
            F.closed |= 1u << a[0];
            *ret = 0;
        }
        return 1;
    case 5: *ret = sys_fstat(a[0], a[1]); return 1;
    case 16: *ret = fd_valid((int64_t)a[0]) ? -ENOTTY : -EBADF; return 1; /* ioctl */
    case 19: *ret = sys_readv(a[0], a[1], a[2]); return 1;
    case 20: *ret = sys_writev(a[0], a[1], a[2]); return 1;
    case 72: *ret = sys_fcntl(a[0], a[1], a[2]); return 1;
    case 262: *ret = sys_newfstatat(a[0], a[1], a[2], a[3]); return 1;
    }
    return 0;
}
