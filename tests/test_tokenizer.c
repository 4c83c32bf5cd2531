/* The tokenizer against transformers: exact ids, token types, mask and byte offsets for every
 * record transformers wrote for the committed corpus (tests/fixtures/tokenizer, see its
 * README), a fixed test vector, every code point against the Rust tables, invalid UTF-8,
 * hostile input, concurrent use, loading errors and the `sqz tokenize` contract. */
#include "tests/test_util.h"

#include <jansson.h>
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>

#include "runtime/tokenizer_unicode.h"

#define TOKFIX SQZ_FIXTURES_DIR "/tokenizer"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- fixtures ------------------------------------------------------------------------------ */

typedef struct corpus {
    char **text;
    size_t *len;
    size_t n;
} corpus;

static corpus load_corpus(void)
{
    size_t size;
    char *data = (char *)read_whole(TOKFIX "/corpus.jsonl", &size);
    corpus c = {0};
    size_t cap = 0;
    for (char *line = data; line < data + size;) {
        char *nl = memchr(line, '\n', (size_t)(data + size - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(data + size - line);
        json_error_t err;
        json_t *j = json_loadb(line, n, JSON_ALLOW_NUL, &err);
        if (!j || !json_is_string(json_object_get(j, "text")))
            fail_msg("corpus.jsonl line %zu: %s", c.n + 1, err.text);
        if (c.n == cap) {
            cap = cap ? cap * 2 : 1024;
            c.text = realloc(c.text, cap * sizeof *c.text);
            c.len = realloc(c.len, cap * sizeof *c.len);
        }
        json_t *t = json_object_get(j, "text");
        c.len[c.n] = json_string_length(t);
        c.text[c.n] = malloc(c.len[c.n] + 1);
        memcpy(c.text[c.n], json_string_value(t), c.len[c.n] + 1);
        c.n++;
        json_decref(j);
        line += n + 1;
    }
    free(data);
    return c;
}

static void free_corpus(corpus *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->text[i]);
    free(c->text);
    free(c->len);
}

static void write_str(const char *path, const char *text) { write_whole(path, text, strlen(text)); }

/* A temporary checkpoint directory: the fixture vocabulary plus the given files. */
static char *make_tokenizer_dir(const char *config_json, const char *tokenizer_json)
{
    char *dir = make_temp_dir();
    char *vocab = test_path(dir, "vocab.txt");
    copy_file(TOKFIX "/vocab.txt", vocab);
    free(vocab);
    if (config_json) {
        char *p = test_path(dir, "tokenizer_config.json");
        write_whole(p, config_json, strlen(config_json));
        free(p);
    }
    if (tokenizer_json) {
        char *p = test_path(dir, "tokenizer.json");
        write_whole(p, tokenizer_json, strlen(tokenizer_json));
        free(p);
    }
    return dir;
}

static sqz_tokenizer *load_dir(const char *dir)
{
    sqz_tokenizer *tok = NULL;
    assert_sqz_ok(sqz_tokenizer_load(dir, &tok));
    return tok;
}

/* ---- a fixed test vector: whitespace, accents, CJK, unknown scripts, markup ------------------ */

static void test_spec_vector(void **unused)
{
    static const char text[] =
        "This is a test\nI was born in 92000, and this is fals\xC3\xA9.\n"
        "\xE7\x94\x9F\xE6\xB4\xBB\xE7\x9A\x84\xE7\x9C\x9F\xE8\xB0\x9B\xE6\x98\xAF\nHi  Hello\n"
        "Hi   Hello\n\n \n  \n Hello\n<s>\nhi<s>there\nThe following string should be properly "
        "encoded: Hello.\nBut ird and \xE0\xB8\x9B\xE0\xB8\xB5   ird   \xE0\xB8\x94\n"
        "Hey how are you doing";
    static const int64_t expected[] = {
        101, 2023, 2003, 1037, 3231, 1045, 2001, 2141, 1999, 6227, 8889, 2692, 1010, 1998,
        2023, 2003, 6270, 1012, 1910, 100, 1916, 1921, 100, 100, 7632, 7592, 7632, 7592,
        7592, 1026, 1055, 1028, 7632, 1026, 1055, 1028, 2045, 1996, 2206, 5164, 2323, 2022,
        7919, 12359, 1024, 7592, 1012, 2021, 20868, 2094, 1998, 100, 20868, 2094, 100, 4931,
        2129, 2024, 2017, 2725, 102};
    /* the fixture directory holds only vocab.txt: the BERT defaults apply */
    sqz_tokenizer *tok = load_dir(TOKFIX);
    sqz_encoding *enc = NULL;
    assert_sqz_ok(sqz_tokenizer_encode(tok, text, strlen(text), NULL, 0, 512, &enc));
    size_t n = sizeof expected / sizeof expected[0];
    assert_int_equal(enc->length, n);
    for (size_t i = 0; i < n; i++) {
        if (enc->input_ids[i] != expected[i])
            fail_msg("token %zu: id %lld, expected %lld", i, (long long)enc->input_ids[i],
                     (long long)expected[i]);
        assert_int_equal(enc->token_type_ids[i], 0);
        assert_int_equal(enc->attention_mask[i], 1);
    }
    assert_int_equal(enc->truncated, 0);
    /* "falsé" -> false: bytes 48..54 of the text, the é included */
    assert_int_equal(enc->offsets[16].start, 48);
    assert_int_equal(enc->offsets[16].end, 54);
    sqz_encoding_free(enc);
    sqz_tokenizer_free(tok);
}

/* ---- every transformers record ------------------------------------------------------------- */

typedef struct config_entry {
    char name[64];
    sqz_tokenizer *tok;
    char *dir;
} config_entry;

static void test_transformers_corpus(void **unused)
{
    corpus c = load_corpus();
    size_t size;
    char *data = (char *)read_whole(TOKFIX "/expected.jsonl", &size);
    config_entry configs[16];
    size_t nconfigs = 0;
    sqz_encoding *enc = NULL;
    size_t records = 0, failures = 0, tokens = 0, lineno = 0;
    size_t per_kind[2][2] = {{0}}; /* [pair][truncated] */
    for (char *line = data; line < data + size;) {
        char *nl = memchr(line, '\n', (size_t)(data + size - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(data + size - line);
        json_error_t err;
        json_t *r = json_loadb(line, n, 0, &err);
        line += n + 1;
        lineno++;
        if (!r)
            fail_msg("expected.jsonl line %zu: %s", lineno, err.text);
        if (lineno == 1) { /* header: versions and the tokenizer_config.json of each config */
            const char *key;
            json_t *cfg;
            json_object_foreach(json_object_get(r, "configs"), key, cfg) {
                assert_true(nconfigs < 16);
                config_entry *e = &configs[nconfigs++];
                snprintf(e->name, sizeof e->name, "%s", key);
                char *text = json_dumps(cfg, 0);
                e->dir = make_tokenizer_dir(text, NULL);
                free(text);
                e->tok = load_dir(e->dir);
            }
            printf("expected.jsonl from transformers %s, tokenizers %s; %zu configurations\n",
                   json_string_value(json_object_get(r, "transformers")),
                   json_string_value(json_object_get(r, "tokenizers")), nconfigs);
            json_decref(r);
            continue;
        }
        const char *name = json_string_value(json_object_get(r, "config"));
        config_entry *cfg = NULL;
        for (size_t k = 0; k < nconfigs; k++)
            if (name && strcmp(configs[k].name, name) == 0)
                cfg = &configs[k];
        assert_non_null(cfg);
        size_t ti = (size_t)json_integer_value(json_object_get(r, "text"));
        json_t *pj = json_object_get(r, "pair");
        int max_length = (int)json_integer_value(json_object_get(r, "max_length"));
        json_t *ids = json_object_get(r, "ids"), *offs = json_object_get(r, "offsets");
        const char *types = json_string_value(json_object_get(r, "types"));
        const char *mask = json_string_value(json_object_get(r, "mask"));
        assert_true(ti < c.n && json_is_array(ids) && types && mask);
        const char *pair = NULL;
        size_t pair_len = 0;
        if (json_is_integer(pj)) {
            pair = c.text[json_integer_value(pj)];
            pair_len = c.len[json_integer_value(pj)];
        }
        if (records % 97 == 0) { /* now and then a fresh encoding, otherwise reuse */
            sqz_encoding_free(enc);
            enc = NULL;
        }
        assert_sqz_ok(sqz_tokenizer_encode(cfg->tok, c.text[ti], c.len[ti], pair, pair_len,
                                           max_length, &enc));
        records++;
        per_kind[pair != NULL][max_length != 0]++;
        size_t want = json_array_size(ids);
        bool ok = enc->length == want && strlen(types) == want && strlen(mask) == want &&
                  json_array_size(offs) == 2 * want;
        size_t bad = 0;
        for (size_t i = 0; ok && i < want; i++) {
            if (enc->input_ids[i] != json_integer_value(json_array_get(ids, i)) ||
                enc->token_type_ids[i] != types[i] - '0' || enc->attention_mask[i] != mask[i] - '0' ||
                enc->offsets[i].start != (size_t)json_integer_value(json_array_get(offs, 2 * i)) ||
                enc->offsets[i].end != (size_t)json_integer_value(json_array_get(offs, 2 * i + 1))) {
                ok = false;
                bad = i;
            }
        }
        tokens += want;
        if (!ok && failures++ < 10) {
            printf("MISMATCH %s text %zu pair %lld max_length %d: %zu tokens (expected %zu); "
                   "first difference at token %zu\n  got ", name, ti,
                   json_is_integer(pj) ? (long long)json_integer_value(pj) : -1LL, max_length,
                   enc->length, want, bad);
            for (size_t i = 0; i < enc->length && i < 40; i++)
                printf("%lld(%zu,%zu) ", (long long)enc->input_ids[i], enc->offsets[i].start,
                       enc->offsets[i].end);
            printf("\n  want ");
            for (size_t i = 0; i < want && i < 40; i++)
                printf("%lld(%lld,%lld) ", (long long)json_integer_value(json_array_get(ids, i)),
                       (long long)json_integer_value(json_array_get(offs, 2 * i)),
                       (long long)json_integer_value(json_array_get(offs, 2 * i + 1)));
            printf("\n");
        }
        json_decref(r);
    }
    printf("%zu records (%zu tokens) compared: single %zu + truncated %zu, pair %zu + truncated %zu; "
           "%zu mismatches\n", records, tokens, per_kind[0][0], per_kind[0][1], per_kind[1][0],
           per_kind[1][1], failures);
    sqz_encoding_free(enc);
    for (size_t k = 0; k < nconfigs; k++) {
        sqz_tokenizer_free(configs[k].tok);
        remove_temp_dir(configs[k].dir);
    }
    free(data);
    free_corpus(&c);
    assert_true(records > 5000);
    assert_int_equal(failures, 0);
}

/* ---- every code point against the Rust tables ------------------------------------------------- */

static void test_unicode_reference(void **unused)
{
    FILE *f = fopen(TOKFIX "/unicode_reference.txt", "r");
    assert_non_null(f);
    char line[256];
    size_t checked = 0, bad = 0;
    uint32_t next = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        char kind = line[0];
        char *p = line + 1;
        unsigned long vals[8];
        int n = 0;
        while (n < 8) {
            char *end;
            unsigned long v = strtoul(p, &end, (kind == 'F' && n == 2) || (kind == 'C' && n == 1) ? 10 : 16);
            if (end == p)
                break;
            vals[n++] = v;
            p = end;
        }
        if (kind == 'F') {
            assert_int_equal(n, 3);
            if (vals[0] != next && !(next == 0xD800 && vals[0] == 0xE000))
                fail_msg("unicode_reference.txt: gap before %lX", vals[0]);
            for (uint32_t c = (uint32_t)vals[0]; c <= vals[1]; c++, checked++)
                if (sqz_uc_flags(c) != vals[2] && bad++ < 10)
                    printf("U+%04X: flags %u, tokenizers %lu\n", c, sqz_uc_flags(c), vals[2]);
            next = (uint32_t)vals[1] + 1;
        } else if (kind == 'C') {
            assert_int_equal(n, 2);
            if (sqz_uc_combining_class((uint32_t)vals[0]) != (int)vals[1] && bad++ < 10)
                printf("U+%04lX: combining class %d, tokenizers %lu\n", vals[0],
                       sqz_uc_combining_class((uint32_t)vals[0]), vals[1]);
        } else if (kind == 'L' || kind == 'D') {
            uint32_t out[SQZ_UC_MAX_DECOMPOSITION];
            int m = kind == 'L' ? sqz_uc_lower((uint32_t)vals[0], out)
                                : sqz_uc_decompose((uint32_t)vals[0], out);
            bool same = m == n - 1;
            for (int i = 0; same && i < m; i++)
                same = out[i] == vals[i + 1];
            if (!same && bad++ < 10)
                printf("U+%04lX: %s differs from tokenizers\n", vals[0], kind == 'L' ? "lower" : "nfd");
        }
    }
    fclose(f);
    assert_int_equal(next, 0x110000);
    printf("%zu code points checked, %zu differences\n", checked, bad);
    assert_int_equal(bad, 0);
}

/* Lower case and NFD are the identity, and the combining class 0, wherever the reference
 * lists nothing. */
static void test_unicode_identity(void **unused)
{
    size_t size;
    char *data = (char *)read_whole(TOKFIX "/unicode_reference.txt", &size);
    unsigned char *listed = calloc(0x110000, 1); /* bit 1 lower listed, bit 2 nfd listed */
    assert_non_null(listed);
    for (char *p = data; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (*p == 'L' || *p == 'D' || *p == 'C')
            listed[strtoul(p + 2, NULL, 16)] |= *p == 'L' ? 1 : *p == 'D' ? 2 : 4;
    }
    size_t bad = 0;
    for (uint32_t c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c <= 0xDFFF)
            continue;
        uint32_t out[SQZ_UC_MAX_DECOMPOSITION];
        if (!(listed[c] & 1) && (sqz_uc_lower(c, out) != 1 || out[0] != c) && bad++ < 10)
            printf("U+%04X: lower is not the identity\n", c);
        if (!(listed[c] & 2) && (sqz_uc_decompose(c, out) != 1 || out[0] != c) && bad++ < 10)
            printf("U+%04X: nfd is not the identity\n", c);
        if (!(listed[c] & 4) && sqz_uc_combining_class(c) != 0 && bad++ < 10)
            printf("U+%04X: combining class is not 0\n", c);
    }
    free(listed);
    free(data);
    assert_int_equal(bad, 0);
}

/* ---- invalid UTF-8 ----------------------------------------------------------------------------- */

static void test_invalid_utf8(void **unused)
{
    sqz_tokenizer *tok = load_dir(TOKFIX);
    sqz_encoding *enc = NULL;
    static const struct {
        const char *bytes;
        size_t len;
        const char *where;
    } cases[] = {
        {"\xC3\x28", 2, "at byte 0 (0xC3 0x28)"},      /* bad continuation */
        {"ab\x80", 3, "at byte 2 (0x80)"},              /* stray continuation */
        {"x\xC0\xAF", 3, "at byte 1 (0xC0 0xAF)"},      /* overlong '/' */
        {"\xE0\x80\xAF", 3, "at byte 0"},               /* overlong, 3 bytes */
        {"ok \xED\xA0\x80", 6, "at byte 3 (0xED 0xA0 0x80)"}, /* surrogate U+D800 */
        {"\xF4\x90\x80\x80", 4, "at byte 0"},           /* beyond U+10FFFF */
        {"abc\xE2\x82", 5, "at byte 3 (0xE2 0x82)"},    /* truncated at the end */
        {"\xF8\x88\x80\x80\x80", 5, "at byte 0"},       /* five-byte form */
        {"caf\xC3\xA9 \xFF", 7, "at byte 6 (0xFF)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_fails_with(sqz_tokenizer_encode(tok, cases[i].bytes, cases[i].len, NULL, 0, 0, &enc),
                          SQZ_ERR_INPUT, "invalid UTF-8 in text", cases[i].where);
        assert_fails_with(sqz_tokenizer_encode(tok, "fine", 4, cases[i].bytes, cases[i].len, 0, &enc),
                          SQZ_ERR_INPUT, "invalid UTF-8 in text_pair", cases[i].where);
    }
    assert_null(enc); /* validation fails before anything is allocated */
    /* the encoding stays usable after a failure */
    assert_sqz_ok(sqz_tokenizer_encode(tok, "fine", 4, NULL, 0, 0, &enc));
    assert_int_equal(enc->length, 3);
    /* NUL bytes are valid UTF-8 (U+0000) and are removed, as transformers removes them */
    assert_sqz_ok(sqz_tokenizer_encode(tok, "a\0b", 3, NULL, 0, 0, &enc));
    assert_int_equal(enc->length, 3);
    assert_int_equal(enc->input_ids[1], sqz_tokenizer_token_to_id(tok, "ab", 2));
    sqz_encoding_free(enc);
    sqz_tokenizer_free(tok);
}

/* ---- hostile input ----------------------------------------------------------------------------- */

static void timed_encode(const sqz_tokenizer *tok, const char *what, const char *text, size_t len,
                         const char *pair, size_t pair_len, int max_length, size_t want_tokens)
{
    sqz_encoding *enc = NULL;
    double t0 = now();
    assert_sqz_ok(sqz_tokenizer_encode(tok, text, len, pair, pair_len, max_length, &enc));
    double dt = now() - t0;
    printf("  %-44s %9zu bytes -> %7zu tokens in %.3f s\n", what, len + pair_len, enc->length, dt);
    if (want_tokens)
        assert_int_equal(enc->length, want_tokens);
    sqz_encoding_free(enc);
}

static void test_hostile_input(void **unused)
{
    sqz_tokenizer *tok = load_dir(TOKFIX);
    const size_t big = 10u << 20;
    char *s = malloc(big + 1);
    assert_non_null(s);

    memset(s, 'a', big); /* one 10 MB word: a single unknown token */
    timed_encode(tok, "one 10 MB word, max_length 512", s, big, NULL, 0, 512, 3);
    timed_encode(tok, "one 10 MB word, no truncation", s, big, NULL, 0, 0, 3);
    for (size_t i = 1; i < big; i += 2)
        s[i] = ' '; /* 5M one-letter words */
    timed_encode(tok, "5M words, max_length 512", s, big, NULL, 0, 512, 512);
    timed_encode(tok, "pair of 5 MB texts, max_length 512", s, big / 2, s, big / 2, 512, 512);
    timed_encode(tok, "1M words, no truncation", s, 2u << 20, NULL, 0, 0, (1u << 20) + 2);
    /* 'a' followed by 10 MB of combining marks (U+0301 is 2 bytes): stripped to "a" */
    s[0] = 'a';
    for (size_t i = 1; i + 1 < big; i += 2) {
        s[i] = '\xCC';
        s[i + 1] = '\x81';
    }
    timed_encode(tok, "'a' + 5M combining marks, no truncation", s, big - 1, NULL, 0, 0, 3);
    /* reversed combining classes inside a long word of kept marks stay linear */
    for (size_t i = 0; i + 4 <= big; i += 4)
        memcpy(s + i, i % 8 ? "\xF0\x9D\x85\xA5" : "\xF0\x9D\x85\xAD", 4); /* U+1D165 / U+1D16D */
    timed_encode(tok, "2.5M alternating Mc marks, no truncation", s, big, NULL, 0, 0, 3);
    for (size_t i = 0; i + 6 <= big; i += 6)
        memcpy(s + i, "[MASK]", 6);
    timed_encode(tok, "1.7M [MASK], max_length 512", s, big - big % 6, NULL, 0, 512, 512);
    for (size_t i = 0; i + 3 <= big; i += 3)
        memcpy(s + i, "\xE4\xB8\xAD", 3); /* 中: every ideograph a word */
    timed_encode(tok, "3.5M CJK ideographs, max_length 512", s, big - big % 3, NULL, 0, 512, 512);
    memset(s, '!', big);
    timed_encode(tok, "10M punctuation, max_length 512", s, big, NULL, 0, 512, 512);
    memset(s, ' ', big);
    timed_encode(tok, "10M spaces, no truncation", s, big, NULL, 0, 0, 2);
    free(s);
    sqz_tokenizer_free(tok);
}

/* ---- concurrent use ------------------------------------------------------------------------- */

typedef struct thread_job {
    const sqz_tokenizer *tok;
    const corpus *c;
    uint64_t hash;
    int failed;
} thread_job;

static uint64_t encoding_hash(const sqz_encoding *e, uint64_t h)
{
    for (size_t i = 0; i < e->length; i++)
        h = (h ^ (uint64_t)e->input_ids[i] ^ (e->offsets[i].start << 20) ^ (e->offsets[i].end << 40)) *
            0x100000001b3ull;
    return h;
}

static void *encode_all(void *arg)
{
    thread_job *job = arg;
    sqz_encoding *enc = NULL;
    job->hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < job->c->n; i++) {
        size_t j = (i * 7 + 3) % job->c->n;
        if (sqz_tokenizer_encode(job->tok, job->c->text[i], job->c->len[i], job->c->text[j],
                                 job->c->len[j], (int)(i % 64), &enc) != SQZ_OK)
            job->failed = 1;
        else
            job->hash = encoding_hash(enc, job->hash);
    }
    sqz_encoding_free(enc);
    return NULL;
}

