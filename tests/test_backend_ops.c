/* Every op of every available backend against the scalar reference, one node at a time,
 * on random shapes: odd sizes, one token, one sequence of 512, many short sequences, odd
 * group and head sizes, masked keys. Fused ops are checked against the composition of the
 * reference's primitive ops. Each output slot carries guard bytes that must survive the
 * launch. A backend that is not available here is reported as skipped, not passed.
 *
 * Backends with precisions run every case at each of them: the plan is compiled at the
 * precision, activations are given and read back in the storage type the plan's tensors have
 * (the assign-dtypes pass: 16 bits at fp16 and bf16), the reference computes from the same rounded values (and from the weights the CUDA
 * backend keeps in 16 bits too, rounded the same way: matrices and embedding tables), and the
 * bar is the per-op one of the precision (sqz_precision_op_tolerance). cuda-sim runs the cases under its three
 * thread orders in turn, so a missing barrier in a kernel changes the answer. */
#include "tests/test_util.h"

#include <float.h>
#include <math.h>

#include "cpu_ref/cpu_ref_ops.h"
#include "graph/plan.h"
#include "runtime/backend.h"
#include "runtime/executor.h"
#include "tests/test_float16.h"

#define GUARD 64

typedef struct operand {
    const char *role;   /* "weight" (fixed rows) or an extent name */
    sqz_extent extent;
    int64_t rows, cols; /* rows only for weights */
    sqz_dtype dtype;
    void *data;         /* host data, rows x cols */
    int alias;          /* 1 + the input whose tensor this one names too (no data), or 0 */
} operand;

typedef struct op_case op_case;
/* the expected output from the case's inputs (which may have been rounded) */
typedef void (*reference_fn)(const op_case *c, float *out);

struct op_case {
    char name[128];
    sqz_op op;
    sqz_op_params params;
    int n_inputs;
    operand in[SQZ_NODE_MAX_INPUTS];
    sqz_extent out_extent;
    int64_t out_cols;
    sqz_run_dims dims;
    unsigned stored16; /* weight inputs (bit i: input i) a backend keeps in its 16-bit type too:
                          matrices, embedding tables */
    reference_fn reference;
};

static uint64_t rng = 12345;

static float *uniform(int64_t n, float scale)
{
    /* the bound also tells GCC 13's allocation-size analysis that n is never negative */
    if (n < 0 || n > ((int64_t)1 << 32)) {
        fprintf(stderr, "uniform: bad element count %lld\n", (long long)n);
        abort();
    }
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++)
        x[i] = scale * test_uniform(&rng);
    return x;
}

static bool is_16bit(sqz_precision p) { return p == SQZ_PRECISION_FP16 || p == SQZ_PRECISION_BF16; }

static uint16_t to_bits(float f, sqz_precision p) { return p == SQZ_PRECISION_FP16 ? test_half_bits(f) : test_bf16_bits(f); }

static float from_bits(uint16_t b, sqz_precision p) { return p == SQZ_PRECISION_FP16 ? test_half_value(b) : test_bf16_value(b); }

/* ---- one node on one backend ------------------------------------------------------------ */

typedef struct config {
    const char *device;
    sqz_precision precision;
} config;

static int64_t operand_rows(const operand *o, const sqz_run_dims *dims)
{
    return sqz_extent_rows(o->extent, o->rows, dims);
}

/* Runs one node on `ops`; returns the output as fp32 (caller frees) or NULL with a reason
 * for skipping it. */
