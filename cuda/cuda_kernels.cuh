/* CUDA-only kernels: the GPU-shaped versions of the ops whose shared OpenCL form (one
 * work-item per row or per query) suits a CPU but starves a GPU, each templated on the
 * activation storage type T (float, __half or __nv_bfloat16). Arithmetic is fp32 throughout:
 * T is only how activations are stored between launches. Weights read here (embedding
 * tables, LayerNorm gamma/beta, biases) stay fp32. Included by cuda/cuda_backend.cu. */
#ifndef SQZ_CUDA_KERNELS_CUH
#define SQZ_CUDA_KERNELS_CUH

#include "cuda/cuda_prims.cuh"

namespace sqzk {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int d = 16; d > 0; d >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
}

__device__ __forceinline__ int clamp_index(int i, int n) { return i < 0 ? 0 : i >= n ? n - 1 : i; }

/* E consecutive elements as fp32, in 16-byte loads where E elements fill whole words (the
 * caller guarantees 16-byte alignment then), else one by one */
template <int E, typename TT> __device__ __forceinline__ void load_elems(const TT *p, float (&v)[E])
{
    if constexpr (E * sizeof(TT) >= 16 && E * sizeof(TT) % 16 == 0) {
        TT e[E];
        for (int w = 0; w < (int)(E * sizeof(TT) / 16); w++) {
            const uint4 raw = ((const uint4 *)p)[w];
            memcpy((void *)(e + w * (16 / sizeof(TT))), &raw, 16);
        }
        for (int i = 0; i < E; i++)
            v[i] = to_f(e[i]);
    } else {
        for (int i = 0; i < E; i++)
            v[i] = to_f(p[i]);
    }
}

template <int E, typename T> __device__ __forceinline__ void store_elems(T *p, const float (&v)[E])
{
    if constexpr (E * sizeof(T) == 16) {
        T e[E];
        for (int i = 0; i < E; i++)
            e[i] = from_f<T>(v[i]);
        uint4 raw;
        memcpy(&raw, (const void *)e, 16);
        *(uint4 *)p = raw;
    } else {
        for (int i = 0; i < E; i++)
            p[i] = from_f<T>(v[i]);
    }
}

/* ---- LayerNorm family: one warp per row ------------------------------------------------
 * A lane handles groups of E consecutive columns (E = 1, or 16 bytes of T for 16-byte loads
 * and stores where the row allows: cols a multiple of E, rows and pointers aligned). The row's
 * values stay in registers (rows up to 32 * LN_PER_LANE columns); wider rows are recomputed
 * from the inputs in each pass. Two passes (mean, then squared deviations), as the reference
 * does. Each lane writes only the columns it read, so out may alias an input. Embedding tables
 * (TAB) are fp32, or the session's 16-bit copy at a 16-bit precision. */
constexpr int LN_PER_LANE = 32;
constexpr int LN_ROWS_PER_BLOCK = 4;

enum LnMode { LN_PLAIN, LN_ADD, LN_EMBED };

template <typename T, typename TAB, LnMode mode, int E> struct LnRow {
    const T *a, *b;              /* LN_PLAIN: a; LN_ADD: a + b */
    const TAB *word, *pos, *type; /* LN_EMBED: (word + pos) + type */
    __device__ __forceinline__ void at(int c, float (&v)[E]) const
    {
        if (mode == LN_EMBED) {
            float p[E], t[E];
            load_elems<E>(word + c, v);
            load_elems<E>(pos + c, p);
            load_elems<E>(type + c, t);
            for (int i = 0; i < E; i++)
                v[i] = (v[i] + p[i]) + t[i];
            return;
        }
        load_elems<E>(a + c, v);
        if (mode == LN_ADD) {
            float w[E];
            load_elems<E>(b + c, w);
            for (int i = 0; i < E; i++)
                v[i] += w[i];
        }
    }
};

