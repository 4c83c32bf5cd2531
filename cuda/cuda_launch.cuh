/* The CUDA backend's launch slot (cuda/cuda_backend.cu includes it after the variants):
 * the row ops in the activations' type, the unfused attention parts (the shared OpenCL
 * source), and cuda_launch, which sends each node to its kernel or its variant job. */
#ifndef SQZ_CUDA_LAUNCH_CUH
#define SQZ_CUDA_LAUNCH_CUH

namespace {

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
        launch_kernel(c, "layernorm", sqzk::layernorm_rows<T, TAB, sqzk::LN_PLAIN, E>, grid, threads, 0,
                      act<T>(b, in[0]), none, no_ints, no_ints, no_ints, no_table, no_table, no_table, 0, 0, 0,
                      weight_f32(b, in[1]), weight_f32(b, in[2]), out, (int)rows, (int)cols, eps);
        break;
    default: /* SQZ_OP_EMBED_LAYERNORM: ids, positions, types, word, pos, type, gamma, beta */
        launch_kernel(c, "embed_layernorm", sqzk::layernorm_rows<T, TAB, sqzk::LN_EMBED, E>, grid, threads, 0,
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
    if (node->op == SQZ_OP_ADD_LAYERNORM) /* shared with the FFN_ADD_LAYERNORM variants */
        return add_layernorm_rows<T>(c, node, act<T>(b, in[0]), act<T>(b, in[1]), weight_f32(b, in[2]),
                                     weight_f32(b, in[3]), act<T>(b, node->output), rows, cols,
                                     node->params.layernorm.eps);
    const int n_ptr = node->op == SQZ_OP_EMBED_LAYERNORM ? 5 : 4;
    const void *ptrs[5] = {act<T>(b, node->output)};
    if (node->op == SQZ_OP_EMBED_LAYERNORM) {
        ptrs[1] = weight_stored(c, b, in[3]), ptrs[2] = weight_stored(c, b, in[4]), ptrs[3] = weight_stored(c, b, in[5]);
        ptrs[4] = weight_f32(b, in[6]);
    } else {
        ptrs[1] = act<T>(b, in[0]), ptrs[2] = weight_f32(b, in[1]), ptrs[3] = weight_f32(b, in[2]);
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
            launch_kernel(c, "gather_rows", sqzk::gather_rows<float, T>, grid, 128, 0, ints(b, in[0]),
                          weight_f32(b, in[1]), act<T>(b, node->output), (int)rows, (int)cols, table_rows);
        else
            launch_kernel(c, "gather_rows", sqzk::gather_rows<T, T>, grid, 128, 0, ints(b, in[0]),
                          act<T>(b, in[1]), act<T>(b, node->output), (int)rows, (int)cols, table_rows);
        break;
    }
    case SQZ_OP_ADD:
        launch_kernel(c, "add", sqzk::add<T>, grid_1d(n), 256, 0, act<T>(b, in[0]), act<T>(b, in[1]),
                      act<T>(b, node->output), n);
        break;
    case SQZ_OP_GELU:
    case SQZ_OP_TANH:
        launch_kernel(c, "unary", sqzk::unary<T>, grid_1d(n), 256, 0, act<T>(b, in[0]), act<T>(b, node->output), n,
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
    case SQZ_OP_LINEAR_ATTENTION: {
        const size_t items = (size_t)S * (size_t)p->attention.head_dim;
        dim3 block(64, 1, 1), grid(blocks(items, 64), (unsigned)p->attention.heads, 1);
        sqz_launch("sqz_linear_attention", sqz_linear_attention, grid, block, 0, c->stream, F(in[0]), F(in[1]),
                   F(in[2]), I(in[3]), I(in[4]), F(node->output), S, p->attention.heads, p->attention.head_dim);
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
    case SQZ_OP_QKV: {
        const qkv_weights *w = NULL;
        if ((st = qkv_weights_for(c, b, node, &w)) == SQZ_OK)
            st = run_job(c, linear_job(c, qkv_args(b, node, w, rows)), act<char>(b, node->output));
        break;
    }
    case SQZ_OP_ATTENTION:
        st = run_job(c, attention_job(c, b, node, dims), act<char>(b, node->output));
        break;
    case SQZ_OP_FFN:
        st = run_job(c, ffn_job(c, b, node, rows), act<char>(b, node->output));
        break;
    case SQZ_OP_FFN_ADD_LAYERNORM:
        st = run_job(c, ffn_ln_job(c, b, node, rows), act<char>(b, node->output));
        break;
    case SQZ_OP_ATTN_SCORES:
    case SQZ_OP_ATTN_KEY_MASK:
    case SQZ_OP_ATTN_SOFTMAX:
    case SQZ_OP_ATTN_CONTEXT:
    case SQZ_OP_LINEAR_ATTENTION:
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

} // namespace

#endif
