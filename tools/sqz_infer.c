/* sqz infer: JSON Lines of text in, one JSON line of answers out per input line, in input
 * order (the contract is docs/infer.md).
 *
 * Three threads form a pipeline so the device never waits on text work:
 *   reader   reads and parses lines, tokenizes, sorts a window of lines by length and cuts
 *            it into batches under a token budget;
 *   compute  (the calling thread) runs each batch on the session; the engine packs the
 *            sequences, so padding costs no compute;
 *   writer   turns outputs into records and writes them back in input order.
 * Every line yields exactly one record: an answer or {"line": n, "error": ...}. A batch that
 * fails is retried in halves down to single lines, so a device error costs at most the
 * lines that fail alone. SIGINT/SIGTERM stop the reading; the complete prefix of records is
 * written and --resume continues after it. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "squeezebert.h"
#include "tools/cli_options.h"
#include "tools/sqz_commands.h"
#include "tools/sqz_infer_line.h"

#define EXIT_USAGE 2
#define WINDOW_LINES 4096    /* lines sorted together: bigger sorts better, holds more */
#define QUEUE_DEPTH 4        /* batches in flight between two threads */
#define MAX_LINE_BYTES_DEFAULT (64u << 20) /* SQZ_MAX_LINE_BYTES overrides */
#define READ_CHUNK 65536

/* Set by SIGINT/SIGTERM: stop reading, write what is complete, exit non-zero. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = sig; }

typedef enum task { TASK_AUTO, TASK_CLASSIFY, TASK_EMBED, TASK_TOKENS, TASK_QA, TASK_FILL_MASK } task;

typedef struct options {
    const char *model, *backend, *device, *input, *output, *threads;
    sqz_precision precision;
    task task;
    sqz_pool_mode pooling[SQZ_MAX_POOL_MODES];
    int pooling_count;   /* 0: from the checkpoint (modules.json, else the pooler) */
    int normalize;       /* -1: from the checkpoint */
    bool resume, verbose;
    long batch_tokens, max_length, top_k, max_answer_length;
} options;

typedef infer_item item;

typedef struct batch {
    item **items;
    size_t count;
    int width;            /* padded length */
    sqz_result *result;   /* filled by compute */
    char *error;          /* the whole batch failed (every item gets it) */
    bool skipped;         /* not run: the run was interrupted (its lines are not written) */
} batch;

/* A bounded blocking queue of batches; NULL marks the end. */
typedef struct queue {
    batch *slots[QUEUE_DEPTH];
    size_t head, count;
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
} queue;

static void queue_init(queue *q)
{
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
}

static void queue_destroy(queue *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
}

static void queue_push(queue *q, batch *b)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == QUEUE_DEPTH)
        pthread_cond_wait(&q->not_full, &q->lock);
    q->slots[(q->head + q->count++) % QUEUE_DEPTH] = b;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

static batch *queue_pop(queue *q)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == 0)
        pthread_cond_wait(&q->not_empty, &q->lock);
    batch *b = q->slots[q->head];
    q->head = (q->head + 1) % QUEUE_DEPTH;
    q->count--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->lock);
    return b;
}

typedef struct pipeline {
    options opt;
    task task;
    sqz_model *model;
    sqz_model_info info;
    sqz_tokenizer *tok;
    sqz_tokenizer_info tok_info;
    sqz_embedder *embedder;
    sqz_embedder_info emb_info;
    infer_line_setup setup;
    sqz_session *session;
    FILE *in, *out;
    int in_fd;
    size_t skip_lines;    /* --resume: input lines whose records the output already has */
    size_t max_line_bytes;
    queue to_compute, to_write;
    /* statistics; each counter is written by one thread only */
    size_t lines, failed, tokens, padded_tokens, retries, lines_read;
    double tokenize_s, compute_s, write_s;
    long input_bytes, bytes_read;
    bool progress, read_error;
    double started;
} pipeline;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- reader: parse, tokenize, sort, batch ------------------------------------------------ */

static int by_length(const void *a, const void *b)
{
    const item *x = *(item *const *)a, *y = *(item *const *)b;
    size_t lx = x->n_use, ly = y->n_use;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x->line < y->line ? -1 : 1;
}

static batch *new_batch(item **items, size_t count, int width)
{
    batch *b = calloc(1, sizeof *b);
    if (b)
        b->items = malloc((count ? count : 1) * sizeof *b->items);
    if (!b || !b->items) {
        /* NULL would read as the end of input and drop lines: stop loudly instead */
        fprintf(stderr, "sqz infer: out of memory batching %zu lines\n", count);
        exit(1);
    }
    memcpy(b->items, items, count * sizeof *items);
    b->count = count;
    b->width = width;
    return b;
}

/* Sorts a window by length and sends it on as batches of at most batch_tokens padded
 * tokens (a single longer line goes alone); lines with errors go as one batch of their own. */
