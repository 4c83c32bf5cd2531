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
 * 16-byte aligned. The host checks and otherwise runs the two GEMMs. */
#ifndef SQZ_CUDA_FFN_CUH
#define SQZ_CUDA_FFN_CUH

namespace sqzk {

constexpr int FFN_CHUNK = 64; /* hidden columns per step */

template <int K1, int N2, int WARPS> __host__ __device__ constexpr size_t ffn_shared_bytes()
{
    /* x tile, then two stages of (W1 chunk rows, W2 chunk columns); rows padded by 8 elements */
    return ((size_t)16 * WARPS * (K1 + 8) + 2 * ((size_t)FFN_CHUNK * (K1 + 8) + (size_t)N2 * (FFN_CHUNK + 8))) * 2;
}

template <typename T, int K1, int N2, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
ffn_fused(const T *x, const T *w1, const float *b1, const T *w2, const float *b2, T *y, int rows, int groups,
          int hidden)
{
    sqz_wait_for_previous_grid();
    static_assert(K1 % 16 == 0 && N2 % 16 == 0, "whole 16 x 16 blocks");
    constexpr int BM = 16 * WARPS, THREADS = 32 * WARPS, k1 = K1, n2 = N2;
    constexpr int XP = K1 + 8, W1P = K1 + 8, W2P = FFN_CHUNK + 8;
    SQZ_DYNAMIC_SHARED(smem);
    T *sx = (T *)smem;                         /* [BM][XP] */
    T *sw1 = sx + BM * XP;                     /* [2][FFN_CHUNK][W1P] */
    T *sw2 = sw1 + 2 * FFN_CHUNK * W1P;        /* [2][N2][W2P]: W2 rows, this chunk's columns */
    const int g = blockIdx.y, r0 = blockIdx.x * BM;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, mi = lane >> 3;
    const int cin = groups * k1, cout = groups * n2;
    constexpr int k1_chunks = K1 / 8, chunk_chunks = FFN_CHUNK / 8;
    const T *xg = x + (size_t)g * k1;
    const T *w1g = w1 + (size_t)g * hidden * k1; /* hidden row h: w1g + h * k1 */
    const T *w2g = w2 + (size_t)g * n2 * hidden; /* output row n: w2g + n * hidden */

    for (int e = tid; e < BM * k1_chunks; e += THREADS) {
        const int r = e / k1_chunks, c = e % k1_chunks;
        const bool in = r0 + r < rows;
        cp_async_16(sx + r * XP + c * 8, in ? xg + (size_t)(r0 + r) * cin + c * 8 : x, in ? 16 : 0);
    }
    auto load_chunk = [&](int chunk, int stage) {
        const int h0 = chunk * FFN_CHUNK;
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
    const int chunks = (hidden + FFN_CHUNK - 1) / FFN_CHUNK;
    load_chunk(0, 0);
    cp_async_commit();

    float acc[N2 / 8][4];
    for (int j = 0; j < N2 / 8; j++)
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    const int gr = lane >> 2, tc = lane & 3;
    const T *wx = sx + warp * 16 * XP;

    for (int chunk = 0; chunk < chunks; chunk++) {
        const int stage = chunk & 1, h0 = chunk * FFN_CHUNK;
        if (chunk + 1 < chunks) {
            load_chunk(chunk + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* this chunk (and, the first time, x) has landed for every thread */
        const T *c1 = sw1 + stage * FFN_CHUNK * W1P, *c2 = sw2 + stage * N2 * W2P;

        /* S = x W1[chunk]^T: 16 rows x FFN_CHUNK hidden columns */
        float s[FFN_CHUNK / 8][4];
        for (int j = 0; j < FFN_CHUNK / 8; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        for (int kt = 0; kt < k1 / 16; kt++) {
            uint32_t a[4];
            ldmatrix<4, false>(a, wx + ((mi & 1) * 8 + (lane & 7)) * XP + kt * 16 + (mi >> 1) * 8);
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
    }

    for (int j = 0; j < n2 / 8; j++) {
        const int n = 8 * j + 2 * tc;
        const float bias0 = b2[g * n2 + n], bias1 = b2[g * n2 + n + 1];
        for (int h = 0; h < 2; h++) {
            const int r = r0 + warp * 16 + gr + 8 * h;
            if (r >= rows)
                continue;
            const uint32_t pair = pack2<T>(acc[j][2 * h] + bias0, acc[j][2 * h + 1] + bias1);
            memcpy((void *)(y + (size_t)r * cout + g * n2 + n), &pair, 4);
        }
    }
}

} // namespace sqzk

#endif