static float *run_on(const sqz_backend_ops *ops, const config *cfg, const op_case *c, char *why, size_t why_size)
{
    sqz_graph g;
    sqz_graph_init(&g);
    int inputs[SQZ_NODE_MAX_INPUTS];
    size_t weight_offsets[SQZ_NODE_MAX_INPUTS] = {0}, weight_bytes = 0;
    for (int i = 0; i < c->n_inputs; i++) {
        const operand *o = &c->in[i];
        char name[32];
        snprintf(name, sizeof name, "in%d", i);
        if (o->alias) {
            inputs[i] = inputs[o->alias - 1];
        } else if (o->extent == SQZ_EXTENT_FIXED) {
            inputs[i] = sqz_graph_add_weight(&g, name, i, o->rows, o->cols);
            weight_offsets[i] = weight_bytes;
            weight_bytes += (size_t)(o->rows * o->cols) * 4 + 256;
        } else {
            inputs[i] = sqz_graph_add_tensor(&g, name, SQZ_TENSOR_INPUT, o->dtype, o->extent, 0, o->cols);
        }
    }
    int out = sqz_graph_add_node(&g, c->op, c->name, inputs, c->n_inputs, c->params, c->out_extent,
                                 c->out_cols);
    assert_true(out >= 0);
    assert_sqz_ok(sqz_graph_add_output(&g, "out", out, 0, 1, false, SQZ_LAYOUT_PER_TOKEN));
    sqz_bucket bucket = {c->dims.tokens, c->dims.sequences, c->dims.max_len};
    sqz_compile_options opts = {.guard_bytes = GUARD, .precision = cfg->precision};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    sqz_graph_release(&g);

    /* the executor the session uses, with its guard-bytes observer: canaries after every
     * tensor, checked after the launch */
    sqz_executor x;
    sqz_status st = sqz_executor_open(&x, ops->name, cfg->device, NULL, cfg->precision);
    if (st != SQZ_OK) {
        snprintf(why, why_size, "%s", sqz_last_error());
        sqz_plan_free(plan);
        return NULL;
    }
    if (ops->supports && !ops->supports(x.ctx, &plan->graph.nodes[0])) {
        snprintf(why, why_size, "%s does not implement %s", ops->name, sqz_op_name(c->op));
        sqz_executor_close(&x);
        sqz_plan_free(plan);
        return NULL;
    }
    sqz_guard_observer guard = {0};
    const sqz_observer watch = sqz_guard_observer_table(&guard);
    assert_sqz_ok(sqz_executor_observe(&x, &watch));
    sqz_buffer *weights = NULL, *arena = NULL;
    assert_sqz_ok(sqz_executor_alloc(&x, weight_bytes ? weight_bytes : 4, &weights));
    assert_sqz_ok(sqz_executor_alloc(&x, plan->arena_bytes, &arena));
    for (int i = 0; i < c->n_inputs; i++) {
        const operand *o = &c->in[i];
        const int64_t n = operand_rows(o, &c->dims) * o->cols;
        const sqz_dtype stored = plan->graph.tensors[inputs[i]].dtype;
        if (o->alias) {
            continue;
        } else if (o->extent == SQZ_EXTENT_FIXED) {
            assert_sqz_ok(ops->upload(x.ctx, weights, weight_offsets[i], o->data, (size_t)n * 4));
        } else if (stored == SQZ_DTYPE_F16 || stored == SQZ_DTYPE_BF16) {
            assert_true(stored == (cfg->precision == SQZ_PRECISION_FP16 ? SQZ_DTYPE_F16 : SQZ_DTYPE_BF16));
            uint16_t *bits = malloc((size_t)(n ? n : 1) * 2);
            for (int64_t k = 0; k < n; k++)
                bits[k] = to_bits(((const float *)o->data)[k], cfg->precision);
            assert_sqz_ok(ops->upload(x.ctx, arena, (size_t)plan->offsets[inputs[i]], bits, (size_t)n * 2));
            free(bits);
        } else {
            assert_true(stored == o->dtype);
            assert_sqz_ok(ops->upload(x.ctx, arena, (size_t)plan->offsets[inputs[i]], o->data, (size_t)n * 4));
        }
    }
    sqz_binding bind = {plan, weights, weight_offsets, arena};
    assert_sqz_ok(sqz_executor_prepare(&x, &bind));
    const sqz_tensor_desc *od = &plan->graph.tensors[plan->graph.nodes[0].output];
    const size_t values = (size_t)(sqz_tensor_rows(od, &c->dims) * od->cols);
    const size_t used = values * sqz_dtype_size(od->dtype);
    float *result = NULL;
    st = sqz_executor_run(&x, &bind, &c->dims, false);
    if (st == SQZ_ERR_UNSUPPORTED) { /* e.g. the unfused attention parts at 16 bits */
        snprintf(why, why_size, "%s", sqz_last_error());
    } else {
        if (st != SQZ_OK)
            fail_msg("%s on %s: %s", c->name, ops->name, sqz_last_error()); /* a guard names the node */
        if (ops->synchronize)
            assert_sqz_ok(ops->synchronize(x.ctx));
        result = malloc(values ? values * sizeof *result : 4);
        assert_sqz_ok(ops->download(x.ctx, arena, (size_t)plan->offsets[plan->graph.nodes[0].output], result, used));
        if (od->dtype != SQZ_DTYPE_F32) {
            assert_true(od->dtype == (cfg->precision == SQZ_PRECISION_FP16 ? SQZ_DTYPE_F16 : SQZ_DTYPE_BF16));
            const uint16_t *bits = (const uint16_t *)result;
            for (size_t k = values; k-- > 0;) /* downwards: in place, each value read before it is overwritten */
                result[k] = from_bits(bits[k], cfg->precision);
        }
    }
    ops->buffer_free(x.ctx, weights);
    ops->buffer_free(x.ctx, arena);
    if (ops->release)
        ops->release(x.ctx, plan);
    sqz_executor_close(&x);
    sqz_guard_observer_release(&guard);
    sqz_plan_free(plan);
    return result;
}

/* the configurations a backend is checked in: each precision it takes; cuda-sim turns
 * through its three thread orders from case to case and precision to precision, so every
 * kernel meets each order (the answer is checked against cpu_ref in each) */
static int configs_for(const sqz_backend_ops *ops, config *out)
{
    static const char *const schedules[] = {"forward", "reverse", "random:20261130"};
    static unsigned turn;
    const bool sim = strcmp(ops->name, "cuda-sim") == 0;
    int n = 0;
    turn += sim; /* counted by cuda-sim's calls only: with three backends the order would never turn */
    for (int p = 0; p < SQZ_PRECISION_COUNT; p++) {
        if (p != SQZ_PRECISION_FP32 && !ops->set_precision)
            continue;
        out[n++] = (config){sim ? schedules[(turn + (unsigned)p) % 3] : NULL, (sqz_precision)p};
    }
    return n;
}

/* A copy of the case as the backend sees it at a precision: 16-bit activations and matrix. */
static op_case rounded_case(const op_case *c, sqz_precision p)
{
    op_case r = *c;
    for (int i = 0; i < c->n_inputs; i++) {
        const operand *o = &c->in[i];
        if (o->alias)
            continue;
        const int64_t n = operand_rows(o, &c->dims) * o->cols;
        const size_t bytes = (size_t)(n ? n : 1) * 4;
        r.in[i].data = memcpy(malloc(bytes), o->data, (size_t)n * 4);
        const bool stored16 = o->dtype == SQZ_DTYPE_F32 && (o->extent != SQZ_EXTENT_FIXED || (c->stored16 >> i & 1));
        if (is_16bit(p) && stored16)
            for (int64_t k = 0; k < n; k++)
                ((float *)r.in[i].data)[k] = from_bits(to_bits(((float *)o->data)[k], p), p);
    }
    return r;
}

