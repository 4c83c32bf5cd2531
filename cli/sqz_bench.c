/* sqz bench: the engine timed over a grid of backends x devices x precisions x batch sizes x
 * sequence lengths, plus mixed-length batches that show what packing saves. Uses only the
 * public API. Every figure goes into one JSON report; the table, CSV and SVG are drawn from
 * it by cli/bench_writers.c (see bench/README.md). */
#include "cli/bench_writers.h"
#include "cli/cli_options.h"
#include "cli/sqz_bench.h"

#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "squeezebert.h"
#include "cli/sqz_commands.h"

#define EXIT_USAGE 2
#define MAX_LIST 32

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static const char bench_help[] =
    "usage: sqz bench (--random PRESET | --model DIR) [options]\n"
    "       sqz bench --from REPORT.json [--json F] [--csv F] [--plot F.svg] [--baseline E]\n"
    "\n"
    "Times the model over backends x devices x precisions x batch sizes x lengths, plus\n"
    "mixed-length batches, and prints per cell: sequences/s, tokens/s, latency p50/p90/p99\n"
    "per batch, achieved GFLOP/s (FLOPs counted from the compiled plan) and its fraction of\n"
    "the device's measured peak, device memory (arena + weights), and whether the output of\n"
    "that cell matched cpu_ref. Warm-up (session, plan compile, first run) is reported apart.\n"
    "A latency is the wall time of one sqz_session_run: packing, input upload, every launch,\n"
    "synchronisation and the output download, as a caller sees it.\n"
    "\n"
    "model:\n"
    "  --random PRESET     squeezebert-uncased | squeezebert-mnli | tiny, random weights,\n"
    "                      optionally +VARIANT... (sqz random-model --help)\n"
    "  --model DIR         a checkpoint directory\n"
    "  --seed S            weight seed for --random (default 1)\n"
    "grid (LIST = comma-separated):\n"
    "  --backends LIST     default: every backend built in (one that cannot run here is listed\n"
    "                      as unavailable, with the reason)\n"
    "  --devices SPEC      default (each backend's default device), all, or BACKEND[:DEVICE],...\n"
    "                      with DEVICE an index or name substring as `sqz devices` lists them\n"
    "  --threads N         the cpu backend's compute threads (default: every core; the same\n"
    "                      as --devices cpu:threads=N)\n"
    "  --precisions LIST   default fp32,fp16; one a backend lacks is reported as n/a\n"
    "  --batch LIST        default 1,8,32\n"
    "  --length LIST       default 32,128 (every row of a batch that long: no padding)\n"
    "  --mixed-batch LIST  mixed-length cells (default: the --batch values >= 4; none: off)\n"
    "  --mixed-max W       padded width of mixed batches (default: the largest --length)\n"
    "  --lengths-file F    draw mixed lengths from F (one length per line) instead of the\n"
    "                      built-in log-normal (median 40 tokens, sigma 0.55, see below)\n"
    "  --ref-max-tokens N  cpu_ref runs only cells of at most N padded tokens per batch\n"
    "                      (default 64: the scalar reference does ~2.3 GFLOP/s, about 3 s\n"
    "                      per 128-token full-size sequence)\n"
    "  --input-seed S      seed of the token ids and mixed lengths (default 1)\n"
    "  --outputs LIST      the outputs each run returns (e.g. pooler_output; default all):\n"
    "                      on a GPU, copying last_hidden_state to the host can cost more than\n"
    "                      the forward itself\n"
    "  --output-type T     fp32 (default) or fp16 (half the bytes to copy; the check's bar grows\n"
    "                      by fp16's rounding, 2^-11)\n"
    "  --output-place P    host (default) or device (outputs stay in device memory: nothing is\n"
    "                      copied back, and the cells are not checked)\n"
    "timing:\n"
    "  --timing MODE       latency (default: one sqz_session_run at a time, its wall time),\n"
    "                      throughput (two runs in flight per device with sqz_session_submit/\n"
    "                      wait: batches completed over the timed span; rows marked /T), or both\n"
    "  --together          with several devices: each cell also on all of them at once (one\n"
    "                      session and thread each, two runs in flight on each), one /T row\n"
    "  --budget SEC        timed seconds per cell (default 2); at least --min-repeats runs\n"
    "  --min-repeats N     default 3; --max-repeats N default 200\n"
    "  --peak-budget SEC   seconds to measure each device's peak (default 1; 0: skip)\n"
    "checks:\n"
    "  --tolerance T       max |out - cpu_ref| / max |cpu_ref| to pass (default: the precision's\n"
    "                      documented bar, 1e-4 for fp32; docs/engineering.md)\n"
    "  --no-validate       skip the comparison with cpu_ref\n"
    "output:\n"
    "  --json FILE --csv FILE --plot FILE.svg   (- for stdout; the table then goes to stderr)\n"
    "  --baseline ENGINE   ratio column against this engine's rows (default torch, if present)\n"
    "  --from REPORT.json  draw an existing report (e.g. one bench/peers.py extended)\n"
    "  --quiet             no progress line on stderr\n"
    "\n"
    "Mixed lengths: log-normal with median 40 and sigma 0.55 (mean 47, 90th percentile 81),\n"
    "clamped to [3, W]: a model of short sentence-pair classification traffic, not a measured\n"
    "trace; --lengths-file gives a real one. Validation: the last timed output of each cell,\n"
    "one sequence (the first; in mixed cells the shortest), every output at its real positions,\n"
    "against cpu_ref running that sequence alone.\n"
    "Exit status: 0 done, 1 a cell failed or left tolerance, 2 usage.\n";

/* ---- small helpers ----------------------------------------------------------------------- */

static int parse_double(const char *name, const char *text, double min, double *out)
{
    char *end = NULL;
    double v = strtod(text, &end);
    if (!end || *end || end == text || !(v >= min) || !isfinite(v)) {
        fprintf(stderr, "sqz bench: --%s must be a number >= %g, got '%s'\n", name, min, text);
        return 1;
    }
    *out = v;
    return 0;
}

/* "1,8,32" -> ints in [min, max]; returns the count, or -1 (message printed). */
static int parse_int_list(const char *name, const char *text, long min, long max, int *out)
{
    int n = 0;
    const char *p = text;
    while (*p) {
        char item[32];
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item || n == MAX_LIST) {
            fprintf(stderr, "sqz bench: --%s takes up to %d comma-separated integers, got '%s'\n",
                    name, MAX_LIST, text);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        long v;
        if (cli_int("bench", name, item, min, max, &v))
            return -1;
        out[n++] = (int)v;
        p += len + (p[len] == ',');
    }
    if (n == 0)
        fprintf(stderr, "sqz bench: --%s is empty\n", name);
    return n ? n : -1;
}

/* "a,b,c" -> strdup'd words in out[]; returns the count, or -1. */
static int parse_word_list(const char *name, const char *text, char **out)
{
    int n = 0;
    const char *p = text;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == 0 || n == MAX_LIST || !(out[n] = malloc(len + 1))) {
            fprintf(stderr, "sqz bench: --%s: bad list '%s'\n", name, text);
            for (int i = 0; i < n; i++) /* nothing half-parsed is left behind */
                free(out[i]);
            return -1;
        }
        memcpy(out[n], p, len);
        out[n++][len] = '\0';
        p += len + (p[len] == ',');
    }
    return n ? n : -1;
}

static void free_words(char **w, int n)
{
    for (int i = 0; i < n; i++)
        free(w[i]);
}