/* One row by one warp (all 32 lanes call it): o = LN(row) with gamma and beta. */
template <typename T, typename TAB, LnMode mode, int E>
__device__ __forceinline__ void layernorm_row(const LnRow<T, TAB, mode, E> &row, const float *gamma,
                                              const float *beta, T *o, int cols, float eps)
{
    constexpr int GROUPS = LN_PER_LANE / E; /* cached groups per lane */
    const int lane = threadIdx.x & 31;
    const int n_groups = cols / E;
    const bool cached = n_groups <= 32 * GROUPS;
    float v[GROUPS][E];
    float sum = 0.0f;
    if (cached) {
#pragma unroll
        for (int j = 0; j < GROUPS; j++) {
            const int q = lane + 32 * j;
            if (q < n_groups)
                row.at(q * E, v[j]);
            else
                for (int i = 0; i < E; i++)
                    v[j][i] = 0.0f;
            for (int i = 0; i < E; i++)
                sum += v[j][i];
        }
    } else {
        for (int q = lane; q < n_groups; q += 32) {
            float x[E];
            row.at(q * E, x);
            for (int i = 0; i < E; i++)
                sum += x[i];
        }
    }
    const float mean = warp_sum(sum) / (float)cols;
    float sq = 0.0f;
    if (cached) {
#pragma unroll
        for (int j = 0; j < GROUPS; j++)
            for (int i = 0; i < E; i++) {
                const float d = lane + 32 * j < n_groups ? v[j][i] - mean : 0.0f;
                sq += d * d;
            }
    } else {
        for (int q = lane; q < n_groups; q += 32) {
            float x[E];
            row.at(q * E, x);
            for (int i = 0; i < E; i++)
                sq += (x[i] - mean) * (x[i] - mean);
        }
    }
    const float inv = rsqrtf(warp_sum(sq) / (float)cols + eps);
    auto normalize = [&](int q, const float(&x)[E]) {
        float y[E], gm[E], bt[E];
        load_elems<E>(gamma + q * E, gm);
        load_elems<E>(beta + q * E, bt);
        for (int i = 0; i < E; i++)
            y[i] = (x[i] - mean) * inv * gm[i] + bt[i];
        store_elems<E>(o + q * E, y);
    };
    if (cached) {
#pragma unroll
        for (int j = 0; j < GROUPS; j++)
            if (lane + 32 * j < n_groups)
                normalize(lane + 32 * j, v[j]);
    } else {
        for (int q = lane; q < n_groups; q += 32) {
            float x[E];
            row.at(q * E, x);
            normalize(q, x);
        }
    }
}

template <typename T, typename TAB, LnMode mode, int E>
__global__ void __launch_bounds__(32 * LN_ROWS_PER_BLOCK)
layernorm_rows(const T *a, const T *b, const int *ids, const int *positions, const int *types, const TAB *word,
               const TAB *pos, const TAB *type, int vocab, int max_positions, int type_vocab, const float *gamma,
               const float *beta, T *out, int rows, int cols, float eps)
{
    sqz_wait_for_previous_grid();
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= rows)
        return;
    LnRow<T, TAB, mode, E> row;
    const size_t base = (size_t)r * cols;
    if (mode == LN_EMBED) {
        row.word = word + (size_t)clamp_index(ids[r], vocab) * cols;
        row.pos = pos + (size_t)clamp_index(positions[r], max_positions) * cols;
        row.type = type + (size_t)clamp_index(types[r], type_vocab) * cols;
    } else {
        row.a = a + base;
        row.b = mode == LN_ADD ? b + base : nullptr;
    }
    layernorm_row(row, gamma, beta, out + base, cols, eps);
}

/* Where the attention kernels read q, k and v: rows `ld` elements apart, column c of a part at
 * column(c). Three tensors: one group as wide as the part, so c itself. One QKV output
 * (graph/graph.h, sqz_qkv_column): the pointers are its q, k and v parts of group 0, and a
 * part's groups lie group_stride columns apart. */
struct qkv_layout {
    int ld, group_width, group_stride;
    __host__ __device__ int column(int c) const { return c / group_width * group_stride + c % group_width; }
};

/* ---- fused attention over packed variable-length sequences -----------------------------
 * One block per (query tile of ATT_Q tokens, head, sequence); one thread per query. Keys and
 * values of the sequence pass through shared memory in chunks (converted to fp32 once), and
 * every thread reads the same key at the same time (a broadcast, no bank conflicts). The
 * softmax is online (running max and sum, fp32), so no score matrix exists. q is scaled
 * before the dot products, as the shared kernel does. Padded keys are skipped. */
constexpr int ATT_Q = 64;
constexpr int ATT_SUB = 16; /* keys per online-softmax rescale */

