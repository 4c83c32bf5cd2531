/* sqz infer: JSON Lines of text in, one JSON line of answers out per input line, in input
 * order (the contract is docs/infer.md).
 *
 * Threads form a pipeline so the devices never wait on text work:
 *   reader   reads and parses lines, tokenizes them (a window at a time, on
 *            --tokenize-threads threads), sorts the window by length and cuts it into
 *            batches under a token budget;
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
#include "cli/cli_options.h"
#include "cli/sqz_commands.h"
#include "cli/sqz_infer_line.h"

#define EXIT_USAGE 2
#define WINDOW_LINES 4096    /* lines sorted together: bigger sorts better, holds more */
#define MAX_TOKENIZE_THREADS 16
#define QUEUE_DEPTH 4        /* batches in flight between two threads */
#define MAX_DEVICES 32       /* --devices: one bit of a batch's failed_on each */
#define RETIRE_AFTER 3       /* batches failed in a row that retire a device while others work */
#define MAX_LINE_BYTES_DEFAULT (64u << 20) /* SQZ_MAX_LINE_BYTES overrides */
#define READ_CHUNK 65536

/* Set by SIGINT/SIGTERM: stop reading, write what is complete, exit non-zero. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = sig; }

typedef struct options {
    const char *model, *backend, *device, *devices, *input, *output, *threads;
    sqz_precision precision;
    sqz_task task;
    sqz_pool_mode pooling[SQZ_MAX_POOL_MODES];
    int pooling_count;   /* 0: from the checkpoint (modules.json, else the pooler) */
    int normalize;       /* -1: from the checkpoint */
    bool resume, verbose;
    long batch_tokens, max_length, top_k, max_answer_length;
    long tokenize_threads; /* 0: from the cores */
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

/* The threads' shared state around the library's text pipeline (`pipe`). */
typedef struct pipeline {
    options opt;
    sqz_model *model;
    sqz_tokenizer *tok;
    sqz_pipeline *pipe;
    sqz_pipeline_info info;
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
    int n_tokenizers;     /* threads tokenizing a window (the reader is one) */
    double *format_s;     /* busy time of each formatter */
    /* statistics; each counter is written by one thread only (workers keep their own) */
    size_t lines, failed, tokens, lines_read;
    double tokenize_s, write_s;
    long input_bytes, bytes_read;
    bool progress, read_error;
    double started;
} pipeline;

/* ---- reader: parse, tokenize, sort, batch ------------------------------------------------ */

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

/* Tokens an item runs (0 for a line that failed before). */
static size_t tokens_of(const item *it)
{
    return sqz_pipeline_item_tokens(it->item, NULL, NULL);
}

/* Sends a window on as the pipeline batches it (sorted by length, under the token budget);
 * lines with errors go as one batch of their own. */
static void flush_window(pipeline *p, item **window, size_t n)
{
    item **failed = malloc((n ? n : 1) * sizeof *failed);
    sqz_pipeline_item **encoded = malloc((n ? n : 1) * sizeof *encoded);
    size_t *ends = malloc((n ? n : 1) * sizeof *ends);
    if (!failed || !encoded || !ends) {
        fprintf(stderr, "sqz infer: out of memory\n");
        exit(1);
    }
    size_t n_failed = 0, n_encoded = 0, n_item_failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (window[i]->error)
            failed[n_failed++] = window[i];
        else
            encoded[n_encoded++] = window[i]->item;
    }
    const size_t batches = sqz_pipeline_plan_batches(p->pipe, encoded, n_encoded, &n_item_failed, ends);
    for (size_t i = 0; i < n_item_failed; i++)
        failed[n_failed++] = sqz_pipeline_item_user(encoded[i]);
    if (n_failed)
        work_push(p->work, new_batch(failed, n_failed, 0));
    for (size_t b = 0, start = n_item_failed; b < batches; start = ends[b++]) {
        for (size_t i = start; i < ends[b]; i++)
            failed[i - start] = sqz_pipeline_item_user(encoded[i]);
        /* sorted ascending: the last line of the batch sets its padded width */
        work_push(p->work, new_batch(failed, ends[b] - start, (int)sqz_pipeline_item_tokens(encoded[ends[b] - 1], NULL, NULL)));
    }
    free(failed), free(encoded), free(ends);
}

/* One thread's share of a window to tokenize. */
typedef struct tokenize_share {
    const sqz_pipeline *pipe;
    item **items;
    size_t count;
    pthread_t thread;
    bool started;
} tokenize_share;

static void *tokenize_share_main(void *arg)
{
    tokenize_share *share = arg;
    for (size_t i = 0; i < share->count; i++)
        infer_encode_line(share->pipe, share->items[i]);
    return NULL;
}

/* Tokenizes a window's parsed lines on up to n_tokenizers threads, the reader being one: a
 * pipeline encodes from any number of threads at once, and one thread's tokenizer is slower
 * than a GPU's batches of short lines. Each line's item is its own, so the window comes out
 * the same whatever the thread count. The helpers block the stop signals, which stay the
 * reader's. */