/* JSON numbers for figures that may be unknown: NaN/inf become null. */
static json_t *jnum(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static void set_str(json_t *obj, const char *key, const char *value)
{
    json_object_set_new(obj, key, json_string(value ? value : ""));
}

static void set_num(json_t *obj, const char *key, double value)
{
    json_object_set_new(obj, key, jnum(value));
}

static void set_int(json_t *obj, const char *key, int64_t value)
{
    json_object_set_new(obj, key, json_integer((json_int_t)value));
}

/* ---- statistics ---------------------------------------------------------------------------- */

double bench_percentile(const double *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    double pos = p / 100.0 * (double)(n - 1);
    if (pos <= 0)
        return sorted[0];
    if (pos >= (double)(n - 1))
        return sorted[n - 1];
    size_t lo = (size_t)pos;
    double frac = pos - (double)lo;
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void bench_stats_compute(const double *samples, size_t n, bench_stats *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return;
    double *s = malloc(n * sizeof *s);
    if (!s)
        return;
    memcpy(s, samples, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += s[i];
    *out = (bench_stats){n, bench_percentile(s, n, 50), bench_percentile(s, n, 90),
                         bench_percentile(s, n, 99), sum / (double)n, s[0], s[n - 1]};
    free(s);
}

/* ---- deterministic inputs --------------------------------------------------------------------- */

uint64_t bench_splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int64_t bench_token_id(uint64_t seed, int row, int pos, int len, int vocab)
{
    int64_t id;
    if (pos == 0)
        id = 101;
    else if (pos == len - 1)
        id = 102;
    else {
        uint64_t h = bench_splitmix64((seed << 40) + ((uint64_t)row << 20) + (uint64_t)pos);
        id = vocab > 1000 ? 1000 + (int64_t)(h % (uint64_t)(vocab - 1000)) : (int64_t)(h % (uint64_t)vocab);
    }
    return id % vocab;
}

static double unit_interval(uint64_t h) { return ((double)(h >> 11) + 0.5) / 9007199254740992.0; }

int bench_mixed_length(uint64_t seed, int batch, int row, int max_len)
{
    uint64_t key = (seed << 40) + ((uint64_t)batch << 20) + 2 * (uint64_t)row;
    double u1 = unit_interval(bench_splitmix64(~key)), u2 = unit_interval(bench_splitmix64(~(key + 1)));
    double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
    long len = lround(BENCH_MIXED_MEDIAN * exp(BENCH_MIXED_SIGMA * z));
    if (len < BENCH_MIXED_MIN)
        len = BENCH_MIXED_MIN;
    return len > max_len ? max_len : (int)len;
}

/* ---- the run -------------------------------------------------------------------------------- */

typedef struct lengths_file {
    int *values;
    size_t count;
} lengths_file;

typedef struct cell {
    bool mixed;
    int batch, width; /* width W: padded length of every row */
    int *lengths;     /* [batch] real tokens per row */
    int check_row;    /* the row compared with cpu_ref */
} cell;

/* cpu_ref outputs of one sequence alone, kept for every cell that checks the same sequence. */
typedef struct reference {
    int row, len;
    sqz_result *result;
} reference;

typedef struct bench_ctx {
    sqz_model *model;
    sqz_model_info info;
    uint64_t input_seed;
    double budget, peak_budget, tolerance;
    long min_repeats, max_repeats, ref_max_tokens;
    bool validate, progress, tty;
    int cells_done, cells_total;
    sqz_session *ref_session;
    reference *refs;
    size_t n_refs;
    bool failed;
    char *outputs[MAX_LIST]; /* --outputs: what each run returns; none: all */
    int n_outputs;
    sqz_output_options output_options; /* --output-type, --output-place */
} bench_ctx;

/* detail: a step too frequent for a log file (shown only on a terminal). */
static void progress(bench_ctx *b, bool detail, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void progress(bench_ctx *b, bool detail, const char *fmt, ...)
{
    if (!b->progress || (detail && !b->tty))
        return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one line rewritten in place on a terminal; one line per step into a log */
    if (b->tty)
        fprintf(stderr, "\r\033[K[%d/%d] %s", b->cells_done, b->cells_total, line);
    else
        fprintf(stderr, "[%d/%d] %s\n", b->cells_done, b->cells_total, line);
    fflush(stderr);
}

static void progress_end(bench_ctx *b)
{
    if (b->progress && b->tty)
        fprintf(stderr, "\r\033[K");
}

static void make_input(const bench_ctx *b, const cell *c, int64_t *ids, int64_t *mask);

/* A cell's input, allocated and filled; false without memory. */
static bool cell_input(const bench_ctx *b, const cell *c, int64_t **ids, int64_t **mask, sqz_input *in)
{
    const size_t n = (size_t)c->batch * (size_t)c->width;
    *ids = malloc(n * sizeof **ids);
    *mask = malloc(n * sizeof **mask);
    if (!*ids || !*mask)
        return false;
    make_input(b, c, *ids, *mask);
    *in = (sqz_input){.batch = c->batch, .seq_len = c->width, .input_ids = *ids, .attention_mask = *mask};
    return true;
}

static void make_input(const bench_ctx *b, const cell *c, int64_t *ids, int64_t *mask)
{
    for (int r = 0; r < c->batch; r++)
        for (int w = 0; w < c->width; w++) {
            const size_t i = (size_t)r * (size_t)c->width + (size_t)w;
            const bool real = w < c->lengths[r];
            ids[i] = real ? bench_token_id(b->input_seed, r, w, c->lengths[r], b->info.vocab_size) : 0;
            mask[i] = real;
        }
}

/* Outputs laid out per token ([N, W, ...]) versus per sequence ([N, C]). */
static bool per_token(const sqz_output *o)
{
    return o->ndim == 3 ||
           (o->ndim == 2 && (strcmp(o->name, "start_logits") == 0 || strcmp(o->name, "end_logits") == 0));
}

static sqz_status reference_for(bench_ctx *b, int row, int len, const sqz_result **out)
{
    for (size_t i = 0; i < b->n_refs; i++)
        if (b->refs[i].row == row && b->refs[i].len == len) {
            *out = b->refs[i].result;
            return SQZ_OK;
        }
    sqz_status st = SQZ_OK;
    if (!b->ref_session && (st = sqz_session_create(b->model, NULL, &b->ref_session)) != SQZ_OK)
        return st;
    reference *bigger = realloc(b->refs, (b->n_refs + 1) * sizeof *bigger);
    int64_t *ids = malloc((size_t)len * sizeof *ids);
    if (!bigger || !ids) {
        free(ids);
        if (bigger)
            b->refs = bigger;
        fprintf(stderr, "sqz bench: out of memory\n");
        return SQZ_ERR_OUT_OF_MEMORY;
    }
    b->refs = bigger;
    for (int w = 0; w < len; w++)
        ids[w] = bench_token_id(b->input_seed, row, w, len, b->info.vocab_size);
    sqz_input in = {.batch = 1, .seq_len = len, .input_ids = ids};
    sqz_result *res = NULL;
    st = sqz_session_run(b->ref_session, &in, &res);
    free(ids);
    if (st != SQZ_OK)
        return st;
    b->refs[b->n_refs++] = (reference){row, len, res};
    *out = res;
    return SQZ_OK;
}

/* Worst max|got - ref| / max|ref| over every output, at the row's real positions. */
static double compare_row(const sqz_result *got, const sqz_result *ref, const cell *c, int row,
                          char *why, size_t why_size)
{
    double worst = 0;
    const int len = c->lengths[row];
    if (sqz_result_count(got) == 0) {
        snprintf(why, why_size, "no output");
        return INFINITY;
    }
    for (size_t k = 0; k < sqz_result_count(got); k++) { /* what the run returned (--outputs) */
        const sqz_output *g = sqz_result_get(got, k);
        const sqz_output *r = sqz_result_find(ref, g->name);
        if (!r) {
            snprintf(why, why_size, "output %s unknown to cpu_ref", g->name);
            return INFINITY;
        }
        int64_t inner = 1, per_row, at; /* values per row; the row's first value in `got` */
        if (per_token(r)) {
            for (int d = 2; d < r->ndim; d++)
                inner *= r->shape[d];
            per_row = len * inner;
            at = (int64_t)row * c->width * inner; /* positions 0..len-1 of the row */
        } else {
            for (int d = 1; d < r->ndim; d++)
                inner *= r->shape[d];
            per_row = inner;
            at = (int64_t)row * inner;
        }
        double max_abs = 0, max_ref = 0;
        for (int64_t i = 0; i < per_row; i++) {
            const double v = g->type == SQZ_OUTPUT_FP16 ? sqz_half_to_float(((const uint16_t *)g->values)[at + i])
                                                         : g->data[at + i];
            if (!isfinite(v)) {
                snprintf(why, why_size, "%s has a non-finite value", r->name);
                return INFINITY;
            }
            max_abs = fmax(max_abs, fabs(v - r->data[i]));
            max_ref = fmax(max_ref, fabs((double)r->data[i]));
        }
        double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
        if (rel > worst) {
            worst = rel;
            snprintf(why, why_size, "%s", r->name);
        }
    }
    return worst;
}

static json_t *new_row(const char *backend, const char *device, const char *precision)
{
    json_t *row = json_object();
    set_str(row, "engine", "sqz");
    set_str(row, "backend", backend);
    set_str(row, "device", device);
    set_str(row, "precision", precision);
    return row;
}

static void row_cell_fields(json_t *row, const cell *c)
{
    set_str(row, "mode", c->mixed ? "mixed" : "fixed");
    set_int(row, "batch", c->batch);
    set_int(row, "seq_len", c->width);
    int64_t real = 0;
    json_t *lens = json_array();
    for (int r = 0; r < c->batch; r++) {
        real += c->lengths[r];
        json_array_append_new(lens, json_integer(c->lengths[r]));
    }
    set_int(row, "real_tokens", real);
    set_int(row, "padded_tokens", (int64_t)c->batch * c->width);
    set_int(row, "computed_tokens", real); /* packing: padding is never computed */
    set_int(row, "check_row", c->check_row);
    if (c->mixed)
        json_object_set_new(row, "lengths", lens);
    else
        json_decref(lens);
}

static double cell_tolerance(const bench_ctx *b, const char *precision);

/* A fresh session for a cell on one device, warmed up by a first run (*first gets its
 * result): the warm-up figures go into `row`. *where says what failed. */
static sqz_status open_cell(bench_ctx *b, const char *backend, const char *device, const char *precision,
                            const sqz_input *in, json_t *row, sqz_session **out, sqz_result **first,
                            char *where, size_t where_size)
{
    *out = NULL;
    *first = NULL;
    double t0 = cli_now_seconds();
    sqz_session_options so = cli_session_options(backend, device, SQZ_PRECISION_FP32);
    sqz_session *s = NULL;
    sqz_status st;
    if ((st = sqz_precision_from_name(precision, &so.precision)) != SQZ_OK ||
        (st = sqz_session_create(b->model, &so, &s)) != SQZ_OK) {
        snprintf(where, where_size, "creating the session");
        return st;
    }
    if ((b->n_outputs && (st = sqz_session_select_outputs(s, (const char *const *)b->outputs,
                                                          (size_t)b->n_outputs)) != SQZ_OK) ||
        (st = sqz_session_set_output_options(s, &b->output_options)) != SQZ_OK) {
        snprintf(where, where_size, "selecting the outputs");
        sqz_session_free(s);
        return st;
    }
    double t1 = cli_now_seconds();
    if ((st = sqz_session_run(s, in, first)) != SQZ_OK) {
        snprintf(where, where_size, "the first run");
        sqz_session_free(s);
        return st;
    }
    double t2 = cli_now_seconds();
    sqz_run_stats stats;
    sqz_session_last_stats(s, &stats);
    json_t *warm = json_object();
    set_num(warm, "session_create_s", t1 - t0);
    set_num(warm, "first_run_s", t2 - t1);
    set_num(warm, "plan_compile_s", stats.compile_seconds);
    json_object_set_new(row, "warmup", warm);
    *out = s;
    return SQZ_OK;
}

/* The figures of a cell's timed runs: samples are seconds per batch (latency, or the time
 * between completions in throughput mode); the rates come from `batches` batches in
 * `seconds` of wall time. */
static void timing_fields(json_t *row, const cell *c, const double *samples, size_t count, size_t batches,
                          double seconds, const sqz_run_stats *stats, double peak_gflops, size_t memory)
{
    bench_stats bs;
    bench_stats_compute(samples, count, &bs);
    set_str(row, "status", "ok");
    set_int(row, "repeats", (int64_t)(batches ? batches : count));
    json_t *lat = json_object();
    set_num(lat, "p50", bs.p50 * 1e3);
    set_num(lat, "p90", bs.p90 * 1e3);
    set_num(lat, "p99", bs.p99 * 1e3);
    set_num(lat, "mean", bs.mean * 1e3);
    set_num(lat, "min", bs.min * 1e3);
    set_num(lat, "max", bs.max * 1e3);
    json_object_set_new(row, "latency_ms", lat);
    json_t *arr = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(arr, json_real(samples[i] * 1e3));
    json_object_set_new(row, "samples_ms", arr);
    /* latency mode: per batch at the median; throughput mode: what the whole span did */
    const double per_batch = batches && seconds > 0 ? seconds / (double)batches : bs.p50;
    set_num(row, "seq_per_s", c->batch / per_batch);
    set_num(row, "tokens_per_s", (double)stats->tokens / per_batch);
    set_num(row, "flops_per_batch", stats->flops);
    set_num(row, "gflops", stats->flops / per_batch * 1e-9);
    set_num(row, "peak_gflops", peak_gflops > 0 ? peak_gflops : NAN);
    set_num(row, "peak_fraction", peak_gflops > 0 ? stats->flops / per_batch * 1e-9 / peak_gflops : NAN);
    set_int(row, "launches", (int64_t)stats->launches);
    set_int(row, "arena_bytes", (int64_t)stats->arena_bytes);
    set_int(row, "weight_bytes", (int64_t)stats->weight_bytes);
    set_int(row, "memory_bytes", (int64_t)memory);
}

/* The check: a timed output itself, one sequence, against cpu_ref on it alone. */
static void validate_cell(bench_ctx *b, json_t *row, const cell *c, const char *precision, const sqz_result *res,
                          const char *who)
{
    json_t *val = json_object();
    if (!b->validate || b->output_options.place == SQZ_OUTPUT_ON_DEVICE) {
        set_str(val, "status", "off");
        if (b->validate) /* the tool reads host memory only; the same cells on the host check them */
            set_str(val, "detail", "outputs left on the device");
    } else {
        const int r = c->check_row;
        progress(b, true, "%s %s %s %dx%d: cpu_ref check of row %d (%d tokens)", who, precision,
                 c->mixed ? "mixed" : "fixed", c->batch, c->width, r, c->lengths[r]);
        const sqz_result *ref = NULL;
        sqz_status vs = reference_for(b, r, c->lengths[r], &ref);
        if (vs != SQZ_OK) {
            set_str(val, "status", "error");
            set_str(val, "detail", sqz_last_error());
            b->failed = true;
        } else {
            char worst[128] = "";
            double rel = compare_row(res, ref, c, r, worst, sizeof worst);
            bool pass = rel <= cell_tolerance(b, precision);
            b->failed |= !pass;
            set_str(val, "status", pass ? "pass" : "fail");
            set_num(val, "max_rel", rel);
            set_str(val, "worst_output", worst);
            char what[160];
            snprintf(what, sizeof what, "row %d (%d tokens), every output, vs cpu_ref alone", r,
                     c->lengths[r]);
            set_str(val, "compared", what);
        }
        set_num(val, "tolerance", cell_tolerance(b, precision));
    }
    json_object_set_new(row, "validation", val);
}

static void row_error(bench_ctx *b, json_t *row, const char *where, sqz_status st)
{
    char msg[600];
    snprintf(msg, sizeof msg, "%s: %s: %s", where, sqz_status_str(st), sqz_last_error());
    set_str(row, "status", "error");
    set_str(row, "reason", msg);
    b->failed = true;
}

/* Runs one cell on a fresh session: create, first run (warm-up), timed runs one at a time
 * (latency: each sqz_session_run's wall time), check. */
static json_t *run_cell(bench_ctx *b, const char *backend, const char *device, const char *label,
                        const char *precision, const cell *c, double peak_gflops)
{
    char who[192];
    snprintf(who, sizeof who, "%s%s%s", backend, device ? ":" : "", device ? device : "");
    json_t *row = new_row(backend, label, precision);
    row_cell_fields(row, c);
    set_str(row, "timing", "latency");
    int64_t *ids = NULL, *mask = NULL;
    sqz_input in;
    const bool have_input = cell_input(b, c, &ids, &mask, &in);
    double *samples = malloc((size_t)b->max_repeats * sizeof *samples);
    sqz_session *s = NULL;
    sqz_result *res = NULL;
    sqz_status st = SQZ_OK;
    char where[64] = "";
    if (!have_input || !samples) {
        st = SQZ_ERR_OUT_OF_MEMORY;
        snprintf(where, sizeof where, "allocating the input");
        goto done;
    }
    progress(b, false, "%s %s %s %dx%d: session", who, precision, c->mixed ? "mixed" : "fixed",
             c->batch, c->width);
    if ((st = open_cell(b, backend, device, precision, &in, row, &s, &res, where, sizeof where)) != SQZ_OK)
        goto done;
    /* timed runs: medians over at least min_repeats, until the cell's budget is spent */
    size_t count = 0;
    double spent = 0, busy0 = 0, busy1 = 0;
    sqz_session_busy_seconds(s, &busy0);
    while ((long)count < b->min_repeats || (spent < b->budget && (long)count < b->max_repeats)) {
        sqz_result_free(res);
        res = NULL;
        double a = cli_now_seconds();
        st = sqz_session_run(s, &in, &res);
        double z = cli_now_seconds();
        if (st != SQZ_OK) {
            snprintf(where, sizeof where, "timed run %zu", count + 1);
            goto done;
        }
        samples[count++] = z - a;
        spent += z - a;
        progress(b, true, "%s %s %s %dx%d: run %zu, %.3f s", who, precision,
                 c->mixed ? "mixed" : "fixed", c->batch, c->width, count, z - a);
    }
    sqz_run_stats stats;
    sqz_session_last_stats(s, &stats);
    timing_fields(row, c, samples, count, 0, 0, &stats, peak_gflops, stats.arena_bytes + stats.weight_bytes);
    sqz_session_busy_seconds(s, &busy1);
    set_num(row, "device_ms", (busy1 - busy0) / (double)count * 1e3);
    validate_cell(b, row, c, precision, res, who);
done:
    if (st != SQZ_OK)
        row_error(b, row, where, st);
    sqz_result_free(res);
    sqz_session_free(s);
    free(ids);
    free(mask);
    free(samples);
    b->cells_done++;
    return row;
}

/* ---- throughput: runs in flight, one device or several at once ---------------------------- */

/* Starts every device's thread at once (or none, when one could not be started). */
typedef struct start_gate {
    pthread_mutex_t lock;
    pthread_cond_t open;
    bool go, abandon;
} start_gate;

typedef struct stream_dev {
    bench_ctx *b;
    const sqz_input *in;
    sqz_session *session;
    sqz_result *last;       /* the last timed result (validated for the first device) */
    start_gate *gate;
    double deadline;        /* keep starting runs until then */
    long min_batches, max_batches;
    size_t batches;
    double *gaps;           /* seconds between successive completions */
    size_t n_gaps;
    double began, ended;
    double busy_before;     /* the session's busy seconds before the timed runs */
    sqz_status st;
    char error[600];
} stream_dev;

/* One device's share of a throughput cell: keeps two runs in flight until the deadline (and at
 * least min_batches), counting completed batches. */
static void *stream_main(void *arg)
{
    stream_dev *d = arg;
    sqz_ticket tickets[SQZ_MAX_IN_FLIGHT];
    int n = 0;
    pthread_mutex_lock(&d->gate->lock);
    while (!d->gate->go)
        pthread_cond_wait(&d->gate->open, &d->gate->lock);
    const bool abandon = d->gate->abandon;
    pthread_mutex_unlock(&d->gate->lock);
    if (abandon)
        return NULL;
    sqz_session_busy_seconds(d->session, &d->busy_before);
    d->began = cli_now_seconds();
    double last = d->began;
    long submitted = 0;
    while (d->st == SQZ_OK) {
        const bool more = submitted < d->max_batches &&
                          (submitted < d->min_batches || cli_now_seconds() < d->deadline);
        if (more && n < SQZ_MAX_IN_FLIGHT) {
            if ((d->st = sqz_session_submit(d->session, d->in, &tickets[n])) == SQZ_OK) {
                n++;
                submitted++;
            }
            continue;
        }
        if (n == 0)
            break;
        sqz_result *res = NULL;
        if ((d->st = sqz_session_wait(d->session, tickets[0], &res)) != SQZ_OK)
            break;
        for (int i = 1; i < n; i++)
            tickets[i - 1] = tickets[i];
        n--;
        const double t = cli_now_seconds();
        d->gaps[d->n_gaps++] = t - last;
        last = t;
        d->batches++;
        sqz_result_free(d->last);
        d->last = res;
    }
    if (d->st != SQZ_OK)
        snprintf(d->error, sizeof d->error, "%s: %s", sqz_status_str(d->st), sqz_last_error());
    for (int i = 0; i < n; i++) { /* after a failure: the runs still in flight end here */
        sqz_result *res = NULL;
        if (sqz_session_wait(d->session, tickets[i], &res) == SQZ_OK)
            sqz_result_free(res);
    }
    d->ended = last;
    return NULL;
}

/* A throughput cell: on each of `n` devices at once, a fresh session keeping two runs in
 * flight (sqz_session_submit/wait) for the budget; seq/s over the whole span, from the first
 * submit to the last completion of any device; samples are the times between completions. */
static json_t *run_stream_cell(bench_ctx *b, const cli_device *devs, int n, const char *precision, const cell *c,
                               double peak_gflops)
{
    /* one backend: "cuda" and devices "0+1"; several: "several" and "cpu_ref+opencl:0" */
    bool one_backend = true;
    for (int i = 1; i < n; i++)
        one_backend &= strcmp(devs[i].backend, devs[0].backend) == 0;
    char label[512] = "";
    for (int i = 0; i < n; i++)
        snprintf(label + strlen(label), sizeof label - strlen(label), "%s%s%s%s", i ? "+" : "",
                 one_backend ? "" : devs[i].backend, !one_backend && devs[i].device[0] ? ":" : "",
                 devs[i].device[0] ? devs[i].device : one_backend ? "default" : "");
    const char *backend = one_backend ? devs[0].backend : "several";
    json_t *row = new_row(backend, label, precision);
    row_cell_fields(row, c);
    set_str(row, "timing", "throughput");
    set_int(row, "devices", n);
    int64_t *ids = NULL, *mask = NULL;
    sqz_input in;
    const bool have_input = cell_input(b, c, &ids, &mask, &in);
    stream_dev *d = calloc((size_t)n, sizeof *d);
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    start_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    sqz_status st = SQZ_OK;
    char where[64] = "";
    int opened = 0, started = 0;
    if (!have_input || !d || !threads) {
        st = SQZ_ERR_OUT_OF_MEMORY;
        snprintf(where, sizeof where, "allocating the input");
        goto done;
    }
    progress(b, false, "%s %s %s %dx%d: throughput on %d device(s)", label, precision, c->mixed ? "mixed" : "fixed",
             c->batch, c->width, n);
    for (; opened < n; opened++) {
        stream_dev *x = &d[opened];
        x->b = b;
        x->in = &in;
        x->gate = &gate;
        x->min_batches = b->min_repeats;
        x->max_batches = b->max_repeats;
        if (!(x->gaps = malloc((size_t)b->max_repeats * sizeof *x->gaps))) {
            st = SQZ_ERR_OUT_OF_MEMORY;
            snprintf(where, sizeof where, "allocating samples");
            goto done;
        }
        if ((st = open_cell(b, devs[opened].backend, devs[opened].device[0] ? devs[opened].device : NULL, precision,
                            &in, row, &x->session, &x->last, where, sizeof where)) != SQZ_OK)
            goto done;
    }
    const double deadline = cli_now_seconds() + b->budget;
    for (; started < n; started++) {
        d[started].deadline = deadline;
        if (pthread_create(&threads[started], NULL, stream_main, &d[started]) != 0) {
            st = SQZ_ERR_OUT_OF_MEMORY;
            snprintf(where, sizeof where, "starting a thread");
            break;
        }
    }
    pthread_mutex_lock(&gate.lock);
    gate.go = true;
    gate.abandon = started < n;
    pthread_cond_broadcast(&gate.open);
    pthread_mutex_unlock(&gate.lock);
    size_t batches = 0, gaps = 0, memory = 0;
    double began = INFINITY, ended = 0, busy = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
        if (d[i].st != SQZ_OK && st == SQZ_OK) {
            st = d[i].st;
            snprintf(where, sizeof where, "a timed run on %s", devs[i].device[0] ? devs[i].device : devs[i].backend);
        }
        batches += d[i].batches;
        gaps += d[i].n_gaps;
        began = fmin(began, d[i].began);
        ended = fmax(ended, d[i].ended);
    }
    if (st != SQZ_OK)
        goto done;
    double *all = malloc((gaps ? gaps : 1) * sizeof *all);
    if (!all) {
        st = SQZ_ERR_OUT_OF_MEMORY;
        snprintf(where, sizeof where, "collecting samples");
        goto done;
    }
    gaps = 0;
    for (int i = 0; i < n; i++) {
        memcpy(all + gaps, d[i].gaps, d[i].n_gaps * sizeof *all);
        gaps += d[i].n_gaps;
        sqz_run_stats one;
        sqz_session_last_stats(d[i].session, &one);
        memory += one.arena_bytes + one.weight_bytes;
        double seconds = 0;
        sqz_session_busy_seconds(d[i].session, &seconds);
        busy += seconds - d[i].busy_before;
    }
    sqz_run_stats stats;
    sqz_session_last_stats(d[0].session, &stats);
    timing_fields(row, c, all, gaps, batches, ended - began, &stats, n == 1 ? peak_gflops : 0, memory);
    set_num(row, "device_ms", batches ? busy / (double)batches * 1e3 : NAN);
    free(all);
    validate_cell(b, row, c, precision, d[0].last, label);
done:
    if (st != SQZ_OK) {
        const char *thread_error = NULL; /* a thread's message is its own: sqz_last_error is per thread */
        for (int i = 0; i < started && !thread_error; i++)
            if (d[i].st != SQZ_OK)
                thread_error = d[i].error;
        if (thread_error) {
            char msg[700];
            snprintf(msg, sizeof msg, "%s: %s", where, thread_error);
            set_str(row, "status", "error");
            set_str(row, "reason", msg);
            b->failed = true;
        } else {
            row_error(b, row, where, st);
        }
    }
    for (int i = 0; d && i < n; i++) {
        sqz_result_free(d[i].last);
        sqz_session_free(d[i].session);
        free(d[i].gaps);
    }
    free(d);
    free(threads);
    free(ids);
    free(mask);
    b->cells_done++;
    return row;
}

/* The pass bar of a cell: --tolerance, or the precision's documented one. */
static double cell_tolerance(const bench_ctx *b, const char *precision)
{
    sqz_precision p = SQZ_PRECISION_FP32;
    sqz_precision_from_name(precision, &p);
    if (b->tolerance > 0)
        return b->tolerance;
    /* fp16 outputs add their own rounding: at most 2^-11 of a value, so of the largest */
    return sqz_precision_tolerance(p) + (b->output_options.type == SQZ_OUTPUT_FP16 ? 1.0 / 2048 : 0);
}

/* Whether a backend runs a precision: the library answers (a session on the device); *why
 * gets its reason when it does not. */
static bool precision_supported(const bench_ctx *b, const char *backend, const char *device,
                                const char *precision, char *why, size_t why_size)
{
    sqz_session_options so = cli_session_options(backend, device, SQZ_PRECISION_FP32);
    sqz_session *s = NULL;
    sqz_status st = sqz_precision_from_name(precision, &so.precision);
    if (st == SQZ_OK)
        st = sqz_session_create(b->model, &so, &s);
    sqz_session_free(s);
    if (st != SQZ_OK)
        snprintf(why, why_size, "%s", sqz_last_error());
    return st == SQZ_OK;
}

/* The `sqz devices` line of a backend's device (by index, or the first one naming `name`). */
static void device_line(const char *text, const char *backend, const char *index, const char *name,
                        char *out, size_t size)
{
    out[0] = '\0';
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char buf[1024];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), line);
        char b[64] = "", idx[32] = "";
        int consumed = 0;
        if (sscanf(buf, "%63s %31s %n", b, idx, &consumed) >= 2 && strcmp(b, backend) == 0 &&
            ((index && strcmp(idx, index) == 0) || (!index && name && *name && strstr(buf, name)) ||
             (!index && (!name || !*name)))) {
            snprintf(out, size, "%s", buf + consumed);
            return;
        }
        line = end ? end + 1 : NULL;
    }
}

