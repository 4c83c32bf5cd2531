/* The CUDA backend, and (compiled a second time by the host C++ compiler with SQZ_CUDA_SIM,
 * see cuda/cuda_sim_backend.cc) the cuda-sim backend that runs the same code and kernels on
 * the host CPU for checking. One translation unit: this file holds the backend table and its
 * device, buffer, copy and output slots; it includes the context and shared helpers
 * (cuda/cuda_context.cuh), the GEMMs (cuda/cuda_gemm.cuh: cuBLAS, cuBLASLt and our own),
 * the variant machinery (cuda/cuda_variants.cuh), the launches (cuda/cuda_launch.cuh) and the
 * CUDA graphs (cuda/cuda_graphs.cuh).
 *
 * Ops with more than one implementation (linear: cuda/cuda_gemm.cuh; attention: CUDA cores
 * or tensor-core flash attention; the fused feed-forward block) choose per shape among
 * numbered variants, each checked against variant 0 on its first real inputs and then timed
 * (see "variants" in cuda/cuda_context.cuh). The other
 * ops run the GPU-shaped kernels of cuda/cuda_kernels.cuh; the unfused attention parts run the
 * shared OpenCL source (kernels/sqz_kernels.cl compiled as CUDA through
 * kernels/sqz_dialect_cuda.cuh). Every CUDA, cuBLAS and cuBLASLt status is checked and
 * reported with the call, the library's error name and string, and file:line. A compute
 * stream runs the launches (captured once as a CUDA graph on the second run of the same
 * shapes, replayed after that) and writes each run's outputs in their final layout; a copy
 * stream takes them to pinned host memory behind an event, so one run's download overlaps the
 * next run's compute. */
#ifdef SQZ_CUDA_SIM
#define sqzk sqzk_sim /* the emulated kernels must not share symbols with the GPU's */
#endif

#include "cuda/cuda_prims.cuh"

#include "kernels/sqz_dialect_cuda.cuh"

#include "kernels/sqz_kernels.cl"

#undef lo
#undef hi
#undef rsqrt

#include "cuda/cuda_kernels.cuh"

#include "cuda/cuda_flash_attention.cuh"

#include "cuda/cuda_mma_gemm.cuh"

#include "cuda/cuda_ffn.cuh"

#include "cuda/cuda_output.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#ifndef SQZ_CUDA_SIM
#include <cublasLt.h>
#include <cublas_v2.h>
#endif

extern "C" {
#include "runtime/backend.h"
#include "runtime/error.h"
}

#ifdef SQZ_CUDA_SIM
#define SQZ_CUDA_NAME "cuda-sim"
#define SQZ_CUDA_TABLE sqz_cuda_sim_backend
#else
#define SQZ_CUDA_NAME "cuda"
#define SQZ_CUDA_TABLE sqz_cuda_backend
#endif

#include "cuda/cuda_context.cuh"

namespace {

sqz_status probe_impl(void)
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

sqz_status list_devices(char **text)
{
    if (probe_impl() != SQZ_OK)
        return sqz_text_append(text, "%-8s -  %s\n", SQZ_CUDA_NAME, sqz_last_error());
#ifdef SQZ_CUDA_SIM
    return sqz_text_append(text, "cuda-sim 0  the CUDA backend's kernels emulated on this CPU, sm_90 limits (for "
                                 "checking; slow); devices: forward, reverse, random[:SEED] (thread orders)\n");
#else
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
#endif
}

sqz_status cuda_set_precision(void *ctx, sqz_precision precision)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if ((unsigned)precision >= SQZ_PRECISION_COUNT)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%s: unknown precision %d", SQZ_CUDA_NAME, (int)precision);
    c->store = sqz_precision_activation_dtype(precision);
#ifdef SQZ_CUDA_SIM
    if (precision == SQZ_PRECISION_TF32) /* no GEMM here rounds to tf32 */
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cuda-sim: tf32 is cuBLAS's, which cuda-sim does not run");
#else
    CUBLAS_TRY(cublasSetMathMode(c->blas, precision == SQZ_PRECISION_FP32   ? CUBLAS_PEDANTIC_MATH
                                          : precision == SQZ_PRECISION_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                            : CUBLAS_DEFAULT_MATH));
#endif
    c->precision = precision;
    return SQZ_OK;
}

