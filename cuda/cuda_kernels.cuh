/* CUDA-only kernels: the GPU-shaped versions of the ops whose shared OpenCL form (one
 * work-item per row or per query) suits a CPU but starves a GPU, each templated on the
 * activation storage type T (float, __half or __nv_bfloat16). Arithmetic is fp32 throughout:
 * T is only how activations are stored between launches. Weights read here (embedding
 * tables, LayerNorm gamma/beta, biases) stay fp32. Included by cuda/cuda_backend.cu. */
#ifndef SQZ_CUDA_KERNELS_CUH
#define SQZ_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

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

/* ---- LayerNorm family: one warp per row ------------------------------------------------
 * The row's values stay in registers (rows up to 32 * LN_PER_LANE columns); wider rows are
 * recomputed from the inputs in each pass. Two passes (mean, then squared deviations), as
 * the reference does. Each lane writes only the columns it read, so out may alias an input. */
constexpr int LN_PER_LANE = 32;
constexpr int LN_ROWS_PER_BLOCK = 4;

enum LnMode { LN_PLAIN, LN_ADD, LN_EMBED };

template <typename T, LnMode mode> struct LnRow {
    const T *a, *b;                          /* LN_PLAIN: a; LN_ADD: a + b */
    const float *word, *pos, *type;          /* LN_EMBED: (word + pos) + type, fp32 tables */
    __device__ __forceinline__ float at(int c) const
    {
        if (mode == LN_PLAIN)
            return to_f(a[c]);
        if (mode == LN_ADD)
            return to_f(a[c]) + to_f(b[c]);
        return (word[c] + pos[c]) + type[c];
    }
};

template <typename T, LnMode mode>
__global__ void __launch_bounds__(32 * LN_ROWS_PER_BLOCK)
layernorm_rows(const T *a, const T *b, const int *ids, const int *positions, const int *types,
               const float *word, const float *pos, const float *type, int vocab, int max_positions,
               int type_vocab, const float *gamma, const float *beta, T *out, int rows, int cols, float eps)
{
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= rows)
        return;
    LnRow<T, mode> row;
    const size_t base = (size_t)r * cols;
    if (mode == LN_EMBED) {
        row.word = word + (size_t)clamp_index(ids[r], vocab) * cols;
        row.pos = pos + (size_t)clamp_index(positions[r], max_positions) * cols;
        row.type = type + (size_t)clamp_index(types[r], type_vocab) * cols;
    } else {
        row.a = a + base;
        row.b = mode == LN_ADD ? b + base : nullptr;
    }
    T *o = out + base;
    const bool cached = cols <= 32 * LN_PER_LANE;
    float v[LN_PER_LANE];
    float sum = 0.0f;
    if (cached) {
#pragma unroll
        for (int j = 0; j < LN_PER_LANE; j++) {
            const int c = lane + 32 * j;
            v[j] = c < cols ? row.at(c) : 0.0f;
            sum += v[j];
        }
    } else {
        for (int c = lane; c < cols; c += 32)
            sum += row.at(c);
    }
    const float mean = warp_sum(sum) / (float)cols;
    float sq = 0.0f;
    if (cached) {
#pragma unroll
        for (int j = 0; j < LN_PER_LANE; j++) {
            const int c = lane + 32 * j;
            const float d = c < cols ? v[j] - mean : 0.0f;
            sq += d * d;
        }
    } else {
        for (int c = lane; c < cols; c += 32) {
            const float d = row.at(c) - mean;
            sq += d * d;
        }
    }
    const float inv = rsqrtf(warp_sum(sq) / (float)cols + eps);
    if (cached) {
#pragma unroll
        for (int j = 0; j < LN_PER_LANE; j++) {
            const int c = lane + 32 * j;
            if (c < cols)
                o[c] = from_f<T>((v[j] - mean) * inv * gamma[c] + beta[c]);
        }
    } else {
        for (int c = lane; c < cols; c += 32)
            o[c] = from_f<T>((row.at(c) - mean) * inv * gamma[c] + beta[c]);
    }
}

/* ---- fused attention over packed variable-length sequences -----------------------------
 * One block per (query tile of ATT_Q tokens, head, sequence); one thread per query. Keys and
 * values of the sequence pass through shared memory in chunks (converted to fp32 once), and
 * every thread reads the same key at the same time (a broadcast, no bank conflicts). The
 * softmax is online (running max and sum, fp32), so no score matrix exists. q is scaled
 * before the dot products, as the shared kernel does. Padded keys are skipped. */