static void test_threads(void **unused)
{
    corpus c = load_corpus();
    sqz_tokenizer *tok = load_dir(TOKFIX);
    thread_job single = {tok, &c, 0, 0};
    encode_all(&single);
    enum { N = 4 };
    pthread_t th[N];
    thread_job jobs[N];
    for (int k = 0; k < N; k++) {
        jobs[k] = (thread_job){tok, &c, 0, 0};
        assert_int_equal(pthread_create(&th[k], NULL, encode_all, &jobs[k]), 0);
    }
    for (int k = 0; k < N; k++) {
        assert_int_equal(pthread_join(th[k], NULL), 0);
        assert_int_equal(jobs[k].failed, 0);
        assert_true(jobs[k].hash == single.hash);
    }
    sqz_tokenizer_free(tok);
    free_corpus(&c);
}

/* ---- loading, settings, API details ------------------------------------------------------------ */

static void ids_of(const sqz_tokenizer *tok, const char *text, const char *pair, int max_length,
                   const int64_t *want, size_t n)
{
    sqz_encoding *enc = NULL;
    assert_sqz_ok(sqz_tokenizer_encode(tok, text, strlen(text), pair, pair ? strlen(pair) : 0,
                                       max_length, &enc));
    if (enc->length != n)
        fail_msg("\"%s\": %zu tokens, expected %zu", text, enc->length, n);
    for (size_t i = 0; i < n; i++)
        if (enc->input_ids[i] != want[i])
            fail_msg("\"%s\": token %zu is %lld, expected %lld", text, i,
                     (long long)enc->input_ids[i], (long long)want[i]);
    sqz_encoding_free(enc);
}

