/* The CUDA backend. Grouped linear layers are one strided-batched GEMM over the groups
 * (cuBLASLt with the bias in its epilogue; cuBLAS plus a bias kernel where cuBLASLt has no
 * algorithm). LayerNorm, attention and elementwise ops run the GPU-shaped kernels of
 * cuda/cuda_kernels.cuh; the unfused attention parts run the shared OpenCL source
 * (kernels/sqz_kernels.cl compiled as CUDA through kernels/sqz_dialect_cuda.cuh). Every
 * CUDA, cuBLAS and cuBLASLt status is checked and reported with the call, the library's
 * error name and string, and file:line. One stream; a run's launches are captured once as a
 * CUDA graph (on the second run of the same shapes) and replayed after that. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/sqz_dialect_cuda.cuh"

#include "kernels/sqz_kernels.cl"

#undef lo
#undef hi
#undef rsqrt

#include "cuda/cuda_kernels.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <type_traits>

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


/* cuBLASLt reports with the cuBLAS status type */
#define LT_TRY(call) CUBLAS_TRY(call)

enum storage { STORE_F32, STORE_F16, STORE_BF16 };

static size_t element_size(storage st) { return st == STORE_F32 ? 4 : 2; }

/* Activations written in 16 bits keep the fp32 layout's byte offset and use the first half
 * of their slot; a download of such a tensor converts it back (see find_region). */
struct region {
    size_t offset, fp32_bytes;
};

struct sqz_buffer {
    void *ptr;
    size_t bytes;
    /* weights at a 16-bit precision: a converted copy, same element offsets */
    void *shadow;
    storage shadow_storage;
    bool shadow_valid;
    region *regions;
    size_t n_regions, cap_regions;
};

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

/* the measured way to run one GEMM shape (see linear()) */
struct gemm_choice {
    int64_t cin, cout, rows_bucket;
    int groups;
    bool bias, gelu, use_lt;
    double lt_seconds, blas_seconds;
};

#define GEMM_CHOICES 128
#define GRAPH_CACHE 16
#define STAGING_MAX (8u << 20) /* uploads up to this size go through pinned memory */

struct cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    bool sync_each, use_lt, use_graphs;
    sqz_precision precision;
    storage store;
    char description[512];
    /* pinned staging for uploads: filled front to back, reset once the stream is idle */
    char *pinned;
    size_t pinned_bytes, pinned_used;
    /* device scratch for converting 16-bit activations on download */
    void *scratch;
    size_t scratch_bytes;
    graph_entry graphs[GRAPH_CACHE];
    unsigned long clock;
    int capturing; /* graph slot being captured, or -1 */
    gemm_choice choices[GEMM_CHOICES];
    int n_choices;
    bool choose_gemm, report_choices;
    bool tc_attention; /* SQZ_CUDA_ATTENTION=tc: the tensor-core attention at fp16/bf16 */
    cudaEvent_t ev_start, ev_stop;
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

static void graph_drop(graph_entry *e)
{
    if (e->exec)
        cudaGraphExecDestroy(e->exec);
    memset(e, 0, sizeof *e);
}

static void cuda_destroy(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!c)
        return;
    for (int i = 0; i < GRAPH_CACHE; i++)
        graph_drop(&c->graphs[i]);
    if (c->lt)
        cublasLtDestroy(c->lt);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->lt_workspace)
        cudaFree(c->lt_workspace);
    if (c->scratch)
        cudaFree(c->scratch);
    if (c->pinned)
        cudaFreeHost(c->pinned);
    if (c->ev_start)
        cudaEventDestroy(c->ev_start);
    if (c->ev_stop)
        cudaEventDestroy(c->ev_stop);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static bool env_flag(const char *name, bool fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    return strcmp(v, "0") != 0;
}

static sqz_status cuda_create_checked(cuda_ctx *c, const char *device)
{
    c->capturing = -1;
    sqz_status st = cuda_probe_impl();
    if (st == SQZ_OK)
        st = select_device(device, &c->device);
    if (st != SQZ_OK)
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
    c->sync_each = env_flag("SQZ_CUDA_SYNC", false);
    c->use_lt = env_flag("SQZ_CUDA_LT", true);
    c->use_graphs = env_flag("SQZ_CUDA_GRAPHS", true) && !c->sync_each;
    c->choose_gemm = env_flag("SQZ_CUDA_MEASURE", true);
    c->report_choices = env_flag("SQZ_CUDA_REPORT", false);
    const char *attention = getenv("SQZ_CUDA_ATTENTION");
    c->tc_attention = attention && strcmp(attention, "tc") == 0;
    CUDA_TRY(cudaEventCreate(&c->ev_start));
    CUDA_TRY(cudaEventCreate(&c->ev_stop));
    c->precision = SQZ_PRECISION_FP32;
    c->store = STORE_F32;
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, c->device));
    int driver = 0;
    CUDA_TRY(cudaDriverGetVersion(&driver));
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