/* Host threads the backend computes with, in words, so they never differ silently from the
 * peers' settings. */
static void backend_threads(const char *backend, const char *line, char *out, size_t size)
{
    if (strcmp(backend, "cpu_ref") == 0) {
        snprintf(out, size, "1 host thread (scalar reference)");
        return;
    }
    const char *threads = strcmp(backend, "cpu") == 0 ? strstr(line, " thread") : NULL;
    if (threads) { /* the cpu backend's description ends with its thread count */
        const char *p = threads;
        while (p > line && p[-1] >= '0' && p[-1] <= '9')
            p--;
        snprintf(out, size, "%.*s threads (the backend's team; oneDNN single-threaded in each)", (int)(threads - p), p);
        return;
    }
    const char *cu = strstr(line, " compute units");
    const char *p = cu;
    while (p && p > line && p[-1] >= '0' && p[-1] <= '9')
        p--;
    const bool pocl = strstr(line, "PoCL") || strstr(line, "Portable Computing Language");
    const char *env = getenv("POCL_MAX_PTHREAD_COUNT");
    if (cu && p < cu && pocl)
        snprintf(out, size, "%.*s compute units, one PoCL thread each (POCL_MAX_PTHREAD_COUNT=%s)",
                 (int)(cu - p), p, env ? env : "unset");
    else if (cu && p < cu)
        snprintf(out, size, "%.*s compute units", (int)(cu - p), p);
    else
        snprintf(out, size, "device");
}

