/*
 * out-flood — far more output than a response may carry.
 *
 * exec (no argument, or "exec MiB"): writes MiB (default 96) of stdout in
 * 64 KiB writes, past the agent's cap on an exec call's stdout
 * (wire.MaxBody, 64 MiB), and reports on stderr how much it wrote.
 *
 * serve ("serve"): a serve function that answers each request with a
 * response frame whose header announces a body of 80 MiB (past the wire
 * protocol's limit) and then writes it; the body "ok" gets an ordinary
 * answer. The SDK would refuse to send such a frame: this guest writes the
 * bytes itself.
 */
#include <stdint.h>
#include <unistd.h>
#include "guest.h"
#include "kiln.h"

static char chunk[64 << 10];

static void write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w <= 0)
            exit(3); /* the reader went away */
        c += w;
        n -= (size_t)w;
    }
}

static int flood(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
    if (req->body_len == 2 && memcmp(req->body, "ok", 2) == 0) {
        kiln_respond_text(resp, 200, "ok");
        return 0;
    }
    static char hdr[KILN_WIRE_HDR + 64];
    struct kiln_response big = {.status = 200, .body_len = 80u << 20};
    size_t n = kiln_encode_response(&big, req->id, hdr, sizeof hdr);
    write_all(1, hdr, n);
    for (size_t done = 0; done < big.body_len; done += sizeof chunk)
        write_all(1, chunk, sizeof chunk);
    fprintf(stderr, "out-flood: sent a frame with an 80 MiB body\n");
    kiln_respond_text(resp, 200, "after the flood");
    return 0;
}

int main(int argc, char **argv)
{
    memset(chunk, 'o', sizeof chunk);
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return kiln_serve(flood, NULL);
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 96;
    size_t n = 0;
    for (; n < mib << 20; n += sizeof chunk)
        write_all(1, chunk, sizeof chunk);
    fprintf(stderr, "out-flood: wrote %zu bytes of stdout\n", n);
    return 0;
}
