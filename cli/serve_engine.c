/* The batching core of `sqz serve` (see cli/serve_engine.h).
 *
 * The queue holds requests in arrival order; each has a cursor to its first item not yet
 * taken. Each device has an inference thread, which takes items from the front while their
 * tokens fit the budget
 * (the engine packs sequences, so real tokens are what a run costs), submits them as one
 * packed run (two in flight, so the device has the next batch while the host answers the
 * last), copies the logits when asked, and answers them. A run that fails is retried in
 * halves, so an item that fails alone is the only one to get the engine's message; requests
 * with such an item are marked backend_failed (424). Whatever arrived while a run computed
 * forms the next batch, so batches grow with load and stay small when it is light. With
 * several devices, a thread takes a second batch for its device only when no other device's
 * thread is idle, so the batches spread over the devices; a run that fails on a device is
 * retried in halves there, so a failing device answers only its own items 424. */
#include "cli/serve_engine.h"
#include "cli/cli_options.h"

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Histogram bucket upper bounds (Prometheus "le"). */
static const double seconds_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double count_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                      8192, 16384, 32768, 65536};
#define MAX_BUCKETS 17

typedef struct histogram {
    const double *bounds;
    int n_bounds;
    unsigned long long buckets[MAX_BUCKETS]; /* not cumulative; summed when printed */
    unsigned long long count;
    double sum;
} histogram;

static void histogram_add(histogram *h, double value)
{
    for (int i = 0; i < h->n_bounds; i++)
        if (value <= h->bounds[i]) {
            h->buckets[i]++;
            break;
        }
    h->count++;
    h->sum += value;
}

/* One device: its session, its thread and its counts (under the engine's lock). */
typedef struct worker {
    struct serve_engine *engine;
    sqz_session *session;
    char name[128];
    pthread_t thread;
    bool started;
    unsigned long long batches, items, failed_runs;
} worker;

struct serve_engine {
    const sqz_pipeline *pipeline;
    worker *workers;
    int n_workers;
    serve_engine_options opt;
    int num_labels;
    pthread_mutex_t lock;
    pthread_cond_t work;       /* items queued, or stopping */
    pthread_cond_t answered;   /* some request's last item got its answer */
    serve_request *first, *last;
    size_t queued_items;
    bool stopping;
    long in_flight;
    int idle_workers; /* threads waiting for work */
    /* metrics (under lock) */
    unsigned long long outcomes[SERVE_OUTCOME_COUNT];
    histogram request_seconds, queue_seconds, request_inference_seconds, inference_seconds, batch_tokens,
        batch_size;
    unsigned long long batches, failed_runs;
};

const char *serve_outcome_name(serve_outcome outcome)
{
    static const char *const names[SERVE_OUTCOME_COUNT] = {"", "Validation", "Tokenizer", "Overloaded",
                                                           "Backend", "Unhealthy"};
    return (unsigned)outcome < SERVE_OUTCOME_COUNT ? names[outcome] : "";
}

int serve_engine_create(const sqz_pipeline *pipeline, const serve_device *devices, int n_devices,
                        const serve_engine_options *options, serve_engine **out)
{
    serve_engine *e = calloc(1, sizeof *e);
    if (!e || n_devices < 1 || !(e->workers = calloc((size_t)n_devices, sizeof *e->workers))) {
        free(e);
        return -1;
    }
    e->n_workers = n_devices;
    for (int i = 0; i < n_devices; i++) {
        e->workers[i].engine = e;
        e->workers[i].session = devices[i].session;
        snprintf(e->workers[i].name, sizeof e->workers[i].name, "%s", devices[i].name);
        for (char *c = e->workers[i].name; *c; c++) /* a Prometheus label value needs no escapes */
            if (*c == '"' || *c == '\\' || *c == '\n')
                *c = '_';
    }
    e->pipeline = pipeline;
    e->opt = *options;
    sqz_pipeline_info info;
    sqz_pipeline_get_info(pipeline, &info);
    e->num_labels = info.num_labels;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->work, NULL);
    pthread_cond_init(&e->answered, NULL);
    const int n_seconds = (int)(sizeof seconds_bounds / sizeof *seconds_bounds);
    const int n_counts = (int)(sizeof count_bounds / sizeof *count_bounds);
    e->request_seconds = (histogram){.bounds = seconds_bounds, .n_bounds = n_seconds};
    e->queue_seconds = (histogram){.bounds = seconds_bounds, .n_bounds = n_seconds};
    e->inference_seconds = (histogram){.bounds = seconds_bounds, .n_bounds = n_seconds};
    e->request_inference_seconds = (histogram){.bounds = seconds_bounds, .n_bounds = n_seconds};
    e->batch_tokens = (histogram){.bounds = count_bounds, .n_bounds = n_counts};
    e->batch_size = (histogram){.bounds = count_bounds, .n_bounds = n_counts};
    *out = e;
    return 0;
}