static void tokenize_window(pipeline *p, item **window, size_t n)
{
    size_t threads = (size_t)p->n_tokenizers;
    if (threads > n / 256 + 1)
        threads = n / 256 + 1; /* a share worth a thread */
    tokenize_share shares[MAX_TOKENIZE_THREADS];
    sigset_t stop_set, before;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, &before);
    for (size_t t = 0; t < threads; t++) {
        const size_t start = n * t / threads, end = n * (t + 1) / threads;
        shares[t] = (tokenize_share){p->pipe, window + start, end - start, 0, false};
        /* share 0 is the reader's; a thread that cannot start leaves its share to the reader */
        shares[t].started = t > 0 && pthread_create(&shares[t].thread, NULL, tokenize_share_main, &shares[t]) == 0;
    }
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    for (size_t t = 0; t < threads; t++)
        if (!shares[t].started)
            tokenize_share_main(&shares[t]);
    for (size_t t = 1; t < threads; t++)
        if (shares[t].started)
            pthread_join(shares[t].thread, NULL);
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
        double t0 = cli_now_seconds();
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
            infer_parse_line(p->info.task == SQZ_TASK_QA, it, line ? line : "", len);
        }
        window[n++] = it;
        p->lines_read++;
        p->tokenize_s += cli_now_seconds() - t0;
        if (n == WINDOW_LINES) {
            t0 = cli_now_seconds();
            tokenize_window(p, window, n);
            p->tokenize_s += cli_now_seconds() - t0;
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
    if (n) { /* the last window, or an interrupted one (the compute thread skips its lines) */
        const double t0 = cli_now_seconds();
        tokenize_window(p, window, n);
        p->tokenize_s += cli_now_seconds() - t0;
        flush_window(p, window, n);
    }
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

/* The pipeline's items of a batch, in its order (malloc'd; NULL without memory). */
static sqz_pipeline_item **items_of(const batch *b)
{
    sqz_pipeline_item **items = malloc((b->count ? b->count : 1) * sizeof *items);
    for (size_t i = 0; items && i < b->count; i++)
        items[i] = b->items[i]->item;
    return items;
}

/* Submits a batch as one packed run; *why gets the reason it failed. */
static sqz_status submit_batch(worker *w, batch *b, sqz_ticket *ticket, const char **why)
{
    sqz_pipeline_item **items = items_of(b);
    sqz_status st = SQZ_ERR_OUT_OF_MEMORY;
    *why = "out of memory for a batch";
    if (items) {
        st = sqz_pipeline_submit(w->p->pipe, w->session, items, b->count, ticket);
        *why = sqz_last_error();
    }
    free(items);
    return st;
}

/* Padded width of items (the longest). */
static int width_of(item **items, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        w = tokens_of(items[i]) > w ? tokens_of(items[i]) : w;
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
    const double t0 = cli_now_seconds();
    sqz_status st = sqz_session_wait(w->session, ticket, &b->result);
    w->compute_s += cli_now_seconds() - t0;
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
        const double t0 = cli_now_seconds();
        const char *why = NULL;
        sqz_status st = submit_batch(w, b, &tickets[n], &why);
        w->compute_s += cli_now_seconds() - t0;
        if (st != SQZ_OK) {
            batch_failed(w, b, why);
            continue;
        }
        for (size_t r = 0; r < b->count; r++)
            w->tokens += tokens_of(b->items[r]);
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
    const int n = cli_resolve_devices("infer", backend, p->opt.device, p->opt.devices, devs, MAX_DEVICES);
    if (n == 0)
        return 0;
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
        if (st == SQZ_OK) /* only what the task reads crosses to the host */
            st = sqz_pipeline_use_session(p->pipe, w->session);
        p->n_workers = i + 1;
        if (st != SQZ_OK) {
            fprintf(stderr, "sqz infer: %s: %s: %s\n", w->name, sqz_status_str(st), sqz_last_error());
            return 0;
        }
    }
    return n;
}

/* ---- writer: records in input order -------------------------------------------------- */

typedef struct reorder {
    item **slots; /* slots[i] holds line base + i */
    size_t cap, base;
} reorder;

