/*
 * hello — the C example serve function: answers "hello, <body>" (or
 * "hello, world" for an empty body) as text/plain with status 200, and logs
 * one line per request to stderr, which the platform keeps as the
 * function's log.
 */
#include <stdio.h>
#include <stdlib.h>
#include "kiln.h"

static int hello(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    static char *out;
    static size_t out_cap;
    (void)arg;
    const char *who = req->body_len ? req->body : "world";
    size_t who_len = req->body_len ? req->body_len : 5;
    size_t need = 7 + who_len;
    if (need > out_cap) {
        char *p = realloc(out, need);
        if (!p)
            return -1;
        out = p;
        out_cap = need;
    }
    memcpy(out, "hello, ", 7);
    memcpy(out + 7, who, who_len);
    resp->status = 200;
    resp->content_type = "text/plain";
    resp->body = out;
    resp->body_len = need;
    fprintf(stderr, "hello: id=%llu %s %s%s%s body=%zu bytes\n", (unsigned long long)req->id,
            req->method, req->path, req->query[0] ? "?" : "", req->query, req->body_len);
    return 0;
}

int main(void)
{
    return kiln_serve(hello, NULL);
}
