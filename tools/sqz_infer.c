/* sqz infer: JSON Lines of text in, one JSON line of answers out per input line, in input
 * order (the contract is docs/infer.md).
 *
 * Threads form a pipeline so the devices never wait on text work:
 *   reader   reads and parses lines, tokenizes, sorts a window of lines by length and cuts
 *            it into batches under a token budget;
 *   workers  one per device (--devices; one by default), each with its own session, each
 *            packing batch i+1 and submitting it while batch i computes and batch i-1's
 *            outputs come back (two runs in flight per session); the engine packs the
 *            sequences, so padding costs no compute;
 *   format   turns outputs into JSON records (a few threads: an embedding is hundreds of
 *            numbers to print, more work per line than a GPU's);
 *   writer   writes the records back in input order.
 * Every line yields exactly one record: an answer or {"line": n, "error": ...}. A batch that
 * fails on one device goes to another that has not failed it; one that every device has
 * failed is retried in halves down to single lines, so a device error costs at most the lines
 * that fail alone. A device that fails RETIRE_AFTER batches in a row while others work is
 * retired. SIGINT/SIGTERM stop the reading; the complete prefix of records is written and
 * --resume continues after it. */
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
#define MAX_DEVICES 32       /* --devices: one bit of a batch's failed_on each */
#define RETIRE_AFTER 3       /* batches failed in a row that retire a device while others work */
#define MAX_LINE_BYTES_DEFAULT (64u << 20) /* SQZ_MAX_LINE_BYTES overrides */
#define READ_CHUNK 65536

/* Set by SIGINT/SIGTERM: stop reading, write what is complete, exit non-zero. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = sig; }

typedef enum task { TASK_AUTO, TASK_CLASSIFY, TASK_EMBED, TASK_TOKENS, TASK_QA, TASK_FILL_MASK } task;

typedef struct options {
    const char *model, *backend, *device, *devices, *input, *output, *threads;
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
    unsigned failed_on;   /* devices (bits by worker index) this batch failed on */
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

/* Batches on their way from the reader to the workers: a bounded queue from the reader (so a
 * fast reader waits for the devices) and an unbounded list of batches that workers hand back
 * (a failed batch for another device, or its halves). A worker takes a batch that has not
 * failed on it, unless every device still working has failed it. The run is over when the
 * reader is done, both are empty and no worker holds a batch. */
typedef struct work {
    pthread_mutex_t lock;
    pthread_cond_t changed; /* a batch came, a place freed, a batch finished, a device retired */
    batch *slots[QUEUE_DEPTH];
    size_t head, count;
    batch **retry;
    size_t n_retry, cap_retry;
    bool closed;            /* the reader is done */
    size_t held;            /* batches taken by workers and not yet finished or handed back */
    unsigned live;          /* devices still working (bits by worker index) */
} work;

static void work_init(work *w, int devices)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->changed, NULL);
    w->live = devices >= 32 ? ~0u : (1u << devices) - 1;
}

static void work_destroy(work *w)
{
    free(w->retry);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->changed);
}

static void work_push(work *w, batch *b)
{
    pthread_mutex_lock(&w->lock);
    while (w->count == QUEUE_DEPTH)
        pthread_cond_wait(&w->changed, &w->lock);
    w->slots[(w->head + w->count++) % QUEUE_DEPTH] = b;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
}

static void work_close(work *w)
{
    pthread_mutex_lock(&w->lock);
    w->closed = true;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
}

/* Adds a batch to the retry list (the lock held); out of memory ends the process loudly, as
 * losing the batch would lose lines. */
static void retry_push_locked(work *w, batch *b)
{
    if (w->n_retry == w->cap_retry) {
        size_t cap = w->cap_retry ? 2 * w->cap_retry : 16;
        batch **bigger = realloc(w->retry, cap * sizeof *bigger);
        if (!bigger) {
            fprintf(stderr, "sqz infer: out of memory keeping a batch to retry\n");
            exit(1);
        }
        w->retry = bigger;
        w->cap_retry = cap;
    }
    w->retry[w->n_retry++] = b;
}

typedef enum { TAKE_BATCH, TAKE_NOTHING_NOW, TAKE_END } take_result;

/* A batch for worker `me`: handed-back ones first. blocking: wait for one (or the end);
 * otherwise TAKE_NOTHING_NOW when there is none at this moment. */