sqz_status cuda_buffer_alloc(void *ctx, size_t bytes, sqz_buffer **out)
{
    BIND_DEVICE((cuda_ctx *)ctx);
    sqz_buffer *b = (sqz_buffer *)calloc(1, sizeof *b);
    if (!b)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    cudaError_t err = cudaMalloc(&b->ptr, bytes ? bytes : 4);
    if (err != cudaSuccess) {
        free(b);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: cudaMalloc(%zu bytes) failed: %s (%s)", SQZ_CUDA_NAME, bytes,
                        cudaGetErrorName(err), cudaGetErrorString(err));
    }
    b->bytes = bytes;
    *out = b;
    return SQZ_OK;
}

void cuda_buffer_free(void *ctx, sqz_buffer *b)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!b)
        return;
    cudaError_t err = c ? cudaSetDevice(c->device) : cudaSuccess;
    if (err != cudaSuccess) /* nothing to return it to: said, and the memory freed anyway */
        fprintf(stderr, "sqz %s: cudaSetDevice(%d) failed freeing a buffer: %s\n", SQZ_CUDA_NAME, c->device,
                cudaGetErrorString(err));
    /* a graph that points into this buffer must never be replayed */
    for (int i = 0; c && i < GRAPH_CACHE; i++)
        if (c->graphs[i].arena == b || c->graphs[i].weights == b)
            graph_drop(&c->graphs[i]);
    if (b->ptr)
        cudaFree(b->ptr);
    if (b->shadow)
        cudaFree(b->shadow);
    for (int i = 0; i < b->n_qkv; i++)
        cudaFree(b->qkv[i].block);
    free(b->qkv);
    free(b);
}

/* ---- copies --------------------------------------------------------------------------- */

sqz_status cuda_synchronize(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    BIND_DEVICE(c);
    CUDA_TRY(cudaStreamSynchronize(c->stream));
    c->pinned_used = 0;
    return SQZ_OK;
}

/* Small uploads (a run's ids, positions, offsets) are copied into pinned memory and sent
 * asynchronously, in stream order before the launches that read them; big ones (weights,
 * once per session) are copied synchronously from the caller's memory. */
sqz_status cuda_upload(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: upload of %zu bytes at %zu overruns a %zu-byte buffer",
                        SQZ_CUDA_NAME, bytes, offset, dst->bytes);
    if (!bytes)
        return SQZ_OK;
    BIND_DEVICE(c);
    dst->shadow_valid = false;
    dst->version++;
    if (bytes > STAGING_MAX) {
        CUDA_TRY(cudaMemcpyAsync((char *)dst->ptr + offset, src, bytes, cudaMemcpyHostToDevice, c->stream));
        return cuda_synchronize(c);
    }
    const size_t need = (bytes + 255) & ~(size_t)255;
    if (c->pinned_used + need > c->pinned_bytes) {
        sqz_status st = cuda_synchronize(c); /* every earlier staged copy has landed */
        if (st != SQZ_OK)
            return st;
        if (need > c->pinned_bytes) {
            if (c->pinned)
                CUDA_TRY(cudaFreeHost(c->pinned));
            c->pinned = NULL;
            c->pinned_bytes = 0;
            const size_t size = need > (1u << 20) ? STAGING_MAX : (1u << 20);
            CUDA_TRY(cudaMallocHost((void **)&c->pinned, size));
            c->pinned_bytes = size;
        }
    }
    char *stage = c->pinned + c->pinned_used;
    memcpy(stage, src, bytes);
    c->pinned_used += need;
    CUDA_TRY(cudaMemcpyAsync((char *)dst->ptr + offset, stage, bytes, cudaMemcpyHostToDevice, c->stream));
    return SQZ_OK;
}

/* Pinned host memory for asynchronous copies, usable from every device's context. */
sqz_status cuda_host_alloc(void *ctx, size_t bytes, void **out)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    BIND_DEVICE(c);
    *out = NULL;
    CUDA_TRY(cudaHostAlloc(out, bytes ? bytes : 1, cudaHostAllocPortable));
    return SQZ_OK;
}

void cuda_host_free(void *memory)
{
    cudaError_t err = cudaFreeHost(memory); /* may outlive the session: no context here */
    if (err != cudaSuccess)
        fprintf(stderr, "sqz %s: cudaFreeHost failed: %s (%s)\n", SQZ_CUDA_NAME, cudaGetErrorName(err),
                cudaGetErrorString(err));
}

