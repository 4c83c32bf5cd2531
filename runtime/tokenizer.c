/* The BERT WordPiece tokenizer, matching transformers' BertTokenizerFast (the Rust
 * `tokenizers` BertNormalizer + BertPreTokenizer + WordPiece + BERT template).
 *
 * Encoding is one streaming pass per text: each input character is cleaned, split off if it
 * is a CJK ideograph, decomposed and stripped of Mn marks, lower-cased and then fed to the
 * pre-tokenizer, which collects words and hands each finished word to WordPiece. Nothing
 * proportional to the input is buffered except the output tokens, and a word is stored only
 * up to max_input_chars_per_word characters (a longer one is a single unknown token anyway),
 * so hostile input costs linear time and, with truncation, bounded memory. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/files.h"
#include "runtime/tokenizer_unicode.h"

enum {
    MAX_VOCAB_ENTRIES = 1 << 24,      /* keeps a hostile vocab.txt from absurd tables */
    MAX_WORD_CHARS_LIMIT = 1 << 16,   /* upper bound accepted for max_input_chars_per_word */
    MAX_SPECIAL_TOKENS = 1 << 16,
};

/* The post-processor's framing: [first] A [last] for one text, [first] A [mid] B [last] for a
 * pair, each piece with its token type id (BERT: [CLS] A [SEP] B [SEP], types 0 0 0 1 1). */
typedef struct frame {
    int32_t first_id, mid_id, last_id;
    int64_t first_type, a_type, mid_type, b_type, last_type;
} frame;

typedef struct special_token {
    char *text;
    size_t len;
    int32_t id;
} special_token;

struct sqz_tokenizer {
    /* vocabulary: NUL-terminated entries in one arena, looked up by open addressing */
    char *arena;
    size_t *entry_off;   /* [vocab_size] */
    uint32_t *entry_len; /* [vocab_size] */
    int32_t vocab_size;
    int32_t *full_slots; /* id + 1 per slot, 0 empty; keyed by the whole entry */
    int32_t *cont_slots; /* keyed by the entry without the continuation prefix */
    size_t slot_mask;
    size_t max_full_len, max_cont_len; /* longest keys, in bytes: bounds the greedy search */
    char prefix[64];                   /* WordPiece continuing_subword_prefix ("##") */
    size_t prefix_len;

    bool lowercase, strip_accents, chinese, clean_text;
    int max_word_chars;
    int model_max_length;
    int32_t unk_id, pad_id, mask_id;
    frame single, pair;

    char vocab_file[1024];  /* the file the vocabulary came from, for messages */
    bool vocab_from_json, vocab_txt_present;
    int32_t vocab_txt_diff; /* first id where vocab.txt differs from tokenizer.json's, or -1 */
    char source[512];       /* what sqz info shows */

    special_token *specials; /* sorted by first byte, then longest first */
    size_t special_count;
    bool special_first[256];

    unsigned char ascii_flags[128];
    unsigned char ascii_lower[128];
};

/* ---- vocabulary hash ------------------------------------------------------------------- */

static uint64_t hash_bytes(const unsigned char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a: keys are short, this is plenty */
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static int32_t lookup(const sqz_tokenizer *t, const int32_t *slots, size_t skip,
                      const unsigned char *key, size_t n)
{
    size_t i = (size_t)hash_bytes(key, n) & t->slot_mask;
    for (;;) {
        int32_t v = slots[i];
        if (!v)
            return -1;
        int32_t id = v - 1;
        if (t->entry_len[id] == n + skip && memcmp(t->arena + t->entry_off[id] + skip, key, n) == 0)
            return id;
        i = (i + 1) & t->slot_mask;
    }
}

/* Inserts id keyed by its entry minus `skip` leading bytes; a later duplicate wins, as a
 * Python dict or Rust HashMap built from vocab.txt lets the last line win. */
static void insert(sqz_tokenizer *t, int32_t *slots, size_t skip, int32_t id)
{
    const unsigned char *key = (const unsigned char *)t->arena + t->entry_off[id] + skip;
    size_t n = t->entry_len[id] - skip;
    size_t i = (size_t)hash_bytes(key, n) & t->slot_mask;
    for (;;) {
        int32_t v = slots[i];
        if (!v) {
            slots[i] = id + 1;
            return;
        }
        int32_t old = v - 1;
        if (t->entry_len[old] == n + skip &&
            memcmp(t->arena + t->entry_off[old] + skip, key, n) == 0) {
            slots[i] = id + 1;
            return;
        }
        i = (i + 1) & t->slot_mask;
    }
}

int32_t sqz_tokenizer_token_to_id(const sqz_tokenizer *t, const char *token, size_t len)
{
    if (!t || (!token && len))
        return -1;
    return lookup(t, t->full_slots, 0, (const unsigned char *)token, len);
}

const char *sqz_tokenizer_id_to_token(const sqz_tokenizer *t, int32_t id)
{
    if (!t || id < 0 || id >= t->vocab_size)
        return NULL;
    return t->arena + t->entry_off[id];
}

static sqz_status build_tables(sqz_tokenizer *t)
{
    size_t slots = 16;
    while (slots < (size_t)t->vocab_size * 2)
        slots <<= 1;
    t->slot_mask = slots - 1;
    t->full_slots = calloc(slots, sizeof *t->full_slots);
    t->cont_slots = calloc(slots, sizeof *t->cont_slots);
    if (!t->full_slots || !t->cont_slots)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for the vocabulary table");
    t->max_full_len = t->max_cont_len = 0;
    for (int32_t id = 0; id < t->vocab_size; id++) {
        size_t n = t->entry_len[id];
        insert(t, t->full_slots, 0, id);
        if (n > t->max_full_len)
            t->max_full_len = n;
        if (t->prefix_len && n >= t->prefix_len &&
            memcmp(t->arena + t->entry_off[id], t->prefix, t->prefix_len) == 0) {
            insert(t, t->cont_slots, t->prefix_len, id);
            if (n - t->prefix_len > t->max_cont_len)
                t->max_cont_len = n - t->prefix_len;
        }
    }
    return SQZ_OK;
}

/* ---- loading ---------------------------------------------------------------------------- */

/* An integral JSON number within [lo, hi] (numbers are decoded as reals). */
static bool get_integral(json_t *v, double lo, double hi, long long *out)
{
    if (!json_is_number(v))
        return false;
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi) || x != (double)(long long)x)
        return false;
    *out = (long long)x;
    return true;
}

/* What sqz info shows as the tokenizer's source. */
static void describe_source(sqz_tokenizer *t, bool has_json, bool has_config)
{
    char txt[160] = "";
    if (t->vocab_txt_present && t->vocab_txt_diff < 0)
        snprintf(txt, sizeof txt, "; vocab.txt is there too and identical");
    else if (t->vocab_txt_present)
        snprintf(txt, sizeof txt, "; vocab.txt is there too but differs from id %d on, and is "
                 "ignored as transformers ignores it", t->vocab_txt_diff);
    snprintf(t->source, sizeof t->source, "%s%s%s",
             t->vocab_from_json ? "tokenizer.json (vocabulary and settings)"
             : has_json ? "vocab.txt (vocabulary) + tokenizer.json (settings)" : "vocab.txt",
             has_config ? " + tokenizer_config.json (its settings win)" : "", txt);
}

