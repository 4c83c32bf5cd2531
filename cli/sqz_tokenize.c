/* sqz tokenize: JSON Lines of text in, BERT token ids out, one line per input line.
 * A fixed contract (checks outside the project use it); uses only the public API. */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "squeezebert.h"
#include "cli/sqz_commands.h"

#define EXIT_USAGE 2

static const char tokenize_help[] =
    "usage: sqz tokenize --model DIR [--max-length N] [--offsets]\n"
    "\n"
    "Reads JSON Lines on stdin, {\"text\": ..., \"text_pair\": ...} (text_pair optional), and\n"
    "writes one line per input line on stdout:\n"
    "  {\"input_ids\": [...], \"token_type_ids\": [...], \"attention_mask\": [...]}\n"
    "unpadded, [CLS]/[SEP] included, exactly as transformers' BertTokenizerFast with\n"
    "truncation=True. A line that cannot be tokenized (bad JSON, no \"text\" string, invalid\n"
    "UTF-8) gets {\"error\": \"...\"} on its line and the rest go on; the exit status is 1\n"
    "when any line failed.\n"
    "\n"
    "  --model DIR       tokenizer.json and/or vocab.txt, plus tokenizer_config.json when present\n"
    "  --max-length N    truncate longest_first to N tokens in all; 0: no truncation\n"
    "                    (default: max_position_embeddings of DIR/config.json, else 512)\n"
    "  --offsets         also write \"offsets\": [[start, end], ...], byte offsets into the\n"
    "                    text (or text_pair); [0, 0] for [CLS]/[SEP]\n";

/* A growable output line. */
typedef struct line_buf {
    char *p;
    size_t n, cap;
    bool oom;
} line_buf;

static void put(line_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        char *bigger = realloc(b->p, cap);
        if (!bigger) {
            b->oom = true;
            return;
        }
        b->p = bigger;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void put_str(line_buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u64(line_buf *b, uint64_t v)
{
    char tmp[24];
    size_t k = sizeof tmp;
    do {
        tmp[--k] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(b, tmp + k, sizeof tmp - k);
}

static void put_array(line_buf *b, const char *name, const int64_t *v, size_t n)
{
    put_str(b, name);
    put(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            put(b, ", ", 2);
        put_u64(b, (uint64_t)v[i]); /* ids, types and mask are never negative */
    }
    put(b, "]", 1);
}

/* Offset of the first invalid UTF-8 sequence, or n. */
static size_t utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3
                                : c >= 0xF0 && c < 0xF5 ? 4 : 0;
        if (!len || i + len > n)
            return i;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0) ||
            (c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] >= 0x90))
            return i; /* overlong, surrogate or beyond U+10FFFF */
        i += len;
    }
    return n;
}

static void put_error(line_buf *b, const char *message)
{
    json_t *s = json_string(message);
    char *quoted = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    put_str(b, "{\"error\": ");
    put_str(b, quoted ? quoted : "\"error\"");
    put_str(b, "}");
    free(quoted);
    json_decref(s);
}

/* Tokenizes one input line into out; returns 0, or 1 after writing an error record. */
static int process_line(const sqz_tokenizer *tok, char *line, size_t len, int max_length,
                        bool offsets, sqz_encoding **enc, line_buf *out)
{
    char msg[1024];
    size_t bad = utf8_check((const unsigned char *)line, len);
    if (bad != len) {
        snprintf(msg, sizeof msg, "invalid UTF-8 at byte %zu of the line (0x%02X)", bad,
                 (unsigned char)line[bad]);
        put_error(out, msg);
        return 1;
    }
    json_error_t err;
    json_t *root = json_loadb(line, len, JSON_ALLOW_NUL, &err);
    if (!root) {
        snprintf(msg, sizeof msg, "invalid JSON at column %d: %s", err.column, err.text);
        put_error(out, msg);
        return 1;
    }
    int rc = 1;
    json_t *text = json_is_object(root) ? json_object_get(root, "text") : NULL;
    json_t *pair = json_is_object(root) ? json_object_get(root, "text_pair") : NULL;
    if (!json_is_object(root)) {
        put_error(out, "the line is not a JSON object");
    } else if (!json_is_string(text)) {
        put_error(out, text ? "\"text\" is not a string" : "missing \"text\"");
    } else if (pair && !json_is_null(pair) && !json_is_string(pair)) {
        put_error(out, "\"text_pair\" is not a string");
    } else {
        const char *p = json_is_string(pair) ? json_string_value(pair) : NULL;
        size_t plen = p ? json_string_length(pair) : 0;
        sqz_status st = sqz_tokenizer_encode(tok, json_string_value(text), json_string_length(text),
                                             p, plen, max_length, enc);
        if (st != SQZ_OK) {
            snprintf(msg, sizeof msg, "%s: %s", sqz_status_str(st), sqz_last_error());
            put_error(out, msg);
        } else {
            const sqz_encoding *e = *enc;
            put_array(out, "{\"input_ids\": ", e->input_ids, e->length);
            put_array(out, ", \"token_type_ids\": ", e->token_type_ids, e->length);
            put_array(out, ", \"attention_mask\": ", e->attention_mask, e->length);
            if (offsets) {
                put_str(out, ", \"offsets\": [");
                for (size_t i = 0; i < e->length; i++) {
                    put_str(out, i ? ", [" : "[");
                    put_u64(out, e->offsets[i].start);
                    put(out, ", ", 2);
                    put_u64(out, e->offsets[i].end);
                    put(out, "]", 1);
                }
                put(out, "]", 1);
            }
            put(out, "}", 1);
            rc = 0;
        }
    }
    json_decref(root);
    return rc;
}

