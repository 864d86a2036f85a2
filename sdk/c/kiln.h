/*
 * kiln.h — the Kiln C SDK: write a `serve` function in C99.
 *
 * A serve function reads request frames on fd 0 and writes one response
 * frame per request on fd 1 (Kiln wire protocol v1, docs/WIRE.md); fd 2 is
 * its log. kiln_serve() does the framing and calls your handler once per
 * request, so the same binary runs as a Kiln unikernel and as a plain
 * process fed by a pipe. Single header, no dependencies beyond POSIX
 * read/writev; works with musl and glibc.
 *
 *     #include <stdio.h>
 *     #include "kiln.h"
 *
 *     static int handle(const struct kiln_request *req,
 *                       struct kiln_response *resp, void *arg)
 *     {
 *         fprintf(stderr, "%s %s (%zu bytes)\n", req->method, req->path,
 *                 req->body_len);
 *         kiln_respond_text(resp, 200, "hello\n");
 *         return 0;                   // non-zero: the caller gets a 500
 *     }
 *
 *     int main(void) { return kiln_serve(handle, NULL); }
 *
 * Lifetimes: everything in a kiln_request (strings, headers, body) lives in
 * the SDK's input buffer and is valid only during the handler call. What
 * the handler puts in the response must stay valid until it returns
 * (static storage, or memory it keeps); kiln_serve writes the frame right
 * after the handler returns.
 *
 * Costs inside a Kiln VM: the response is written with one writev and the
 * next request is read only when no complete frame is buffered, so one
 * invocation is one VM exit (the guest kernel sends the buffered response
 * together with the wait for the next request).
 *
 * Errors: a malformed input frame (bad magic, unknown type, non-zero flags,
 * a length over the limits, metadata without ": ") is a protocol error: a
 * message on stderr and exit(2), as docs/WIRE.md prescribes (no
 * resynchronisation). End of input between frames returns 0.
 */
#ifndef KILN_SDK_H
#define KILN_SDK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/uio.h>

#define KILN_WIRE_HDR 24
#define KILN_WIRE_MAX_META 65536u
#define KILN_WIRE_MAX_BODY (64u << 20)
#define KILN_WIRE_REQUEST 1
#define KILN_WIRE_RESPONSE 2
/* Headers beyond this many are dropped from kiln_request.headers. */
#define KILN_MAX_HEADERS 128

struct kiln_header {
    const char *name;  /* lower-case, NUL-terminated */
    const char *value; /* NUL-terminated */
};

struct kiln_request {
    uint64_t id;
    const char *method;  /* "POST", "GET", ...; "" if the platform sent none */
    const char *path;    /* "/" if none */
    const char *query;   /* raw, without '?'; "" if none */
    int64_t deadline_ms; /* Unix ms by which the caller wants an answer; 0: none */
    size_t nheaders;
    struct kiln_header headers[KILN_MAX_HEADERS];
    const char *body; /* body_len bytes, not NUL-terminated */
    size_t body_len;
};

struct kiln_response {
    int status;               /* 0 means 200; outside 100–599 means 500 */
    const char *content_type; /* NULL: none */
    size_t nheaders;          /* extra headers; values must not hold '\n' */
    struct kiln_header headers[KILN_MAX_HEADERS];
    const void *body;
    size_t body_len;
};

/* Returns 0 on success; anything else answers 500. */
typedef int (*kiln_handler)(const struct kiln_request *req,
                            struct kiln_response *resp, void *arg);

/* ---- helpers ---- */

static inline void kiln_respond_text(struct kiln_response *resp, int status,
                                     const char *text)
{
    resp->status = status;
    resp->content_type = "text/plain";
    resp->body = text;
    resp->body_len = strlen(text);
}

/* Adds an extra response header; returns -1 when the table is full. */
static inline int kiln_header_add(struct kiln_response *resp, const char *name,
                                  const char *value)
{
    if (resp->nheaders >= KILN_MAX_HEADERS)
        return -1;
    resp->headers[resp->nheaders].name = name;
    resp->headers[resp->nheaders].value = value;
    resp->nheaders++;
    return 0;
}

static inline int kiln__lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* The value of the first request header called name (ASCII
 * case-insensitive), or NULL. */
static inline const char *kiln_header_get(const struct kiln_request *req,
                                          const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const char *a = req->headers[i].name, *b = name;
        while (*a && kiln__lower((unsigned char)*a) == kiln__lower((unsigned char)*b))
            a++, b++;
        if (*a == 0 && *b == 0)
            return req->headers[i].value;
    }
    return NULL;
}