/* Splits a vocab.txt held in `data` (size bytes, one spare byte after it) into entries. */
static sqz_status split_vocab_txt(sqz_tokenizer *t, char *data, size_t size, const char *path)
{
    /* one entry per line; a final line without a newline counts, an empty file has none */
    size_t lines = 0;
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    if (size && data[size - 1] != '\n')
        lines++;
    if (lines == 0 || lines > MAX_VOCAB_ENTRIES)
        return sqz_fail(SQZ_ERR_FORMAT, "%s has %zu entries (expected 1 to %d)", path, lines,
                        MAX_VOCAB_ENTRIES);
    t->vocab_size = (int32_t)lines;
    t->entry_off = malloc(lines * sizeof *t->entry_off);
    t->entry_len = malloc(lines * sizeof *t->entry_len);
    if (!t->entry_off || !t->entry_len)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for %zu vocabulary entries", lines);
    size_t start = 0, id = 0;
    for (size_t i = 0; i <= size && id < lines; i++) {
        if (i < size && data[i] != '\n')
            continue;
        size_t end = i;
        /* the Rust reader trims trailing whitespace (this also drops a CRLF's \r) */
        while (end > start && (data[end - 1] == '\r' || data[end - 1] == ' ' ||
                               data[end - 1] == '\t' || data[end - 1] == '\f' ||
                               data[end - 1] == '\v'))
            end--;
        data[end] = '\0'; /* end <= i <= size, and data[size] is spare room */
        t->entry_off[id] = start;
        t->entry_len[id] = (uint32_t)(end - start);
        id++;
        start = i + 1;
    }
    t->arena = data;
    return SQZ_OK;
}

/* Reads dir/vocab.txt; *found false (and SQZ_OK) when there is none. */
static sqz_status read_vocab_txt(sqz_tokenizer *t, const char *path, bool *found)
{
    *found = false;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? SQZ_OK
                               : sqz_fail(SQZ_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    *found = true;
    sqz_status st = SQZ_OK;
    size_t size = 0, cap = 1 << 16;
    char *data = malloc(cap);
    while (data) {
        if (size + 1 >= cap) {
            char *bigger = realloc(data, cap * 2);
            if (!bigger) {
                free(data);
                data = NULL;
                break;
            }
            data = bigger;
            cap *= 2;
        }
        size_t got = fread(data + size, 1, cap - size - 1, f);
        size += got;
        if (got == 0)
            break;
    }
    if (!data) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
    } else if (ferror(f)) {
        st = sqz_fail(SQZ_ERR_IO, "error reading %s", path);
    } else if (sqz_utf8_validate((const unsigned char *)data, size) != size) {
        st = sqz_fail(SQZ_ERR_FORMAT, "%s is not valid UTF-8 (byte %zu)", path,
                      sqz_utf8_validate((const unsigned char *)data, size));
    }
    fclose(f);
    if (st == SQZ_OK)
        st = split_vocab_txt(t, data, size, path);
    if (st != SQZ_OK && t->arena != data)
        free(data);
    return st;
}

/* tokenizer.json's model.vocab: {"token": id, ...} with the ids 0..N-1 each exactly once
 * (what every WordPiece tokenizer.json holds; gaps or repeats would leave ids without a
 * token or tokens without an id, so they are refused). */
static sqz_status read_vocab_json(sqz_tokenizer *t, json_t *vocab, const char *file)
{
    size_t n = json_object_size(vocab);
    if (n == 0 || n > MAX_VOCAB_ENTRIES)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: model.vocab has %zu entries (expected 1 to %d)", file,
                        n, MAX_VOCAB_ENTRIES);
    size_t bytes = 0;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) bytes += strlen(key) + 1;
    t->entry_off = malloc(n * sizeof *t->entry_off);
    t->entry_len = malloc(n * sizeof *t->entry_len);
    t->arena = malloc(bytes);
    bool *seen = calloc(n, sizeof *seen);
    if (!t->entry_off || !t->entry_len || !t->arena || !seen) {
        free(seen);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for %zu vocabulary entries", n);
    }
    size_t off = 0;
    json_object_foreach(vocab, key, v) {
        long long id;
        if (!get_integral(v, 0, (double)n - 1, &id)) {
            free(seen);
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: model.vocab[\"%s\"] must be an integer id in 0..%zu (the ids of a "
                            "vocabulary of %zu tokens)", file, key, n - 1, n);
        }
        if (seen[id]) {
            free(seen);
            return sqz_fail(SQZ_ERR_FORMAT, "%s: model.vocab gives id %lld to two tokens (one is "
                            "\"%s\")", file, id, key);
        }
        seen[id] = true;
        size_t len = strlen(key);
        memcpy(t->arena + off, key, len + 1);
        t->entry_off[id] = off;
        t->entry_len[id] = (uint32_t)len;
        off += len + 1;
    }
    free(seen); /* n distinct ids in 0..n-1: every id has its token */
    t->vocab_size = (int32_t)n;
    return SQZ_OK;
}

/* A boolean setting: -1 absent or null, else 0/1. Wrong types are format errors. */
static sqz_status get_bool(json_t *obj, const char *key, const char *file, int *out)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v))
        return SQZ_OK;
    if (!json_is_boolean(v))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: \"%s\" must be true, false or null", file, key);
    *out = json_is_true(v);
    return SQZ_OK;
}

/* A token setting: a string or {"content": string}; NULL when absent. */
static const char *token_string(json_t *v)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static sqz_status add_special(sqz_tokenizer *t, const char *text, size_t len, int32_t id)
{
    if (!len)
        return SQZ_OK;
    for (size_t i = 0; i < t->special_count; i++)
        if (t->specials[i].len == len && memcmp(t->specials[i].text, text, len) == 0) {
            t->specials[i].id = id; /* the later definition wins */
            return SQZ_OK;
        }
    if (t->special_count >= MAX_SPECIAL_TOKENS)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "more than %d added tokens", MAX_SPECIAL_TOKENS);
    special_token *bigger = realloc(t->specials, (t->special_count + 1) * sizeof *bigger);
    if (!bigger)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    t->specials = bigger;
    char *copy = malloc(len + 1);
    if (!copy)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    memcpy(copy, text, len);
    copy[len] = '\0';
    t->specials[t->special_count++] = (special_token){copy, len, id};
    return SQZ_OK;
}

/* One entry of tokenizer.json's added_tokens or tokenizer_config.json's
 * added_tokens_decoder. Only tokens matched verbatim in the raw text are supported (what
 * BERT checkpoints use); the other matching modes would silently change ids, so they fail. */
