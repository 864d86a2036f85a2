/*
 * chacha.c — ChaCha20 (RFC 8439) and the generator behind getrandom(2).
 * Seeded from the boot info's host entropy, which the VMM refreshes on
 * every snapshot restore, so clones never share a stream.
 */
#include "libos.h"

static uint32_t rotl(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

#define QR(a, b, c, d)                                                        \
    do {                                                                      \
        a += b; d ^= a; d = rotl(d, 16);                                      \
        c += d; b ^= c; b = rotl(b, 12);                                      \
        a += b; d ^= a; d = rotl(d, 8);                                       \
        c += d; b ^= c; b = rotl(b, 7);                                       \
    } while (0)

void chacha20_block(const uint32_t key[8], uint32_t counter,
                    const uint32_t nonce[3], uint8_t out[64])
{
    uint32_t in[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; i++)
        in[4 + i] = key[i];
    in[12] = counter;
    in[13] = nonce[0];
    in[14] = nonce[1];
    in[15] = nonce[2];
    uint32_t x[16];
    for (int i = 0; i < 16; i++)
        x[i] = in[i];
    for (int i = 0; i < 10; i++) {
        QR(x[0], x[4], x[8], x[12]);
        QR(x[1], x[5], x[9], x[13]);
        QR(x[2], x[6], x[10], x[14]);
        QR(x[3], x[7], x[11], x[15]);
        QR(x[0], x[5], x[10], x[15]);
        QR(x[1], x[6], x[11], x[12]);
        QR(x[2], x[7], x[8], x[13]);
        QR(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++) {
        uint32_t v = x[i] + in[i];
        out[4 * i + 0] = (uint8_t)v;
        out[4 * i + 1] = (uint8_t)(v >> 8);
        out[4 * i + 2] = (uint8_t)(v >> 16);
        out[4 * i + 3] = (uint8_t)(v >> 24);
    }
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

void csprng_seed(struct csprng *g, const uint8_t seed[32])
{
    for (int i = 0; i < 8; i++)
        g->key[i] = le32(seed + 4 * i);
    g->fills = 0;
}

void csprng_fill(struct csprng *g, uint8_t *out, size_t n)
{
    /* The nonce carries the fill count, so the 32-bit block counter only
     * has to cover one fill (getrandom caps a call well below 256 GiB). */
    uint32_t nonce[3] = {(uint32_t)g->fills, (uint32_t)(g->fills >> 32), 0};
    uint8_t block[64];
    g->fills++;
    chacha20_block(g->key, 0, nonce, block);
    uint32_t next[8];
    for (int i = 0; i < 8; i++)
        next[i] = le32(block + 4 * i);
    size_t off = 0;
    /* Output comes from block 0's second half, then blocks 1, 2, ... */
    size_t first = n < 32 ? n : 32;
    memcpy(out, block + 32, first);
    off = first;
    for (uint32_t ctr = 1; off < n; ctr++) {
        chacha20_block(g->key, ctr, nonce, block);
        size_t k = n - off < 64 ? n - off : 64;
        memcpy(out + off, block, k);
        off += k;
    }
    for (int i = 0; i < 8; i++)
        g->key[i] = next[i];
    memset(block, 0, sizeof(block));
}
