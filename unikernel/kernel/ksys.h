/*
 * ksys.h — what the kernel-side parts of the library OS (stdio.c,
 * syscall.c, fault.c) share. Unlike libos.h these touch hypercalls and
 * global state, so host tests do not compile them.
 */
#ifndef KILN_KSYS_H
#define KILN_KSYS_H

#include "kernel.h"
#include "libos.h"

/* stdio.c */
void stdio_write(int fd, const void *p, uint64_t n); /* fd 1 or 2 */
int64_t stdio_read(void *p, uint64_t n);              /* fd 0 */
void stdio_sleep_until(uint64_t deadline_tsc);
void kputs(const char *s); /* to stderr, in order with the function's */
__attribute__((noreturn)) void kexit(uint32_t reason, int32_t status,
                                     uint32_t signo, const struct kfault *f);

/* syscall.c */
void ksys_fill_stats(struct kiln_hc_exit *e);

#endif /* KILN_KSYS_H */