static sqz_status add_added_token(sqz_tokenizer *t, json_t *entry, long long id, const char *file)
{
    const char *content = token_string(entry);
    if (!content)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: an added token has no \"content\" string", file);
    if (id < 0 || id >= t->vocab_size)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: added token \"%s\" has id %lld outside the vocabulary's %d entries",
                        file, content, id, t->vocab_size);
    static const char *const unsupported[] = {"normalized", "lstrip", "rstrip", "single_word"};
    for (size_t k = 0; k < sizeof unsupported / sizeof unsupported[0]; k++)
        if (json_is_true(json_object_get(entry, unsupported[k])))
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "%s: added token \"%s\" has %s=true; only verbatim added tokens are "
                            "supported", file, content, unsupported[k]);
    if (sqz_utf8_validate((const unsigned char *)content, strlen(content)) != strlen(content))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: added token is not valid UTF-8", file);
    return add_special(t, content, strlen(content), (int32_t)id);
}

typedef struct settings {
    int lowercase, strip, chinese, clean; /* -1 unset */
    int max_word_chars;                   /* -1 unset */
    const char *unk, *cls, *sep, *pad, *mask;
    bool cls_set, sep_set;                /* named by tokenizer_config.json */
    const char *prefix;
    json_t *post;                         /* tokenizer.json's post_processor, or NULL */
} settings;

/* The "type" of a tokenizer.json section, or NULL when it has none. */
static const char *section_type(json_t *section)
{
    json_t *type = json_is_object(section) ? json_object_get(section, "type") : NULL;
    return json_is_string(type) ? json_string_value(type) : NULL;
}

/* A tokenizer.json section we implement only one kind of: absent means the BERT default, any
 * other kind (null included) is refused by name rather than approximated. */
static sqz_status require_type(json_t *root, const char *key, const char *want, const char *file)
{
    json_t *section = json_object_get(root, key);
    if (!section)
        return SQZ_OK;
    const char *type = section_type(section);
    if (type && strcmp(type, want) == 0)
        return SQZ_OK;
    return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: %s is %s%s%s; only %s is supported (BERT's WordPiece "
                    "tokenizer)", file, key, type ? "\"" : "", type ? type : json_is_null(section) ? "null" : "without a type",
                    type ? "\"" : "", want);
}

static sqz_status read_tokenizer_json(json_t *root, const char *file, settings *s)
{
    sqz_status st;
    if ((st = require_type(root, "normalizer", "BertNormalizer", file)) != SQZ_OK ||
        (st = require_type(root, "pre_tokenizer", "BertPreTokenizer", file)) != SQZ_OK ||
        (st = require_type(root, "model", "WordPiece", file)) != SQZ_OK)
        return st;
    json_t *norm = json_object_get(root, "normalizer");
    if ((st = get_bool(norm, "lowercase", file, &s->lowercase)) != SQZ_OK ||
        (st = get_bool(norm, "strip_accents", file, &s->strip)) != SQZ_OK ||
        (st = get_bool(norm, "handle_chinese_chars", file, &s->chinese)) != SQZ_OK ||
        (st = get_bool(norm, "clean_text", file, &s->clean)) != SQZ_OK)
        return st;
    json_t *model = json_object_get(root, "model");
    if (json_is_object(model)) {
        json_t *unk = json_object_get(model, "unk_token"), *prefix = json_object_get(model, "continuing_subword_prefix");
        if (unk && !json_is_string(unk))
            return sqz_fail(SQZ_ERR_FORMAT, "%s: model.unk_token must be a string", file);
        if (prefix && !json_is_string(prefix))
            return sqz_fail(SQZ_ERR_FORMAT, "%s: model.continuing_subword_prefix must be a string", file);
        if (unk)
            s->unk = json_string_value(unk);
        if (prefix)
            s->prefix = json_string_value(prefix);
        json_t *m = json_object_get(model, "max_input_chars_per_word");
        if (m && !json_is_null(m)) {
            long long v;
            if (!get_integral(m, 0, MAX_WORD_CHARS_LIMIT, &v))
                return sqz_fail(SQZ_ERR_FORMAT,
                                "%s: max_input_chars_per_word must be an integer in 0..%d", file,
                                MAX_WORD_CHARS_LIMIT);
            s->max_word_chars = (int)v;
        }
    }
    json_t *post = json_object_get(root, "post_processor");
    if (post) {
        const char *type = section_type(post);
        if (!type || (strcmp(type, "TemplateProcessing") != 0 && strcmp(type, "BertProcessing") != 0))
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: post_processor is %s%s%s; only TemplateProcessing "
                            "(in BERT's [CLS] A [SEP] B [SEP] shape) and BertProcessing are supported", file,
                            type ? "\"" : "", type ? type : json_is_null(post) ? "null" : "without a type",
                            type ? "\"" : "");
        s->post = post;
    }
    return SQZ_OK;
}

/* ---- framing (the post-processor) ------------------------------------------------------- */

enum { MAX_TYPE_ID = 1 << 16 };

/* One piece of a TemplateProcessing template: a special token (its one id, from the
 * special_tokens map) or sequence A or B. */
static sqz_status template_piece(const sqz_tokenizer *t, json_t *piece, json_t *specials,
                                 const char *file, const char *where, char *seq, int32_t *id,
                                 int64_t *type)
{
    json_t *sp = json_object_get(piece, "SpecialToken"), *sq = json_object_get(piece, "Sequence");
    json_t *body = json_is_object(sp) ? sp : sq;
    long long ty;
    if (!json_is_object(body) || !json_is_string(json_object_get(body, "id")) ||
        !get_integral(json_object_get(body, "type_id"), 0, MAX_TYPE_ID, &ty))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: post_processor.%s: expected {\"SpecialToken\" or "
                        "\"Sequence\": {\"id\": string, \"type_id\": 0..%d}}", file, where, MAX_TYPE_ID);
    const char *name = json_string_value(json_object_get(body, "id"));
    *type = ty;
    if (body == sq) {
        if (strcmp(name, "A") != 0 && strcmp(name, "B") != 0)
            return sqz_fail(SQZ_ERR_FORMAT, "%s: post_processor.%s: sequence \"%s\" is neither A nor B",
                            file, where, name);
        *seq = name[0];
        return SQZ_OK;
    }
    *seq = 0;
    json_t *entry = json_object_get(specials, name), *ids = json_object_get(entry, "ids");
    long long v;
    if (!json_is_array(ids) || json_array_size(ids) != 1 ||
        !get_integral(json_array_get(ids, 0), 0, (double)t->vocab_size - 1, &v))
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: post_processor.special_tokens[\"%s\"] must have "
                        "\"ids\" of exactly one id in the vocabulary (0..%d)", file, name,
                        t->vocab_size - 1);
    *id = (int32_t)v;
    return SQZ_OK;
}

/* Reads template `key` ("single" or "pair") into f, which must be the BERT shape:
 * special A special (single) or special A special B special (pair), any ids and type ids. */