/* A run's input image: one copy from pinned memory the session keeps unchanged until the
 * run is waited for, in stream order before the launches that read it. */
sqz_status cuda_upload_async(void *ctx, int slot, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (slot < 0 || slot >= SQZ_RUN_SLOTS || offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: upload of %zu bytes at %zu into a %zu-byte buffer for slot %d",
                        SQZ_CUDA_NAME, bytes, offset, dst->bytes, slot);
    BIND_DEVICE(c);
    CUDA_TRY(cudaEventRecord(c->ev_begin[slot], c->stream)); /* the run's device time starts */
    c->begun[slot] = true;
    dst->shadow_valid = false;
    dst->version++;
    if (bytes)
        CUDA_TRY(cudaMemcpyAsync((char *)dst->ptr + offset, src, bytes, cudaMemcpyHostToDevice, c->stream));
    return SQZ_OK;
}

/* Ends run `slot`: the copy stream waits for what the compute stream has enqueued so far,
 * then copies the run's outputs to pinned host memory; the compute stream goes on with the
 * next run meanwhile. */
sqz_status cuda_run_download(void *ctx, int slot, sqz_buffer *src, size_t offset, void *host, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (slot < 0 || slot >= SQZ_RUN_SLOTS || offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: download of %zu bytes at %zu from a %zu-byte buffer for slot %d",
                        SQZ_CUDA_NAME, bytes, offset, src->bytes, slot);
    BIND_DEVICE(c);
    CUDA_TRY(cudaEventRecord(c->ev_ready[slot], c->stream));
    CUDA_TRY(cudaStreamWaitEvent(c->copy_stream, c->ev_ready[slot], 0));
    if (bytes)
        CUDA_TRY(cudaMemcpyAsync(host, (const char *)src->ptr + offset, bytes, cudaMemcpyDeviceToHost,
                                 c->copy_stream));
    CUDA_TRY(cudaEventRecord(c->ev_done[slot], c->copy_stream));
    return SQZ_OK;
}

/* The one wait of a run: its download has landed (so its launches are done); an error of any
 * of its kernels surfaces here. */
sqz_status cuda_run_wait(void *ctx, int slot)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (slot < 0 || slot >= SQZ_RUN_SLOTS)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: no run slot %d", SQZ_CUDA_NAME, slot);
    BIND_DEVICE(c);
    CUDA_TRY(cudaEventSynchronize(c->ev_done[slot]));
    return SQZ_OK;
}

double cuda_run_device_seconds(void *ctx, int slot)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    float ms = 0;
    if (slot < 0 || slot >= SQZ_RUN_SLOTS || !c->begun[slot])
        return -1;
    c->begun[slot] = false;
    if (cudaEventElapsedTime(&ms, c->ev_begin[slot], c->ev_ready[slot]) != cudaSuccess) {
        cudaGetLastError(); /* a statistic lost, not an answer: later launch checks must not see it */
        return -1;
    }
    return ms * 1e-3;
}

void *cuda_device_address(void *ctx, sqz_buffer *b)
{
    (void)ctx;
    return b->ptr;
}

bool cuda_records_runs(void *ctx) { return ((cuda_ctx *)ctx)->use_graphs; }

void cuda_graph_counts(void *ctx, unsigned long *captured, unsigned long *replayed)
{
    const cuda_ctx *c = (const cuda_ctx *)ctx;
    *captured = c->graphs_captured;
    *replayed = c->graphs_replayed;
}

sqz_status cuda_download(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: download of %zu bytes at %zu overruns a %zu-byte buffer",
                        SQZ_CUDA_NAME, bytes, offset, src->bytes);
    if (!bytes)
        return SQZ_OK;
    BIND_DEVICE(c);
    CUDA_TRY(cudaMemcpyAsync(dst, (const char *)src->ptr + offset, bytes, cudaMemcpyDeviceToHost, c->stream));
    return cuda_synchronize(c);
}