static take_result work_take(work *w, int me, bool blocking, batch **out)
{
    const unsigned bit = 1u << me;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        for (size_t i = 0; i < w->n_retry; i++) {
            batch *b = w->retry[i];
            if (!(b->failed_on & bit) || (b->failed_on & w->live) == w->live) {
                w->retry[i] = w->retry[--w->n_retry];
                w->held++;
                pthread_mutex_unlock(&w->lock);
                *out = b;
                return TAKE_BATCH;
            }
        }
        if (w->count > 0) {
            *out = w->slots[w->head];
            w->head = (w->head + 1) % QUEUE_DEPTH;
            w->count--;
            w->held++;
            pthread_cond_broadcast(&w->changed); /* a place for the reader */
            pthread_mutex_unlock(&w->lock);
            return TAKE_BATCH;
        }
        const bool over = w->closed && w->n_retry == 0 && w->held == 0;
        if (over || !blocking) {
            pthread_mutex_unlock(&w->lock);
            return over ? TAKE_END : TAKE_NOTHING_NOW;
        }
        pthread_cond_wait(&w->changed, &w->lock);
    }
}

/* A taken batch is finished (sent to the writer, or replaced by what was handed back). */
static void work_done(work *w)
{
    pthread_mutex_lock(&w->lock);
    w->held--;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
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
    struct worker *workers;
    int n_workers;
    FILE *in, *out;
    int in_fd;
    size_t skip_lines;    /* --resume: input lines whose records the output already has */
    size_t max_line_bytes;
    struct work *work;    /* reader -> workers */
    queue to_format;      /* workers -> formatters */
    queue to_write;       /* formatters -> writer */
    int n_formatters;
    double *format_s;     /* busy time of each formatter */
    /* statistics; each counter is written by one thread only (workers keep their own) */
    size_t lines, failed, tokens, lines_read;
    double tokenize_s, write_s;
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
        work_push(p->work, new_batch(failed, n_failed, 0));
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
        work_push(p->work, new_batch(window + start, end - start, (int)width));
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
    work_close(p->work);
    return NULL;
}

/* ---- workers: one per device --------------------------------------------------------- */

typedef struct worker {
    pipeline *p;
    int index;
    char name[192];          /* BACKEND[:DEVICE], as given */
    sqz_session *session;
    pthread_t thread;
    unsigned streak;         /* batches failed in a row */
    /* statistics, this worker's own */
    size_t tokens, padded_tokens, split, moved, batches;
    double compute_s;
} worker;

/* Packs a batch into padded arrays and submits it; *why gets the reason it failed. */
static sqz_status submit_batch(worker *w, batch *b, sqz_ticket *ticket, const char **why)
{
    const size_t N = b->count, W = (size_t)b->width;
    int64_t *ids = calloc(N * W, sizeof *ids), *mask = calloc(N * W, sizeof *mask);
    int64_t *types = calloc(N * W, sizeof *types);
    sqz_status st = SQZ_ERR_OUT_OF_MEMORY;
    *why = "out of memory for a batch";
    if (ids && mask && types) {
        for (size_t r = 0; r < N; r++) {
            const item *it = b->items[r];
            for (size_t k = 0; k < it->n_use; k++) {
                ids[r * W + k] = it->enc->input_ids[it->use[k]];
                types[r * W + k] = it->enc->token_type_ids[it->use[k]];
                mask[r * W + k] = 1;
            }
        }
        sqz_input in = {.batch = (int)N, .seq_len = (int)W, .input_ids = ids,
                        .attention_mask = mask, .token_type_ids = types};
        st = sqz_session_submit(w->session, &in, ticket);
        *why = sqz_last_error();
    }
    free(ids), free(mask), free(types);
    return st;
}

/* Padded width of items (the longest). */
static int width_of(item **items, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        w = items[i]->n_use > w ? items[i]->n_use : w;
    return (int)w;
}

/* A batch leaves the workers: to the formatters, then the writer. */
static void send_to_writer(worker *w, batch *b)
{
    queue_push(&w->p->to_format, b);
    work_done(w->p->work);
}

/* A batch failed on this worker's device with `message`. It goes to a device that has not
 * failed it; when every device still working has, it is split in halves (a line alone gets
 * the error record); nothing is dropped and nothing is done twice. */
