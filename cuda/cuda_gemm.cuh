/* The grouped linear layer's implementations (variants), included by cuda/cuda_backend.cu
 * after cuda/cuda_context.cuh (cuda_ctx and the tensor helpers):
 *   0 simt      gemm_simt (cuda/cuda_kernels.cuh): CUDA cores, bias and exact GELU in its
 *               epilogue; any shape; the reference the others are checked against
 *   1 cublas    cublasGemmStridedBatchedEx, then the bias (+ GELU) kernel
 *   2 cublaslt  cuBLASLt strided-batched with the bias in its epilogue, then the GELU kernel
 *               (cuBLASLt's own GELU epilogue is the tanh form, which the model is not)
 *   3 mma128    gemm_mma (cuda/cuda_mma_gemm.cuh): tensor cores, fp16/bf16, bias and exact
 *               GELU in its epilogue; 128 x 128 tiles, 8 warps, 3 stages
 *   4 mma64     the same with 64 x 64 tiles and 4 warps (narrow groups, few rows)
 * cuBLAS and cuBLASLt do not exist in cuda-sim, which runs the others.
 *
 * On row-major activations, in cuBLAS's column-major view: Y^T[g] (cout_g x rows) =
 * W_g (stored [cout_g][cin_g], so transposed) x X^T[g] (cin_g x rows, leading dimension cin);
 * the groups are a batch with stride cin_g in X, cout_g in Y and cout_g x cin_g in W. */
#ifndef SQZ_CUDA_GEMM_CUH
#define SQZ_CUDA_GEMM_CUH

#include "cuda/cuda_lt_key.h"

enum linear_variant { LINEAR_SIMT, LINEAR_CUBLAS, LINEAR_CUBLASLT, LINEAR_MMA128, LINEAR_MMA64, LINEAR_VARIANTS };
static const char *const linear_variant_names[LINEAR_VARIANTS] = {"simt", "cublas", "cublaslt", "mma128", "mma64"};

struct gemm_shape {
    int64_t rows, cin, cout, cin_g, cout_g;
    int groups;
    bool bias, gelu;
};

static gemm_shape linear_shape(const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    const sqz_graph *g = &b->plan->graph;
    gemm_shape s;
    s.rows = rows;
    s.cin = g->tensors[node->inputs[0]].cols;
    s.cout = g->tensors[node->output].cols;
    s.groups = node->params.linear.groups;
    s.cin_g = s.cin / s.groups;
    s.cout_g = s.cout / s.groups;
    s.bias = node->n_inputs > 2 && node->inputs[2] >= 0;
    s.gelu = node->op == SQZ_OP_LINEAR_GELU;
    return s;
}

#ifndef SQZ_CUDA_SIM /* after cuBLAS's products only */
template <typename T>
static sqz_status bias_act_launch(cuda_ctx *c, const sqz_node *node, T *y, const float *bias, size_t n, int cols,
                                  int act)
{
    launch_kernel(c, "bias_act", sqzk::bias_act<T>, grid_1d(n), 256, 0, y, bias, n, cols, act);
    LAUNCH_CHECK("bias_act", node);
    return SQZ_OK;
}

static sqz_status bias_act_after(cuda_ctx *c, const sqz_node *node, void *y, const float *bias, const gemm_shape &s)
{
    if (!bias && !s.gelu)
        return SQZ_OK;
    const size_t n = (size_t)(s.rows * s.cout);
    switch (c->store) {
    case SQZ_DTYPE_F32:
        return bias_act_launch<float>(c, node, (float *)y, bias, n, (int)s.cout, s.gelu);
    case SQZ_DTYPE_F16:
        return bias_act_launch<__half>(c, node, (__half *)y, bias, n, (int)s.cout, s.gelu);
    default:
        return bias_act_launch<__nv_bfloat16>(c, node, (__nv_bfloat16 *)y, bias, n, (int)s.cout, s.gelu);
    }
}
#endif