static double measure_peak(bench_ctx *b, const char *backend, const char *device,
                           const char *precision, json_t *dev)
{
    if (!(b->peak_budget > 0))
        return 0;
    progress(b, false, "%s %s: measuring the peak", backend, precision);
    sqz_peak peak;
    sqz_status st = sqz_measure_peak(backend, device, precision, b->peak_budget, &peak);
    json_t *p = json_object();
    set_str(p, "precision", precision);
    if (st != SQZ_OK) {
        set_str(p, "status", "error");
        set_str(p, "reason", sqz_last_error());
    } else {
        set_str(p, "status", "ok");
        set_num(p, "gflops", peak.gflops);
        char shape[96];
        snprintf(shape, sizeof shape, "LINEAR [%lld x %lld] x [%lld x %lld]^T", (long long)peak.rows,
                 (long long)peak.in_features, (long long)peak.out_features, (long long)peak.in_features);
        set_str(p, "kernel", shape);
        set_int(p, "launches", peak.launches);
        set_num(p, "seconds", peak.seconds);
    }
    json_t *peaks = json_object_get(dev, "peaks");
    json_array_append_new(peaks, p);
    return st == SQZ_OK ? peak.gflops : 0;
}

static int cmp_cell(const void *a, const void *b)
{
    const cell *x = a, *y = b;
    if (x->mixed != y->mixed)
        return x->mixed - y->mixed;
    if (x->width != y->width)
        return x->width - y->width;
    return x->batch - y->batch;
}

