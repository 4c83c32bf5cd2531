/* The CUDA backend, and (compiled a second time by the host C++ compiler with SQZ_CUDA_SIM,
 * see cuda/cuda_sim_backend.cc) the cuda-sim backend that runs the same code and kernels on
 * the host CPU for checking.
 *
 * Ops with more than one implementation (linear: cuda/cuda_gemm.cuh; attention: CUDA cores
 * or tensor-core flash attention) choose per shape among numbered variants, each checked
 * against variant 0 on its first real inputs and then timed (see "variants" below). The other
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

#define CUDA_TRY(call)                                                                      \
    do {                                                                                    \
        cudaError_t err_ = (call);                                                          \
        if (err_ != cudaSuccess)                                                            \
            return sqz_fail(err_ == cudaErrorMemoryAllocation ? SQZ_ERR_OUT_OF_MEMORY       \
                                                               : SQZ_ERR_BACKEND,           \
                            "%s: %s failed: %s (%s) at %s:%d", SQZ_CUDA_NAME, #call,        \
                            cudaGetErrorName(err_), cudaGetErrorString(err_), __FILE__,     \
                            __LINE__);                                                      \
    } while (0)

/* Each copy and buffer entry point makes the session's device current for the calling thread:
 * sessions on different GPUs may share a thread, and a session may move between threads (the
 * launches of a run follow its upload in the same thread). */
#define BIND_DEVICE(c) CUDA_TRY(cudaSetDevice((c)->device))

#ifndef SQZ_CUDA_SIM
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
/* cuBLASLt reports with the cuBLAS status type */
#define LT_TRY(call) CUBLAS_TRY(call)
#endif

/* After a kernel launch: configuration errors now, execution errors at the next sync
 * (or at once with the setting cuda.sync=1, for debugging). */
#define LAUNCH_CHECK(kernel_name, node)                                                     \
    do {                                                                                    \
        cudaError_t err_ = cudaGetLastError();                                              \
        if (err_ == cudaSuccess && c->sync_each)                                            \
            err_ = cudaStreamSynchronize(c->stream);                                        \
        if (err_ != cudaSuccess)                                                            \
            return sqz_fail(SQZ_ERR_BACKEND, "%s: kernel %s for node '%s' failed: %s (%s) "  \
                            "at %s:%d", SQZ_CUDA_NAME, kernel_name, (node)->name,           \
                            cudaGetErrorName(err_), cudaGetErrorString(err_), __FILE__,     \
                            __LINE__);                                                      \
    } while (0)

/* Activations are stored in the dtype the plan gives them (the assign-dtypes pass: one
 * type per plan, the session's: fp32, or 16 bits at fp16 and bf16); downloads are plain
 * copies, and whoever reads a tensor converts by its dtype. */
struct sqz_buffer {
    void *ptr;
    size_t bytes;
    /* weights at a 16-bit precision: a converted copy, same element offsets */
    void *shadow;
    sqz_dtype shadow_dtype;
    bool shadow_valid;
};

