/*
 * test_wire.c — sdk/c/kiln.h's wire framing: hand-built frames through the
 * parser, the encoder's output read back, a mutation fuzz under ASan, and
 * the native example (examples/hello-c, built with glibc and with musl)
 * answering frames written to its stdin through a pipe.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ktest.h"
#include "kiln.h"

/* A request frame: header + meta + body into out; returns its length. */
static size_t frame(char *out, uint8_t type, uint64_t id, const char *meta,
                    const char *body, size_t body_len)
{
    size_t ml = strlen(meta);
    memcpy(out, "KLN1", 4);
    out[4] = (char)type;
    out[5] = out[6] = out[7] = 0;
    for (int i = 0; i < 8; i++)
        out[8 + i] = (char)(id >> (8 * i));
    kiln__put32((unsigned char *)out + 16, (uint32_t)ml);
    kiln__put32((unsigned char *)out + 20, (uint32_t)body_len);
    memcpy(out + 24, meta, ml);
    memcpy(out + 24 + ml, body, body_len);
    return 24 + ml + body_len;
}

TEST(wire_parses_the_spec_example)
{
    /* docs/WIRE.md's example, byte for byte. */
    static const unsigned char hdr[24] = {0x4b, 0x4c, 0x4e, 0x31, 1, 0, 0, 0, 7, 0, 0, 0,
                                          0,    0,    0,    0,    0x23, 0, 0, 0, 5, 0, 0, 0};
    char buf[128];
    memcpy(buf, hdr, 24);
    memcpy(buf + 24, ":method: POST\n:path: /\n:query: x=1\nworld", 35 + 5);
    struct kiln_request req;
    size_t fl;
    const char *err = NULL;
    CHECK_EQ(kiln_parse_request(buf, 64, &req, &fl, &err), 1);
    CHECK_EQ(fl, 64);
    CHECK_EQ(req.id, 7);
    CHECK(!strcmp(req.method, "POST"));
    CHECK(!strcmp(req.path, "/"));
    CHECK(!strcmp(req.query, "x=1"));
    CHECK_EQ(req.body_len, 5);
    CHECK(!memcmp(req.body, "world", 5));
    CHECK_EQ(req.nheaders, 0);
    /* Every shorter prefix asks for more, and says how much once it can. */
    for (size_t n = 0; n < 64; n++) {
        char b2[128];
        memcpy(b2, hdr, 24);
        memcpy(b2 + 24, ":method: POST\n:path: /\n:query: x=1\nworld", 40);
        CHECK_EQ(kiln_parse_request(b2, n, &req, &fl, &err), 0);
        CHECK_EQ(fl, n >= 24 ? 64 : 0);
    }
}

TEST(wire_headers_last_line_and_defaults)
{
    char buf[256];
    size_t n = frame(buf, 1, 0x0102030405060708ULL,
                     "content-type: text/plain\nX-Trace: abc\nx-empty: \n:deadline: 1700000000123\nlast: v",
                     "BODY", 4);
    struct kiln_request req;
    size_t fl;
    const char *err;
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), 1);
    CHECK_EQ(req.id, 0x0102030405060708ULL);
    CHECK(!strcmp(req.method, ""));
    CHECK(!strcmp(req.path, "/"));
    CHECK(!strcmp(req.query, ""));
    CHECK_EQ(req.deadline_ms, 1700000000123LL);
    CHECK_EQ(req.nheaders, 4);
    CHECK(!strcmp(kiln_header_get(&req, "content-type"), "text/plain"));
    CHECK(!strcmp(kiln_header_get(&req, "x-trace"), "abc"));
    CHECK(!strcmp(kiln_header_get(&req, "X-EMPTY"), ""));
    CHECK(!strcmp(kiln_header_get(&req, "last"), "v"));
    CHECK(kiln_header_get(&req, "missing") == NULL);
    /* The body was not touched by the in-place termination. */
    CHECK(!memcmp(req.body, "BODY", 4));
}

