/* cpu_ref as a backend: host buffers and one plain function call per node. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ref/cpu_ref_ops.h"
#include "runtime/backend.h"
#include "runtime/error.h"

struct sqz_buffer {
    size_t bytes;
    unsigned char *data;
};

static sqz_status ref_list_devices(char **text)
{
    return sqz_text_append(text, "cpu_ref  0  host CPU, scalar reference (always available)\n");
}

static sqz_status ref_create(void **ctx, const char *device, const char *settings)
{
    static const char *const none[] = {NULL};
    sqz_status st = sqz_settings_check(settings, "cpu_ref", none);
    if (st != SQZ_OK)
        return st;
    if (device && *device && strcmp(device, "0") != 0 && strcmp(device, "cpu") != 0)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cpu_ref has one device (the host); got '%s'",
                        device);
    *ctx = NULL; /* stateless */
    return SQZ_OK;
}

static const char *ref_describe(void *ctx) { return "host CPU, scalar reference, 1 thread"; }

static void ref_destroy(void *ctx) { (void)ctx; }

static sqz_status ref_buffer_alloc(void *ctx, size_t bytes, sqz_buffer **out)
{
    sqz_buffer *b = malloc(sizeof *b);
    unsigned char *data = calloc(bytes ? bytes : 1, 1);
    if (!b || !data) {
        free(b);
        free(data);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cpu_ref: cannot allocate %zu bytes", bytes);
    }
    b->bytes = bytes;
    b->data = data;
    *out = b;
    return SQZ_OK;
}

static void ref_buffer_free(void *ctx, sqz_buffer *b)
{
    if (b)
        free(b->data);
    free(b);
}

static sqz_status ref_upload(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu_ref: upload of %zu bytes at %zu overruns a %zu-byte "
                        "buffer", bytes, offset, dst->bytes);
    if (bytes)
        memcpy(dst->data + offset, src, bytes);
    return SQZ_OK;
}

static sqz_status ref_download(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes)
{
    if (offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu_ref: download of %zu bytes at %zu overruns a "
                        "%zu-byte buffer", bytes, offset, src->bytes);
    if (bytes)
        memcpy(dst, src->data + offset, bytes);
    return SQZ_OK;
}

static void *tensor_data(const sqz_binding *b, int tensor)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[tensor];
    if (d->kind == SQZ_TENSOR_WEIGHT)
        return b->weights->data + b->weight_offsets[d->weight_index];
    return b->arena->data + b->plan->offsets[tensor];
}