static void free_inputs(op_case *c)
{
    for (int i = 0; i < c->n_inputs; i++)
        free(c->in[i].data);
}

static void check_case(op_case *c)
{
    const int64_t n = sqz_extent_rows(c->out_extent, 0, &c->dims) * c->out_cols;
    int ran = 0;
    for (size_t b = 0; sqz_backend_name(b); b++) {
        const sqz_backend_ops *ops = sqz_backend_find(sqz_backend_name(b));
        if (!ops)
            continue; /* compiled in for discovery only */
        if (strcmp(ops->name, "cpu_ref") == 0 && sqz_op_is_fused(c->op))
            continue; /* the reference never fuses; its composition is the expectation */
        if (ops->probe && ops->probe() != SQZ_OK) {
            print_message("SKIPPED %-40s on %-8s: %s\n", c->name, ops->name, sqz_last_error());
            continue;
        }
        config cfgs[SQZ_PRECISION_COUNT];
        const int n_cfg = configs_for(ops, cfgs);
        for (int k = 0; k < n_cfg; k++) {
            const config *cfg = &cfgs[k];
            char label[64];
            snprintf(label, sizeof label, "%s %s%s%s", ops->name, sqz_precision_name(cfg->precision),
                     cfg->device ? " " : "", cfg->device ? cfg->device : "");
            op_case r = rounded_case(c, cfg->precision);
            char why[512] = "";
            float *got = run_on(ops, cfg, &r, why, sizeof why);
            if (!got) {
                print_message("SKIPPED %-40s on %s: %s\n", c->name, label, why);
                free_inputs(&r);
                continue;
            }
            float *expected = malloc((size_t)(n ? n : 1) * sizeof *expected);
            c->reference(&r, expected);
            double max_err = 0, max_ref = 0, err2 = 0, ref2 = 0;
            for (int64_t i = 0; i < n; i++) {
                if (!isfinite(got[i]))
                    fail_msg("%s on %s: value %lld is %f", c->name, label, (long long)i, got[i]);
                double d = (double)got[i] - expected[i];
                max_err = fmax(max_err, fabs(d));
                max_ref = fmax(max_ref, fabs(expected[i]));
                err2 += d * d;
                ref2 += (double)expected[i] * expected[i];
            }
            const double rel = max_ref > 0 ? max_err / max_ref : max_err;
            const double bar = sqz_precision_op_tolerance(cfg->precision);
            print_message("%-44s %-26s max rel %.2e  NMSE %.2e\n", c->name, label, rel, ref2 > 0 ? err2 / ref2 : err2);
            if (!(rel <= bar))
                fail_msg("%s on %s: relative error %.3e > %.1e", c->name, label, rel, bar);
            free(got);
            free(expected);
            free_inputs(&r);
            ran++;
        }
    }
    if (!ran)
        print_message("%s: no backend ran it\n", c->name);
}

static operand weight(int64_t rows, int64_t cols, float *data)
{
    return (operand){"weight", SQZ_EXTENT_FIXED, rows, cols, SQZ_DTYPE_F32, data, 0};
}

static operand tokens_f32(int64_t cols, float *data)
{
    return (operand){"tokens", SQZ_EXTENT_TOKENS, 0, cols, SQZ_DTYPE_F32, data, 0};
}

static operand ints(sqz_extent extent, int32_t *data)
{
    return (operand){"ints", extent, 0, 1, SQZ_DTYPE_I32, data, 0};
}

static int32_t *copy_ints(const int32_t *src, int64_t n)
{
    int32_t *d = malloc((size_t)(n ? n : 1) * sizeof *d);
    memcpy(d, src, (size_t)n * sizeof *d);
    return d;
}

static const float *F(const op_case *c, int i) { return c->in[i].data; }
static const int32_t *I(const op_case *c, int i) { return c->in[i].data; }

/* ---- linear family ------------------------------------------------------------------------ */

static void ref_linear(const op_case *c, float *out)
{
    const int64_t R = c->dims.tokens, CI = c->in[0].cols, CO = c->out_cols;
    sqz_ref_linear(F(c, 0), R, CI, F(c, 1), c->n_inputs > 2 ? F(c, 2) : NULL, CO, c->params.linear.groups, out);
    if (c->op == SQZ_OP_LINEAR_GELU)
        sqz_ref_gelu(out, R * CO, out);
}

static void linear_cases(void **unused)
{
    const struct { int64_t rows, cin, cout; int groups; bool gelu, bias; } shapes[] = {
        {1, 8, 8, 1, false, true},     {5, 60, 90, 3, false, true},  {7, 90, 60, 5, true, true},
        {128, 768, 192, 4, false, true}, {33, 64, 256, 4, true, true}, {3, 64, 1, 1, false, true},
        {9, 64, 2, 1, false, true},    {4, 30, 3, 3, false, false},  {17, 96, 96, 32, true, true},
        {6, 13, 7, 1, false, true},    {260, 64, 512, 2, true, true}, /* several row and column tiles */
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        op_case c = {0};
        const int64_t R = shapes[s].rows, CI = shapes[s].cin, CO = shapes[s].cout;
        const int G = shapes[s].groups;
        snprintf(c.name, sizeof c.name, "%s %lldx%lld->%lld g%d%s", shapes[s].gelu ? "linear_gelu" : "linear",
                 (long long)R, (long long)CI, (long long)CO, G, shapes[s].bias ? "" : " no bias");
        c.op = shapes[s].gelu ? SQZ_OP_LINEAR_GELU : SQZ_OP_LINEAR;
        c.params.linear.groups = G;
        c.dims = (sqz_run_dims){R, 1, R * R, R, R};
        c.n_inputs = shapes[s].bias ? 3 : 2;
        c.in[0] = tokens_f32(CI, uniform(R * CI, 1.0f));
        c.in[1] = weight(CO, CI / G, uniform(CO * (CI / G), 0.3f));
        if (shapes[s].bias)
            c.in[2] = weight(1, CO, uniform(CO, 0.5f));
        c.stored16 = 1u << 1;
        c.out_extent = SQZ_EXTENT_TOKENS;
        c.out_cols = CO;
        c.reference = ref_linear;
        check_case(&c);
        free_inputs(&c);
    }
}

