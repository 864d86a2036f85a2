/* echo-serve — a serve function on sdk/c: answers every request with its
 * own body, status 200. */
#include "kiln.h"

static int echo(const struct kiln_request *req, struct kiln_response *resp, void *arg)
{
    (void)arg;
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