namespace {

/* One captured run: the bucket and exact dims fix every launch argument, and the two
 * buffers every pointer. */
struct graph_entry {
    sqz_bucket bucket;
    sqz_run_dims dims;
    const void *arena, *weights;
    cudaGraphExec_t exec;
    unsigned runs;
    unsigned long last_used;
};

/* ---- variants ---------------------------------------------------------------------------
 * Per op family, variant 0 is the simple CUDA-core kernel and the reference. The first time
 * a shape is seen outside graph capture, every variant that applies runs on the real inputs,
 * each output is compared with variant 0's (max |difference| / max |variant 0| against the
 * per-op bar of the precision, sqz_precision_op_tolerance), and the fastest variant within
 * the bar is kept for the shape and runs again to leave its own output (cuda-sim, where time
 * means nothing, keeps the highest-numbered one, so that the newest kernels are the ones the
 * tests see). A variant outside the bar is reported on stderr and not used for the shape; in
 * cuda-sim that is a fault, since there it can only be a kernel bug.
 * The setting cuda.variants="linear=NAME,attention=NAME,ffn=NAME" fixes the variants instead
 * (names or numbers), cuda.measure=0 takes the highest-numbered variant that applies without
 * running the others, cuda.report=1 prints every choice (sqz fills them from SQZ_CUDA_*). */
enum family { FAMILY_LINEAR, FAMILY_ATTENTION, FAMILY_FFN, FAMILIES };
static const char *const family_names[FAMILIES] = {"linear", "attention", "ffn"};
enum attention_variant { ATTENTION_SIMT, ATTENTION_FLASH, ATTENTION_VARIANTS };
static const char *const attention_variant_names[ATTENTION_VARIANTS] = {"simt", "flash"};
/* the fused feed-forward block: 0 both products by gemm_simt (the reference), 1 each product by
 * its own measured linear variant (the unfused plan's speed), 2 ffn_fused (cuda/cuda_ffn.cuh) */
enum ffn_variant { FFN_SIMT, FFN_SPLIT, FFN_FUSED, FFN_VARIANTS };
static const char *const ffn_variant_names[FFN_VARIANTS] = {"simt", "split", "fused"};
constexpr int MAX_VARIANTS = 8;
constexpr int VARIANT_CHOICES = 256;

struct variant_choice {
    int family;
    int64_t key[6];
    int chosen;
    double seconds[MAX_VARIANTS]; /* < 0: did not apply */
    double error[MAX_VARIANTS];
    double flops, bytes;          /* of the first instance measured, for the kernel report */
};

#define GRAPH_CACHE 16
#define STAGING_MAX (8u << 20) /* uploads up to this size go through pinned memory */
#define MEASURE_RUNS 3

struct cuda_ctx {
    int device;
    cudaStream_t stream;      /* uploads, launches, output formatting */
    cudaStream_t copy_stream; /* downloads of finished runs */
    cudaEvent_t ev_begin[SQZ_RUN_SLOTS]; /* compute stream: a run's input copy starts */
    bool begun[SQZ_RUN_SLOTS];           /* ev_begin recorded for the slot's current run */
    cudaEvent_t ev_ready[SQZ_RUN_SLOTS]; /* compute stream: a run's outputs are written */
    cudaEvent_t ev_done[SQZ_RUN_SLOTS];  /* copy stream: they have landed on the host */
    unsigned long graphs_captured, graphs_replayed;
#ifndef SQZ_CUDA_SIM
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
#endif
    bool sync_each, use_graphs, measure, report;
    int forced[FAMILIES]; /* cuda.variants, or -1 */
    sqz_precision precision;
    sqz_dtype store; /* the activations' dtype at this precision; weights' copy in it too */
    char description[512];
    /* pinned staging for uploads: filled front to back, reset once the stream is idle */
    char *pinned;
    size_t pinned_bytes, pinned_used;
    /* device scratch: variant outputs under check (one per nesting level: a variant of the FFN
     * block runs linear choices of its own) */
    void *scratch[2];
    size_t scratch_bytes[2];
    int depth;
    /* the FFN block's hidden activation where a variant stores it; only grows, and graphs that
     * captured the old one are dropped when it does */
    void *hidden;
    size_t hidden_bytes;
    unsigned *check; /* max |difference|, max |reference| (float bits), non-finite flag */
    graph_entry graphs[GRAPH_CACHE];
    unsigned long clock;
    int capturing; /* graph slot being captured, or -1 */
    variant_choice choices[VARIANT_CHOICES];
    int n_choices;
    cudaEvent_t ev_start, ev_stop;
};

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

void graph_drop(graph_entry *e)
{
    if (e->exec)
        cudaGraphExecDestroy(e->exec);
    memset(e, 0, sizeof *e);
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

unsigned blocks(size_t n, unsigned per_block) { return (unsigned)((n + per_block - 1) / per_block); }

bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

unsigned grid_1d(size_t n) { return n == 0 ? 1 : blocks(n, 256) < 16384 ? blocks(n, 256) : 16384; }

/* device memory that grows as needed, never inside a graph capture */
sqz_status ensure_device(cuda_ctx *c, void **ptr, size_t *have, size_t bytes)
{
    if (*have >= bytes)
        return SQZ_OK;
    if (c->capturing >= 0)
        return sqz_fail(SQZ_ERR_INTERNAL, "%s: device scratch grown during graph capture", SQZ_CUDA_NAME);
    if (*ptr)
        CUDA_TRY(cudaFree(*ptr));
    *ptr = NULL;
    *have = 0;
    CUDA_TRY(cudaMalloc(ptr, bytes));
    *have = bytes;
    return SQZ_OK;
}

sqz_status ensure_scratch(cuda_ctx *c, size_t bytes)
{
    return ensure_device(c, &c->scratch[c->depth], &c->scratch_bytes[c->depth], bytes);
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
    sqz_launch("format_rows", sqzk::format_rows<TIn, TOut>, grid, sqzk::FORMAT_THREADS, 0, c->stream,
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

bool cuda_supports(void *ctx, const sqz_node *node)
{
    (void)ctx;
    switch (node->op) {
    case SQZ_OP_ATTENTION:
        return node->params.attention.head_dim <= SQZ_MAX_HEAD_DIM;
    default: /* the unfused attention parts run at fp32 only: cuda_launch says so */
        return (unsigned)node->op < SQZ_OP_COUNT;
    }
}

/* ---- tensors -------------------------------------------------------------------------- */

/* (base, element offset) of an fp32 or int32 tensor, as the shared kernels take them */
struct tensor_ref {
    float *base;
    ulong offset;
};

tensor_ref ref(const sqz_binding *b, int tensor)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[tensor];
    if (d->kind == SQZ_TENSOR_WEIGHT)
        return {(float *)b->weights->ptr, (ulong)(b->weight_offsets[d->weight_index] / 4)};
    return {(float *)b->arena->ptr, (ulong)(b->plan->offsets[tensor] / 4)};
}

#define F(t) ref(b, t).base, ref(b, t).offset
#define I(t) (const int *)ref(b, t).base, ref(b, t).offset

bool is_weight(const sqz_binding *b, int tensor) { return b->plan->graph.tensors[tensor].kind == SQZ_TENSOR_WEIGHT; }

/* an activation in the session's storage type */
template <typename T> T *act(const sqz_binding *b, int tensor)
{
    return (T *)((char *)b->arena->ptr + b->plan->offsets[tensor]);
}

const int *ints(const sqz_binding *b, int tensor)
{
    tensor_ref r = ref(b, tensor);
    return (const int *)(r.base + r.offset);
}

/* a weight as fp32 (embedding tables, LayerNorm parameters, biases) */
const float *weight_f32(const sqz_binding *b, int tensor)
{
    tensor_ref r = ref(b, tensor);
    return r.base + r.offset;
}

/* a weight in the storage type (matrix operands; biases for the cuBLASLt epilogue) */
const void *weight_stored(const cuda_ctx *c, const sqz_binding *b, int tensor)
{
    if (c->store == SQZ_DTYPE_F32)
        return weight_f32(b, tensor);
    const size_t index = b->weight_offsets[b->plan->graph.tensors[tensor].weight_index] / 4;
    return (const char *)b->weights->shadow + index * sqz_dtype_size(c->store);
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
    if (c->lt)
        cublasLtDestroy(c->lt);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->lt_workspace)
        cudaFree(c->lt_workspace);
#endif
    for (int i = 0; i < 2; i++)
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
                                                       ffn_variant_names};
    static const int counts[FAMILIES] = {LINEAR_VARIANTS, ATTENTION_VARIANTS, FFN_VARIANTS};
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
                            "FAMILY=VARIANT with FAMILY linear, attention or ffn", item);
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
    static const char *const known[] = {"sync", "graphs", "measure", "report", "variants", NULL};
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


/* ---- attention variants ---------------------------------------------------------------- */

template <typename T, int HD>
sqz_status attention_simt_hd(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims, T *out)
{
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    dim3 grid(blocks((size_t)dims->max_len, sqzk::ATT_Q), (unsigned)p->attention.heads, (unsigned)dims->sequences);
    sqz_launch("attention_varlen", sqzk::attention_varlen<T, HD>, grid, sqzk::ATT_Q,
               sqzk::attention_shared_bytes<HD>(), c->stream, act<T>(b, in[0]), act<T>(b, in[1]), act<T>(b, in[2]),
               ints(b, in[3]), ints(b, in[4]), out, p->attention.heads, p->attention.head_dim, p->attention.scale);
    LAUNCH_CHECK("attention_varlen", node);
    return SQZ_OK;
}

template <typename T>
sqz_status attention_simt(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims, T *out)
{
    const int hd = node->params.attention.head_dim;
    if (dims->sequences > 65535)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: the CUDA-core attention takes at most 65535 sequences per run "
                        "(node '%s' has %lld)", SQZ_CUDA_NAME, node->name, (long long)dims->sequences);
    if (hd <= 16)
        return attention_simt_hd<T, 16>(c, b, node, dims, out);
    if (hd <= 32)
        return attention_simt_hd<T, 32>(c, b, node, dims, out);
    if (hd <= 64)
        return attention_simt_hd<T, 64>(c, b, node, dims, out);
    return attention_simt_hd<T, 128>(c, b, node, dims, out);
}

