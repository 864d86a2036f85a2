/*
 * discard-storm — an ordinary program that gives memory back page by page:
 * it fills a region, then frees every other 4 KiB page of it with
 * madvise(MADV_DONTNEED), one call per page (51,200 calls for 400 MiB),
 * each a KILN_HC_DISCARD of one page. On a VM restored from a snapshot
 * that once split the host's mapping of guest RAM once per call until the
 * worker process ran out of mappings (issue 13).
 *
 * argv[1] is the region in MiB; argv[2] says when it is filled: "post"
 * after the first read of stdin (the snapshot point: the region is zero in
 * the snapshot), "pre" before it (the snapshot holds it, non-zero). Lines
 * on stdin pace it, so a test can look at the host between the steps:
 *   read 1 (the snapshot point) → fill if post → "filled"  → read 2
 *   → the storm, then every page checked → "SUCCESS discards=N storm_us=T"
 *   → read until EOF → exit 0.
 */
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

#define PAGE 4096UL

static char line[256];

static void wait_line(void)
{
    EXPECT(read(0, line, sizeof line) > 0);
}

static void fill(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += PAGE)
        memset(p + i, (int)(0x40 | (i / PAGE % 64)), PAGE);
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 3)
        ABORT("usage: discard-storm MiB pre|post");
    size_t n = strtoul(argv[1], NULL, 10) << 20;
    int pre = strcmp(argv[2], "pre") == 0;
    unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(p != MAP_FAILED);
    if (pre)
        fill(p, n);
    wait_line();
    if (!pre)
        fill(p, n);
    printf("filled\n");
    wait_line();

    long long t0 = now_us();
    unsigned long calls = 0;
    for (size_t i = 0; i < n; i += 2 * PAGE, calls++)
        EXPECT(madvise(p + i, PAGE, MADV_DONTNEED) == 0);
    long long t1 = now_us();
    /* A freed page reads zero (fresh memory); its neighbour kept its bytes. */
    for (size_t i = 0; i < n; i += PAGE) {
        int want = (i / PAGE) % 2 ? (int)(0x40 | (i / PAGE % 64)) : 0;
        for (size_t j = 0; j < PAGE; j += 512)
            if (p[i + j] != want)
                ABORT("page %zu byte %zu is %#x, want %#x", i / PAGE, j, p[i + j], want);
    }
    printf("SUCCESS discards=%lu storm_us=%lld\n", calls, t1 - t0);
    while (read(0, line, sizeof line) > 0)
        ;
    return 0;
}
