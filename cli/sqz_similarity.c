/* sqz similarity: embeds a handful of texts as `sqz infer --task embed` does (the same
 * tokenizer, truncation and sentence-transformers modules) and prints, for a person to read,
 * which texts are close: each text's nearest neighbour and the pairs from most to least
 * similar, by the cosine of their embeddings. Meant for a few hundred texts at most (all of
 * them run as one batch); sqz infer is the tool for volume. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "squeezebert.h"
#include "cli/cli_options.h"
#include "cli/sqz_commands.h"

#define EXIT_USAGE 2
#define MAX_TEXTS 512

static const char similarity_help[] =
    "usage: sqz similarity --model DIR [--backend auto|cpu|cpu_ref|opencl|cuda] [--device D]\n"
    "                      [--input FILE|-] [--pairs N]\n"
    "\n"
    "Reads JSON Lines {\"text\": ...} (2 to 512 lines), embeds every text as sqz infer --task embed\n"
    "does with no flags (for a sentence-transformers folder: its pooling, Dense and Normalize\n"
    "modules and max_seq_length) and prints each text's nearest other text, then the N (default\n"
    "5) most and least similar pairs, by the cosine of the embeddings.\n";

typedef struct pair_score {
    int a, b;
    double cos;
} pair_score;

static int by_cosine(const void *x, const void *y)
{
    const pair_score *p = x, *q = y;
    if (p->cos != q->cos)
        return p->cos > q->cos ? -1 : 1;
    return p->a != q->a ? p->a - q->a : p->b - q->b;
}

/* The texts of the input, or NULL (message printed). */
static char **read_texts(const char *path, int *count)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "sqz similarity: cannot open %s\n", path);
        return NULL;
    }
    char **texts = calloc(MAX_TEXTS, sizeof *texts);
    char line[1 << 16];
    int n = 0, line_no = 0;
    bool ok = texts != NULL;
    while (ok && fgets(line, sizeof line, f)) {
        line_no++;
        json_error_t err;
        json_t *r = json_loads(line, 0, &err);
        json_t *t = json_object_get(r, "text");
        if (!json_is_string(t) || json_string_length(t) == 0 || n == MAX_TEXTS) {
            fprintf(stderr, "sqz similarity: %s line %d: %s\n", path, line_no,
                    n == MAX_TEXTS ? "more than 512 texts" : !r ? err.text : "needs a non-empty \"text\"");
            ok = false;
        } else if (!(texts[n++] = strdup(json_string_value(t)))) {
            ok = false;
        }
        json_decref(r);
    }
    if (f != stdin)
        fclose(f);
    if (ok && n < 2) {
        fprintf(stderr, "sqz similarity: %s has %d text%s; it takes 2 to %d\n", path, n, n == 1 ? "" : "s", MAX_TEXTS);
        ok = false;
    }
    if (!ok) {
        for (int i = 0; texts && i < n; i++)
            free(texts[i]);
        free(texts);
        return NULL;
    }
    *count = n;
    return texts;
}

static void print_text(const char *text)
{
    /* one line each: newlines and tabs become spaces; cut after 70 characters, never inside one */
    int shown = 0;
    const char *s = text;
    for (; *s; s++) {
        const bool lead = ((unsigned char)*s & 0xC0) != 0x80;
        if (lead && shown == 70)
            break;
        shown += lead;
        putchar(*s == '\n' || *s == '\t' || *s == '\r' ? ' ' : *s);
    }
    if (*s)
        fputs("...", stdout);
}