/* ---- one run ---------------------------------------------------------------------------- */

/* Where each item of a batch came from. */
typedef struct taken {
    serve_request *request;
    size_t index;
} taken;

/* Waits for a submitted run, keeps logits when asked, answers its items. Non-zero when the
 * run failed (sqz_last_error says why; no item was answered). */
static int complete_run(worker *w, sqz_pipeline_item **items, const taken *from, size_t n, sqz_ticket ticket)
{
    serve_engine *e = w->engine;
    sqz_result *result = NULL;
    if (sqz_session_wait(w->session, ticket, &result) != SQZ_OK)
        return -1;
    if (e->opt.keep_logits) {
        const sqz_output *logits = sqz_result_find(result, "logits");
        if (!logits || !logits->data || logits->ndim != 2 || logits->shape[0] != (int64_t)n ||
            logits->shape[1] != e->num_labels) {
            sqz_result_free(result);
            return -1;
        }
        for (size_t i = 0; i < n; i++)
            memcpy(from[i].request->logits + from[i].index * (size_t)e->num_labels,
                   logits->data + i * (size_t)e->num_labels, (size_t)e->num_labels * sizeof(float));
    }
    const sqz_status st = sqz_pipeline_answer(e->pipeline, result, items, n);
    sqz_result_free(result);
    return st == SQZ_OK ? 0 : -1;
}

/* The halves of a failed run, each submitted and completed, down to single items that take
 * the engine's message (their requests become 424). */
static void retry_halves(worker *w, sqz_pipeline_item **items, const taken *from, size_t n)
{
    serve_engine *e = w->engine;
    pthread_mutex_lock(&e->lock);
    e->failed_runs++;
    w->failed_runs++;
    pthread_mutex_unlock(&e->lock);
    if (n == 1) {
        sqz_pipeline_item_set_error(items[0], sqz_last_error());
        from[0].request->backend_failed = true;
        return;
    }
    const size_t half = n / 2;
    const size_t counts[2] = {half, n - half};
    for (int h = 0; h < 2; h++) {
        sqz_pipeline_item **part = items + (h ? half : 0);
        const taken *part_from = from + (h ? half : 0);
        sqz_ticket ticket;
        if (sqz_pipeline_submit(e->pipeline, w->session, part, counts[h], &ticket) != SQZ_OK ||
            complete_run(w, part, part_from, counts[h], ticket) != 0)
            retry_halves(w, part, part_from, counts[h]);
    }
}

/* Takes the front of the queue under the token budget (the lock held); the count. */
static size_t take_batch(serve_engine *e, sqz_pipeline_item **items, taken *from, size_t cap,
                         long *tokens)
{
    size_t n = 0;
    *tokens = 0;
    while (e->first && n < cap) {
        serve_request *r = e->first;
        const long t = (long)sqz_pipeline_item_tokens(r->items[r->next], NULL, NULL);
        if (n > 0 && *tokens + t > e->opt.max_batch_tokens)
            break;
        if (r->next == 0)
            r->queue_seconds = cli_now_seconds() - r->queued_at;
        items[n] = r->items[r->next];
        from[n] = (taken){r, r->next};
        n++;
        *tokens += t;
        if (++r->next == r->n) {
            e->first = r->later;
            if (!e->first)
                e->last = NULL;
        }
    }
    e->queued_items -= n;
    return n;
}