/* the flash kernel's launch for one head size and warp count; its shared memory may exceed
 * 48 KiB, so the limit is raised once per instantiation */
template <typename T, int HD, int WARPS>
sqz_status flash_launch(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims, T *out)
{
    constexpr size_t shared = sqzk::fa_shared_bytes<HD, WARPS>();
    /* per function and device: set on the first (never captured) run of each shape, cheap */
    if (shared > 48 * 1024 && c->capturing < 0)
        CUDA_TRY(cudaFuncSetAttribute(sqzk::flash_attention<T, HD, WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)shared));
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    const int tiles = (int)blocks((size_t)dims->max_len, 16 * WARPS);
    const int width = p->attention.heads * HD;
    if ((long long)tiles * dims->sequences > 2147483647LL)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: %lld sequences x %d query tiles is more blocks than a grid holds",
                        SQZ_CUDA_NAME, (long long)dims->sequences, tiles);
    const dim3 grid((unsigned)(tiles * dims->sequences), (unsigned)p->attention.heads);
    const float scale_log2 = p->attention.scale * 1.4426950408889634f;
    sqz_launch("flash_attention", sqzk::flash_attention<T, HD, WARPS>, grid, 32 * WARPS, shared, c->stream,
               act<T>(b, in[0]), act<T>(b, in[1]), act<T>(b, in[2]), width, ints(b, in[3]), ints(b, in[4]), out,
               width, tiles, scale_log2);
    LAUNCH_CHECK("flash_attention", node);
    return SQZ_OK;
}

/* *ran = false when the variant does not apply (precision, head size, alignment) */
template <typename T>
sqz_status attention_run(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims,
                         int variant, T *out, bool *ran)
{
    *ran = true;
    if (variant == ATTENTION_SIMT)
        return attention_simt<T>(c, b, node, dims, out);
    const int hd = node->params.attention.head_dim;
    const int *in = node->inputs;
    *ran = variant == ATTENTION_FLASH && !std::is_same<T, float>::value && (hd == 32 || hd == 64 || hd == 128) &&
           aligned16(act<T>(b, in[0])) && aligned16(act<T>(b, in[1])) && aligned16(act<T>(b, in[2])) &&
           aligned16(out);
    if (!*ran)
        return SQZ_OK;
    if constexpr (!std::is_same<T, float>::value) {
        const bool wide = dims->max_len > 64; /* one CTA per (sequence, head) up to 128 tokens */
        if (hd == 32)
            return wide ? flash_launch<T, 32, 8>(c, b, node, dims, out) : flash_launch<T, 32, 4>(c, b, node, dims, out);
        if (hd == 64)
            return wide ? flash_launch<T, 64, 8>(c, b, node, dims, out) : flash_launch<T, 64, 4>(c, b, node, dims, out);
        return wide ? flash_launch<T, 128, 8>(c, b, node, dims, out) : flash_launch<T, 128, 4>(c, b, node, dims, out);
    }
    return SQZ_OK;
}

/* ---- choosing a variant ------------------------------------------------------------------ */

template <typename T> __global__ void compare_outputs(const T *got, const T *want, size_t n, unsigned *result)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = sqzk::to_f(got[i]), w = sqzk::to_f(want[i]), d = fabsf(g - w);
        if (!(d <= 3.0e38f) || !(fabsf(w) <= 3.0e38f)) {
            result[2] = 1;
            continue;
        }
        /* non-negative floats order as their bits */
        atomicMax(&result[0], __float_as_uint(d));
        atomicMax(&result[1], __float_as_uint(fabsf(w)));
    }
}

/* max |got - want| / max |want| of two device arrays of n elements in the storage type;
 * infinity when either holds a non-finite value */
sqz_status compare_device(cuda_ctx *c, const void *got, const void *want, size_t n, double *error)
{
    CUDA_TRY(cudaMemsetAsync(c->check, 0, 4 * sizeof(unsigned), c->stream));
    const unsigned grid = grid_1d(n);
    if (c->store == SQZ_DTYPE_F32)
        sqz_launch("compare_outputs", compare_outputs<float>, grid, 256, 0, c->stream, got, want, n, c->check);
    else if (c->store == SQZ_DTYPE_F16)
        sqz_launch("compare_outputs", compare_outputs<__half>, grid, 256, 0, c->stream, got, want, n, c->check);
    else
        sqz_launch("compare_outputs", compare_outputs<__nv_bfloat16>, grid, 256, 0, c->stream, got, want, n,
                   c->check);
    CUDA_TRY(cudaGetLastError());
    unsigned host[4];
    CUDA_TRY(cudaMemcpyAsync(host, c->check, sizeof host, cudaMemcpyDeviceToHost, c->stream));
    CUDA_TRY(cudaStreamSynchronize(c->stream));
    float d, w;
    memcpy(&d, &host[0], 4);
    memcpy(&w, &host[1], 4);
    *error = host[2] ? INFINITY : w > 0 ? d / w : d;
    return SQZ_OK;
}

