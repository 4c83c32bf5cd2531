#include "graph/graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/tensor_file.h"

static const char *const op_names[SQZ_OP_COUNT] = {
    [SQZ_OP_GATHER_ROWS] = "gather_rows",     [SQZ_OP_ADD] = "add",
    [SQZ_OP_LAYERNORM] = "layernorm",         [SQZ_OP_LINEAR] = "linear",
    [SQZ_OP_GELU] = "gelu",                   [SQZ_OP_TANH] = "tanh",
    [SQZ_OP_ATTN_SCORES] = "attn_scores",     [SQZ_OP_ATTN_KEY_MASK] = "attn_key_mask",
    [SQZ_OP_ATTN_SOFTMAX] = "attn_softmax",   [SQZ_OP_ATTN_CONTEXT] = "attn_context",
    [SQZ_OP_LINEAR_ATTENTION] = "linear_attention",
    [SQZ_OP_EMBED_LAYERNORM] = "embed_layernorm", [SQZ_OP_LINEAR_GELU] = "linear_gelu",
    [SQZ_OP_ADD_LAYERNORM] = "add_layernorm", [SQZ_OP_ATTENTION] = "attention",
    [SQZ_OP_FFN] = "ffn",                     [SQZ_OP_QKV] = "qkv",
    [SQZ_OP_FFN_ADD_LAYERNORM] = "ffn_add_layernorm",
};
_Static_assert(sizeof op_names / sizeof op_names[0] == SQZ_OP_COUNT, "op name table");

const char *sqz_op_name(sqz_op op)
{
    return (unsigned)op < SQZ_OP_COUNT && op_names[op] ? op_names[op] : "unknown_op";
}

bool sqz_op_is_fused(sqz_op op) { return op >= SQZ_OP_EMBED_LAYERNORM && op < SQZ_OP_COUNT; }

const char *sqz_dtype_name(sqz_dtype dtype)
{
    switch (dtype) {
    case SQZ_DTYPE_F32: return "f32";
    case SQZ_DTYPE_I32: return "i32";
    case SQZ_DTYPE_F16: return "f16";
    case SQZ_DTYPE_BF16: return "bf16";
    default: return "unknown_dtype";
    }
}

size_t sqz_dtype_size(sqz_dtype dtype) { return dtype == SQZ_DTYPE_F16 || dtype == SQZ_DTYPE_BF16 ? 2 : 4; }

bool sqz_dtype_is_float(sqz_dtype dtype)
{
    return dtype == SQZ_DTYPE_F32 || dtype == SQZ_DTYPE_F16 || dtype == SQZ_DTYPE_BF16;
}

sqz_dtype sqz_precision_activation_dtype(sqz_precision precision)
{
    return precision == SQZ_PRECISION_FP16   ? SQZ_DTYPE_F16
           : precision == SQZ_PRECISION_BF16 ? SQZ_DTYPE_BF16
                                             : SQZ_DTYPE_F32;
}

void sqz_dtype_to_f32(sqz_dtype dtype, const void *src, size_t n, float *dst)
{
    if (dtype != SQZ_DTYPE_F16 && dtype != SQZ_DTYPE_BF16) {
        memmove(dst, src, n * sizeof *dst);
        return;
    }
    const uint16_t *bits = src;
    for (size_t i = n; i-- > 0;) /* downwards: dst[i] covers values 2i and 2i + 1, already read */
        dst[i] = dtype == SQZ_DTYPE_F16 ? sqz_f16_to_f32(bits[i]) : sqz_bf16_to_f32(bits[i]);
}

void sqz_dtype_from_f32(sqz_dtype dtype, const float *src, size_t n, void *dst)
{
    if (dtype != SQZ_DTYPE_F16 && dtype != SQZ_DTYPE_BF16) {
        memmove(dst, src, n * sizeof *src);
        return;
    }
    uint16_t *bits = dst;
    for (size_t i = 0; i < n; i++)
        bits[i] = dtype == SQZ_DTYPE_F16 ? sqz_f32_to_f16(src[i]) : sqz_f32_to_bf16(src[i]);
}

void sqz_graph_init(sqz_graph *graph)
{
    memset(graph, 0, sizeof *graph);
    graph->in = (sqz_graph_inputs){-1, -1, -1, -1, -1, -1, -1, -1};
}

