/* The CUDA backend: the shared device code (kernels/sqz_kernels.cl compiled as CUDA through
 * kernels/sqz_dialect_cuda.cuh) for every op, and cuBLAS strided-batched GEMMs for the
 * grouped linear layers (one call covers all groups). Every CUDA and cuBLAS status is
 * checked and reported with the call, the library's error name and string, and file:line.
 * Launches go to one stream with no synchronisation between them. */
#include "kernels/sqz_dialect_cuda.cuh"

#include "kernels/sqz_kernels.cl"

/* y[r, o] = act(y[r, o] + bias[o]) after a cuBLAS GEMM; act 1 = exact GELU */
__kernel void sqz_bias_act(TENSOR(float, y), TENSOR(const float, bias), int rows, int cols,
                           int has_bias, int act)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)rows * cols)
        return;
    float v = AT(y)[i] + (has_bias ? AT(bias)[i % cols] : 0.0f);
    AT(y)[i] = act ? sqz_gelu_f(v) : v;
}

#undef lo
#undef hi
#undef rsqrt

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "runtime/backend.h"
#include "runtime/error.h"
}

#define CUDA_TRY(call)                                                                      \
    do {                                                                                    \
        cudaError_t err_ = (call);                                                          \
        if (err_ != cudaSuccess)                                                            \
            return sqz_fail(err_ == cudaErrorMemoryAllocation ? SQZ_ERR_OUT_OF_MEMORY       \
                                                               : SQZ_ERR_BACKEND,           \
                            "cuda: %s failed: %s (%s) at %s:%d", #call,                     \
                            cudaGetErrorName(err_), cudaGetErrorString(err_), __FILE__,     \
                            __LINE__);                                                      \
    } while (0)

#define CUBLAS_TRY(call)                                                                    \
    do {                                                                                    \
        cublasStatus_t st_ = (call);                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return sqz_fail(st_ == CUBLAS_STATUS_ALLOC_FAILED ? SQZ_ERR_OUT_OF_MEMORY       \
                                                             : SQZ_ERR_BACKEND,             \
                            "cuda: %s failed: %s (%s) at %s:%d", #call,                     \
                            cublasGetStatusName(st_), cublasGetStatusString(st_), __FILE__, \
                            __LINE__);                                                      \
    } while (0)

/* After a kernel launch: configuration errors now, execution errors at the next sync
 * (or at once with SQZ_CUDA_SYNC=1, for debugging). */
#define LAUNCH_CHECK(kernel_name, node)                                                            \
    do {                                                                                    \
        cudaError_t err_ = cudaGetLastError();                                              \
        if (err_ == cudaSuccess && c->sync_each)                                            \
            err_ = cudaStreamSynchronize(c->stream);                                        \
        if (err_ != cudaSuccess)                                                            \
            return sqz_fail(SQZ_ERR_BACKEND, "cuda: kernel %s for node '%s' failed: %s (%s) "  \
                            "at %s:%d", kernel_name, (node)->name, cudaGetErrorName(err_),         \
                            cudaGetErrorString(err_), __FILE__, __LINE__);                  \
    } while (0)

struct sqz_buffer {
    void *ptr;
    size_t bytes;
};

struct cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    bool sync_each;
    char description[512];
};

static sqz_status cuda_probe_impl(void)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
        return sqz_fail(SQZ_ERR_NO_DEVICE, "cuda: no usable device (cudaGetDeviceCount: %s: %s)",
                        cudaGetErrorName(err), cudaGetErrorString(err));
    if (count == 0)
        return sqz_fail(SQZ_ERR_NO_DEVICE, "cuda: the driver reports no CUDA device");
    return SQZ_OK;
}

extern "C" sqz_status sqz_cuda_probe(void) { return cuda_probe_impl(); }

extern "C" sqz_status sqz_cuda_list_devices(char **text)
{
    if (cuda_probe_impl() != SQZ_OK)
        return sqz_text_append(text, "cuda     -  %s\n", sqz_last_error());
    int count = 0;
    cudaGetDeviceCount(&count);
    for (int i = 0; i < count; i++) {
        cudaDeviceProp prop;
        cudaError_t err = cudaGetDeviceProperties(&prop, i);
        sqz_status st = err != cudaSuccess
            ? sqz_text_append(text, "cuda     %d  (cudaGetDeviceProperties: %s)\n", i, cudaGetErrorString(err))
            : sqz_text_append(text, "cuda     %d  %s [GPU] (sm_%d%d): %.1f GiB, %d SMs, %.0f MB L2\n", i,
                              prop.name, prop.major, prop.minor, prop.totalGlobalMem / 1073741824.0,
                              prop.multiProcessorCount, prop.l2CacheSize / 1048576.0);
        if (st != SQZ_OK)
            return st;
    }
    return SQZ_OK;
}