template <typename TIn, typename TOut>
void format_launch(cuda_ctx *c, const sqz_output_format *f, const void *src, int src_cols, const int *seq_offsets,
                   const int *positions, const int *key_valid, void *dst)
{
    const unsigned grid = (unsigned)(f->rows < 8192 ? f->rows : 8192);
    launch_kernel(c, "format_rows", sqzk::format_rows<TIn, TOut>, grid, sqzk::FORMAT_THREADS, 0,
                  (const TIn *)src, src_cols, (int)f->col_begin, (int)f->col_count, (long long)f->rows, (int)f->width,
                  seq_offsets, positions, key_valid, (TOut *)dst);
}

/* One output of a run in its final layout (fp32 or fp16, from a tensor of any float dtype)
 * into `dst`, behind the run's launches on the compute stream. */
sqz_status cuda_format_output(void *ctx, const sqz_binding *b, const sqz_output_format *f, sqz_buffer *dst,
                              size_t offset)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    const size_t bytes = (size_t)(f->rows * f->col_count) * (f->half ? 2 : 4);
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: output of %zu bytes at %zu overruns a %zu-byte buffer", SQZ_CUDA_NAME,
                        bytes, offset, dst->bytes);
    if (f->rows == 0 || f->col_count == 0)
        return SQZ_OK;
    BIND_DEVICE(c);
    const sqz_graph *g = &b->plan->graph;
    const size_t at = (size_t)b->plan->offsets[f->tensor];
    const sqz_dtype from = g->tensors[f->tensor].dtype;
    const char *arena = (const char *)b->arena->ptr;
    const void *src = arena + at;
    const int *seq_offsets = (const int *)(arena + b->plan->offsets[g->in.seq_offsets]);
    const int *positions = (const int *)(arena + b->plan->offsets[g->in.positions]);
    const int *key_valid = (const int *)(arena + b->plan->offsets[g->in.key_valid]);
    void *out = (char *)dst->ptr + offset;
    const int cols = (int)g->tensors[f->tensor].cols;
    if (from == SQZ_DTYPE_F32)
        f->half ? format_launch<float, __half>(c, f, src, cols, seq_offsets, positions, key_valid, out)
                : format_launch<float, float>(c, f, src, cols, seq_offsets, positions, key_valid, out);
    else if (from == SQZ_DTYPE_F16)
        f->half ? format_launch<__half, __half>(c, f, src, cols, seq_offsets, positions, key_valid, out)
                : format_launch<__half, float>(c, f, src, cols, seq_offsets, positions, key_valid, out);
    else if (from == SQZ_DTYPE_BF16)
        f->half ? format_launch<__nv_bfloat16, __half>(c, f, src, cols, seq_offsets, positions, key_valid, out)
                : format_launch<__nv_bfloat16, float>(c, f, src, cols, seq_offsets, positions, key_valid, out);
    else
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: output tensor '%s' has dtype %s", SQZ_CUDA_NAME,
                        g->tensors[f->tensor].name, sqz_dtype_name(from));
    CUDA_TRY(cudaGetLastError());
    return SQZ_OK;
}

/* The weights in the session's 16-bit type, converted once after they change. */
sqz_status ensure_shadow(cuda_ctx *c, sqz_buffer *w)
{
    if (c->store == SQZ_DTYPE_F32 || (w->shadow_valid && w->shadow_dtype == c->store))
        return SQZ_OK;
    if (c->capturing >= 0)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: weights converted during graph capture", SQZ_CUDA_NAME);
    const size_t n = w->bytes / 4;
    if (!w->shadow)
        CUDA_TRY(cudaMalloc(&w->shadow, n * 2 + 16));
    const unsigned grid = (unsigned)((n + 255) / 256 < 8192 ? (n + 255) / 256 : 8192);
    if (c->store == SQZ_DTYPE_F16)
        sqz_launch("convert_from_f32", sqzk::convert_from_f32<__half>, grid ? grid : 1, 256, 0, c->stream,
                   (const float *)w->ptr, w->shadow, n);
    else
        sqz_launch("convert_from_f32", sqzk::convert_from_f32<__nv_bfloat16>, grid ? grid : 1, 256, 0, c->stream,
                   (const float *)w->ptr, w->shadow, n);
    CUDA_TRY(cudaGetLastError());
    w->shadow_dtype = c->store;
    w->shadow_valid = true;
    return SQZ_OK;
}

/* A QKV node's weights side by side (struct qkv_weights), made once per version of the weights
 * and storage type, after ensure_shadow. */
