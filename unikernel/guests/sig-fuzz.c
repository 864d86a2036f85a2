/*
 * sig-fuzz — rt_sigreturn decodes a frame the program wrote, so this guest
 * feeds it random ones: a SIGUSR1 handler corrupts one part of its own
 * ucontext (FPU bytes, the fpstate pointer, MXCSR, the XSAVE header and
 * software bytes, RFLAGS, uc_flags, RIP, the mask, uc_stack) and returns.
 * Whatever the kernel makes of it — resume, or SIGSEGV/SIGFPE/SIGILL/SIGBUS
 * caught by handlers that siglongjmp back — the program must live on: a
 * kernel fault (panic) or a hang fails. argv[1] = iterations, argv[2] = seed,
 * argv[3] (any) logs each round's kind of corruption to stderr.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <ucontext.h>
#include <unistd.h>
#include "guest.h"

static uint64_t rng = 0x9e3779b97f4a7c15;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static sigjmp_buf jb;
static char altstack[1 << 16] __attribute__((aligned(16)));
static uint8_t junk[8192] __attribute__((aligned(64)));
static volatile uint64_t kinds[16];
static int verbose; /* argv[3]: each corruption's kind on stderr */
static volatile int last_kind = -1;
static const int fault_sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    (void)si, (void)ctx;
    siglongjmp(jb, sig);
}

static void corrupt(ucontext_t *uc)
{
    greg_t *g = uc->uc_mcontext.gregs;
    uint8_t *fp = (uint8_t *)uc->uc_mcontext.fpregs;
    uint32_t magic1 = 0, xsz = 0;
    size_t fpsize = 512;
    if (fp) {
        memcpy(&magic1, fp + 464, 4);
        memcpy(&xsz, fp + 480, 4);
        if (magic1 == 0x46505853U && xsz >= 576 && xsz < 16384)
            fpsize = xsz + 4;
    }
    int k = (int)(next() % 11);
    kinds[k]++;
    last_kind = k;
    if (verbose) {
        char line[] = "kind 00\n";
        line[5] = (char)('0' + k / 10);
        line[6] = (char)('0' + k % 10);
        write(2, line, sizeof(line) - 1);
    }
    switch (k) {
    case 0: /* random bytes in the legacy area, the XSAVE header and AVX:
             * the parts XRSTOR checks. Not beyond: a garbage PKRU (on CPUs
             * with PKU) makes Linux 6.1 unable to write the next frame. */
        for (int i = 0; fp && i < 16; i++)
            fp[next() % (fpsize < 832 ? fpsize : 832)] = (uint8_t)next();
        break;
    case 1: { /* the fpstate pointer itself */
        static const uintptr_t bad[] = {0, 8, 0x1000, 0x210000, 0x800000000000ULL,
                                        (uintptr_t)junk + 16, (uintptr_t)junk + 32,
                                        (uintptr_t)junk, (uintptr_t)junk + 64};
        for (size_t i = 0; i < sizeof(junk); i++)
            junk[i] = (uint8_t)next();
        if (next() & 1) /* sometimes a plausible copy, slightly wrong */
            memcpy(junk, fp, fpsize < sizeof(junk) ? fpsize : sizeof(junk));
        uintptr_t p = bad[next() % (sizeof(bad) / sizeof(bad[0]))];
        if (next() % 4 == 0)
            p = (uintptr_t)next();
        uc->uc_mcontext.fpregs = (void *)p;
        break;
    }
    case 2: { /* MXCSR */
        uint32_t m = (uint32_t)next();
        if (fp)
            memcpy(fp + 24, &m, 4);
        break;
    }
    case 3: /* the XSAVE header: XSTATE_BV, XCOMP_BV, reserved */
        if (fp && fpsize > 576) {
            uint64_t v = next() >> (next() % 64);
            memcpy(fp + 512 + 8 * (next() % 8), &v, 8);
        }
        break;
    case 4: /* fpx_sw_bytes and the trailing magic */
        if (fp) {
            uint32_t v = (next() & 1) ? (uint32_t)next() : (uint32_t)(xsz + (next() % 3) - 1);
            size_t off = (next() & 1) ? 464 + 4 * (next() % 6) : fpsize - 4;
            memcpy(fp + off, &v, 4);
        }
        break;
    case 5: /* RFLAGS, but not DF (C code after the return would run
             * backwards) nor AC (Linux sets CR0.AM: every unaligned access
             * after it, the handlers' included, would be #AC forever) */
        g[REG_EFL] = (greg_t)(next() & ~0x40400ULL);
        break;
    case 6:
        uc->uc_flags = next();
        break;
    case 7: { /* RIP: nowhere the program owns */
        static const uint64_t rips[] = {0, 0x1000, 0x800000000000ULL, 0xffff800000000000ULL,
                                        0x7fffffffffffULL, ~0ULL};
        g[REG_RIP] = (greg_t)rips[next() % (sizeof(rips) / sizeof(rips[0]))];
        break;
    }
    case 8: { /* the mask, sparing the signals this test relies on */
        uint64_t m = next();
        for (size_t i = 0; i < sizeof(fault_sigs) / sizeof(fault_sigs[0]); i++)
            m &= ~(1ULL << (fault_sigs[i] - 1));
        memcpy(&uc->uc_sigmask, &m, 8);
        break;
    }
    case 9: /* uc_stack */
        uc->uc_stack.ss_sp = (void *)(uintptr_t)next();
        uc->uc_stack.ss_size = next() % (1 << 20);
        uc->uc_stack.ss_flags = (int)next();
        break;
    case 10: /* every register but RIP, RSP, RFLAGS: all must come back */
        for (unsigned r = 0; r < NGREG; r++)
            if (r != REG_RIP && r != REG_RSP && r != REG_EFL && r != REG_CSGSFS)
                g[r] = (greg_t)next();
        break;
    }
}