static int read_lengths_file(const char *path, lengths_file *out)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "sqz bench: cannot read --lengths-file %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t cap = 0;
    long v;
    int line = 0;
    char buf[128];
    while (fgets(buf, sizeof buf, f)) {
        line++;
        char *p = buf;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\n' || *p == '\0' || *p == '#')
            continue;
        char *end = NULL;
        v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 1 << 20) {
            fprintf(stderr, "sqz bench: %s:%d: expected a positive length, got '%s'\n", path, line, p);
            fclose(f);
            return 1;
        }
        if (out->count == cap) {
            cap = cap ? cap * 2 : 256;
            int *bigger = realloc(out->values, cap * sizeof *bigger);
            if (!bigger) {
                fclose(f);
                return 1;
            }
            out->values = bigger;
        }
        out->values[out->count++] = (int)v;
    }
    fclose(f);
    if (!out->count) {
        fprintf(stderr, "sqz bench: %s holds no lengths\n", path);
        return 1;
    }
    return 0;
}

/* ---- the command ------------------------------------------------------------------------------ */

static void machine_info(json_t *run)
{
    char host[256] = "?", cpu[256] = "", load[128] = "?";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0 && strchr(line, ':')) {
            snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
            cpu[strcspn(cpu, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    f = fopen("/proc/loadavg", "r");
    if (f && fgets(load, sizeof load, f)) {
        /* the three averages only */
        char *p = load;
        for (int k = 0; k < 3 && p; k++)
            p = strchr(p + 1, ' ');
        if (p)
            *p = '\0';
    }
    if (f)
        fclose(f);
    char cores[16];
    snprintf(cores, sizeof cores, "%ld", sysconf(_SC_NPROCESSORS_ONLN));
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", &tm);
    set_str(run, "date", date);
    set_str(run, "host", host);
    set_str(run, "machine", *cpu ? cpu : host);
    set_str(run, "cores", cores);
    set_str(run, "loadavg", load);
    /* a busy machine shows in every figure: say so before anything is timed */
    double one_minute = atof(load);
    long n_cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (n_cores > 0 && one_minute > 0.5 * (double)n_cores)
        fprintf(stderr, "sqz bench: warning: load average %.2f on %ld cores: other work is "
                "running and will show in the figures\n", one_minute, n_cores);
}

/* What the command line asks for, checked: the model, the grid and where to run it. */
typedef struct bench_request {
    const char *preset, *model_dir;
    long seed, input_seed, mixed_max;
    int batches[MAX_LIST], lengths[MAX_LIST], mixed_batches[MAX_LIST];
    int n_batches, n_lengths, n_mixed;
    char *precisions[MAX_LIST];
    int n_prec;
    cli_device reqs[MAX_LIST * 2]; /* the devices, in the order they are run */
    int n_reqs;
    char *devtext; /* what `sqz devices` says, for the device descriptions */
    bool latency, throughput, together;
    lengths_file lf; /* --lengths-file: the lengths mixed batches draw from */
} bench_request;

static void free_request(bench_request *r)
{
    free_words(r->precisions, r->n_prec);
    free(r->devtext);
    free(r->lf.values);
}

/* Seeds, repeats, budgets and the batch sizes and lengths of the grid. */
static int read_grid(const cli_option *opts, size_t n_opts, bench_ctx *b, bench_request *r)
{
    const char *v;
    if (((v = cli_get(opts, n_opts, "seed")) && cli_int("bench", "seed", v, 0, 1L << 40, &r->seed)) ||
        ((v = cli_get(opts, n_opts, "input-seed")) && cli_int("bench", "input-seed", v, 0, 1L << 20, &r->input_seed)) ||
        ((v = cli_get(opts, n_opts, "mixed-max")) && cli_int("bench", "mixed-max", v, 2, 65536, &r->mixed_max)) ||
        ((v = cli_get(opts, n_opts, "ref-max-tokens")) && cli_int("bench", "ref-max-tokens", v, 0, 1L << 24, &b->ref_max_tokens)) ||
        ((v = cli_get(opts, n_opts, "min-repeats")) && cli_int("bench", "min-repeats", v, 1, 100000, &b->min_repeats)) ||
        ((v = cli_get(opts, n_opts, "max-repeats")) && cli_int("bench", "max-repeats", v, 1, 100000, &b->max_repeats)) ||
        ((v = cli_get(opts, n_opts, "budget")) && parse_double("budget", v, 0, &b->budget)) ||
        ((v = cli_get(opts, n_opts, "peak-budget")) && parse_double("peak-budget", v, 0, &b->peak_budget)) ||
        ((v = cli_get(opts, n_opts, "tolerance")) && parse_double("tolerance", v, 0, &b->tolerance)) ||
        ((v = cli_get(opts, n_opts, "batch")) && (r->n_batches = parse_int_list("batch", v, 1, 65536, r->batches)) < 0) ||
        ((v = cli_get(opts, n_opts, "length")) && (r->n_lengths = parse_int_list("length", v, 2, 65536, r->lengths)) < 0))
        return EXIT_USAGE;
    if (b->max_repeats < b->min_repeats)
        b->max_repeats = b->min_repeats;
    b->input_seed = (uint64_t)r->input_seed;
    if ((v = cli_get(opts, n_opts, "mixed-batch"))) {
        if (strcmp(v, "none") == 0)
            r->n_mixed = 0;
        else if ((r->n_mixed = parse_int_list("mixed-batch", v, 1, 65536, r->mixed_batches)) < 0)
            return EXIT_USAGE;
    } else {
        r->n_mixed = 0;
        for (int i = 0; i < r->n_batches; i++)
            if (r->batches[i] >= 4)
                r->mixed_batches[r->n_mixed++] = r->batches[i];
    }
    return 0;
}

/* The precisions, and what each run returns and where. */
static int read_precisions_and_outputs(const cli_option *opts, size_t n_opts, bench_ctx *b,
                                       bench_request *r)
{
    const char *v;
    if ((r->n_prec = parse_word_list("precisions", cli_get(opts, n_opts, "precisions") ? cli_get(opts, n_opts, "precisions")
                                                                                   : "fp32,fp16", r->precisions)) < 0) {
        r->n_prec = 0;
        return EXIT_USAGE;
    }
    for (int i = 0; i < r->n_prec; i++)
        if (strcmp(r->precisions[i], "fp32") && strcmp(r->precisions[i], "fp16") && strcmp(r->precisions[i], "bf16") &&
            strcmp(r->precisions[i], "tf32") && strcmp(r->precisions[i], "int8")) {
            fprintf(stderr, "sqz bench: unknown precision '%s' (fp32, tf32, fp16, bf16, int8)\n", r->precisions[i]);
            return EXIT_USAGE;
        }
    const char *otype = cli_get(opts, n_opts, "output-type"), *oplace = cli_get(opts, n_opts, "output-place");
    if ((otype && strcmp(otype, "fp32") != 0 && strcmp(otype, "fp16") != 0) ||
        (oplace && strcmp(oplace, "host") != 0 && strcmp(oplace, "device") != 0)) {
        fprintf(stderr, "sqz bench: --output-type takes fp32 or fp16, --output-place host or device\n");
        return EXIT_USAGE;
    }
    b->output_options.type = otype && strcmp(otype, "fp16") == 0 ? SQZ_OUTPUT_FP16 : SQZ_OUTPUT_FP32;
    b->output_options.place = oplace && strcmp(oplace, "device") == 0 ? SQZ_OUTPUT_ON_DEVICE : SQZ_OUTPUT_ON_HOST;
    if ((v = cli_get(opts, n_opts, "outputs")) && (b->n_outputs = parse_word_list("outputs", v, b->outputs)) < 0)
        return EXIT_USAGE;
    return 0;
}

/* The backends (those named, or every one built in but the emulated), then their devices:
 * per backend the default, every listed one, or those named. */
static int choose_devices(const cli_option *opts, size_t n_opts, bench_request *r)
{
    char *backends[MAX_LIST];
    int n_backends = 0;
    const char *v;
    if ((v = cli_get(opts, n_opts, "backends"))) {
        if ((n_backends = parse_word_list("backends", v, backends)) < 0)
            return EXIT_USAGE;
        for (int i = 0; i < n_backends; i++) {
            bool known = false;
            for (size_t k = 0; sqz_backend_name(k); k++)
                known |= strcmp(sqz_backend_name(k), backends[i]) == 0;
            if (!known) {
                fprintf(stderr, "sqz bench: backend '%s' is not built in (see sqz backends)\n", backends[i]);
                free_words(backends, n_backends);
                return EXIT_USAGE;
            }
        }
    } else {
        for (size_t k = 0; sqz_backend_name(k) && n_backends < MAX_LIST; k++)
            if (!sqz_backend_is_emulated(sqz_backend_name(k))) /* cuda-sim: only when named */
                backends[n_backends++] = strdup(sqz_backend_name(k));
    }
    const char *dev_spec = cli_get(opts, n_opts, "devices") ? cli_get(opts, n_opts, "devices") : "default";
    cli_device named[MAX_LIST * 2];
    int n_named = 0;
    sqz_devices_describe(&r->devtext);
    int rc = 0;
    if (strcmp(dev_spec, "default") != 0 && strcmp(dev_spec, "all") != 0 &&
        (n_named = cli_parse_devices("bench", dev_spec, named, MAX_LIST * 2)) < 0)
        rc = EXIT_USAGE;
    cli_device *reqs = r->reqs;
    int n_reqs = 0;
    for (int i = 0; i < n_backends && rc == 0; i++) {
        int before = n_reqs;
        if (strcmp(dev_spec, "all") == 0)
            n_reqs += cli_devices_of(backends[i], reqs + n_reqs, MAX_LIST * 2 - n_reqs);
        for (int k = 0; k < n_named && n_reqs < MAX_LIST * 2; k++)
            if (strcmp(named[k].backend, backends[i]) == 0)
                reqs[n_reqs++] = named[k];
        if (n_reqs == before && n_reqs < MAX_LIST * 2) { /* the backend's default device */
            snprintf(reqs[n_reqs].backend, sizeof reqs[0].backend, "%s", backends[i]);
            reqs[n_reqs].device[0] = '\0';
            long threads = 0; /* --threads: the cpu backend's device */
            if (strcmp(backends[i], "cpu") == 0 && (v = cli_get(opts, n_opts, "threads"))) {
                if (cli_int("bench", "threads", v, 1, 1024, &threads)) {
                    rc = EXIT_USAGE;
                    break;
                }
                snprintf(reqs[n_reqs].device, sizeof reqs[0].device, "threads=%ld", threads);
            }
            n_reqs++;
        }
    }
    r->n_reqs = n_reqs;
    free_words(backends, n_backends);
    return rc;
}

/* Every option, checked in the order the messages have always come in. */
static int read_request(const cli_option *opts, size_t n_opts, bench_ctx *b, bench_request *r)
{
    int rc = read_grid(opts, n_opts, b, r);
    if (rc == 0)
        rc = read_precisions_and_outputs(opts, n_opts, b, r);
    if (rc == 0)
        rc = choose_devices(opts, n_opts, r);
    const char *timing = cli_get(opts, n_opts, "timing") ? cli_get(opts, n_opts, "timing") : "latency";
    r->latency = strcmp(timing, "latency") == 0 || strcmp(timing, "both") == 0;
    r->throughput = strcmp(timing, "throughput") == 0 || strcmp(timing, "both") == 0;
    r->together = cli_get(opts, n_opts, "together") != NULL;
    if (rc == 0 && !r->latency && !r->throughput) {
        fprintf(stderr, "sqz bench: --timing takes latency, throughput or both, got '%s'\n", timing);
        rc = EXIT_USAGE;
    }
    const char *v;
    if (rc == 0 && (v = cli_get(opts, n_opts, "lengths-file")) && read_lengths_file(v, &r->lf))
        rc = 1;
    b->validate = !cli_get(opts, n_opts, "no-validate");
    b->progress = !cli_get(opts, n_opts, "quiet");
    b->tty = isatty(2);
    return rc;
}

/* Loads --model, or writes a random --random checkpoint into `tmp_dir` first (*made says
 * so, for the cleanup). */
static int load_model(bench_ctx *b, bench_request *r, char *tmp_dir, bool *made)
{
    if (r->preset) {
        if (!mkdtemp(tmp_dir)) {
            fprintf(stderr, "sqz bench: cannot create a temporary directory: %s\n", strerror(errno));
            return 1;
        }
        *made = true;
        r->model_dir = tmp_dir;
        if (b->progress)
            fprintf(stderr, "sqz bench: writing a random %s checkpoint (seed %ld)\n", r->preset, r->seed);
        sqz_status st = sqz_random_model_write(r->preset, (uint64_t)r->seed, r->model_dir);
        if (st != SQZ_OK) {
            fprintf(stderr, "sqz bench: %s: %s\n", sqz_status_str(st), sqz_last_error());
            return st == SQZ_ERR_INVALID_ARGUMENT ? EXIT_USAGE : 1;
        }
    }
    sqz_status st = cli_load_model(r->model_dir, &b->model);
    if (st != SQZ_OK) {
        fprintf(stderr, "sqz bench: %s: %s\n", sqz_status_str(st), sqz_last_error());
        return 1;
    }
    sqz_model_get_info(b->model, &b->info);
    if (b->info.head == SQZ_HEAD_MULTIPLE_CHOICE) {
        fprintf(stderr, "sqz bench: multiple-choice heads are not benchmarked: time the encoder "
                "with a base or classification checkpoint of the same shape\n");
        return 1;
    }
    return 0;
}

/* The cells, every length within the model's positions, cheapest first; *max_width is the
 * width of the mixed cells. On failure the cells made so far are in *cells / *n_cells. */
static int make_cells(const bench_ctx *b, const bench_request *r, cell **cells, int *n_cells,
                      int *max_width)
{
    *max_width = 0;
    for (int i = 0; i < r->n_lengths; i++)
        *max_width = r->lengths[i] > *max_width ? r->lengths[i] : *max_width;
    if (r->mixed_max)
        *max_width = (int)r->mixed_max;
    *cells = calloc((size_t)(r->n_batches * r->n_lengths + (r->n_mixed > 0 ? r->n_mixed : 0)), sizeof **cells);
    if (!*cells)
        return 1;
    for (int li = 0; li < r->n_lengths + (r->n_mixed > 0); li++) {
        const bool mixed = li == r->n_lengths;
        const int width = mixed ? *max_width : r->lengths[li];
        if (width > b->info.max_position_embeddings) {
            fprintf(stderr, "sqz bench: length %d exceeds max_position_embeddings %d of the model\n",
                    width, b->info.max_position_embeddings);
            return EXIT_USAGE;
        }
        for (int bi = 0; bi < (mixed ? r->n_mixed : r->n_batches); bi++) {
            cell *c = &(*cells)[(*n_cells)++];
            c->mixed = mixed;
            c->batch = mixed ? r->mixed_batches[bi] : r->batches[bi];
            c->width = width;
            c->lengths = malloc((size_t)c->batch * sizeof *c->lengths);
            if (!c->lengths)
                return 1;
            for (int row = 0; row < c->batch; row++) {
                if (!mixed)
                    c->lengths[row] = width;
                else if (r->lf.count) {
                    uint64_t h = bench_splitmix64(((uint64_t)r->input_seed << 40) + ((uint64_t)c->batch << 20) + (uint64_t)row);
                    int len = r->lf.values[h % r->lf.count];
                    c->lengths[row] = len < 2 ? 2 : len > width ? width : len;
                } else {
                    c->lengths[row] = bench_mixed_length(b->input_seed, c->batch, row, width);
                }
                if (c->lengths[row] < c->lengths[c->check_row])
                    c->check_row = row; /* the cheapest sequence to check on cpu_ref */
            }
        }
    }
    qsort(*cells, (size_t)*n_cells, sizeof **cells, cmp_cell);
    return 0;
}

/* The report's "run": when, where, how it was timed and the command itself. */
static json_t *run_header(const bench_request *r, int argc, char **argv)
{
    json_t *run = json_object();
    machine_info(run);
    set_str(run, "timing", r->throughput && !r->latency
                               ? "throughput: two runs in flight per device (sqz_session_submit/wait), batches "
                                 "completed over the timed span; warm-up apart"
                               : "wall time of one sqz_session_run (pack, upload ids, every launch, synchronise, "
                                 "download outputs); medians over repeats; warm-up apart; /T rows: throughput with "
                                 "two runs in flight per device");
    char cmdline[2048] = "sqz bench";
    for (int i = 0; i < argc; i++) {
        size_t len = strlen(cmdline);
        snprintf(cmdline + len, sizeof cmdline - len, " %s", argv[i]);
    }
    set_str(run, "command", cmdline);
    return run;
}

static json_t *model_header(const bench_ctx *b, const bench_request *r)
{
    json_t *model = json_object();
    char source[600];
    if (r->preset)
        snprintf(source, sizeof source, "random %s, seed %ld", r->preset, r->seed);
    else
        snprintf(source, sizeof source, "%s", r->model_dir);
    set_str(model, "source", source);
    set_str(model, "architecture", b->info.architecture);
    set_int(model, "parameters", b->info.num_parameters);
    set_int(model, "layers", b->info.num_layers);
    set_int(model, "hidden", b->info.hidden_size);
    return model;
}

/* The report's "settings": repeats, the mixed lengths, validation and the outputs asked for. */
static json_t *settings_header(const bench_ctx *b, const bench_request *r, const char *lengths_path,
                               int max_width)
{
    json_t *settings = json_object();
    set_num(settings, "budget_s", b->budget);
    set_int(settings, "min_repeats", b->min_repeats);
    set_int(settings, "max_repeats", b->max_repeats);
    set_int(settings, "ref_max_tokens", b->ref_max_tokens);
    set_int(settings, "input_seed", r->input_seed);
    char mixed_desc[512];
    if (r->lf.count)
        snprintf(mixed_desc, sizeof mixed_desc, "drawn from %zu lengths in %s, clamped to [2, %d]",
                 r->lf.count, lengths_path, max_width);
    else
        snprintf(mixed_desc, sizeof mixed_desc, "log-normal, median %.0f tokens, sigma %.2f, clamped "
                 "to [%d, %d]; a model of sentence-pair classification traffic, not a measured trace",
                 BENCH_MIXED_MEDIAN, BENCH_MIXED_SIGMA, BENCH_MIXED_MIN, max_width);
    set_str(settings, "mixed_lengths", mixed_desc);
    char vdesc[512], tol_desc[128];
    if (b->tolerance > 0)
        snprintf(tol_desc, sizeof tol_desc, "%g", b->tolerance);
    else
        snprintf(tol_desc, sizeof tol_desc, "%g (fp32), %g (tf32), %g (fp16), %g (bf16)",
                 sqz_precision_tolerance(SQZ_PRECISION_FP32), sqz_precision_tolerance(SQZ_PRECISION_TF32),
                 sqz_precision_tolerance(SQZ_PRECISION_FP16), sqz_precision_tolerance(SQZ_PRECISION_BF16));
    if (b->validate)
        snprintf(vdesc, sizeof vdesc, "each cell's last timed output, one sequence (the first; the "
                 "shortest in mixed cells), every output at its real positions, against cpu_ref "
                 "running that sequence alone; pass = max|diff| / max|cpu_ref| <= %s", tol_desc);
    else
        snprintf(vdesc, sizeof vdesc, "off (--no-validate)");
    set_str(settings, "validation", vdesc);
    char outs[512] = "";
    for (int i = 0; i < b->n_outputs; i++)
        snprintf(outs + strlen(outs), sizeof outs - strlen(outs), "%s%s", i ? "," : "", b->outputs[i]);
    set_str(settings, "outputs", b->n_outputs > 0 ? outs : "all");
    set_str(settings, "output_type", b->output_options.type == SQZ_OUTPUT_FP16 ? "fp16" : "fp32");
    set_str(settings, "output_place", b->output_options.place == SQZ_OUTPUT_ON_DEVICE ? "device" : "host");
    return settings;
}

/* Can the device run at all? One session on it tells, and names it: the device's entry in
 * the report says so, and *threads what its backend runs on. False when unavailable. */
static bool describe_device(const bench_ctx *b, const char *devtext, const char *backend,
                            const char *device, json_t *dev, char *threads, size_t threads_size)
{
    sqz_session *probe = NULL;
    sqz_status st = sqz_backend_probe(backend);
    if (st == SQZ_OK)
        st = sqz_session_create(b->model, &(sqz_session_options){.backend = backend, .device = device},
                                &probe);
    if (st != SQZ_OK) {
        set_str(dev, "status", "unavailable");
        set_str(dev, "reason", sqz_last_error());
        return false;
    }
    set_str(dev, "status", "ok");
    const char *desc = sqz_session_device(probe);
    char name[256], line[1024];
    snprintf(name, sizeof name, "%s", desc);
    name[strcspn(name, "(")] = '\0';
    while (*name && name[strlen(name) - 1] == ' ')
        name[strlen(name) - 1] = '\0';
    device_line(devtext ? devtext : "", backend, device && strspn(device, "0123456789") == strlen(device) ? device : NULL,
                name, line, sizeof line);
    set_str(dev, "description", *line ? line : desc);
    backend_threads(backend, strcmp(backend, "cpu") == 0 ? desc : line, threads, threads_size);
    set_str(dev, "threads", threads);
    sqz_session_free(probe);
    return true;
}

/* The row of a cell the scalar reference is not asked to time. */
static json_t *skipped_ref_row(const bench_ctx *b, const char *backend, const char *label,
                               const char *prec, const cell *ce)
{
    json_t *row = new_row(backend, label, prec);
    row_cell_fields(row, ce);
    set_str(row, "status", "skipped");
    char skip[200];
    snprintf(skip, sizeof skip, "over %ld padded tokens per batch (--ref-max-tokens); "
             "the scalar reference is for correctness, not speed", b->ref_max_tokens);
    set_str(row, "reason", skip);
    return row;
}

/* Device `d`: its entry in "devices", then every precision x cell on it (latency and/or
 * throughput rows). */
static void bench_device(bench_ctx *b, const bench_request *r, int d, const cell *cells, int n_cells,
                         json_t *devices, json_t *rows)
{
    const int per_cell = r->latency + r->throughput; /* rows per cell and device */
    const char *backend = r->reqs[d].backend, *device = r->reqs[d].device[0] ? r->reqs[d].device : NULL;
    const char *label = device ? device : "default";
    json_t *dev = json_object();
    set_str(dev, "engine", "sqz");
    set_str(dev, "backend", backend);
    set_str(dev, "device", label);
    json_object_set_new(dev, "peaks", json_array());
    json_array_append_new(devices, dev);
    char threads[256];
    if (!describe_device(b, r->devtext, backend, device, dev, threads, sizeof threads)) {
        b->cells_done += n_cells * r->n_prec * per_cell;
        return;
    }
    for (int p = 0; p < r->n_prec; p++) {
        const char *prec = r->precisions[p];
        char why[512];
        if (!precision_supported(b, backend, device, prec, why, sizeof why)) {
            json_t *row = new_row(backend, label, prec);
            set_str(row, "status", "n/a");
            set_str(row, "reason", why);
            json_array_append_new(rows, row);
            b->cells_done += n_cells * per_cell;
            continue;
        }
        double peak = measure_peak(b, backend, device, prec, dev);
        for (int c = 0; c < n_cells; c++) {
            const cell *ce = &cells[c];
            json_t *row;
            if (strcmp(backend, "cpu_ref") == 0 &&
                (long)ce->batch * ce->width > b->ref_max_tokens) {
                row = skipped_ref_row(b, backend, label, prec, ce);
                b->cells_done += per_cell;
                set_str(row, "threads", threads);
                json_array_append_new(rows, row);
                continue;
            }
            if (r->latency) {
                row = run_cell(b, backend, device, label, prec, ce, peak);
                set_str(row, "threads", threads);
                json_array_append_new(rows, row);
            }
            if (r->throughput) {
                row = run_stream_cell(b, &r->reqs[d], 1, prec, ce, peak);
                set_str(row, "threads", threads);
                json_array_append_new(rows, row);
            }
        }
    }
}

/* --together: every cell on all the devices at once, two runs in flight on each. */
static void bench_together(bench_ctx *b, const bench_request *r, const cell *cells, int n_cells,
                           json_t *rows)
{
    for (int p = 0; p < r->n_prec; p++) {
        char why[512] = "";
        bool all = true;
        for (int d = 0; d < r->n_reqs && all; d++)
            all = precision_supported(b, r->reqs[d].backend, r->reqs[d].device[0] ? r->reqs[d].device : NULL,
                                      r->precisions[p], why, sizeof why);
        for (int c = 0; c < n_cells; c++) {
            if (all) {
                json_array_append_new(rows, run_stream_cell(b, r->reqs, r->n_reqs, r->precisions[p], &cells[c], 0));
                continue;
            }
            json_t *row = new_row("several", "together", r->precisions[p]);
            set_str(row, "status", "n/a");
            set_str(row, "reason", why);
            json_array_append_new(rows, row);
            b->cells_done++;
            break; /* one line per precision says it */
        }
    }
}

int sqz_cli_bench(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(bench_help, stdout);
        return 0;
    }
    cli_option opts[] = {
        {"random", true, NULL},      {"model", true, NULL},        {"seed", true, NULL},
        {"backends", true, NULL},    {"devices", true, NULL},      {"precisions", true, NULL},
        {"batch", true, NULL},       {"length", true, NULL},       {"mixed-batch", true, NULL},
        {"mixed-max", true, NULL},   {"lengths-file", true, NULL}, {"ref-max-tokens", true, NULL},
        {"input-seed", true, NULL},  {"budget", true, NULL},       {"min-repeats", true, NULL},
        {"max-repeats", true, NULL}, {"peak-budget", true, NULL},  {"tolerance", true, NULL},
        {"no-validate", false, NULL}, {"json", true, NULL},        {"csv", true, NULL},
        {"plot", true, NULL},        {"baseline", true, NULL},     {"from", true, NULL},
        {"quiet", false, NULL},      {"outputs", true, NULL},      {"threads", true, NULL},
        {"timing", true, NULL},      {"together", false, NULL},    {"output-type", true, NULL},
        {"output-place", true, NULL},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    if (cli_parse("bench", argc, argv, opts, n_opts))
        return EXIT_USAGE;
    const char *json_path = cli_get(opts, n_opts, "json"), *csv_path = cli_get(opts, n_opts, "csv"),
               *plot_path = cli_get(opts, n_opts, "plot"), *baseline = cli_get(opts, n_opts, "baseline");
    if (cli_get(opts, n_opts, "from")) {
        json_t *report = bench_read_report(cli_get(opts, n_opts, "from"));
        if (!report)
            return 1;
        int rc = bench_write_report(report, json_path, csv_path, plot_path, baseline);
        json_decref(report);
        return rc;
    }
    bench_request r = {.preset = cli_get(opts, n_opts, "random"), .model_dir = cli_get(opts, n_opts, "model"),
                       .seed = 1, .input_seed = 1, .batches = {1, 8, 32}, .lengths = {32, 128},
                       .n_batches = 3, .n_lengths = 2, .n_mixed = -1};
    if (!r.preset == !r.model_dir) {
        fprintf(stderr, "sqz bench: one of --random PRESET or --model DIR is required\n\n%s", bench_help);
        return EXIT_USAGE;
    }
    bench_ctx b = {.budget = 2, .peak_budget = 1, .tolerance = 0, .min_repeats = 3,
                   .max_repeats = 200, .ref_max_tokens = 64, .validate = true, .input_seed = 1};
    int rc = read_request(opts, n_opts, &b, &r);
    if (rc) {
        free_request(&r);
        if (b.n_outputs > 0)
            free_words(b.outputs, b.n_outputs);
        return rc;
    }

    char tmp_dir[] = "/tmp/sqz-bench-XXXXXX";
    bool made = false;
    json_t *report = json_object();
    cell *cells = NULL;
    int n_cells = 0, max_width = 0;
    rc = load_model(&b, &r, tmp_dir, &made);
    if (rc == 0)
        rc = make_cells(&b, &r, &cells, &n_cells, &max_width);
    if (rc == 0) {
        set_str(report, "schema", BENCH_SCHEMA);
        json_object_set_new(report, "run", run_header(&r, argc, argv));
        json_object_set_new(report, "model", model_header(&b, &r));
        json_object_set_new(report, "settings",
                            settings_header(&b, &r, cli_get(opts, n_opts, "lengths-file"), max_width));
        json_t *devices = json_array(), *rows = json_array();
        json_object_set_new(report, "devices", devices);
        json_object_set_new(report, "rows", rows);

        const int per_cell = r.latency + r.throughput;
        const bool together = r.together && r.n_reqs > 1;
        b.cells_total = r.n_reqs * r.n_prec * n_cells * per_cell + (together ? r.n_prec * n_cells : 0);
        for (int d = 0; d < r.n_reqs; d++)
            bench_device(&b, &r, d, cells, n_cells, devices, rows);
        if (together)
            bench_together(&b, &r, cells, n_cells, rows);
        progress_end(&b);
        rc = bench_write_report(report, json_path, csv_path, plot_path, baseline);
        if (b.failed)
            rc = 1;
    }

    for (size_t i = 0; i < b.n_refs; i++)
        sqz_result_free(b.refs[i].result);
    free(b.refs);
    sqz_session_free(b.ref_session);
    sqz_model_free(b.model);
    for (int i = 0; i < n_cells; i++)
        free(cells[i].lengths);
    free(cells);
    json_decref(report);
    if (b.n_outputs > 0)
        free_words(b.outputs, b.n_outputs);
    free_request(&r);
    if (made)
        cli_remove_checkpoint(tmp_dir);
    return rc;
}