/* ---- wire framing (public so tests and other loops can use it) ---- */

static inline uint32_t kiln__le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline void kiln__put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/*
 * kiln_parse_request parses the frame at the start of buf[0..len). It
 * returns 1 and fills req and *frame_len when a whole request frame is
 * there, 0 when more bytes are needed (*frame_len then says how many the
 * whole frame takes, once the header is in), or -1 with *err set on a
 * protocol error. The metadata is NUL-terminated in place, so buf must be
 * writable; req points into it.
 */
static inline int kiln_parse_request(char *buf, size_t len,
                                     struct kiln_request *req,
                                     size_t *frame_len, const char **err)
{
    const unsigned char *h = (const unsigned char *)buf;
    *frame_len = 0;
    if (len >= 4 && memcmp(h, "KLN1", 4) != 0) {
        *err = "bad magic";
        return -1;
    }
    if (len < KILN_WIRE_HDR)
        return 0;
    if (h[4] != KILN_WIRE_REQUEST) {
        *err = "not a request frame";
        return -1;
    }
    if (h[5] != 0 || h[6] != 0 || h[7] != 0) {
        *err = "non-zero flags or reserved bytes";
        return -1;
    }
    uint32_t meta_len = kiln__le32(h + 16), body_len = kiln__le32(h + 20);
    if (meta_len > KILN_WIRE_MAX_META) {
        *err = "metadata too long";
        return -1;
    }
    if (body_len > KILN_WIRE_MAX_BODY) {
        *err = "body too long";
        return -1;
    }
    size_t total = KILN_WIRE_HDR + (size_t)meta_len + body_len;
    *frame_len = total;
    if (len < total)
        return 0;

    memset(req, 0, sizeof(*req));
    uint64_t id = 0;
    for (int i = 7; i >= 0; i--)
        id = id << 8 | h[8 + i];
    req->id = id;
    req->method = "";
    req->path = "/";
    req->query = "";
    char *m = buf + KILN_WIRE_HDR, *end = m + meta_len;
    /* Each line becomes "name\0value\0" in place. The byte after the meta
     * (the body's first byte) is never written: a final line without '\n'
     * ends at end. */
    while (m < end) {
        char *nl = memchr(m, '\n', (size_t)(end - m));
        char *line_end = nl ? nl : end;
        char *sep = NULL;
        for (char *p = m; p + 1 < line_end; p++)
            if (p[0] == ':' && p[1] == ' ' && p != m) {
                sep = p;
                break;
            }
        if (line_end == m) { /* tolerate an empty line */
            m = line_end + 1;
            continue;
        }
        if (!sep) {
            *err = "metadata entry without \": \"";
            return -1;
        }
        if (!nl) {
            /* Terminate the last value without touching the body: move
             * the line one byte back over its separator's space. */
            memmove(sep + 1, sep + 2, (size_t)(line_end - (sep + 2)));
            line_end[-1] = 0;
            *sep = 0;
            sep--; /* so value = sep + 2 below points at the moved value */
        } else {
            *nl = 0;
            *sep = 0;
        }
        const char *name = m, *value = sep + 2;
        if (!strcmp(name, ":method"))
            req->method = value;
        else if (!strcmp(name, ":path"))
            req->path = value;
        else if (!strcmp(name, ":query"))
            req->query = value;
        else if (!strcmp(name, ":deadline"))
            req->deadline_ms = strtoll(value, NULL, 10);
        else if (name[0] != ':' && req->nheaders < KILN_MAX_HEADERS) {
            req->headers[req->nheaders].name = name;
            req->headers[req->nheaders].value = value;
            req->nheaders++;
        }
        m = line_end + 1;
    }
    req->body = buf + KILN_WIRE_HDR + meta_len;
    req->body_len = body_len;
    return 1;
}

static inline size_t kiln__append(char *out, size_t off, size_t cap,
                                  const char *s)
{
    size_t n = strlen(s);
    if (off + n <= cap)
        memcpy(out + off, s, n);
    return off + n;
}

/*
 * kiln_encode_response writes the 24-byte header and the metadata of the
 * response to request id into out[0..cap) and returns their total length
 * (the body follows separately). A result above cap means out was too
 * small; a header whose name or value holds '\n' is left out.
 */