static sqz_status cuda_set_precision(void *ctx, sqz_precision precision)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    switch (precision) {
    case SQZ_PRECISION_FP32:
        CUBLAS_TRY(cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH));
        c->store = STORE_F32;
        break;
    case SQZ_PRECISION_TF32:
        CUBLAS_TRY(cublasSetMathMode(c->blas, CUBLAS_TF32_TENSOR_OP_MATH));
        c->store = STORE_F32;
        break;
    case SQZ_PRECISION_FP16:
    case SQZ_PRECISION_BF16:
        CUBLAS_TRY(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
        c->store = precision == SQZ_PRECISION_FP16 ? STORE_F16 : STORE_BF16;
        break;
    default:
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cuda: unknown precision %d", (int)precision);
    }
    c->precision = precision;
    return SQZ_OK;
}

static sqz_status cuda_buffer_alloc(void *ctx, size_t bytes, sqz_buffer **out)
{
    (void)ctx;
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
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!b)
        return;
    /* a graph that points into this buffer must never be replayed */
    for (int i = 0; c && i < GRAPH_CACHE; i++)
        if (c->graphs[i].arena == b || c->graphs[i].weights == b)
            graph_drop(&c->graphs[i]);
    if (b->ptr)
        cudaFree(b->ptr);
    if (b->shadow)
        cudaFree(b->shadow);
    free(b->regions);
    free(b);
}

/* ---- 16-bit regions of the arena ------------------------------------------------------ */

static void regions_erase(sqz_buffer *b, size_t offset, size_t bytes)
{
    size_t kept = 0;
    for (size_t i = 0; i < b->n_regions; i++) {
        const region r = b->regions[i];
        if (r.offset < offset + bytes && offset < r.offset + r.fp32_bytes)
            continue;
        b->regions[kept++] = r;
    }
    b->n_regions = kept;
}

static sqz_status regions_add(sqz_buffer *b, size_t offset, size_t fp32_bytes)
{
    regions_erase(b, offset, fp32_bytes);
    if (b->n_regions == b->cap_regions) {
        size_t cap = b->cap_regions ? 2 * b->cap_regions : 64;
        region *r = (region *)realloc(b->regions, cap * sizeof *r);
        if (!r)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        b->regions = r;
        b->cap_regions = cap;
    }
    b->regions[b->n_regions++] = {offset, fp32_bytes};
    return SQZ_OK;
}

static const region *find_region(const sqz_buffer *b, size_t offset, size_t bytes)
{
    for (size_t i = 0; i < b->n_regions; i++) {
        const region *r = &b->regions[i];
        if (r->offset < offset + bytes && offset < r->offset + r->fp32_bytes)
            return r;
    }
    return NULL;
}

/* ---- copies --------------------------------------------------------------------------- */

static sqz_status cuda_synchronize(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    CUDA_TRY(cudaStreamSynchronize(c->stream));
    c->pinned_used = 0;
    return SQZ_OK;
}

/* Small uploads (a run's ids, positions, offsets) are copied into pinned memory and sent
 * asynchronously, in stream order before the launches that read them; big ones (weights,
 * once per session) are copied synchronously from the caller's memory. */
static sqz_status cuda_upload(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cuda: upload of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, dst->bytes);
    if (!bytes)
        return SQZ_OK;
    regions_erase(dst, offset, bytes);
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

template <typename T> static void launch_to_f32(cuda_ctx *c, const void *in, float *out, size_t n)
{
    sqzk::convert_to_f32<T><<<(unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096), 256, 0, c->stream>>>(
        (const T *)in, out, n);
}