static void flush_window(pipeline *p, item **window, size_t n)
{
    size_t ok = 0;
    item **failed = malloc((n ? n : 1) * sizeof *failed);
    if (!failed) {
        fprintf(stderr, "sqz infer: out of memory\n");
        exit(1);
    }
    size_t n_failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (window[i]->error)
            failed[n_failed++] = window[i];
        else
            window[ok++] = window[i];
    }
    if (n_failed)
        queue_push(&p->to_compute, new_batch(failed, n_failed, 0));
    free(failed);
    qsort(window, ok, sizeof *window, by_length);
    const size_t multiple = p->task == TASK_FILL_MASK ? (size_t)p->info.vocab_size : 1;
    size_t start = 0;
    while (start < ok) {
        size_t end = start + 1;
        /* sorted ascending: the last line of the batch sets its padded width; outputs of
         * fill-mask scale with the vocabulary, so its budget counts them too */
        while (end < ok && (end - start + 1) * window[end]->n_use * multiple <=
                               (size_t)p->opt.batch_tokens * (multiple > 1 ? 64 : 1))
            end++;
        const size_t width = window[end - 1]->n_use;
        queue_push(&p->to_compute, new_batch(window + start, end - start, (int)width));
        start = end;
    }
}

/* A line reader over a file descriptor that never holds more than the line limit: a longer
 * line is consumed to its end and reported as too long. read(2) returns EINTR when a stop
 * signal arrives (the reader is the one thread that takes them), so even a reader blocked on
 * a pipe stops. */
typedef struct line_reader {
    int fd;
    unsigned char buf[READ_CHUNK];
    size_t pos, len;
    bool eof;
} line_reader;

/* 1 a line (in *line, *len bytes, *too_long when cut), 0 end of input or stop, -1 error. */
static int read_line(line_reader *r, size_t max, char **line, size_t *cap, size_t *len,
                     bool *too_long, long *consumed)
{
    *len = 0;
    *too_long = false;
    bool any = false;
    for (;;) {
        if (r->pos == r->len) {
            if (r->eof || stop_signal)
                return any && !stop_signal; /* a last line without newline counts */
            ssize_t got = read(r->fd, r->buf, sizeof r->buf);
            if (got < 0 && errno == EINTR)
                continue; /* stop_signal is checked above */
            if (got < 0)
                return -1;
            if (got == 0) {
                r->eof = true;
                continue;
            }
            r->pos = 0;
            r->len = (size_t)got;
        }
        any = true;
        const unsigned char *start = r->buf + r->pos;
        const unsigned char *nl = memchr(start, '\n', r->len - r->pos);
        size_t n = nl ? (size_t)(nl - start) : r->len - r->pos;
        r->pos += n + (nl != NULL);
        *consumed += (long)(n + (nl != NULL));
        if (!*too_long && *len + n > max) {
            *too_long = true; /* keep counting, store nothing more */
        } else if (!*too_long) {
            if (*len + n + 1 > *cap) {
                size_t c = *cap ? *cap : 4096;
                while (c < *len + n + 1)
                    c *= 2;
                char *bigger = realloc(*line, c);
                if (!bigger)
                    return -1;
                *line = bigger;
                *cap = c;
            }
            memcpy(*line + *len, start, n);
        }
        if (!*too_long)
            *len += n;
        if (nl)
            return 1;
    }
}

static void *reader_main(void *arg)
{
    pipeline *p = arg;
    /* this thread takes the stop signals (the others block them), so its read() is the
     * call they interrupt */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_UNBLOCK, &stop_set, NULL);
    item **window = malloc(WINDOW_LINES * sizeof *window);
    line_reader *r = calloc(1, sizeof *r);
    size_t n = 0, line_no = 0, cap = 0, len = 0;
    char *line = NULL;
    bool too_long;
    int got = 0;
    if (r)
        r->fd = p->in_fd;
    while (window && r && !stop_signal &&
           (got = read_line(r, p->max_line_bytes, &line, &cap, &len, &too_long, &p->bytes_read)) > 0) {
        double t0 = now_seconds();
        if (++line_no <= p->skip_lines)
            continue; /* --resume: its record is already in the output */
        item *it = calloc(1, sizeof *it);
        if (!it) {
            fprintf(stderr, "sqz infer: out of memory reading line %zu\n", line_no);
            exit(1);
        }
        it->line = line_no;
        while (len > 0 && line[len - 1] == '\r')
            len--;
        if (too_long) {
            char limit[128];
            snprintf(limit, sizeof limit, "more than %zu bytes (SQZ_MAX_LINE_BYTES)", p->max_line_bytes);
            it->error = infer_message("line too long", limit);
        } else {
            infer_parse_line(p->task == TASK_QA, it, line ? line : "", len);
        }
        infer_tokenize_line(&p->setup, it);
        window[n++] = it;
        p->lines_read++;
        p->tokenize_s += now_seconds() - t0;
        if (n == WINDOW_LINES) {
            flush_window(p, window, n);
            n = 0;
        }
    }
    if (got < 0 && !stop_signal) {
        /* the input is unreadable: what was read is processed, then the run fails */
        fprintf(stderr, "sqz infer: error reading %s after line %zu: %s\n", p->opt.input, line_no,
                strerror(errno));
        p->read_error = true;
    }
    if (!window || !r) {
        fprintf(stderr, "sqz infer: out of memory\n");
        exit(1);
    }
    if (n)
        flush_window(p, window, n); /* interrupted: the compute thread skips them */
    free(window);
    free(r);
    free(line);
    queue_push(&p->to_compute, NULL);
    return NULL;
}

/* ---- compute --------------------------------------------------------------------------- */