void sqz_graph_release(sqz_graph *graph)
{
    free(graph->tensors);
    free(graph->nodes);
    free(graph->outputs);
    sqz_graph_init(graph);
}

static void *dup_array(const void *src, size_t count, size_t size)
{
    if (count == 0)
        return NULL;
    void *dst = malloc(count * size);
    if (dst)
        memcpy(dst, src, count * size);
    return dst;
}

sqz_status sqz_graph_copy(const sqz_graph *src, sqz_graph *dst)
{
    sqz_graph_init(dst);
    dst->tensors = dup_array(src->tensors, src->n_tensors, sizeof *src->tensors);
    dst->nodes = dup_array(src->nodes, src->n_nodes, sizeof *src->nodes);
    dst->outputs = dup_array(src->outputs, src->n_outputs, sizeof *src->outputs);
    if ((src->n_tensors && !dst->tensors) || (src->n_nodes && !dst->nodes) ||
        (src->n_outputs && !dst->outputs)) {
        sqz_graph_release(dst);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory copying the graph");
    }
    dst->n_tensors = dst->cap_tensors = src->n_tensors;
    dst->n_nodes = dst->cap_nodes = src->n_nodes;
    dst->n_outputs = dst->cap_outputs = src->n_outputs;
    dst->in = src->in;
    return SQZ_OK;
}

/* Grows a dynamic array to hold one more element; false (message set) when out of memory. */
static bool grow(void **items, size_t *cap, size_t count, size_t size)
{
    if (count < *cap)
        return true;
    size_t new_cap = *cap ? *cap * 2 : 64;
    void *bigger = realloc(*items, new_cap * size);
    if (!bigger) {
        sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory growing the graph");
        return false;
    }
    *items = bigger;
    *cap = new_cap;
    return true;
}

int sqz_graph_add_tensor(sqz_graph *graph, const char *name, sqz_tensor_kind kind,
                         sqz_dtype dtype, sqz_extent extent, int64_t fixed_rows, int64_t cols)
{
    if (!grow((void **)&graph->tensors, &graph->cap_tensors, graph->n_tensors,
              sizeof *graph->tensors))
        return -1;
    sqz_tensor_desc *t = &graph->tensors[graph->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->dtype = dtype;
    t->extent = extent;
    t->fixed_rows = fixed_rows;
    t->cols = cols;
    t->weight_index = -1;
    t->producer = -1;
    return (int)graph->n_tensors++;
}

int sqz_graph_add_weight(sqz_graph *graph, const char *name, int weight_index, int64_t rows,
                         int64_t cols)
{
    int t = sqz_graph_add_tensor(graph, name, SQZ_TENSOR_WEIGHT, SQZ_DTYPE_F32,
                                 SQZ_EXTENT_FIXED, rows, cols);
    if (t >= 0)
        graph->tensors[t].weight_index = weight_index;
    return t;
}

int sqz_graph_add_node(sqz_graph *graph, sqz_op op, const char *name, const int *inputs,
                       int n_inputs, sqz_op_params params, sqz_extent out_extent,
                       int64_t out_cols)
{
    if (n_inputs > SQZ_NODE_MAX_INPUTS) {
        sqz_fail(SQZ_ERR_INTERNAL, "node '%s' has %d inputs, at most %d allowed", name,
                 n_inputs, SQZ_NODE_MAX_INPUTS);
        return -1;
    }
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] < -1 || inputs[i] >= (int)graph->n_tensors) {
            sqz_fail(SQZ_ERR_INTERNAL, "node '%s' input %d refers to tensor %d", name, i,
                     inputs[i]);
            return -1;
        }
    int out = sqz_graph_add_tensor(graph, name, SQZ_TENSOR_ACTIVATION, SQZ_DTYPE_F32,
                                   out_extent, 0, out_cols);
    if (out < 0)
        return -1;
    if (!grow((void **)&graph->nodes, &graph->cap_nodes, graph->n_nodes, sizeof *graph->nodes))
        return -1;
    sqz_node *node = &graph->nodes[graph->n_nodes];
    memset(node, 0, sizeof *node);
    node->op = op;
    snprintf(node->name, sizeof node->name, "%s", name);
    node->n_inputs = n_inputs;
    for (int i = 0; i < SQZ_NODE_MAX_INPUTS; i++)
        node->inputs[i] = i < n_inputs ? inputs[i] : -1;
    node->output = out;
    node->params = params;
    graph->tensors[out].producer = (int)graph->n_nodes;
    graph->n_nodes++;
    return out;
}