static sqz_status cuda_download(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cuda: download of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, src->bytes);
    if (!bytes)
        return SQZ_OK;
    const region *r = c->store == STORE_F32 ? NULL : find_region(src, offset, bytes);
    if (!r) {
        CUDA_TRY(cudaMemcpyAsync(dst, (const char *)src->ptr + offset, bytes, cudaMemcpyDeviceToHost, c->stream));
        return cuda_synchronize(c);
    }
    /* fp32 values of a 16-bit tensor: convert on the device, then copy */
    if (offset < r->offset || offset + bytes > r->offset + r->fp32_bytes || (offset - r->offset) % 4 || bytes % 4)
        return sqz_fail(SQZ_ERR_INTERNAL, "cuda: download [%zu, +%zu) straddles a 16-bit tensor at [%zu, +%zu)",
                        offset, bytes, r->offset, r->fp32_bytes);
    if (c->scratch_bytes < bytes) {
        if (c->scratch)
            CUDA_TRY(cudaFree(c->scratch));
        c->scratch = NULL;
        c->scratch_bytes = 0;
        CUDA_TRY(cudaMalloc(&c->scratch, bytes));
        c->scratch_bytes = bytes;
    }
    const size_t first = (offset - r->offset) / 4, n = bytes / 4;
    const char *from = (const char *)src->ptr + r->offset + first * element_size(c->store);
    if (c->store == STORE_F16)
        launch_to_f32<__half>(c, from, (float *)c->scratch, n);
    else
        launch_to_f32<__nv_bfloat16>(c, from, (float *)c->scratch, n);
    CUDA_TRY(cudaGetLastError());
    CUDA_TRY(cudaMemcpyAsync(dst, c->scratch, bytes, cudaMemcpyDeviceToHost, c->stream));
    return cuda_synchronize(c);
}

/* The weights in the session's 16-bit type, converted once after they change. */
static sqz_status ensure_shadow(cuda_ctx *c, sqz_buffer *w)
{
    if (c->store == STORE_F32 || (w->shadow_valid && w->shadow_storage == c->store))
        return SQZ_OK;
    if (c->capturing >= 0)
        return sqz_fail(SQZ_ERR_INTERNAL, "cuda: weights converted during graph capture");
    const size_t n = w->bytes / 4;
    if (!w->shadow)
        CUDA_TRY(cudaMalloc(&w->shadow, n * 2 + 16));
    const unsigned grid = (unsigned)((n + 255) / 256 < 8192 ? (n + 255) / 256 : 8192);
    if (c->store == STORE_F16)
        sqzk::convert_from_f32<__half><<<grid ? grid : 1, 256, 0, c->stream>>>((const float *)w->ptr,
                                                                              (__half *)w->shadow, n);
    else
        sqzk::convert_from_f32<__nv_bfloat16><<<grid ? grid : 1, 256, 0, c->stream>>>(
            (const float *)w->ptr, (__nv_bfloat16 *)w->shadow, n);
    CUDA_TRY(cudaGetLastError());
    w->shadow_storage = c->store;
    w->shadow_valid = true;
    return SQZ_OK;
}

static bool cuda_supports(void *ctx, const sqz_node *node)
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

static tensor_ref ref(const sqz_binding *b, int tensor)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[tensor];
    if (d->kind == SQZ_TENSOR_WEIGHT)
        return {(float *)b->weights->ptr, (ulong)(b->weight_offsets[d->weight_index] / 4)};
    return {(float *)b->arena->ptr, (ulong)(b->plan->offsets[tensor] / 4)};
}

#define F(t) ref(b, t).base, ref(b, t).offset
#define I(t) (const int *)ref(b, t).base, ref(b, t).offset

static bool is_weight(const sqz_binding *b, int tensor)
{
    return b->plan->graph.tensors[tensor].kind == SQZ_TENSOR_WEIGHT;
}

/* an activation in the session's storage type */
template <typename T> static T *act(const sqz_binding *b, int tensor)
{
    return (T *)((char *)b->arena->ptr + b->plan->offsets[tensor]);
}

static const int *ints(const sqz_binding *b, int tensor)
{
    tensor_ref r = ref(b, tensor);
    return (const int *)(r.base + r.offset);
}

/* a weight as fp32 (embedding tables, LayerNorm parameters, biases) */
static const float *weight_f32(const sqz_binding *b, int tensor)
{
    tensor_ref r = ref(b, tensor);
    return r.base + r.offset;
}

/* a weight in the storage type (matrix operands; biases for the cuBLASLt epilogue) */
static const void *weight_stored(const cuda_ctx *c, const sqz_binding *b, int tensor)
{
    if (c->store == STORE_F32)
        return weight_f32(b, tensor);
    const size_t index = b->weight_offsets[b->plan->graph.tensors[tensor].weight_index] / 4;
    return (const char *)b->weights->shadow + index * element_size(c->store);
}

static unsigned blocks(size_t n, unsigned per_block) { return (unsigned)((n + per_block - 1) / per_block); }

static unsigned grid_1d(size_t n) { return n == 0 ? 1 : blocks(n, 256) < 16384 ? blocks(n, 256) : 16384; }