/* the feed-forward block from inputs 0-4: two grouped products, GELU between them */
static void ffn_of(const op_case *c, int groups, float *out)
{
    const int64_t R = c->dims.tokens, CI = c->in[0].cols, MID = c->in[1].rows, CO = c->out_cols;
    float *hidden = malloc((size_t)(R * MID) * sizeof *hidden);
    sqz_ref_linear(F(c, 0), R, CI, F(c, 1), F(c, 2), MID, groups, hidden);
    sqz_ref_gelu(hidden, R * MID, hidden);
    sqz_ref_linear(hidden, R, MID, F(c, 3), F(c, 4), CO, groups, out);
    free(hidden);
}

static void ref_ffn(const op_case *c, float *out) { ffn_of(c, c->params.linear.groups, out); }

/* and then the residual (input 5) and LayerNorm (gamma, beta: inputs 6, 7) */
static void ref_ffn_add_layernorm(const op_case *c, float *out)
{
    const int64_t R = c->dims.tokens, CO = c->out_cols;
    float *sum = malloc((size_t)(R * CO) * sizeof *sum);
    ffn_of(c, c->params.ffn_layernorm.groups, sum);
    sqz_ref_add(sum, F(c, 5), R * CO, sum);
    sqz_ref_layernorm(sum, R, CO, F(c, 6), F(c, 7), c->params.ffn_layernorm.eps, out);
    free(sum);
}

/* an FFN case's rows, inputs 0-4 (x, W1, b1, W2, b2) and output, fresh random values */
static void ffn_operands(op_case *c, int64_t R, int64_t CI, int64_t MID, int64_t CO, int G)
{
    c->dims = (sqz_run_dims){R, 1, R * R, R, R};
    c->in[0] = tokens_f32(CI, uniform(R * CI, 1.0f));
    c->in[1] = weight(MID, CI / G, uniform(MID * (CI / G), 0.15f));
    c->in[2] = weight(1, MID, uniform(MID, 0.5f));
    c->in[3] = weight(CO, MID / G, uniform(CO * (MID / G), 0.1f));
    c->in[4] = weight(1, CO, uniform(CO, 0.5f));
    c->stored16 = 1u << 1 | 1u << 3; /* both matrices */
    c->out_extent = SQZ_EXTENT_TOKENS;
    c->out_cols = CO;
}

static void ffn_cases(void **unused)
{
    /* SqueezeBERT's block (192 per group), a small model's (32 per group), and sizes only the
     * unfused variants take */
    const struct { int64_t rows, cin, mid, cout; int groups; } shapes[] = {
        {33, 768, 3072, 768, 4}, {70, 128, 512, 128, 4}, {1, 128, 512, 128, 4}, {9, 60, 90, 30, 3},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t R = shapes[s].rows, CI = shapes[s].cin, MID = shapes[s].mid, CO = shapes[s].cout;
        const int G = shapes[s].groups;
        op_case c = {0};
        snprintf(c.name, sizeof c.name, "ffn %lldx%lld->%lld->%lld g%d", (long long)R, (long long)CI, (long long)MID,
                 (long long)CO, G);
        c.op = SQZ_OP_FFN;
        c.params.linear.groups = G;
        c.n_inputs = 5;
        ffn_operands(&c, R, CI, MID, CO, G);
        c.reference = ref_ffn;
        check_case(&c);
        free_inputs(&c);
    }
}

static void ffn_add_layernorm_cases(void **unused)
{
    /* SqueezeBERT's block and a small model's (the fused kernel's shapes) with rows that are not
     * a multiple of its 64-row tile, one row and many rows; 72 hidden columns per group (a
     * partial last chunk of 64); and a shape only the split variants take */
    const struct { int64_t rows, width, mid; int groups; } shapes[] = {
        {33, 768, 3072, 4}, {70, 128, 512, 4}, {1, 128, 512, 4}, {300, 128, 512, 4}, {17, 128, 288, 4},
        {9, 60, 90, 3},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t R = shapes[s].rows, C = shapes[s].width, MID = shapes[s].mid;
        const int G = shapes[s].groups;
        op_case c = {0};
        snprintf(c.name, sizeof c.name, "ffn_add_layernorm %lldx%lld->%lld g%d", (long long)R, (long long)C,
                 (long long)MID, G);
        c.op = SQZ_OP_FFN_ADD_LAYERNORM;
        c.params.ffn_layernorm.groups = G;
        c.params.ffn_layernorm.eps = 1e-12f;
        c.n_inputs = 8;
        ffn_operands(&c, R, C, MID, C, G);
        c.in[5] = tokens_f32(C, uniform(R * C, 1.0f)); /* a residual of its own, not x: the op allows it */
        float *gamma = uniform(C, 0.5f);
        for (int64_t i = 0; i < C; i++)
            gamma[i] += 1.0f;
        c.in[6] = weight(1, C, gamma);
        c.in[7] = weight(1, C, uniform(C, 0.5f));
        c.reference = ref_ffn_add_layernorm;
        check_case(&c);
        free_inputs(&c);
    }
}

