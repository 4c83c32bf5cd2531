/* The fused feed-forward block on tensor cores (fp16 / bf16 storage, fp32 accumulation):
 *   y_g = gelu(x_g W1_g^T + b1_g) W2_g^T + b2_g   for each group g,
 * where the intermediate and output layers have the same number of groups G, so group g of the
 * output reads exactly the hidden columns group g of the intermediate wrote (the FFN is block
 * diagonal). The hidden activation (3072 wide in SqueezeBERT) never leaves the chip: it is
 * made 64 columns at a time in registers and consumed at once. Included by
 * cuda/cuda_backend.cu after cuda/cuda_mma_gemm.cuh.
 *
 * One CTA of WARPS warps per (tile of 16 * WARPS rows, group); each warp owns 16 rows. The
 * rows' x (16 x K1 per warp) stays in shared memory. Per hidden chunk of FFN_CHUNK columns:
 *   S = x W1[chunk]^T     (mma.sync m16n8k16; W1's chunk rows in shared memory),
 *   P = gelu(S + b1)      (fp32, the exact form; rounded to T once, as the unfused layer would
 *                          store it), used directly as the A operand (the accumulator layout of
 *                          S is the A layout of P, as in flash attention),
 *   Y += P W2[:, chunk]^T (W2's chunk columns in shared memory), Y (16 x N2 per warp) in fp32
 *                          registers for the whole loop,
 * and the two weight chunks of the next iteration arrive by cp.async while this one computes.
 * At the end y = Y + b2 is rounded to T and stored. K1 and N2 (per group) are template
 * parameters so that every register array has a fixed size (instantiated for the shapes the
 * models have); the hidden width per group must be a multiple of 8 and rows and pointers
 * 16-byte aligned. The host checks and otherwise runs the two GEMMs. The chunk pipeline
 * (ffn_groups) is shared with ffn_add_layernorm below, which adds the residual and LayerNorm. */
#ifndef SQZ_CUDA_FFN_CUH
#define SQZ_CUDA_FFN_CUH

