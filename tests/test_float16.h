/* fp16 and bf16 storage, rounded to nearest even: written here from the formats' definitions
 * (IEEE binary16; the upper half of binary32), independently of CUDA's and the backends'
 * conversions, so tests can check those bit for bit. C and C++. */
#ifndef SQZ_TESTS_TEST_FLOAT16_H
#define SQZ_TESTS_TEST_FLOAT16_H

#include <math.h>
#include <stdint.h>
#include <string.h>


static inline uint16_t test_half_bits(float f)
{
    const uint16_t sign = signbit(f) ? 0x8000 : 0;
    const double a = fabs((double)f);
    if (isnan(f))
        return 0x7e00;
    if (a >= 65520.0) /* rounds past the largest finite half, 65504 */
        return sign | 0x7c00;
    if (a < 6.103515625e-05) /* below 2^-14: subnormal steps of 2^-24 (1024 steps reach 2^-14) */
        return sign | (uint16_t)nearbyint(a * 16777216.0);
    int e;
    frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
    e -= 1;       /* a in [2^e, 2^(e+1)) */
    double q = nearbyint(ldexp(a, 10 - e)); /* 11 significant bits, in [1024, 2048] */
    if (q == 2048.0)
        q = 1024.0, e++;
    return sign | (uint16_t)((e + 15) << 10) | (uint16_t)(q - 1024.0);
}

static inline float test_half_value(uint16_t h)
{
    const int e = h >> 10 & 31, m = h & 1023;
    const double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (float)(h & 0x8000 ? -v : v);
}

static inline uint16_t test_bf16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if (isnan(f))
        return (uint16_t)(x >> 16 | 0x40);
    x += 0x7fff + (x >> 16 & 1); /* ties go to the even upper half */
    return (uint16_t)(x >> 16);
}

static inline float test_bf16_value(uint16_t b)
{
    const uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

#endif
