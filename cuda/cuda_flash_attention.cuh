/* Tensor-core flash attention over packed variable-length sequences (fp16 / bf16 storage,
 * fp32 statistics and accumulation). Included by cuda/cuda_backend.cu after
 * cuda/cuda_kernels.cuh.
 *
 * One CTA of WARPS warps per (tile of 16 * WARPS queries, head, sequence); for sequences up
 * to 16 * WARPS tokens that is one CTA per (sequence, head), which loads the sequence's K and
 * V once. Each warp owns 16 queries. K and V pass through shared memory in chunks of
 * FA_KEYS keys, copied by cp.async two chunks deep (the next chunk lands while this one is
 * used). Per chunk, in registers: S = Q K^T with mma.sync m16n8k16 (Q and K fragments by
 * ldmatrix), the online softmax in base 2 (scores pre-multiplied by scale * log2 e, exp2),
 * P rounded to T and reused directly as the A operand (the accumulator layout of S is the
 * A layout of P), and O += P V (V fragments by ldmatrix.trans). A masked key, or a key past
 * the sequence's end, has probability exactly 0; rows past the end read zeros and are not
 * written. The sequence index comes from blockIdx.x, so the number of sequences is limited
 * only by 2^31 / tiles. q, k and v are read where `layout` says: three tensors, or the parts
 * of one QKV output. */
#ifndef SQZ_CUDA_FLASH_ATTENTION_CUH
#define SQZ_CUDA_FLASH_ATTENTION_CUH

