#include "tokenizer_unicode.h"

#include <string.h>

#include <utf8proc.h>

#include "tokenizer_unicode_compat.h"

unsigned sqz_uc_base_flags(uint32_t c)
{
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    int cat = p->category;
    unsigned f = 0;
    int is_other = cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                   cat == UTF8PROC_CATEGORY_CS || cat == UTF8PROC_CATEGORY_CO;
    if (c == 0 || c == 0xFFFD || (is_other && c != '\t' && c != '\n' && c != '\r'))
        f |= SQZ_UC_CONTROL;
    /* White_Space is exactly Z* plus the controls 9-13 and U+0085 */
    if ((c >= 9 && c <= 13) || c == 0x85 || cat == UTF8PROC_CATEGORY_ZS ||
        cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP)
        f |= SQZ_UC_SPACE;
    if (cat == UTF8PROC_CATEGORY_MN)
        f |= SQZ_UC_MARK;
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
        (c >= 123 && c <= 126) || (cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO))
        f |= SQZ_UC_PUNCT;
    return f;
}

unsigned sqz_uc_flags(uint32_t c)
{
    size_t lo = 0, hi = SQZ_UC_COMPAT_FLAG_COUNT;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < sqz_uc_compat_flags[mid].first)
            hi = mid;
        else if (c > sqz_uc_compat_flags[mid].last)
            lo = mid + 1;
        else
            return sqz_uc_compat_flags[mid].flags;
    }
    return sqz_uc_base_flags(c);
}

/* Index of c in a sorted compat map, or -1. */
static long find_map(const sqz_uc_map *map, size_t count, uint32_t c)
{
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < map[mid].c)
            hi = mid;
        else if (c > map[mid].c)
            lo = mid + 1;
        else
            return (long)mid;
    }
    return -1;
}

int sqz_uc_decompose(uint32_t c, uint32_t out[SQZ_UC_MAX_DECOMPOSITION])
{
    long k = find_map(sqz_uc_compat_nfd, SQZ_UC_COMPAT_NFD_COUNT, c);
    if (k >= 0) {
        for (int i = 0; i < sqz_uc_compat_nfd[k].n; i++)
            out[i] = sqz_uc_compat_nfd[k].to[i];
        return sqz_uc_compat_nfd[k].n;
    }
    utf8proc_int32_t buf[SQZ_UC_MAX_DECOMPOSITION];
    int boundclass = 0;
    utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)c, buf, SQZ_UC_MAX_DECOMPOSITION,
                                                 UTF8PROC_DECOMPOSE, &boundclass);
    if (n < 1 || n > SQZ_UC_MAX_DECOMPOSITION) { /* cannot happen for valid code points */
        out[0] = c;
        return 1;
    }
    for (utf8proc_ssize_t i = 0; i < n; i++)
        out[i] = (uint32_t)buf[i];
    return (int)n;
}

int sqz_uc_lower(uint32_t c, uint32_t out[SQZ_UC_MAX_LOWER])
{
    long k = find_map(sqz_uc_compat_lower, SQZ_UC_COMPAT_LOWER_COUNT, c);
    if (k >= 0) {
        for (int i = 0; i < sqz_uc_compat_lower[k].n; i++)
            out[i] = sqz_uc_compat_lower[k].to[i];
        return sqz_uc_compat_lower[k].n;
    }
    out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
    return 1;
}

int sqz_uc_combining_class(uint32_t c)
{
    int ccc = utf8proc_get_property((utf8proc_int32_t)c)->combining_class;
    if (!ccc)
        return 0;
    size_t lo = 0, hi = SQZ_UC_COMPAT_CCC_ZERO_COUNT;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < sqz_uc_compat_ccc_zero[mid].first)
            hi = mid;
        else if (c > sqz_uc_compat_ccc_zero[mid].last)
            lo = mid + 1;
        else
            return 0;
    }
    return ccc;
}

int sqz_uc_is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

size_t sqz_utf8_validate(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        /* skip ASCII eight bytes at a time: most text is mostly ASCII */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        uint32_t c;
        size_t len = sqz_utf8_decode(s + i, n - i, &c);
        if (!len)
            return i;
        i += len;
    }
    return n;
}