/* q, k and v of `width` channels each, [rows][width], into one QKV output's layout */
static void interleave_qkv(const float *const part[3], int64_t rows, int64_t width, int groups, float *qkv)
{
    for (int p = 0; p < 3; p++)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t col = 0; col < width; col++)
                qkv[r * 3 * width + sqz_qkv_column(width, groups, p, col)] = part[p][r * width + col];
}

/* the three projections of one input, each by the reference's grouped linear */
static void ref_qkv(const op_case *c, float *out)
{
    const int64_t R = c->dims.tokens, CI = c->in[0].cols, W = c->out_cols / 3;
    const int G = c->params.linear.groups;
    float *part[3];
    for (int p = 0; p < 3; p++) {
        part[p] = malloc((size_t)(R * W > 0 ? R * W : 1) * sizeof *part[p]);
        sqz_ref_linear(F(c, 0), R, CI, F(c, 1 + 2 * p), F(c, 2 + 2 * p), W, G, part[p]);
    }
    interleave_qkv((const float *const *)part, R, W, G, out);
    for (int p = 0; p < 3; p++)
        free(part[p]);
}

static void qkv_cases(void **unused)
{
    /* SqueezeBERT's (192 per group), a small model's, BERT's one group, groups not a multiple
     * of any tile */
    const struct { int64_t rows, cin, width; int groups; } shapes[] = {
        {70, 768, 768, 4}, {1, 128, 128, 4}, {33, 48, 48, 1}, {9, 60, 60, 5}, {260, 64, 64, 2},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t R = shapes[s].rows, CI = shapes[s].cin, W = shapes[s].width;
        const int G = shapes[s].groups;
        op_case c = {0};
        snprintf(c.name, sizeof c.name, "qkv %lldx%lld->3x%lld g%d", (long long)R, (long long)CI, (long long)W, G);
        c.op = SQZ_OP_QKV;
        c.params.linear.groups = G;
        c.dims = (sqz_run_dims){R, 1, R * R, R, R};
        c.n_inputs = 7;
        c.in[0] = tokens_f32(CI, uniform(R * CI, 1.0f));
        for (int p = 0; p < 3; p++) {
            c.in[1 + 2 * p] = weight(W, CI / G, uniform(W * (CI / G), 0.3f));
            c.in[2 + 2 * p] = weight(1, W, uniform(W, 0.5f));
        }
        c.stored16 = 1u << 1 | 1u << 3 | 1u << 5; /* the three matrices */
        c.out_extent = SQZ_EXTENT_TOKENS;
        c.out_cols = 3 * W;
        c.reference = ref_qkv;
        check_case(&c);
        free_inputs(&c);
    }
}

/* ---- normalisation family and elementwise ------------------------------------------------- */

static int64_t case_rows(const op_case *c) { return sqz_extent_rows(c->out_extent, 0, &c->dims); }

static void ref_add(const op_case *c, float *out) { sqz_ref_add(F(c, 0), F(c, 1), case_rows(c) * c->out_cols, out); }
static void ref_gelu(const op_case *c, float *out) { sqz_ref_gelu(F(c, 0), case_rows(c) * c->out_cols, out); }
static void ref_tanh(const op_case *c, float *out) { sqz_ref_tanh(F(c, 0), case_rows(c) * c->out_cols, out); }

static void ref_layernorm(const op_case *c, float *out)
{
    sqz_ref_layernorm(F(c, 0), case_rows(c), c->out_cols, F(c, 1), F(c, 2), c->params.layernorm.eps, out);
}

static void ref_add_layernorm(const op_case *c, float *out)
{
    const int64_t n = case_rows(c) * c->out_cols;
    float *sum = malloc((size_t)n * sizeof *sum);
    sqz_ref_add(F(c, 0), F(c, 1), n, sum);
    sqz_ref_layernorm(sum, case_rows(c), c->out_cols, F(c, 2), F(c, 3), c->params.layernorm.eps, out);
    free(sum);
}

static void elementwise_and_norm_cases(void **unused)
{
    const int64_t shapes[][2] = {{1, 37}, {7, 64}, {130, 768}};
    for (size_t s = 0; s < 3; s++) {
        const int64_t R = shapes[s][0], C = shapes[s][1];
        const sqz_run_dims dims = {R, 1, R * R, R, R};
        for (int kind = 0; kind < 5; kind++) {
            op_case c = {0};
            c.dims = dims;
            c.out_extent = SQZ_EXTENT_TOKENS;
            c.out_cols = C;
            float *a = uniform(R * C, 3.0f);
            float *b = uniform(R * C, 1.0f);
            float *gamma = uniform(C, 0.5f), *beta = uniform(C, 0.5f);
            for (int64_t i = 0; i < C; i++)
                gamma[i] += 1.0f;
            const float eps = kind == 3 ? 1e-3f : 1e-12f;
            switch (kind) {
            case 0:
                c.op = SQZ_OP_ADD, c.n_inputs = 2, c.reference = ref_add;
                c.in[0] = tokens_f32(C, a), c.in[1] = tokens_f32(C, b);
                free(gamma), free(beta);
                break;
            case 1:
                c.op = SQZ_OP_GELU, c.n_inputs = 1, c.in[0] = tokens_f32(C, a), c.reference = ref_gelu;
                free(b), free(gamma), free(beta);
                break;
            case 2:
                c.op = SQZ_OP_TANH, c.n_inputs = 1, c.in[0] = tokens_f32(C, a), c.reference = ref_tanh;
                free(b), free(gamma), free(beta);
                break;
            case 3:
                c.op = SQZ_OP_LAYERNORM, c.n_inputs = 3, c.params.layernorm.eps = eps, c.reference = ref_layernorm;
                c.in[0] = tokens_f32(C, a), c.in[1] = weight(1, C, gamma), c.in[2] = weight(1, C, beta);
                free(b);
                break;
            default:
                c.op = SQZ_OP_ADD_LAYERNORM, c.n_inputs = 4, c.params.layernorm.eps = eps;
                c.reference = ref_add_layernorm;
                c.in[0] = tokens_f32(C, a), c.in[1] = tokens_f32(C, b);
                c.in[2] = weight(1, C, gamma), c.in[3] = weight(1, C, beta);
                break;
            }
            snprintf(c.name, sizeof c.name, "%s %lldx%lld", sqz_op_name(c.op), (long long)R, (long long)C);
            check_case(&c);
            free_inputs(&c);
        }
    }
}