/* ---- running a node through its variants ------------------------------------------------
 * A job is one linear, attention or FFN computation: its family, what identifies its shape,
 * the size of its output, and how to run variant v into a given output. */
struct variant_job {
    int family;
    int64_t key[6];
    size_t out_bytes;
    double flops, bytes; /* the work and the least memory traffic, for the kernel report */
    const sqz_node *node;
    std::function<sqz_status(int v, void *out, bool *ran)> run;
};

int variant_count(int family)
{
    return family == FAMILY_LINEAR ? (int)LINEAR_VARIANTS : family == FAMILY_ATTENTION ? (int)ATTENTION_VARIANTS
                                                                                      : (int)FFN_VARIANTS;
}

const char *variant_name(int family, int v)
{
    return family == FAMILY_LINEAR ? linear_variant_names[v]
           : family == FAMILY_ATTENTION ? attention_variant_names[v]
                                        : ffn_variant_names[v];
}

/* seconds per run of a variant that has just run once (warm): MEASURE_RUNS more, timed */
sqz_status time_variant(cuda_ctx *c, const variant_job &job, int v, void *out, double *seconds)
{
    bool ran = true;
    CUDA_TRY(cudaEventRecord(c->ev_start, c->stream));
    for (int i = 0; i < MEASURE_RUNS; i++) {
        sqz_status st = job.run(v, out, &ran);
        if (st != SQZ_OK)
            return st;
    }
    CUDA_TRY(cudaEventRecord(c->ev_stop, c->stream));
    CUDA_TRY(cudaEventSynchronize(c->ev_stop));
    float ms = 0;
    CUDA_TRY(cudaEventElapsedTime(&ms, c->ev_start, c->ev_stop));
    *seconds = ms * 1e-3 / MEASURE_RUNS;
    return SQZ_OK;
}