constexpr int ATT_Q = 64;
constexpr int ATT_SUB = 16; /* keys per online-softmax rescale */

template <typename T, int HD>
__global__ void __launch_bounds__(ATT_Q)
attention_varlen(const T *q, const T *k, const T *v, const int *key_valid, const int *seq_off, T *ctx,
                 int heads, int head_dim, float scale)
{
    constexpr int KC = HD <= 64 ? 64 : 32; /* keys per chunk: 2 x KC x HD floats of shared memory */
    __shared__ float ks[KC][HD];
    __shared__ float vs[KC][HD];
    __shared__ int valid[KC];
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
        qv[i] = active && i < head_dim ? to_f(q[(size_t)t * width + h * head_dim + i]) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, sum = 0.0f;
    for (int c0 = o; c0 < end; c0 += KC) {
        const int n = min(KC, end - c0);
        __syncthreads(); /* the previous chunk is consumed */
        for (int e = threadIdx.x; e < KC * HD; e += ATT_Q) {
            const int j = e / HD, i = e % HD;
            const bool in = j < n && i < head_dim;
            const size_t at = (size_t)(c0 + j) * width + h * head_dim + i;
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

/* ---- fused attention on tensor cores (fp16 / bf16, head size 64) ---------------------
 * One block of two warps per (32-query tile, head, sequence); each warp owns 16 queries.
 * Per chunk of 64 keys: S = Q K^T on tensor cores (WMMA 16x16x16, fp32 accumulation) into
 * shared memory, the online softmax in fp32 by the warp's lanes (two lanes per query row),
 * P rounded to T, then O += P V on tensor cores with O kept in fp32 in shared memory so it
 * can be rescaled row by row. Padded keys and keys past the sequence get probability 0.
 * Opt-in (SQZ_CUDA_ATTENTION=tc) until a GPU run has validated it. */
constexpr int TC_Q = 32;   /* queries per block: 2 warps x 16 */
constexpr int TC_KC = 64;  /* keys per chunk */
constexpr int TC_HD = 64;  /* head size */
constexpr int TC_LD = 72;  /* padded row of Q, K, V, P in T elements (16-byte multiple) */
constexpr int TC_LDS = 68; /* padded row of the fp32 S and O tiles */

template <typename T>
__global__ void __launch_bounds__(64)
attention_varlen_tc(const T *q, const T *k, const T *v, const int *key_valid, const int *seq_off, T *ctx, int heads,
                    float scale)
{
    using namespace nvcuda;
    __shared__ __align__(32) T qs[TC_Q][TC_LD];
    __shared__ __align__(32) T ks[TC_KC][TC_LD];
    __shared__ __align__(32) T vs[TC_KC][TC_LD];
    __shared__ __align__(32) T ps[TC_Q][TC_LD];
    __shared__ __align__(32) float ss[TC_Q][TC_LDS];
    __shared__ __align__(32) float os[TC_Q][TC_LDS];
    __shared__ float row_m[TC_Q], row_l[TC_Q];
    __shared__ int valid[TC_KC];
    const int s = blockIdx.z, h = blockIdx.y;
    const int o = seq_off[s], end = seq_off[s + 1];
    const int q0 = o + blockIdx.x * TC_Q;
    if (q0 >= end)
        return; /* uniform over the block */
    const int width = heads * TC_HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int e = threadIdx.x; e < TC_Q * TC_HD; e += 64) {
        const int r = e / TC_HD, d = e % TC_HD;
        qs[r][d] = q0 + r < end ? q[(size_t)(q0 + r) * width + h * TC_HD + d] : from_f<T>(0.0f);
    }
    for (int e = threadIdx.x; e < TC_Q * TC_HD; e += 64)
        os[e / TC_HD][e % TC_HD] = 0.0f;
    if (threadIdx.x < TC_Q) {
        row_m[threadIdx.x] = -INFINITY;
        row_l[threadIdx.x] = 0.0f;
    }
    /* the rows of this warp, and the half of a row (32 columns) this lane works on */
    const int row = warp * 16 + (lane & 15), col0 = (lane >> 4) * 32;
    for (int c0 = o; c0 < end; c0 += TC_KC) {
        const int n = min(TC_KC, end - c0);
        __syncthreads(); /* the previous chunk is consumed (and, the first time, Q and O are set) */
        for (int e = threadIdx.x; e < TC_KC * TC_HD; e += 64) {
            const int j = e / TC_HD, d = e % TC_HD;
            const size_t at = (size_t)(c0 + j) * width + h * TC_HD + d;
            ks[j][d] = j < n ? k[at] : from_f<T>(0.0f);
            vs[j][d] = j < n ? v[at] : from_f<T>(0.0f);
        }
        for (int j = threadIdx.x; j < TC_KC; j += 64)
            valid[j] = j < n ? key_valid[c0 + j] : 0;
        __syncthreads();
        /* S = Q K^T for this warp's 16 queries x 64 keys */
        for (int nt = 0; nt < TC_KC / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kt = 0; kt < TC_HD / 16; kt++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bk;
                wmma::load_matrix_sync(a, &qs[warp * 16][kt * 16], TC_LD);
                wmma::load_matrix_sync(bk, &ks[nt * 16][kt * 16], TC_LD);
                wmma::mma_sync(acc, a, bk, acc);
            }
            wmma::store_matrix_sync(&ss[warp * 16][nt * 16], acc, TC_LDS, wmma::mem_row_major);
        }
        __syncwarp();
        /* online softmax: two lanes per row, 32 keys each */
        float chunk_max = -INFINITY;
        for (int c = col0; c < col0 + 32; c++)
            if (c < n && valid[c])
                chunk_max = fmaxf(chunk_max, ss[row][c] * scale);
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, 16));
        const float m_old = row_m[row], m_new = fmaxf(m_old, chunk_max);
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
        float sum = 0.0f;
        for (int c = col0; c < col0 + 32; c++) {
            const float p = c < n && valid[c] && m_new != -INFINITY ? expf(ss[row][c] * scale - m_new) : 0.0f;
            ps[row][c] = from_f<T>(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        for (int c = col0; c < col0 + 32; c++)
            os[row][c] *= alpha;
        __syncwarp(); /* both lanes of a row have read row_m */
        if (lane < 16) {
            row_m[row] = m_new;
            row_l[row] = row_l[row] * alpha + sum;
        }
        __syncwarp();
        /* O += P V for this warp's 16 queries x 64 dims */
        for (int nt = 0; nt < TC_HD / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, &os[warp * 16][nt * 16], TC_LDS, wmma::mem_row_major);
            for (int kt = 0; kt < TC_KC / 16; kt++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
                wmma::load_matrix_sync(a, &ps[warp * 16][kt * 16], TC_LD);
                wmma::load_matrix_sync(bv, &vs[kt * 16][nt * 16], TC_LD);
                wmma::mma_sync(acc, a, bv, acc);
            }
            wmma::store_matrix_sync(&os[warp * 16][nt * 16], acc, TC_LDS, wmma::mem_row_major);
        }
        __syncwarp();
    }
    const int t = q0 + row;
    if (t >= end)
        return;
    const float inv = 1.0f / row_l[row];
    T *out = ctx + (size_t)t * width + h * TC_HD;
    for (int c = col0; c < col0 + 32; c++)
        out[c] = from_f<T>(os[row][c] * inv);
}

