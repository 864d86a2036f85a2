/*
 * ksys.h — what the kernel-side parts of the library OS share. Unlike
 * libos.h these touch hypercalls and global state, so host tests do not
 * compile them.
 *
 * The library OS is split by responsibility, one file (or two) each:
 *   syscall.c   the dispatcher, tracing, -ENOSYS counting, and the small
 *               calls that belong nowhere else (time, identity, limits,
 *               getrandom, arch_prctl)
 *   vmem.c      the address space (pure; host-tested) and vmemsys.c its
 *               syscalls, page tables and demand paging
 *   sched.c     threads, the cooperative scheduler, futex, sleeping
 *   stdio.c     fds 0–2 as hypercalls, and every way out of the VM
 *   fd.c        the fd table: stdio, pipes, eventfd, epoll
 *   signal.c    signal dispositions, masks, alternate stacks, frames
 *   fault.c     what an exception becomes: a demand page, a signal, an end
 * Each area answers its own syscalls through an xxx_syscall function that
 * returns 1 (and sets *ret) for the numbers it owns, 0 for the others.
 */
#ifndef KILN_KSYS_H
#define KILN_KSYS_H

#include "kernel.h"
#include "libos.h"

/* ---- syscall.c ---- */

extern const struct kiln_boot_info *kiln_bi;
extern struct vmem kiln_vm; /* the function's address space */

/* Whether the function may hand the kernel [p, p+n) (see vmem_valid). */
#define UVALID(p, n) vmem_valid(&kiln_vm, (uint64_t)(p), (uint64_t)(n))
#define UPTR(x) ((void *)(uintptr_t)(x))

void ksys_fill_stats(struct kiln_hc_exit *e);
/* Nanoseconds on clock clk (Linux CLOCK_* numbering) now. */
uint64_t clock_ns(uint64_t clk);
/* TSC value at which clock clk reads abs_ns (saturating; 1 if past). */
uint64_t clock_deadline_tsc(uint64_t clk, uint64_t abs_ns);

struct ktimespec {
    int64_t sec, nsec;
};
/* Read a user timespec into nanoseconds: 0, -EFAULT or -EINVAL. */
int64_t read_timespec(uint64_t p, uint64_t *ns);

/* ---- stdio.c: fds 0–2 and the hypercalls ---- */

void stdio_write(int fd, const void *p, uint64_t n); /* fd 1 or 2 */
/* Read fd 0 into the function's buffer: blocks the calling thread (other
 * threads run) until input or EOF arrives. */
int64_t stdio_read(void *p, uint64_t n);
void kputs(const char *s); /* to stderr, in order with the function's */
__attribute__((noreturn)) void kexit(uint32_t reason, int32_t status,
                                     uint32_t signo, const struct kfault *f);
/* The idle hypercall of the scheduler: flush output and wait in the VMM
 * until deadline_tsc (0 = none) or, if in_gpa != 0, until input lands in
 * [in_gpa, in_gpa+in_cap). Returns the bytes received; sets *eof. */
uint64_t stdio_idle(uint64_t in_gpa, uint64_t in_cap, uint64_t deadline_tsc,
                    int *eof);

/* ---- sched.c: threads and the cooperative scheduler ---- */

#define KTHREAD_MAX 64

struct kwaitq;

/*
 * One thread. sched.c owns the scheduling fields; signal.c owns the signal
 * fields. Thread 1 is the initial thread (tid 1 = pid 1).
 */
struct kthread {
    int32_t tid;
    int32_t state;          /* sched.c */
    uint64_t ksp;           /* saved kernel RSP while switched out */
    uint64_t kstack_top;
    uint64_t fs;            /* FS base (arch_prctl / CLONE_SETTLS) */
    uint64_t clear_tid;     /* set_tid_address / CLONE_CHILD_CLEARTID */
    uint64_t deadline;      /* TSC deadline while blocked, 0 = none */
    int32_t timed_out;
    uint32_t wait_bitset;   /* futex bitset while in a futex wait */
    uint64_t wait_key;      /* futex address while in a futex wait */
    struct kwaitq *waitq;   /* the queue it sleeps on, if any */
    struct kthread *wq_next;
    void *fpu;              /* XSAVE area while switched out */
    /* signal.c */
    uint64_t sigmask;
    uint64_t sigpending;
    uint64_t altstack_sp, altstack_size;
    int32_t altstack_flags;
};

