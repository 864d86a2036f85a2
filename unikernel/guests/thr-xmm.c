/*
 * thr-xmm: a thread's SSE (and, where the CPU has it, AVX) registers and
 * MXCSR survive a blocking syscall while other threads run and clobber
 * theirs. The registers are loaded and checked in assembly around the
 * syscall instruction itself, so nothing in C can hide a loss.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include "guest.h"

#define ROUNDS 50

static int have_avx;
static volatile int stop;

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245 + 12345;
        p[i] = (uint8_t)(seed >> 16);
    }
}

#define XMM_ALL "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
    "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

/* Load xmm0–15 from in, set MXCSR, nanosleep(ts), store them to out. */
static long sse_sleep(const uint8_t in[256], uint8_t out[256], uint32_t mxcsr,
                      uint32_t *mxcsr_out, const struct timespec *ts)
{
    long ret;
    __asm__ volatile(
        "ldmxcsr (%[mx])\n\t"
        "movdqu 0(%[in]), %%xmm0\n\t movdqu 16(%[in]), %%xmm1\n\t"
        "movdqu 32(%[in]), %%xmm2\n\t movdqu 48(%[in]), %%xmm3\n\t"
        "movdqu 64(%[in]), %%xmm4\n\t movdqu 80(%[in]), %%xmm5\n\t"
        "movdqu 96(%[in]), %%xmm6\n\t movdqu 112(%[in]), %%xmm7\n\t"
        "movdqu 128(%[in]), %%xmm8\n\t movdqu 144(%[in]), %%xmm9\n\t"
        "movdqu 160(%[in]), %%xmm10\n\t movdqu 176(%[in]), %%xmm11\n\t"
        "movdqu 192(%[in]), %%xmm12\n\t movdqu 208(%[in]), %%xmm13\n\t"
        "movdqu 224(%[in]), %%xmm14\n\t movdqu 240(%[in]), %%xmm15\n\t"
        "syscall\n\t"
        "movdqu %%xmm0, 0(%[out])\n\t movdqu %%xmm1, 16(%[out])\n\t"
        "movdqu %%xmm2, 32(%[out])\n\t movdqu %%xmm3, 48(%[out])\n\t"
        "movdqu %%xmm4, 64(%[out])\n\t movdqu %%xmm5, 80(%[out])\n\t"
        "movdqu %%xmm6, 96(%[out])\n\t movdqu %%xmm7, 112(%[out])\n\t"
        "movdqu %%xmm8, 128(%[out])\n\t movdqu %%xmm9, 144(%[out])\n\t"
        "movdqu %%xmm10, 160(%[out])\n\t movdqu %%xmm11, 176(%[out])\n\t"
        "movdqu %%xmm12, 192(%[out])\n\t movdqu %%xmm13, 208(%[out])\n\t"
        "movdqu %%xmm14, 224(%[out])\n\t movdqu %%xmm15, 240(%[out])\n\t"
        "stmxcsr (%[mxo])\n\t"
        : "=a"(ret)
        : "a"(SYS_nanosleep), "D"(ts), "S"(0), [in] "r"(in), [out] "r"(out),
          [mx] "r"(&mxcsr), [mxo] "r"(mxcsr_out)
        : "rcx", "r11", "memory", XMM_ALL);
    return ret;
}

/* The same with the upper halves of ymm0–7 too (AVX). */
static long avx_sleep(const uint8_t in[256], uint8_t out[256], const struct timespec *ts)
{
    long ret;
    __asm__ volatile(
        "vmovdqu 0(%[in]), %%ymm0\n\t vmovdqu 32(%[in]), %%ymm1\n\t"
        "vmovdqu 64(%[in]), %%ymm2\n\t vmovdqu 96(%[in]), %%ymm3\n\t"
        "vmovdqu 128(%[in]), %%ymm4\n\t vmovdqu 160(%[in]), %%ymm5\n\t"
        "vmovdqu 192(%[in]), %%ymm6\n\t vmovdqu 224(%[in]), %%ymm7\n\t"
        "syscall\n\t"
        "vmovdqu %%ymm0, 0(%[out])\n\t vmovdqu %%ymm1, 32(%[out])\n\t"
        "vmovdqu %%ymm2, 64(%[out])\n\t vmovdqu %%ymm3, 96(%[out])\n\t"
        "vmovdqu %%ymm4, 128(%[out])\n\t vmovdqu %%ymm5, 160(%[out])\n\t"
        "vmovdqu %%ymm6, 192(%[out])\n\t vmovdqu %%ymm7, 224(%[out])\n\t"
        "vzeroupper\n\t"
        : "=a"(ret)
        : "a"(SYS_nanosleep), "D"(ts), "S"(0), [in] "r"(in), [out] "r"(out)
        : "rcx", "r11", "memory", XMM_ALL);
    return ret;
}

/* Clobbers every vector register and MXCSR with its own values, yielding
 * between rounds so it runs while the checker sleeps. */
static void *clobber(void *arg)
{
    uint32_t seed = (uint32_t)(uintptr_t)arg;
    uint8_t junk[256], out[256];
    uint32_t mx;
    struct timespec none = {0, 0};
    while (!stop) {
        fill(junk, sizeof junk, seed++);
        if (have_avx)
            avx_sleep(junk, out, &none);
        sse_sleep(junk, out, 0x1f80 | (seed & 3) << 13, &mx, &none); /* rounding modes */
        sched_yield();
    }
    return 0;
}

int main(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_AVX) && (c & bit_OSXSAVE)) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        have_avx = (lo & 6) == 6;
    }
    fprintf(stderr, "avx=%d\n", have_avx); /* differs by CPU: not on stdout */
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        EXPECT(pthread_create(&th[i], 0, clobber, (void *)(uintptr_t)(1000 * (i + 1))) == 0);
    struct timespec ts = {0, 2000000};
    uint8_t in[256], out[256];
    for (int r = 0; r < ROUNDS; r++) {
        fill(in, sizeof in, 7 + r);
        uint32_t mx = 0x1f80 | 0x6000; /* round toward zero, all masked */
        uint32_t mxo = 0;
        EXPECT(sse_sleep(in, out, mx, &mxo, &ts) == 0);
        if (memcmp(in, out, sizeof in) != 0)
            ABORT("round %d: xmm registers changed across nanosleep", r);
        if ((mxo & ~0x3fu) != (mx & ~0x3fu)) /* flags may be set; controls not */
            ABORT("round %d: MXCSR %#x after nanosleep, want %#x", r, mxo, mx);
        if (have_avx) {
            EXPECT(avx_sleep(in, out, &ts) == 0);
            if (memcmp(in, out, sizeof in) != 0)
                ABORT("round %d: ymm registers changed across nanosleep", r);
        }
    }
    stop = 1;
    for (int i = 0; i < 2; i++)
        EXPECT(pthread_join(th[i], 0) == 0);
    printf("SUCCESS\n");
    return 0;
}