TEST(wire_rejects_bad_frames)
{
    char buf[256];
    struct kiln_request req;
    size_t fl;
    const char *err;
    size_t n = frame(buf, 1, 1, ":path: /\n", "", 0);
    buf[0] = 'X';
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    CHECK(!strcmp(err, "bad magic"));
    n = frame(buf, 2, 1, ":path: /\n", "", 0);
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    n = frame(buf, 1, 1, ":path: /\n", "", 0);
    buf[5] = 1;
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    n = frame(buf, 1, 1, ":path: /\n", "", 0);
    buf[7] = 1;
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    n = frame(buf, 1, 1, "", "", 0);
    kiln__put32((unsigned char *)buf + 16, 65537);
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    n = frame(buf, 1, 1, "", "", 0);
    kiln__put32((unsigned char *)buf + 20, (64u << 20) + 1);
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    n = frame(buf, 1, 1, "no separator\n", "", 0);
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    n = frame(buf, 1, 1, ": empty name\n", "", 0);
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), -1);
    /* Limits themselves are fine: a header announcing them needs more. */
    n = frame(buf, 1, 1, "", "", 0);
    kiln__put32((unsigned char *)buf + 16, 65536);
    kiln__put32((unsigned char *)buf + 20, 64u << 20);
    CHECK_EQ(kiln_parse_request(buf, n, &req, &fl, &err), 0);
    CHECK_EQ(fl, 24 + 65536 + (64u << 20));
}

TEST(wire_encodes_responses)
{
    struct kiln_response r;
    memset(&r, 0, sizeof(r));
    kiln_respond_text(&r, 201, "made");
    kiln_header_add(&r, "x-a", "1");
    kiln_header_add(&r, "x-bad", "two\nlines"); /* dropped */
    char out[256];
    size_t n = kiln_encode_response(&r, 42, out, sizeof(out));
    const char *meta = ":status: 201\ncontent-type: text/plain\nx-a: 1\n";
    CHECK_EQ(n, 24 + strlen(meta));
    CHECK(!memcmp(out, "KLN1\x02\0\0\0", 8));
    CHECK_EQ(out[8], 42);
    CHECK_EQ(kiln__le32((unsigned char *)out + 16), strlen(meta));
    CHECK_EQ(kiln__le32((unsigned char *)out + 20), 4);
    CHECK(!memcmp(out + 24, meta, strlen(meta)));
    /* Too small a buffer: nothing written past it, the need reported. */
    char small[30];
    memset(small, 0x55, sizeof(small));
    CHECK_EQ(kiln_encode_response(&r, 42, small, 20), n);
    CHECK_EQ((unsigned char)small[20], 0x55);
    memset(&r, 0, sizeof(r));
    n = kiln_encode_response(&r, 1, out, sizeof(out));
    CHECK(!memcmp(out + 24, ":status: 200\n", 13) && n == 24 + 13);
}

TEST(wire_mutation_fuzz)
{
    char good[512];
    size_t gn = frame(good, 1, 9, ":method: GET\n:path: /a\nk: v\nz: last", "xyz", 3);
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int iter = 0; iter < 200000; iter++) {
        char *b = malloc(gn);
        memcpy(b, good, gn);
        int flips = 1 + (int)(x % 4);
        for (int k = 0; k < flips; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            b[x % gn] = (char)(x >> 32);
        }
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t len = (size_t)(x % (gn + 1));
        struct kiln_request req;
        size_t fl;
        const char *err;
        int r = kiln_parse_request(b, len, &req, &fl, &err);
        if (r == 1) {
            CHECK(fl <= len);
            CHECK(req.body + req.body_len <= b + len);
            for (size_t i = 0; i < req.nheaders; i++)
                CHECK(strlen(req.headers[i].name) + strlen(req.headers[i].value) < len);
        }
        free(b);
    }
}