/* max_position_embeddings of dir/config.json; 512 when the file or the field is absent. */
static int default_max_length(const char *dir, int *out)
{
    *out = 512;
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n);
    if (!path)
        return 1;
    snprintf(path, n, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        free(path);
        return 0;
    }
    json_error_t err;
    json_t *root = json_loadf(f, 0, &err);
    fclose(f);
    if (!root) {
        fprintf(stderr, "sqz tokenize: %s: invalid JSON at line %d: %s\n", path, err.line, err.text);
        free(path);
        return 1;
    }
    json_t *mpe = json_is_object(root) ? json_object_get(root, "max_position_embeddings") : NULL;
    if (json_is_integer(mpe) && json_integer_value(mpe) > 0 && json_integer_value(mpe) <= 1 << 30)
        *out = (int)json_integer_value(mpe);
    json_decref(root);
    free(path);
    return 0;
}

int sqz_cli_tokenize(int argc, char **argv)
{
    const char *model = NULL, *max_arg = NULL;
    bool offsets = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(tokenize_help, stdout);
            return 0;
        }
        const char **target = strncmp(a, "--model", 7) == 0 ? &model
                              : strncmp(a, "--max-length", 12) == 0 ? &max_arg : NULL;
        size_t name_len = target == &model ? 7 : 12;
        if (strcmp(a, "--offsets") == 0) {
            offsets = true;
        } else if (target && a[name_len] == '=') {
            *target = a + name_len + 1;
        } else if (target && a[name_len] == '\0' && i + 1 < argc) {
            *target = argv[++i];
        } else if (target && a[name_len] == '\0') {
            fprintf(stderr, "sqz tokenize: option %s needs a value\n", a);
            return EXIT_USAGE;
        } else {
            fprintf(stderr, "sqz tokenize: unknown argument '%s' (see sqz tokenize --help)\n", a);
            return EXIT_USAGE;
        }
    }
    if (!model) {
        fprintf(stderr, "sqz tokenize: --model is required\n\n%s", tokenize_help);
        return EXIT_USAGE;
    }
    int max_length = 512;
    if (max_arg) {
        char *end = NULL;
        errno = 0;
        long v = strtol(max_arg, &end, 10);
        if (errno || !*max_arg || *end || v < 0 || v > 1 << 30) {
            fprintf(stderr, "sqz tokenize: --max-length must be an integer in 0..%d, got '%s'\n",
                    1 << 30, max_arg);
            return EXIT_USAGE;
        }
        max_length = (int)v;
    } else if (default_max_length(model, &max_length)) {
        return 1;
    }
    sqz_tokenizer *tok = NULL;
    sqz_status st = sqz_tokenizer_load(model, &tok);
    if (st != SQZ_OK) {
        fprintf(stderr, "sqz tokenize: %s: %s\n", sqz_status_str(st), sqz_last_error());
        return 1;
    }
    bool interactive = isatty(STDOUT_FILENO);
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    line_buf out = {0};
    sqz_encoding *enc = NULL;
    size_t failed = 0, lines = 0;
    int rc = 0;
    while ((got = getline(&line, &line_cap, stdin)) >= 0) {
        size_t len = (size_t)got;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        out.n = 0;
        failed += (size_t)process_line(tok, line, len, max_length, offsets, &enc, &out);
        put(&out, "\n", 1);
        lines++;
        if (out.oom) {
            fprintf(stderr, "sqz tokenize: out of memory at line %zu\n", lines);
            rc = 1;
            break;
        }
        if (fwrite(out.p, 1, out.n, stdout) != out.n) {
            fprintf(stderr, "sqz tokenize: error writing the output: %s\n", strerror(errno));
            rc = 1;
            break;
        }
        if (interactive)
            fflush(stdout);
    }
    if (ferror(stdin)) {
        fprintf(stderr, "sqz tokenize: error reading stdin: %s\n", strerror(errno));
        rc = 1;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "sqz tokenize: error writing the output: %s\n", strerror(errno));
        rc = 1;
    }
    if (failed) {
        fprintf(stderr, "sqz tokenize: %zu of %zu lines failed (error records written)\n", failed,
                lines);
        rc = 1;
    }
    free(line);
    free(out.p);
    sqz_encoding_free(enc);
    sqz_tokenizer_free(tok);
    return rc;
}
