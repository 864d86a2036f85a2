/*
 * kfmt.c — the handful of formats the kernel prints (fault reasons, the
 * syscall trace, panics): strings, hex and decimal into a fixed buffer.
 */
#include "libos.h"

void kb_mem(struct kbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n && b->len < b->cap; i++)
        b->p[b->len++] = s[i];
}

void kb_str(struct kbuf *b, const char *s) { kb_mem(b, s, strlen(s)); }

void kb_hex(struct kbuf *b, uint64_t v)
{
    char t[18];
    int i = 18;
    do {
        t[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    t[--i] = 'x';
    t[--i] = '0';
    kb_mem(b, t + i, (size_t)(18 - i));
}

void kb_udec(struct kbuf *b, uint64_t v)
{
    char t[20];
    int i = 20;
    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    kb_mem(b, t + i, (size_t)(20 - i));
}

void kb_dec(struct kbuf *b, int64_t v)
{
    if (v < 0) {
        kb_mem(b, "-", 1);
        kb_udec(b, (uint64_t)0 - (uint64_t)v);
    } else {
        kb_udec(b, (uint64_t)v);
    }
}
