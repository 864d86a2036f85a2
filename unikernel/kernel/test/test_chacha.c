/* test_chacha.c — ChaCha20 against RFC 8439 and the getrandom generator. */
#include <stdint.h>
#include <string.h>
#include "ktest.h"
#include "../libos.h"

TEST(chacha20_rfc8439_block)
{
    /* RFC 8439 section 2.3.2. */
    uint32_t key[8];
    uint8_t kb[32];
    for (int i = 0; i < 32; i++)
        kb[i] = (uint8_t)i;
    memcpy(key, kb, 32); /* little-endian host, as the kernel's */
    const uint32_t nonce[3] = {0x09000000, 0x4a000000, 0};
    static const uint8_t want[64] = {
        0x10, 0xf1, 0xe7, 0xe4, 0xd1, 0x3b, 0x59, 0x15, 0x50, 0x0f, 0xdd, 0x1f, 0xa3, 0x20, 0x71, 0xc4,
        0xc7, 0xd1, 0xf4, 0xc7, 0x33, 0xc0, 0x68, 0x03, 0x04, 0x22, 0xaa, 0x9a, 0xc3, 0xd4, 0x6c, 0x4e,
        0xd2, 0x82, 0x64, 0x46, 0x07, 0x9f, 0xaa, 0x09, 0x14, 0xc2, 0xd7, 0x05, 0xd9, 0x8b, 0x02, 0xa2,
        0xb5, 0x12, 0x9c, 0xd1, 0xde, 0x16, 0x4e, 0xb9, 0xcb, 0xd0, 0x83, 0xe8, 0xa2, 0x50, 0x3c, 0x4e,
    };
    uint8_t out[64];
    chacha20_block(key, 1, nonce, out);
    CHECK(memcmp(out, want, 64) == 0);
}

TEST(chacha20_rfc8439_keystream_block2)
{
    /* RFC 8439 section 2.4.2: the sunscreen key/nonce, counter 1 and 2;
     * first bytes of the keystream are plaintext XOR ciphertext. */
    uint8_t kb[32];
    for (int i = 0; i < 32; i++)
        kb[i] = (uint8_t)i;
    uint32_t key[8];
    memcpy(key, kb, 32);
    const uint32_t nonce[3] = {0, 0x4a000000, 0};
    const char *pt = "Ladies and Gentlemen of the class of '99: If I could offer you o";
    static const uint8_t ct[16] = {0x6e, 0x2e, 0x35, 0x9a, 0x25, 0x68, 0xf9, 0x80,
                                   0x41, 0xba, 0x07, 0x28, 0xdd, 0x0d, 0x69, 0x81};
    uint8_t ks[64];
    chacha20_block(key, 1, nonce, ks);
    for (int i = 0; i < 16; i++)
        CHECK_EQ(ks[i] ^ (uint8_t)pt[i], ct[i]);
}

TEST(csprng_deterministic_fresh_and_forward)
{
    uint8_t seed[32] = {1, 2, 3};
    struct csprng g1, g2;
    csprng_seed(&g1, seed);
    csprng_seed(&g2, seed);
    uint8_t a[100], b[100], c[100];
    csprng_fill(&g1, a, sizeof(a));
    csprng_fill(&g2, b, sizeof(b));
    CHECK(memcmp(a, b, sizeof(a)) == 0); /* same seed, same stream */
    csprng_fill(&g1, c, sizeof(c));
    CHECK(memcmp(a, c, sizeof(a)) != 0); /* consecutive fills differ */
    CHECK(memcmp(g1.key, g2.key, 32) != 0); /* the key moved on */
    uint8_t seed2[32] = {1, 2, 4};
    csprng_seed(&g2, seed2);
    csprng_fill(&g2, b, sizeof(b));
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    /* Every size works, including odd tails and exactly one block. */
    for (size_t n = 0; n < 300; n += 7) {
        uint8_t buf[310];
        memset(buf, 0xee, sizeof(buf));
        csprng_fill(&g1, buf, n);
        CHECK_EQ(buf[n], 0xee);
    }
    /* Roughly balanced bits over 64 KiB. */
    static uint8_t big[65536];
    csprng_fill(&g1, big, sizeof(big));
    long ones = 0;
    for (size_t i = 0; i < sizeof(big); i++)
        ones += __builtin_popcount(big[i]);
    CHECK(ones > 262144 - 4000 && ones < 262144 + 4000);
}
