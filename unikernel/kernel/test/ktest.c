/* ktest.c — runs every TEST and reports; exit status 1 if any failed. */
#include <stdlib.h>
#include <string.h>
#include "ktest.h"

int ktest_failed_checks;
static struct ktest tests[256];
static int ntests;

void ktest_register(const char *name, void (*fn)(void))
{
    if (ntests == 256)
        abort();
    tests[ntests].name = name;
    tests[ntests].fn = fn;
    ntests++;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < ntests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1]))
            continue;
        int before = ktest_failed_checks;
        tests[i].fn();
        if (ktest_failed_checks == before) {
            passed++;
        } else {
            failed++;
            fprintf(stderr, "FAIL %s\n", tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