/* A batch between being taken from the queue and being answered. */
typedef struct flight {
    sqz_pipeline_item **items;
    taken *from;
    size_t n;
    long tokens;
    sqz_ticket ticket;
    bool submitted;
    double started;
} flight;

/* Counts a finished batch and wakes the requests it completed (the lock held). */
static void batch_finished_locked(worker *w, const flight *f)
{
    serve_engine *e = w->engine;
    const double seconds = cli_now_seconds() - f->started;
    e->batches++;
    w->batches++;
    w->items += f->n;
    histogram_add(&e->batch_tokens, (double)f->tokens);
    histogram_add(&e->batch_size, (double)f->n);
    histogram_add(&e->inference_seconds, seconds);
    bool any_done = false;
    for (size_t i = 0; i < f->n; i++) {
        serve_request *r = f->from[i].request;
        r->inference_seconds += seconds / (double)f->n;
        if (--r->remaining == 0)
            any_done = true;
    }
    if (any_done)
        pthread_cond_broadcast(&e->answered);
}

/* Completes a batch (the lock not held); a failed one is retried in halves once no other
 * run is in flight, so the retries have the session to themselves. */
static void finish_flight(worker *w, flight *f, flight *other_in_flight)
{
    if (f->submitted && complete_run(w, f->items, f->from, f->n, f->ticket) == 0)
        return;
    if (other_in_flight) {
        finish_flight(w, other_in_flight, NULL);
        pthread_mutex_lock(&w->engine->lock);
        batch_finished_locked(w, other_in_flight);
        pthread_mutex_unlock(&w->engine->lock);
        other_in_flight->n = 0;
    }
    retry_halves(w, f->items, f->from, f->n);
}

/* Whether a thread with `in_flight` runs on its device takes another batch now: when there is
 * one, its device has room, and no other device's thread is idle (that one takes it). */
static bool takes_batch(const serve_engine *e, int in_flight)
{
    return e->first && in_flight < SQZ_MAX_IN_FLIGHT && (in_flight == 0 || e->idle_workers == 0);
}

/* A device's inference thread: up to SQZ_MAX_IN_FLIGHT batches on its session, so the next
 * batch is queued on the device while the host answers the last one. */
static void *inference_main(void *arg)
{
    worker *w = arg;
    serve_engine *e = w->engine;
    /* a batch never has more items than tokens in the budget (each item has 3 or more) */
    const size_t cap = (size_t)e->opt.max_batch_tokens;
    flight slots[SQZ_MAX_IN_FLIGHT];
    for (int i = 0; i < SQZ_MAX_IN_FLIGHT; i++) {
        slots[i] = (flight){.items = malloc(cap * sizeof *slots[i].items), .from = malloc(cap * sizeof *slots[i].from)};
        if (!slots[i].items || !slots[i].from) {
            fprintf(stderr, "sqz serve: out of memory for batches of %zu items\n", cap);
            exit(1);
        }
    }
    int oldest = 0, in_flight = 0;
    pthread_mutex_lock(&e->lock);
    for (;;) {
        while (in_flight == 0 && !e->first && !e->stopping) {
            e->idle_workers++;
            pthread_cond_wait(&e->work, &e->lock);
            e->idle_workers--;
        }
        if (in_flight == 0 && !e->first)
            break; /* stopping with nothing left */
        if (takes_batch(e, in_flight)) {
            flight *f = &slots[(oldest + in_flight) % SQZ_MAX_IN_FLIGHT];
            f->n = take_batch(e, f->items, f->from, cap, &f->tokens);
            in_flight++;
            if (e->first && e->idle_workers > 0) /* more than the budget waits: an idle device takes it */
                pthread_cond_signal(&e->work);
            pthread_mutex_unlock(&e->lock);
            f->started = cli_now_seconds();
            f->submitted = sqz_pipeline_submit(e->pipeline, w->session, f->items, f->n, &f->ticket) == SQZ_OK;
            pthread_mutex_lock(&e->lock);
            if (takes_batch(e, in_flight))
                continue; /* fill the other place first */
        }
        flight *f = &slots[oldest], *other = in_flight > 1 ? &slots[(oldest + 1) % SQZ_MAX_IN_FLIGHT] : NULL;
        pthread_mutex_unlock(&e->lock);
        finish_flight(w, f, other);
        pthread_mutex_lock(&e->lock);
        batch_finished_locked(w, f);
        oldest = (oldest + 1) % SQZ_MAX_IN_FLIGHT;
        in_flight--;
        if (other && other->n == 0) { /* finished early, before the retries of f */
            oldest = (oldest + 1) % SQZ_MAX_IN_FLIGHT;
            in_flight--;
        }
    }
    pthread_mutex_unlock(&e->lock);
    for (int i = 0; i < SQZ_MAX_IN_FLIGHT; i++) {
        free(slots[i].items);
        free(slots[i].from);
    }
    return NULL;
}