int64_t pow2_at_least(int64_t n)
{
    int64_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

void report_choice(const cuda_ctx *c, const variant_choice &ch)
{
    fprintf(stderr, "sqz %s: %s %s key", SQZ_CUDA_NAME, sqz_precision_name(c->precision), family_names[ch.family]);
    for (int i = 0; i < 6; i++)
        fprintf(stderr, " %lld", (long long)ch.key[i]);
    for (int v = 0; v < variant_count(ch.family); v++)
        if (ch.seconds[v] >= 0)
            fprintf(stderr, "  %s %.1f us (err %.1e)", variant_name(ch.family, v), ch.seconds[v] * 1e6, ch.error[v]);
    fprintf(stderr, "  -> %s\n", variant_name(ch.family, ch.chosen));
}

/* The variant for a job's shape: cached, forced, or measured now (see "variants" above).
 * *output_written: the chosen variant's output is already in `out`. */
sqz_status choose_variant(cuda_ctx *c, const variant_job &job, void *out, int *chosen, bool *output_written)
{
    const int family = job.family, count = variant_count(family);
    *output_written = false;
    for (int i = 0; i < c->n_choices; i++) {
        const variant_choice *k = &c->choices[i];
        if (k->family == family && memcmp(k->key, job.key, sizeof job.key) == 0) {
            *chosen = k->chosen;
            return SQZ_OK;
        }
    }
    if (c->forced[family] >= 0 || c->capturing >= 0 || c->depth >= 1 + (family == FAMILY_FFN ? 0 : 1)) {
        /* forced, or (never expected) a new shape inside a capture: nothing is measured */
        *chosen = c->forced[family] >= 0 ? c->forced[family] : 0;
        return SQZ_OK;
    }
    variant_choice ch;
    memset(&ch, 0, sizeof ch);
    ch.family = family;
    memcpy(ch.key, job.key, sizeof ch.key);
    ch.flops = job.flops, ch.bytes = job.bytes;
    for (int v = 0; v < MAX_VARIANTS; v++)
        ch.seconds[v] = -1;
    /* variant 0 into the real output: the reference */
    bool ran = false;
    sqz_status st = job.run(0, out, &ran);
    if (st == SQZ_OK && c->measure)
        st = time_variant(c, job, 0, out, &ch.seconds[0]);
    if (st != SQZ_OK)
        return st;
    ch.seconds[0] = c->measure ? ch.seconds[0] : 0;
    const double bar = sqz_precision_op_tolerance(c->precision);
    int best = 0;
    for (int v = 1; v < count && st == SQZ_OK; v++) {
        const int level = c->depth;
        if ((st = ensure_scratch(c, job.out_bytes)) != SQZ_OK)
            break;
        void *candidate = c->scratch[level];
        c->depth++; /* choices made inside this variant use the next scratch */
        st = job.run(v, candidate, &ran);
        c->depth--;
        if (st != SQZ_OK || !ran)
            continue;
        if (!c->measure) {
            best = v; /* no checking asked for: the highest that applies */
            continue;
        }
        if ((st = compare_device(c, candidate, out, job.out_bytes / sqz_dtype_size(c->store), &ch.error[v])) != SQZ_OK)
            break;
        if (!(ch.error[v] <= bar)) {
#ifdef SQZ_CUDA_SIM
            sqzsim::fault("variant %s of %s disagrees with variant %s on node '%s': max difference %.3e of the "
                          "largest value, bar %.0e", variant_name(family, v), family_names[family],
                          variant_name(family, 0), job.node->name, ch.error[v], bar);
#else
            fprintf(stderr, "sqz cuda: variant %s of %s is off on node '%s' (max difference %.3e of the largest "
                    "value, bar %.0e at %s): not used for this shape\n", variant_name(family, v),
                    family_names[family], job.node->name, ch.error[v], bar, sqz_precision_name(c->precision));
            continue;
#endif
        }
        c->depth++;
        st = time_variant(c, job, v, candidate, &ch.seconds[v]);
        c->depth--;
        if (st != SQZ_OK)
            break;
#ifdef SQZ_CUDA_SIM
        best = v; /* time means nothing here: the newest kernel that passed */
#else
        if (ch.seconds[v] < ch.seconds[best])
            best = v;
#endif
    }
    if (st != SQZ_OK)
        return st;
    ch.chosen = best;
    *output_written = best == 0; /* variant 0's output is already in place */
    if (c->n_choices < VARIANT_CHOICES)
        c->choices[c->n_choices++] = ch;
    if (c->report)
        report_choice(c, ch);
    *chosen = best;
    return SQZ_OK;
}

/* a job: its chosen variant into out */
sqz_status run_job(cuda_ctx *c, const variant_job &job, void *out)
{
    int v = 0;
    bool written = false, ran = false;
    sqz_status st = choose_variant(c, job, out, &v, &written);
    if (st != SQZ_OK || written)
        return st;
    if ((st = job.run(v, out, &ran)) != SQZ_OK)
        return st;
    if (!ran) /* a forced variant that does not apply here: the reference instead */
        st = job.run(0, out, &ran);
    return st;
}

variant_job linear_job(cuda_ctx *c, const gemm_args &a)
{
    variant_job job;
    job.family = FAMILY_LINEAR;
    memset(job.key, 0, sizeof job.key);
    job.key[0] = a.s.cin, job.key[1] = a.s.cout, job.key[2] = a.s.groups, job.key[3] = a.s.bias,
    job.key[4] = a.s.gelu, job.key[5] = pow2_at_least(a.s.rows);
    job.out_bytes = (size_t)(a.s.rows * a.s.cout) * sqz_dtype_size(c->store);
    job.flops = 2.0 * (double)a.s.rows * (double)a.s.cout * (double)a.s.cin_g;
    job.bytes = (double)(a.s.rows * a.s.cin + a.s.cout * a.s.cin_g + a.s.rows * a.s.cout) * sqz_dtype_size(c->store);
    job.node = a.node;
    job.run = [c, a](int v, void *out, bool *ran) { return linear_exec(c, a, v, out, ran); };
    return job;
}

variant_job attention_job(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    variant_job job;
    job.family = FAMILY_ATTENTION;
    memset(job.key, 0, sizeof job.key);
    job.key[0] = node->params.attention.heads, job.key[1] = node->params.attention.head_dim,
    job.key[2] = pow2_at_least(dims->max_len), job.key[3] = pow2_at_least(dims->sequences),
    job.key[4] = pow2_at_least(dims->tokens);
    job.out_bytes = (size_t)(dims->tokens * node->params.attention.heads * node->params.attention.head_dim) *
                    sqz_dtype_size(c->store);
    job.flops = 4.0 * (double)dims->score_rows * node->params.attention.heads * node->params.attention.head_dim;
    job.bytes = 4.0 * (double)job.out_bytes; /* q, k and v read, the context written */
    job.node = node;
    const sqz_run_dims d = *dims;
    job.run = [c, b, node, d](int v, void *out, bool *ran) {
        switch (c->store) {
        case SQZ_DTYPE_F32:
            return attention_run<float>(c, b, node, &d, v, (float *)out, ran);
        case SQZ_DTYPE_F16:
            return attention_run<__half>(c, b, node, &d, v, (__half *)out, ran);
        default:
            return attention_run<__nv_bfloat16>(c, b, node, &d, v, (__nv_bfloat16 *)out, ran);
        }
    };
    return job;
}

/* the fused kernel's shapes: (K1, N2) per group and a warp count, instantiated for the models'
 * group sizes (SqueezeBERT's 192, small test models' 32) */
template <typename T, int K1, int N2, int WARPS>
sqz_status ffn_fused_launch(cuda_ctx *c, const sqz_node *node, const gemm_args &first, const gemm_args &second,
                            void *y)
{
    constexpr size_t shared = sqzk::ffn_shared_bytes<K1, N2, WARPS>();
    if (shared > 48 * 1024 && c->capturing < 0) /* as in flash_launch */
        CUDA_TRY(cudaFuncSetAttribute(sqzk::ffn_fused<T, K1, N2, WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)shared));
    const dim3 grid(blocks((size_t)first.s.rows, 16 * WARPS), (unsigned)first.s.groups);
    sqz_launch("ffn_fused", sqzk::ffn_fused<T, K1, N2, WARPS>, grid, 32 * WARPS, shared, c->stream, first.x, first.w,
               first.bias32, second.w, second.bias32, y, (int)first.s.rows, first.s.groups, (int)first.s.cout_g);
    LAUNCH_CHECK("ffn_fused", node);
    return SQZ_OK;
}

template <typename T>
sqz_status ffn_fused_run(cuda_ctx *c, const sqz_node *node, const gemm_args &first, const gemm_args &second, void *y,
                         bool *ran)
{
    const int64_t k1 = first.s.cin_g, n2 = second.s.cout_g;
    const uintptr_t any = (uintptr_t)first.x | (uintptr_t)first.w | (uintptr_t)second.w | (uintptr_t)y;
    *ran = (any & 15) == 0 && first.s.cout_g % 8 == 0 && ((k1 == 192 && n2 == 192) || (k1 == 32 && n2 == 32));
    if (!*ran)
        return SQZ_OK;
    const bool many = first.s.rows > 64 * 132; /* enough rows to fill the SMs with bigger tiles */
    if (k1 == 192)
        return many ? ffn_fused_launch<T, 192, 192, 8>(c, node, first, second, y)
                    : ffn_fused_launch<T, 192, 192, 4>(c, node, first, second, y);
    return ffn_fused_launch<T, 32, 32, 4>(c, node, first, second, y);
}

