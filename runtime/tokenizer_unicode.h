/* Per-code-point Unicode facts the BERT tokenizer needs, answered the way transformers'
 * fast tokenizer (the Rust `tokenizers` crate) answers them.
 *
 * The data comes from utf8proc. The Rust crate, however, mixes table versions: its
 * categories come from an old Unicode (8.0-era) table, its NFD from an old normalisation
 * crate, and lower-casing from the Rust standard library (Unicode 16). Where those
 * disagree with the utf8proc build, a generated table (tokenizer_unicode_compat.h, written
 * by tools/gen_tokenizer_fixtures.py from transformers itself) gives the crate's answer,
 * and tests/test_tokenizer.c checks every code point against a reference file. */
#ifndef SQZ_RUNTIME_TOKENIZER_UNICODE_H
#define SQZ_RUNTIME_TOKENIZER_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Flags of one code point (several may be set, e.g. U+0085 is CONTROL and SPACE). */
enum {
    SQZ_UC_CONTROL = 1, /* removed by clean_text: NUL, U+FFFD, category C* except \t\n\r */
    SQZ_UC_SPACE = 2,   /* Rust char::is_whitespace (Unicode White_Space) */
    SQZ_UC_MARK = 4,    /* category Mn: removed when stripping accents */
    SQZ_UC_PUNCT = 8,   /* ASCII 33-47, 58-64, 91-96, 123-126, or category P* */
};

#define SQZ_UC_MAX_DECOMPOSITION 8 /* longest canonical decomposition is 4 */
#define SQZ_UC_MAX_LOWER 3

unsigned sqz_uc_flags(uint32_t c);
/* Flags from utf8proc alone, before the compatibility table (for the generator and tests). */
unsigned sqz_uc_base_flags(uint32_t c);
/* Canonical decomposition (NFD, without reordering) into out; returns the count (>= 1). */
int sqz_uc_decompose(uint32_t c, uint32_t out[SQZ_UC_MAX_DECOMPOSITION]);
/* Lower case as Rust's char::to_lowercase (1 to 3 code points); returns the count. */
int sqz_uc_lower(uint32_t c, uint32_t out[SQZ_UC_MAX_LOWER]);
/* Canonical combining class as the Rust crate knows it (0 for marks newer than its table),
 * for the canonical ordering step of NFD. */
int sqz_uc_combining_class(uint32_t c);
/* The CJK ideograph ranges of the BERT normaliser (the fast tokenizer's, per the spec). */
int sqz_uc_is_cjk(uint32_t c);

/* Decodes one UTF-8 sequence from s[0..n) (n >= 1). Returns its length (1-4) and stores the
 * code point, or returns 0 for an invalid sequence (overlong, surrogate, > U+10FFFF,
 * truncated, stray continuation byte). */
static inline size_t sqz_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b < 0xC2)
        return 0;
    if (b < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80)
            return 0;
        *cp = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (b < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        uint32_t c = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))
            return 0;
        *cp = c;
        return 3;
    }
    if (b < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        uint32_t c = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                     ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        if (c < 0x10000 || c > 0x10FFFF)
            return 0;
        *cp = c;
        return 4;
    }
    return 0;
}

/* Writes c as UTF-8 into out (4 bytes room); returns the length. */
static inline size_t sqz_utf8_encode(uint32_t c, unsigned char *out)
{
    if (c < 0x80) {
        out[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (unsigned char)(0xC0 | (c >> 6));
        out[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (c >> 12));
        out[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (c >> 18));
    out[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* Offset of the first invalid UTF-8 sequence in s[0..n), or n when all of it is valid. */
size_t sqz_utf8_validate(const unsigned char *s, size_t n);

#endif