static void cuda_destroy(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!c)
        return;
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static sqz_status select_device(const char *want, int *out)
{
    int count = 0;
    CUDA_TRY(cudaGetDeviceCount(&count));
    if (!want || !*want) {
        *out = 0;
        return SQZ_OK;
    }
    char *end = NULL;
    long index = strtol(want, &end, 10);
    if (end && *end == '\0' && index >= 0 && index < count) {
        *out = (int)index;
        return SQZ_OK;
    }
    for (int i = 0; i < count; i++) {
        cudaDeviceProp prop;
        CUDA_TRY(cudaGetDeviceProperties(&prop, i));
        if (strstr(prop.name, want)) {
            *out = i;
            return SQZ_OK;
        }
    }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cuda: no device matches '%s' (%d device(s); see "
                    "`sqz devices`)", want, count);
}

static sqz_status cuda_create_checked(cuda_ctx *c, const char *device)
{
    sqz_status st = cuda_probe_impl();
    if (st == SQZ_OK)
        st = select_device(device, &c->device);
    if (st != SQZ_OK)
        return st;
    CUDA_TRY(cudaSetDevice(c->device));
    CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&c->blas));
    CUBLAS_TRY(cublasSetStream(c->blas, c->stream));
    /* fp32 means fp32: no TF32 unless a precision option asks for it */
    CUBLAS_TRY(cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH));
    const char *sync = getenv("SQZ_CUDA_SYNC");
    c->sync_each = sync && *sync && strcmp(sync, "0") != 0;
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, c->device));
    int driver = 0;
    cudaDriverGetVersion(&driver);
    snprintf(c->description, sizeof c->description, "%s (sm_%d%d, driver CUDA %d.%d), %.1f GiB",
             prop.name, prop.major, prop.minor, driver / 1000, driver % 1000 / 10,
             prop.totalGlobalMem / 1073741824.0);
    return SQZ_OK;
}

static sqz_status cuda_create(void **ctx, const char *device)
{
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!c)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    sqz_status st = cuda_create_checked(c, device);
    if (st != SQZ_OK) {
        cuda_destroy(c);
        return st;
    }
    *ctx = c;
    return SQZ_OK;
}

static const char *cuda_describe(void *ctx) { return ((cuda_ctx *)ctx)->description; }

static sqz_status cuda_buffer_alloc(void *ctx, size_t bytes, sqz_buffer **out)
{
    sqz_buffer *b = (sqz_buffer *)calloc(1, sizeof *b);
    if (!b)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    cudaError_t err = cudaMalloc(&b->ptr, bytes ? bytes : 4);
    if (err != cudaSuccess) {
        free(b);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cuda: cudaMalloc(%zu bytes) failed: %s (%s)", bytes,
                        cudaGetErrorName(err), cudaGetErrorString(err));
    }
    b->bytes = bytes;
    *out = b;
    return SQZ_OK;
}

static void cuda_buffer_free(void *ctx, sqz_buffer *b)
{
    if (b && b->ptr)
        cudaFree(b->ptr);
    free(b);
}

static sqz_status cuda_upload(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cuda: upload of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, dst->bytes);
    if (!bytes)
        return SQZ_OK;
    /* the caller may reuse `src` on return: copy synchronously with respect to it */
    CUDA_TRY(cudaMemcpyAsync((char *)dst->ptr + offset, src, bytes, cudaMemcpyHostToDevice, c->stream));
    CUDA_TRY(cudaStreamSynchronize(c->stream));
    return SQZ_OK;
}

static sqz_status cuda_download(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cuda: download of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, src->bytes);
    if (!bytes)
        return SQZ_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, (const char *)src->ptr + offset, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_TRY(cudaStreamSynchronize(c->stream));
    return SQZ_OK;
}

static sqz_status cuda_synchronize(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    CUDA_TRY(cudaStreamSynchronize(c->stream));
    return SQZ_OK;
}

static bool cuda_supports(void *ctx, const sqz_node *node)
{
    if (node->op == SQZ_OP_ATTENTION)
        return node->params.attention.head_dim <= SQZ_MAX_HEAD_DIM;
    return (unsigned)node->op < SQZ_OP_COUNT;
}

/* (base, element offset) of a tensor, as every kernel takes them */
struct tensor_ref {
    float *base;
    ulong offset;
};

