/* The CUDA backend's variant machinery (cuda/cuda_backend.cu includes it after
 * cuda_gemm.cuh): the attention variants, each checked against variant 0 on its first real
 * inputs and timed, and the jobs of the four families (linear, attention, ffn, ffn_ln). */
#ifndef SQZ_CUDA_VARIANTS_CUH
#define SQZ_CUDA_VARIANTS_CUH

namespace {

/* ---- attention variants ---------------------------------------------------------------- */

/* q, k and v of an attention node: three tensors, or the parts of one QKV output */
template <typename T> struct attention_inputs {
    const T *q, *k, *v;
    sqzk::qkv_layout layout;
};

template <typename T> attention_inputs<T> attention_operands(const sqz_binding *b, const sqz_node *node)
{
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    const int width = p->attention.heads * p->attention.head_dim;
    if (!p->attention.qkv_groups)
        return {act<T>(b, in[0]), act<T>(b, in[1]), act<T>(b, in[2]), {width, width, 0}};
    const int per_group = width / p->attention.qkv_groups;
    const T *base = act<T>(b, in[0]);
    return {base, base + per_group, base + 2 * per_group, {3 * width, per_group, 3 * per_group}};
}

template <typename T, int HD>
sqz_status attention_simt_hd(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims, T *out)
{
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    const attention_inputs<T> qkv = attention_operands<T>(b, node);
    dim3 grid(blocks((size_t)dims->max_len, sqzk::ATT_Q), (unsigned)p->attention.heads, (unsigned)dims->sequences);
    launch_kernel(c, "attention_varlen", sqzk::attention_varlen<T, HD>, grid, sqzk::ATT_Q,
                  sqzk::attention_shared_bytes<HD>(), qkv.q, qkv.k, qkv.v, qkv.layout, ints(b, in[3]),
                  ints(b, in[4]), out, p->attention.heads, p->attention.head_dim, p->attention.scale);
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
    const attention_inputs<T> qkv = attention_operands<T>(b, node);
    const int tiles = (int)blocks((size_t)dims->max_len, 16 * WARPS);
    const int width = p->attention.heads * HD;
    if ((long long)tiles * dims->sequences > 2147483647LL)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: %lld sequences x %d query tiles is more blocks than a grid holds",
                        SQZ_CUDA_NAME, (long long)dims->sequences, tiles);
    const dim3 grid((unsigned)(tiles * dims->sequences), (unsigned)p->attention.heads);
    const float scale_log2 = p->attention.scale * 1.4426950408889634f;
    launch_kernel(c, "flash_attention", sqzk::flash_attention<T, HD, WARPS>, grid, 32 * WARPS, shared,
                  qkv.q, qkv.k, qkv.v, qkv.layout, ints(b, in[3]), ints(b, in[4]), out, width, tiles, scale_log2);
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
    const attention_inputs<T> qkv = attention_operands<T>(b, node);
    /* 16-byte copies: aligned parts, rows and groups, 8 columns never split by a group's end */
    *ran = variant == ATTENTION_FLASH && !std::is_same<T, float>::value && (hd == 32 || hd == 64 || hd == 128) &&
           aligned16(qkv.q) && aligned16(qkv.k) && aligned16(qkv.v) && aligned16(out) &&
           qkv.layout.ld * sizeof(T) % 16 == 0 && qkv.layout.group_stride * sizeof(T) % 16 == 0 &&
           qkv.layout.group_width % 8 == 0;
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
    sqz_wait_for_previous_grid();
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
    return family == FAMILY_LINEAR      ? (int)LINEAR_VARIANTS
           : family == FAMILY_ATTENTION ? (int)ATTENTION_VARIANTS
           : family == FAMILY_FFN       ? (int)FFN_VARIANTS
                                        : (int)FFN_LN_VARIANTS;
}

const char *variant_name(int family, int v)
{
    return family == FAMILY_LINEAR      ? linear_variant_names[v]
           : family == FAMILY_ATTENTION ? attention_variant_names[v]
           : family == FAMILY_FFN       ? ffn_variant_names[v]
                                        : ffn_ln_variant_names[v];
}

/* the choice levels a family's variants open below their own: an FFN's split runs linear
 * jobs, an ffn_ln's split an FFN job; each level checks its candidates in its own scratch */
