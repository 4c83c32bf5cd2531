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
    sqz_launch("bias_act", sqzk::bias_act<T>, grid_1d(n), 256, 0, c->stream, y, bias, n, cols, act);
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
        sqz_launch("gemm_simt", sqzk::gemm_simt<T, true>, grid, 256, sqzk::SIMT_SHARED_BYTES, c->stream, (const T *)x,
                   (const T *)w, bias, (T *)y, (int)s.rows, (int)s.cin, (int)s.cout, s.groups);
    else
        sqz_launch("gemm_simt", sqzk::gemm_simt<T, false>, grid, 256, sqzk::SIMT_SHARED_BYTES, c->stream,
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
        sqz_launch("gemm_mma", sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, true>, grid,
                   32 * WARPS_M * WARPS_N, shared, c->stream, x, w, bias, y, (int)s.rows, (int)s.cin, (int)s.cout,
                   s.groups);
    } else {
        if (shared > 48 * 1024 && c->capturing < 0) /* as in flash_launch */
            CUDA_TRY(cudaFuncSetAttribute(sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, false>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
        sqz_launch("gemm_mma", sqzk::gemm_mma<T, BM, BN, WARPS_M, WARPS_N, STAGES, false>, grid,
                   32 * WARPS_M * WARPS_N, shared, c->stream, x, w, bias, y, (int)s.rows, (int)s.cin, (int)s.cout,
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

/* cuBLASLt with the bias in the epilogue. *done = false when cuBLASLt has no algorithm for
 * this shape and precision. */
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
    const size_t es = sqz_dtype_size(c->store);
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
        goto out; /* no algorithm: not an error, the variant does not apply */
    /* a refusal here enqueues nothing, so another variant can still run */
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