static void gelu_over_its_whole_range(void **unused)
{
    /* both sides of every branch of a device GELU: |x/sqrt 2| < 1, the erfc tail, underflow */
    const int64_t n = 24001;
    op_case c = {.op = SQZ_OP_GELU, .n_inputs = 1, .dims = {n, 1, n, 1}, .out_extent = SQZ_EXTENT_TOKENS,
                 .out_cols = 1, .reference = ref_gelu};
    snprintf(c.name, sizeof c.name, "gelu sweep -16..16");
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++)
        x[i] = -16.0f + 32.0f * (float)i / (float)(n - 1);
    c.in[0] = tokens_f32(1, x);
    check_case(&c);
    /* and element-wise at fp32: within 2e-6 of the reference relative to max(|gelu(x)|, 1e-3) */
    float *expected = malloc((size_t)n * sizeof(float));
    sqz_ref_gelu(x, n, expected);
    for (size_t b = 0; sqz_backend_name(b); b++) {
        const sqz_backend_ops *ops = sqz_backend_find(sqz_backend_name(b));
        if (!ops || (ops->probe && ops->probe() != SQZ_OK))
            continue;
        char why[256];
        const config fp32 = {NULL, SQZ_PRECISION_FP32};
        float *got = run_on(ops, &fp32, &c, why, sizeof why);
        if (!got)
            continue;
        for (int64_t i = 0; i < n; i++)
            if (fabsf(got[i] - expected[i]) > 2e-6f * fmaxf(fabsf(expected[i]), 1e-3f))
                fail_msg("gelu(%.6f) on %s = %.9g, reference %.9g", x[i], ops->name, got[i], expected[i]);
        free(got);
    }
    free(expected);
    free_inputs(&c);
}

static void ref_gather(const op_case *c, float *out)
{
    assert_true(sqz_ref_gather_rows(I(c, 0), c->dims.tokens, F(c, 1), c->in[1].rows, c->out_cols, out));
}

static void ref_embed_layernorm(const op_case *c, float *out)
{
    const int64_t T = c->dims.tokens, C = c->out_cols;
    float *w = malloc((size_t)(T * C) * 4), *p = malloc((size_t)(T * C) * 4), *t = malloc((size_t)(T * C) * 4);
    sqz_ref_gather_rows(I(c, 0), T, F(c, 3), c->in[3].rows, C, w);
    sqz_ref_gather_rows(I(c, 1), T, F(c, 4), c->in[4].rows, C, p);
    sqz_ref_gather_rows(I(c, 2), T, F(c, 5), c->in[5].rows, C, t);
    sqz_ref_add(w, p, T * C, w);
    sqz_ref_add(w, t, T * C, w);
    sqz_ref_layernorm(w, T, C, F(c, 6), F(c, 7), c->params.layernorm.eps, out);
    free(w), free(p), free(t);
}

static void gather_and_embedding_of_width(int64_t C)
{
    const int64_t T = 45, V = 77, P = 24, TV = 3;
    int32_t ids[45], pos[45], types[45];
    for (int i = 0; i < T; i++)
        ids[i] = (i * 37 + 5) % V, pos[i] = i % P, types[i] = i % TV;
    ids[0] = 0, ids[1] = V - 1; /* both ends of the table */
    const sqz_run_dims dims = {T, 1, T * T, T, T};

    op_case g = {.op = SQZ_OP_GATHER_ROWS, .n_inputs = 2, .dims = dims, .out_extent = SQZ_EXTENT_TOKENS,
                 .out_cols = C, .reference = ref_gather};
    snprintf(g.name, sizeof g.name, "gather_rows %lld of %lldx%lld", (long long)T, (long long)V, (long long)C);
    g.in[0] = ints(SQZ_EXTENT_TOKENS, copy_ints(ids, T));
    g.in[1] = weight(V, C, uniform(V * C, 1.0f));
    check_case(&g);
    free_inputs(&g);

    op_case e = {.op = SQZ_OP_EMBED_LAYERNORM, .n_inputs = 8, .dims = dims, .out_extent = SQZ_EXTENT_TOKENS,
                 .out_cols = C, .stored16 = 7u << 3, .reference = ref_embed_layernorm};
    e.params.layernorm.eps = 1e-3f;
    snprintf(e.name, sizeof e.name, "embed_layernorm %lld tokens x %lld", (long long)T, (long long)C);
    e.in[0] = ints(SQZ_EXTENT_TOKENS, copy_ints(ids, T));
    e.in[1] = ints(SQZ_EXTENT_TOKENS, copy_ints(pos, T));
    e.in[2] = ints(SQZ_EXTENT_TOKENS, copy_ints(types, T));
    e.in[3] = weight(V, C, uniform(V * C, 0.5f)), e.in[4] = weight(P, C, uniform(P * C, 0.5f));
    e.in[5] = weight(TV, C, uniform(TV * C, 0.5f));
    e.in[6] = weight(1, C, uniform(C, 0.3f)), e.in[7] = weight(1, C, uniform(C, 0.3f));
    check_case(&e);
    free_inputs(&e);
}

