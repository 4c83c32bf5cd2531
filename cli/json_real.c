/* See json_real.h. The value's nine significant digits are computed exactly: a float is
 * m x 2^e with m < 2^24, so m x 10^k / 2^-e fits 128-bit integers for the decimal exponents
 * handled here (-19 to 8, all that embeddings and probabilities use), and the quotient is
 * rounded half to even as glibc's printf rounds the exact value. Other exponents and
 * subnormals go through snprintf. */
#include "cli/json_real.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef unsigned __int128 u128;

/* jansson's clean-up of printf's "%.9g": ".0" when there is neither '.' nor 'e', and the
 * exponent without '+' or leading zeros */
static size_t jansson_style(char *s, size_t len)
{
    char *e = strchr(s, 'e');
    if (!e && !strchr(s, '.')) {
        memcpy(s + len, ".0", 3);
        return len + 2;
    }
    if (e) {
        char *start = e + 1, *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len + 1 - (size_t)(end - s));
            len -= (size_t)(end - start);
        }
    }
    return len;
}

static size_t via_printf(float value, char *out)
{
    int n = snprintf(out, CLI_JSON_REAL_MAX - 3, "%.9g", (double)value);
    return jansson_style(out, n > 0 ? (size_t)n : 0);
}

/* round(m 2^e2 10^(8 - dec)) half to even, or 0 when it does not fit the fast path */
static uint64_t nine_digits(uint32_t m, int e2, int dec)
{
    const int k = 8 - dec; /* 0 .. 27 for dec in -19 .. 8 */
    u128 num = m;
    for (int i = 0; i < k; i++)
        num *= 10;
    if (e2 >= 0)
        return (uint64_t)(num << e2); /* dec <= 8 keeps this under 10^9 x 10 */
    if (-e2 >= 128)
        return 0;
    const u128 den = (u128)1 << -e2;
    u128 q = num >> -e2, r = num & (den - 1);
    const u128 half = den >> 1;
    if (r > half || (r == half && (q & 1)))
        q++;
    return (uint64_t)q;
}

size_t cli_json_real(float value, char *out)
{
    uint32_t bits;
    memcpy(&bits, &value, 4);
    const int biased = (int)(bits >> 23 & 0xff);
    if (biased == 0 || biased == 0xff) /* zero, subnormal, or not finite */
        return via_printf(value, out);
    const uint32_t m = (bits & 0x7fffff) | 0x800000;
    const int e2 = biased - 150;
    int dec = (int)floor(log10(fabs((double)value)));
    if (dec < -19 || dec > 8)
        return via_printf(value, out);
    uint64_t digits = nine_digits(m, e2, dec);
    if (digits >= 1000000000u) { /* log10 was low by one, or the value rounds up to 10^(dec+1) */
        if (++dec > 8)
            return via_printf(value, out);
        digits = nine_digits(m, e2, dec);
    } else if (digits < 100000000u) { /* log10 was high by one */
        if (--dec < -19)
            return via_printf(value, out);
        digits = nine_digits(m, e2, dec);
    }
    if (digits < 100000000u || digits >= 1000000000u)
        return via_printf(value, out);
    char d[9];
    for (int i = 8; i >= 0; i--, digits /= 10)
        d[i] = (char)('0' + digits % 10);
    int used = 9; /* %g drops trailing zeros */
    while (used > 1 && d[used - 1] == '0')
        used--;
    char *p = out;
    if (bits >> 31)
        *p++ = '-';
    if (dec < -4) { /* %g's exponent form: d.ddde-X (jansson's: no leading zeros) */
        *p++ = d[0];
        if (used > 1) {
            *p++ = '.';
            memcpy(p, d + 1, (size_t)used - 1);
            p += used - 1;
        }
        p += snprintf(p, 8, "e-%d", -dec);
        return (size_t)(p - out);
    }
    if (dec < 0) { /* 0.000ddd */
        *p++ = '0';
        *p++ = '.';
        for (int i = -1; i > dec; i--)
            *p++ = '0';
        memcpy(p, d, (size_t)used);
        p += used;
    } else { /* ddd.ddd, or ddd.0 when integral */
        memcpy(p, d, (size_t)dec + 1);
        p += dec + 1;
        *p++ = '.';
        if (used > dec + 1) {
            memcpy(p, d + dec + 1, (size_t)(used - dec - 1));
            p += used - dec - 1;
        } else {
            *p++ = '0';
        }
    }
    *p = '\0';
    return (size_t)(p - out);
}