/* A FIFO of blocked threads. Zero-initialised is empty. */
struct kwaitq {
    struct kthread *head, *tail;
};

void sched_init(void);
struct kthread *sched_current(void);
/* Block the current thread on q until waitq_wake or deadline_tsc (0 =
 * none); other threads run meanwhile, and when none can, the vCPU idles
 * in the VMM. Returns 0 if woken, -ETIMEDOUT if the deadline passed. */
int64_t waitq_wait(struct kwaitq *q, uint64_t deadline_tsc);
/* Wake up to n threads of q (oldest first); returns how many. */
int waitq_wake(struct kwaitq *q, int n);
/* Let every other runnable thread run once (sched_yield). */
void sched_yield(void);
/* Sleep the current thread until the TSC reaches deadline_tsc. */
void sched_sleep_until(uint64_t deadline_tsc);
/* Block the current thread as THE stdin reader until the scheduler's idle
 * hypercall lands input in the function's [p, p+n) (or part of it) or
 * input ends; returns the bytes received (0 = EOF) or -EFAULT/-ENOMEM.
 * One reader at a time: stdio_read queues the others. */
int64_t sched_wait_input(uint64_t p, uint64_t n);
int sched_syscall(uint64_t nr, const uint64_t *a, struct kframe *f, int64_t *ret);
/* The live thread with this tid, or NULL (tkill/tgkill to another thread).
 * signal.c has a weak stand-in that knows only the current thread. */
struct kthread *sched_thread(int tid);

/* ---- vmemsys.c: the address space's syscalls and page tables ---- */

void vmemsys_init(const struct kiln_boot_info *bi);
int vmem_syscall(uint64_t nr, const uint64_t *a, int64_t *ret);
/* A #PF at addr with x86 error code err: 1 if it was a page mapped on
 * demand (now present: resume), 0 if it is the program's fault (SIGSEGV),
 * -ENOMEM if the page is the program's but the memory limit is reached. */
int vmem_fault(uint64_t addr, uint64_t err);
/* Make [addr, addr+len) of the function's memory present and return the
 * guest-physical address of addr in *gpa and how many bytes from addr are
 * physically contiguous (≤ len, ≥ 1), for a hypercall to fill or read in
 * place; -EFAULT or -ENOMEM. */
int64_t vmem_phys(uint64_t addr, uint64_t len, uint64_t *gpa);
/* A zeroed 2 MiB frame for the kernel's own use (thread stacks, FPU save
 * areas, pipe buffers), at an address valid in every thread; it counts
 * against the function's memory. NULL when memory is exhausted. */
void *kalloc_frame(void);
/* Memory the function uses and may use, in bytes (for the exit report). */
uint64_t vmem_used_bytes(void);
uint64_t vmem_limit_bytes(void);
/* The most memory the function ever used, in bytes (for the exit report). */
uint64_t vmem_peak_bytes(void);

/* ---- fd.c: the fd table ---- */

void fd_init(void);
/* Whether fd is open. */
int fd_valid(int64_t fd);
int fd_syscall(uint64_t nr, const uint64_t *a, int64_t *ret);

/* ---- signal.c ---- */

void signal_init(void);
int signal_syscall(uint64_t nr, const uint64_t *a, struct kframe *f, int64_t *ret);
/* A synchronous fault the program may handle: if a handler is installed and
 * the signal is not blocked, build the rt_sigframe, rewrite f->regs to
 * enter the handler and return 1; else 0. si_code and si_addr as Linux. */
int signal_deliver_fault(struct kfault *f, int signo, int code, uint64_t addr);
/* Called at the end of every syscall: deliver a pending unblocked signal
 * with a handler by rewriting f to enter it. */
void signal_on_return(struct kframe *f);

#endif /* KILN_KSYS_H */