sqz_status qkv_weights_for(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const qkv_weights **out)
{
    sqz_buffer *w = b->weights;
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    const int query_weight = g->tensors[in[1]].weight_index;
    qkv_weights *e = NULL;
    for (int i = 0; i < w->n_qkv && !e; i++)
        if (w->qkv[i].query_weight == query_weight)
            e = &w->qkv[i];
    *out = e;
    if (e && e->dtype == c->store && e->version == w->version)
        return SQZ_OK;
    if (c->capturing >= 0)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: QKV weights made during graph capture (node '%s')", SQZ_CUDA_NAME,
                        node->name);
    const size_t width = (size_t)g->tensors[in[1]].fixed_rows, cin_g = (size_t)g->tensors[in[1]].cols;
    const size_t per_group = width / (size_t)node->params.linear.groups, es = sqz_dtype_size(c->store);
    /* sized for fp32, so that a change of precision reuses the block */
    const size_t matrix_bytes = (3 * width * cin_g * 4 + 255) & ~(size_t)255;
    const size_t bias_bytes = (3 * width * 4 + 255) & ~(size_t)255;
    if (!e) {
        qkv_weights *grown = (qkv_weights *)realloc(w->qkv, (size_t)(w->n_qkv + 1) * sizeof *grown);
        if (!grown)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        w->qkv = grown;
        e = &w->qkv[w->n_qkv];
        memset(e, 0, sizeof *e);
        e->query_weight = query_weight;
        CUDA_TRY(cudaMalloc(&e->block, matrix_bytes + 2 * bias_bytes));
        w->n_qkv++;
    }
    char *matrix = (char *)e->block, *bias32 = matrix + matrix_bytes, *bias_stored = bias32 + bias_bytes;
    for (size_t group = 0; group < width / per_group; group++)
        for (int part = 0; part < 3; part++) {
            const size_t row = (3 * group + (size_t)part) * per_group, from = group * per_group;
            const int weight = in[1 + 2 * part], bias = in[2 + 2 * part];
            const char *rows_from = (const char *)weight_stored(c, b, weight) + from * cin_g * es;
            CUDA_TRY(cudaMemcpyAsync(matrix + row * cin_g * es, rows_from, per_group * cin_g * es,
                                     cudaMemcpyDeviceToDevice, c->stream));
            CUDA_TRY(cudaMemcpyAsync(bias32 + row * 4, weight_f32(b, bias) + from, per_group * 4,
                                     cudaMemcpyDeviceToDevice, c->stream));
            CUDA_TRY(cudaMemcpyAsync(bias_stored + row * es, (const char *)weight_stored(c, b, bias) + from * es,
                                     per_group * es, cudaMemcpyDeviceToDevice, c->stream));
        }
    e->matrix = matrix, e->bias32 = (const float *)bias32, e->bias_stored = bias_stored;
    e->dtype = c->store, e->version = w->version;
    *out = e;
    return SQZ_OK;
}

bool cuda_supports(void *ctx, const sqz_node *node)
{
    switch (node->op) {
    case SQZ_OP_ATTENTION:
        return node->params.attention.head_dim <= SQZ_MAX_HEAD_DIM;
    case SQZ_OP_LINEAR_ATTENTION: /* the shared fp32 kernel, per-head sums in registers */
        return ((const cuda_ctx *)ctx)->store == SQZ_DTYPE_F32 && node->params.attention.head_dim <= SQZ_MAX_HEAD_DIM;
    default: /* the unfused attention parts run at fp32 only: cuda_launch says so */
        return (unsigned)node->op < SQZ_OP_COUNT;
    }
}

} // namespace

#include "cuda/cuda_gemm.cuh"