static cudaDataType_t data_type(storage st)
{
    return st == STORE_F32 ? CUDA_R_32F : st == STORE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

static cublasComputeType_t compute_type(sqz_precision p)
{
    return p == SQZ_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* ---- grouped linear --------------------------------------------------------------------
 * On row-major activations, in cuBLAS's column-major view: Y^T[g] (cout_g x rows) =
 * W_g (stored [cout_g][cin_g], so transposed) x X^T[g] (cin_g x rows, leading dimension cin);
 * the groups are a batch with stride cin_g in X, cout_g in Y and cout_g x cin_g in W. */
struct gemm_shape {
    int64_t rows, cin, cout, cin_g, cout_g;
    int groups;
};

/* the largest power of two up to 256 dividing a pointer, a batch stride and a column stride */
static uint32_t alignment(uintptr_t pointer, size_t batch_stride_bytes, size_t ld_bytes)
{
    uint32_t a = 256;
    while (a > 1 && ((pointer | batch_stride_bytes | ld_bytes) & (a - 1)))
        a >>= 1;
    return a;
}

/* cuBLASLt with the bias in the epilogue. *done = false when cuBLASLt has no algorithm for
 * this shape and precision (the caller falls back to cuBLAS). */
static sqz_status linear_lt(cuda_ctx *c, const gemm_shape &s, const void *w, const void *x, void *y,
                            const void *bias, bool *done)
{
    *done = false;
    const cudaDataType_t dt = data_type(c->store);
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    sqz_status st = SQZ_OK;
    const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
    const int32_t batch = s.groups;
    const int64_t stride_a = s.cout_g * s.cin_g, stride_b = s.cin_g, stride_d = s.cout_g, bias_stride = s.cout_g;
    const cublasLtEpilogue_t epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const size_t ws = c->lt_workspace_bytes;
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    const float one = 1.0f, zero = 0.0f;
    const size_t es = element_size(c->store);
    const uint32_t align_a = alignment((uintptr_t)w, (size_t)stride_a * es, (size_t)s.cin_g * es);
    const uint32_t align_b = alignment((uintptr_t)x, (size_t)stride_b * es, (size_t)s.cin * es);
    const uint32_t align_d = alignment((uintptr_t)y, (size_t)stride_d * es, (size_t)s.cout * es);
#define LT_STEP(call)                                                                                      \
    do {                                                                                                   \
        cublasStatus_t st_ = (call);                                                                       \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                \
            st = sqz_fail(SQZ_ERR_BACKEND, "cuda: %s failed: %s (%s) at %s:%d", #call,                      \
                          cublasGetStatusName(st_), cublasGetStatusString(st_), __FILE__, __LINE__);      \
            goto out;                                                                                      \
        }                                                                                                  \
    } while (0)
    LT_STEP(cublasLtMatmulDescCreate(&op, compute_type(c->precision), CUDA_R_32F));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof trans));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof no_trans));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (bias) {
        LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bias_stride,
                                               sizeof bias_stride));
    }
    LT_STEP(cublasLtMatrixLayoutCreate(&la, dt, (uint64_t)s.cin_g, (uint64_t)s.cout_g, s.cin_g));
    LT_STEP(cublasLtMatrixLayoutCreate(&lb, dt, (uint64_t)s.cin_g, (uint64_t)s.rows, s.cin));
    LT_STEP(cublasLtMatrixLayoutCreate(&ld, dt, (uint64_t)s.cout_g, (uint64_t)s.rows, s.cout));
    LT_STEP(cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LT_STEP(cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_a,
                                             sizeof stride_a));
    LT_STEP(cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LT_STEP(cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_b,
                                             sizeof stride_b));
    LT_STEP(cublasLtMatrixLayoutSetAttribute(ld, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LT_STEP(cublasLtMatrixLayoutSetAttribute(ld, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_d,
                                             sizeof stride_d));
    LT_STEP(cublasLtMatmulPreferenceCreate(&pref));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    /* the heuristic assumes 256-byte alignment unless told: tell it what the pointers and
     * the group strides really give (odd group sizes give less) */
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                 sizeof align_a));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                 sizeof align_b));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                 sizeof align_d));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                 sizeof align_d));
    if (cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, ld, ld, pref, 1, &heuristic, &found) !=
            CUBLAS_STATUS_SUCCESS ||
        found == 0)
        goto out; /* no algorithm: not an error, the caller falls back */
    /* a refusal here enqueues nothing, so falling back stays correct */
    *done = cublasLtMatmul(c->lt, op, &one, w, la, x, lb, &zero, y, ld, y, ld, &heuristic.algo, c->lt_workspace,
                           ws, c->stream) == CUBLAS_STATUS_SUCCESS;
#undef LT_STEP
out:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (ld)
        cublasLtMatrixLayoutDestroy(ld);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return st;
}

template <typename T>
static sqz_status bias_act_launch(cuda_ctx *c, const sqz_node *node, T *y, const float *bias, size_t n, int cols,
                                  int act)
{
    sqzk::bias_act<T><<<grid_1d(n), 256, 0, c->stream>>>(y, bias, n, cols, act);
    LAUNCH_CHECK("bias_act", node);
    return SQZ_OK;
}