template <int HD> __host__ __device__ constexpr int attention_keys_per_chunk() { return HD <= 64 ? 64 : 32; }
template <int HD> __host__ __device__ constexpr size_t attention_shared_bytes()
{
    return (size_t)attention_keys_per_chunk<HD>() * (2 * HD * sizeof(float) + sizeof(int));
}

template <typename T, int HD>
__global__ void __launch_bounds__(ATT_Q)
attention_varlen(const T *q, const T *k, const T *v, qkv_layout layout, const int *key_valid, const int *seq_off, T *ctx,
                 int heads, int head_dim, float scale)
{
    sqz_wait_for_previous_grid();
    constexpr int KC = attention_keys_per_chunk<HD>(); /* 2 x KC x HD floats of shared memory */
    SQZ_DYNAMIC_SHARED(smem);
    float(*ks)[HD] = (float(*)[HD])smem;
    float(*vs)[HD] = ks + KC;
    int *valid = (int *)(vs + KC);
    const int s = blockIdx.z, h = blockIdx.y;
    const int o = seq_off[s], end = seq_off[s + 1];
    const int q0 = o + blockIdx.x * ATT_Q;
    if (q0 >= end)
        return; /* uniform over the block */
    const int t = q0 + threadIdx.x;
    const bool active = t < end;
    const int width = heads * head_dim;
    float qv[HD], acc[HD];
#pragma unroll
    for (int i = 0; i < HD; i++) {
        qv[i] = active && i < head_dim ? to_f(q[(size_t)t * layout.ld + layout.column(h * head_dim + i)]) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, sum = 0.0f;
    for (int c0 = o; c0 < end; c0 += KC) {
        const int n = min(KC, end - c0);
        __syncthreads(); /* the previous chunk is consumed */
        for (int e = threadIdx.x; e < KC * HD; e += ATT_Q) {
            const int j = e / HD, i = e % HD;
            const bool in = j < n && i < head_dim;
            const size_t at = (size_t)(c0 + j) * layout.ld + layout.column(h * head_dim + i);
            ks[j][i] = in ? to_f(k[at]) : 0.0f;
            vs[j][i] = in ? to_f(v[at]) : 0.0f;
        }
        for (int j = threadIdx.x; j < KC; j += ATT_Q)
            valid[j] = j < n ? key_valid[c0 + j] : 0;
        __syncthreads();
        if (!active)
            continue;
        for (int j0 = 0; j0 < n; j0 += ATT_SUB) {
            float score[ATT_SUB];
            float block_max = -INFINITY;
#pragma unroll
            for (int j = 0; j < ATT_SUB; j++) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < HD; i++)
                    d = fmaf(qv[i], ks[j0 + j][i], d);
                score[j] = j0 + j < n && valid[j0 + j] ? d : -INFINITY;
                block_max = fmaxf(block_max, score[j]);
            }
            if (block_max == -INFINITY)
                continue; /* every key of the block is padding */
            const float m_new = fmaxf(m, block_max), rescale = expf(m - m_new);
            sum *= rescale;
#pragma unroll
            for (int i = 0; i < HD; i++)
                acc[i] *= rescale;
#pragma unroll
            for (int j = 0; j < ATT_SUB; j++) {
                const float p = expf(score[j] - m_new); /* 0 for padded keys */
                sum += p;
#pragma unroll
                for (int i = 0; i < HD; i++)
                    acc[i] = fmaf(p, vs[j0 + j][i], acc[i]);
            }
            m = m_new;
        }
    }
    if (!active)
        return;
    const float inv = 1.0f / sum;
    T *out = ctx + (size_t)t * width + h * head_dim;
#pragma unroll
    for (int i = 0; i < HD; i++)
        if (i < head_dim)
            out[i] = from_f<T>(acc[i] * inv);
}

/* ---- grouped linear on CUDA cores --------------------------------------------------------
 * y[r, g*cout_g + n] = act(sum_k x[r, g*cin_g + k] W[g*cout_g + n, k] + bias) for each group g,
 * fp32 accumulation, the epilogue (bias, exact GELU) on fp32 values before the one rounding to
 * T. The simple, always-available GEMM: cuda-sim's only one (cuBLAS does not run there) and
 * the variant that any shape or alignment can take on a GPU. One block of 256 threads per
 * 64 x 64 output tile of one group (blockIdx.z); 16-deep slices of x and W pass through
 * shared memory as fp32, and each thread accumulates a 4 x 4 sub-tile. */