static void compute_batch(pipeline *p, batch *b)
{
    if (b->width == 0)
        return; /* lines that failed earlier */
    const size_t N = b->count, W = (size_t)b->width;
    int64_t *ids = calloc(N * W, sizeof *ids), *mask = calloc(N * W, sizeof *mask);
    int64_t *types = calloc(N * W, sizeof *types);
    if (!ids || !mask || !types) {
        b->error = infer_message("out of memory for a batch", NULL);
    } else {
        for (size_t r = 0; r < N; r++) {
            const item *it = b->items[r];
            for (size_t w = 0; w < it->n_use; w++) {
                ids[r * W + w] = it->enc->input_ids[it->use[w]];
                types[r * W + w] = it->enc->token_type_ids[it->use[w]];
                mask[r * W + w] = 1;
            }
            p->tokens += it->n_use;
        }
        p->padded_tokens += N * W;
        sqz_input in = {.batch = (int)N, .seq_len = (int)W, .input_ids = ids,
                        .attention_mask = mask, .token_type_ids = types};
        sqz_status st = sqz_session_run(p->session, &in, &b->result);
        if (st != SQZ_OK)
            b->error = infer_message(sqz_last_error(), NULL);
    }
    free(ids), free(mask), free(types);
}

/* Padded width of items (the longest). */
static int width_of(item **items, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        w = items[i]->n_use > w ? items[i]->n_use : w;
    return (int)w;
}

/* Runs a batch and hands it to the writer. A failed batch (device error, out of memory,
 * a kernel failure) is split in halves and each half retried, down to single lines: the
 * lines that still fail get the error, every other line its answer, none twice. */
static void compute_and_send(pipeline *p, batch *b)
{
    if (stop_signal && b->width > 0) {
        b->skipped = true;
    } else {
        double t0 = now_seconds();
        compute_batch(p, b);
        p->compute_s += now_seconds() - t0;
    }
    if (b->error && b->count > 1) {
        const size_t half = b->count / 2;
        batch *x = new_batch(b->items, half, width_of(b->items, half));
        batch *y = new_batch(b->items + half, b->count - half, width_of(b->items + half, b->count - half));
        p->retries++;
        if (p->retries <= 3 || p->opt.verbose)
            fprintf(stderr, "sqz infer: a batch of %zu lines failed (%s); retrying it in halves\n",
                    b->count, b->error);
        sqz_result_free(b->result);
        free(b->error);
        free(b->items);
        free(b);
        compute_and_send(p, x);
        compute_and_send(p, y);
        return;
    }
    queue_push(&p->to_write, b);
}

/* ---- writer: records in input order -------------------------------------------------- */

/* Code points in the first `bytes` bytes of UTF-8 text (offsets as transformers gives them). */
static size_t code_points(const char *text, size_t bytes)
{
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++)
        n += ((unsigned char)text[i] & 0xC0) != 0x80;
    return n;
}

static void softmax(const float *logits, size_t n, double *out)
{
    double m = -INFINITY, sum = 0;
    for (size_t i = 0; i < n; i++)
        m = logits[i] > m ? logits[i] : m;
    for (size_t i = 0; i < n; i++)
        sum += out[i] = exp((double)logits[i] - m);
    for (size_t i = 0; i < n; i++)
        out[i] /= sum;
}