/* One way of running a linear node: cuBLASLt with the bias epilogue (use_lt), or cuBLAS
 * then a bias kernel; exact GELU is always a kernel after the product. *ran = false when
 * cuBLASLt has no algorithm for it. */
static sqz_status linear_variant(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const gemm_shape &s,
                                 bool use_lt, bool *ran)
{
    const void *w = weight_stored(c, b, node->inputs[1]);
    const void *x = (const char *)b->arena->ptr + b->plan->offsets[node->inputs[0]];
    void *y = (char *)b->arena->ptr + b->plan->offsets[node->output];
    const bool has_bias = node->n_inputs > 2 && node->inputs[2] >= 0;
    const int act = node->op == SQZ_OP_LINEAR_GELU;
    *ran = true;
    if (use_lt) {
        /* cuBLASLt takes the bias in the output type: fp32, or the 16-bit copy */
        sqz_status st = linear_lt(c, s, w, x, y, has_bias ? weight_stored(c, b, node->inputs[2]) : NULL, ran);
        if (st != SQZ_OK || !*ran)
            return st;
    } else {
        const float one = 1.0f, zero = 0.0f;
        const cudaDataType_t dt = data_type(c->store);
        CUBLAS_TRY(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.cout_g, (int)s.rows,
                                              (int)s.cin_g, &one, w, dt, (int)s.cin_g, s.cout_g * s.cin_g, x, dt,
                                              (int)s.cin, s.cin_g, &zero, y, dt, (int)s.cout, s.cout_g, s.groups,
                                              compute_type(c->precision), CUBLAS_GEMM_DEFAULT));
    }
    const float *bias = !use_lt && has_bias ? weight_f32(b, node->inputs[2]) : NULL;
    if (!bias && !act)
        return SQZ_OK;
    const size_t n = (size_t)(s.rows * s.cout);
    switch (c->store) {
    case STORE_F32:
        return bias_act_launch<float>(c, node, (float *)y, bias, n, (int)s.cout, act);
    case STORE_F16:
        return bias_act_launch<__half>(c, node, (__half *)y, bias, n, (int)s.cout, act);
    default:
        return bias_act_launch<__nv_bfloat16>(c, node, (__nv_bfloat16 *)y, bias, n, (int)s.cout, act);
    }
}