/* Runs bin with stdin = in[0..n) and returns what it wrote to stdout. */
static size_t run_pipe(const char *bin, const char *in, size_t n, char *out, size_t cap,
                       int *status)
{
    int pin[2], pout[2];
    if (pipe(pin) || pipe(pout))
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        close(pin[1]);
        close(pout[0]);
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    signal(SIGPIPE, SIG_IGN);
    if (write(pin[1], in, n) != (ssize_t)n)
        fprintf(stderr, "short write to %s\n", bin);
    close(pin[1]);
    size_t got = 0;
    ssize_t r;
    while (got < cap && (r = read(pout[0], out + got, cap - got)) > 0)
        got += (size_t)r;
    close(pout[0]);
    waitpid(pid, status, 0);
    return got;
}

/* Checks one response frame at *p and moves past it. */
static void expect_response_n(const char **p, const char *end, uint64_t id, const char *body,
                              size_t body_len)
{
    const unsigned char *h = (const unsigned char *)*p;
    if (end - *p < 24) {
        CHECK(!"response frame missing");
        return;
    }
    CHECK(!memcmp(h, "KLN1\x02\0\0\0", 8));
    uint64_t got_id = 0;
    for (int i = 7; i >= 0; i--)
        got_id = got_id << 8 | h[8 + i];
    CHECK_EQ(got_id, id);
    uint32_t ml = kiln__le32(h + 16), bl = kiln__le32(h + 20);
    if ((size_t)(end - *p) < 24 + ml + bl) {
        CHECK(!"response frame truncated");
        return;
    }
    const char *meta = ":status: 200\ncontent-type: text/plain\n";
    CHECK_EQ(ml, strlen(meta));
    CHECK(!memcmp(*p + 24, meta, strlen(meta)));
    CHECK_EQ(bl, body_len);
    CHECK(bl == body_len && !memcmp(*p + 24 + ml, body, bl));
    *p += 24 + ml + bl;
}

static void expect_response(const char **p, const char *end, uint64_t id, const char *body)
{
    expect_response_n(p, end, id, body, strlen(body));
}

static void hello_over_pipe(const char *bin)
{
    static char in[4096], out[4096];
    size_t n = 0;
    n += frame(in + n, 1, 1, ":method: POST\n:path: /\n", "", 0);
    n += frame(in + n, 1, 2, ":method: POST\n:path: /\n:query: x=1\n", "kiln", 4);
    n += frame(in + n, 1, 0xffffffffffffffffULL, ":method: GET\n:path: /p\naccept: */*", "a\0b", 3);
    int status = -1;
    size_t got = run_pipe(bin, in, n, out, sizeof(out), &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *p = out, *end = out + got;
    expect_response(&p, end, 1, "hello, world");
    expect_response(&p, end, 2, "hello, kiln");
    expect_response_n(&p, end, 0xffffffffffffffffULL, "hello, a\0b", 10);
    CHECK(p == end);

    /* A bad frame after a good one: the good one is answered, then exit 2. */
    n = frame(in, 1, 5, ":path: /\n", "x", 1);
    memcpy(in + n, "GARBAGE-GARBAGE-GARBAGE-", 24);
    got = run_pipe(bin, in, n + 24, out, sizeof(out), &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    p = out;
    expect_response(&p, out + got, 5, "hello, x");
    /* Input ending inside a frame is a protocol error too. */
    n = frame(in, 1, 6, ":path: /\n", "xyz", 3);
    got = run_pipe(bin, in, n - 1, out, sizeof(out), &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2 && got == 0);
    /* No input at all: a clean exit. */
    got = run_pipe(bin, in, 0, out, sizeof(out), &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == 0);
}

TEST(hello_example_glibc_over_pipe) { hello_over_pipe(HELLO_GLIBC); }
TEST(hello_example_musl_over_pipe) { hello_over_pipe(HELLO_MUSL); }
