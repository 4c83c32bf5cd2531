/* The grouped linear layer on tensor cores (fp16 / bf16 storage, fp32 accumulation), with its
 * epilogue in the kernel: y = act(x W^T + bias) per group, the bias and the exact (erf) GELU
 * applied to the fp32 accumulators before the one rounding to T, so an intermediate GEMM needs
 * no second pass over its 3072-wide output. Included by cuda/cuda_backend.cu after
 * cuda/cuda_kernels.cuh; the launches are variants of cuda/cuda_gemm.cuh.
 *
 * Both operands are K-contiguous (x rows, W rows), so both reach mma.sync m16n8k16 through
 * ldmatrix without a transpose: x is A (row-major), W^T is B (column-major). A CTA of
 * WARPS_M x WARPS_N warps computes a BM x BN tile of one group's output (blockIdx.z), each
 * warp a (BM / WARPS_M) x (BN / WARPS_N) part. K advances GEMM_BK = 32 at a time through
 * STAGES shared-memory stages filled by 16-byte cp.async, STAGES - 1 of them in flight while
 * one is used. Rows, output columns and K past the ends are zeros in shared memory and are
 * never stored. Needs K per group a multiple of 8 (whole 16-byte chunks), row strides and
 * pointers 16-byte aligned, and an even number of output columns per group (pairs are stored
 * as one 32-bit word); the host checks and otherwise uses another variant. */
#ifndef SQZ_CUDA_MMA_GEMM_CUH
#define SQZ_CUDA_MMA_GEMM_CUH

namespace sqzk {

constexpr int GEMM_BK = 32;
constexpr int GEMM_PITCH = GEMM_BK + 8; /* 80-byte rows: ldmatrix's eight rows hit eight bank groups */

template <int BM, int BN, int STAGES> __host__ __device__ constexpr size_t mma_gemm_shared_bytes()
{
    return (size_t)STAGES * (BM + BN) * GEMM_PITCH * 2;
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool GELU>
__global__ void __launch_bounds__(WARPS_M *WARPS_N * 32)
gemm_mma(const T *x, const T *w, const float *bias, T *y, int rows, int cin, int cout, int groups)
{
    sqz_wait_for_previous_grid();
    constexpr int THREADS = WARPS_M * WARPS_N * 32, WM = BM / WARPS_M, WN = BN / WARPS_N;
    constexpr int MT = WM / 16, NT = WN / 8, CHUNKS = GEMM_BK / 8;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles of whole 16 x 16 blocks");
    SQZ_DYNAMIC_SHARED(smem);
    T *sa = (T *)smem;                          /* [STAGES][BM][GEMM_PITCH] */
    T *sb = sa + STAGES * BM * GEMM_PITCH;      /* [STAGES][BN][GEMM_PITCH] */
    const int cin_g = cin / groups, cout_g = cout / groups, g = blockIdx.z;
    const int r0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const T *xg = x + (size_t)g * cin_g;                 /* row r of the group: xg + r * cin */
    const T *wg = w + (size_t)g * cout_g * cin_g;        /* row n: wg + n * cin_g */
    const int k_tiles = (cin_g + GEMM_BK - 1) / GEMM_BK;

    auto load_stage = [&](int kt, int stage) {
        const int k0 = kt * GEMM_BK;
        T *da = sa + stage * BM * GEMM_PITCH, *db = sb + stage * BN * GEMM_PITCH;
        for (int e = tid; e < (BM + BN) * CHUNKS; e += THREADS) {
            const bool is_a = e < BM * CHUNKS;
            const int i = (is_a ? e : e - BM * CHUNKS) / CHUNKS, c = e % CHUNKS, k = k0 + c * 8;
            if (is_a) {
                const bool in = r0 + i < rows && k < cin_g;
                cp_async_16(da + i * GEMM_PITCH + c * 8, in ? xg + (size_t)(r0 + i) * cin + k : x, in ? 16 : 0);
            } else {
                const bool in = n0 + i < cout_g && k < cin_g;
                cp_async_16(db + i * GEMM_PITCH + c * 8, in ? wg + (size_t)(n0 + i) * cin_g + k : w, in ? 16 : 0);
            }
        }
    };

    float acc[MT][NT][4];
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < NT; j++)
            acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

    for (int s = 0; s < STAGES - 1; s++) {
        if (s < k_tiles)
            load_stage(s, s);
        cp_async_commit(); /* one group per k-tile, empty past the end, so the counts stay uniform */
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<STAGES - 2>(); /* this thread's copies of tile kt have landed ... */
        __syncthreads();             /* ... and everyone's; and tile kt - 1's stage is free */
        if (kt + STAGES - 1 < k_tiles)
            load_stage(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        cp_async_commit();
        const T *ca = sa + (kt % STAGES) * BM * GEMM_PITCH, *cb = sb + (kt % STAGES) * BN * GEMM_PITCH;
        const int mi = lane >> 3;
        for (int ks = 0; ks < GEMM_BK / 16; ks++) {
            uint32_t af[MT][4];
            for (int i = 0; i < MT; i++) /* matrices: (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) */
                ldmatrix<4, false>(af[i], ca + (wm * WM + i * 16 + (mi & 1) * 8 + (lane & 7)) * GEMM_PITCH + ks * 16 +
                                              (mi >> 1) * 8);
            for (int jp = 0; jp < NT / 2; jp++) {
                uint32_t r[4]; /* (n 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) */
                ldmatrix<4, false>(r, cb + (wn * WN + jp * 16 + (mi >> 1) * 8 + (lane & 7)) * GEMM_PITCH + ks * 16 +
                                          (mi & 1) * 8);
                const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                for (int i = 0; i < MT; i++) {
                    mma_16816<T>(acc[i][2 * jp], af[i], b0);
                    mma_16816<T>(acc[i][2 * jp + 1], af[i], b1);
                }
            }
        }
    }
    cp_async_wait<0>(); /* nothing may still be landing when the block ends */

    /* epilogue on the fp32 accumulators: lane (g, t) holds rows g and g + 8, columns 2t, 2t + 1
     * of each 16 x 8 tile */
    const int gr = lane >> 2, tc = lane & 3;
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < NT; j++) {
            const int n = n0 + wn * WN + j * 8 + 2 * tc;
            if (n >= cout_g)
                continue;
            const float b0 = bias ? bias[g * cout_g + n] : 0.0f, b1 = bias ? bias[g * cout_g + n + 1] : 0.0f;
            for (int h = 0; h < 2; h++) {
                const int r = r0 + wm * WM + i * 16 + gr + 8 * h;
                if (r >= rows)
                    continue;
                float v0 = acc[i][j][2 * h] + b0, v1 = acc[i][j][2 * h + 1] + b1;
                if (GELU)
                    v0 = sqz_gelu_f(v0), v1 = sqz_gelu_f(v1);
                const uint32_t pair = pack2<T>(v0, v1);
                memcpy((void *)(y + (size_t)r * cout + g * cout_g + n), &pair, 4);
            }
        }
}

} // namespace sqzk

#endif
