/* The measured peak of a backend's device for `sqz bench`: its own LINEAR kernel (the op that
 * holds >90 % of the model's FLOPs) on one large dense matrix product, run through the same
 * backend contract and plan machinery a session uses. "Fraction of peak" in the benchmark is
 * the model's achieved rate over this one, so it says how close the whole network gets to
 * what the backend's best kernel can do on that device, not to a datasheet figure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph/plan.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "runtime/executor.h"

#define PEAK_FEATURES 1024     /* in = out features: square, large enough to be compute bound */
#define PEAK_MIN_ROWS 64
#define PEAK_MAX_ROWS 16384
#define PEAK_MIN_TIMING 0.05   /* seconds per timed group of launches: well above timer noise */
#define PEAK_MIN_TIMINGS 3

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One LINEAR node, x [rows, F] -> [rows, F], compiled for exactly `rows` tokens. */
static sqz_status compile_linear(int64_t rows, sqz_precision precision, sqz_plan **out)
{
    sqz_graph g;
    sqz_graph_init(&g);
    int in[2];
    in[0] = sqz_graph_add_tensor(&g, "x", SQZ_TENSOR_INPUT, SQZ_DTYPE_F32, SQZ_EXTENT_TOKENS, 0,
                                 PEAK_FEATURES);
    in[1] = sqz_graph_add_weight(&g, "w", 0, PEAK_FEATURES, PEAK_FEATURES);
    sqz_op_params params = {.linear = {.groups = 1}};
    int y = in[0] >= 0 && in[1] >= 0
                ? sqz_graph_add_node(&g, SQZ_OP_LINEAR, "peak.linear", in, 2, params,
                                     SQZ_EXTENT_TOKENS, PEAK_FEATURES)
                : -1;
    sqz_status st = y >= 0 ? sqz_graph_add_output(&g, "y", y, 0, PEAK_FEATURES, false,
                                                  SQZ_LAYOUT_PER_TOKEN)
                           : SQZ_ERR_OUT_OF_MEMORY;
    sqz_bucket bucket = {rows, 1, rows};
    sqz_compile_options options = {.precision = precision};
    if (st == SQZ_OK)
        st = sqz_plan_compile(&g, &bucket, &options, out);
    sqz_graph_release(&g);
    return st;
}

/* Fills `n` floats with small deterministic values (no zeros or denormals to flatter a kernel). */
static void fill(float *x, size_t n, unsigned seed)
{
    unsigned s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((float)(s >> 9) / 8388608.0f - 0.5f) * 0.125f + (s & 1 ? 0.01f : -0.01f);
    }
}

typedef struct peak_run {
    sqz_executor x;
    sqz_buffer *weights, *arena;
    sqz_precision precision;
    sqz_plan *plan;
    float *host;
} peak_run;

static void peak_release(peak_run *r)
{
    if (r->arena)
        r->x.ops->buffer_free(r->x.ctx, r->arena);
    r->arena = NULL;
    if (r->plan && r->x.ops->release)
        r->x.ops->release(r->x.ctx, r->plan);
    sqz_plan_free(r->plan);
    r->plan = NULL;
}

/* Compiles and places the product for `rows` tokens; the input is uploaded once. */
static sqz_status peak_prepare(peak_run *r, int64_t rows)
{
    peak_release(r);
    sqz_status st = compile_linear(rows, r->precision, &r->plan);
    if (st == SQZ_OK)
        st = sqz_executor_alloc(&r->x, r->plan->arena_bytes, &r->arena);
    if (st == SQZ_OK) {
        const size_t offsets[1] = {0};
        sqz_binding binding = {r->plan, r->weights, offsets, r->arena};
        st = sqz_executor_prepare(&r->x, &binding);
    }
    if (st != SQZ_OK)
        return st;
    size_t n = (size_t)rows * PEAK_FEATURES;
    float *x = malloc(n * sizeof *x);
    if (!x)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    fill(x, n, 7);
    const sqz_graph *g = &r->plan->graph;
    int input = g->nodes[r->plan->launches[0]].inputs[0];
    const sqz_dtype stored = g->tensors[input].dtype;
    sqz_dtype_from_f32(stored, x, n, x); /* in place: 16-bit values take the first half */
    st = r->x.ops->upload(r->x.ctx, r->arena, (size_t)r->plan->offsets[input], x, n * sqz_dtype_size(stored));
    free(x);
    return st;
}