/* ---- elementwise ---------------------------------------------------------------------- */

/* y[r, c] = act(y[r, c] + bias[c]) after a GEMM; act 1 = exact GELU (sqz_gelu_f, shared) */
template <typename T>
__global__ void bias_act(T *y, const float *bias, size_t n, int cols, int act)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = to_f(y[i]) + (bias ? bias[i % cols] : 0.0f);
        y[i] = from_f<T>(act ? sqz_gelu_f(x) : x);
    }
}

enum UnaryOp { UN_GELU, UN_TANH };

template <typename T>
__global__ void unary(const T *x, T *out, size_t n, int op)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float a = to_f(x[i]);
        out[i] = from_f<T>(op == UN_GELU ? sqz_gelu_f(a) : tanhf(a));
    }
}

template <typename T>
__global__ void add(const T *a, const T *b, T *out, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

/* out[r] = table[index[r]]: an fp32 embedding table or an activation (the pooler's first
 * tokens); one block row per output row */
template <typename TIn, typename TOut>
__global__ void gather_rows(const int *index, const TIn *table, TOut *out, int rows, int cols, int table_rows)
{
    const int r = blockIdx.y;
    if (r >= rows)
        return;
    const int i = clamp_index(index[r], table_rows);
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
        out[(size_t)r * cols + c] = from_f<TOut>(to_f(table[(size_t)i * cols + c]));
}

/* storage conversions: weights into the session's precision, activations back to fp32 */
template <typename T>
__global__ void convert_from_f32(const float *in, T *out, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(in[i]);
}

template <typename T>
__global__ void convert_to_f32(const T *in, float *out, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = to_f(in[i]);
}

} // namespace sqzk

#endif