static void show_progress(pipeline *p, bool final)
{
    double t = cli_now_seconds() - p->started;
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
        const double t0 = cli_now_seconds();
        if (!b->skipped && b->width > 0) {
            /* the answers of a batch that ran, or its error for every line */
            sqz_pipeline_item **items = items_of(b);
            const char *error = b->error;
            if (!error && (!items || sqz_pipeline_answer(p->pipe, b->result, items, b->count) != SQZ_OK))
                error = items ? sqz_last_error() : "out of memory formatting the answer";
            for (size_t r = 0; error && r < b->count; r++)
                sqz_pipeline_item_set_error(b->items[r]->item, error);
            free(items);
        }
        for (size_t r = 0; r < b->count && !b->skipped; r++)
            infer_make_record(b->items[r]);
        sqz_result_free(b->result); /* the records hold everything now */
        b->result = NULL;
        p->format_s[f->index] += cli_now_seconds() - t0;
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
        double t0 = cli_now_seconds();
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
            p->failed += infer_item_error(it) != NULL;
            p->tokens += tokens_of(it);
            infer_item_free(it);
            done++;
        }
        if (done) {
            memmove(ro.slots, ro.slots + done, (ro.cap - done) * sizeof *ro.slots);
            memset(ro.slots + ro.cap - done, 0, done * sizeof *ro.slots);
            ro.base += done;
        }
        p->write_s += cli_now_seconds() - t0;
        if (p->progress && cli_now_seconds() - last_progress > 0.5) {
            show_progress(p, false);
            last_progress = cli_now_seconds();
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
            "packing skipped %zu padded tokens (%.0f%%); busy time: tokenize %.2f s (%d threads), compute %.2f s, "
            "format %.2f s (%d threads), write %.2f s; device busy %.2f s (%.0f%% of the wall time)\n", p->lines,
            p->failed, p->tokens, where, wall, wall > 0 ? p->lines / wall : 0.0, padded - computed,
            padded ? 100.0 * (double)(padded - computed) / (double)padded : 0.0, p->tokenize_s, p->n_tokenizers,
            compute_s, format_s, p->n_formatters, p->write_s, busy, wall > 0 ? 100.0 * busy / (wall * p->n_workers) : 0.0);
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
    "                 [--max-answer-length L] [--tokenize-threads N] [--resume] [--verbose]\n"
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
    "  --tokenize-threads N  threads tokenizing each window of lines (default: a quarter of the\n"
    "                      cores, 1 to 4); the output does not depend on it\n"
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
        {"tokenize-threads", true, NULL},
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
    const char *t = cli_get(opts, n, "task") ? cli_get(opts, n, "task") : "auto";
    if (sqz_task_from_name(t, &o->task) != SQZ_OK) {
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
        (cli_get(opts, n, "max-answer-length") && cli_int("infer", "max-answer-length", cli_get(opts, n, "max-answer-length"), 1, 100000, &o->max_answer_length)) ||
        (cli_get(opts, n, "tokenize-threads") && cli_int("infer", "tokenize-threads", cli_get(opts, n, "tokenize-threads"), 1, MAX_TOKENIZE_THREADS, &o->tokenize_threads)))
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
    sqz_pipeline_options po = {
        .task = p.opt.task, .max_length = p.opt.max_length, .batch_tokens = p.opt.batch_tokens,
        .top_k = (int)p.opt.top_k, .max_answer_length = (int)p.opt.max_answer_length,
        .pooling_count = p.opt.pooling_count,
        .normalize = p.opt.normalize < 0 ? SQZ_NORMALIZE_DEFAULT : p.opt.normalize ? SQZ_NORMALIZE_ON : SQZ_NORMALIZE_OFF,
    };
    memcpy(po.pooling, p.opt.pooling, sizeof po.pooling);
    sqz_model_info info;
    sqz_model_get_info(p.model, &info);
    if (p.opt.task != SQZ_TASK_AUTO && sqz_task_for_head(info.head) != p.opt.task) {
        /* asking a checkpoint for a task its head does not answer is a usage error */
        fprintf(stderr, "sqz infer: task '%s' needs a different head than this checkpoint's %s (%s)\n",
                sqz_task_name(p.opt.task), info.architecture, sqz_head_name(info.head));
        rc = EXIT_USAGE;
        goto done;
    }
    if ((st = sqz_pipeline_create(p.model, p.tok, &po, &p.pipe)) != SQZ_OK) {
        fprintf(stderr, "sqz infer: %s: %s\n", sqz_status_str(st), sqz_last_error());
        goto done;
    }
    sqz_pipeline_get_info(p.pipe, &p.info);
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
    p.started = cli_now_seconds();
    work wk;
    work_init(&wk, p.n_workers);
    p.work = &wk;
    queue_init(&p.to_format);
    queue_init(&p.to_write);
    /* formatters: half the cores, 1 to 8 (printing an embedding's numbers is the slow part) */
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p.n_formatters = cores / 2 < 1 ? 1 : cores / 2 > 8 ? 8 : (int)(cores / 2);
    /* tokenizers: a quarter of the cores, 1 to 4 (they run while the formatters do) */
    p.n_tokenizers = p.opt.tokenize_threads ? (int)p.opt.tokenize_threads
                     : cores / 4 < 1       ? 1
                     : cores / 4 > 4       ? 4
                                           : (int)(cores / 4);
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
    double wall = cli_now_seconds() - p.started;
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
    sqz_pipeline_free(p.pipe);
    sqz_tokenizer_free(p.tok);
    sqz_model_free(p.model);
    return rc;
}