/* Plans, kernels and buffers are made on a session's first run: not on a client's time. */
static int warm_up(const serve_engine *e, worker *w, char *why, size_t size)
{
    sqz_pipeline_item *item = NULL;
    const sqz_text text = {SERVE_WARM_UP_TEXT, strlen(SERVE_WARM_UP_TEXT), NULL, 0};
    if (sqz_pipeline_encode(e->pipeline, &text, &item) != SQZ_OK) {
        snprintf(why, size, "%s", sqz_last_error());
        return -1;
    }
    const sqz_status st = sqz_pipeline_run(e->pipeline, w->session, &item, 1, NULL);
    const char *error = st != SQZ_OK ? sqz_last_error() : sqz_pipeline_item_error(item);
    if (error)
        snprintf(why, size, "%s: %s", w->name, error);
    sqz_pipeline_item_free(item);
    return error ? -1 : 0;
}

int serve_engine_start(serve_engine *e, char *why, size_t size)
{
    for (int i = 0; i < e->n_workers; i++)
        if (warm_up(e, &e->workers[i], why, size) != 0)
            return -1;
    for (int i = 0; i < e->n_workers; i++) {
        if (pthread_create(&e->workers[i].thread, NULL, inference_main, &e->workers[i]) != 0) {
            snprintf(why, size, "cannot start the inference thread of %s", e->workers[i].name);
            return -1;
        }
        e->workers[i].started = true;
    }
    return 0;
}

void serve_engine_free(serve_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->lock);
    e->stopping = true;
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->lock);
    for (int i = 0; i < e->n_workers; i++)
        if (e->workers[i].started)
            pthread_join(e->workers[i].thread, NULL);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->answered);
    free(e->workers);
    free(e);
}

bool serve_engine_admit(serve_engine *e)
{
    pthread_mutex_lock(&e->lock);
    const bool ok = e->in_flight < e->opt.max_concurrent_requests;
    if (ok)
        e->in_flight++;
    pthread_mutex_unlock(&e->lock);
    return ok;
}

void serve_engine_leave(serve_engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->in_flight--;
    pthread_mutex_unlock(&e->lock);
}

long serve_engine_in_flight(serve_engine *e)
{
    pthread_mutex_lock(&e->lock);
    const long n = e->in_flight;
    pthread_mutex_unlock(&e->lock);
    return n;
}

void serve_engine_run(serve_engine *e, serve_request *r)
{
    if (r->n == 0)
        return;
    pthread_mutex_lock(&e->lock);
    r->next = 0;
    r->remaining = r->n;
    r->later = NULL;
    r->queued_at = cli_now_seconds();
    if (e->last)
        e->last->later = r;
    else
        e->first = r;
    e->last = r;
    e->queued_items += r->n;
    pthread_cond_signal(&e->work);
    while (r->remaining > 0)
        pthread_cond_wait(&e->answered, &e->lock);
    histogram_add(&e->queue_seconds, r->queue_seconds);
    histogram_add(&e->request_inference_seconds, r->inference_seconds);
    pthread_mutex_unlock(&e->lock);
}

void serve_engine_count(serve_engine *e, serve_outcome outcome, double seconds)
{
    pthread_mutex_lock(&e->lock);
    if ((unsigned)outcome < SERVE_OUTCOME_COUNT)
        e->outcomes[outcome]++;
    histogram_add(&e->request_seconds, seconds);
    pthread_mutex_unlock(&e->lock);
}

