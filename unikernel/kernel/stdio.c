/*
 * stdio.c — fds 0, 1 and 2, and every way out of the VM. Output is
 * buffered in the kernel and leaves only when a buffer fills, when the
 * program waits (for input or for time) or at exit, so a serve function
 * that writes its response and then reads the next request costs one VM
 * exit: KILN_HC_IO carries both. Input goes straight into the caller's
 * buffer (at its guest-physical address, vmem_phys): no copy, no kernel
 * buffer. A reader blocks only itself; sched.c's idle path fills it.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

#define STDIO_BUF (64 * 1024)

static char out_buf[STDIO_BUF];
static char err_buf[STDIO_BUF];
static uint64_t out_len, err_len;
static int in_eof;

/* Hypercall argument structs live in the kernel image; their addresses are
 * their guest-physical addresses. */
static struct kiln_hc_io hc_io;
static struct kiln_hc_exit hc_exit;

/* One KILN_HC_IO carrying all pending output. Returns bytes received. */
static uint64_t io_call(uint64_t in_gpa, uint64_t in_cap, uint64_t deadline,
                        uint32_t flags)
{
    memset(&hc_io, 0, sizeof(hc_io));
    hc_io.out_gpa = (uint64_t)(uintptr_t)out_buf;
    hc_io.out_len = out_len;
    hc_io.err_gpa = (uint64_t)(uintptr_t)err_buf;
    hc_io.err_len = err_len;
    hc_io.in_gpa = in_gpa;
    hc_io.in_cap = in_cap;
    hc_io.deadline_tsc = deadline;
    hc_io.flags = flags;
    arch_hypercall(KILN_HC_IO, &hc_io);
    out_len = err_len = 0;
    if (hc_io.in_eof)
        in_eof = 1;
    return hc_io.in_len > in_cap ? in_cap : hc_io.in_len;
}

static void buf_put(char *buf, uint64_t *len, const char *p, uint64_t n)
{
    while (n > 0) {
        if (*len == STDIO_BUF)
            io_call(0, 0, 0, 0);
        uint64_t k = STDIO_BUF - *len;
        if (k > n)
            k = n;
        memcpy(buf + *len, p, k);
        *len += k;
        p += k;
        n -= k;
    }
}

void stdio_write(int fd, const void *p, uint64_t n)
{
    if (fd == 1)
        buf_put(out_buf, &out_len, p, n);
    else
        buf_put(err_buf, &err_len, p, n);
}

void kputs(const char *s) { stdio_write(2, s, strlen(s)); }

/* Readers of fd 0 beyond the one the scheduler is filling, oldest first. */
static struct kwaitq readers;
static int reading;

int64_t stdio_read(void *p, uint64_t n)
{
    if (n == 0)
        return 0;
    while (reading && !in_eof)
        waitq_wait(&readers, 0);
    if (in_eof)
        return 0;
    /* Input arrives only through the scheduler's idle hypercall, so that a
     * serve function's response flush and its wait for the next request
     * stay one exit, and other threads run first. */
    reading = 1;
    int64_t r;
    do
        r = sched_wait_input((uint64_t)(uintptr_t)p, n);
    while (r == 0 && !in_eof);
    reading = 0;
    waitq_wake(&readers, in_eof ? KTHREAD_MAX : 1);
    return r;
}

uint64_t stdio_idle(uint64_t in_gpa, uint64_t in_cap, uint64_t deadline_tsc,
                    int *eof)
{
    uint64_t got = io_call(in_gpa, in_cap, deadline_tsc,
                           in_gpa ? KILN_IO_WAIT_INPUT : 0);
    *eof = in_eof;
    return got;
}

__attribute__((noreturn)) void kexit(uint32_t reason, int32_t status,
                                     uint32_t signo, const struct kfault *f)
{
    memset(&hc_exit, 0, sizeof(hc_exit));
    hc_exit.out_gpa = (uint64_t)(uintptr_t)out_buf;
    hc_exit.out_len = out_len;
    hc_exit.err_gpa = (uint64_t)(uintptr_t)err_buf;
    hc_exit.err_len = err_len;
    hc_exit.status = status;
    hc_exit.reason = reason;
    hc_exit.signo = signo;
    if (f) {
        hc_exit.fault_vector = (uint32_t)f->vector;
        hc_exit.fault_rip = f->regs.rip;
        hc_exit.fault_addr = f->cr2;
        hc_exit.fault_error = f->error;
    }
    ksys_fill_stats(&hc_exit);
    hc_exit.ring0_entries = arch_ring0_entries();
    /* KILN_HC_EXIT never returns; if a broken VMM resumes us anyway, ask
     * again rather than run on. */
    for (;;)
        arch_hypercall(KILN_HC_EXIT, &hc_exit);
}