namespace sqzk {

constexpr int FFN_CHUNK = 64; /* hidden columns per step */

template <int K1, int N2, int WARPS> __host__ __device__ constexpr size_t ffn_shared_bytes()
{
    /* x tile, then two stages of (W1 chunk rows, W2 chunk columns); rows padded by 8 elements */
    return ((size_t)16 * WARPS * (K1 + 8) + 2 * ((size_t)FFN_CHUNK * (K1 + 8) + (size_t)N2 * (FFN_CHUNK + 8))) * 2;
}

/* The hidden-chunk pipeline of both fused kernels, for this CTA's 16 * WARPS rows and groups
 * g_first .. g_first + g_count - 1 in turn: x_g is at sx + (g - g_first) * x_group_cols (row
 * stride xp), its cp.async copies issued by the caller and not yet committed (they land with
 * the first weight chunk). The (group, chunk) steps run as one pipeline, so the next group's
 * first chunk is in flight while this group's last computes. After a group's last chunk and
 * a barrier (no thread reads x or the stages of that step any more), done(g, acc) gets the
 * warp's 16 x N2 fp32 sums Y (bias b2 not added). */
template <typename T, int K1, int N2, int WARPS, typename Done>
__device__ __forceinline__ void ffn_groups(const T *sx, int xp, int x_group_cols, T *sw1, T *sw2, const T *w1,
                                           const float *b1, const T *w2, int g_first, int g_count, int hidden,
                                           Done &&done)
{
    static_assert(K1 % 16 == 0 && N2 % 16 == 0, "whole 16 x 16 blocks");
    constexpr int THREADS = 32 * WARPS, k1 = K1, n2 = N2;
    constexpr int W1P = K1 + 8, W2P = FFN_CHUNK + 8;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, mi = lane >> 3, tc = lane & 3;
    constexpr int k1_chunks = K1 / 8, chunk_chunks = FFN_CHUNK / 8;
    const int chunks = (hidden + FFN_CHUNK - 1) / FFN_CHUNK, steps = g_count * chunks;
    auto load_step = [&](int step, int stage) {
        const int g = g_first + step / chunks, h0 = step % chunks * FFN_CHUNK;
        const T *w1g = w1 + (size_t)g * hidden * k1; /* hidden row h: w1g + h * k1 */
        const T *w2g = w2 + (size_t)g * n2 * hidden; /* output row n: w2g + n * hidden */
        T *d1 = sw1 + stage * FFN_CHUNK * W1P, *d2 = sw2 + stage * N2 * W2P;
        for (int e = tid; e < FFN_CHUNK * k1_chunks; e += THREADS) {
            const int h = e / k1_chunks, c = e % k1_chunks;
            const bool in = h0 + h < hidden;
            cp_async_16(d1 + h * W1P + c * 8, in ? w1g + (size_t)(h0 + h) * k1 + c * 8 : w1, in ? 16 : 0);
        }
        for (int e = tid; e < n2 * chunk_chunks; e += THREADS) {
            const int n = e / chunk_chunks, c = e % chunk_chunks;
            const bool in = h0 + c * 8 < hidden; /* hidden is a multiple of 8: whole chunks */
            cp_async_16(d2 + n * W2P + c * 8, in ? w2g + (size_t)n * hidden + h0 + c * 8 : w2, in ? 16 : 0);
        }
    };
    load_step(0, 0);
    cp_async_commit();

    float acc[N2 / 8][4];
    for (int j = 0; j < N2 / 8; j++)
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

    for (int step = 0; step < steps; step++) {
        const int stage = step & 1, g = g_first + step / chunks, chunk = step % chunks, h0 = chunk * FFN_CHUNK;
        if (step + 1 < steps) {
            load_step(step + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* this step's chunk (and, the first time, x) has landed for every thread */
        const T *c1 = sw1 + stage * FFN_CHUNK * W1P, *c2 = sw2 + stage * N2 * W2P;
        const T *wx = sx + warp * 16 * xp + (g - g_first) * x_group_cols;

        /* S = x W1[chunk]^T: 16 rows x FFN_CHUNK hidden columns */
        float s[FFN_CHUNK / 8][4];
        for (int j = 0; j < FFN_CHUNK / 8; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        for (int kt = 0; kt < k1 / 16; kt++) {
            uint32_t a[4];
            ldmatrix<4, false>(a, wx + ((mi & 1) * 8 + (lane & 7)) * xp + kt * 16 + (mi >> 1) * 8);
            for (int jp = 0; jp < FFN_CHUNK / 16; jp++) {
                uint32_t r[4];
                ldmatrix<4, false>(r, c1 + (jp * 16 + (mi >> 1) * 8 + (lane & 7)) * W1P + kt * 16 + (mi & 1) * 8);
                const uint32_t bk0[2] = {r[0], r[1]}, bk1[2] = {r[2], r[3]};
                mma_16816<T>(s[2 * jp], a, bk0);
                mma_16816<T>(s[2 * jp + 1], a, bk1);
            }
        }
        /* P = gelu(S + b1); hidden columns past the end have zero weights and bias: gelu(0) = 0 */
        for (int j = 0; j < FFN_CHUNK / 8; j++) {
            const int h = h0 + 8 * j + 2 * tc;
            const float bias0 = h < hidden ? b1[g * hidden + h] : 0.0f;
            const float bias1 = h + 1 < hidden ? b1[g * hidden + h + 1] : 0.0f;
            s[j][0] = sqz_gelu_f(s[j][0] + bias0), s[j][1] = sqz_gelu_f(s[j][1] + bias1);
            s[j][2] = sqz_gelu_f(s[j][2] + bias0), s[j][3] = sqz_gelu_f(s[j][3] + bias1);
        }
        /* Y += P W2[:, chunk]^T */
        for (int ks = 0; ks < FFN_CHUNK / 16; ks++) {
            const uint32_t p[4] = {pack2<T>(s[2 * ks][0], s[2 * ks][1]), pack2<T>(s[2 * ks][2], s[2 * ks][3]),
                                   pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                   pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3])};
            for (int jp = 0; jp < n2 / 16; jp++) {
                uint32_t r[4];
                ldmatrix<4, false>(r, c2 + (jp * 16 + (mi >> 1) * 8 + (lane & 7)) * W2P + ks * 16 + (mi & 1) * 8);
                const uint32_t bk0[2] = {r[0], r[1]}, bk1[2] = {r[2], r[3]};
                mma_16816<T>(acc[2 * jp], p, bk0);
                mma_16816<T>(acc[2 * jp + 1], p, bk1);
            }
        }
        __syncthreads(); /* every warp is done with this stage before the next prefetch refills it */
        if (chunk + 1 == chunks) {
            done(g, acc);
            for (int j = 0; j < N2 / 8; j++)
                acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
        }
    }
}

/* y = Y + b2 of one group, rounded to T once, handed out as dest(row of the warp's 16, column
 * n of the group, the pair of columns n and n + 1 packed) */
template <typename T, int N2, typename Dest>
__device__ __forceinline__ void ffn_store_group(const float (&acc)[N2 / 8][4], const float *b2g, Dest &&dest)
{
    const int lane = threadIdx.x & 31, gr = lane >> 2, tc = lane & 3;
    for (int j = 0; j < N2 / 8; j++) {
        const int n = 8 * j + 2 * tc;
        const float bias0 = b2g[n], bias1 = b2g[n + 1];
        for (int h = 0; h < 2; h++) {
            const uint32_t pair = pack2<T>(acc[j][2 * h] + bias0, acc[j][2 * h + 1] + bias1);
            dest(gr + 8 * h, n, pair);
        }
    }
}

template <typename T, int K1, int N2, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
ffn_fused(const T *x, const T *w1, const float *b1, const T *w2, const float *b2, T *y, int rows, int groups,
          int hidden)
{
    sqz_wait_for_previous_grid();
    constexpr int BM = 16 * WARPS, THREADS = 32 * WARPS, k1 = K1, n2 = N2;
    constexpr int XP = K1 + 8;
    SQZ_DYNAMIC_SHARED(smem);
    T *sx = (T *)smem;                         /* [BM][XP] */
    T *sw1 = sx + BM * XP;                     /* [2][FFN_CHUNK][K1 + 8] */
    T *sw2 = sw1 + 2 * FFN_CHUNK * (K1 + 8);   /* [2][N2][FFN_CHUNK + 8]: W2 rows, a chunk's columns */
    const int g = blockIdx.y, r0 = blockIdx.x * BM;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int cin = groups * k1, cout = groups * n2;
    constexpr int k1_chunks = K1 / 8;
    const T *xg = x + (size_t)g * k1;

    for (int e = tid; e < BM * k1_chunks; e += THREADS) {
        const int r = e / k1_chunks, c = e % k1_chunks;
        const bool in = r0 + r < rows;
        cp_async_16(sx + r * XP + c * 8, in ? xg + (size_t)(r0 + r) * cin + c * 8 : x, in ? 16 : 0);
    }
    ffn_groups<T, K1, N2, WARPS>(sx, XP, 0, sw1, sw2, w1, b1, w2, g, 1, hidden, [&](int, const float(&acc)[N2 / 8][4]) {
        ffn_store_group<T, N2>(acc, b2 + g * n2, [&](int wr, int n, uint32_t pair) {
            const int r = r0 + warp * 16 + wr;
            if (r < rows)
                memcpy((void *)(y + (size_t)r * cout + g * n2 + n), &pair, 4);
        });
    });
}

/* ---- the FFN with its residual and LayerNorm in one launch ------------------------------
 * out = LN(residual + ffn(x)) with gamma, beta and eps, for K1 = N2 per group (the residual
 * block of a transformer layer). One CTA of WARPS warps per tile of 16 * WARPS rows computes
 * every group of the FFN for those rows (a LayerNorm needs whole rows): the rows' x for all
 * groups stays in shared memory, and group g's output y_g = Y_g + b2_g, rounded to T once as
 * ffn_fused stores it, overwrites x_g there (the warp's own rows, read no more). Then each
 * warp normalises its 16 rows with layernorm_row in LN_ADD mode (the residual read from
 * global memory, the sum and statistics in fp32 as the add_layernorm kernel computes them)
 * and writes them rounded once. Shared memory is the x tile (16 * WARPS x (groups * K1 + 8))
 * plus ffn_fused's two weight stages: 201 KiB at 4 warps for SqueezeBERT's 4 x 192. The host
 * needs rows, pointers and the row pitch 16-byte aligned and falls back otherwise. */
template <int K1, int N2, int WARPS> __host__ __device__ constexpr size_t ffn_ln_shared_bytes(int groups)
{
    return ((size_t)16 * WARPS * ((size_t)groups * K1 + 8) +
            2 * ((size_t)FFN_CHUNK * (K1 + 8) + (size_t)N2 * (FFN_CHUNK + 8))) * 2;
}

template <typename T, int K1, int N2, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
ffn_add_layernorm(const T *x, const T *w1, const float *b1, const T *w2, const float *b2, const T *residual,
                  const float *gamma, const float *beta, T *out, int rows, int groups, int hidden, float eps)
{
    sqz_wait_for_previous_grid();
    static_assert(K1 == N2, "group g's output takes x_g's place");
    constexpr int BM = 16 * WARPS, THREADS = 32 * WARPS, k1 = K1, n2 = N2, E = 16 / sizeof(T);
    SQZ_DYNAMIC_SHARED(smem);
    const int cin = groups * k1, cout = groups * n2, xp = cin + 8;
    T *sx = (T *)smem;                         /* [BM][xp]: x, then the FFN's output */
    T *sw1 = sx + BM * xp;                     /* [2][FFN_CHUNK][K1 + 8] */
    T *sw2 = sw1 + 2 * FFN_CHUNK * (K1 + 8);   /* [2][N2][FFN_CHUNK + 8] */
    const int r0 = blockIdx.x * BM, tid = threadIdx.x, warp = tid >> 5;
    const int row_chunks = cin / 8;

    for (int e = tid; e < BM * row_chunks; e += THREADS) {
        const int r = e / row_chunks, c = e % row_chunks;
        const bool in = r0 + r < rows;
        cp_async_16(sx + r * xp + c * 8, in ? x + (size_t)(r0 + r) * cin + c * 8 : x, in ? 16 : 0);
    }
    T *wy = sx + warp * 16 * xp; /* the warp's rows */
    ffn_groups<T, K1, N2, WARPS>(sx, xp, k1, sw1, sw2, w1, b1, w2, 0, groups, hidden,
                                 [&](int g, const float(&acc)[N2 / 8][4]) {
        ffn_store_group<T, N2>(acc, b2 + g * n2, [&](int wr, int n, uint32_t pair) {
            memcpy((void *)(wy + wr * xp + g * n2 + n), &pair, 4);
        });
    });
    __syncwarp(); /* every lane's part of the warp's rows is in place before any lane reads a row */
    for (int wr = 0; wr < 16; wr++) {
        const int r = r0 + warp * 16 + wr;
        if (r >= rows)
            break;
        LnRow<T, T, LN_ADD, E> row;
        row.a = wy + wr * xp;
        row.b = residual + (size_t)r * cout;
        layernorm_row(row, gamma, beta, out + (size_t)r * cout, cout, eps);
    }
}

} // namespace sqzk

#endif