static tensor_ref ref(const sqz_binding *b, int tensor)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[tensor];
    if (d->kind == SQZ_TENSOR_WEIGHT)
        return {(float *)b->weights->ptr, (ulong)(b->weight_offsets[d->weight_index] / 4)};
    return {(float *)b->arena->ptr, (ulong)(b->plan->offsets[tensor] / 4)};
}

#define F(t) ref(b, t).base, ref(b, t).offset
#define I(t) (const int *)ref(b, t).base, ref(b, t).offset

static unsigned blocks(size_t n, unsigned per_block) { return (unsigned)((n + per_block - 1) / per_block); }

/* Grouped linear as one strided-batched GEMM over the groups, on row-major activations:
 * in cuBLAS's column-major view, Y^T[g] (cout_g x rows) = W_g (stored [cout_g][cin_g], so
 * transposed) x X^T[g] (cin_g x rows, leading dimension cin), batch stride cin_g in X and
 * cout_g in Y. Bias and GELU follow in one elementwise kernel. */
static sqz_status linear(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    const sqz_graph *g = &b->plan->graph;
    const int64_t cin = g->tensors[node->inputs[0]].cols, cout = g->tensors[node->output].cols;
    const int groups = node->params.linear.groups;
    const int64_t cin_g = cin / groups, cout_g = cout / groups;
    tensor_ref x = ref(b, node->inputs[0]), w = ref(b, node->inputs[1]), y = ref(b, node->output);
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)cout_g, (int)rows,
                                         (int)cin_g, &one, w.base + w.offset, (int)cin_g, cout_g * cin_g,
                                         x.base + x.offset, (int)cin, cin_g, &zero, y.base + y.offset,
                                         (int)cout, cout_g, groups));
    const bool has_bias = node->n_inputs > 2 && node->inputs[2] >= 0;
    const int act = node->op == SQZ_OP_LINEAR_GELU;
    if (has_bias || act) {
        tensor_ref bias = has_bias ? ref(b, node->inputs[2]) : w;
        const size_t n = (size_t)(rows * cout);
        sqz_bias_act<<<blocks(n, 256), 256, 0, c->stream>>>(y.base, y.offset, bias.base, bias.offset,
                                                            (int)rows, (int)cout, has_bias, act);
        LAUNCH_CHECK("sqz_bias_act", node);
    }
    return SQZ_OK;
}

