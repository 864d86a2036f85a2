/*
 * ktime.c — TSC arithmetic. The kernel is freestanding without libgcc, so
 * there is no 128-bit division: split the dividend so that every product
 * stays below 2^64 for any TSC rate up to 4 THz.
 */
#include "libos.h"

uint64_t tsc_to_ns(uint64_t tsc_delta, uint64_t tsc_khz)
{
    if (tsc_khz == 0)
        return 0;
    /* ns = delta * 10^6 / khz; the remainder is < khz < 2^32, so
     * rem * 10^6 < 2^52. */
    uint64_t q = tsc_delta / tsc_khz, r = tsc_delta % tsc_khz;
    if (q > UINT64_MAX / 1000000ULL)
        return UINT64_MAX;
    return q * 1000000ULL + r * 1000000ULL / tsc_khz;
}

uint64_t ns_to_tsc(uint64_t ns, uint64_t tsc_khz)
{
    /* ticks = ns * khz / 10^6. */
    uint64_t q = ns / 1000000ULL, r = ns % 1000000ULL;
    if (tsc_khz != 0 && q > UINT64_MAX / tsc_khz)
        return UINT64_MAX;
    uint64_t hi = q * tsc_khz;
    uint64_t lo = r * tsc_khz / 1000000ULL; /* r < 10^6, khz < 2^32 */
    if (hi > UINT64_MAX - lo)
        return UINT64_MAX;
    return hi + lo;
}