static int64_t pow2_at_least(int64_t n)
{
    int64_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* Seconds per run of one variant: one untimed run, then MEASURE_RUNS timed on the stream. */
#define MEASURE_RUNS 3
static sqz_status time_variant(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const gemm_shape &s,
                               bool use_lt, double *seconds)
{
    bool ran = false;
    sqz_status st = linear_variant(c, b, node, s, use_lt, &ran);
    if (st != SQZ_OK || !ran) {
        *seconds = ran ? 0 : -1;
        return st;
    }
    CUDA_TRY(cudaEventRecord(c->ev_start, c->stream));
    for (int i = 0; i < MEASURE_RUNS && st == SQZ_OK; i++)
        st = linear_variant(c, b, node, s, use_lt, &ran);
    if (st != SQZ_OK)
        return st;
    CUDA_TRY(cudaEventRecord(c->ev_stop, c->stream));
    CUDA_TRY(cudaEventSynchronize(c->ev_stop));
    float ms = 0;
    CUDA_TRY(cudaEventElapsedTime(&ms, c->ev_start, c->ev_stop));
    *seconds = ms * 1e-3 / MEASURE_RUNS;
    return SQZ_OK;
}

/* The variant for a shape: measured once, outside any capture, and cached (rows rounded up
 * to a power of two, so a varying batch does not measure every size). */
static sqz_status linear(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    const sqz_graph *g = &b->plan->graph;
    gemm_shape s;
    s.rows = rows;
    s.cin = g->tensors[node->inputs[0]].cols;
    s.cout = g->tensors[node->output].cols;
    s.groups = node->params.linear.groups;
    s.cin_g = s.cin / s.groups;
    s.cout_g = s.cout / s.groups;
    const bool has_bias = node->n_inputs > 2 && node->inputs[2] >= 0;
    gemm_choice key = {s.cin, s.cout, pow2_at_least(rows), s.groups, has_bias, node->op == SQZ_OP_LINEAR_GELU, 0,
                       0, 0};
    gemm_choice *known = NULL;
    for (int i = 0; i < c->n_choices && !known; i++) {
        const gemm_choice *k = &c->choices[i];
        if (k->cin == key.cin && k->cout == key.cout && k->rows_bucket == key.rows_bucket && k->groups == key.groups &&
            k->bias == key.bias && k->gelu == key.gelu)
            known = &c->choices[i];
    }
    bool use_lt = c->use_lt;
    if (known) {
        use_lt = known->use_lt;
    } else if (c->use_lt && c->choose_gemm && c->capturing < 0) {
        double lt_s = 0, blas_s = 0;
        sqz_status st = time_variant(c, b, node, s, true, &lt_s);
        if (st == SQZ_OK)
            st = time_variant(c, b, node, s, false, &blas_s);
        if (st != SQZ_OK)
            return st;
        use_lt = lt_s > 0 && lt_s <= blas_s;
        key.use_lt = use_lt;
        key.lt_seconds = lt_s;
        key.blas_seconds = blas_s;
        if (c->n_choices < GEMM_CHOICES)
            c->choices[c->n_choices++] = key;
        if (c->report_choices)
            fprintf(stderr, "sqz cuda: %s %lldx%lld->%lld groups %d (rows <= %lld): cuBLASLt %.1f us (0: no "
                    "algorithm), cuBLAS+kernel %.1f us -> %s\n", sqz_precision_name(c->precision), (long long)rows,
                    (long long)s.cin, (long long)s.cout, s.groups, (long long)key.rows_bucket, lt_s * 1e6,
                    blas_s * 1e6, use_lt ? "cuBLASLt" : "cuBLAS");
    }
    bool ran = false;
    sqz_status st = linear_variant(c, b, node, s, use_lt, &ran);
    if (st == SQZ_OK && !ran)
        st = linear_variant(c, b, node, s, false, &ran);
    return st;
}

/* ---- other ops, in the storage type T ------------------------------------------------- */

template <typename T>
static sqz_status layernorm_launch(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows,
                                   int64_t cols)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    const float eps = node->params.layernorm.eps;
    const unsigned grid = blocks((size_t)rows, sqzk::LN_ROWS_PER_BLOCK), threads = 32 * sqzk::LN_ROWS_PER_BLOCK;
    T *out = act<T>(b, node->output);
    switch (node->op) {
    case SQZ_OP_LAYERNORM:
        sqzk::layernorm_rows<T, sqzk::LN_PLAIN><<<grid, threads, 0, c->stream>>>(
            act<T>(b, in[0]), NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, weight_f32(b, in[1]),
            weight_f32(b, in[2]), out, (int)rows, (int)cols, eps);
        break;
    case SQZ_OP_ADD_LAYERNORM:
        sqzk::layernorm_rows<T, sqzk::LN_ADD><<<grid, threads, 0, c->stream>>>(
            act<T>(b, in[0]), act<T>(b, in[1]), NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, weight_f32(b, in[2]),
            weight_f32(b, in[3]), out, (int)rows, (int)cols, eps);
        break;
    default: /* SQZ_OP_EMBED_LAYERNORM: ids, positions, types, word, pos, type, gamma, beta */
        sqzk::layernorm_rows<T, sqzk::LN_EMBED><<<grid, threads, 0, c->stream>>>(
            NULL, NULL, ints(b, in[0]), ints(b, in[1]), ints(b, in[2]), weight_f32(b, in[3]), weight_f32(b, in[4]),
            weight_f32(b, in[5]), (int)g->tensors[in[3]].fixed_rows, (int)g->tensors[in[4]].fixed_rows,
            (int)g->tensors[in[5]].fixed_rows, weight_f32(b, in[6]), weight_f32(b, in[7]), out, (int)rows,
            (int)cols, eps);
        break;
    }
    LAUNCH_CHECK(sqz_op_name(node->op), node);
    return SQZ_OK;
}

template <typename T, int HD>
static void attention_hd(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    dim3 grid(blocks((size_t)dims->max_len, sqzk::ATT_Q), (unsigned)p->attention.heads, (unsigned)dims->sequences);
    sqzk::attention_varlen<T, HD><<<grid, sqzk::ATT_Q, 0, c->stream>>>(
        act<T>(b, in[0]), act<T>(b, in[1]), act<T>(b, in[2]), ints(b, in[3]), ints(b, in[4]), act<T>(b, node->output),
        p->attention.heads, p->attention.head_dim, p->attention.scale);
}