static sqz_status read_template(const sqz_tokenizer *t, json_t *post, const char *key,
                                const char *file, frame *f)
{
    json_t *list = json_object_get(post, key), *specials = json_object_get(post, "special_tokens");
    const bool pair = key[0] == 'p';
    const size_t n = pair ? 5 : 3;
    static const char shape[2][6] = {"SAS", "SASBS"};
    char got[8] = "";
    int32_t ids[5] = {0};
    int64_t types[5] = {0};
    for (size_t i = 0; json_is_array(list) && i < json_array_size(list) && i < 5; i++) {
        char where[32], seq = 0;
        snprintf(where, sizeof where, "%s[%zu]", key, i);
        sqz_status st = template_piece(t, json_array_get(list, i), specials, file, where, &seq,
                                       &ids[i], &types[i]);
        if (st != SQZ_OK)
            return st;
        got[i] = seq ? seq : 'S';
    }
    if (!json_is_array(list) || json_array_size(list) != n || strcmp(got, shape[pair]) != 0)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: post_processor.%s is not BERT's %s template; only "
                        "that shape is supported", file, key,
                        pair ? "[CLS] A [SEP] B [SEP]" : "[CLS] A [SEP]");
    f->first_id = ids[0], f->first_type = types[0], f->a_type = types[1];
    if (pair) {
        f->mid_id = ids[2], f->mid_type = types[2], f->b_type = types[3];
        f->last_id = ids[4], f->last_type = types[4];
    } else {
        f->last_id = ids[2], f->last_type = types[2];
    }
    return SQZ_OK;
}

/* BertProcessing: {"cls": ["[CLS]", id], "sep": ["[SEP]", id]} with types 0 and 1. */
static sqz_status read_bert_processing(const sqz_tokenizer *t, json_t *post, const char *file,
                                       int32_t *cls, int32_t *sep)
{
    const char *keys[2] = {"cls", "sep"};
    int32_t *out[2] = {cls, sep};
    for (int k = 0; k < 2; k++) {
        json_t *pair = json_object_get(post, keys[k]);
        long long v;
        if (!json_is_array(pair) || json_array_size(pair) != 2 ||
            !json_is_string(json_array_get(pair, 0)) ||
            !get_integral(json_array_get(pair, 1), 0, (double)t->vocab_size - 1, &v))
            return sqz_fail(SQZ_ERR_FORMAT, "%s: post_processor.%s must be [token, id] with an id "
                            "in the vocabulary (0..%d)", file, keys[k], t->vocab_size - 1);
        *out[k] = (int32_t)v;
    }
    return SQZ_OK;
}

/* The framing: tokenizer.json's post-processor when it has one, else BERT's template built
 * from the [CLS]/[SEP] token strings. tokenizer_config.json's cls_token/sep_token win in
 * transformers, so when they are named there and disagree with the post-processor the
 * load fails rather than pick one silently. */
static sqz_status resolve_framing(sqz_tokenizer *t, const settings *s, const char *tj_file,
                                  const char *tc_file)
{
    const int32_t cls = sqz_tokenizer_token_to_id(t, s->cls, strlen(s->cls));
    const int32_t sep = sqz_tokenizer_token_to_id(t, s->sep, strlen(s->sep));
    t->single = (frame){cls, -1, sep, 0, 0, 0, 0, 0};
    t->pair = (frame){cls, sep, sep, 0, 0, 0, 1, 1};
    if (!s->post) {
        if (cls < 0 || sep < 0)
            return sqz_fail(SQZ_ERR_FORMAT, "%s has no entry \"%s\" (needed as the %s token)",
                            t->vocab_file, cls < 0 ? s->cls : s->sep, cls < 0 ? "classifier" : "separator");
        return SQZ_OK;
    }
    sqz_status st;
    if (strcmp(section_type(s->post), "BertProcessing") == 0) {
        int32_t c, p;
        if ((st = read_bert_processing(t, s->post, tj_file, &c, &p)) != SQZ_OK)
            return st;
        t->single = (frame){c, -1, p, 0, 0, 0, 0, 0};
        t->pair = (frame){c, p, p, 0, 0, 0, 1, 1};
    } else if ((st = read_template(t, s->post, "single", tj_file, &t->single)) != SQZ_OK ||
               (st = read_template(t, s->post, "pair", tj_file, &t->pair)) != SQZ_OK) {
        return st;
    }
    if ((s->cls_set && (t->single.first_id != cls || t->pair.first_id != cls)) ||
        (s->sep_set && (t->single.last_id != sep || t->pair.mid_id != sep || t->pair.last_id != sep)))
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s names cls_token \"%s\" (id %d) and sep_token \"%s\" "
                        "(id %d), but %s's post_processor frames with ids %d and %d: the two files "
                        "disagree", tc_file, s->cls, cls, s->sep, sep, tj_file, t->single.first_id,
                        t->single.last_id);
    return SQZ_OK;
}

static sqz_status read_added_tokens(sqz_tokenizer *t, json_t *tokenizer_json, json_t *config,
                                    const char *tj_file, const char *tc_file)
{
    sqz_status st;
    json_t *list = tokenizer_json ? json_object_get(tokenizer_json, "added_tokens") : NULL;
    if (json_is_array(list)) {
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e) {
            long long id;
            if (!get_integral(json_object_get(e, "id"), -1e18, 1e18, &id))
                return sqz_fail(SQZ_ERR_FORMAT, "%s: added_tokens[%zu] has no integer id", tj_file, i);
            if ((st = add_added_token(t, e, id, tj_file)) != SQZ_OK)
                return st;
        }
    }
    json_t *dec = config ? json_object_get(config, "added_tokens_decoder") : NULL;
    if (json_is_object(dec)) {
        const char *key;
        json_t *e;
        json_object_foreach(dec, key, e) {
            char *end = NULL;
            long long id = strtoll(key, &end, 10);
            if (!*key || *end)
                return sqz_fail(SQZ_ERR_FORMAT, "%s: added_tokens_decoder key \"%s\" is not an id",
                                tc_file, key);
            if ((st = add_added_token(t, e, id, tc_file)) != SQZ_OK)
                return st;
        }
    }
    return SQZ_OK;
}

static int cmp_special(const void *a, const void *b)
{
    const special_token *x = a, *y = b;
    unsigned char fx = (unsigned char)x->text[0], fy = (unsigned char)y->text[0];
    if (fx != fy)
        return fx < fy ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1; /* longest first: leftmost-longest matching */
    return memcmp(x->text, y->text, x->len);
}

/* The vocabulary: tokenizer.json's model.vocab when it has one (transformers builds the
 * tokenizer from it and never reads vocab.txt then), else vocab.txt. When both exist, the
 * first entry where vocab.txt disagrees is recorded for sqz info. */