#define IDS(tok, text, pair, max, ...)                                                        \
    do {                                                                                      \
        const int64_t want_[] = {__VA_ARGS__};                                                \
        ids_of(tok, text, pair, max, want_, sizeof want_ / sizeof want_[0]);                  \
    } while (0)

static void test_api_details(void **unused)
{
    sqz_tokenizer *tok = load_dir(TOKFIX);
    sqz_tokenizer_info info;
    assert_sqz_ok(sqz_tokenizer_get_info(tok, &info));
    assert_int_equal(info.vocab_size, 30522);
    assert_int_equal(info.do_lower_case, 1);
    assert_int_equal(info.strip_accents, 1);
    assert_int_equal(info.tokenize_chinese_chars, 1);
    assert_int_equal(info.max_input_chars_per_word, 100);
    assert_int_equal(info.model_max_length, 0);
    assert_int_equal(info.pad_id, 0);
    assert_int_equal(info.unk_id, 100);
    assert_int_equal(info.cls_id, 101);
    assert_int_equal(info.sep_id, 102);
    assert_int_equal(info.mask_id, 103);
    assert_int_equal(info.special_token_count, 5);
    assert_string_equal(sqz_tokenizer_id_to_token(tok, 7592), "hello");
    assert_string_equal(sqz_tokenizer_id_to_token(tok, 2094), "##d");
    assert_null(sqz_tokenizer_id_to_token(tok, 30522));
    assert_null(sqz_tokenizer_id_to_token(tok, -1));
    assert_int_equal(sqz_tokenizer_token_to_id(tok, "[MASK]", 6), 103);
    assert_int_equal(sqz_tokenizer_token_to_id(tok, "no-such-entry", 13), -1);

    /* special tokens are matched verbatim in the raw text, and only verbatim */
    IDS(tok, "x[MASK]y", NULL, 0, 101, 1060, 103, 1061, 102);
    IDS(tok, "[mask]", NULL, 0, 101, 1031, 7308, 1033, 102);
    IDS(tok, "[CLS][SEP][PAD][UNK][MASK]", NULL, 0, 101, 101, 102, 0, 100, 103, 102);
    /* an empty pair is no pair (transformers tests the pair for truth) */
    IDS(tok, "a", "", 0, 101, 1037, 102);
    IDS(tok, "", "b", 0, 101, 102, 1038, 102);
    IDS(tok, "", NULL, 0, 101, 102);
    /* max_length below the added tokens: transformers does not truncate */
    IDS(tok, "a b c d", NULL, 1, 101, 1037, 1038, 1039, 1040, 102);
    IDS(tok, "a b c d", NULL, 2, 101, 102);
    IDS(tok, "a b c d", "e f g", 2, 101, 1037, 1038, 1039, 1040, 102, 1041, 1042, 1043, 102);
    IDS(tok, "a b c d", "e f g", 3, 101, 102, 102);
    IDS(tok, "a b c d e", "e f g h", 8, 101, 1037, 1038, 1039, 102, 1041, 1042, 102);

    sqz_encoding *enc = NULL;
    assert_sqz_ok(sqz_tokenizer_encode(tok, "hello world", 11, "foo bar baz", 11, 6, &enc));
    assert_int_equal(enc->length, 6);
    assert_int_equal(enc->truncated, 1);
    static const int8_t seq[] = {-1, 0, -1, 1, 1, -1};
    static const int64_t types[] = {0, 0, 0, 1, 1, 1};
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(enc->sequence_ids[i], seq[i]);
        assert_int_equal(enc->token_type_ids[i], types[i]);
    }
    assert_int_equal(enc->offsets[4].start, 4); /* "bar" in the pair */
    assert_int_equal(enc->offsets[4].end, 7);
    assert_int_equal(enc->offsets[5].start, 0);
    assert_int_equal(enc->offsets[5].end, 0);
    assert_fails_with(sqz_tokenizer_encode(tok, "x", 1, NULL, 0, -1, &enc),
                      SQZ_ERR_INVALID_ARGUMENT, "max_length");
    assert_fails_with(sqz_tokenizer_encode(tok, NULL, 3, NULL, 0, 0, &enc),
                      SQZ_ERR_INVALID_ARGUMENT, "NULL");
    sqz_encoding_free(enc);
    sqz_encoding_free(NULL);
    sqz_tokenizer_free(tok);
    sqz_tokenizer_free(NULL);
}