static sqz_status cuda_launch(void *ctx, const sqz_binding *b, const sqz_node *node,
                              const sqz_run_dims *dims)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    const sqz_graph *g = &b->plan->graph;
    const sqz_tensor_desc *out = &g->tensors[node->output];
    const int64_t rows = sqz_tensor_rows(out, dims), cols = out->cols;
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    const int T = (int)dims->tokens, S = (int)dims->sequences;
    if (rows == 0)
        return SQZ_OK;
    switch (node->op) {
    case SQZ_OP_LINEAR:
    case SQZ_OP_LINEAR_GELU:
        return linear(c, b, node, rows);
    case SQZ_OP_GATHER_ROWS: {
        dim3 block(128, 1), grid(blocks((size_t)cols, 128), (unsigned)rows);
        sqz_gather_rows<<<grid, block, 0, c->stream>>>(I(in[0]), F(in[1]), F(node->output), (int)rows,
                                                       (int)cols, (int)sqz_tensor_rows(&g->tensors[in[1]], dims));
        LAUNCH_CHECK("sqz_gather_rows", node);
        return SQZ_OK;
    }
    case SQZ_OP_ADD:
    case SQZ_OP_GELU:
    case SQZ_OP_TANH: {
        const ulong n = (ulong)(rows * cols);
        if (node->op == SQZ_OP_ADD)
            sqz_add<<<blocks(n, 256), 256, 0, c->stream>>>(F(in[0]), F(in[1]), F(node->output), n);
        else if (node->op == SQZ_OP_GELU)
            sqz_gelu<<<blocks(n, 256), 256, 0, c->stream>>>(F(in[0]), F(node->output), n);
        else
            sqz_tanh<<<blocks(n, 256), 256, 0, c->stream>>>(F(in[0]), F(node->output), n);
        LAUNCH_CHECK(sqz_op_name(node->op), node);
        return SQZ_OK;
    }
    case SQZ_OP_LAYERNORM:
        sqz_layernorm<<<blocks((size_t)rows, 128), 128, 0, c->stream>>>(F(in[0]), F(in[1]), F(in[2]),
                                                                        F(node->output), (int)rows, (int)cols,
                                                                        p->layernorm.eps);
        LAUNCH_CHECK("sqz_layernorm", node);
        return SQZ_OK;
    case SQZ_OP_ADD_LAYERNORM:
        sqz_add_layernorm<<<blocks((size_t)rows, 128), 128, 0, c->stream>>>(
            F(in[0]), F(in[1]), F(in[2]), F(in[3]), F(node->output), (int)rows, (int)cols, p->layernorm.eps);
        LAUNCH_CHECK("sqz_add_layernorm", node);
        return SQZ_OK;
    case SQZ_OP_EMBED_LAYERNORM:
        sqz_embed_layernorm<<<blocks((size_t)rows, 128), 128, 0, c->stream>>>(
            I(in[0]), I(in[1]), I(in[2]), F(in[3]), F(in[4]), F(in[5]), F(in[6]), F(in[7]), F(node->output),
            (int)rows, (int)cols, (int)g->tensors[in[3]].fixed_rows, (int)g->tensors[in[4]].fixed_rows,
            (int)g->tensors[in[5]].fixed_rows, p->layernorm.eps);
        LAUNCH_CHECK("sqz_embed_layernorm", node);
        return SQZ_OK;
    case SQZ_OP_ATTN_SCORES: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads, (unsigned)dims->max_len);
        sqz_attn_scores<<<grid, block, 0, c->stream>>>(F(in[0]), F(in[1]), I(in[2]), I(in[3]), F(node->output),
                                                       T, S, p->attention.heads, p->attention.head_dim,
                                                       p->attention.scale, (int)dims->max_len);
        LAUNCH_CHECK("sqz_attn_scores", node);
        return SQZ_OK;
    }
    case SQZ_OP_ATTN_KEY_MASK: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads, (unsigned)dims->max_len);
        sqz_attn_key_mask<<<grid, block, 0, c->stream>>>(F(in[0]), I(in[1]), I(in[2]), I(in[3]), F(node->output),
                                                         T, S, p->attention.heads, (int)dims->max_len);
        LAUNCH_CHECK("sqz_attn_key_mask", node);
        return SQZ_OK;
    }
    case SQZ_OP_ATTN_SOFTMAX: {
        dim3 block(64, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads);
        sqz_attn_softmax<<<grid, block, 0, c->stream>>>(F(in[0]), I(in[1]), I(in[2]), F(node->output), T, S,
                                                        p->attention.heads);
        LAUNCH_CHECK("sqz_attn_softmax", node);
        return SQZ_OK;
    }
    case SQZ_OP_ATTN_CONTEXT: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads,
                                   (unsigned)p->attention.head_dim);
        sqz_attn_context<<<grid, block, 0, c->stream>>>(F(in[0]), F(in[1]), I(in[2]), I(in[3]), F(node->output),
                                                        T, S, p->attention.heads, p->attention.head_dim);
        LAUNCH_CHECK("sqz_attn_context", node);
        return SQZ_OK;
    }
    case SQZ_OP_ATTENTION: {
        dim3 block(64, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads);
        if (p->attention.head_dim == 64)
            sqz_attention_d64<<<grid, block, 0, c->stream>>>(F(in[0]), F(in[1]), F(in[2]), I(in[3]), I(in[4]),
                                                             I(in[5]), F(node->output), T, S, p->attention.heads,
                                                             p->attention.head_dim, p->attention.scale);
        else
            sqz_attention<<<grid, block, 0, c->stream>>>(F(in[0]), F(in[1]), F(in[2]), I(in[3]), I(in[4]),
                                                         I(in[5]), F(node->output), T, S, p->attention.heads,
                                                         p->attention.head_dim, p->attention.scale);
        LAUNCH_CHECK("sqz_attention", node);
        return SQZ_OK;
    }
    default:
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cuda: op %s (node '%s') is not implemented",
                        sqz_op_name(node->op), node->name);
    }
}

static sqz_backend_ops make_ops(void)
{
    sqz_backend_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.api_version = SQZ_BACKEND_API_VERSION;
    ops.name = "cuda";
    ops.probe = cuda_probe_impl;
    ops.create = cuda_create;
    ops.destroy = cuda_destroy;
    ops.describe = cuda_describe;
    ops.buffer_alloc = cuda_buffer_alloc;
    ops.buffer_free = cuda_buffer_free;
    ops.upload = cuda_upload;
    ops.download = cuda_download;
    ops.supports = cuda_supports;
    ops.launch = cuda_launch;
    ops.synchronize = cuda_synchronize;
    return ops;
}

extern "C" const sqz_backend_ops sqz_cuda_backend = make_ops();
