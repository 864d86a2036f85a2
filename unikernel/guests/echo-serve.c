/* echo-serve — a serve function on sdk/c: answers every request with its
 * own body, status 200; the body "spin" makes it loop forever instead (a
 * hostile or buggy function, for timeout tests). */
#include "kiln.h"

static int echo(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
    if (req->body_len == 4 && __builtin_memcmp(req->body, "spin", 4) == 0)
        for (;;)
            __asm__ volatile("" ::: "memory");
    resp->status = 200;
    resp->content_type = "application/octet-stream";
    resp->body = req->body;
    resp->body_len = req->body_len;
    return 0;
}

int main(void)
{
    return kiln_serve(echo, NULL);
}