static void test_settings_sources(void **unused)
{
    /* tokenizer.json alone: its BertNormalizer settings and WordPiece parameters apply */
    char *dir = make_tokenizer_dir(NULL,
        "{\"normalizer\": {\"type\": \"BertNormalizer\", \"lowercase\": false, \"strip_accents\": null,"
        " \"handle_chinese_chars\": true, \"clean_text\": true},"
        " \"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"continuing_subword_prefix\": \"##\","
        " \"max_input_chars_per_word\": 5},"
        " \"added_tokens\": [{\"id\": 103, \"content\": \"[MASK]\", \"special\": true, \"normalized\": false,"
        " \"lstrip\": false, \"rstrip\": false, \"single_word\": false}]}");
    sqz_tokenizer *tok = load_dir(dir);
    sqz_tokenizer_info info;
    assert_sqz_ok(sqz_tokenizer_get_info(tok, &info));
    assert_int_equal(info.do_lower_case, 0);
    assert_int_equal(info.strip_accents, 0); /* null follows lower case */
    assert_int_equal(info.max_input_chars_per_word, 5);
    IDS(tok, "Hello hello abcdef", NULL, 0, 101, 100, 7592, 100, 102);
    sqz_tokenizer_free(tok);
    /* tokenizer_config.json wins over tokenizer.json */
    char *p = test_path(dir, "tokenizer_config.json");
    write_str(p, "{\"do_lower_case\": true, \"model_max_length\": 128}");
    free(p);
    tok = load_dir(dir);
    assert_sqz_ok(sqz_tokenizer_get_info(tok, &info));
    assert_int_equal(info.do_lower_case, 1);
    assert_int_equal(info.strip_accents, 1);
    assert_int_equal(info.model_max_length, 128);
    IDS(tok, "Hello", NULL, 0, 101, 7592, 102);
    sqz_tokenizer_free(tok);
    remove_temp_dir(dir);

    /* another mask token string and an added_tokens_decoder (what transformers 5.24 does
     * with this tokenizer_config.json: checked by hand) */
    dir = make_tokenizer_dir("{\"mask_token\": \"[unused0]\", \"added_tokens_decoder\":"
                             " {\"2\": {\"content\": \"[unused1]\", \"special\": true}},"
                             " \"model_max_length\": 1000000000000000019884624838656}", NULL);
    tok = load_dir(dir);
    assert_sqz_ok(sqz_tokenizer_get_info(tok, &info));
    assert_int_equal(info.mask_id, 1);
    assert_int_equal(info.model_max_length, 0);
    /* as transformers: [MASK] is no longer a special token, so it is split */
    IDS(tok, "a[unused0]b[unused1][MASK]", NULL, 0, 101, 1037, 1, 1038, 2, 1031, 7308, 1033, 102);
    sqz_tokenizer_free(tok);
    remove_temp_dir(dir);
}

