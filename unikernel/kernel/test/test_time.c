/* test_time.c — TSC conversions against 128-bit reference arithmetic. */
#include <stdint.h>
#include <string.h>
#include "ktest.h"
#include "../libos.h"

static uint64_t ref_to_ns(uint64_t d, uint64_t khz)
{
    unsigned __int128 v = (unsigned __int128)d * 1000000u / khz;
    return v > UINT64_MAX ? UINT64_MAX : (uint64_t)v;
}

static uint64_t ref_to_tsc(uint64_t ns, uint64_t khz)
{
    unsigned __int128 v = (unsigned __int128)ns * khz / 1000000u;
    return v > UINT64_MAX ? UINT64_MAX : (uint64_t)v;
}

TEST(tsc_conversions_match_128bit)
{
    static const uint64_t khz[] = {1, 1000, 2999999, 3000000, 4294967295ULL};
    static const uint64_t vals[] = {0, 1, 999, 1000000, 2999999999ULL,
                                    1ULL << 40, (1ULL << 63) + 12345, UINT64_MAX};
    for (size_t i = 0; i < sizeof(khz) / sizeof(khz[0]); i++)
        for (size_t j = 0; j < sizeof(vals) / sizeof(vals[0]); j++) {
            uint64_t k = khz[i], v = vals[j];
            uint64_t r = ref_to_ns(v, k);
            /* Exact unless it saturates. */
            if (r != UINT64_MAX)
                CHECK_EQ(tsc_to_ns(v, k), r);
            else
                CHECK_EQ(tsc_to_ns(v, k), UINT64_MAX);
            CHECK_EQ(ns_to_tsc(v, k), ref_to_tsc(v, k));
        }
    CHECK_EQ(tsc_to_ns(3000000000ULL, 3000000), 1000000000ULL);
    CHECK_EQ(ns_to_tsc(10000000, 2500000), 25000000);
    CHECK_EQ(tsc_to_ns(5, 0), 0);
}

TEST(tsc_conversions_random)
{
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint64_t k = (x >> 40) % 5000000 + 1;
        uint64_t v = x >> (x & 31);
        uint64_t r = ref_to_ns(v, k);
        if (r != UINT64_MAX && tsc_to_ns(v, k) != r) {
            CHECK_EQ(tsc_to_ns(v, k), r);
            break;
        }
        if (ns_to_tsc(v, k) != ref_to_tsc(v, k)) {
            CHECK_EQ(ns_to_tsc(v, k), ref_to_tsc(v, k));
            break;
        }
    }
}

TEST(kfmt_formats)
{
    char t[64];
    struct kbuf b = {t, 0, sizeof(t)};
    kb_hex(&b, 0);
    kb_str(&b, " ");
    kb_hex(&b, 0x401234);
    kb_str(&b, " ");
    kb_dec(&b, -14);
    kb_str(&b, " ");
    kb_udec(&b, UINT64_MAX);
    kb_str(&b, " ");
    kb_dec(&b, INT64_MIN);
    CHECK(b.len == strlen("0x0 0x401234 -14 18446744073709551615 -9223372036854775808"));
    CHECK(memcmp(t, "0x0 0x401234 -14 18446744073709551615 -9223372036854775808", b.len) == 0);
    struct kbuf s = {t, 0, 4};
    kb_str(&s, "truncated");
    CHECK_EQ(s.len, 4);
}