int levels_below(int family) { return family == FAMILY_FFN_LN ? 2 : family == FAMILY_FFN ? 1 : 0; }

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
    if (c->forced[family] >= 0 || c->capturing >= 0 || c->depth + levels_below(family) >= SCRATCH_LEVELS) {
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

/* a QKV node as one grouped product over its side-by-side weights: group g's output columns
 * are [q_g | k_g | v_g], the layout sqz_qkv_column describes */
gemm_args qkv_args(const sqz_binding *b, const sqz_node *node, const qkv_weights *w, int64_t rows)
{
    gemm_args a;
    a.s = linear_shape(b, node, rows); /* cout: the output's 3 x width; a bias */
    a.w = w->matrix, a.bias32 = w->bias32, a.bias_stored = w->bias_stored;
    a.x = act<char>(b, node->inputs[0]);
    a.node = node;
    return a;
}

variant_job attention_job(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    variant_job job;
    job.family = FAMILY_ATTENTION;
    memset(job.key, 0, sizeof job.key);
    job.key[0] = node->params.attention.heads, job.key[1] = node->params.attention.head_dim,
    job.key[2] = pow2_at_least(dims->max_len), job.key[3] = pow2_at_least(dims->sequences),
    job.key[4] = pow2_at_least(dims->tokens), job.key[5] = node->params.attention.qkv_groups;
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
    launch_kernel(c, "ffn_fused", sqzk::ffn_fused<T, K1, N2, WARPS>, grid, 32 * WARPS, shared, first.x, first.w,
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

/* the FFN's two products as the unfused plan had them, from inputs 0-4 (x, W1, b1, W2, b2) of an
 * FFN or FFN_ADD_LAYERNORM node; the second's x is the hidden activation, where a variant puts it */
void ffn_products(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int groups, int64_t rows,
                  gemm_args *first_out, gemm_args *second_out)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    gemm_args &first = *first_out, &second = *second_out;
    first.s.rows = second.s.rows = rows;
    first.s.groups = second.s.groups = groups;
    first.s.cin = g->tensors[in[0]].cols;
    first.s.cout = second.s.cin = g->tensors[in[1]].fixed_rows;
    second.s.cout = g->tensors[node->output].cols;
    first.s.cin_g = first.s.cin / first.s.groups, first.s.cout_g = first.s.cout / first.s.groups;
    second.s.cin_g = second.s.cin / second.s.groups, second.s.cout_g = second.s.cout / second.s.groups;
    first.s.bias = second.s.bias = true;
    first.s.gelu = true, second.s.gelu = false;
    first.x = act<char>(b, in[0]);
    first.w = weight_stored(c, b, in[1]), first.bias32 = weight_f32(b, in[2]), first.bias_stored = weight_stored(c, b, in[2]);
    second.x = NULL;
    second.w = weight_stored(c, b, in[3]), second.bias32 = weight_f32(b, in[4]), second.bias_stored = weight_stored(c, b, in[4]);
    first.node = second.node = node;
}

variant_job ffn_job_of(cuda_ctx *c, const gemm_args &first, const gemm_args &second)
{
    const sqz_node *node = first.node;
    const int64_t rows = first.s.rows;
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

variant_job ffn_job(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    gemm_args first, second;
    ffn_products(c, b, node, node->params.linear.groups, rows, &first, &second);
    return ffn_job_of(c, first, second);
}

/* ---- the FFN with its residual and LayerNorm ------------------------------------------- */

/* out = LN(a + b) by the add_layernorm kernel, 16-byte accesses where rows and pointers allow;
 * out may be a (each lane writes only what it read). The ADD_LAYERNORM node's launch too. */
template <typename T>
sqz_status add_layernorm_rows(cuda_ctx *c, const sqz_node *node, const T *a, const T *b, const float *gamma,
                              const float *beta, T *out, int64_t rows, int64_t cols, float eps)
{
    constexpr int E = 16 / sizeof(T);
    const unsigned grid = blocks((size_t)rows, sqzk::LN_ROWS_PER_BLOCK), threads = 32 * sqzk::LN_ROWS_PER_BLOCK;
    const int *no_ints = NULL;
    const float *no_table = NULL;
    if (cols % E == 0 && aligned16(a) && aligned16(b) && aligned16(gamma) && aligned16(beta) && aligned16(out))
        launch_kernel(c, "add_layernorm", sqzk::layernorm_rows<T, float, sqzk::LN_ADD, E>, grid, threads, 0, a, b,
                      no_ints, no_ints, no_ints, no_table, no_table, no_table, 0, 0, 0, gamma, beta, out, (int)rows,
                      (int)cols, eps);
    else
        launch_kernel(c, "add_layernorm", sqzk::layernorm_rows<T, float, sqzk::LN_ADD, 1>, grid, threads, 0, a, b,
                      no_ints, no_ints, no_ints, no_table, no_table, no_table, 0, 0, 0, gamma, beta, out, (int)rows,
                      (int)cols, eps);
    LAUNCH_CHECK("add_layernorm", node);
    return SQZ_OK;
}

/* what follows the FFN in FFN_ADD_LAYERNORM: inputs 5-7 and eps */
struct ffn_ln_operands {
    const void *residual;
    const float *gamma, *beta;
    float eps;
};

/* sm_90's dynamic shared memory per block (with cudaFuncSetAttribute); a smaller device
 * refuses the attribute and the split variant runs instead */
constexpr size_t SHARED_OPTIN_MAX = 227 * 1024;

/* ffn_add_layernorm for K inputs and outputs per group, 4 warps (8 would not fit 64 more rows
 * of SqueezeBERT's 4 x 192-column x tile beside the weight stages) */
template <typename T, int K>
sqz_status ffn_ln_fused_launch(cuda_ctx *c, const gemm_args &first, const gemm_args &second, const ffn_ln_operands &ln,
                               void *out, bool *ran)
{
    constexpr int WARPS = 4;
    const size_t shared = sqzk::ffn_ln_shared_bytes<K, K, WARPS>(first.s.groups);
    *ran = shared <= SHARED_OPTIN_MAX;
    if (!*ran)
        return SQZ_OK;
    /* per function and device: set on the first (never captured) run of each shape, cheap */
    if (shared > 48 * 1024 && c->capturing < 0 &&
        cudaFuncSetAttribute(sqzk::ffn_add_layernorm<T, K, K, WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)shared) != cudaSuccess) {
        (void)cudaGetLastError(); /* more than this device has: not an error, the variant does not apply */
        *ran = false;
        return SQZ_OK;
    }
    launch_kernel(c, "ffn_add_layernorm", sqzk::ffn_add_layernorm<T, K, K, WARPS>,
                  blocks((size_t)first.s.rows, 16 * WARPS), 32 * WARPS, shared, first.x, first.w, first.bias32,
                  second.w, second.bias32, ln.residual, ln.gamma, ln.beta, out, (int)first.s.rows, first.s.groups,
                  (int)first.s.cout_g, ln.eps);
    LAUNCH_CHECK("ffn_add_layernorm", first.node);
    return SQZ_OK;
}

template <typename T>
sqz_status ffn_ln_fused_run(cuda_ctx *c, const gemm_args &first, const gemm_args &second, const ffn_ln_operands &ln,
                            void *out, bool *ran)
{
    const int64_t k1 = first.s.cin_g, n2 = second.s.cout_g;
    const uintptr_t any = (uintptr_t)first.x | (uintptr_t)first.w | (uintptr_t)second.w | (uintptr_t)ln.residual |
                          (uintptr_t)ln.gamma | (uintptr_t)ln.beta | (uintptr_t)out;
    *ran = (any & 15) == 0 && first.s.cout_g % 8 == 0 && k1 == n2 && (k1 == 192 || k1 == 32);
    if (!*ran)
        return SQZ_OK;
    return k1 == 192 ? ffn_ln_fused_launch<T, 192>(c, first, second, ln, out, ran)
                     : ffn_ln_fused_launch<T, 32>(c, first, second, ln, out, ran);
}

variant_job ffn_ln_job(cuda_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    gemm_args first, second;
    ffn_products(c, b, node, node->params.ffn_layernorm.groups, rows, &first, &second);
    const int *in = node->inputs;
    const ffn_ln_operands ln = {act<char>(b, in[5]), weight_f32(b, in[6]), weight_f32(b, in[7]),
                                node->params.ffn_layernorm.eps};
    variant_job job = ffn_job_of(c, first, second); /* the same shape key and work, plus the residual read */
    job.family = FAMILY_FFN_LN;
    job.bytes += (double)(rows * second.s.cout) * sqz_dtype_size(c->store);
    job.run = [c, first, second, ln](int v, void *out, bool *ran) -> sqz_status {
        *ran = true;
        if (v == FFN_LN_FUSED) {
            if (c->store == SQZ_DTYPE_F32) {
                *ran = false;
                return SQZ_OK;
            }
            return c->store == SQZ_DTYPE_F16 ? ffn_ln_fused_run<__half>(c, first, second, ln, out, ran)
                                             : ffn_ln_fused_run<__nv_bfloat16>(c, first, second, ln, out, ran);
        }
        /* the FFN into out, then the residual and LayerNorm in place */
        const variant_job ffn = ffn_job_of(c, first, second);
        sqz_status st = v == FFN_LN_SIMT ? ffn.run(FFN_SIMT, out, ran) : run_job(c, ffn, out);
        if (st != SQZ_OK)
            return st;
        const int64_t n = first.s.rows, cols = second.s.cout;
        switch (c->store) {
        case SQZ_DTYPE_F32:
            return add_layernorm_rows<float>(c, first.node, (const float *)out, (const float *)ln.residual, ln.gamma,
                                             ln.beta, (float *)out, n, cols, ln.eps);
        case SQZ_DTYPE_F16:
            return add_layernorm_rows<__half>(c, first.node, (const __half *)out, (const __half *)ln.residual, ln.gamma,
                                              ln.beta, (__half *)out, n, cols, ln.eps);
        default:
            return add_layernorm_rows<__nv_bfloat16>(c, first.node, (const __nv_bfloat16 *)out,
                                                     (const __nv_bfloat16 *)ln.residual, ln.gamma, ln.beta,
                                                     (__nv_bfloat16 *)out, n, cols, ln.eps);
        }
    };
    return job;
}

} // namespace

#endif