template <typename T>
static sqz_status simt_launch(cuda_ctx *c, const sqz_node *node, const gemm_shape &s, const void *w, const void *x,
                              void *y, const float *bias)
{
    const dim3 grid(blocks((size_t)s.cout_g, sqzk::SIMT_TILE), blocks((size_t)s.rows, sqzk::SIMT_TILE),
                    (unsigned)s.groups);
    if (s.gelu)
        launch_kernel(c, "gemm_simt", sqzk::gemm_simt<T, true>, grid, 256, sqzk::SIMT_SHARED_BYTES, (const T *)x,
                      (const T *)w, bias, (T *)y, (int)s.rows, (int)s.cin, (int)s.cout, s.groups);
    else
        launch_kernel(c, "gemm_simt", sqzk::gemm_simt<T, false>, grid, 256, sqzk::SIMT_SHARED_BYTES,
                      (const T *)x, (const T *)w, bias, (T *)y, (int)s.rows, (int)s.cin, (int)s.cout, s.groups);
    LAUNCH_CHECK("gemm_simt", node);
    return SQZ_OK;
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
static sqz_status mma_launch(cuda_ctx *c, const sqz_node *node, const gemm_shape &s, const void *w, const void *x,
                             void *y, const float *bias)
{
    constexpr size_t shared = sqzk::mma_gemm_shared_bytes<BM, BN, STAGES>();
    const dim3 grid(blocks((size_t)s.cout_g, BN), blocks((size_t)s.rows, BM), (unsigned)s.groups);
    if (s.gelu) {
        if (shared > 48 * 1024 && c->capturing < 0) /* as in flash_launch */
            CUDA_TRY(cudaFuncSetAttribute(sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, true>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
        launch_kernel(c, "gemm_mma", sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, true>, grid,
                      32 * WARPS_M * WARPS_N, shared, x, w, bias, y, (int)s.rows, (int)s.cin, (int)s.cout,
                      s.groups);
    } else {
        if (shared > 48 * 1024 && c->capturing < 0) /* as in flash_launch */
            CUDA_TRY(cudaFuncSetAttribute(sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, false>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
        launch_kernel(c, "gemm_mma", sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, false>, grid,
                      32 * WARPS_M * WARPS_N, shared, x, w, bias, y, (int)s.rows, (int)s.cin, (int)s.cout,
                      s.groups);
    }
    LAUNCH_CHECK("gemm_mma", node);
    return SQZ_OK;
}

/* what gemm_mma needs: 16-bit storage, whole 16-byte chunks of K per group, 16-byte aligned
 * rows and pointers, pairs of output columns */
static bool mma_applies(const cuda_ctx *c, const gemm_shape &s, const void *w, const void *x, const void *y)
{
    const uintptr_t any = (uintptr_t)w | (uintptr_t)x | (uintptr_t)y;
    return c->store != SQZ_DTYPE_F32 && s.cin_g % 8 == 0 && s.cin % 8 == 0 && s.cout_g % 2 == 0 && (any & 15) == 0;
}

#ifndef SQZ_CUDA_SIM
static cudaDataType_t data_type(sqz_dtype st)
{
    return st == SQZ_DTYPE_F32 ? CUDA_R_32F : st == SQZ_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

static cublasComputeType_t compute_type(sqz_precision p)
{
    return p == SQZ_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* the largest power of two up to 256 dividing a pointer, a batch stride and a column stride */
static uint32_t alignment(uintptr_t pointer, size_t batch_stride_bytes, size_t ld_bytes)
{
    uint32_t a = 256;
    while (a > 1 && ((pointer | batch_stride_bytes | ld_bytes) & (a - 1)))
        a >>= 1;
    return a;
}

/* ---- cuBLASLt: plans cached per key ---------------------------------------------------
 * A plan is the matmul descriptor, the three matrix layouts and the heuristic's algorithm for
 * one lt_key, or the fact that cuBLASLt has no algorithm for it (has_algo false: not asked
 * again). Making one is host work only (descriptors and the heuristic: nothing enqueued, no
 * device memory), so a capture may make one too (its rows may differ from the measured run's
 * within a power of two); evicting one only destroys host objects, and a captured matmul keeps
 * its own copy of the arguments. The bias pointer is a descriptor attribute written before
 * every cublasLtMatmul, not part of the key: the layers of a model share a shape but each has
 * its own bias, so keying on it would give one plan and one heuristic call per layer. Its
 * alignment is in the key, since the heuristic sees the pointer it was given. */
#define LT_PLANS 64

struct lt_plan {
    lt_key key;
    bool used, has_algo;
    unsigned long last_used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
};

struct lt_plan_cache {
    lt_plan plans[LT_PLANS];
    unsigned long clock;
};

/* what cuBLASLt answers for a configuration it has no kernel for: the variant does not apply
 * (any other status is an error) */
static bool lt_refused(cublasStatus_t st) { return st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE; }

/* empties a slot (host objects only; a half-made plan too) */
static void lt_plan_release(lt_plan *p)
{
    /* destroying a valid descriptor cannot fail in a way a caller could act on */
    if (p->ld)
        cublasLtMatrixLayoutDestroy(p->ld);
    if (p->lb)
        cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la)
        cublasLtMatrixLayoutDestroy(p->la);
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

/* cuda_destroy */
static void lt_cache_destroy(cuda_ctx *c)
{
    if (!c->lt_plans)
        return;
    for (int i = 0; i < LT_PLANS; i++)
        lt_plan_release(&c->lt_plans->plans[i]);
    free(c->lt_plans);
    c->lt_plans = NULL;
}

/* Fills an empty slot for p->key: every handle lands in p or *pref as soon as it exists, so
 * the caller frees whatever a failure half way left. The first caller's bias pointer is set
 * before the heuristic (which may look at it). */
static sqz_status lt_plan_make(cuda_ctx *c, lt_plan *p, const void *bias, cublasLtMatmulPreference_t *pref)
{
    const lt_key &k = p->key;
    const cudaDataType_t dt = data_type((sqz_dtype)k.dtype);
    const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
    const int32_t batch = (int32_t)k.groups;
    const int64_t stride_a = k.cout_g * k.cin_g, stride_b = k.cin_g, stride_d = k.cout_g, bias_stride = k.cout_g;
    const cublasLtEpilogue_t epilogue = k.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const size_t ws = (size_t)k.workspace;
    const uint32_t align_a = (uint32_t)k.align_a, align_b = (uint32_t)k.align_b, align_d = (uint32_t)k.align_d;
    LT_TRY(cublasLtMatmulDescCreate(&p->op, compute_type((sqz_precision)k.precision), CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof trans));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof no_trans));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (k.bias) {
        LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bias_stride,
                                              sizeof bias_stride));
    }
    LT_TRY(cublasLtMatrixLayoutCreate(&p->la, dt, (uint64_t)k.cin_g, (uint64_t)k.cout_g, k.cin_g));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->lb, dt, (uint64_t)k.cin_g, (uint64_t)k.rows, k.cin));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->ld, dt, (uint64_t)k.cout_g, (uint64_t)k.rows, k.cout));
    LT_TRY(cublasLtMatrixLayoutSetAttribute(p->la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LT_TRY(cublasLtMatrixLayoutSetAttribute(p->la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_a,
                                            sizeof stride_a));
    LT_TRY(cublasLtMatrixLayoutSetAttribute(p->lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LT_TRY(cublasLtMatrixLayoutSetAttribute(p->lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_b,
                                            sizeof stride_b));
    LT_TRY(cublasLtMatrixLayoutSetAttribute(p->ld, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LT_TRY(cublasLtMatrixLayoutSetAttribute(p->ld, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride_d,
                                            sizeof stride_d));
    LT_TRY(cublasLtMatmulPreferenceCreate(pref));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    /* the heuristic assumes 256-byte alignment unless told: tell it what the pointers and
     * the group strides really give (odd group sizes give less) */
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                sizeof align_a));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                sizeof align_b));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                sizeof align_d));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                sizeof align_d));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->la, p->lb, p->ld, p->ld, *pref, 1, &heuristic, &found);
    if (lt_refused(hs) || (hs == CUBLAS_STATUS_SUCCESS && found == 0))
        return SQZ_OK; /* no algorithm: remembered (has_algo false), the variant does not apply */
    if (hs != CUBLAS_STATUS_SUCCESS)
        return cublas_failure("cublasLtMatmulAlgoGetHeuristic", hs, __FILE__, __LINE__);
    p->algo = heuristic.algo;
    p->has_algo = true;
    return SQZ_OK;
}