static size_t argmax(const double *x, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static json_t *label_of(pipeline *p, size_t index)
{
    const char *name = sqz_model_label(p->model, (int)index);
    return json_string(name ? name : "?");
}

static json_t *record_classify(pipeline *p, const float *logits)
{
    const size_t L = (size_t)p->info.num_labels;
    double *probs = malloc(L * sizeof *probs);
    if (!probs)
        return NULL;
    softmax(logits, L, probs);
    size_t best = argmax(probs, L);
    json_t *r = json_object(), *scores = json_object();
    json_object_set_new(r, "label", label_of(p, best));
    json_object_set_new(r, "score", json_real(probs[best]));
    for (size_t i = 0; i < L; i++) {
        const char *name = sqz_model_label(p->model, (int)i);
        json_object_set_new(scores, name ? name : "?", json_real(probs[i]));
    }
    json_object_set_new(r, "scores", scores);
    free(probs);
    return r;
}

static json_t *record_embed(pipeline *p, const sqz_result *res, size_t row, const item *it)
{
    const size_t H = (size_t)p->info.hidden_size;
    float *v = malloc((size_t)p->emb_info.dimension * sizeof *v);
    if (!v)
        return NULL;
    const sqz_output *pooled = sqz_result_find(res, "pooler_output");
    const sqz_output *hidden = sqz_result_find(res, "last_hidden_state");
    const float *rows = hidden ? hidden->data + row * (size_t)hidden->shape[1] * H : NULL;
    if (sqz_embedder_embed(p->embedder, rows, it->n_use, pooled ? pooled->data + row * H : NULL, v) != SQZ_OK) {
        free(v);
        return NULL;
    }
    json_t *r = json_object(), *arr = json_array();
    for (int c = 0; c < p->emb_info.dimension; c++)
        json_array_append_new(arr, json_real(v[c]));
    json_object_set_new(r, "embedding", arr);
    free(v);
    return r;
}

static json_t *record_tokens(pipeline *p, const sqz_output *logits, size_t row, const item *it)
{
    const sqz_encoding *e = it->enc;
    const size_t L = (size_t)p->info.num_labels, W = (size_t)logits->shape[1];
    double *probs = malloc(L * sizeof *probs);
    if (!probs)
        return NULL;
    json_t *r = json_object(), *tokens = json_array();
    for (size_t w = 0; w < it->n_use; w++) {
        const size_t k = it->use[w];
        if (e->sequence_ids[k] != 0)
            continue;
        softmax(logits->data + (row * W + w) * L, L, probs);
        size_t best = argmax(probs, L);
        json_t *t = json_object();
        const char *piece = sqz_tokenizer_id_to_token(p->tok, (int32_t)e->input_ids[k]);
        json_object_set_new(t, "token", json_string(piece ? piece : "[UNK]"));
        json_object_set_new(t, "label", label_of(p, best));
        json_object_set_new(t, "score", json_real(probs[best]));
        json_object_set_new(t, "start", json_integer((json_int_t)code_points(it->text, e->offsets[k].start)));
        json_object_set_new(t, "end", json_integer((json_int_t)code_points(it->text, e->offsets[k].end)));
        json_array_append_new(tokens, t);
    }
    json_object_set_new(r, "tokens", tokens);
    free(probs);
    return r;
}

/* Softmax over the context tokens only, then the best span within the answer length. */
static json_t *record_qa(pipeline *p, const sqz_result *res, size_t row, const item *it, char **error)
{
    const sqz_encoding *e = it->enc;
    const sqz_output *so = sqz_result_find(res, "start_logits"), *eo = sqz_result_find(res, "end_logits");
    const size_t W = (size_t)so->shape[1];
    size_t n = 0;
    size_t *pos = malloc(e->length * sizeof *pos);
    float *sl = malloc(e->length * sizeof *sl), *el = malloc(e->length * sizeof *el);
    double *ps = malloc(e->length * sizeof *ps), *pe = malloc(e->length * sizeof *pe);
    json_t *r = NULL;
    if (!pos || !sl || !el || !ps || !pe)
        goto done;
    for (size_t w = 0; w < it->n_use; w++)
        if (e->sequence_ids[it->use[w]] == 1) {
            pos[n] = it->use[w];
            sl[n] = so->data[row * W + w];
            el[n++] = eo->data[row * W + w];
        }
    if (n == 0) {
        *error = infer_message("no context tokens remain after truncation", NULL);
        goto done;
    }
    softmax(sl, n, ps);
    softmax(el, n, pe);
    size_t bi = 0, bj = 0;
    double best = -1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i; j < n && j < i + (size_t)p->opt.max_answer_length; j++)
            if (ps[i] * pe[j] > best) {
                best = ps[i] * pe[j];
                bi = i, bj = j;
            }
    const size_t start = e->offsets[pos[bi]].start, end = e->offsets[pos[bj]].end;
    r = json_object();
    json_object_set_new(r, "answer", json_stringn(it->pair + start, end - start));
    json_object_set_new(r, "start", json_integer((json_int_t)code_points(it->pair, start)));
    json_object_set_new(r, "end", json_integer((json_int_t)code_points(it->pair, end)));
    json_object_set_new(r, "score", json_real(best));
done:
    free(pos), free(sl), free(el), free(ps), free(pe);
    return r;
}

static json_t *record_fill_mask(pipeline *p, const sqz_output *logits, size_t row, const item *it)
{
    const sqz_encoding *e = it->enc;
    const size_t V = (size_t)logits->shape[2], W = (size_t)logits->shape[1];
    /* ids without a vocab.txt entry (checkpoint padding rows) take no part */
    const size_t n = V < (size_t)p->tok_info.vocab_size ? V : (size_t)p->tok_info.vocab_size;
    double *probs = malloc(n * sizeof *probs);
    if (!probs)
        return NULL;
    json_t *r = json_object(), *masks = json_array();
    for (size_t w = 0; w < it->n_use; w++) {
        if (e->input_ids[it->use[w]] != p->tok_info.mask_id)
            continue;
        softmax(logits->data + (row * W + w) * V, n, probs);
        json_t *top = json_array();
        for (long k = 0; k < p->opt.top_k && k < (long)n; k++) {
            size_t best = SIZE_MAX;
            for (size_t i = 0; i < n; i++)
                if (probs[i] >= 0 && (best == SIZE_MAX || probs[i] > probs[best]))
                    best = i;
            json_t *t = json_object();
            const char *piece = sqz_tokenizer_id_to_token(p->tok, (int32_t)best);
            json_object_set_new(t, "token", json_string(piece ? piece : "?"));
            json_object_set_new(t, "token_id", json_integer((json_int_t)best));
            json_object_set_new(t, "score", json_real(probs[best]));
            json_array_append_new(top, t);
            probs[best] = -1; /* taken */
        }
        json_array_append_new(masks, top);
    }
    json_object_set_new(r, "masks", masks);
    free(probs);
    return r;
}

