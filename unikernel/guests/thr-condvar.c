/*
 * thr-condvar: two threads pass a token back and forth through a mutex
 * and two condition variables, then a producer/consumer pair moves items
 * through a bounded queue. Every handover is a futex wait and wake.
 */
#include <pthread.h>
#include <stdint.h>
#include "guest.h"

#define ROUNDS 2000
#define ITEMS 5000
#define QCAP 8

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ping = PTHREAD_COND_INITIALIZER, pong = PTHREAD_COND_INITIALIZER;
static int turn; /* 0: main's turn, 1: the partner's */
static int volleys;

static void *partner(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&mu);
        while (turn != 1)
            pthread_cond_wait(&ping, &mu);
        volleys++;
        turn = 0;
        pthread_cond_signal(&pong);
        pthread_mutex_unlock(&mu);
    }
    return 0;
}

static struct {
    pthread_mutex_t mu;
    pthread_cond_t nonempty, nonfull;
    int buf[QCAP];
    int head, len;
} q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0};

static void *producer(void *arg)
{
    (void)arg;
    for (int i = 1; i <= ITEMS; i++) {
        pthread_mutex_lock(&q.mu);
        while (q.len == QCAP)
            pthread_cond_wait(&q.nonfull, &q.mu);
        q.buf[(q.head + q.len) % QCAP] = i;
        q.len++;
        pthread_cond_signal(&q.nonempty);
        pthread_mutex_unlock(&q.mu);
    }
    return 0;
}

int main(void)
{
    pthread_t t;
    EXPECT(pthread_create(&t, 0, partner, 0) == 0);
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&mu);
        volleys++;
        turn = 1;
        pthread_cond_signal(&ping);
        while (turn != 0)
            pthread_cond_wait(&pong, &mu);
        pthread_mutex_unlock(&mu);
    }
    EXPECT(pthread_join(t, 0) == 0);
    EXPECT(volleys == 2 * ROUNDS);
    printf("volleys=%d\n", volleys);

    EXPECT(pthread_create(&t, 0, producer, 0) == 0);
    long long sum = 0;
    int last = 0;
    for (int i = 0; i < ITEMS; i++) {
        pthread_mutex_lock(&q.mu);
        while (q.len == 0)
            pthread_cond_wait(&q.nonempty, &q.mu);
        int v = q.buf[q.head];
        q.head = (q.head + 1) % QCAP;
        q.len--;
        pthread_cond_signal(&q.nonfull);
        pthread_mutex_unlock(&q.mu);
        EXPECT(v == last + 1); /* FIFO, nothing lost or doubled */
        last = v;
        sum += v;
    }
    EXPECT(pthread_join(t, 0) == 0);
    EXPECT(sum == (long long)ITEMS * (ITEMS + 1) / 2);
    printf("items=%d sum=%lld\n", ITEMS, sum);
    printf("SUCCESS\n");
    return 0;
}