/* cuBLASLt with the bias in the epilogue, from the plan cached for this key (made on its first
 * call). *done = false when cuBLASLt has no algorithm for the key (nothing was enqueued). */
static sqz_status linear_lt(cuda_ctx *c, const gemm_shape &s, const void *w, const void *x, void *y,
                            const void *bias, bool *done)
{
    *done = false;
    const size_t es = sqz_dtype_size(c->store);
    lt_key key;
    key.rows = s.rows, key.cin = s.cin, key.cout = s.cout, key.cin_g = s.cin_g, key.cout_g = s.cout_g;
    key.groups = s.groups;
    key.bias = bias != NULL;
    key.dtype = c->store, key.precision = c->precision;
    key.align_a = alignment((uintptr_t)w, (size_t)(s.cout_g * s.cin_g) * es, (size_t)s.cin_g * es);
    key.align_b = alignment((uintptr_t)x, (size_t)s.cin_g * es, (size_t)s.cin * es);
    key.align_d = alignment((uintptr_t)y, (size_t)s.cout_g * es, (size_t)s.cout * es);
    key.align_bias = bias ? alignment((uintptr_t)bias, (size_t)s.cout_g * es, 0) : 0;
    key.workspace = (int64_t)c->lt_workspace_bytes;
    if (!c->lt_plans && !(c->lt_plans = (lt_plan_cache *)calloc(1, sizeof *c->lt_plans)))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cuda: out of memory for the cuBLASLt plan cache");
    lt_plan_cache *cache = c->lt_plans;
    bool hit = false;
    lt_plan *p = &cache->plans[lt_cache_slot(cache->plans, LT_PLANS, key, &hit)];
    if (!hit) {
        lt_plan_release(p); /* the least recently used, when every slot is taken */
        p->key = key;
        cublasLtMatmulPreference_t pref = NULL;
        const sqz_status st = lt_plan_make(c, p, bias, &pref);
        if (pref)
            cublasLtMatmulPreferenceDestroy(pref); /* the heuristic's input only */
        if (st != SQZ_OK) {
            lt_plan_release(p);
            return st;
        }
        p->used = true;
    }
    p->last_used = ++cache->clock;
    if (!p->has_algo)
        return SQZ_OK;
    if (bias)
        LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    const float one = 1.0f, zero = 0.0f;
    const cublasStatus_t ms = cublasLtMatmul(c->lt, p->op, &one, w, p->la, x, p->lb, &zero, y, p->ld, y, p->ld,
                                             &p->algo, c->lt_workspace, c->lt_workspace_bytes, c->stream);
    if (lt_refused(ms)) { /* a refusal enqueues nothing, so another variant can still run */
        p->has_algo = false;
        return SQZ_OK;
    }
    if (ms != CUBLAS_STATUS_SUCCESS)
        return cublas_failure("cublasLtMatmul", ms, __FILE__, __LINE__);
    *done = true;
    return SQZ_OK;
}
#endif