static sqz_status read_vocabulary(sqz_tokenizer *t, json_t *tj, const char *dir, const char *tj_file)
{
    json_t *vocab = tj ? json_object_get(json_object_get(tj, "model"), "vocab") : NULL;
    char *vt_file = sqz_path_join(dir, "vocab.txt");
    if (!vt_file)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    sqz_status st = SQZ_OK;
    if (vocab && !json_is_object(vocab)) {
        st = sqz_fail(SQZ_ERR_FORMAT, "%s: model.vocab must be an object {\"token\": id}", tj_file);
    } else if (vocab) {
        st = read_vocab_json(t, vocab, tj_file);
        t->vocab_from_json = true;
        snprintf(t->vocab_file, sizeof t->vocab_file, "%s", tj_file);
        if (st == SQZ_OK && sqz_file_exists(vt_file)) {
            /* compared only to be reported: transformers ignores it */
            sqz_tokenizer txt = {0};
            bool found = false;
            if (read_vocab_txt(&txt, vt_file, &found) == SQZ_OK && found) {
                int32_t diff = -1;
                for (int32_t id = 0; id < t->vocab_size && id < txt.vocab_size && diff < 0; id++)
                    if (t->entry_len[id] != txt.entry_len[id] ||
                        memcmp(t->arena + t->entry_off[id], txt.arena + txt.entry_off[id], t->entry_len[id]) != 0)
                        diff = id;
                if (diff < 0 && txt.vocab_size != t->vocab_size)
                    diff = t->vocab_size < txt.vocab_size ? t->vocab_size : txt.vocab_size;
                t->vocab_txt_diff = diff;
                t->vocab_txt_present = true;
            }
            free(txt.arena), free(txt.entry_off), free(txt.entry_len);
            sqz_clear_error();
        }
    } else {
        bool found = false;
        st = read_vocab_txt(t, vt_file, &found);
        snprintf(t->vocab_file, sizeof t->vocab_file, "%s", vt_file);
        if (st == SQZ_OK && !found)
            st = sqz_fail(SQZ_ERR_IO, "no tokenizer vocabulary: %s does not exist and %s %s (the "
                          "tokenizer needs vocab.txt or a tokenizer.json with model.vocab)", vt_file,
                          tj_file, tj ? "has no model.vocab" : "does not exist either");
    }
    free(vt_file);
    return st;
}

enum {
    MAX_TOKENIZER_JSON_BYTES = 128 << 20,  /* 30k-250k-entry vocabularies are 0.5-20 MB */
    MAX_TOKENIZER_CONFIG_BYTES = 16 << 20,
};

sqz_status sqz_tokenizer_load(const char *dir, sqz_tokenizer **out)
{
    if (!out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_tokenizer_load: out is NULL");
    *out = NULL;
    if (!dir)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_tokenizer_load: model_dir is NULL");
    sqz_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    json_t *tj = NULL, *tc = NULL;
    char *tj_file = sqz_path_join(dir, "tokenizer.json"), *tc_file = sqz_path_join(dir, "tokenizer_config.json");
    sqz_status st = SQZ_OK;
    if (!tj_file || !tc_file) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        goto fail;
    }
    /* every number as a real: transformers writes int(1e30) as model_max_length, which
     * overflows jansson's integers */
    const size_t flags = JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL;
    t->vocab_txt_diff = -1;
    if ((st = sqz_json_read(tj_file, MAX_TOKENIZER_JSON_BYTES, flags, JSON_OBJECT, true, &tj)) != SQZ_OK ||
        (st = sqz_json_read(tc_file, MAX_TOKENIZER_CONFIG_BYTES, flags, JSON_OBJECT, true, &tc)) != SQZ_OK)
        goto fail;
    settings s = {-1, -1, -1, -1, -1, "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", false, false, "##", NULL};
    if (tj && (st = read_tokenizer_json(tj, tj_file, &s)) != SQZ_OK)
        goto fail;
    if ((st = read_vocabulary(t, tj, dir, tj_file)) != SQZ_OK)
        goto fail;
    if (tc) { /* tokenizer_config.json wins: transformers builds the normaliser from it */
        if ((st = get_bool(tc, "do_lower_case", tc_file, &s.lowercase)) != SQZ_OK ||
            (st = get_bool(tc, "tokenize_chinese_chars", tc_file, &s.chinese)) != SQZ_OK)
            goto fail;
        /* strip_accents: an explicit null in the config means "follow lower case" */
        json_t *sa = json_object_get(tc, "strip_accents");
        if (sa && json_is_null(sa))
            s.strip = -1;
        else if ((st = get_bool(tc, "strip_accents", tc_file, &s.strip)) != SQZ_OK)
            goto fail;
        const char *v;
        if ((v = token_string(json_object_get(tc, "unk_token"))))
            s.unk = v;
        if ((v = token_string(json_object_get(tc, "cls_token"))))
            s.cls = v, s.cls_set = true;
        if ((v = token_string(json_object_get(tc, "sep_token"))))
            s.sep = v, s.sep_set = true;
        if ((v = token_string(json_object_get(tc, "pad_token"))))
            s.pad = v;
        if ((v = token_string(json_object_get(tc, "mask_token"))))
            s.mask = v;
        long long mml;
        /* transformers writes int(1e30) for "no limit": that reads as 0 here */
        if (get_integral(json_object_get(tc, "model_max_length"), 1, INT_MAX, &mml))
            t->model_max_length = (int)mml;
    }
    t->lowercase = s.lowercase != 0; /* default true */
    t->strip_accents = s.strip < 0 ? t->lowercase : s.strip != 0;
    t->chinese = s.chinese != 0;
    t->clean_text = s.clean != 0;
    t->max_word_chars = s.max_word_chars < 0 ? 100 : s.max_word_chars;
    t->prefix_len = strlen(s.prefix);
    if (t->prefix_len >= sizeof t->prefix) {
        st = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: continuing_subword_prefix longer than %zu bytes",
                      tj_file, sizeof t->prefix - 1);
        goto fail;
    }
    memcpy(t->prefix, s.prefix, t->prefix_len + 1);
    if ((st = build_tables(t)) != SQZ_OK)
        goto fail;

    t->unk_id = sqz_tokenizer_token_to_id(t, s.unk, strlen(s.unk));
    t->pad_id = sqz_tokenizer_token_to_id(t, s.pad, strlen(s.pad));
    t->mask_id = sqz_tokenizer_token_to_id(t, s.mask, strlen(s.mask));
    if (t->unk_id < 0) {
        st = sqz_fail(SQZ_ERR_FORMAT, "%s has no entry \"%s\" (needed as the unknown token)",
                      t->vocab_file, s.unk);
        goto fail;
    }
    if ((st = resolve_framing(t, &s, tj_file, tc_file)) != SQZ_OK)
        goto fail;
    /* the named special tokens are matched verbatim in the raw text, as transformers does */
    const char *named[] = {s.pad, s.unk, s.cls, s.sep, s.mask};
    for (size_t i = 0; i < 5; i++) {
        int32_t id = sqz_tokenizer_token_to_id(t, named[i], strlen(named[i]));
        if (id >= 0 && (st = add_special(t, named[i], strlen(named[i]), id)) != SQZ_OK)
            goto fail;
    }
    if ((st = read_added_tokens(t, tj, tc, tj_file, tc_file)) != SQZ_OK)
        goto fail;
    if (t->special_count)
        qsort(t->specials, t->special_count, sizeof *t->specials, cmp_special);
    for (size_t i = 0; i < t->special_count; i++)
        t->special_first[(unsigned char)t->specials[i].text[0]] = true;

    for (uint32_t c = 0; c < 128; c++) {
        uint32_t low[SQZ_UC_MAX_LOWER];
        t->ascii_flags[c] = (unsigned char)sqz_uc_flags(c);
        t->ascii_lower[c] = (unsigned char)(sqz_uc_lower(c, low) == 1 && low[0] < 128 ? low[0] : c);
    }
    describe_source(t, tj != NULL, tc != NULL);
    json_decref(tj);
    json_decref(tc);
    free(tj_file);
    free(tc_file);
    *out = t;
    return SQZ_OK;