/* The record of one item: copied fields first, then the answer or the error. */
static void make_record(pipeline *p, batch *b, size_t row)
{
    item *it = b->items[row];
    json_t *answer = NULL;
    char *late_error = NULL;
    if (!it->error && b->error)
        it->error = infer_message(b->error, NULL);
    if (!it->error) {
        const sqz_result *res = b->result;
        switch (p->task) {
        case TASK_CLASSIFY:
            answer = record_classify(p, sqz_result_find(res, "logits")->data + row * (size_t)p->info.num_labels);
            break;
        case TASK_EMBED: answer = record_embed(p, res, row, it); break;
        case TASK_TOKENS: answer = record_tokens(p, sqz_result_find(res, "logits"), row, it); break;
        case TASK_QA: answer = record_qa(p, res, row, it, &late_error); break;
        case TASK_FILL_MASK: answer = record_fill_mask(p, sqz_result_find(res, "logits"), row, it); break;
        default: break;
        }
        if (!answer)
            it->error = late_error ? late_error : infer_message("out of memory formatting the answer", NULL);
        else
            free(late_error);
    }
    json_t *record = it->copied ? json_deep_copy(it->copied) : json_object();
    if (it->error) {
        json_object_set_new(record, "line", json_integer((json_int_t)it->line));
        json_object_set_new(record, "error", json_string(it->error));
    } else {
        json_object_update(record, answer);
        json_decref(answer);
    }
    it->record = json_dumps(record, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(record);
}

typedef struct reorder {
    item **slots; /* slots[i] holds line base + i */
    size_t cap, base;
} reorder;

static void show_progress(pipeline *p, bool final)
{
    double t = now_seconds() - p->started;
    double rate = t > 0 ? (double)p->lines / t : 0;
    char eta[32] = "";
    if (p->input_bytes > 0 && p->bytes_read > 0 && !final) {
        double done = (double)p->bytes_read / (double)p->input_bytes;
        snprintf(eta, sizeof eta, ", ETA %.0f s", done > 0 ? t / done - t : 0.0);
    }
    fprintf(stderr, "\r%zu lines, %.1f lines/s, %.0f tokens/s%s   %s", p->lines, rate,
            t > 0 ? (double)p->tokens / t : 0.0, eta, final ? "\n" : "");
}

static void *writer_main(void *arg)
{
    pipeline *p = arg;
    reorder ro = {NULL, 0, p->skip_lines + 1};
    double last_progress = 0;
    batch *b;
    while ((b = queue_pop(&p->to_write)) != NULL) {
        double t0 = now_seconds();
        for (size_t r = 0; r < b->count; r++) {
            item *it = b->items[r];
            if (b->skipped) { /* interrupted before compute: never written */
                infer_item_free(it);
                continue;
            }
            make_record(p, b, r);
            size_t slot = it->line - ro.base;
            if (slot >= ro.cap) {
                size_t cap = ro.cap ? ro.cap : 1024;
                while (cap <= slot)
                    cap *= 2;
                item **bigger = realloc(ro.slots, cap * sizeof *bigger);
                if (!bigger) {
                    fprintf(stderr, "sqz infer: out of memory\n");
                    exit(1);
                }
                memset(bigger + ro.cap, 0, (cap - ro.cap) * sizeof *bigger);
                ro.slots = bigger;
                ro.cap = cap;
            }
            ro.slots[slot] = it;
        }
        sqz_result_free(b->result);
        free(b->error);
        free(b->items);
        free(b);
        /* write the complete prefix */
        size_t done = 0;
        while (done < ro.cap && ro.slots[done]) {
            item *it = ro.slots[done];
            fputs(it->record ? it->record : "{\"error\": \"out of memory\"}", p->out);
            fputc('\n', p->out);
            p->lines++;
            p->failed += it->error != NULL;
            infer_item_free(it);
            done++;
        }
        if (done) {
            memmove(ro.slots, ro.slots + done, (ro.cap - done) * sizeof *ro.slots);
            memset(ro.slots + ro.cap - done, 0, done * sizeof *ro.slots);
            ro.base += done;
        }
        p->write_s += now_seconds() - t0;
        if (p->progress && now_seconds() - last_progress > 0.5) {
            show_progress(p, false);
            last_progress = now_seconds();
        }
    }
    fflush(p->out);
    /* after an interruption: records behind the first missing line are not written, so
     * the output stays a prefix of the input that --resume can continue */
    for (size_t i = 0; i < ro.cap; i++)
        infer_item_free(ro.slots[i]);
    free(ro.slots);
    return NULL;
}

/* ---- command line --------------------------------------------------------------------- */

static const char infer_help[] =
    "usage: sqz infer --model DIR [--backend auto|cpu|cpu_ref|opencl|cuda] [--device D] [--threads N]\n"
    "                 [--precision P]\n"
    "                 [--task auto|classify|embed|tokens|qa|fill-mask] [--batch-tokens N]\n"
    "                 [--max-length N] [--input FILE|-] [--output FILE|-]\n"
    "                 [--pooling MODE[,MODE...]] [--normalize|--no-normalize] [--top-k K]\n"
    "                 [--max-answer-length L] [--resume] [--verbose]\n"
    "\n"
    "Reads JSON Lines ({\"text\": ..., \"text_pair\": ...}, or {\"question\": ..., \"context\": ...}\n"
    "for qa; other fields such as \"id\" are copied through) and writes one JSON line per input\n"
    "line, in input order: classify -> label, score, scores; embed -> embedding; tokens ->\n"
    "per-token labels with character offsets; qa -> answer, start, end, score; fill-mask ->\n"
    "top-k tokens per [MASK]. A line that cannot be processed gets {\"line\": n, \"error\": ...}\n"
    "and processing goes on. The full contract is docs/infer.md.\n"
    "\n"
    "  --backend auto      cuda if a device is there, else opencl on an OpenCL GPU, else cpu\n"
    "                      (oneDNN; else opencl, else cpu_ref)\n"
    "  --threads N         cpu backend: compute threads (default: every core)\n"
    "  --precision P       fp32 (default), tf32, fp16 or bf16; cuda runs all four, cpu fp32 and\n"
    "                      bf16 (where the CPU has it), the others fp32\n"
    "  --task auto         from the checkpoint's head (base model: embed)\n"
    "  --batch-tokens N    padded tokens per batch (default 8192); lines are sorted by length\n"
    "                      in windows of 4096 so batches carry little padding, and the engine\n"
    "                      packs them so padding costs no compute\n"
    "  --max-length N      truncate longest-first to N tokens (default: sentence_bert_config.json's\n"
    "                      max_seq_length for embed, else max_position_embeddings)\n"
    "  --pooling MODES     embed: pooler, cls, mean, max, mean_sqrt_len_tokens, weightedmean,\n"
    "                      lasttoken, or a comma-separated list (concatenated); default: what\n"
    "                      modules.json and its Pooling say (sentence-transformers), else pooler\n"
    "  --normalize         embed: L2-normalise (default: when modules.json has Normalize);\n"
    "                      --no-normalize turns a Normalize module off\n"
    "  --resume            append to --output FILE, skipping the input lines it already has a\n"
    "                      record for (after an interrupted run)\n"
    "  --verbose           report every batch retry\n"
    "A failed batch is retried in halves down to single lines; a line that still fails gets an\n"
    "error record. SIGINT/SIGTERM stop reading, write the records complete in input order,\n"
    "report the count and exit 130/143; --resume continues from there.\n"
    "Exit status: 0 every line answered, 1 some line got an error record (or a fatal error),\n"
    "2 usage. A progress line goes to stderr when it is a terminal, and a summary at the end.\n";

static int parse_options(int argc, char **argv, options *o)
{
    cli_option opts[] = {
        {"model", true, NULL},      {"backend", true, NULL},      {"device", true, NULL},
        {"task", true, NULL},       {"batch-tokens", true, NULL}, {"max-length", true, NULL},
        {"input", true, NULL},      {"output", true, NULL},       {"pooling", true, NULL},
        {"normalize", false, NULL}, {"top-k", true, NULL},        {"max-answer-length", true, NULL},
        {"resume", false, NULL},    {"verbose", false, NULL},     {"precision", true, NULL},
        {"no-normalize", false, NULL}, {"threads", true, NULL},
    };
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("infer", argc, argv, opts, n))
        return EXIT_USAGE;
    memset(o, 0, sizeof *o);
    o->model = cli_get(opts, n, "model");
    o->backend = cli_get(opts, n, "backend") ? cli_get(opts, n, "backend") : "auto";
    o->device = cli_get(opts, n, "device");
    o->threads = cli_get(opts, n, "threads");
    if (sqz_precision_from_name(cli_get(opts, n, "precision"), &o->precision) != SQZ_OK) {
        fprintf(stderr, "sqz infer: %s\n", sqz_last_error());
        return EXIT_USAGE;
    }
    o->input = cli_get(opts, n, "input") ? cli_get(opts, n, "input") : "-";
    o->output = cli_get(opts, n, "output") ? cli_get(opts, n, "output") : "-";
    o->normalize = cli_get(opts, n, "normalize") ? 1 : cli_get(opts, n, "no-normalize") ? 0 : -1;
    if (cli_get(opts, n, "normalize") && cli_get(opts, n, "no-normalize")) {
        fprintf(stderr, "sqz infer: --normalize and --no-normalize contradict each other\n");
        return EXIT_USAGE;
    }
    o->resume = cli_get(opts, n, "resume") != NULL;
    o->verbose = cli_get(opts, n, "verbose") != NULL;
    if (o->resume && strcmp(o->output, "-") == 0) {
        fprintf(stderr, "sqz infer: --resume needs --output FILE\n");
        return EXIT_USAGE;
    }
    o->batch_tokens = 8192, o->top_k = 5, o->max_answer_length = 15, o->max_length = 0;
    if (!o->model) {
        fprintf(stderr, "sqz infer: --model is required\n\n%s", infer_help);
        return EXIT_USAGE;
    }
    static const char *const tasks[] = {"auto", "classify", "embed", "tokens", "qa", "fill-mask"};
    const char *t = cli_get(opts, n, "task") ? cli_get(opts, n, "task") : "auto";
    o->task = (task)-1;
    for (int i = 0; i < 6; i++)
        if (strcmp(t, tasks[i]) == 0)
            o->task = (task)i;
    if ((int)o->task < 0) {
        fprintf(stderr, "sqz infer: unknown --task '%s'\n", t);
        return EXIT_USAGE;
    }
    const char *pool = cli_get(opts, n, "pooling");
    for (const char *q = pool; q && *q;) {
        const char *comma = strchr(q, ',');
        const size_t len = comma ? (size_t)(comma - q) : strlen(q);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), q);
        if (o->pooling_count == SQZ_MAX_POOL_MODES ||
            sqz_pool_mode_from_name(name, &o->pooling[o->pooling_count]) != SQZ_OK) {
            fprintf(stderr, "sqz infer: --pooling takes up to %d of pooler, cls, mean, max, "
                    "mean_sqrt_len_tokens, weightedmean, lasttoken (comma-separated); got '%s'\n",
                    SQZ_MAX_POOL_MODES, pool);
            return EXIT_USAGE;
        }
        o->pooling_count++;
        q = comma ? comma + 1 : q + len;
    }
    if ((cli_get(opts, n, "batch-tokens") && cli_int("infer", "batch-tokens", cli_get(opts, n, "batch-tokens"), 1, 1L << 24, &o->batch_tokens)) ||
        (cli_get(opts, n, "max-length") && cli_int("infer", "max-length", cli_get(opts, n, "max-length"), 3, 1L << 20, &o->max_length)) ||
        (cli_get(opts, n, "top-k") && cli_int("infer", "top-k", cli_get(opts, n, "top-k"), 1, 1000, &o->top_k)) ||
        (cli_get(opts, n, "max-answer-length") && cli_int("infer", "max-answer-length", cli_get(opts, n, "max-answer-length"), 1, 100000, &o->max_answer_length)))
        return EXIT_USAGE;
    return 0;
}