namespace {

sqz_status select_device(cuda_ctx *c, const char *want)
{
#ifdef SQZ_CUDA_SIM
    /* cuda-sim's one device; the text chooses the thread order ("0", as `sqz devices` lists
     * it, is the default one) */
    c->device = 0;
    if (!sqzsim::set_schedule(c->stream, want && strcmp(want, "0") == 0 ? NULL : want))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cuda-sim: device '%s' is not a schedule (forward, reverse, "
                        "random or random:SEED)", want);
    return SQZ_OK;
#else
    int count = 0;
    CUDA_TRY(cudaGetDeviceCount(&count));
    if (!want || !*want) {
        c->device = 0;
        return SQZ_OK;
    }
    char *end = NULL;
    long index = strtol(want, &end, 10);
    if (end && *end == '\0' && index >= 0 && index < count) {
        c->device = (int)index;
        return SQZ_OK;
    }
    for (int i = 0; i < count; i++) {
        cudaDeviceProp prop;
        CUDA_TRY(cudaGetDeviceProperties(&prop, i));
        if (strstr(prop.name, want)) {
            c->device = i;
            return SQZ_OK;
        }
    }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cuda: no device matches '%s' (%d device(s); see "
                    "`sqz devices`)", want, count);
#endif
}

void cuda_destroy(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!c)
        return;
    for (int i = 0; i < GRAPH_CACHE; i++)
        graph_drop(&c->graphs[i]);
#ifndef SQZ_CUDA_SIM
    lt_cache_destroy(c); /* the plans' descriptors, before their handle */
    if (c->lt)
        cublasLtDestroy(c->lt);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->lt_workspace)
        cudaFree(c->lt_workspace);
#endif
    for (int i = 0; i < SCRATCH_LEVELS; i++)
        if (c->scratch[i])
            cudaFree(c->scratch[i]);
    if (c->hidden)
        cudaFree(c->hidden);
    if (c->check)
        cudaFree(c->check);
    if (c->pinned)
        cudaFreeHost(c->pinned);
    for (int k = 0; k < SQZ_RUN_SLOTS; k++) {
        if (c->ev_begin[k])
            cudaEventDestroy(c->ev_begin[k]);
        if (c->ev_ready[k])
            cudaEventDestroy(c->ev_ready[k]);
        if (c->ev_done[k])
            cudaEventDestroy(c->ev_done[k]);
    }
    if (c->copy_stream)
        cudaStreamDestroy(c->copy_stream);
    if (c->ev_start)
        cudaEventDestroy(c->ev_start);
    if (c->ev_stop)
        cudaEventDestroy(c->ev_stop);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

/* a 0/1 backend setting (cuda.KEY), or fallback when absent */
bool setting_flag(const char *settings, const char *key, bool fallback)
{
    char v[16];
    if (!sqz_settings_get(settings, "cuda", key, v, sizeof v) || !v[0])
        return fallback;
    return strcmp(v, "0") != 0;
}

/* cuda.variants=linear=cublaslt,attention=1,ffn=fused: names or numbers per family */
sqz_status read_forced_variants(cuda_ctx *c, const char *settings)
{
    static const char *const *const families = family_names;
    static const char *const *const names[FAMILIES] = {linear_variant_names, attention_variant_names,
                                                       ffn_variant_names, ffn_ln_variant_names};
    static const int counts[FAMILIES] = {LINEAR_VARIANTS, ATTENTION_VARIANTS, FFN_VARIANTS, FFN_LN_VARIANTS};
    for (int f = 0; f < FAMILIES; f++)
        c->forced[f] = -1;
    char buffer[256];
    if (!sqz_settings_get(settings, "cuda", "variants", buffer, sizeof buffer) || !buffer[0])
        return SQZ_OK;
    for (char *save = NULL, *item = strtok_r(buffer, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        int f = 0;
        while (f < FAMILIES && (!eq || strncmp(item, families[f], (size_t)(eq - item)) != 0 ||
                                strlen(families[f]) != (size_t)(eq - item)))
            f++;
        if (f == FAMILIES)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cuda.variants (SQZ_CUDA_VARIANTS): '%s' is not "
                            "FAMILY=VARIANT with FAMILY linear, attention, ffn or ffn_ln", item);
        int v = 0;
        while (v < counts[f] && strcmp(eq + 1, names[f][v]) != 0 && !(eq[1] == '0' + v && eq[2] == '\0'))
            v++;
        if (v == counts[f])
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cuda.variants (SQZ_CUDA_VARIANTS): %s has no variant '%s'",
                            families[f], eq + 1);
        c->forced[f] = v;
    }
    return SQZ_OK;
}

