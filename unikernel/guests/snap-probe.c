/* snap-probe — a serve function for the snapshot tests: each answer names
 * what a restored clone must not share with its siblings (getrandom
 * output), what it must get from the host (the wall clock), and what it
 * must keep from the snapshot (the init marker, the request count, the
 * monotonic clock). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include "kiln.h"

static unsigned long inits, served;
static char out[256];

static long long ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int probe(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)req;
    (void)arg;
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        return 1;
    served++;
    int n = snprintf(out, sizeof out, "inits=%lu served=%lu wall=%lld mono=%lld rand=", inits, served,
                     ns(CLOCK_REALTIME), ns(CLOCK_MONOTONIC));
    for (size_t i = 0; i < sizeof r; i++)
        n += snprintf(out + n, sizeof out - n, "%02x", r[i]);
    resp->status = 200;
    resp->content_type = "text/plain";
    resp->body = out;
    resp->body_len = (size_t)n;
    return 0;
}

int main(void)
{
    /* Init work a snapshot saves: done once, before the first wait. */
    unsigned char warm[4096];
    if (getrandom(warm, sizeof warm, 0) != (ssize_t)sizeof warm)
        return 1;
    inits++;
    return kiln_serve(probe, NULL);
}