static void on_usr1(int sig, siginfo_t *si, void *ctx)
{
    (void)sig, (void)si;
    corrupt(ctx);
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *), int flags)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    EXPECT(sigaction(sig, &sa, NULL) == 0);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long n = argc > 1 ? atol(argv[1]) : 2000;
    if (argc > 2)
        rng = strtoull(argv[2], NULL, 0) | 1;
    verbose = argc > 3;
    for (size_t i = 0; i < sizeof(fault_sigs) / sizeof(fault_sigs[0]); i++)
        handle(fault_sigs[i], on_fault, SA_ONSTACK | SA_NODEFER);
    handle(SIGUSR1, on_usr1, 0);
    sigset_t base;
    sigemptyset(&base);
    long resumed = 0, by_sig[32] = {0}, caught_by_kind[16] = {0};
    for (long i = 0; i < n; i++) {
        /* Undo what the last round may have left: FPU, mask, altstack. */
        __asm__ volatile("fninit");
        unsigned mx = 0x1f80;
        __asm__ volatile("ldmxcsr %0" ::"m"(mx));
        sigprocmask(SIG_SETMASK, &base, NULL);
        stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
        if (sigaltstack(&ss, NULL) != 0)
            ABORT("sigaltstack after round %ld: errno %d", i, errno);
        int s = sigsetjmp(jb, 1);
        if (s == 0) {
            raise(SIGUSR1);
            resumed++;
        } else {
            by_sig[s & 31]++;
            if (last_kind >= 0)
                caught_by_kind[last_kind]++;
        }
        last_kind = -1;
    }
    printf("%ld rounds: %ld resumed, SIGSEGV %ld, SIGFPE %ld, SIGILL %ld, SIGBUS %ld, SIGTRAP %ld\n",
           n, resumed, by_sig[SIGSEGV], by_sig[SIGFPE], by_sig[SIGILL], by_sig[SIGBUS],
           by_sig[SIGTRAP]);
    if (verbose)
        for (int k = 0; k < 11; k++)
            printf("kind %d: %lu rounds, %ld caught a signal\n", k, (unsigned long)kinds[k],
                   caught_by_kind[k]);
    EXPECT(resumed > 0 && by_sig[SIGSEGV] > 0);
    printf("SUCCESS\n");
    return 0;
}