template <typename T>
static sqz_status attention_launch(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    const int hd = node->params.attention.head_dim;
    if constexpr (!std::is_same<T, float>::value) {
        if (c->tc_attention && hd == sqzk::TC_HD) {
            const int *in = node->inputs;
            const sqz_op_params *p = &node->params;
            dim3 grid(blocks((size_t)dims->max_len, sqzk::TC_Q), (unsigned)p->attention.heads,
                      (unsigned)dims->sequences);
            sqzk::attention_varlen_tc<T><<<grid, 64, 0, c->stream>>>(
                act<T>(b, in[0]), act<T>(b, in[1]), act<T>(b, in[2]), ints(b, in[3]), ints(b, in[4]),
                act<T>(b, node->output), p->attention.heads, p->attention.scale);
            LAUNCH_CHECK("attention_varlen_tc", node);
            return SQZ_OK;
        }
    }
    if (hd <= 16)
        attention_hd<T, 16>(c, b, node, dims);
    else if (hd <= 32)
        attention_hd<T, 32>(c, b, node, dims);
    else if (hd <= 64)
        attention_hd<T, 64>(c, b, node, dims);
    else
        attention_hd<T, 128>(c, b, node, dims);
    LAUNCH_CHECK("attention_varlen", node);
    return SQZ_OK;
}

template <typename T>
static sqz_status launch_typed(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims,
                               int64_t rows, int64_t cols)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    const size_t n = (size_t)(rows * cols);
    switch (node->op) {
    case SQZ_OP_GATHER_ROWS: {
        dim3 grid(blocks((size_t)cols, 128) < 8 ? blocks((size_t)cols, 128) : 8, (unsigned)rows);
        const int table_rows = (int)sqz_tensor_rows(&g->tensors[in[1]], dims);
        if (is_weight(b, in[1])) /* an embedding table: fp32 weights into T activations */
            sqzk::gather_rows<float, T><<<grid, 128, 0, c->stream>>>(ints(b, in[0]), weight_f32(b, in[1]),
                                                                     act<T>(b, node->output), (int)rows, (int)cols,
                                                                     table_rows);
        else
            sqzk::gather_rows<T, T><<<grid, 128, 0, c->stream>>>(ints(b, in[0]), act<T>(b, in[1]),
                                                                 act<T>(b, node->output), (int)rows, (int)cols,
                                                                 table_rows);
        break;
    }
    case SQZ_OP_ADD:
        sqzk::add<T><<<grid_1d(n), 256, 0, c->stream>>>(act<T>(b, in[0]), act<T>(b, in[1]), act<T>(b, node->output), n);
        break;
    case SQZ_OP_GELU:
    case SQZ_OP_TANH:
        sqzk::unary<T><<<grid_1d(n), 256, 0, c->stream>>>(act<T>(b, in[0]), act<T>(b, node->output), n,
                                                          node->op == SQZ_OP_GELU ? sqzk::UN_GELU : sqzk::UN_TANH);
        break;
    case SQZ_OP_LAYERNORM:
    case SQZ_OP_ADD_LAYERNORM:
    case SQZ_OP_EMBED_LAYERNORM:
        return layernorm_launch<T>(c, b, node, rows, cols);
    case SQZ_OP_ATTENTION:
        return attention_launch<T>(c, b, node, dims);
    default:
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cuda: op %s (node '%s') is not implemented at %s",
                        sqz_op_name(node->op), node->name, sqz_precision_name(c->precision));
    }
    LAUNCH_CHECK(sqz_op_name(node->op), node);
    return SQZ_OK;
}

/* the unfused attention parts: the shared fp32 source */
static sqz_status launch_unfused_attention(cuda_ctx *c, const sqz_binding *b, const sqz_node *node,
                                           const sqz_run_dims *dims)
{
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    const int T = (int)dims->tokens, S = (int)dims->sequences;
    switch (node->op) {
    case SQZ_OP_ATTN_SCORES: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads, (unsigned)dims->max_len);
        sqz_attn_scores<<<grid, block, 0, c->stream>>>(F(in[0]), F(in[1]), I(in[2]), I(in[3]), F(node->output), T, S,
                                                       p->attention.heads, p->attention.head_dim, p->attention.scale,
                                                       (int)dims->max_len);
        break;
    }
    case SQZ_OP_ATTN_KEY_MASK: {
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads, (unsigned)dims->max_len);
        sqz_attn_key_mask<<<grid, block, 0, c->stream>>>(F(in[0]), I(in[1]), I(in[2]), I(in[3]), F(node->output), T,
                                                         S, p->attention.heads, (int)dims->max_len);
        break;
    }
    case SQZ_OP_ATTN_SOFTMAX: {
        dim3 block(64, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads);
        sqz_attn_softmax<<<grid, block, 0, c->stream>>>(F(in[0]), I(in[1]), I(in[2]), F(node->output), T, S,
                                                        p->attention.heads);
        break;
    }
    default: { /* SQZ_OP_ATTN_CONTEXT */
        dim3 block(64, 1, 1), grid(blocks((size_t)T, 64), (unsigned)p->attention.heads,
                                   (unsigned)p->attention.head_dim);
        sqz_attn_context<<<grid, block, 0, c->stream>>>(F(in[0]), F(in[1]), I(in[2]), I(in[3]), F(node->output), T, S,
                                                        p->attention.heads, p->attention.head_dim);
        break;
    }
    }
    LAUNCH_CHECK(sqz_op_name(node->op), node);
    return SQZ_OK;
}