int sqz_cli_similarity(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(similarity_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"model", true, NULL}, {"backend", true, NULL}, {"device", true, NULL},
                         {"input", true, NULL}, {"pairs", true, NULL}};
    const size_t n_opts = sizeof opts / sizeof opts[0];
    long show = 5;
    if (cli_parse("similarity", argc, argv, opts, n_opts) ||
        (cli_get(opts, n_opts, "pairs") && cli_int("similarity", "pairs", cli_get(opts, n_opts, "pairs"), 1, 1000, &show)))
        return EXIT_USAGE;
    const char *dir = cli_get(opts, n_opts, "model");
    if (!dir) {
        fprintf(stderr, "sqz similarity: --model is required\n\n%s", similarity_help);
        return EXIT_USAGE;
    }
    int n = 0, rc = 1;
    char **texts = read_texts(cli_get(opts, n_opts, "input") ? cli_get(opts, n_opts, "input") : "-", &n);
    if (!texts)
        return 1;
    sqz_model *model = NULL;
    sqz_tokenizer *tok = NULL;
    sqz_embedder *emb = NULL;
    sqz_session *session = NULL;
    sqz_result *res = NULL;
    sqz_encoding **enc = calloc((size_t)n, sizeof *enc);
    int64_t *ids = NULL, *types = NULL, *mask = NULL;
    float *vec = NULL;
    pair_score *pairs = NULL;
    sqz_model_info info;
    sqz_embedder_info e;
    const char *backend = cli_pick_backend(cli_get(opts, n_opts, "backend") ? cli_get(opts, n_opts, "backend") : "auto");
    sqz_session_options so = cli_session_options(backend, cli_get(opts, n_opts, "device"), SQZ_PRECISION_FP32);
    sqz_status st;
    if ((st = cli_load_model(dir, &model)) != SQZ_OK || (st = sqz_tokenizer_load(dir, &tok)) != SQZ_OK ||
        (st = sqz_embedder_load(model, &emb)) != SQZ_OK || (st = sqz_embedder_use_tokenizer(emb, tok)) != SQZ_OK ||
        (st = sqz_session_create(model, &so, &session)) != SQZ_OK)
        goto fail;
    sqz_model_get_info(model, &info);
    sqz_embedder_get_info(emb, &e);
    size_t width = 0;
    for (int i = 0; i < n; i++) {
        if ((st = sqz_tokenizer_encode(tok, texts[i], strlen(texts[i]), NULL, 0, e.truncate_at, &enc[i])) != SQZ_OK)
            goto fail;
        width = enc[i]->length > width ? enc[i]->length : width;
    }
    const size_t cells = (size_t)n * width, H = (size_t)info.hidden_size;
    ids = calloc(cells, sizeof *ids), types = calloc(cells, sizeof *types), mask = calloc(cells, sizeof *mask);
    vec = malloc((size_t)n * (size_t)e.dimension * sizeof *vec);
    pairs = malloc((size_t)n * (size_t)(n - 1) / 2 * sizeof *pairs);
    if (!enc || !ids || !types || !mask || !vec || !pairs) {
        fprintf(stderr, "sqz similarity: out of memory\n");
        goto done;
    }
    for (int i = 0; i < n; i++)
        for (size_t w = 0; w < enc[i]->length; w++) {
            ids[(size_t)i * width + w] = enc[i]->input_ids[w];
            types[(size_t)i * width + w] = enc[i]->token_type_ids[w];
            mask[(size_t)i * width + w] = 1;
        }
    sqz_input in = {.batch = n, .seq_len = (int)width, .input_ids = ids, .attention_mask = mask,
                    .token_type_ids = types};
    if ((st = sqz_session_run(session, &in, &res)) != SQZ_OK)
        goto fail;
    const sqz_output *hidden = sqz_result_find(res, "last_hidden_state");
    const sqz_output *pooled = sqz_result_find(res, "pooler_output");
    for (int i = 0; i < n; i++)
        if ((st = sqz_embedder_embed(emb, hidden ? hidden->data + (size_t)i * width * H : NULL, enc[i]->length,
                                     pooled ? pooled->data + (size_t)i * H : NULL,
                                     vec + (size_t)i * (size_t)e.dimension)) != SQZ_OK)
            goto fail;
    size_t np = 0;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++) {
            const float *x = vec + (size_t)a * (size_t)e.dimension, *y = vec + (size_t)b * (size_t)e.dimension;
            double xy = 0, xx = 0, yy = 0;
            for (int c = 0; c < e.dimension; c++)
                xy += (double)x[c] * y[c], xx += (double)x[c] * x[c], yy += (double)y[c] * y[c];
            pairs[np++] = (pair_score){a, b, xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : 0.0};
        }
    printf("%d texts, %d-float embeddings from %s on %s; cosine similarity, 1 = same direction\n\n", n,
           e.dimension, dir, backend);
    printf("nearest other text:\n");
    for (int i = 0; i < n; i++) {
        const pair_score *best = NULL;
        for (size_t k = 0; k < np; k++)
            if ((pairs[k].a == i || pairs[k].b == i) && (!best || pairs[k].cos > best->cos))
                best = &pairs[k];
        printf("  %6.3f  ", best->cos);
        print_text(texts[i]);
        fputs("\n          -> ", stdout);
        print_text(texts[best->a == i ? best->b : best->a]);
        putchar('\n');
    }
    qsort(pairs, np, sizeof *pairs, by_cosine);
    const size_t k_show = (size_t)show < np ? (size_t)show : np;
    printf("\nmost similar pairs:\n");
    for (size_t k = 0; k < k_show; k++) {
        printf("  %6.3f  ", pairs[k].cos);
        print_text(texts[pairs[k].a]);
        fputs("  |  ", stdout);
        print_text(texts[pairs[k].b]);
        putchar('\n');
    }
    printf("least similar pairs:\n");
    for (size_t k = np - k_show; k < np; k++) {
        printf("  %6.3f  ", pairs[k].cos);
        print_text(texts[pairs[k].a]);
        fputs("  |  ", stdout);
        print_text(texts[pairs[k].b]);
        putchar('\n');
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "sqz similarity: %s: %s\n", sqz_status_str(st), sqz_last_error());
done:
    for (int i = 0; i < n; i++) {
        free(texts[i]);
        if (enc)
            sqz_encoding_free(enc[i]);
    }
    free(texts), free(enc), free(ids), free(types), free(mask), free(vec), free(pairs);
    sqz_result_free(res);
    sqz_session_free(session);
    sqz_embedder_free(emb);
    sqz_tokenizer_free(tok);
    sqz_model_free(model);
    return rc;
}