sqz_status sqz_graph_add_output(sqz_graph *graph, const char *name, int tensor,
                                int64_t col_begin, int64_t col_count, bool squeeze,
                                sqz_output_layout layout)
{
    if (tensor < 0 || tensor >= (int)graph->n_tensors)
        return sqz_fail(SQZ_ERR_INTERNAL, "output '%s' refers to tensor %d", name, tensor);
    if (!grow((void **)&graph->outputs, &graph->cap_outputs, graph->n_outputs,
              sizeof *graph->outputs))
        return SQZ_ERR_OUT_OF_MEMORY;
    sqz_graph_output *o = &graph->outputs[graph->n_outputs++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->tensor = tensor;
    o->col_begin = col_begin;
    o->col_count = col_count;
    o->squeeze = squeeze;
    o->layout = layout;
    graph->tensors[tensor].is_output = true;
    return SQZ_OK;
}

int64_t sqz_extent_rows(sqz_extent extent, int64_t fixed_rows, const sqz_run_dims *dims)
{
    switch (extent) {
    case SQZ_EXTENT_FIXED: return fixed_rows;
    case SQZ_EXTENT_TOKENS: return dims->tokens;
    case SQZ_EXTENT_SEQUENCES: return dims->sequences;
    case SQZ_EXTENT_SEQUENCES_PLUS_ONE: return dims->sequences + 1;
    case SQZ_EXTENT_SCORES: return dims->score_rows;
    case SQZ_EXTENT_SELECTED: return dims->selected;
    default: return 0;
    }
}

int64_t sqz_tensor_rows(const sqz_tensor_desc *tensor, const sqz_run_dims *dims)
{
    return sqz_extent_rows(tensor->extent, tensor->fixed_rows, dims);
}

/* ---- verification -------------------------------------------------------------------- */

typedef struct op_signature {
    int min_inputs, max_inputs;
    unsigned i32_inputs; /* bit i set: input i holds indices, not floats */
} op_signature;

static const op_signature signatures[SQZ_OP_COUNT] = {
    [SQZ_OP_GATHER_ROWS] = {2, 2, 0x1},   [SQZ_OP_ADD] = {2, 2, 0},
    [SQZ_OP_LAYERNORM] = {3, 3, 0},       [SQZ_OP_LINEAR] = {2, 3, 0},
    [SQZ_OP_GELU] = {1, 1, 0},            [SQZ_OP_TANH] = {1, 1, 0},
    [SQZ_OP_ATTN_SCORES] = {4, 4, 0xC},   [SQZ_OP_ATTN_KEY_MASK] = {4, 4, 0xE},
    [SQZ_OP_ATTN_SOFTMAX] = {3, 3, 0x6},  [SQZ_OP_ATTN_CONTEXT] = {4, 4, 0xC},
    [SQZ_OP_LINEAR_ATTENTION] = {5, 5, 0x18},
    [SQZ_OP_EMBED_LAYERNORM] = {8, 8, 0x7}, [SQZ_OP_LINEAR_GELU] = {3, 3, 0},
    [SQZ_OP_ADD_LAYERNORM] = {4, 4, 0},   [SQZ_OP_ATTENTION] = {6, 6, 0x38},
    [SQZ_OP_FFN] = {5, 5, 0},             [SQZ_OP_QKV] = {7, 7, 0},
    [SQZ_OP_FFN_ADD_LAYERNORM] = {8, 8, 0},
};

#define VERIFY(cond, ...)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            char detail_[512];                                                             \
            snprintf(detail_, sizeof detail_, __VA_ARGS__);                                \
            free(produced);                                                                \
            return sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: node %zu '%s' (%s): %s", n, \
                            node->name, sqz_op_name(node->op), detail_);                   \
        }                                                                                  \
    } while (0)

static bool same_rows(const sqz_tensor_desc *a, const sqz_tensor_desc *b)
{
    return a->extent == b->extent && (a->extent != SQZ_EXTENT_FIXED || a->fixed_rows == b->fixed_rows);
}

static bool is_row_vector(const sqz_tensor_desc *t, int64_t cols)
{
    return t->extent == SQZ_EXTENT_FIXED && t->fixed_rows == 1 && t->cols == cols;
}

static bool is_offsets(const sqz_tensor_desc *t)
{
    return t->dtype == SQZ_DTYPE_I32 && t->extent == SQZ_EXTENT_SEQUENCES_PLUS_ONE && t->cols == 1;
}

sqz_status sqz_graph_verify(const sqz_graph *graph)
{
    /* produced[t]: tensor t is available at this point of the topological order */
    bool *produced = calloc(graph->n_tensors ? graph->n_tensors : 1, sizeof *produced);
    if (!produced)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory verifying the graph");
    sqz_status status = SQZ_OK;
    const sqz_tensor_desc *first_value = NULL; /* the first activation or float input: its type is the plan's */
    for (size_t t = 0; t < graph->n_tensors; t++) {
        const sqz_tensor_desc *d = &graph->tensors[t];
        if (d->kind != SQZ_TENSOR_ACTIVATION)
            produced[t] = true;
        if ((d->kind == SQZ_TENSOR_WEIGHT && d->dtype != SQZ_DTYPE_F32) ||
            (d->kind == SQZ_TENSOR_ACTIVATION && !sqz_dtype_is_float(d->dtype)) ||
            (d->kind == SQZ_TENSOR_INPUT && d->dtype != SQZ_DTYPE_I32 && !sqz_dtype_is_float(d->dtype))) {
            status = sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: tensor '%s' has dtype %s (weights are f32, "
                              "activations of a float type, inputs i32 or a float type)", d->name,
                              sqz_dtype_name(d->dtype));
            goto done;
        }
        if (d->kind == SQZ_TENSOR_WEIGHT || d->dtype == SQZ_DTYPE_I32)
            continue;
        if (!first_value)
            first_value = d;
        if (d->dtype != first_value->dtype) {
            status = sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: tensor '%s' is %s but '%s' is %s: a plan's "
                              "activations and float inputs share one type", d->name, sqz_dtype_name(d->dtype),
                              first_value->name, sqz_dtype_name(first_value->dtype));
            goto done;
        }
        if (d->cols <= 0 || (d->extent == SQZ_EXTENT_FIXED && d->fixed_rows <= 0) ||
            (unsigned)d->extent >= SQZ_EXTENT_COUNT) {
            status = sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: tensor '%s' has a bad shape",
                              d->name);
            goto done;
        }
        if ((d->kind == SQZ_TENSOR_WEIGHT) != (d->weight_index >= 0)) {
            status = sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: tensor '%s' weight binding",
                              d->name);
            goto done;
        }
    }
    for (size_t n = 0; n < graph->n_nodes && status == SQZ_OK; n++) {
        const sqz_node *node = &graph->nodes[n];
        if ((unsigned)node->op >= SQZ_OP_COUNT) {
            free(produced);
            return sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: node %zu has unknown op %d", n,
                            (int)node->op);
        }
        const op_signature sig = signatures[node->op];
        const sqz_tensor_desc *in[SQZ_NODE_MAX_INPUTS] = {0};
        bool ok = node->n_inputs >= sig.min_inputs && node->n_inputs <= sig.max_inputs;
        if (!ok) {
            free(produced);
            return sqz_fail(SQZ_ERR_INTERNAL,
                            "graph verifier: node %zu '%s' (%s): has %d inputs, expected %d..%d",
                            n, node->name, sqz_op_name(node->op), node->n_inputs,
                            sig.min_inputs, sig.max_inputs);
        }
        for (int i = 0; i < node->n_inputs; i++) {
            int t = node->inputs[i];
            if (t < 0 || t >= (int)graph->n_tensors || !produced[t]) {
                free(produced);
                return sqz_fail(SQZ_ERR_INTERNAL,
                                "graph verifier: node %zu '%s' (%s): input %d (tensor %d) is "
                                "not produced before use",
                                n, node->name, sqz_op_name(node->op), i, t);
            }
            in[i] = &graph->tensors[t];
        }
        const int o = node->output;
        if (o < 0 || o >= (int)graph->n_tensors || produced[o] ||
            graph->tensors[o].kind != SQZ_TENSOR_ACTIVATION ||
            graph->tensors[o].producer != (int)n) {
            free(produced);
            return sqz_fail(SQZ_ERR_INTERNAL,
                            "graph verifier: node %zu '%s': output tensor %d is not a fresh "
                            "activation owned by this node",
                            n, node->name, o);
        }
        const sqz_tensor_desc *out = &graph->tensors[o];
        produced[o] = true;
        sqz_status s = SQZ_OK;
        /* shape rules per op */
        switch (node->op) {
        case SQZ_OP_GATHER_ROWS:
            s = (in[0]->dtype == SQZ_DTYPE_I32 && in[0]->cols == 1 && sqz_dtype_is_float(in[1]->dtype) &&
                 same_rows(out, in[0]) && out->cols == in[1]->cols) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_ADD:
            s = (same_rows(in[0], in[1]) && in[0]->cols == in[1]->cols && same_rows(out, in[0]) &&
                 out->cols == in[0]->cols) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_LAYERNORM:
            s = (is_row_vector(in[1], in[0]->cols) && is_row_vector(in[2], in[0]->cols) &&
                 same_rows(out, in[0]) && out->cols == in[0]->cols &&
                 node->params.layernorm.eps > 0.0f) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_LINEAR: {
            int g = node->params.linear.groups;
            VERIFY(g >= 1 && in[0]->cols % g == 0 && out->cols % g == 0,
                   "groups %d do not divide in %lld / out %lld channels", g,
                   (long long)in[0]->cols, (long long)out->cols);
            VERIFY(in[1]->extent == SQZ_EXTENT_FIXED && in[1]->fixed_rows == out->cols &&
                       in[1]->cols == in[0]->cols / g,
                   "weight is [%lld, %lld], expected [%lld, %lld]", (long long)in[1]->fixed_rows,
                   (long long)in[1]->cols, (long long)out->cols, (long long)(in[0]->cols / g));
            VERIFY(node->n_inputs < 3 || is_row_vector(in[2], out->cols), "bias is not [1, %lld]",
                   (long long)out->cols);
            s = same_rows(out, in[0]) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        case SQZ_OP_GELU:
        case SQZ_OP_TANH:
            s = (same_rows(out, in[0]) && out->cols == in[0]->cols) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_ATTN_SCORES:
        case SQZ_OP_ATTN_CONTEXT: {
            int h = node->params.attention.heads, d = node->params.attention.head_dim;
            bool scores = node->op == SQZ_OP_ATTN_SCORES;
            const sqz_tensor_desc *tok = scores ? in[0] : in[1];
            const sqz_tensor_desc *other = scores ? in[1] : in[0];
            VERIFY(h >= 1 && d >= 1 && tok->extent == SQZ_EXTENT_TOKENS && tok->cols == (int64_t)h * d,
                   "token operand must be [tokens, heads*head_dim = %d]", h * d);
            if (scores)
                VERIFY(other->extent == SQZ_EXTENT_TOKENS && other->cols == tok->cols &&
                           out->extent == SQZ_EXTENT_SCORES && out->cols == h,
                       "keys must match queries and the output must be [score_rows, heads]");
            else
                VERIFY(other->extent == SQZ_EXTENT_SCORES && other->cols == h &&
                           out->extent == SQZ_EXTENT_TOKENS && out->cols == (int64_t)h * d,
                       "probabilities must be [score_rows, heads], output [tokens, %d]", h * d);
            s = (is_offsets(in[2]) && is_offsets(in[3])) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        case SQZ_OP_ATTN_KEY_MASK:
            VERIFY(in[1]->dtype == SQZ_DTYPE_I32 && in[1]->extent == SQZ_EXTENT_TOKENS &&
                       in[1]->cols == 1,
                   "key_valid must be i32 [tokens, 1]");
            s = (in[0]->extent == SQZ_EXTENT_SCORES && same_rows(out, in[0]) &&
                 out->cols == in[0]->cols && is_offsets(in[2]) && is_offsets(in[3]))
                    ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_ATTN_SOFTMAX:
            s = (in[0]->extent == SQZ_EXTENT_SCORES && same_rows(out, in[0]) &&
                 out->cols == in[0]->cols && is_offsets(in[1]) && is_offsets(in[2]))
                    ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_EMBED_LAYERNORM: {
            bool fits = out->extent == SQZ_EXTENT_TOKENS && node->params.layernorm.eps > 0.0f;
            for (int i = 0; i < 3; i++)
                fits = fits && in[i]->extent == SQZ_EXTENT_TOKENS && in[i]->cols == 1 &&
                     in[3 + i]->extent == SQZ_EXTENT_FIXED && in[3 + i]->cols == out->cols;
            s = fits && is_row_vector(in[6], out->cols) && is_row_vector(in[7], out->cols)
                    ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        case SQZ_OP_LINEAR_GELU: {
            int g = node->params.linear.groups;
            VERIFY(g >= 1 && in[0]->cols % g == 0 && out->cols % g == 0 &&
                       in[1]->extent == SQZ_EXTENT_FIXED && in[1]->fixed_rows == out->cols &&
                       in[1]->cols == in[0]->cols / g && is_row_vector(in[2], out->cols),
                   "weight [%lld, %lld] or bias does not fit %lld -> %lld channels in %d groups",
                   (long long)in[1]->fixed_rows, (long long)in[1]->cols, (long long)in[0]->cols,
                   (long long)out->cols, g);
            s = same_rows(out, in[0]) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        case SQZ_OP_FFN:
        case SQZ_OP_FFN_ADD_LAYERNORM: {
            const bool ln = node->op == SQZ_OP_FFN_ADD_LAYERNORM;
            const int g = ln ? node->params.ffn_layernorm.groups : node->params.linear.groups;
            const int64_t mid = in[1]->fixed_rows;
            VERIFY(g >= 1 && in[0]->cols % g == 0 && mid % g == 0 && out->cols % g == 0 &&
                       in[1]->extent == SQZ_EXTENT_FIXED && in[1]->cols == in[0]->cols / g &&
                       is_row_vector(in[2], mid) && in[3]->extent == SQZ_EXTENT_FIXED &&
                       in[3]->fixed_rows == out->cols && in[3]->cols == mid / g && is_row_vector(in[4], out->cols),
                   "weights [%lld, %lld] and [%lld, %lld] or biases do not fit %lld -> %lld -> %lld channels in %d "
                   "groups", (long long)in[1]->fixed_rows, (long long)in[1]->cols, (long long)in[3]->fixed_rows,
                   (long long)in[3]->cols, (long long)in[0]->cols, (long long)mid, (long long)out->cols, g);
            VERIFY(!ln || (same_rows(in[5], in[0]) && in[5]->cols == out->cols && is_row_vector(in[6], out->cols) &&
                           is_row_vector(in[7], out->cols) && node->params.ffn_layernorm.eps > 0.0f),
                   "the residual must be [rows of x, %lld], gamma and beta [1, %lld], eps > 0", (long long)out->cols,
                   (long long)out->cols);
            s = same_rows(out, in[0]) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        case SQZ_OP_QKV: {
            const int g = node->params.linear.groups;
            const int64_t width = out->cols / 3;
            bool fits = g >= 1 && out->cols % 3 == 0 && in[0]->cols % g == 0 && width % g == 0;
            for (int part = 0; part < 3 && fits; part++)
                fits = in[1 + 2 * part]->extent == SQZ_EXTENT_FIXED && in[1 + 2 * part]->fixed_rows == width &&
                       in[1 + 2 * part]->cols == in[0]->cols / g && is_row_vector(in[2 + 2 * part], width);
            VERIFY(fits, "weights or biases do not fit %lld -> 3 x %lld channels in %d groups",
                   (long long)in[0]->cols, (long long)width, g);
            s = same_rows(out, in[0]) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        case SQZ_OP_ADD_LAYERNORM:
            s = (same_rows(in[0], in[1]) && in[0]->cols == in[1]->cols &&
                 is_row_vector(in[2], in[0]->cols) && is_row_vector(in[3], in[0]->cols) &&
                 same_rows(out, in[0]) && out->cols == in[0]->cols &&
                 node->params.layernorm.eps > 0.0f) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        case SQZ_OP_ATTENTION:
        case SQZ_OP_LINEAR_ATTENTION: {
            int h = node->params.attention.heads, d = node->params.attention.head_dim;
            const int qkv_groups = node->params.attention.qkv_groups;
            bool fits = h >= 1 && d >= 1 && out->extent == SQZ_EXTENT_TOKENS && out->cols == (int64_t)h * d;
            if (qkv_groups) /* one SQZ_OP_QKV output */
                VERIFY(node->op == SQZ_OP_ATTENTION && qkv_groups > 0 && node->inputs[1] == node->inputs[0] &&
                           node->inputs[2] == node->inputs[0] && in[0]->cols == 3 * out->cols &&
                           out->cols % qkv_groups == 0,
                       "a fused q/k/v input must be one [tokens, 3 x %lld] tensor of %d groups",
                       (long long)out->cols, qkv_groups);
            for (int i = 0; i < 3; i++)
                fits = fits && in[i]->extent == SQZ_EXTENT_TOKENS && in[i]->cols == out->cols * (qkv_groups ? 3 : 1);
            fits = fits && in[3]->extent == SQZ_EXTENT_TOKENS && in[3]->cols == 1 && is_offsets(in[4]);
            s = fits && (node->op == SQZ_OP_LINEAR_ATTENTION || is_offsets(in[5])) ? SQZ_OK : SQZ_ERR_INTERNAL;
            break;
        }
        default: s = SQZ_ERR_INTERNAL; break;
        }
        VERIFY(s == SQZ_OK, "operand or output shapes do not fit the op (output '%s' [%d rows, %lld])",
               out->name, (int)out->extent, (long long)out->cols);
        for (int i = 0; i < node->n_inputs; i++) {
            bool index_input = (sig.i32_inputs >> i) & 1u;
            VERIFY(index_input == (in[i]->dtype == SQZ_DTYPE_I32), "input %d has dtype %s", i,
                   sqz_dtype_name(in[i]->dtype));
        }
        status = SQZ_OK;
    }
    for (size_t o = 0; o < graph->n_outputs && status == SQZ_OK; o++) {
        const sqz_graph_output *go = &graph->outputs[o];
        const sqz_tensor_desc *t = &graph->tensors[go->tensor];
        if (!produced[go->tensor] || go->col_begin < 0 || go->col_count < 1 ||
            go->col_begin + go->col_count > t->cols || !t->is_output)
            status = sqz_fail(SQZ_ERR_INTERNAL, "graph verifier: output '%s' is malformed",
                              go->name);
    }
done:
    free(produced);
    return status;
}

double sqz_node_flops(const sqz_graph *graph, const sqz_node *node, const sqz_run_dims *dims)
{
    const sqz_tensor_desc *out = &graph->tensors[node->output];
    double rows = (double)sqz_tensor_rows(out, dims);
    switch (node->op) {
    case SQZ_OP_LINEAR:
    case SQZ_OP_LINEAR_GELU:
    case SQZ_OP_QKV: {
        const sqz_tensor_desc *w = &graph->tensors[node->inputs[1]];
        return 2.0 * rows * (double)out->cols * (double)w->cols;
    }
    case SQZ_OP_FFN:
    case SQZ_OP_FFN_ADD_LAYERNORM: { /* the LayerNorm not counted, as for ADD_LAYERNORM */
        const sqz_tensor_desc *w1 = &graph->tensors[node->inputs[1]], *w2 = &graph->tensors[node->inputs[3]];
        return 2.0 * rows * ((double)w1->fixed_rows * (double)w1->cols + (double)out->cols * (double)w2->cols);
    }
    case SQZ_OP_ATTN_SCORES:
    case SQZ_OP_ATTN_CONTEXT:
        return 2.0 * (double)dims->score_rows * node->params.attention.heads *
               node->params.attention.head_dim;
    case SQZ_OP_ATTENTION:
        return 4.0 * (double)dims->score_rows * node->params.attention.heads *
               node->params.attention.head_dim;
    case SQZ_OP_LINEAR_ATTENTION: /* the key-value sums, then per query numerator and denominator */
        return 4.0 * (double)dims->tokens * node->params.attention.heads *
               (double)node->params.attention.head_dim * (node->params.attention.head_dim + 1);
    default: return 0.0;
    }
}