variant_job ffn_job(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims, int64_t rows)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    /* the two products as the unfused plan had them */
    gemm_args first, second;
    first.s.rows = second.s.rows = rows;
    first.s.groups = second.s.groups = node->params.linear.groups;
    first.s.cin = g->tensors[in[0]].cols;
    first.s.cout = second.s.cin = g->tensors[in[1]].fixed_rows;
    second.s.cout = g->tensors[node->output].cols;
    first.s.cin_g = first.s.cin / first.s.groups, first.s.cout_g = first.s.cout / first.s.groups;
    second.s.cin_g = second.s.cin / second.s.groups, second.s.cout_g = second.s.cout / second.s.groups;
    first.s.bias = second.s.bias = true;
    first.s.gelu = true, second.s.gelu = false;
    first.x = act<char>(b, in[0]);
    first.w = weight_stored(c, b, in[1]), first.bias32 = weight_f32(b, in[2]), first.bias_stored = weight_stored(c, b, in[2]);
    second.x = NULL; /* the hidden activation, where the variant puts it */
    second.w = weight_stored(c, b, in[3]), second.bias32 = weight_f32(b, in[4]), second.bias_stored = weight_stored(c, b, in[4]);
    first.node = second.node = node;
    (void)dims;
    variant_job job;
    job.family = FAMILY_FFN;
    memset(job.key, 0, sizeof job.key);
    job.key[0] = first.s.cin, job.key[1] = first.s.cout, job.key[2] = second.s.cout, job.key[3] = first.s.groups,
    job.key[4] = pow2_at_least(rows);
    job.out_bytes = (size_t)(rows * second.s.cout) * sqz_dtype_size(c->store);
    job.flops = 2.0 * (double)rows * ((double)first.s.cout * first.s.cin_g + (double)second.s.cout * second.s.cin_g);
    job.bytes = (double)(rows * first.s.cin + first.s.cout * first.s.cin_g + second.s.cout * second.s.cin_g +
                         rows * second.s.cout) * sqz_dtype_size(c->store);
    job.node = node;
    job.run = [c, node, first, second](int v, void *out, bool *ran) -> sqz_status {
        *ran = true;
        if (v == FFN_FUSED) {
            if (c->store == SQZ_DTYPE_F32) {
                *ran = false;
                return SQZ_OK;
            }
            return c->store == SQZ_DTYPE_F16 ? ffn_fused_run<__half>(c, node, first, second, out, ran)
                                         : ffn_fused_run<__nv_bfloat16>(c, node, first, second, out, ran);
        }
        /* the hidden activation in c->hidden: growing it invalidates graphs that captured it */
        const size_t hidden_bytes = (size_t)(first.s.rows * first.s.cout) * sqz_dtype_size(c->store);
        if (c->hidden_bytes < hidden_bytes) {
            for (int i = 0; i < GRAPH_CACHE; i++)
                graph_drop(&c->graphs[i]);
            sqz_status st = ensure_device(c, &c->hidden, &c->hidden_bytes, hidden_bytes);
            if (st != SQZ_OK)
                return st;
        }
        gemm_args second_in = second;
        second_in.x = c->hidden;
        if (v == FFN_SIMT) {
            bool applied = false;
            sqz_status st = linear_exec(c, first, LINEAR_SIMT, c->hidden, &applied);
            return st != SQZ_OK ? st : linear_exec(c, second_in, LINEAR_SIMT, out, &applied);
        }
        sqz_status st = run_job(c, linear_job(c, first), c->hidden); /* FFN_SPLIT */
        return st != SQZ_OK ? st : run_job(c, linear_job(c, second_in), out);
    };
    return job;
}

/* ---- other ops, in the storage type T ------------------------------------------------- */

/* the LayerNorm family with E columns per access and embedding tables of type TAB */
template <typename T, typename TAB, int E>
sqz_status layernorm_launch_e(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows, int64_t cols,
                              const TAB *word, const TAB *pos, const TAB *type)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    const float eps = node->params.layernorm.eps;
    const unsigned grid = blocks((size_t)rows, sqzk::LN_ROWS_PER_BLOCK), threads = 32 * sqzk::LN_ROWS_PER_BLOCK;
    T *out = act<T>(b, node->output);
    const T *none = NULL;
    const int *no_ints = NULL;
    const TAB *no_table = NULL;
    switch (node->op) {
    case SQZ_OP_LAYERNORM:
        sqz_launch("layernorm", sqzk::layernorm_rows<T, TAB, sqzk::LN_PLAIN, E>, grid, threads, 0, c->stream,
                   act<T>(b, in[0]), none, no_ints, no_ints, no_ints, no_table, no_table, no_table, 0, 0, 0,
                   weight_f32(b, in[1]), weight_f32(b, in[2]), out, (int)rows, (int)cols, eps);
        break;
    case SQZ_OP_ADD_LAYERNORM:
        sqz_launch("add_layernorm", sqzk::layernorm_rows<T, TAB, sqzk::LN_ADD, E>, grid, threads, 0, c->stream,
                   act<T>(b, in[0]), act<T>(b, in[1]), no_ints, no_ints, no_ints, no_table, no_table, no_table, 0, 0,
                   0, weight_f32(b, in[2]), weight_f32(b, in[3]), out, (int)rows, (int)cols, eps);
        break;
    default: /* SQZ_OP_EMBED_LAYERNORM: ids, positions, types, word, pos, type, gamma, beta */
        sqz_launch("embed_layernorm", sqzk::layernorm_rows<T, TAB, sqzk::LN_EMBED, E>, grid, threads, 0, c->stream,
                   none, none, ints(b, in[0]), ints(b, in[1]), ints(b, in[2]), word, pos, type,
                   (int)g->tensors[in[3]].fixed_rows, (int)g->tensors[in[4]].fixed_rows,
                   (int)g->tensors[in[5]].fixed_rows, weight_f32(b, in[6]), weight_f32(b, in[7]), out, (int)rows,
                   (int)cols, eps);
        break;
    }
    LAUNCH_CHECK(sqz_op_name(node->op), node);
    return SQZ_OK;
}

/* 16-byte accesses where every row and operand allows them; embedding tables in the storage
 * type at 16-bit precisions (the session's copy of the weights), fp32 otherwise */