static sqz_status cuda_launch(void *ctx, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    const sqz_graph *g = &b->plan->graph;
    const sqz_tensor_desc *out = &g->tensors[node->output];
    const int64_t rows = sqz_tensor_rows(out, dims), cols = out->cols;
    if (rows == 0)
        return SQZ_OK;
    sqz_status st = ensure_shadow(c, b->weights);
    if (st != SQZ_OK)
        return st;
    switch (node->op) {
    case SQZ_OP_LINEAR:
    case SQZ_OP_LINEAR_GELU:
        st = linear(c, b, node, rows);
        break;
    case SQZ_OP_ATTN_SCORES:
    case SQZ_OP_ATTN_KEY_MASK:
    case SQZ_OP_ATTN_SOFTMAX:
    case SQZ_OP_ATTN_CONTEXT:
        if (c->store != STORE_F32)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "cuda: the unfused attention (node '%s') runs at fp32 only, not "
                            "%s; unset SQZ_DISABLE_FUSION", node->name, sqz_precision_name(c->precision));
        st = launch_unfused_attention(c, b, node, dims);
        break;
    default:
        st = c->store == STORE_F32   ? launch_typed<float>(c, b, node, dims, rows, cols)
             : c->store == STORE_F16 ? launch_typed<__half>(c, b, node, dims, rows, cols)
                                     : launch_typed<__nv_bfloat16>(c, b, node, dims, rows, cols);
        break;
    }
    /* remember which arena bytes now hold 16-bit values, for downloads */
    if (st == SQZ_OK && c->store != STORE_F32)
        st = regions_add(b->arena, (size_t)b->plan->offsets[node->output], (size_t)(rows * cols) * 4);
    return st;
}

/* ---- CUDA graphs ----------------------------------------------------------------------
 * A run's launches depend only on the plan's bucket, the run's dims and the two buffers, so
 * one graph per such key is captured on the key's second run (one-off shapes never pay the
 * capture) and replayed on every later one. */
static int graph_find(cuda_ctx *c, const sqz_binding *b, const sqz_run_dims *dims)
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

static sqz_status cuda_run_begin(void *ctx, const sqz_binding *b, const sqz_run_dims *dims, bool *replayed)
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
        *replayed = true;
        /* the replayed launches wrote 16-bit tensors where the recorded ones did (the input
         * uploads of this run may have erased some of those marks) */
        for (size_t k = 0; c->store != STORE_F32 && k < b->plan->n_launches; k++) {
            const sqz_tensor_desc *out = &b->plan->graph.tensors[b->plan->graph.nodes[b->plan->launches[k]].output];
            const int64_t rows = sqz_tensor_rows(out, dims);
            if (rows > 0 && (st = regions_add(b->arena, (size_t)b->plan->offsets[b->plan->graph.nodes[b->plan->launches[k]].output],
                                              (size_t)(rows * out->cols) * 4)) != SQZ_OK)
                return st;
        }
        return SQZ_OK;
    }
    if (e->runs++ == 0)
        return SQZ_OK; /* first run of this key: launch directly */
    CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = i;
    return SQZ_OK;
}

static sqz_status cuda_run_end(void *ctx, const sqz_binding *b, const sqz_run_dims *dims, bool ok)
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
            return sqz_fail(SQZ_ERR_BACKEND, "cuda: cudaStreamEndCapture failed: %s (%s) at %s:%d",
                            cudaGetErrorName(err), cudaGetErrorString(err), __FILE__, __LINE__);
        return SQZ_OK;
    }
    err = cudaGraphInstantiate(&e->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
        e->exec = NULL;
        graph_drop(e);
        return sqz_fail(SQZ_ERR_BACKEND, "cuda: cudaGraphInstantiate failed: %s (%s) at %s:%d",
                        cudaGetErrorName(err), cudaGetErrorString(err), __FILE__, __LINE__);
    }
    /* capturing recorded the launches without running them: run them now */
    CUDA_TRY(cudaGraphLaunch(e->exec, c->stream));
    return SQZ_OK;
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
    ops.set_precision = cuda_set_precision;
    ops.run_begin = cuda_run_begin;
    ops.run_end = cuda_run_end;
    return ops;
}

extern "C" const sqz_backend_ops sqz_cuda_backend = make_ops();