/* ---- Prometheus text -------------------------------------------------------------------- */

typedef struct text_buffer {
    char *data;
    size_t len, cap;
    bool failed;
} text_buffer;

__attribute__((format(printf, 2, 3))) static void put(text_buffer *b, const char *format, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, format);
        const int n = vsnprintf(b->data + b->len, b->cap - b->len, format, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        const size_t cap = 2 * b->cap + (size_t)n;
        char *bigger = realloc(b->data, cap);
        if (!bigger) {
            b->failed = true;
            return;
        }
        b->data = bigger;
        b->cap = cap;
    }
}

static void put_histogram(text_buffer *b, const char *name, const char *help, const histogram *h)
{
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long below = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        below += h->buckets[i];
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], below);
    }
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, h->count, name, h->sum,
        name, h->count);
}

static void put_value(text_buffer *b, const char *name, const char *type, const char *help,
                      unsigned long long value)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name, value);
}

char *serve_engine_metrics(serve_engine *e)
{
    text_buffer b = {.data = malloc(4096), .cap = 4096};
    if (!b.data)
        return NULL;
    b.data[0] = '\0';
    pthread_mutex_lock(&e->lock);
    unsigned long long all = 0;
    for (int i = 0; i < SERVE_OUTCOME_COUNT; i++)
        all += e->outcomes[i];
    put_value(&b, "te_request_count", "counter", "Requests answered, whatever the outcome", all);
    put_value(&b, "te_request_success", "counter", "Requests answered with 200", e->outcomes[SERVE_OK]);
    put(&b, "# HELP te_request_failure Requests answered with an error, by error type\n"
            "# TYPE te_request_failure counter\n");
    for (int i = 1; i < SERVE_OUTCOME_COUNT; i++)
        put(&b, "te_request_failure{err=\"%s\"} %llu\n", serve_outcome_name((serve_outcome)i), e->outcomes[i]);
    put_value(&b, "te_queue_size", "gauge", "Items waiting for a batch", e->queued_items);
    put_value(&b, "sqz_requests_in_flight", "gauge", "Requests admitted and not yet answered",
              (unsigned long long)e->in_flight);
    put_value(&b, "te_batch_inference_count", "counter", "Packed runs", e->batches);
    put_value(&b, "sqz_batch_failures", "counter", "Packed runs that failed (before retrying halves)",
              e->failed_runs);
    const struct {
        const char *name, *help;
        size_t offset;
    } per_device[] = {
        {"sqz_device_batches", "Packed runs per device", offsetof(worker, batches)},
        {"sqz_device_items", "Inputs answered or failed per device", offsetof(worker, items)},
        {"sqz_device_batch_failures", "Packed runs that failed per device", offsetof(worker, failed_runs)},
    };
    for (size_t m = 0; m < sizeof per_device / sizeof *per_device; m++) {
        put(&b, "# HELP %s %s\n# TYPE %s counter\n", per_device[m].name, per_device[m].help, per_device[m].name);
        for (int i = 0; i < e->n_workers; i++) {
            const unsigned long long *count =
                (const unsigned long long *)((const char *)&e->workers[i] + per_device[m].offset);
            put(&b, "%s{index=\"%d\",device=\"%s\"} %llu\n", per_device[m].name, i, e->workers[i].name, *count);
        }
    }
    put_histogram(&b, "te_request_duration", "Seconds from a complete request to its answer", &e->request_seconds);
    put_histogram(&b, "te_request_queue_duration", "Seconds a request's first item waited for a batch",
                  &e->queue_seconds);
    put_histogram(&b, "te_request_inference_duration",
                  "Seconds of packed runs per request (a run's time shared among its items)",
                  &e->request_inference_seconds);
    put_histogram(&b, "te_batch_inference_duration", "Seconds per packed run (retries included)",
                  &e->inference_seconds);
    put_histogram(&b, "te_batch_next_tokens", "Tokens per packed run", &e->batch_tokens);
    put_histogram(&b, "te_batch_next_size", "Items per packed run", &e->batch_size);
    pthread_mutex_unlock(&e->lock);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    return b.data;
}