/* one grouped product and where its operands are: a linear node's, or half of a fused FFN */
struct gemm_args {
    gemm_shape s;
    const void *w, *x;         /* in the storage type */
    const float *bias32;       /* fp32 bias, or NULL */
    const void *bias_stored;   /* the bias in the storage type (cuBLASLt's epilogue), or NULL */
    const sqz_node *node;      /* for messages */
};

static gemm_args linear_args(const cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    gemm_args a;
    a.s = linear_shape(b, node, rows);
    a.w = weight_stored(c, b, node->inputs[1]);
    a.x = (const char *)b->arena->ptr + b->plan->offsets[node->inputs[0]];
    a.bias32 = a.s.bias ? weight_f32(b, node->inputs[2]) : NULL;
    a.bias_stored = a.s.bias ? weight_stored(c, b, node->inputs[2]) : NULL;
    a.node = node;
    return a;
}

/* Runs one linear variant writing to y. *ran = false when the variant does not apply to this
 * shape here (nothing was enqueued). */
static sqz_status linear_exec(cuda_ctx *c, const gemm_args &a, int variant, void *y, bool *ran)
{
    const gemm_shape &s = a.s;
    const sqz_node *node = a.node;
    *ran = true;
    switch (variant) {
    case LINEAR_SIMT:
        switch (c->store) {
        case SQZ_DTYPE_F32:
            return simt_launch<float>(c, node, s, a.w, a.x, y, a.bias32);
        case SQZ_DTYPE_F16:
            return simt_launch<__half>(c, node, s, a.w, a.x, y, a.bias32);
        default:
            return simt_launch<__nv_bfloat16>(c, node, s, a.w, a.x, y, a.bias32);
        }
    case LINEAR_MMA128:
    case LINEAR_MMA64:
        if (!mma_applies(c, s, a.w, a.x, y)) {
            *ran = false;
            return SQZ_OK;
        }
        if (variant == LINEAR_MMA128)
            return c->store == SQZ_DTYPE_F16
                       ? mma_launch<__half, 128, 128, 2, 4, 3>(c, node, s, a.w, a.x, y, a.bias32)
                       : mma_launch<__nv_bfloat16, 128, 128, 2, 4, 3>(c, node, s, a.w, a.x, y, a.bias32);
        return c->store == SQZ_DTYPE_F16 ? mma_launch<__half, 64, 64, 2, 2, 3>(c, node, s, a.w, a.x, y, a.bias32)
                                     : mma_launch<__nv_bfloat16, 64, 64, 2, 2, 3>(c, node, s, a.w, a.x, y, a.bias32);
#ifndef SQZ_CUDA_SIM
    case LINEAR_CUBLAS: {
        const float one = 1.0f, zero = 0.0f;
        const cudaDataType_t dt = data_type(c->store);
        CUBLAS_TRY(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.cout_g, (int)s.rows,
                                              (int)s.cin_g, &one, a.w, dt, (int)s.cin_g, s.cout_g * s.cin_g, a.x, dt,
                                              (int)s.cin, s.cin_g, &zero, y, dt, (int)s.cout, s.cout_g, s.groups,
                                              compute_type(c->precision), CUBLAS_GEMM_DEFAULT));
        return bias_act_after(c, node, y, a.bias32, s);
    }
    case LINEAR_CUBLASLT: {
        /* cuBLASLt takes the bias in the output type: fp32, or the 16-bit copy */
        sqz_status st = linear_lt(c, s, a.w, a.x, y, a.bias_stored, ran);
        if (st != SQZ_OK || !*ran)
            return st;
        return bias_act_after(c, node, y, NULL, s);
    }
#endif
    default:
        *ran = false;
        return SQZ_OK;
    }
}

#endif