fail:
    json_decref(tj);
    json_decref(tc);
    free(tj_file);
    free(tc_file);
    sqz_tokenizer_free(t);
    return st;
}

void sqz_tokenizer_free(sqz_tokenizer *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->special_count; i++)
        free(t->specials[i].text);
    free(t->specials);
    free(t->arena);
    free(t->entry_off);
    free(t->entry_len);
    free(t->full_slots);
    free(t->cont_slots);
    free(t);
}

const char *sqz_tokenizer_source(const sqz_tokenizer *t) { return t ? t->source : ""; }

sqz_status sqz_tokenizer_get_info(const sqz_tokenizer *t, sqz_tokenizer_info *out)
{
    if (!t || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_tokenizer_get_info: NULL argument");
    *out = (sqz_tokenizer_info){
        .vocab_size = t->vocab_size,
        .do_lower_case = t->lowercase,
        .strip_accents = t->strip_accents,
        .tokenize_chinese_chars = t->chinese,
        .clean_text = t->clean_text,
        .max_input_chars_per_word = t->max_word_chars,
        .model_max_length = t->model_max_length,
        .unk_id = t->unk_id,
        .cls_id = t->single.first_id,
        .sep_id = t->single.last_id,
        .pad_id = t->pad_id,
        .mask_id = t->mask_id,
        .special_token_count = t->special_count,
    };
    return SQZ_OK;
}

/* ---- encoding ------------------------------------------------------------------------------ */

typedef struct piece {
    int32_t id;
    size_t start, end;
} piece;

/* Tokens of one sequence: all are counted, the first `limit` are kept. */
typedef struct seq_tokens {
    piece *v;
    size_t n, cap, count, limit;
    bool oom;
} seq_tokens;

typedef struct word_char {
    uint32_t c;
    size_t start, end; /* original bytes this normalised character is aligned to */
} word_char;

/* A combining mark waiting for NFD's canonical ordering. */
typedef struct run_entry {
    uint32_t c;
    uint8_t ccc;
    uint8_t first;   /* first character of its source character's decomposition */
    uint8_t removed; /* Mn: dropped after ordering when accents are stripped */
    size_t start, end;
} run_entry;

/* Longest run of combining marks ordered as one; a longer (hostile) run is cut there, the
 * only place where the result may differ from transformers. Keeps memory bounded. */
#define MAX_RUN 4096

typedef struct encoder {
    const sqz_tokenizer *t;
    seq_tokens *out;
    word_char *chars;   /* [max_word_chars]: the current word, as far as it is stored */
    size_t n, count;    /* stored and total characters of the current word */
    size_t first_start, last_end; /* of the whole word, stored or not */
    unsigned char *bytes; /* [max_word_chars * 4]: the word in UTF-8 */
    size_t *bounds;       /* [max_word_chars + 1]: byte offset of each character */
    piece *pieces;        /* [max_word_chars]: WordPiece output before it is accepted */
    run_entry *run, *run_tmp; /* [MAX_RUN] */
    sqz_span *consumed;       /* [MAX_RUN] */
    size_t run_n;
    sqz_span cur; /* alignment of the source character consumed last */
} encoder;

typedef struct encoding_impl {
    sqz_encoding pub; /* first: the caller's pointer is to this */
    int64_t *ids, *types, *mask;
    sqz_span *offsets;
    int8_t *seq_ids;
    size_t cap;
    seq_tokens seq[2];
    word_char *chars;
    unsigned char *bytes;
    size_t *bounds;
    piece *pieces;
    run_entry *run, *run_tmp;
    sqz_span *consumed;
    int word_cap; /* max_word_chars the scratch was sized for */
} encoding_impl;

static void emit(seq_tokens *s, int32_t id, size_t start, size_t end)
{
    s->count++;
    if (s->n >= s->limit || s->oom)
        return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        piece *bigger = realloc(s->v, cap * sizeof *bigger);
        if (!bigger) {
            s->oom = true;
            return;
        }
        s->v = bigger;
        s->cap = cap;
    }
    s->v[s->n++] = (piece){id, start, end};
}

static void flush_word(encoder *e)
{
    if (!e->count)
        return;
    const sqz_tokenizer *t = e->t;
    if (e->count > (size_t)t->max_word_chars) {
        emit(e->out, t->unk_id, e->first_start, e->last_end);
        e->n = e->count = 0;
        return;
    }
    size_t first_start = e->chars[0].start, last_end = e->chars[e->n - 1].end;
    size_t nb = 0;
    for (size_t i = 0; i < e->n; i++) {
        e->bounds[i] = nb;
        nb += sqz_utf8_encode(e->chars[i].c, e->bytes + nb);
    }
    e->bounds[e->n] = nb;
    /* greedy longest match: the first piece as is, later ones after the "##" prefix */
    size_t np = 0, i = 0;
    bool bad = false;
    while (i < e->n) {
        size_t max_len = i == 0 ? t->max_full_len : t->max_cont_len;
        size_t j = e->n;
        while (j > i && e->bounds[j] - e->bounds[i] > max_len)
            j--;
        int32_t id = -1;
        for (; j > i; j--) {
            id = lookup(t, i == 0 ? t->full_slots : t->cont_slots, i == 0 ? 0 : t->prefix_len,
                        e->bytes + e->bounds[i], e->bounds[j] - e->bounds[i]);
            if (id >= 0)
                break;
        }
        if (id < 0) {
            bad = true;
            break;
        }
        e->pieces[np++] = (piece){id, e->chars[i].start, e->chars[j - 1].end};
        i = j;
    }
    if (bad)
        emit(e->out, t->unk_id, first_start, last_end);
    else
        for (size_t k = 0; k < np; k++)
            emit(e->out, e->pieces[k].id, e->pieces[k].start, e->pieces[k].end);
    e->n = e->count = 0;
}

/* Appends a normalised character to the current word. With accents stripped, NFD's
 * canonical ordering is applied to the marks that survive (Mn marks are gone already). */
/* Appends a normalised character to the current word. */
static inline void push_char(encoder *e, uint32_t c, size_t start, size_t end)
{
    if (!e->count++)
        e->first_start = start;
    e->last_end = end;
    if (e->n >= (size_t)e->t->max_word_chars)
        return; /* too long: it will be one unknown token, only the count matters */
    e->chars[e->n++] = (word_char){c, start, end};
}

/* One normalised character: the pre-tokenizer's whitespace / punctuation split. */
static inline void pretokenize(encoder *e, uint32_t c, unsigned flags, size_t start, size_t end)
{
    if (flags & SQZ_UC_SPACE) {
        flush_word(e);
    } else if (flags & SQZ_UC_PUNCT) {
        flush_word(e);
        push_char(e, c, start, end);
        flush_word(e);
    } else {
        push_char(e, c, start, end);
    }
}