template <typename T>
sqz_status layernorm_launch(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows, int64_t cols)
{
    constexpr int E = 16 / sizeof(T);
    const int *in = node->inputs;
    const int n_ptr = node->op == SQZ_OP_EMBED_LAYERNORM ? 5 : node->op == SQZ_OP_ADD_LAYERNORM ? 5 : 4;
    const void *ptrs[5] = {act<T>(b, node->output)};
    if (node->op == SQZ_OP_EMBED_LAYERNORM) {
        ptrs[1] = weight_stored(c, b, in[3]), ptrs[2] = weight_stored(c, b, in[4]), ptrs[3] = weight_stored(c, b, in[5]);
        ptrs[4] = weight_f32(b, in[6]);
    } else {
        ptrs[1] = act<T>(b, in[0]);
        ptrs[2] = weight_f32(b, in[node->op == SQZ_OP_ADD_LAYERNORM ? 2 : 1]);
        ptrs[3] = weight_f32(b, in[node->op == SQZ_OP_ADD_LAYERNORM ? 3 : 2]);
        if (node->op == SQZ_OP_ADD_LAYERNORM)
            ptrs[4] = act<T>(b, in[1]);
    }
    bool vec = cols % E == 0;
    for (int i = 0; i < n_ptr; i++)
        vec = vec && aligned16(ptrs[i]);
    if (node->op == SQZ_OP_EMBED_LAYERNORM) {
        vec = vec && aligned16(weight_f32(b, in[7]));
        if (c->store != SQZ_DTYPE_F32) {
            const T *word = (const T *)ptrs[1], *pos = (const T *)ptrs[2], *type = (const T *)ptrs[3];
            return vec ? layernorm_launch_e<T, T, E>(c, b, node, rows, cols, word, pos, type)
                       : layernorm_launch_e<T, T, 1>(c, b, node, rows, cols, word, pos, type);
        }
    }
    const float *word = NULL, *pos = NULL, *type = NULL;
    if (node->op == SQZ_OP_EMBED_LAYERNORM)
        word = weight_f32(b, in[3]), pos = weight_f32(b, in[4]), type = weight_f32(b, in[5]);
    return vec ? layernorm_launch_e<T, float, E>(c, b, node, rows, cols, word, pos, type)
               : layernorm_launch_e<T, float, 1>(c, b, node, rows, cols, word, pos, type);
}

template <typename T>
sqz_status launch_typed(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims,
                        int64_t rows, int64_t cols)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    const size_t n = (size_t)(rows * cols);
    switch (node->op) {
    case SQZ_OP_GATHER_ROWS: {
        if (rows > 65535)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: gather_rows of %lld rows (node '%s'): at most 65535",
                            SQZ_CUDA_NAME, (long long)rows, node->name);
        dim3 grid(blocks((size_t)cols, 128) < 8 ? blocks((size_t)cols, 128) : 8, (unsigned)rows);
        const int table_rows = (int)sqz_tensor_rows(&g->tensors[in[1]], dims);
        if (is_weight(b, in[1])) /* an embedding table: fp32 weights into T activations */
            sqz_launch("gather_rows", sqzk::gather_rows<float, T>, grid, 128, 0, c->stream, ints(b, in[0]),
                       weight_f32(b, in[1]), act<T>(b, node->output), (int)rows, (int)cols, table_rows);
        else
            sqz_launch("gather_rows", sqzk::gather_rows<T, T>, grid, 128, 0, c->stream, ints(b, in[0]),
                       act<T>(b, in[1]), act<T>(b, node->output), (int)rows, (int)cols, table_rows);
        break;
    }
    case SQZ_OP_ADD:
        sqz_launch("add", sqzk::add<T>, grid_1d(n), 256, 0, c->stream, act<T>(b, in[0]), act<T>(b, in[1]),
                   act<T>(b, node->output), n);
        break;
    case SQZ_OP_GELU:
    case SQZ_OP_TANH:
        sqz_launch("unary", sqzk::unary<T>, grid_1d(n), 256, 0, c->stream, act<T>(b, in[0]), act<T>(b, node->output), n,
                   (int)(node->op == SQZ_OP_GELU ? sqzk::UN_GELU : sqzk::UN_TANH));
        break;
    case SQZ_OP_LAYERNORM:
    case SQZ_OP_ADD_LAYERNORM:
    case SQZ_OP_EMBED_LAYERNORM:
        return layernorm_launch<T>(c, b, node, rows, cols);
    default:
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: op %s (node '%s') is not implemented at %s", SQZ_CUDA_NAME,
                        sqz_op_name(node->op), node->name, sqz_precision_name(c->precision));
    }
    LAUNCH_CHECK(sqz_op_name(node->op), node);
    return SQZ_OK;
}

/* the unfused attention parts: the shared fp32 source */
sqz_status launch_unfused_attention(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    const int T = (int)dims->tokens, S = (int)dims->sequences;
    if (dims->max_len > 65535)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: unfused attention over %lld tokens: at most 65535", SQZ_CUDA_NAME,
                        (long long)dims->max_len);
    switch (node->op) {
    case SQZ_OP_ATTN_SCORES: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads, (unsigned)dims->max_len);
        sqz_launch("sqz_attn_scores", sqz_attn_scores, grid, block, 0, c->stream, F(in[0]), F(in[1]), I(in[2]),
                   I(in[3]), F(node->output), T, S, p->attention.heads, p->attention.head_dim, p->attention.scale,
                   (int)dims->max_len);
        break;
    }
    case SQZ_OP_ATTN_KEY_MASK: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads, (unsigned)dims->max_len);
        sqz_launch("sqz_attn_key_mask", sqz_attn_key_mask, grid, block, 0, c->stream, F(in[0]), I(in[1]), I(in[2]),
                   I(in[3]), F(node->output), T, S, p->attention.heads, (int)dims->max_len);
        break;
    }
    case SQZ_OP_ATTN_SOFTMAX: {
        dim3 block(64, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads);
        sqz_launch("sqz_attn_softmax", sqz_attn_softmax, grid, block, 0, c->stream, F(in[0]), I(in[1]), I(in[2]),
                   F(node->output), T, S, p->attention.heads);
        break;
    }
    default: { /* SQZ_OP_ATTN_CONTEXT */
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads,
                                   (unsigned)p->attention.head_dim);
        sqz_launch("sqz_attn_context", sqz_attn_context, grid, block, 0, c->stream, F(in[0]), F(in[1]), I(in[2]),
                   I(in[3]), F(node->output), T, S, p->attention.heads, p->attention.head_dim);
        break;
    }
    }
    LAUNCH_CHECK(sqz_op_name(node->op), node);
    return SQZ_OK;
}