static void test_load_errors(void **unused)
{
    sqz_tokenizer *tok = NULL;
    assert_fails_with(sqz_tokenizer_load("/nonexistent-sqz-dir", &tok), SQZ_ERR_IO,
                      "/nonexistent-sqz-dir/vocab.txt", "vocab.txt");
    assert_null(tok);
    char *dir = make_tokenizer_dir("{\"do_lower_case\": \"yes\"}", NULL);
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_FORMAT, "tokenizer_config.json",
                      "do_lower_case");
    char *p = test_path(dir, "tokenizer_config.json");
    write_str(p, "{not json");
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_FORMAT, "tokenizer_config.json",
                      "invalid JSON");
    unlink(p);
    free(p);
    p = test_path(dir, "tokenizer.json");
    const char *norm = "{\"added_tokens\": [{\"id\": 5, \"content\": \"<x>\", \"normalized\": true}]}";
    write_str(p, norm);
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_UNSUPPORTED, "<x>", "normalized");
    const char *bpe = "{\"model\": {\"type\": \"BPE\"}}";
    write_str(p, bpe);
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_UNSUPPORTED, "BPE");
    unlink(p);
    free(p);
    p = test_path(dir, "vocab.txt");
    write_str(p, "[PAD]\n[CLS]\n[SEP]\nhello\n");
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_FORMAT, "[UNK]", "vocab.txt");
    write_str(p, "[UNK]\n[CLS]\n\xFF\n");
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_FORMAT, "UTF-8", "byte 12");
    write_str(p, "");
    assert_fails_with(sqz_tokenizer_load(dir, &tok), SQZ_ERR_FORMAT, "0 entries");
    /* a tiny vocabulary without a trailing newline, CRLF lines */
    write_str(p, "[UNK]\r\n[CLS]\r\n[SEP]\r\nab\r\n##c");
    tok = load_dir(dir);
    IDS(tok, "abc ABD", NULL, 0, 1, 3, 4, 0, 2);
    sqz_tokenizer_free(tok);
    free(p);
    remove_temp_dir(dir);
}

