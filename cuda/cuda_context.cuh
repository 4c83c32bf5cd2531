/* The CUDA backend's state and what every part of it uses: the status-checking macros, a
 * buffer, the context (streams, events, cuBLAS handles, scratch, the variant choices and the
 * graph cache), launch-size helpers and views of a plan's tensors. One translation unit:
 * cuda/cuda_backend.cu includes this first, then the GEMMs (cuda_gemm.cuh), the variants
 * (cuda_variants.cuh), the launches (cuda_launch.cuh) and the graphs (cuda_graphs.cuh). */
#ifndef SQZ_CUDA_CONTEXT_CUH
#define SQZ_CUDA_CONTEXT_CUH

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
/* the error for a cuBLAS or cuBLASLt call that failed (CUBLAS_TRY, and calls for which some
 * other statuses are answers) */
static inline sqz_status cublas_failure(const char *call, cublasStatus_t st, const char *file, int line)
{
    return sqz_fail(st == CUBLAS_STATUS_ALLOC_FAILED ? SQZ_ERR_OUT_OF_MEMORY : SQZ_ERR_BACKEND,
                    "cuda: %s failed: %s (%s) at %s:%d", call, cublasGetStatusName(st), cublasGetStatusString(st),
                    file, line);
}

#define CUBLAS_TRY(call)                                                                    \
    do {                                                                                    \
        cublasStatus_t st_ = (call);                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return cublas_failure(#call, st_, __FILE__, __LINE__);                          \
    } while (0)
/* cuBLASLt reports with the cuBLAS status type */
#define LT_TRY(call) CUBLAS_TRY(call)

/* cuBLASLt plans cached per shape (cuda/cuda_gemm.cuh) */
struct lt_plan_cache;
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
/* A QKV node's three projections side by side, as one grouped product takes them: rows
 * [g][q_g | k_g | v_g] of the weights in the storage type, the biases alike in fp32 and in the
 * storage type; one device block, keyed by the query weight's index. */
struct qkv_weights {
    int query_weight;
    sqz_dtype dtype;
    unsigned long version; /* the buffer's version it was made from */
    void *block;
    const void *matrix, *bias_stored;
    const float *bias32;
};

struct sqz_buffer {
    void *ptr;
    size_t bytes;
    /* weights at a 16-bit precision: a converted copy, same element offsets */
    void *shadow;
    sqz_dtype shadow_dtype;
    bool shadow_valid;
    unsigned long version; /* counts the writes into the buffer */
    /* weights of QKV nodes, made from the weights (and the copy) once per version and type */
    qkv_weights *qkv;
    int n_qkv;
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
 * The setting cuda.variants="linear=NAME,attention=NAME,ffn=NAME,ffn_ln=NAME" fixes the
 * variants instead (names or numbers), cuda.measure=0 takes the highest-numbered variant that
 * applies without running the others, cuda.report=1 prints every choice (sqz fills them from
 * SQZ_CUDA_*). */
enum family { FAMILY_LINEAR, FAMILY_ATTENTION, FAMILY_FFN, FAMILY_FFN_LN, FAMILIES };
static const char *const family_names[FAMILIES] = {"linear", "attention", "ffn", "ffn_ln"};
enum attention_variant { ATTENTION_SIMT, ATTENTION_FLASH, ATTENTION_VARIANTS };
static const char *const attention_variant_names[ATTENTION_VARIANTS] = {"simt", "flash"};
/* the fused feed-forward block: 0 both products by gemm_simt (the reference), 1 each product by
 * its own measured linear variant (the unfused plan's speed), 2 ffn_fused (cuda/cuda_ffn.cuh) */
enum ffn_variant { FFN_SIMT, FFN_SPLIT, FFN_FUSED, FFN_VARIANTS };
static const char *const ffn_variant_names[FFN_VARIANTS] = {"simt", "split", "fused"};
/* the FFN with its residual and LayerNorm (SQZ_OP_FFN_ADD_LAYERNORM): a family of its own
 * rather than more FFN variants, so that its split variant runs the FFN job's own measured
 * choice one nesting level down and its choices are keyed and reported apart. 0 the FFN by
 * gemm_simt then the add_layernorm kernel (the reference), 1 the FFN's chosen variant then
 * add_layernorm, 2 ffn_add_layernorm (cuda/cuda_ffn.cuh), the only one in one launch */
enum ffn_ln_variant { FFN_LN_SIMT, FFN_LN_SPLIT, FFN_LN_FUSED, FFN_LN_VARIANTS };
static const char *const ffn_ln_variant_names[FFN_LN_VARIANTS] = {"simt", "split", "fused"};
constexpr int MAX_VARIANTS = 8;
constexpr int SCRATCH_LEVELS = 3;
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
    lt_plan_cache *lt_plans; /* made on first use */
#endif
    bool sync_each, use_graphs, measure, report;
    bool overlap; /* cuda.pdl: kernels launched to overlap the previous one (sm_90 and later) */
    int forced[FAMILIES]; /* cuda.variants, or -1 */
    sqz_precision precision;
    sqz_dtype store; /* the activations' dtype at this precision; weights' copy in it too */
    char description[512];
    /* pinned staging for uploads: filled front to back, reset once the stream is idle */
    char *pinned;
    size_t pinned_bytes, pinned_used;
    /* device scratch: variant outputs under check (one per nesting level: a variant of the FFN
     * block runs linear choices of its own, one of ffn_ln an FFN choice) */
    void *scratch[SCRATCH_LEVELS];
    size_t scratch_bytes[SCRATCH_LEVELS];
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

/* a captured graph that must never be replayed again (cuda/cuda_graphs.cuh) */
void graph_drop(graph_entry *e);

/* ---- helpers ---------------------------------------------------------------------------- */

/* A kernel of cuda/ on the session's compute stream, overlapping the previous kernel when the
 * session allows it (cuda.pdl; sqz_launch_overlapping in cuda/cuda_prims.cuh) */
template <typename... P, typename... A>
void launch_kernel(const cuda_ctx *c, const char *name, void (*kernel)(P...), dim3 grid, dim3 block,
                   size_t shared_bytes, A... args)
{
    sqz_launch_overlapping(c->overlap, name, kernel, grid, block, shared_bytes, c->stream, args...);
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

#endif
