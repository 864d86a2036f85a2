/*
 * spin-after — a serve function that keeps burning CPU after it answered.
 * Each request's body picks what it does:
 *   "then-spin"  answers "answered, now spinning", makes sure the answer
 *                has left (a short sleep flushes the guest's stdout), and
 *                spins forever without reading again: parked idle, it
 *                burns a host core until someone stops it;
 *   "burn MS"    spins MS milliseconds, then answers "burned MS" and waits
 *                for the next request as it should (a call that is busy
 *                for a long time, whose CPU is the call's, not idle time);
 *   anything else answers "ok".
 */
#include <time.h>
#include <unistd.h>
#include "kiln.h"

static char out[64];

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int handle(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
    char body[32] = {0};
    memcpy(body, req->body, req->body_len < 31 ? req->body_len : 31);
    if (strcmp(body, "then-spin") == 0) {
        /* Answer by hand: kiln_serve would only send after returning. */
        static char meta[KILN_WIRE_HDR + 256];
        static const char text[] = "answered, now spinning";
        struct kiln_response r = {.status = 200, .body = text, .body_len = sizeof text - 1};
        size_t n = kiln_encode_response(&r, req->id, meta, sizeof meta);
        struct iovec iov[2] = {{meta, n}, {(void *)text, sizeof text - 1}};
        if (kiln__write_all(iov, 2) < 0)
            return 1;
        usleep(1000); /* a wait: the guest kernel flushes stdout */
        for (;;)
            __asm__ volatile("" ::: "memory");
    }
    if (strncmp(body, "burn ", 5) == 0) {
        long ms = strtol(body + 5, NULL, 10);
        long long end = now_ms() + ms;
        while (now_ms() < end)
            __asm__ volatile("" ::: "memory");
        snprintf(out, sizeof out, "burned %ld", ms);
        kiln_respond_text(resp, 200, out);
        return 0;
    }
    kiln_respond_text(resp, 200, "ok");
    return 0;
}

int main(void)
{
    return kiln_serve(handle, NULL);
}