/* ---- the command line --------------------------------------------------------------------------- */

static void test_cli(void **unused)
{
    char *dir = make_temp_dir();
    char *in = test_path(dir, "in.jsonl"), *out = test_path(dir, "out.jsonl"),
         *errf = test_path(dir, "err.txt");
    const char input[] =
        "{\"text\": \"Hello, World!\"}\n"
        "{\"text\": \"hello world\", \"text_pair\": \"foo bar baz\", \"id\": 7}\n"
        "not json\n"
        "{\"text_pair\": \"x\"}\n"
        "{\"text\": \"caf\xC3\n"
        "{\"text\": \"a\\u0000b\", \"text_pair\": null}\n"
        "\n"
        "{\"text\": \"one two three four five six\"}\n";
    write_whole(in, input, sizeof input - 1);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s tokenize --model '%s' --max-length 6 < '%s' > '%s' 2> '%s'",
             SQZ_SQZ_BINARY, TOKFIX, in, out, errf);
    int rc = system(cmd);
    size_t n;
    char *got = (char *)read_whole(out, &n), *err = (char *)read_whole(errf, &n);
    if (strstr(err, "unknown command")) {
        printf("sqz does not dispatch `tokenize` yet: %s\n", err);
        free(got);
        free(err);
        free(in);
        free(out);
        free(errf);
        remove_temp_dir(dir);
        skip();
    }
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 1); /* some lines failed */
    assert_non_null(strstr(err, "4 of 8 lines failed"));
    const char *want[] = {
        "{\"input_ids\": [101, 7592, 1010, 2088, 999, 102], \"token_type_ids\": [0, 0, 0, 0, 0, 0], "
        "\"attention_mask\": [1, 1, 1, 1, 1, 1]}",
        "{\"input_ids\": [101, 7592, 102, 29379, 3347, 102], \"token_type_ids\": [0, 0, 0, 1, 1, 1], "
        "\"attention_mask\": [1, 1, 1, 1, 1, 1]}",
        "{\"error\": \"invalid JSON",
        "{\"error\": \"missing \\\"text\\\"\"}",
        "{\"error\": \"invalid UTF-8 at byte 13 of the line (0xC3)\"}",
        "{\"input_ids\": [101, 11113, 102], \"token_type_ids\": [0, 0, 0], \"attention_mask\": [1, 1, 1]}",
        "{\"error\": \"invalid JSON",
        "{\"input_ids\": [101, 2028, 2048, 2093, 2176, 102], \"token_type_ids\": [0, 0, 0, 0, 0, 0], "
        "\"attention_mask\": [1, 1, 1, 1, 1, 1]}",
    };
    char *line = got;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        if (strncmp(line, want[i], strlen(want[i])) != 0)
            fail_msg("output line %zu:\n  got  %s\n  want %s", i + 1, line, want[i]);
        line = nl + 1;
    }
    assert_string_equal(line, "");
    free(got);
    free(err);

    /* the whole corpus through the command line (JSON escapes, NULs, every script) against
     * transformers' untruncated single-text records */
    snprintf(cmd, sizeof cmd, "%s tokenize --model '%s' --max-length 0 --offsets < '%s' > '%s'",
             SQZ_SQZ_BINARY, TOKFIX, TOKFIX "/corpus.jsonl", out);
    assert_int_equal(system(cmd), 0);
    size_t ne;
    char *cli = (char *)read_whole(out, &n), *exp = (char *)read_whole(TOKFIX "/expected.jsonl", &ne);
    char **cli_lines = NULL;
    size_t ncli = 0;
    for (char *q = cli; *q;) {
        char *nl = strchr(q, '\n');
        assert_non_null(nl);
        *nl = '\0';
        cli_lines = realloc(cli_lines, (ncli + 1) * sizeof *cli_lines);
        cli_lines[ncli++] = q;
        q = nl + 1;
    }
    size_t compared = 0;
    for (char *q = strchr(exp, '\n') + 1; q && *q;) {
        char *nl = strchr(q, '\n');
        json_t *r = json_loadb(q, nl ? (size_t)(nl - q) : strlen(q), 0, NULL);
        q = nl ? nl + 1 : NULL;
        assert_non_null(r);
        if (strcmp(json_string_value(json_object_get(r, "config")), "uncased") == 0 &&
            json_is_null(json_object_get(r, "pair")) &&
            json_integer_value(json_object_get(r, "max_length")) == 0) {
            size_t ti = (size_t)json_integer_value(json_object_get(r, "text"));
            assert_true(ti < ncli);
            json_t *o = json_loads(cli_lines[ti], 0, NULL);
            assert_non_null(o);
            json_t *ids = json_object_get(o, "input_ids"), *offs = json_object_get(o, "offsets");
            json_t *wids = json_object_get(r, "ids"), *woffs = json_object_get(r, "offsets");
            if (!json_equal(ids, wids))
                fail_msg("corpus line %zu: sqz tokenize gives %s", ti, cli_lines[ti]);
            assert_int_equal(json_array_size(offs), json_array_size(wids));
            for (size_t k = 0; k < json_array_size(offs); k++) {
                json_t *pairk = json_array_get(offs, k);
                assert_true(json_equal(json_array_get(pairk, 0), json_array_get(woffs, 2 * k)));
                assert_true(json_equal(json_array_get(pairk, 1), json_array_get(woffs, 2 * k + 1)));
            }
            compared++;
            json_decref(o);
        }
        json_decref(r);
    }
    printf("sqz tokenize: %zu corpus lines match transformers\n", compared);
    assert_int_equal(compared, ncli);
    free(cli_lines);
    free(cli);
    free(exp);
    /* --help, and the usage errors */
    snprintf(cmd, sizeof cmd, "%s tokenize --help > '%s' 2>&1", SQZ_SQZ_BINARY, out);
    rc = system(cmd);
    assert_int_equal(WEXITSTATUS(rc), 0);
    got = (char *)read_whole(out, &n);
    assert_non_null(strstr(got, "usage: sqz tokenize --model DIR [--max-length N]"));
    free(got);
    snprintf(cmd, sizeof cmd, "%s tokenize < /dev/null > '%s' 2>&1", SQZ_SQZ_BINARY, out);
    rc = system(cmd);
    assert_int_equal(WEXITSTATUS(rc), 2);
    snprintf(cmd, sizeof cmd, "%s tokenize --model /nonexistent-sqz < /dev/null > '%s' 2>&1",
             SQZ_SQZ_BINARY, out);
    rc = system(cmd);
    assert_int_equal(WEXITSTATUS(rc), 1);
    got = (char *)read_whole(out, &n);
    assert_non_null(strstr(got, "vocab.txt"));
    free(got);
    free(in);
    free(out);
    free(errf);
    remove_temp_dir(dir);
}