/* Enqueues `count` runs of the one-launch plan (never replayed: the kernel is what is timed)
 * and waits for all of them; the wall time of the group. */
static sqz_status peak_time(peak_run *r, int count, double *seconds)
{
    const sqz_plan *p = r->plan;
    const size_t offsets[1] = {0};
    sqz_binding binding = {p, r->weights, offsets, r->arena};
    sqz_run_dims dims = {p->bucket.max_tokens, 1, p->bucket.max_tokens, p->bucket.max_tokens};
    double t0 = seconds_now();
    sqz_status st = SQZ_OK;
    for (int i = 0; i < count && st == SQZ_OK; i++)
        st = sqz_executor_run(&r->x, &binding, &dims, false);
    if (st == SQZ_OK && r->x.ops->synchronize)
        st = r->x.ops->synchronize(r->x.ctx);
    *seconds = seconds_now() - t0;
    return st;
}

sqz_status sqz_measure_peak(const char *backend, const char *device, const char *precision,
                            double budget_seconds, sqz_peak *out)
{
    if (!backend || !out || !(budget_seconds > 0))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "sqz_measure_peak: backend, out and a positive budget are required");
    memset(out, 0, sizeof *out);
    sqz_precision prec;
    sqz_status st = sqz_precision_from_name(precision, &prec);
    if (st != SQZ_OK)
        return st;
    peak_run r = {.precision = prec};
    if ((st = sqz_executor_open(&r.x, backend, device, NULL, prec)) != SQZ_OK)
        return st;
    const size_t wn = (size_t)PEAK_FEATURES * PEAK_FEATURES;
    r.host = malloc(wn * sizeof *r.host);
    if (!r.host)
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st == SQZ_OK) {
        fill(r.host, wn, 3);
        st = sqz_executor_alloc(&r.x, wn * sizeof *r.host, &r.weights);
    }
    if (st == SQZ_OK)
        st = r.x.ops->upload(r.x.ctx, r.weights, 0, r.host, wn * sizeof *r.host);
    const double start = seconds_now();
    /* Grow the product until one launch is long enough to time (a GPU needs thousands of
     * rows, the scalar reference a few dozen); the first launch of each size is a warm-up
     * (kernel build or specialisation) and is not counted. */
    int64_t rows = PEAK_MIN_ROWS;
    double one = 0;
    while (st == SQZ_OK) {
        st = peak_prepare(&r, rows);
        if (st == SQZ_OK)
            st = peak_time(&r, 1, &one);
        if (st == SQZ_OK)
            st = peak_time(&r, 1, &one);
        if (st != SQZ_OK || one >= PEAK_MIN_TIMING || rows >= PEAK_MAX_ROWS ||
            seconds_now() - start > budget_seconds)
            break;
        rows *= one > 0 && PEAK_MIN_TIMING / one < 4 ? 2 : 4;
        if (rows > PEAK_MAX_ROWS)
            rows = PEAK_MAX_ROWS;
    }
    double best = 0;
    int launches = 0, timings = 0;
    if (st == SQZ_OK) {
        const sqz_plan *p = r.plan;
        sqz_run_dims dims = {rows, 1, rows, rows};
        const double flops = sqz_node_flops(&p->graph, &p->graph.nodes[p->launches[0]], &dims);
        int group = one > 0 && one < PEAK_MIN_TIMING ? (int)(PEAK_MIN_TIMING / one) + 1 : 1;
        const double timed_from = seconds_now();
        while (st == SQZ_OK && (timings < PEAK_MIN_TIMINGS ||
                                seconds_now() - timed_from < budget_seconds)) {
            double t = 0;
            st = peak_time(&r, group, &t);
            if (st == SQZ_OK && t > 0 && group * flops / t > best)
                best = group * flops / t;
            launches += group;
            timings++;
        }
        out->gflops = best * 1e-9;
        out->rows = rows;
        out->in_features = out->out_features = PEAK_FEATURES;
        out->launches = launches;
        out->flops_per_launch = flops;
        out->seconds = seconds_now() - start;
        const char *d = r.x.ops->describe ? r.x.ops->describe(r.x.ctx) : backend;
        snprintf(out->device, sizeof out->device, "%s", d ? d : backend);
    }
    peak_release(&r);
    if (r.weights)
        r.x.ops->buffer_free(r.x.ctx, r.weights);
    sqz_executor_close(&r.x);
    free(r.host);
    return st;
}