constexpr int SIMT_TILE = 64, SIMT_DEPTH = 16;
constexpr size_t SIMT_SHARED_BYTES = 2 * SIMT_DEPTH * (SIMT_TILE + 1) * sizeof(float);

template <typename T, bool GELU>
__global__ void __launch_bounds__(256)
gemm_simt(const T *x, const T *w, const float *bias, T *y, int rows, int cin, int cout, int groups)
{
    sqz_wait_for_previous_grid();
    SQZ_DYNAMIC_SHARED(smem);
    float(*xs)[SIMT_TILE + 1] = (float(*)[SIMT_TILE + 1])smem; /* [depth][row]; +1 avoids bank conflicts */
    float(*ws)[SIMT_TILE + 1] = xs + SIMT_DEPTH;                 /* [depth][output column] */
    const int cin_g = cin / groups, cout_g = cout / groups, g = blockIdx.z;
    const int r0 = blockIdx.y * SIMT_TILE, n0 = blockIdx.x * SIMT_TILE;
    const int tr = threadIdx.x / 16, tn = threadIdx.x % 16;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    for (int k0 = 0; k0 < cin_g; k0 += SIMT_DEPTH) {
        for (int e = threadIdx.x; e < SIMT_DEPTH * SIMT_TILE; e += 256) {
            const int kk = e % SIMT_DEPTH, i = e / SIMT_DEPTH, kin = k0 + kk;
            const int r = r0 + i, n = n0 + i;
            xs[kk][i] = r < rows && kin < cin_g ? to_f(x[(size_t)r * cin + g * cin_g + kin]) : 0.0f;
            ws[kk][i] = n < cout_g && kin < cin_g ? to_f(w[((size_t)g * cout_g + n) * cin_g + kin]) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < SIMT_DEPTH; kk++)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(xs[kk][tr + 16 * i], ws[kk][tn + 16 * j], acc[i][j]);
        __syncthreads(); /* the slice is consumed before the next one overwrites it */
    }
    for (int i = 0; i < 4; i++) {
        const int r = r0 + tr + 16 * i;
        for (int j = 0; j < 4; j++) {
            const int n = n0 + tn + 16 * j;
            if (r >= rows || n >= cout_g)
                continue;
            float val = acc[i][j] + (bias ? bias[g * cout_g + n] : 0.0f);
            if (GELU)
                val = sqz_gelu_f(val);
            y[(size_t)r * cout + g * cout_g + n] = from_f<T>(val);
        }
    }
}

/* ---- elementwise ---------------------------------------------------------------------- */

/* y[r, c] = act(y[r, c] + bias[c]) after a GEMM; act 1 = exact GELU (sqz_gelu_f, shared) */
template <typename T>
__global__ void bias_act(T *y, const float *bias, size_t n, int cols, int act)
{
    sqz_wait_for_previous_grid();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = to_f(y[i]) + (bias ? bias[i % cols] : 0.0f);
        y[i] = from_f<T>(act ? sqz_gelu_f(x) : x);
    }
}

enum UnaryOp { UN_GELU, UN_TANH };

template <typename T>
__global__ void unary(const T *x, T *out, size_t n, int op)
{
    sqz_wait_for_previous_grid();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float a = to_f(x[i]);
        out[i] = from_f<T>(op == UN_GELU ? sqz_gelu_f(a) : tanhf(a));
    }
}

template <typename T>
__global__ void add(const T *a, const T *b, T *out, size_t n)
{
    sqz_wait_for_previous_grid();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

/* out[r] = table[index[r]]: an fp32 embedding table or an activation (the pooler's first
 * tokens); one block row per output row */
template <typename TIn, typename TOut>
__global__ void gather_rows(const int *index, const TIn *table, TOut *out, int rows, int cols, int table_rows)
{
    sqz_wait_for_previous_grid();
    const int r = blockIdx.y;
    if (r >= rows)
        return;
    const int i = clamp_index(index[r], table_rows);
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
        out[(size_t)r * cols + c] = from_f<TOut>(to_f(table[(size_t)i * cols + c]));
}

/* the weights' copy in the session's 16-bit type */
template <typename T>
__global__ void convert_from_f32(const float *in, T *out, size_t n)
{
    sqz_wait_for_previous_grid();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(in[i]);
}

} // namespace sqzk

#endif