sqz_status create_checked(cuda_ctx *c, const char *device, const char *settings)
{
    c->capturing = -1;
    sqz_status st = probe_impl();
    if (st != SQZ_OK)
        return st;
#ifdef SQZ_CUDA_SIM
    CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    if ((st = select_device(c, device)) != SQZ_OK) /* the schedule belongs to the stream */
        return st;
#else
    if ((st = select_device(c, device)) != SQZ_OK)
        return st;
    CUDA_TRY(cudaSetDevice(c->device));
    CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&c->blas));
    CUBLAS_TRY(cublasSetStream(c->blas, c->stream));
    /* fp32 means fp32: no TF32 unless the session's precision asks for it */
    CUBLAS_TRY(cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH));
    LT_TRY(cublasLtCreate(&c->lt));
    c->lt_workspace_bytes = 32u << 20;
    CUDA_TRY(cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes));
    /* cuBLAS's own workspace is fixed here so graph capture never allocates */
    CUBLAS_TRY(cublasSetWorkspace(c->blas, c->lt_workspace, c->lt_workspace_bytes));
#endif
    CUDA_TRY(cudaMalloc((void **)&c->check, 4 * sizeof(unsigned)));
    c->sync_each = setting_flag(settings, "sync", false);
    c->use_graphs = setting_flag(settings, "graphs", true) && !c->sync_each;
    c->measure = setting_flag(settings, "measure", true);
    c->report = setting_flag(settings, "report", false);
    if ((st = read_forced_variants(c, settings)) != SQZ_OK)
        return st;
    /* downloads run on their own stream, behind per-run events */
    CUDA_TRY(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking));
    for (int k = 0; k < SQZ_RUN_SLOTS; k++) {
        CUDA_TRY(cudaEventCreate(&c->ev_begin[k])); /* timed: busy time (sqz_session_busy_seconds) */
        CUDA_TRY(cudaEventCreate(&c->ev_ready[k]));
        CUDA_TRY(cudaEventCreateWithFlags(&c->ev_done[k], cudaEventDisableTiming));
    }
    CUDA_TRY(cudaEventCreate(&c->ev_start));
    CUDA_TRY(cudaEventCreate(&c->ev_stop));
    c->precision = SQZ_PRECISION_FP32;
    c->store = SQZ_DTYPE_F32;
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, c->device));
    /* programmatic dependent launch needs sm_90; off until a GPU has measured it (issue 12);
     * cuda-sim checks that every kernel launched so waits first (cuda/sim/cuda_sim.h) */
    c->overlap = setting_flag(settings, "pdl", false) && prop.major >= 9;
    int driver = 0;
    CUDA_TRY(cudaDriverGetVersion(&driver));
#ifdef SQZ_CUDA_SIM
    snprintf(c->description, sizeof c->description, "%s (schedule %s)", prop.name,
             device && *device && strcmp(device, "0") != 0 ? device : "forward");
#else
    snprintf(c->description, sizeof c->description, "%s (sm_%d%d, driver CUDA %d.%d), %.1f GiB", prop.name,
             prop.major, prop.minor, driver / 1000, driver % 1000 / 10, prop.totalGlobalMem / 1073741824.0);
#endif
    return SQZ_OK;
}

/* cuda.KEY settings (cuda-sim reads the same ones): the command line fills them from the
 * SQZ_CUDA_* environment variables (docs/engineering.md, "CUDA backend") */
sqz_status cuda_create(void **ctx, const char *device, const char *settings)
{
    static const char *const known[] = {"sync", "graphs", "measure", "report", "variants", "pdl", NULL};
    sqz_status st = sqz_settings_check(settings, "cuda", known);
    if (st != SQZ_OK)
        return st;
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!c)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    st = create_checked(c, device, settings);
    if (st != SQZ_OK) {
        cuda_destroy(c);
        return st;
    }
    *ctx = c;
    return SQZ_OK;
}

const char *cuda_describe(void *ctx) { return ((cuda_ctx *)ctx)->description; }

} // namespace

#include "cuda/cuda_variants.cuh"

#include "cuda/cuda_launch.cuh"

#include "cuda/cuda_graphs.cuh"

