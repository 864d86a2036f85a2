/*
 * thr-stdin: three threads read stdin at once while a fourth ticks every
 * 10 ms. A blocked reader blocks only itself: the ticker keeps ticking
 * until input arrives (stderr reports how many ticks, and how many ms,
 * came first). Every
 * byte reaches exactly one reader, and EOF reaches all three.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static volatile int done, ticks, ticks_at_input = -1;
static struct timespec start, first_input;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t total, sum;

static void *ticker(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 10000000};
    while (!done) {
        nanosleep(&ts, 0);
        ticks++;
    }
    return 0;
}

static void *reader(void *arg)
{
    (void)arg;
    char buf[1000];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        pthread_mutex_lock(&mu);
        if (ticks_at_input < 0) {
            ticks_at_input = ticks;
            clock_gettime(CLOCK_MONOTONIC, &first_input);
        }
        total += (uint64_t)n;
        for (ssize_t i = 0; i < n; i++)
            sum += (uint8_t)buf[i];
        pthread_mutex_unlock(&mu);
    }
    EXPECT(n == 0);
    return 0;
}

int main(void)
{
    pthread_t tk, rd[3];
    clock_gettime(CLOCK_MONOTONIC, &start);
    EXPECT(pthread_create(&tk, 0, ticker, 0) == 0);
    for (int i = 0; i < 3; i++)
        EXPECT(pthread_create(&rd[i], 0, reader, 0) == 0);
    for (int i = 0; i < 3; i++)
        EXPECT(pthread_join(rd[i], 0) == 0);
    done = 1;
    EXPECT(pthread_join(tk, 0) == 0);
    char b[96];
    long ms = (first_input.tv_sec - start.tv_sec) * 1000 +
              (first_input.tv_nsec - start.tv_nsec) / 1000000;
    snprintf(b, sizeof b, "ticks_before_input=%d ms_before_input=%ld\n", ticks_at_input, ms);
    EXPECT(write(2, b, strlen(b)) > 0);
    printf("bytes=%llu sum=%llu\n", (unsigned long long)total, (unsigned long long)sum);
    printf("SUCCESS\n");
    return 0;
}