static inline size_t kiln_encode_response(const struct kiln_response *resp,
                                          uint64_t id, char *out, size_t cap)
{
    char num[16];
    int status = resp->status ? resp->status : 200;
    if (status < 100 || status > 599)
        status = 500;
    snprintf(num, sizeof(num), "%d", status);
    size_t off = KILN_WIRE_HDR;
    off = kiln__append(out, off, cap, ":status: ");
    off = kiln__append(out, off, cap, num);
    off = kiln__append(out, off, cap, "\n");
    if (resp->content_type && !strchr(resp->content_type, '\n')) {
        off = kiln__append(out, off, cap, "content-type: ");
        off = kiln__append(out, off, cap, resp->content_type);
        off = kiln__append(out, off, cap, "\n");
    }
    for (size_t i = 0; i < resp->nheaders && i < KILN_MAX_HEADERS; i++) {
        const char *n = resp->headers[i].name, *v = resp->headers[i].value;
        if (!n || !v || !*n || strchr(n, '\n') || strchr(v, '\n') || strstr(n, ": "))
            continue;
        off = kiln__append(out, off, cap, n);
        off = kiln__append(out, off, cap, ": ");
        off = kiln__append(out, off, cap, v);
        off = kiln__append(out, off, cap, "\n");
    }
    if (cap >= KILN_WIRE_HDR) {
        unsigned char *h = (unsigned char *)out;
        memcpy(h, "KLN1", 4);
        h[4] = KILN_WIRE_RESPONSE;
        h[5] = h[6] = h[7] = 0;
        for (int i = 0; i < 8; i++)
            h[8 + i] = (unsigned char)(id >> (8 * i));
        kiln__put32(h + 16, (uint32_t)(off - KILN_WIRE_HDR));
        kiln__put32(h + 20, (uint32_t)resp->body_len);
    }
    return off;
}

/* ---- the serve loop ---- */

static inline int kiln__write_all(struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(1, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static inline void kiln__protocol_error(const char *why)
{
    fprintf(stderr, "kiln: wire protocol error on stdin: %s\n", why);
    exit(2);
}

/*
 * kiln_serve answers requests from fd 0 with fn until fd 0 ends, then
 * returns 0. It returns 1 if fd 1 fails or memory runs out; it exits with
 * status 2 on a malformed request frame.
 */
static inline int kiln_serve(kiln_handler fn, void *arg)
{
    static char meta_out[KILN_WIRE_HDR + KILN_WIRE_MAX_META];
    size_t cap = 256 * 1024, len = 0;
    char *buf = malloc(cap);
    struct kiln_request *req = malloc(sizeof(*req));
    struct kiln_response *resp = malloc(sizeof(*resp));
    if (!buf || !req || !resp) {
        fprintf(stderr, "kiln: out of memory\n");
        return 1;
    }
    for (;;) {
        size_t flen = 0;
        const char *err = NULL;
        int r = kiln_parse_request(buf, len, req, &flen, &err);
        if (r < 0)
            kiln__protocol_error(err);
        if (r == 0) {
            if (flen > cap) {
                char *nb = realloc(buf, flen);
                if (!nb) {
                    fprintf(stderr, "kiln: out of memory for a %zu-byte request\n", flen);
                    return 1;
                }
                buf = nb;
                cap = flen;
            }
            /* Reading only now, with the response already written, is
             * what makes a warm invocation one VM exit. */
            ssize_t n = read(0, buf + len, cap - len);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                fprintf(stderr, "kiln: read stdin: %s\n", strerror(errno));
                return 1;
            }
            if (n == 0) {
                if (len == 0)
                    return 0;
                kiln__protocol_error("input ended inside a frame");
            }
            len += (size_t)n;
            continue;
        }
        memset(resp, 0, sizeof(*resp));
        if (fn(req, resp, arg) != 0) {
            memset(resp, 0, sizeof(*resp));
            kiln_respond_text(resp, 500, "handler failed\n");
        }
        size_t mlen = kiln_encode_response(resp, req->id, meta_out, sizeof(meta_out));
        if (mlen > sizeof(meta_out) || resp->body_len > KILN_WIRE_MAX_BODY) {
            fprintf(stderr, "kiln: response too large (meta %zu, body %zu bytes)\n",
                    mlen - KILN_WIRE_HDR, resp->body_len);
            memset(resp, 0, sizeof(*resp));
            kiln_respond_text(resp, 500, "response too large\n");
            mlen = kiln_encode_response(resp, req->id, meta_out, sizeof(meta_out));
        }
        struct iovec iov[2] = {{meta_out, mlen}, {(void *)resp->body, resp->body_len}};
        if (kiln__write_all(iov, resp->body_len ? 2 : 1) < 0) {
            fprintf(stderr, "kiln: write stdout: %s\n", strerror(errno));
            return 1;
        }
        memmove(buf, buf + flen, len - flen);
        len -= flen;
    }
}

#endif /* KILN_SDK_H */