/* ---- throughput (printed, never asserted) --------------------------------------------------------- */

static void test_throughput(void **unused)
{
    corpus c = load_corpus();
    sqz_tokenizer *tok = load_dir(TOKFIX);
    sqz_encoding *enc = NULL;
    size_t bytes = 0, tokens = 0, lines = 0;
    double t0 = now(), dt = 0;
    int rounds = 0;
    do { /* at least 0.5 s of work for a stable figure */
        for (size_t i = 0; i < c.n; i++) {
            assert_sqz_ok(sqz_tokenizer_encode(tok, c.text[i], c.len[i], NULL, 0, 512, &enc));
            bytes += c.len[i];
            tokens += enc->length;
        }
        lines += c.n;
        rounds++;
        dt = now() - t0;
    } while (dt < 0.5 && rounds < 1000);
    printf("throughput, one thread, corpus.jsonl x %d: %.0f lines/s, %.1f MB/s, %.2f M tokens/s\n",
           rounds, lines / dt, bytes / dt / 1e6, tokens / dt / 1e6);
    sqz_encoding_free(enc);
    sqz_tokenizer_free(tok);
    free_corpus(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_vector),
        cmocka_unit_test(test_transformers_corpus),
        cmocka_unit_test(test_unicode_reference),
        cmocka_unit_test(test_unicode_identity),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_hostile_input),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_api_details),
        cmocka_unit_test(test_settings_sources),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