static void gather_and_embedding_cases(void **unused)
{
    /* 60 columns: element by element at 16 bits; 64: 16-byte accesses at every precision */
    for (int64_t C = 60; C <= 64; C += 4)
        gather_and_embedding_of_width(C);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* the sequences of an attention case: seq_off and score_off are inputs seq_in and seq_in + 1 */
static sqz_ref_sequences sequences_of(const op_case *c, int seq_in)
{
    return (sqz_ref_sequences){I(c, seq_in), I(c, seq_in + 1), c->dims.sequences};
}

static void ref_scores(const op_case *c, float *out)
{
    const sqz_ref_sequences s = sequences_of(c, 2);
    sqz_ref_attn_scores(F(c, 0), F(c, 1), c->params.attention.heads, c->params.attention.head_dim,
                        c->params.attention.scale, &s, out);
}

static void ref_key_mask(const op_case *c, float *out)
{
    const sqz_ref_sequences s = sequences_of(c, 2);
    sqz_ref_attn_key_mask(F(c, 0), I(c, 1), c->params.attention.heads, &s, out);
}

static void ref_softmax(const op_case *c, float *out)
{
    const sqz_ref_sequences s = sequences_of(c, 1);
    sqz_ref_attn_softmax(F(c, 0), c->params.attention.heads, &s, out);
}

static void ref_context(const op_case *c, float *out)
{
    const sqz_ref_sequences s = sequences_of(c, 2);
    sqz_ref_attn_context(F(c, 0), F(c, 1), c->params.attention.heads, c->params.attention.head_dim, &s, out);
}

static void ref_attention(const op_case *c, float *out)
{
    const sqz_ref_sequences s = sequences_of(c, 4);
    const int heads = c->params.attention.heads, d = c->params.attention.head_dim;
    const size_t n = (size_t)(c->dims.score_rows * heads) * 4;
    const int64_t T = c->dims.tokens, W = (int64_t)heads * d;
    /* one QKV output: its parts taken apart again, by the graph's rule */
    float *parts = c->params.attention.qkv_groups ? malloc((size_t)(3 * T * W > 0 ? 3 * T * W : 1) * 4) : NULL;
    const float *q = F(c, 0), *k = F(c, 1), *v = F(c, 2);
    if (parts) {
        for (int p = 0; p < 3; p++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t col = 0; col < W; col++)
                    parts[(p * T + t) * W + col] =
                        q[t * 3 * W + sqz_qkv_column(W, c->params.attention.qkv_groups, p, col)];
        q = parts, k = parts + T * W, v = parts + 2 * T * W;
    }
    float *scores = malloc(n ? n : 4), *probs = malloc(n ? n : 4);
    sqz_ref_attn_scores(q, k, heads, d, c->params.attention.scale, &s, scores);
    sqz_ref_attn_key_mask(scores, I(c, 3), heads, &s, scores);
    sqz_ref_attn_softmax(scores, heads, &s, probs);
    sqz_ref_attn_context(probs, v, heads, d, &s, out);
    free(scores), free(probs), free(parts);
}

static void ref_linear_attention(const op_case *c, float *out)
{
    const sqz_ref_sequences s = {I(c, 4), NULL, c->dims.sequences};
    assert_true(sqz_ref_linear_attention(F(c, 0), F(c, 1), F(c, 2), I(c, 3), c->params.attention.heads,
                                         c->params.attention.head_dim, &s, out));
}

static void attention_layouts(const char *label, const int32_t *lengths, int64_t n, int heads, int d,
                              bool mask_some)
{
    int32_t *seq_off = calloc((size_t)n + 1, 4), *score_off = calloc((size_t)n + 1, 4);
    int64_t max_len = 0;
    for (int64_t s = 0; s < n; s++) {
        seq_off[s + 1] = seq_off[s] + lengths[s];
        score_off[s + 1] = score_off[s] + lengths[s] * lengths[s];
        max_len = lengths[s] > max_len ? lengths[s] : max_len;
    }
    const int64_t T = seq_off[n], SR = score_off[n], W = (int64_t)heads * d;
    int32_t *valid = malloc((size_t)T * 4);
    for (int64_t t = 0; t < T; t++) /* about a quarter masked, with no period a kernel's chunks could share */
        valid[t] = !mask_some || test_uniform(&rng) > -0.5f;
    for (int64_t s = 0; s < n; s++)
        valid[seq_off[s]] = 1;
    const sqz_run_dims dims = {T, n, SR, max_len, T};
    float *q = uniform(T * W, 2.0f), *k = uniform(T * W, 2.0f), *v = uniform(T * W, 1.0f);
    sqz_ref_sequences seqs = {seq_off, score_off, n};
    const float scale = (float)(1.0 / sqrt(d));
    /* the score tensors the parts take as inputs */
    float *scores = malloc((size_t)(SR * heads) * 4), *masked = malloc((size_t)(SR * heads) * 4);
    float *probs = malloc((size_t)(SR * heads) * 4);
    sqz_ref_attn_scores(q, k, heads, d, scale, &seqs, scores);
    sqz_ref_attn_key_mask(scores, valid, heads, &seqs, masked);
    sqz_ref_attn_softmax(masked, heads, &seqs, probs);
    sqz_op_params ap = {.attention = {.heads = heads, .head_dim = d, .scale = scale}};
#define COPY(ptr, count) memcpy(malloc((size_t)(count) * 4), ptr, (size_t)(count) * 4)
    struct { sqz_op op; int n; operand in[6]; sqz_extent out; int64_t cols; reference_fn ref; } parts[] = {
        {SQZ_OP_ATTN_SCORES, 4, {tokens_f32(W, COPY(q, T * W)), tokens_f32(W, COPY(k, T * W)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(score_off, n + 1))}, SQZ_EXTENT_SCORES, heads, ref_scores},
        {SQZ_OP_ATTN_KEY_MASK, 4, {{"scores", SQZ_EXTENT_SCORES, 0, heads, SQZ_DTYPE_F32, COPY(scores, SR * heads), 0},
          ints(SQZ_EXTENT_TOKENS, copy_ints(valid, T)), ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(score_off, n + 1))}, SQZ_EXTENT_SCORES, heads, ref_key_mask},
        {SQZ_OP_ATTN_SOFTMAX, 3, {{"scores", SQZ_EXTENT_SCORES, 0, heads, SQZ_DTYPE_F32, COPY(masked, SR * heads), 0},
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(score_off, n + 1))}, SQZ_EXTENT_SCORES, heads, ref_softmax},
        {SQZ_OP_ATTN_CONTEXT, 4, {{"probs", SQZ_EXTENT_SCORES, 0, heads, SQZ_DTYPE_F32, COPY(probs, SR * heads), 0},
          tokens_f32(W, COPY(v, T * W)), ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(score_off, n + 1))}, SQZ_EXTENT_TOKENS, W, ref_context},
        {SQZ_OP_ATTENTION, 6, {tokens_f32(W, COPY(q, T * W)), tokens_f32(W, COPY(k, T * W)),
          tokens_f32(W, COPY(v, T * W)), ints(SQZ_EXTENT_TOKENS, copy_ints(valid, T)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(score_off, n + 1))}, SQZ_EXTENT_TOKENS, W, ref_attention},
        {SQZ_OP_LINEAR_ATTENTION, 5, {tokens_f32(W, COPY(q, T * W)), tokens_f32(W, COPY(k, T * W)),
          tokens_f32(W, COPY(v, T * W)), ints(SQZ_EXTENT_TOKENS, copy_ints(valid, T)),
          ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1))}, SQZ_EXTENT_TOKENS, W,
         ref_linear_attention},
    };