static void batch_failed(worker *w, batch *b, const char *message)
{
    pipeline *p = w->p;
    work *wk = p->work;
    w->streak++;
    pthread_mutex_lock(&wk->lock);
    b->failed_on |= 1u << w->index;
    const bool elsewhere = (b->failed_on & wk->live) != wk->live;
    const bool retire = w->streak >= RETIRE_AFTER && (wk->live & ~(1u << w->index)) != 0;
    if (retire)
        wk->live &= ~(1u << w->index);
    batch *x = NULL, *y = NULL;
    if (elsewhere) {
        retry_push_locked(wk, b);
    } else if (b->count > 1) {
        const size_t half = b->count / 2;
        x = new_batch(b->items, half, width_of(b->items, half));
        y = new_batch(b->items + half, b->count - half, width_of(b->items + half, b->count - half));
        retry_push_locked(wk, x);
        retry_push_locked(wk, y);
    }
    if (elsewhere || x) {
        wk->held--;
        pthread_cond_broadcast(&wk->changed);
    }
    pthread_mutex_unlock(&wk->lock);
    if (elsewhere) {
        if (++w->moved <= 3 || p->opt.verbose)
            fprintf(stderr, "sqz infer: a batch of %zu lines failed on %s (%s); retrying it on another device\n",
                    b->count, w->name, message);
    } else if (x) {
        if (++w->split <= 3 || p->opt.verbose)
            fprintf(stderr, "sqz infer: a batch of %zu lines failed (%s); retrying it in halves\n", b->count, message);
        free(b->items);
        free(b);
    } else {
        b->error = infer_message(message, NULL);
        send_to_writer(w, b); /* a line that fails alone on every device: its error record */
    }
    if (retire)
        fprintf(stderr, "sqz infer: %s failed %u batches in a row; the other devices take its work\n", w->name,
                w->streak);
}

/* Waits for the oldest of the worker's runs in flight and passes it on. */
static void finish_oldest(worker *w, batch **flight, sqz_ticket *tickets, int *n)
{
    batch *b = flight[0];
    const sqz_ticket ticket = tickets[0];
    for (int i = 1; i < *n; i++)
        flight[i - 1] = flight[i], tickets[i - 1] = tickets[i];
    (*n)--;
    const double t0 = now_seconds();
    sqz_status st = sqz_session_wait(w->session, ticket, &b->result);
    w->compute_s += now_seconds() - t0;
    if (st != SQZ_OK) {
        batch_failed(w, b, sqz_last_error());
        return;
    }
    w->streak = 0;
    w->batches++;
    send_to_writer(w, b);
}

static bool retired(worker *w)
{
    pthread_mutex_lock(&w->p->work->lock);
    const bool gone = !(w->p->work->live & (1u << w->index));
    pthread_mutex_unlock(&w->p->work->lock);
    return gone;
}

/* Takes batches, keeps up to SQZ_MAX_IN_FLIGHT of them on the device, and passes results on
 * in the order they were submitted (the writer restores input order). */
static void *worker_main(void *arg)
{
    worker *w = arg;
    pipeline *p = w->p;
    batch *flight[SQZ_MAX_IN_FLIGHT];
    sqz_ticket tickets[SQZ_MAX_IN_FLIGHT];
    int n = 0;
    while (!retired(w) || n > 0) {
        batch *b = NULL;
        const take_result got = retired(w) ? TAKE_NOTHING_NOW : work_take(p->work, w->index, n == 0, &b);
        if (got == TAKE_END)
            break;
        if (got == TAKE_NOTHING_NOW) { /* nothing to start: land what is in flight */
            if (n > 0)
                finish_oldest(w, flight, tickets, &n);
            continue;
        }
        if (b->width == 0 || stop_signal) {
            b->skipped = b->width > 0; /* interrupted before compute: not written */
            send_to_writer(w, b);
            continue;
        }
        const double t0 = now_seconds();
        const char *why = NULL;
        sqz_status st = submit_batch(w, b, &tickets[n], &why);
        w->compute_s += now_seconds() - t0;
        if (st != SQZ_OK) {
            batch_failed(w, b, why);
            continue;
        }
        for (size_t r = 0; r < b->count; r++)
            w->tokens += b->items[r]->n_use;
        w->padded_tokens += b->count * (size_t)b->width;
        flight[n++] = b;
        if (n == SQZ_MAX_IN_FLIGHT)
            finish_oldest(w, flight, tickets, &n);
    }
    return NULL;
}

/* Opens one session per device: --devices LIST or all (every device of --backend), else
 * --backend/--device. Returns the count, 0 on error (message printed). */