sqz_status cuda_launch(void *ctx, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    const sqz_graph *g = &b->plan->graph;
    const sqz_tensor_desc *out = &g->tensors[node->output];
    const int64_t rows = sqz_tensor_rows(out, dims), cols = out->cols;
    if (rows == 0)
        return SQZ_OK;
    /* the matrix kernels and the weights' copy follow the precision set */
    sqz_status st = sqz_backend_check_dtype(SQZ_CUDA_NAME, b, node, c->store);
    if (st == SQZ_OK)
        st = ensure_shadow(c, b->weights);
    if (st != SQZ_OK)
        return st;
    switch (node->op) {
    case SQZ_OP_LINEAR:
    case SQZ_OP_LINEAR_GELU:
        st = run_job(c, linear_job(c, linear_args(c, b, node, rows)), act<char>(b, node->output));
        break;
    case SQZ_OP_ATTENTION:
        st = run_job(c, attention_job(c, b, node, dims), act<char>(b, node->output));
        break;
    case SQZ_OP_FFN:
        st = run_job(c, ffn_job(c, b, node, dims, rows), act<char>(b, node->output));
        break;
    case SQZ_OP_ATTN_SCORES:
    case SQZ_OP_ATTN_KEY_MASK:
    case SQZ_OP_ATTN_SOFTMAX:
    case SQZ_OP_ATTN_CONTEXT:
        if (out->dtype != SQZ_DTYPE_F32)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: the unfused attention (node '%s') runs at fp32 only, not "
                            "%s; unset SQZ_DISABLE_FUSION", SQZ_CUDA_NAME, node->name,
                            sqz_precision_name(c->precision));
        st = launch_unfused_attention(c, b, node, dims);
        break;
    default:
        st = out->dtype == SQZ_DTYPE_F32   ? launch_typed<float>(c, b, node, dims, rows, cols)
             : out->dtype == SQZ_DTYPE_F16 ? launch_typed<__half>(c, b, node, dims, rows, cols)
                                           : launch_typed<__nv_bfloat16>(c, b, node, dims, rows, cols);
        break;
    }
    return st;
}

/* ---- CUDA graphs ----------------------------------------------------------------------
 * A run's launches depend only on the plan's bucket, the run's dims and the two buffers, so
 * one graph per such key is captured on the key's second run (one-off shapes never pay the
 * capture) and replayed on every later one. */
int graph_find(cuda_ctx *c, const sqz_binding *b, const sqz_run_dims *dims)
{
    int victim = 0;
    for (int i = 0; i < GRAPH_CACHE; i++) {
        graph_entry *e = &c->graphs[i];
        if (e->runs && e->arena == b->arena && e->weights == b->weights &&
            memcmp(&e->bucket, &b->plan->bucket, sizeof e->bucket) == 0 && memcmp(&e->dims, dims, sizeof *dims) == 0)
            return i;
        if (!e->runs || (c->graphs[victim].runs && e->last_used < c->graphs[victim].last_used))
            victim = i;
    }
    graph_entry *e = &c->graphs[victim]; /* a new key takes the least recently used slot */
    graph_drop(e);
    e->bucket = b->plan->bucket;
    e->dims = *dims;
    e->arena = b->arena;
    e->weights = b->weights;
    return victim;
}

sqz_status cuda_run_begin(void *ctx, const sqz_binding *b, const sqz_run_dims *dims, bool *replayed)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    *replayed = false;
    if (!c->use_graphs)
        return SQZ_OK;
    sqz_status st = ensure_shadow(c, b->weights); /* never inside a capture */
    if (st != SQZ_OK)
        return st;
    const int i = graph_find(c, b, dims);
    graph_entry *e = &c->graphs[i];
    e->last_used = ++c->clock;
    if (e->exec) {
        CUDA_TRY(cudaGraphLaunch(e->exec, c->stream));
        e->runs++;
        c->graphs_replayed++;
        *replayed = true;
        return SQZ_OK;
    }
    if (e->runs++ == 0)
        return SQZ_OK; /* first run of this key: launch directly */
    CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = i;
    return SQZ_OK;
}

sqz_status cuda_run_end(void *ctx, const sqz_binding *b, const sqz_run_dims *dims, bool ok)
{
    (void)b;
    (void)dims;
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (c->capturing < 0)
        return SQZ_OK;
    graph_entry *e = &c->graphs[c->capturing];
    c->capturing = -1;
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(c->stream, &graph);
    if (!ok || err != cudaSuccess) {
        if (graph)
            cudaGraphDestroy(graph);
        graph_drop(e);
        cudaGetLastError(); /* clear a capture error; the launch error was reported */
        if (ok)
            return sqz_fail(SQZ_ERR_BACKEND, "%s: cudaStreamEndCapture failed: %s (%s) at %s:%d", SQZ_CUDA_NAME,
                            cudaGetErrorName(err), cudaGetErrorString(err), __FILE__, __LINE__);
        return SQZ_OK;
    }
    err = cudaGraphInstantiate(&e->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
        e->exec = NULL;
        graph_drop(e);
        return sqz_fail(SQZ_ERR_BACKEND, "%s: cudaGraphInstantiate failed: %s (%s) at %s:%d", SQZ_CUDA_NAME,
                        cudaGetErrorName(err), cudaGetErrorString(err), __FILE__, __LINE__);
    }
    /* capturing recorded the launches without running them: run them now */
    c->graphs_captured++;
    CUDA_TRY(cudaGraphLaunch(e->exec, c->stream));
    return SQZ_OK;
}

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
        if (node->op == SQZ_OP_FFN) {
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
        else if (ch.family == FAMILY_FFN)
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