/* A character after accent stripping: lower-case it, then pre-tokenize. */
static void lower_and_split(encoder *e, uint32_t c, unsigned flags, size_t start, size_t end)
{
    if (!e->t->lowercase) {
        pretokenize(e, c, flags, start, end);
        return;
    }
    uint32_t low[SQZ_UC_MAX_LOWER];
    int nl = sqz_uc_lower(c, low);
    for (int j = 0; j < nl; j++)
        pretokenize(e, low[j], low[j] == c ? flags : sqz_uc_flags(low[j]), start, end);
}

/* Ends a run of combining marks: a stable sort by combining class (NFD's canonical order).
 * Alignments stay where they were, as in the Rust crate: the k-th first-of-decomposition
 * character in the new order is aligned with the k-th source character, the others with
 * the source character before them. Then the marks that are Mn are dropped. */
static void close_run(encoder *e)
{
    size_t n = e->run_n;
    if (!n)
        return;
    run_entry *r = e->run;
    size_t nc = 0;
    for (size_t i = 0; i < n; i++)
        if (r[i].first)
            e->consumed[nc++] = (sqz_span){r[i].start, r[i].end};
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            run_entry x = r[i];
            size_t k = i;
            while (k > 0 && r[k - 1].ccc > x.ccc) {
                r[k] = r[k - 1];
                k--;
            }
            r[k] = x;
        }
    } else { /* counting sort: stable and linear, whatever the order of classes */
        size_t pos[257] = {0};
        for (size_t i = 0; i < n; i++)
            pos[r[i].ccc + 1]++;
        for (int k = 1; k < 257; k++)
            pos[k] += pos[k - 1];
        for (size_t i = 0; i < n; i++)
            e->run_tmp[pos[r[i].ccc]++] = r[i];
        memcpy(r, e->run_tmp, n * sizeof *r);
    }
    e->run_n = 0;
    size_t ci = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].first)
            e->cur = e->consumed[ci++];
        if (!r[i].removed)
            lower_and_split(e, r[i].c, sqz_uc_flags(r[i].c), e->cur.start, e->cur.end);
    }
}

static void normalize_char(encoder *e, uint32_t c, size_t start, size_t end)
{
    const sqz_tokenizer *t = e->t;
    unsigned f = sqz_uc_flags(c);
    if (t->clean_text) {
        if (f & SQZ_UC_CONTROL)
            return;
        if (f & SQZ_UC_SPACE) { /* becomes ' ', which ends the word */
            close_run(e);
            flush_word(e);
            e->cur = (sqz_span){start, end};
            return;
        }
    }
    bool cjk = t->chinese && sqz_uc_is_cjk(c);
    if (cjk) {
        close_run(e);
        flush_word(e);
    }
    if (!t->strip_accents) {
        lower_and_split(e, c, f, start, end);
    } else {
        uint32_t dec[SQZ_UC_MAX_DECOMPOSITION];
        int nd = sqz_uc_decompose(c, dec);
        for (int k = 0; k < nd; k++) {
            uint32_t d = dec[k];
            unsigned fd = d == c ? f : sqz_uc_flags(d);
            int ccc = sqz_uc_combining_class(d);
            if (ccc) {
                if (e->run_n == MAX_RUN)
                    close_run(e);
                e->run[e->run_n++] = (run_entry){d, (uint8_t)ccc, k == 0, (fd & SQZ_UC_MARK) != 0,
                                                 start, end};
                continue;
            }
            close_run(e);
            if (k == 0)
                e->cur = (sqz_span){start, end};
            if (!(fd & SQZ_UC_MARK))
                lower_and_split(e, d, fd, e->cur.start, e->cur.end);
        }
    }
    if (cjk) {
        close_run(e);
        flush_word(e);
    }
}

/* The longest special token at s[0..n), or NULL. */
static const special_token *match_special(const sqz_tokenizer *t, const unsigned char *s, size_t n)
{
    /* specials are sorted by first byte, longest first within a byte */
    size_t lo = 0, hi = t->special_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((unsigned char)t->specials[mid].text[0] < s[0])
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < t->special_count && (unsigned char)t->specials[i].text[0] == s[0]; i++) {
        const special_token *sp = &t->specials[i];
        if (sp->len <= n && memcmp(sp->text, s, sp->len) == 0)
            return sp;
    }
    return NULL;
}

/* Tokenizes one text into e->out; with stop_when_full it returns once more tokens than the
 * limit exist (a single text needs no exact count to be truncated). */
static void encode_text(encoder *e, const unsigned char *s, size_t len, bool stop_when_full)
{
    const sqz_tokenizer *t = e->t;
    seq_tokens *out = e->out;
    e->n = e->count = e->run_n = 0;
    e->cur = (sqz_span){0, 0};
    size_t i = 0;
    while (i < len) {
        if (stop_when_full && out->count > out->limit)
            return;
        unsigned char b = s[i];
        if (t->special_first[b]) {
            const special_token *sp = match_special(t, s + i, len - i);
            if (sp) {
                close_run(e);
                flush_word(e);
                emit(out, sp->id, i, i + sp->len);
                i += sp->len;
                e->cur = (sqz_span){i, i}; /* the next segment is normalised on its own */
                continue;
            }
        }
        if (b < 0x80) { /* ASCII: a starter without decomposition, one table look-up */
            unsigned f = t->ascii_flags[b];
            if (t->clean_text && (f & SQZ_UC_CONTROL)) {
                i++;
                continue;
            }
            if (e->run_n)
                close_run(e);
            e->cur = (sqz_span){i, i + 1};
            uint32_t c = t->lowercase ? t->ascii_lower[b] : b;
            pretokenize(e, c, f, i, i + 1);
            i++;
            continue;
        }
        uint32_t c = 0;
        size_t l = sqz_utf8_decode(s + i, len - i, &c); /* validated before */
        if (!l)
            l = 1;
        normalize_char(e, c, i, i + l);
        i += l;
    }
    close_run(e);
    flush_word(e);
}

/* transformers' (tokenizers') longest_first for a pair: balance the two lengths. */
static void truncate_pair(size_t budget, size_t *a, size_t *b)
{
    size_t n1 = *a, n2 = *b;
    if (n1 + n2 <= budget)
        return;
    bool swap = n1 > n2;
    if (swap) {
        size_t x = n1;
        n1 = n2;
        n2 = x;
    }
    if (n1 > budget)
        n2 = n1;
    else
        n2 = n1 > budget - n1 ? n1 : budget - n1;
    if (n1 + n2 > budget) {
        n1 = budget / 2;
        n2 = n1 + budget % 2;
    }
    if (swap) {
        size_t x = n1;
        n1 = n2;
        n2 = x;
    }
    *a = n1;
    *b = n2;
}

static void reset_encoding(encoding_impl *impl)
{
    impl->pub = (sqz_encoding){0, impl->ids, impl->types, impl->mask, impl->offsets, impl->seq_ids, 0};
}