static int open_devices(pipeline *p, const char *backend)
{
    cli_device devs[MAX_DEVICES];
    int n;
    if (!p->opt.devices) {
        snprintf(devs[0].backend, sizeof devs[0].backend, "%s", backend);
        snprintf(devs[0].device, sizeof devs[0].device, "%s", p->opt.device ? p->opt.device : "");
        n = 1;
    } else if (strcmp(p->opt.devices, "all") == 0) {
        if ((n = cli_devices_of(backend, devs, MAX_DEVICES)) == 0) {
            fprintf(stderr, "sqz infer: --devices all: backend %s lists no device (sqz devices)\n", backend);
            return 0;
        }
    } else if ((n = cli_parse_devices("infer", p->opt.devices, devs, MAX_DEVICES)) < 0) {
        return 0;
    }
    p->workers = calloc((size_t)n, sizeof *p->workers);
    if (!p->workers) {
        fprintf(stderr, "sqz infer: out of memory\n");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        worker *w = &p->workers[i];
        w->p = p;
        w->index = i;
        snprintf(w->name, sizeof w->name, "%s%s%s", devs[i].backend, devs[i].device[0] ? ":" : "", devs[i].device);
        sqz_session_options so = cli_session_options(devs[i].backend, devs[i].device[0] ? devs[i].device : NULL, p->opt.precision);
        sqz_status st = sqz_session_create(p->model, &so, &w->session);
        if (st == SQZ_OK && p->task == TASK_EMBED) {
            /* only what the pooling reads crosses to the host (the full hidden state is most of
             * a GPU run's time) */
            const char *names[2];
            size_t count = 0;
            if (p->emb_info.needs_pooler)
                names[count++] = "pooler_output";
            if (p->emb_info.needs_hidden)
                names[count++] = "last_hidden_state";
            st = sqz_session_select_outputs(w->session, names, count);
        }
        p->n_workers = i + 1;
        if (st != SQZ_OK) {
            fprintf(stderr, "sqz infer: %s: %s: %s\n", w->name, sqz_status_str(st), sqz_last_error());
            return 0;
        }
    }
    return n;
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

typedef struct formatter {
    pipeline *p;
    int index;
    pthread_t thread;
} formatter;

/* Makes the records of whole batches (any order: the writer restores input order). */
static void *formatter_main(void *arg)
{
    formatter *f = arg;
    pipeline *p = f->p;
    batch *b;
    while ((b = queue_pop(&p->to_format)) != NULL) {
        const double t0 = now_seconds();
        for (size_t r = 0; r < b->count && !b->skipped; r++)
            make_record(p, b, r);
        sqz_result_free(b->result); /* the records hold everything now */
        b->result = NULL;
        p->format_s[f->index] += now_seconds() - t0;
        queue_push(&p->to_write, b);
    }
    return NULL;
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
            p->tokens += it->n_use;
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

/* The summary on stderr: lines, tokens, rate, what packing saved, where the time went; per
 * device when there are several. Device busy time is sqz_session_busy_seconds (on CUDA, event
 * timed on the compute stream) over the wall time of the whole run. */
static void report_summary(const pipeline *p, const char *backend, double wall)
{
    size_t computed = 0, padded = 0, split = 0, moved = 0;
    double compute_s = 0, busy = 0, format_s = 0;
    for (int i = 0; i < p->n_formatters; i++)
        format_s += p->format_s[i];
    for (int i = 0; i < p->n_workers; i++) {
        const worker *w = &p->workers[i];
        double seconds = 0;
        sqz_session_busy_seconds(w->session, &seconds);
        computed += w->tokens, padded += w->padded_tokens, split += w->split, moved += w->moved;
        compute_s += w->compute_s, busy += seconds;
    }
    char where[512];
    if (p->n_workers == 1)
        snprintf(where, sizeof where, "%s (%s)", backend, sqz_session_device(p->workers[0].session));
    else
        snprintf(where, sizeof where, "%d devices", p->n_workers);
    fprintf(stderr, "sqz infer: %zu lines (%zu failed), %zu tokens on %s in %.2f s: %.1f lines/s; "
            "packing skipped %zu padded tokens (%.0f%%); busy time: tokenize %.2f s, compute %.2f s, "
            "format %.2f s (%d threads), write %.2f s; device busy %.2f s (%.0f%% of the wall time)\n", p->lines,
            p->failed, p->tokens, where, wall, wall > 0 ? p->lines / wall : 0.0, padded - computed,
            padded ? 100.0 * (double)(padded - computed) / (double)padded : 0.0, p->tokenize_s, compute_s, format_s,
            p->n_formatters, p->write_s, busy, wall > 0 ? 100.0 * busy / (wall * p->n_workers) : 0.0);
    for (int i = 0; p->n_workers > 1 && i < p->n_workers; i++) {
        const worker *w = &p->workers[i];
        double seconds = 0;
        sqz_session_busy_seconds(w->session, &seconds);
        fprintf(stderr, "sqz infer:   %s (%s): %zu batches, %zu tokens, device busy %.2f s (%.0f%%)\n", w->name,
                sqz_session_device(w->session), w->batches, w->tokens, seconds, wall > 0 ? 100.0 * seconds / wall : 0.0);
    }
    if (split)
        fprintf(stderr, "sqz infer: %zu failed batches were retried in smaller parts\n", split);
    if (moved)
        fprintf(stderr, "sqz infer: %zu failed batches were retried on another device\n", moved);
}

/* ---- command line --------------------------------------------------------------------- */

static const char infer_help[] =
    "usage: sqz infer --model DIR [--backend auto|cpu|cpu_ref|opencl|cuda] [--device D | --devices LIST|all]\n"
    "                 [--threads N]\n"
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
    "  --devices LIST      several devices at once, one session each: BACKEND[:DEVICE],... (e.g.\n"
    "                      cuda:0,cuda:1; a device may repeat) or all (every device of --backend\n"
    "                      that `sqz devices` lists); a batch that fails on one goes to another\n"
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
    "A batch that fails goes to another device that has not failed it; one that every device\n"
    "failed is retried in halves down to single lines; a line that still fails gets an error\n"
    "record. A device that fails 3 batches in a row while others work is retired.\n"
    "SIGINT/SIGTERM stop reading, write the records complete in input order, report the count\n"
    "and exit 130/143; --resume continues from there.\n"
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
        {"no-normalize", false, NULL}, {"threads", true, NULL}, {"devices", true, NULL},
    };
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("infer", argc, argv, opts, n))
        return EXIT_USAGE;
    memset(o, 0, sizeof *o);
    o->model = cli_get(opts, n, "model");
    o->backend = cli_get(opts, n, "backend") ? cli_get(opts, n, "backend") : "auto";
    o->device = cli_get(opts, n, "device");
    o->threads = cli_get(opts, n, "threads");
    o->devices = cli_get(opts, n, "devices");
    if (o->device && o->devices) {
        fprintf(stderr, "sqz infer: --device and --devices contradict each other (--devices takes BACKEND:DEVICE,...)\n");
        return EXIT_USAGE;
    }
    if (o->threads && o->devices) {
        fprintf(stderr, "sqz infer: with --devices, give the cpu backend's threads as cpu:threads=N\n");
        return EXIT_USAGE;
    }
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
    sqz_status st = cli_load_model(p.opt.model, &p.model);
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
    p.opt.device = device; /* --threads N as the cpu backend's device string */
    if (open_devices(&p, backend) == 0)
        goto done;
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
    work wk;
    work_init(&wk, p.n_workers);
    p.work = &wk;
    queue_init(&p.to_format);
    queue_init(&p.to_write);
    /* formatters: half the cores, 1 to 8 (printing an embedding's numbers is the slow part) */
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p.n_formatters = cores / 2 < 1 ? 1 : cores / 2 > 8 ? 8 : (int)(cores / 2);
    formatter formatters[8];
    double format_s[8] = {0};
    p.format_s = format_s;
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
    for (int i = 0; i < p.n_formatters; i++) {
        formatters[i] = (formatter){&p, i, 0};
        pthread_create(&formatters[i].thread, NULL, formatter_main, &formatters[i]);
    }
    for (int i = 0; i < p.n_workers; i++)
        pthread_create(&p.workers[i].thread, NULL, worker_main, &p.workers[i]);
    for (int i = 0; i < p.n_workers; i++)
        pthread_join(p.workers[i].thread, NULL);
    for (int i = 0; i < p.n_formatters; i++)
        queue_push(&p.to_format, NULL);
    for (int i = 0; i < p.n_formatters; i++)
        pthread_join(formatters[i].thread, NULL);
    queue_push(&p.to_write, NULL);
    pthread_join(reader, NULL);
    pthread_join(writer, NULL);
    const int stopped_by = stop_signal;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    work_destroy(&wk);
    queue_destroy(&p.to_format);
    queue_destroy(&p.to_write);
    if (p.progress)
        show_progress(&p, true);
    double wall = now_seconds() - p.started;
    report_summary(&p, backend, wall);
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
    for (int i = 0; i < p.n_workers; i++)
        sqz_session_free(p.workers[i].session);
    free(p.workers);
    sqz_embedder_free(p.embedder);
    sqz_tokenizer_free(p.tok);
    sqz_model_free(p.model);
    return rc;
}
