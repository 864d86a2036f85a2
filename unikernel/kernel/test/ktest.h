/*
 * ktest.h — the smallest test runner that does the job: CHECK records a
 * failure with its line and carries on, TEST registers a function, main()
 * (in ktest.c) runs them all and prints "N passed, M failed".
 */
#ifndef KTEST_H
#define KTEST_H

#include <stdio.h>

extern int ktest_failed_checks;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            ktest_failed_checks++;                                             \
        }                                                                      \
    } while (0)

#define CHECK_EQ(a, b)                                                         \
    do {                                                                       \
        long long _a = (long long)(a), _b = (long long)(b);                    \
        if (_a != _b) {                                                        \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld (0x%llx), "     \
                    "want %s = %lld (0x%llx)\n", __FILE__, __LINE__, #a, _a,    \
                    (unsigned long long)_a, #b, _b, (unsigned long long)_b);   \
            ktest_failed_checks++;                                             \
        }                                                                      \
    } while (0)

struct ktest {
    const char *name;
    void (*fn)(void);
};

void ktest_register(const char *name, void (*fn)(void));

#define TEST(name)                                                             \
    static void name(void);                                                    \
    __attribute__((constructor)) static void reg_##name(void)                  \
    {                                                                          \
        ktest_register(#name, name);                                           \
    }                                                                          \
    static void name(void)

#endif