/* --resume: counts the complete records of an earlier run's output and cuts a partial last
 * one (a run killed mid-write), so appending continues exactly after the last whole line.
 * A missing file is a fresh start. Returns false (with a message) on an I/O error. */
static bool resume_prepare(const char *path, size_t *lines)
{
    *lines = 0;
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return errno == ENOENT;
    unsigned char buf[READ_CHUNK];
    off_t offset = 0, complete = 0;
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < got; i++)
            if (buf[i] == '\n') {
                (*lines)++;
                complete = offset + i + 1;
            }
        offset += got;
    }
    bool ok = got == 0 && (complete == offset || ftruncate(fd, complete) == 0);
    close(fd);
    return ok;
}

static task task_for_head(sqz_head head)
{
    switch (head) {
    case SQZ_HEAD_SEQUENCE_CLASSIFICATION: return TASK_CLASSIFY;
    case SQZ_HEAD_TOKEN_CLASSIFICATION: return TASK_TOKENS;
    case SQZ_HEAD_QUESTION_ANSWERING: return TASK_QA;
    case SQZ_HEAD_MASKED_LM: return TASK_FILL_MASK;
    case SQZ_HEAD_BASE: return TASK_EMBED;
    default: return TASK_AUTO;
    }
}

int sqz_cli_infer(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(infer_help, stdout);
        return 0;
    }
    pipeline p;
    memset(&p, 0, sizeof p);
    int rc = parse_options(argc, argv, &p.opt);
    if (rc)
        return rc;
    rc = 1;
    sqz_status st = sqz_model_load(p.opt.model, &p.model);
    if (st == SQZ_OK)
        st = sqz_tokenizer_load(p.opt.model, &p.tok);
    if (st != SQZ_OK) {
        fprintf(stderr, "sqz infer: %s: %s\n", sqz_status_str(st), sqz_last_error());
        goto done;
    }
    sqz_model_get_info(p.model, &p.info);
    sqz_tokenizer_get_info(p.tok, &p.tok_info);
    p.task = p.opt.task == TASK_AUTO ? task_for_head(p.info.head) : p.opt.task;
    if (task_for_head(p.info.head) != p.task) {
        fprintf(stderr, "sqz infer: task '%s' needs a different head than this checkpoint's %s (%s)\n",
                argv[0] ? "requested" : "", p.info.architecture, sqz_head_name(p.info.head));
        rc = EXIT_USAGE;
        goto done;
    }
    if (p.task == TASK_FILL_MASK && p.tok_info.mask_id < 0) {
        fprintf(stderr, "sqz infer: fill-mask needs a [MASK] token in the vocabulary\n");
        goto done;
    }
    if (p.task == TASK_EMBED) {
        if ((st = sqz_embedder_load(p.model, &p.embedder)) != SQZ_OK ||
            (st = sqz_embedder_override(p.embedder, p.opt.pooling, p.opt.pooling_count, p.opt.normalize)) != SQZ_OK) {
            fprintf(stderr, "sqz infer: %s: %s\n", sqz_status_str(st), sqz_last_error());
            goto done;
        }
        if ((st = sqz_embedder_use_tokenizer(p.embedder, p.tok)) != SQZ_OK) {
            fprintf(stderr, "sqz infer: %s: %s\n", sqz_status_str(st), sqz_last_error());
            goto done;
        }
        sqz_embedder_get_info(p.embedder, &p.emb_info);
        if (p.opt.max_length == 0)
            p.opt.max_length = p.emb_info.truncate_at;
    }
    if (p.opt.max_length == 0 || p.opt.max_length > p.info.max_position_embeddings)
        p.opt.max_length = p.info.max_position_embeddings;
    p.setup = (infer_line_setup){p.tok, p.task == TASK_QA, p.task == TASK_FILL_MASK,
                                 p.tok_info.mask_id, (size_t)p.opt.max_length};
    const char *backend = cli_pick_backend(p.opt.backend), *device = NULL;
    char device_buf[32];
    if (cli_device_for("infer", backend, p.opt.device, p.opt.threads, device_buf, sizeof device_buf, &device)) {
        rc = EXIT_USAGE;
        goto done;
    }
    sqz_session_options so = {backend, device, p.opt.precision};
    if ((st = sqz_session_create_with(p.model, &so, &p.session)) != SQZ_OK) {
        fprintf(stderr, "sqz infer: %s: %s\n", sqz_status_str(st), sqz_last_error());
        goto done;
    }
    if (p.task == TASK_EMBED) {
        /* only what the pooling reads crosses to the host (the full hidden state is most of a
         * GPU run's time) */
        const char *names[2];
        size_t count = 0;
        if (p.emb_info.needs_pooler)
            names[count++] = "pooler_output";
        if (p.emb_info.needs_hidden)
            names[count++] = "last_hidden_state";
        if ((st = sqz_session_select_outputs(p.session, names, count)) != SQZ_OK) {
            fprintf(stderr, "sqz infer: %s: %s\n", sqz_status_str(st), sqz_last_error());
            goto done;
        }
    }
    if (p.opt.resume && !resume_prepare(p.opt.output, &p.skip_lines)) {
        fprintf(stderr, "sqz infer: cannot read %s to resume: %s\n", p.opt.output, strerror(errno));
        goto done;
    }
    const char *limit = getenv("SQZ_MAX_LINE_BYTES");
    p.max_line_bytes = limit && strtoull(limit, NULL, 10) > 0 ? (size_t)strtoull(limit, NULL, 10)
                                                              : MAX_LINE_BYTES_DEFAULT;
    p.in = strcmp(p.opt.input, "-") == 0 ? stdin : fopen(p.opt.input, "rb");
    p.out = strcmp(p.opt.output, "-") == 0 ? stdout : fopen(p.opt.output, p.opt.resume ? "ab" : "wb");
    if (!p.in || !p.out) {
        fprintf(stderr, "sqz infer: cannot open %s: %s\n", !p.in ? p.opt.input : p.opt.output, strerror(errno));
        goto done;
    }
    /* the size from fstat: the reader uses the descriptor, and fseek on the FILE may
     * leave the descriptor's offset anywhere */
    p.in_fd = fileno(p.in);
    struct stat in_stat;
    if (p.in != stdin && fstat(p.in_fd, &in_stat) == 0 && S_ISREG(in_stat.st_mode))
        p.input_bytes = (long)in_stat.st_size;
    p.progress = isatty(STDERR_FILENO);
    p.started = now_seconds();
    queue_init(&p.to_compute);
    queue_init(&p.to_write);
    /* SIGINT/SIGTERM: only the reader thread takes them (see reader_main); no SA_RESTART,
     * so its blocked read() returns; a second signal kills as usual (SA_RESETHAND) */
    stop_signal = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    struct sigaction old_int, old_term;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigset_t stop_set, old_mask;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, &old_mask);
    pthread_t reader, writer;
    pthread_create(&reader, NULL, reader_main, &p);
    pthread_create(&writer, NULL, writer_main, &p);
    batch *b;
    while ((b = queue_pop(&p.to_compute)) != NULL)
        compute_and_send(&p, b);
    queue_push(&p.to_write, NULL);
    pthread_join(reader, NULL);
    pthread_join(writer, NULL);
    const int stopped_by = stop_signal;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    queue_destroy(&p.to_compute);
    queue_destroy(&p.to_write);
    if (p.progress)
        show_progress(&p, true);
    double wall = now_seconds() - p.started;
    fprintf(stderr, "sqz infer: %zu lines (%zu failed), %zu tokens on %s (%s) in %.2f s: %.1f lines/s; "
            "packing skipped %zu padded tokens (%.0f%%); busy time: tokenize %.2f s, compute %.2f s, "
            "write %.2f s\n", p.lines, p.failed, p.tokens, backend, sqz_session_device(p.session), wall,
            wall > 0 ? p.lines / wall : 0.0, p.padded_tokens - p.tokens,
            p.padded_tokens ? 100.0 * (double)(p.padded_tokens - p.tokens) / (double)p.padded_tokens : 0.0,
            p.tokenize_s, p.compute_s, p.write_s);
    if (p.retries)
        fprintf(stderr, "sqz infer: %zu failed batches were retried in smaller parts\n", p.retries);
    rc = p.failed || p.read_error ? 1 : 0;
    if (stopped_by) {
        fprintf(stderr, "sqz infer: interrupted by %s: %zu records written, input lines 1..%zu are "
                "done; rerun with --resume to continue\n", stopped_by == SIGINT ? "SIGINT" : "SIGTERM",
                p.skip_lines + p.lines, p.skip_lines + p.lines);
        rc = 128 + stopped_by;
    }
    if (fflush(p.out) != 0 || ferror(p.out)) {
        fprintf(stderr, "sqz infer: error writing %s\n", p.opt.output);
        rc = 1;
    }
done:
    if (p.in && p.in != stdin)
        fclose(p.in);
    if (p.out && p.out != stdout)
        fclose(p.out);
    sqz_session_free(p.session);
    sqz_embedder_free(p.embedder);
    sqz_tokenizer_free(p.tok);
    sqz_model_free(p.model);
    return rc;
}