static sqz_status ref_launch(void *ctx, const sqz_binding *b, const sqz_node *node,
                             const sqz_run_dims *dims)
{
    const sqz_graph *g = &b->plan->graph;
    const sqz_tensor_desc *out_desc = &g->tensors[node->output];
    const int64_t rows = sqz_tensor_rows(out_desc, dims), cols = out_desc->cols;
    sqz_status st = sqz_backend_check_dtype("cpu_ref", b, node, SQZ_DTYPE_F32); /* the fp32 oracle */
    if (st != SQZ_OK)
        return st;
    float *out = tensor_data(b, node->output);
    void *in[SQZ_NODE_MAX_INPUTS] = {0};
    const sqz_tensor_desc *in_desc[SQZ_NODE_MAX_INPUTS] = {0};
    for (int i = 0; i < node->n_inputs; i++)
        if (node->inputs[i] >= 0) {
            in[i] = tensor_data(b, node->inputs[i]);
            in_desc[i] = &g->tensors[node->inputs[i]];
        }
    sqz_ref_sequences seqs = {0};
    if (node->op >= SQZ_OP_ATTN_SCORES && node->op <= SQZ_OP_ATTN_CONTEXT) {
        int offsets_input = node->op == SQZ_OP_ATTN_SOFTMAX ? 1 : 2;
        seqs.seq_offsets = in[offsets_input];
        seqs.score_offsets = in[offsets_input + 1];
        seqs.n = dims->sequences;
        if (!sqz_ref_sequences_valid(&seqs, dims->tokens, dims->score_rows))
            return sqz_fail(SQZ_ERR_INTERNAL, "cpu_ref: node '%s': sequence offsets are "
                            "inconsistent with %lld tokens", node->name, (long long)dims->tokens);
    }
    if (node->op == SQZ_OP_LINEAR_ATTENTION) {
        seqs.seq_offsets = in[4];
        seqs.n = dims->sequences;
        if (!sqz_ref_sequences_valid(&seqs, dims->tokens, 0))
            return sqz_fail(SQZ_ERR_INTERNAL, "cpu_ref: node '%s': sequence offsets are "
                            "inconsistent with %lld tokens", node->name, (long long)dims->tokens);
    }
    const sqz_op_params *p = &node->params;
    switch (node->op) {
    case SQZ_OP_GATHER_ROWS:
        if (!sqz_ref_gather_rows(in[0], rows, in[1], sqz_tensor_rows(in_desc[1], dims), cols, out))
            return sqz_fail(SQZ_ERR_INPUT, "cpu_ref: node '%s': an index is outside the %lld rows "
                            "of '%s'", node->name, (long long)sqz_tensor_rows(in_desc[1], dims),
                            in_desc[1]->name);
        break;
    case SQZ_OP_ADD: sqz_ref_add(in[0], in[1], rows * cols, out); break;
    case SQZ_OP_LAYERNORM:
        sqz_ref_layernorm(in[0], rows, cols, in[1], in[2], p->layernorm.eps, out);
        break;
    case SQZ_OP_LINEAR:
        sqz_ref_linear(in[0], rows, in_desc[0]->cols, in[1], node->n_inputs > 2 ? in[2] : NULL, cols,
                       p->linear.groups, out);
        break;
    case SQZ_OP_GELU: sqz_ref_gelu(in[0], rows * cols, out); break;
    case SQZ_OP_TANH: sqz_ref_tanh(in[0], rows * cols, out); break;
    case SQZ_OP_ATTN_SCORES:
        sqz_ref_attn_scores(in[0], in[1], p->attention.heads, p->attention.head_dim,
                            p->attention.scale, &seqs, out);
        break;
    case SQZ_OP_ATTN_KEY_MASK:
        sqz_ref_attn_key_mask(in[0], in[1], p->attention.heads, &seqs, out);
        break;
    case SQZ_OP_ATTN_SOFTMAX: sqz_ref_attn_softmax(in[0], p->attention.heads, &seqs, out); break;
    case SQZ_OP_ATTN_CONTEXT:
        sqz_ref_attn_context(in[0], in[1], p->attention.heads, p->attention.head_dim, &seqs, out);
        break;
    case SQZ_OP_LINEAR_ATTENTION:
        if (!sqz_ref_linear_attention(in[0], in[1], in[2], in[3], p->attention.heads, p->attention.head_dim,
                                      &seqs, out))
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cpu_ref: node '%s': out of memory", node->name);
        break;
    default:
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cpu_ref: node '%s': op %s is not implemented",
                        node->name, sqz_op_name(node->op));
    }
    return SQZ_OK;
}

/* The "device" is host memory: the layout is the host implementation's, and the copy back
 * is done at once (run_wait has nothing left to wait for). */
static sqz_status ref_format_output(void *ctx, const sqz_binding *b, const sqz_output_format *f, sqz_buffer *dst,
                                    size_t offset)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[f->tensor];
    const size_t bytes = (size_t)(f->rows * f->col_count) * (f->half ? 2 : 4);
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu_ref: output of %zu bytes at %zu overruns a %zu-byte buffer", bytes,
                        offset, dst->bytes);
    const sqz_graph_inputs *in = &b->plan->graph.in;
    sqz_format_output_host(f, tensor_data(b, f->tensor), d->cols, tensor_data(b, in->seq_offsets),
                           tensor_data(b, in->positions), tensor_data(b, in->key_valid), dst->data + offset);
    return SQZ_OK;
}

static sqz_status ref_run_download(void *ctx, int slot, sqz_buffer *src, size_t offset, void *host, size_t bytes)
{
    (void)slot;
    return ref_download(ctx, src, offset, host, bytes);
}

static sqz_status ref_run_wait(void *ctx, int slot)
{
    (void)ctx, (void)slot;
    return SQZ_OK;
}

static void *ref_device_address(void *ctx, sqz_buffer *b)
{
    (void)ctx;
    return b->data;
}

static bool ref_supports(void *ctx, const sqz_node *node)
{
    /* the reference never fuses: it runs the plain graph node by node */
    return (unsigned)node->op < SQZ_OP_COUNT && !sqz_op_is_fused(node->op);
}

const sqz_backend_ops sqz_cpu_ref_backend = {
    .api_version = SQZ_BACKEND_API_VERSION,
    .name = "cpu_ref",
    .probe = NULL,
    .list_devices = ref_list_devices,
    .create = ref_create,
    .destroy = ref_destroy,
    .describe = ref_describe,
    .buffer_alloc = ref_buffer_alloc,
    .buffer_free = ref_buffer_free,
    .upload = ref_upload,
    .download = ref_download,
    .supports = ref_supports,
    .launch = ref_launch,
    .synchronize = NULL,
    .format_output = ref_format_output,
    .run_download = ref_run_download,
    .run_wait = ref_run_wait,
    .device_address = ref_device_address,
};