namespace sqzk {

constexpr int FA_KEYS = 64; /* keys per chunk */

/* row pitch of the shared tiles, in T elements: 16 bytes of padding moves each row to a
 * different bank group, so ldmatrix's eight rows do not conflict */
template <int HD> __host__ __device__ constexpr int fa_pitch() { return HD + 8; }

template <int HD, int WARPS> __host__ __device__ constexpr size_t fa_shared_bytes()
{
    return (size_t)(16 * WARPS + 4 * FA_KEYS) * fa_pitch<HD>() * 2 + 2 * FA_KEYS * sizeof(int);
}

template <typename T, int HD, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
flash_attention(const T *q, const T *k, const T *v, qkv_layout layout, const int *key_valid, const int *seq_off, T *ctx,
                int ld_out, int tiles_per_seq, float scale_log2)
{
    sqz_wait_for_previous_grid();
    static_assert(HD % 16 == 0 && HD <= 128, "head size a multiple of 16, at most 128");
    constexpr int BQ = 16 * WARPS, LD = fa_pitch<HD>(), THREADS = 32 * WARPS, CHUNKS_PER_ROW = HD / 8;
    SQZ_DYNAMIC_SHARED(smem);
    T *sq = (T *)smem;                       /* [BQ][LD] */
    T *sk = sq + BQ * LD;                    /* [2][FA_KEYS][LD] */
    T *sv = sk + 2 * FA_KEYS * LD;           /* [2][FA_KEYS][LD] */
    int *svalid = (int *)(sv + 2 * FA_KEYS * LD); /* [2][FA_KEYS] */

    const int s = blockIdx.x / tiles_per_seq, tile = blockIdx.x % tiles_per_seq, h = blockIdx.y;
    const int first = seq_off[s], end = seq_off[s + 1];
    const int q0 = first + tile * BQ;
    if (q0 >= end)
        return; /* uniform over the block */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int head_col = h * HD, ld_in = layout.ld; /* a chunk of 8 columns lies inside one group */

    /* queries of the tile; rows past the end are zeros */
    for (int e = tid; e < BQ * CHUNKS_PER_ROW; e += THREADS) {
        const int r = e / CHUNKS_PER_ROW, c = e % CHUNKS_PER_ROW;
        const bool in = q0 + r < end;
        const T *from = in ? q + (size_t)(q0 + r) * ld_in + layout.column(head_col + c * 8) : q;
        cp_async_16(sq + r * LD + c * 8, from, in ? 16 : 0);
    }
    auto load_chunk = [&](int chunk, int stage) {
        const int k0 = first + chunk * FA_KEYS;
        T *dk = sk + stage * FA_KEYS * LD, *dv = sv + stage * FA_KEYS * LD;
        for (int e = tid; e < FA_KEYS * CHUNKS_PER_ROW; e += THREADS) {
            const int r = e / CHUNKS_PER_ROW, c = e % CHUNKS_PER_ROW;
            const bool in = k0 + r < end;
            const size_t at = (size_t)(k0 + r) * ld_in + layout.column(head_col + c * 8);
            cp_async_16(dk + r * LD + c * 8, in ? k + at : k, in ? 16 : 0);
            cp_async_16(dv + r * LD + c * 8, in ? v + at : v, in ? 16 : 0); /* zeros: 0 * V stays 0 */
        }
        for (int j = tid; j < FA_KEYS; j += THREADS)
            svalid[stage * FA_KEYS + j] = k0 + j < end ? key_valid[k0 + j] : 0;
    };
    const int chunks = (end - first + FA_KEYS - 1) / FA_KEYS;
    load_chunk(0, 0);
    cp_async_commit();

    uint32_t qf[HD / 16][4];
    float o[HD / 8][4];
    for (int i = 0; i < HD / 8; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* rows g and g + 8 */

    for (int chunk = 0; chunk < chunks; chunk++) {
        const int stage = chunk & 1;
        if (chunk + 1 < chunks) {
            load_chunk(chunk + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>(); /* this chunk (and the queries) have landed */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* ... for every thread's copies */
        if (chunk == 0) {
            for (int kt = 0; kt < HD / 16; kt++) {
                const int mi = lane >> 3;
                ldmatrix<4, false>(qf[kt], sq + (warp * 16 + (mi & 1) * 8 + (lane & 7)) * LD + kt * 16 + (mi >> 1) * 8);
            }
        }
        const T *ck = sk + stage * FA_KEYS * LD, *cv = sv + stage * FA_KEYS * LD;
        const int *cvalid = svalid + stage * FA_KEYS;

        /* S = Q K^T: 16 queries x FA_KEYS keys, n-tile j covers keys 8j..8j+7 */
        float sc[FA_KEYS / 8][4];
        for (int j = 0; j < FA_KEYS / 8; j++)
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
        for (int kt = 0; kt < HD / 16; kt++) {
            for (int np = 0; np < FA_KEYS / 16; np++) {
                const int mi = lane >> 3; /* matrices: (keys 0-7, dims 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) */
                uint32_t r[4];
                ldmatrix<4, false>(r, ck + (np * 16 + (mi >> 1) * 8 + (lane & 7)) * LD + kt * 16 + (mi & 1) * 8);
                const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_16816<T>(sc[2 * np], qf[kt], b0);
                mma_16816<T>(sc[2 * np + 1], qf[kt], b1);
            }
        }

        /* online softmax, base 2; this lane holds rows g (i = 0, 1) and g + 8 (i = 2, 3) at key
         * columns 8j + 2t + (i & 1) */
        float mx[2] = {-INFINITY, -INFINITY};
        for (int j = 0; j < FA_KEYS / 8; j++)
            for (int i = 0; i < 4; i++) {
                const int col = 8 * j + 2 * t + (i & 1);
                sc[j][i] = cvalid[col] ? sc[j][i] * scale_log2 : -INFINITY;
                mx[i >> 1] = fmaxf(mx[i >> 1], sc[j][i]);
            }
        float alpha[2];
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float m_new = fmaxf(m[r], mx[r]);
            /* no valid key yet in this row: nothing to rescale, every probability is 0 */
            alpha[r] = m_new == -INFINITY ? 1.0f : exp2f(m[r] - m_new);
            m[r] = m_new;
            l[r] *= alpha[r];
        }
        for (int j = 0; j < FA_KEYS / 8; j++)
            for (int i = 0; i < 4; i++) {
                const float mr = m[i >> 1];
                sc[j][i] = mr == -INFINITY ? 0.0f : exp2f(sc[j][i] - mr); /* exp2(-inf) = 0: masked keys */
                l[i >> 1] += sc[j][i];
            }
        for (int d = 0; d < HD / 8; d++) {
            o[d][0] *= alpha[0], o[d][1] *= alpha[0];
            o[d][2] *= alpha[1], o[d][3] *= alpha[1];
        }

        /* O += P V: k-step ks covers keys 16ks..16ks+15, n-tile d covers dims 8d..8d+7 */
        for (int ks = 0; ks < FA_KEYS / 16; ks++) {
            const uint32_t pf[4] = {pack2<T>(sc[2 * ks][0], sc[2 * ks][1]), pack2<T>(sc[2 * ks][2], sc[2 * ks][3]),
                                    pack2<T>(sc[2 * ks + 1][0], sc[2 * ks + 1][1]),
                                    pack2<T>(sc[2 * ks + 1][2], sc[2 * ks + 1][3])};
            for (int dp = 0; dp < HD / 16; dp++) {
                const int mi = lane >> 3; /* (keys 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) */
                uint32_t r[4];
                ldmatrix<4, true>(r, cv + (ks * 16 + (mi & 1) * 8 + (lane & 7)) * LD + dp * 16 + (mi >> 1) * 8);
                const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_16816<T>(o[2 * dp], pf, b0);
                mma_16816<T>(o[2 * dp + 1], pf, b1);
            }
        }
        __syncthreads(); /* every warp is done with this stage before the next prefetch refills it */
    }

    /* O / l, through this warp's own rows of the query tile so that rows leave in 16-byte stores */
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        l[r] = 1.0f / l[r];
    }
    T *stage_rows = sq + warp * 16 * LD;
    for (int d = 0; d < HD / 8; d++) {
        const int col = 8 * d + 2 * t;
        const uint32_t top = pack2<T>(o[d][0] * l[0], o[d][1] * l[0]), bottom = pack2<T>(o[d][2] * l[1], o[d][3] * l[1]);
        memcpy((void *)(stage_rows + g * LD + col), &top, 4);
        memcpy((void *)(stage_rows + (g + 8) * LD + col), &bottom, 4);
    }
    __syncwarp();
    for (int e = lane; e < 16 * CHUNKS_PER_ROW; e += 32) {
        const int r = e / CHUNKS_PER_ROW, c = e % CHUNKS_PER_ROW;
        const int token = q0 + warp * 16 + r;
        if (token < end)
            *(uint4 *)(ctx + (size_t)token * ld_out + head_col + c * 8) = *(const uint4 *)(stage_rows + r * LD + c * 8);
    }
}

} // namespace sqzk

#endif