void sqz_encoding_free(sqz_encoding *encoding)
{
    if (!encoding)
        return;
    encoding_impl *impl = (encoding_impl *)encoding;
    free(impl->ids);
    free(impl->types);
    free(impl->mask);
    free(impl->offsets);
    free(impl->seq_ids);
    free(impl->seq[0].v);
    free(impl->seq[1].v);
    free(impl->chars);
    free(impl->bytes);
    free(impl->bounds);
    free(impl->pieces);
    free(impl->run);
    free(impl->run_tmp);
    free(impl->consumed);
    free(impl);
}

static sqz_status check_utf8(const char *s, size_t n, const char *what)
{
    size_t bad = sqz_utf8_validate((const unsigned char *)s, n);
    if (bad == n)
        return SQZ_OK;
    char bytes[32] = "";
    size_t k = 0;
    for (size_t i = bad; i < n && i < bad + 4; i++)
        k += (size_t)snprintf(bytes + k, sizeof bytes - k, "%s0x%02X", i > bad ? " " : "",
                              (unsigned char)s[i]);
    return sqz_fail(SQZ_ERR_INPUT, "invalid UTF-8 in %s at byte %zu (%s)", what, bad, bytes);
}

static bool grow_output(encoding_impl *impl, size_t n)
{
    if (n <= impl->cap)
        return true;
    size_t cap = impl->cap ? impl->cap : 64;
    while (cap < n)
        cap *= 2;
    int64_t *ids = realloc(impl->ids, cap * sizeof *ids);
    if (ids)
        impl->ids = ids;
    int64_t *types = realloc(impl->types, cap * sizeof *types);
    if (types)
        impl->types = types;
    int64_t *mask = realloc(impl->mask, cap * sizeof *mask);
    if (mask)
        impl->mask = mask;
    sqz_span *off = realloc(impl->offsets, cap * sizeof *off);
    if (off)
        impl->offsets = off;
    int8_t *sid = realloc(impl->seq_ids, cap * sizeof *sid);
    if (sid)
        impl->seq_ids = sid;
    if (!ids || !types || !mask || !off || !sid)
        return false;
    impl->cap = cap;
    return true;
}

sqz_status sqz_tokenizer_encode(const sqz_tokenizer *t, const char *text, size_t text_len,
                                const char *pair, size_t pair_len, int max_length,
                                sqz_encoding **out)
{
    if (!out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_tokenizer_encode: out is NULL");
    encoding_impl *impl = (encoding_impl *)*out;
    if (impl)
        reset_encoding(impl);
    if (!t || (!text && text_len) || (!pair && pair_len))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_tokenizer_encode: NULL tokenizer or text");
    if (max_length < 0)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "sqz_tokenizer_encode: max_length must be >= 0 (0: no truncation), got %d",
                        max_length);
    sqz_status st;
    if ((st = check_utf8(text, text_len, "text")) != SQZ_OK ||
        (pair_len && (st = check_utf8(pair, pair_len, "text_pair")) != SQZ_OK))
        return st;
    if (!impl) {
        impl = calloc(1, sizeof *impl);
        if (!impl)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        reset_encoding(impl);
        *out = &impl->pub;
    }
    if (impl->word_cap != t->max_word_chars || !impl->chars) {
        size_t w = (size_t)t->max_word_chars + 1;
        free(impl->chars);
        free(impl->bytes);
        free(impl->bounds);
        free(impl->pieces);
        impl->chars = malloc(w * sizeof *impl->chars);
        impl->bytes = malloc(w * 4);
        impl->bounds = malloc((w + 1) * sizeof *impl->bounds);
        impl->pieces = malloc(w * sizeof *impl->pieces);
        impl->word_cap = t->max_word_chars;
        if (!impl->run) {
            impl->run = malloc(MAX_RUN * sizeof *impl->run);
            impl->run_tmp = malloc(MAX_RUN * sizeof *impl->run_tmp);
            impl->consumed = malloc(MAX_RUN * sizeof *impl->consumed);
        }
        if (!impl->chars || !impl->bytes || !impl->bounds || !impl->pieces || !impl->run ||
            !impl->run_tmp || !impl->consumed) {
            free(impl->chars);
            impl->chars = NULL;
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        }
    }
    bool has_pair = pair && pair_len > 0;
    size_t specials = has_pair ? 3 : 2;
    bool truncate = max_length > 0 && (size_t)max_length >= specials;
    size_t budget = truncate ? (size_t)max_length - specials : SIZE_MAX;

    encoder e = {.t = t, .chars = impl->chars, .bytes = impl->bytes, .bounds = impl->bounds,
                 .pieces = impl->pieces, .run = impl->run, .run_tmp = impl->run_tmp,
                 .consumed = impl->consumed};
    for (int k = 0; k < 2; k++) {
        impl->seq[k].n = impl->seq[k].count = 0;
        impl->seq[k].limit = budget;
        impl->seq[k].oom = false;
    }
    e.out = &impl->seq[0];
    encode_text(&e, (const unsigned char *)text, text_len, truncate && !has_pair);
    if (has_pair) {
        e.out = &impl->seq[1];
        encode_text(&e, (const unsigned char *)pair, pair_len, false);
    }
    if (impl->seq[0].oom || impl->seq[1].oom)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for %zu tokens",
                        impl->seq[0].count + impl->seq[1].count);
    size_t ka = impl->seq[0].count, kb = has_pair ? impl->seq[1].count : 0;
    if (truncate) {
        if (has_pair)
            truncate_pair(budget, &ka, &kb);
        else if (ka > budget)
            ka = budget;
    }
    size_t total = ka + kb + specials;
    if (!grow_output(impl, total))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for %zu tokens", total);
    size_t k = 0;
#define PUT(id_, type_, start_, end_, seq_)                                                    \
    do {                                                                                   \
        impl->ids[k] = (id_);                                                              \
        impl->types[k] = (type_);                                                          \
        impl->mask[k] = 1;                                                                 \
        impl->offsets[k] = (sqz_span){(start_), (end_)};                                   \
        impl->seq_ids[k] = (seq_);                                                         \
        k++;                                                                               \
    } while (0)
    const frame *f = has_pair ? &t->pair : &t->single;
    PUT(f->first_id, f->first_type, 0, 0, -1);
    for (size_t i = 0; i < ka; i++)
        PUT(impl->seq[0].v[i].id, f->a_type, impl->seq[0].v[i].start, impl->seq[0].v[i].end, 0);
    if (has_pair) {
        PUT(f->mid_id, f->mid_type, 0, 0, -1);
        for (size_t i = 0; i < kb; i++)
            PUT(impl->seq[1].v[i].id, f->b_type, impl->seq[1].v[i].start, impl->seq[1].v[i].end, 1);
    }
    PUT(f->last_id, f->last_type, 0, 0, -1);
#undef PUT
    impl->pub = (sqz_encoding){total, impl->ids, impl->types, impl->mask, impl->offsets,
                               impl->seq_ids,
                               ka < impl->seq[0].count || (has_pair && kb < impl->seq[1].count)};
    return SQZ_OK;
}
