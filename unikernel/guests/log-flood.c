/*
 * log-flood — a serve function that logs far more than anyone keeps: each
 * request's body names how many MiB of numbered stderr lines to write
 * (default 16), "log-flood line NNNNNNNN\n", 24 bytes each; it then answers
 * "lines=N" with N the number of the last line. The agent keeps a 64 KiB
 * ring of each instance's stderr: the call must answer, carrying only the
 * newest lines.
 */
#include "kiln.h"

static char out[64];

static int handle(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
    char num[16] = {0};
    memcpy(num, req->body, req->body_len < 15 ? req->body_len : 15);
    unsigned long mib = strtoul(num, NULL, 10);
    if (mib == 0)
        mib = 16;
    unsigned long lines = (mib << 20) / 24, i;
    for (i = 1; i <= lines; i++)
        fprintf(stderr, "log-flood line %08lu\n", i);
    fflush(stderr);
    snprintf(out, sizeof out, "lines=%lu", lines);
    kiln_respond_text(resp, 200, out);
    return 0;
}

static char errbuf[64 << 10];

int main(void)
{
    /* Fully buffered: the flood is bytes reaching the host, not syscalls. */
    setvbuf(stderr, errbuf, _IOFBF, sizeof errbuf);
    return kiln_serve(handle, NULL);
}