#undef COPY
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        op_case c = {.op = parts[i].op, .params = ap, .n_inputs = parts[i].n, .dims = dims,
                     .out_extent = parts[i].out, .out_cols = parts[i].cols, .reference = parts[i].ref};
        memcpy(c.in, parts[i].in, sizeof parts[i].in);
        snprintf(c.name, sizeof c.name, "%s %s h%d d%d", sqz_op_name(c.op), label, heads, d);
        check_case(&c);
        free_inputs(&c);
    }
    /* the same attention reading one QKV output of the most groups (of 4, 3, 2) that divide the
     * width: heads inside a group, or split across groups */
    const int qkv_groups = W % 4 == 0 ? 4 : W % 3 == 0 ? 3 : W % 2 == 0 ? 2 : 1;
    float *qkv = malloc((size_t)(3 * T * W > 0 ? 3 * T * W : 1) * 4);
    interleave_qkv((const float *const[3]){q, k, v}, T, W, qkv_groups, qkv);
    op_case c = {.op = SQZ_OP_ATTENTION, .params = ap, .n_inputs = 6, .dims = dims, .out_extent = SQZ_EXTENT_TOKENS,
                 .out_cols = W, .reference = ref_attention};
    c.params.attention.qkv_groups = qkv_groups;
    c.in[0] = tokens_f32(3 * W, qkv);
    c.in[1] = c.in[2] = (operand){.role = "tokens", .extent = SQZ_EXTENT_TOKENS, .cols = 3 * W,
                                  .dtype = SQZ_DTYPE_F32, .alias = 1};
    c.in[3] = ints(SQZ_EXTENT_TOKENS, copy_ints(valid, T));
    c.in[4] = ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(seq_off, n + 1));
    c.in[5] = ints(SQZ_EXTENT_SEQUENCES_PLUS_ONE, copy_ints(score_off, n + 1));
    snprintf(c.name, sizeof c.name, "attention %s h%d d%d, one qkv of %d groups", label, heads, d, qkv_groups);
    check_case(&c);
    free_inputs(&c);
    free(seq_off), free(score_off), free(valid), free(q), free(k), free(v);
    free(scores), free(masked), free(probs);
}

static void attention_cases(void **unused)
{
    const int32_t one_token[] = {1};
    attention_layouts("one token", one_token, 1, 2, 8, false);
    attention_layouts("one token", one_token, 1, 1, 64, false);
    const int32_t long_seq[] = {512};
    attention_layouts("one sequence of 512", long_seq, 1, 2, 64, true);
    int32_t many[40];
    for (int i = 0; i < 40; i++)
        many[i] = 1 + (i * 7) % 9;
    attention_layouts("40 short sequences", many, 40, 3, 12, true);
    attention_layouts("40 short sequences", many, 40, 2, 64, true); /* the head-size-64 kernels */
    const int32_t odd[] = {17, 1, 33, 5};
    attention_layouts("odd lengths", odd, 4, 5, 12, true);
    const int32_t odd_long[] = {65, 1, 130, 64, 3};
    attention_layouts("odd lengths", odd_long, 5, 2, 64, true); /* chunks of 64 keys, partial */
    attention_layouts("odd lengths", odd_long, 5, 1, 32, true);
    attention_layouts("odd lengths", odd_long, 5, 1, 128, true);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(linear_cases),
        cmocka_unit_test(ffn_cases),
        cmocka_unit_test(ffn_add_layernorm_cases),
        cmocka_unit_test(qkv_cases),
        cmocka_unit_test(elementwise_and_norm_cases),
        cmocka_unit_test(gelu_over_its_whole_range),
        cmocka_unit_test(gather_and_embedding_cases),
        cmocka_unit_test(attention_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