namespace {

/* Per plan, once per binding: the weights' 16-bit copy, and the FFN variants' hidden buffer at
 * the bucket's size, so that neither grows (and drops captured graphs) during a run. */
sqz_status cuda_prepare(void *ctx, const sqz_binding *b)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    BIND_DEVICE(c);
    sqz_status st = ensure_shadow(c, b->weights);
    const sqz_graph *g = &b->plan->graph;
    size_t hidden_bytes = 0;
    for (size_t k = 0; k < b->plan->n_launches && st == SQZ_OK; k++) {
        const sqz_node *node = &g->nodes[b->plan->launches[k]];
        const qkv_weights *made = NULL;
        if (node->op == SQZ_OP_QKV) /* never during a capture */
            st = qkv_weights_for(c, b, node, &made);
        if (node->op == SQZ_OP_FFN || node->op == SQZ_OP_FFN_ADD_LAYERNORM) {
            const size_t bytes = (size_t)b->plan->bucket.max_tokens * (size_t)g->tensors[node->inputs[1]].fixed_rows *
                                 sqz_dtype_size(c->store);
            hidden_bytes = bytes > hidden_bytes ? bytes : hidden_bytes;
        }
    }
    if (st == SQZ_OK && hidden_bytes > c->hidden_bytes) {
        for (int i = 0; i < GRAPH_CACHE; i++) /* they may hold the old buffer */
            graph_drop(&c->graphs[i]);
        st = ensure_device(c, &c->hidden, &c->hidden_bytes, hidden_bytes);
    }
    return st;
}

/* graphs recorded for the plan's bucket go with it */
void cuda_release(void *ctx, const sqz_plan *plan)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    for (int i = 0; i < GRAPH_CACHE; i++)
        if (c->graphs[i].runs && memcmp(&c->graphs[i].bucket, &plan->bucket, sizeof plan->bucket) == 0)
            graph_drop(&c->graphs[i]);
}

sqz_status cuda_kernel_report(void *ctx, char **text)
{
    const cuda_ctx *c = (const cuda_ctx *)ctx;
    sqz_status st = sqz_text_append(text, "%s", "");
    for (int i = 0; i < c->n_choices && st == SQZ_OK; i++) {
        const variant_choice &ch = c->choices[i];
        char shape[160];
        if (ch.family == FAMILY_ATTENTION)
            snprintf(shape, sizeof shape, "heads %lld x %lld, length <= %lld, <= %lld sequences, <= %lld tokens",
                     (long long)ch.key[0], (long long)ch.key[1], (long long)ch.key[2], (long long)ch.key[3],
                     (long long)ch.key[4]);
        else if (ch.family == FAMILY_FFN || ch.family == FAMILY_FFN_LN)
            snprintf(shape, sizeof shape, "%lld -> %lld -> %lld, %lld groups, <= %lld rows", (long long)ch.key[0],
                     (long long)ch.key[1], (long long)ch.key[2], (long long)ch.key[3], (long long)ch.key[4]);
        else
            snprintf(shape, sizeof shape, "%lld -> %lld, %lld groups%s%s, <= %lld rows", (long long)ch.key[0],
                     (long long)ch.key[1], (long long)ch.key[2], ch.key[3] ? ", bias" : "", ch.key[4] ? ", gelu" : "",
                     (long long)ch.key[5]);
        for (int v = 0; v < variant_count(ch.family) && st == SQZ_OK; v++)
            st = sqz_text_append(text, "%s\t%s\t%s\t%.9g\t%.3g\t%.6g\t%.6g\t%d\n", family_names[ch.family], shape,
                                 variant_name(ch.family, v), ch.seconds[v], ch.error[v], ch.flops, ch.bytes,
                                 v == ch.chosen);
    }
    return st;
}

sqz_backend_ops make_ops(void)
{
    sqz_backend_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.api_version = SQZ_BACKEND_API_VERSION;
    ops.name = SQZ_CUDA_NAME;
    ops.probe = probe_impl;
    ops.list_devices = list_devices;
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
    ops.set_precision = cuda_set_precision;
    ops.run_begin = cuda_run_begin;
    ops.run_end = cuda_run_end;
    ops.host_alloc = cuda_host_alloc;
    ops.host_free = cuda_host_free;
    ops.upload_async = cuda_upload_async;
    ops.format_output = cuda_format_output;
    ops.run_download = cuda_run_download;
    ops.run_wait = cuda_run_wait;
    ops.run_device_seconds = cuda_run_device_seconds;
    ops.device_address = cuda_device_address;
    ops.records_runs = cuda_records_runs;
    ops.graph_counts = cuda_graph_counts;
    ops.kernel_report = cuda_kernel_report;
    ops.prepare = cuda_prepare;
    ops.release = cuda_release;
#ifdef SQZ_CUDA_SIM
    ops.emulated = true;
#endif
    return ops;
}

} // namespace

extern "C" const sqz_backend_ops SQZ_CUDA_TABLE = make_ops();
