/* Device code of the squeezebert engine, in OpenCL C 1.2.
 *
 * Every tensor argument is a (base pointer, element offset) pair into one of two buffers
 * (weights, arena), so the graph compiler's memory plan needs no sub-buffers. Activations
 * are token-major [rows][cols] fp32; index tensors are int32. All statistics (LayerNorm,
 * softmax) are fp32. Names follow sqz_<op>; the host side is opencl/opencl_backend.c.
 */

/* The same source compiles as CUDA C++ through kernels/sqz_dialect_cuda.cuh, which defines
 * SQZ_FN, __kernel, __global, get_global_id and the vector types used here. */
#ifndef SQZ_FN
#define SQZ_FN /* helper functions: plain in OpenCL C, __device__ in CUDA */
#endif

#define TENSOR(type, name) __global type *name##_base, ulong name##_off
#define AT(name) (name##_base + name##_off)

/* ---- elementwise and gathers ----------------------------------------------------------- */

__kernel void sqz_gather_rows(TENSOR(const int, index), TENSOR(const float, table),
                              TENSOR(float, out), int rows, int cols, int table_rows)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= cols || r >= rows)
        return;
    int i = AT(index)[r];
    i = clamp(i, 0, table_rows - 1); /* the executor validated ids; never read outside */
    AT(out)[(size_t)r * cols + c] = AT(table)[(size_t)i * cols + c];
}

__kernel void sqz_add(TENSOR(const float, a), TENSOR(const float, b), TENSOR(float, out), ulong n)
{
    const size_t i = get_global_id(0);
    if (i < n)
        AT(out)[i] = AT(a)[i] + AT(b)[i];
}

/* Exact-form GELU, 0.5 x (1 + erf(x / sqrt 2)), without the device's erf: PoCL's is ~65x
 * slower than its exp. Two fits of our own (least squares on Chebyshev nodes, checked in
 * fp32): erf(z) = z P(z^2) for |z| < 1 (max relative error 1.9e-7), and
 * erfc(z) = exp(-z^2) u G(u), u = 1/z, for 1 <= z <= 9.5 (relative error below 1.2e-6 up
 * to z = 5, where it is limited by rounding z^2). The negative tail uses erfc directly, so
 * small outputs keep their relative accuracy instead of cancelling in 1 + erf. */
SQZ_FN float sqz_gelu_f(float x)
{
    const float z = x * 0.70710678118654752f, a = fabs(z);
    if (a < 1.0f) {
        const float s = z * z;
        float p = 8.006266783e-05f;
        p = fma(p, s, -8.053592318e-04f);
        p = fma(p, s, 5.192942551e-03f);
        p = fma(p, s, -2.685606291e-02f);
        p = fma(p, s, 1.128363451e-01f);
        p = fma(p, s, -3.761262976e-01f);
        p = fma(p, s, 1.128379166e+00f);
        return 0.5f * x * (1.0f + z * p);
    }
    if (a > 9.5f) /* erfc(a) underflows fp32 */
        return z > 0.0f ? x : -0.0f;
    const float u = 1.0f / a;
    float g = -4.383518135e-02f;
    g = fma(g, u, 2.103667015e-01f);
    g = fma(g, u, -3.408355633e-01f);
    g = fma(g, u, 1.055525802e-02f);
    g = fma(g, u, 7.585559634e-01f);
    g = fma(g, u, -1.213275328e+00f);
    g = fma(g, u, 8.401582343e-01f);
    g = fma(g, u, -8.622003930e-02f);
    g = fma(g, u, -2.713600917e-01f);
    g = fma(g, u, -7.372887697e-04f);
    g = fma(g, u, 5.642108996e-01f);
    const float erfc_a = exp(-a * a) * u * g;
    return z > 0.0f ? x * (1.0f - 0.5f * erfc_a) : 0.5f * x * erfc_a;
}

__kernel void sqz_gelu(TENSOR(const float, x), TENSOR(float, out), ulong n)
{
    const size_t i = get_global_id(0);
    if (i < n)
        AT(out)[i] = sqz_gelu_f(AT(x)[i]);
}

__kernel void sqz_tanh(TENSOR(const float, x), TENSOR(float, out), ulong n)
{
    const size_t i = get_global_id(0);
    if (i < n)
        AT(out)[i] = tanh(AT(x)[i]);
}

/* ---- LayerNorm family: one work-item per row, two passes for a stable variance ---------- */

SQZ_FN void sqz_normalise_row(__global float *row, int cols, __global const float *gamma,
                       __global const float *beta, float eps)
{
    float mean = 0.0f;
    for (int c = 0; c < cols; c++)
        mean += row[c];
    mean /= (float)cols;
    float var = 0.0f;
    for (int c = 0; c < cols; c++) {
        const float d = row[c] - mean;
        var += d * d;
    }
    const float inv = rsqrt(var / (float)cols + eps);
    for (int c = 0; c < cols; c++)
        row[c] = (row[c] - mean) * inv * gamma[c] + beta[c];
}

__kernel void sqz_layernorm(TENSOR(const float, x), TENSOR(const float, gamma),
                            TENSOR(const float, beta), TENSOR(float, out), int rows, int cols,
                            float eps)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    __global float *row = AT(out) + (size_t)r * cols;
    __global const float *in = AT(x) + (size_t)r * cols;
    for (int c = 0; c < cols; c++)
        row[c] = in[c];
    sqz_normalise_row(row, cols, AT(gamma), AT(beta), eps);
}

__kernel void sqz_add_layernorm(TENSOR(const float, a), TENSOR(const float, b),
                                TENSOR(const float, gamma), TENSOR(const float, beta),
                                TENSOR(float, out), int rows, int cols, float eps)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    __global float *row = AT(out) + (size_t)r * cols;
    const size_t base = (size_t)r * cols;
    for (int c = 0; c < cols; c++)
        row[c] = AT(a)[base + c] + AT(b)[base + c];
    sqz_normalise_row(row, cols, AT(gamma), AT(beta), eps);
}

__kernel void sqz_embed_layernorm(TENSOR(const int, ids), TENSOR(const int, positions),
                                  TENSOR(const int, types), TENSOR(const float, word),
                                  TENSOR(const float, pos), TENSOR(const float, type),
                                  TENSOR(const float, gamma), TENSOR(const float, beta),
                                  TENSOR(float, out), int rows, int cols, int vocab,
                                  int max_positions, int type_vocab, float eps)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    const size_t w = (size_t)clamp(AT(ids)[r], 0, vocab - 1) * cols;
    const size_t p = (size_t)clamp(AT(positions)[r], 0, max_positions - 1) * cols;
    const size_t t = (size_t)clamp(AT(types)[r], 0, type_vocab - 1) * cols;
    __global float *row = AT(out) + (size_t)r * cols;
    for (int c = 0; c < cols; c++) /* (word + position) + type, the reference's order */
        row[c] = (AT(word)[w + c] + AT(pos)[p + c]) + AT(type)[t + c];
    sqz_normalise_row(row, cols, AT(gamma), AT(beta), eps);
}

/* ---- grouped linear: y[r, o] = b[o] + sum_j w[o, j] x[r, g*cin_g + j] -------------------
 * Each work-item computes a 4-row x 4-output tile with 8-wide vectors along the reduction
 * (weights stay in their natural [cout][cin_g] layout, read contiguously). Tiles that cross
 * a group boundary or the matrix edge take the scalar path. act: 0 none, 1 exact GELU. */

#define TILE_R 4
#define TILE_O 4

SQZ_FN float sqz_hsum8(float8 v)
{
    float4 s = v.lo + v.hi;
    return (s.x + s.y) + (s.z + s.w);
}

__kernel void sqz_linear(TENSOR(const float, x), TENSOR(const float, w), TENSOR(const float, bias),
                         TENSOR(float, y), int rows, int cin, int cout, int groups, int has_bias,
                         int act)
{
    const int o0 = get_global_id(0) * TILE_O, r0 = get_global_id(1) * TILE_R;
    if (o0 >= cout || r0 >= rows)
        return;
    const int cin_g = cin / groups, cout_g = cout / groups;
    __global const float *X = AT(x), *W = AT(w), *B = AT(bias);
    __global float *Y = AT(y);
    const int g = o0 / cout_g;
    const bool full = r0 + TILE_R <= rows && o0 + TILE_O <= cout && (o0 + TILE_O - 1) / cout_g == g;
    if (full) {
        __global const float *xr = X + (size_t)r0 * cin + g * cin_g;
        __global const float *wr = W + (size_t)o0 * cin_g;
        float8 a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
        float8 a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
        int j = 0;
        for (; j + 8 <= cin_g; j += 8) {
            const float8 x0 = vload8(0, xr + j), x1 = vload8(0, xr + cin + j);
            const float8 x2 = vload8(0, xr + 2 * cin + j), x3 = vload8(0, xr + 3 * cin + j);
            const float8 w0 = vload8(0, wr + j), w1 = vload8(0, wr + cin_g + j);
            const float8 w2 = vload8(0, wr + 2 * cin_g + j), w3 = vload8(0, wr + 3 * cin_g + j);
            a00 = fma(x0, w0, a00); a01 = fma(x0, w1, a01); a02 = fma(x0, w2, a02); a03 = fma(x0, w3, a03);
            a10 = fma(x1, w0, a10); a11 = fma(x1, w1, a11); a12 = fma(x1, w2, a12); a13 = fma(x1, w3, a13);
            a20 = fma(x2, w0, a20); a21 = fma(x2, w1, a21); a22 = fma(x2, w2, a22); a23 = fma(x2, w3, a23);
            a30 = fma(x3, w0, a30); a31 = fma(x3, w1, a31); a32 = fma(x3, w2, a32); a33 = fma(x3, w3, a33);
        }
        float acc[TILE_R][TILE_O] = {
            {sqz_hsum8(a00), sqz_hsum8(a01), sqz_hsum8(a02), sqz_hsum8(a03)},
            {sqz_hsum8(a10), sqz_hsum8(a11), sqz_hsum8(a12), sqz_hsum8(a13)},
            {sqz_hsum8(a20), sqz_hsum8(a21), sqz_hsum8(a22), sqz_hsum8(a23)},
            {sqz_hsum8(a30), sqz_hsum8(a31), sqz_hsum8(a32), sqz_hsum8(a33)}};
        for (; j < cin_g; j++)
            for (int r = 0; r < TILE_R; r++)
                for (int o = 0; o < TILE_O; o++)
                    acc[r][o] = fma(xr[r * cin + j], wr[o * cin_g + j], acc[r][o]);
        for (int r = 0; r < TILE_R; r++)
            for (int o = 0; o < TILE_O; o++) {
                float v = acc[r][o] + (has_bias ? B[o0 + o] : 0.0f);
                Y[(size_t)(r0 + r) * cout + o0 + o] = act ? sqz_gelu_f(v) : v;
            }
        return;
    }
    for (int r = r0; r < min(r0 + TILE_R, rows); r++)
        for (int o = o0; o < min(o0 + TILE_O, cout); o++) {
            const int go = o / cout_g;
            __global const float *xr = X + (size_t)r * cin + go * cin_g;
            __global const float *wr = W + (size_t)o * cin_g;
            float acc = 0.0f;
            for (int j = 0; j < cin_g; j++)
                acc = fma(xr[j], wr[j], acc);
            float v = acc + (has_bias ? B[o] : 0.0f);
            Y[(size_t)r * cout + o] = act ? sqz_gelu_f(v) : v;
        }
}

/* ---- attention over packed variable-length sequences ------------------------------------- */

/* The sequence holding packed token t (binary search over the prefix offsets). */
SQZ_FN int sqz_sequence_of(__global const int *seq_offsets, int sequences, int t)
{
    int first = 0, last = sequences - 1;
    while (first < last) {
        const int mid = (first + last + 1) / 2;
        if (seq_offsets[mid] <= t)
            first = mid;
        else
            last = mid - 1;
    }
    return first;
}

/* Unfused parts, one work-item per score: written for clarity, not speed. */
__kernel void sqz_attn_scores(TENSOR(const float, q), TENSOR(const float, k),
                              TENSOR(const int, seq_off), TENSOR(const int, score_off),
                              TENSOR(float, scores), int tokens, int sequences, int heads,
                              int head_dim, float scale, int max_len)
{
    const int t = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    if (t >= tokens || h >= heads)
        return;
    const int s = sqz_sequence_of(AT(seq_off), sequences, t);
    const int o = AT(seq_off)[s], len = AT(seq_off)[s + 1] - o, a = t - o;
    if (b >= len)
        return;
    const int width = heads * head_dim;
    float acc = 0.0f;
    for (int i = 0; i < head_dim; i++)
        acc = fma(AT(q)[(size_t)t * width + h * head_dim + i],
                  AT(k)[(size_t)(o + b) * width + h * head_dim + i], acc);
    AT(scores)[(size_t)AT(score_off)[s] * heads + ((size_t)h * len + a) * len + b] = acc * scale;
}

__kernel void sqz_attn_key_mask(TENSOR(const float, scores), TENSOR(const int, key_valid),
                                TENSOR(const int, seq_off), TENSOR(const int, score_off),
                                TENSOR(float, out), int tokens, int sequences, int heads, int max_len)
{
    const int t = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    if (t >= tokens || h >= heads)
        return;
    const int s = sqz_sequence_of(AT(seq_off), sequences, t);
    const int o = AT(seq_off)[s], len = AT(seq_off)[s + 1] - o, a = t - o;
    if (b >= len)
        return;
    const size_t i = (size_t)AT(score_off)[s] * heads + ((size_t)h * len + a) * len + b;
    AT(out)[i] = AT(key_valid)[o + b] ? AT(scores)[i] : AT(scores)[i] + -FLT_MAX;
}

__kernel void sqz_attn_softmax(TENSOR(const float, scores), TENSOR(const int, seq_off),
                               TENSOR(const int, score_off), TENSOR(float, out), int tokens,
                               int sequences, int heads)
{
    const int t = get_global_id(0), h = get_global_id(1);
    if (t >= tokens || h >= heads)
        return;
    const int s = sqz_sequence_of(AT(seq_off), sequences, t);
    const int o = AT(seq_off)[s], len = AT(seq_off)[s + 1] - o, a = t - o;
    const size_t base = (size_t)AT(score_off)[s] * heads + ((size_t)h * len + a) * len;
    float m = AT(scores)[base];
    for (int b = 1; b < len; b++)
        m = fmax(m, AT(scores)[base + b]);
    float sum = 0.0f;
    for (int b = 0; b < len; b++)
        sum += exp(AT(scores)[base + b] - m);
    for (int b = 0; b < len; b++)
        AT(out)[base + b] = exp(AT(scores)[base + b] - m) / sum;
}

__kernel void sqz_attn_context(TENSOR(const float, probs), TENSOR(const float, v),
                               TENSOR(const int, seq_off), TENSOR(const int, score_off),
                               TENSOR(float, ctx), int tokens, int sequences, int heads, int head_dim)
{
    const int t = get_global_id(0), h = get_global_id(1), i = get_global_id(2);
    if (t >= tokens || h >= heads || i >= head_dim)
        return;
    const int s = sqz_sequence_of(AT(seq_off), sequences, t);
    const int o = AT(seq_off)[s], len = AT(seq_off)[s + 1] - o, a = t - o;
    const int width = heads * head_dim;
    __global const float *p = AT(probs) + (size_t)AT(score_off)[s] * heads + ((size_t)h * len + a) * len;
    float acc = 0.0f;
    for (int b = 0; b < len; b++)
        acc = fma(p[b], AT(v)[(size_t)(o + b) * width + h * head_dim + i], acc);
    AT(ctx)[(size_t)t * width + h * head_dim + i] = acc;
}

/* Fused attention: one work-item per (query token, head) makes one pass over the keys of its
 * sequence with an online softmax (running max and sum, fp32), so no score matrix is ever
 * stored. Padded keys are skipped, which equals adding the lowest float before the softmax
 * because every sequence keeps at least one valid key. */
#define SQZ_MAX_HEAD_DIM 128

/* Linear attention (the variant of docs/variants.md): one work-item per (sequence, value
 * column j, head) sums KV[:, j] = sum_b f(k_b) v_bj and Z = sum_b f(k_b) over the valid keys
 * in registers, then writes column j of every query of its sequence,
 * f(q_a) . KV[:, j] / f(q_a) . Z, with f(x) = elu(x) + 1. Work and memory grow linearly with
 * the length. Dimension 0 counts sequences x head_dim, so the number of sequences is not
 * bounded by a grid's third dimension. */
SQZ_FN float sqz_elu_plus_one(float x) { return x > 0.0f ? x + 1.0f : exp(x); }

__kernel void sqz_linear_attention(TENSOR(const float, q), TENSOR(const float, k), TENSOR(const float, v),
                                   TENSOR(const int, key_valid), TENSOR(const int, seq_off), TENSOR(float, ctx),
                                   int sequences, int heads, int head_dim)
{
    const int g = get_global_id(0), h = get_global_id(1);
    const int j = g % head_dim, s = g / head_dim;
    if (s >= sequences || h >= heads)
        return;
    const int o = AT(seq_off)[s], len = AT(seq_off)[s + 1] - o, width = heads * head_dim, col = h * head_dim;
    float kv[SQZ_MAX_HEAD_DIM], z[SQZ_MAX_HEAD_DIM];
    for (int i = 0; i < head_dim; i++)
        kv[i] = z[i] = 0.0f;
    for (int b = 0; b < len; b++) {
        if (!AT(key_valid)[o + b])
            continue;
        __global const float *key = AT(k) + (size_t)(o + b) * width + col;
        const float value = AT(v)[(size_t)(o + b) * width + col + j];
        for (int i = 0; i < head_dim; i++) {
            const float f = sqz_elu_plus_one(key[i]);
            z[i] += f;
            kv[i] = fma(f, value, kv[i]);
        }
    }
    for (int a = 0; a < len; a++) {
        __global const float *query = AT(q) + (size_t)(o + a) * width + col;
        float num = 0.0f, den = 0.0f;
        for (int i = 0; i < head_dim; i++) {
            const float f = sqz_elu_plus_one(query[i]);
            num = fma(f, kv[i], num);
            den = fma(f, z[i], den);
        }
        AT(ctx)[(size_t)(o + a) * width + col + j] = den > 0.0f ? num / den : 0.0f;
    }
}
#define SQZ_KEY_BLOCK 8

/* Head size 64 (every BERT-base-shaped model): q, k, v rows as 8 float8 vectors, keys in
 * blocks of 8 so the running sum and accumulator are rescaled once per block. */
__kernel void sqz_attention_d64(TENSOR(const float, q), TENSOR(const float, k), TENSOR(const float, v),
                                TENSOR(const int, key_valid), TENSOR(const int, seq_off),
                                TENSOR(const int, score_off), TENSOR(float, ctx), int tokens,
                                int sequences, int heads, int head_dim, float scale)
{
    const int t = get_global_id(0), h = get_global_id(1);
    if (t >= tokens || h >= heads)
        return;
    const int s = sqz_sequence_of(AT(seq_off), sequences, t);
    const int o = AT(seq_off)[s], end = AT(seq_off)[s + 1];
    const int width = heads * 64;
    __global const float *qr = AT(q) + (size_t)t * width + h * 64;
    float8 qv[8], acc[8];
    for (int j = 0; j < 8; j++) {
        qv[j] = vload8(j, qr) * scale;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, sum = 0.0f;
    for (int b0 = o; b0 < end; b0 += SQZ_KEY_BLOCK) {
        const int n = min(SQZ_KEY_BLOCK, end - b0);
        float score[SQZ_KEY_BLOCK];
        float block_max = -INFINITY;
        for (int j = 0; j < n; j++) {
            __global const float *kr = AT(k) + (size_t)(b0 + j) * width + h * 64;
            float8 d = qv[0] * vload8(0, kr);
            for (int c = 1; c < 8; c++)
                d = fma(qv[c], vload8(c, kr), d);
            const float4 d4 = d.lo + d.hi;
            score[j] = AT(key_valid)[b0 + j] ? (d4.x + d4.y) + (d4.z + d4.w) : -INFINITY;
            block_max = fmax(block_max, score[j]);
        }
        if (block_max == -INFINITY)
            continue; /* all keys of the block are padding */
        const float m_new = fmax(m, block_max), rescale = exp(m - m_new);
        sum *= rescale;
        for (int c = 0; c < 8; c++)
            acc[c] *= rescale;
        for (int j = 0; j < n; j++) {
            const float p = exp(score[j] - m_new); /* 0 for padded keys */
            sum += p;
            __global const float *vr = AT(v) + (size_t)(b0 + j) * width + h * 64;
            for (int c = 0; c < 8; c++)
                acc[c] = fma((float8)p, vload8(c, vr), acc[c]);
        }
        m = m_new;
    }
    __global float *out = AT(ctx) + (size_t)t * width + h * 64;
    const float inv = 1.0f / sum;
    for (int c = 0; c < 8; c++)
        vstore8(acc[c] * inv, c, out);
}

__kernel void sqz_attention(TENSOR(const float, q), TENSOR(const float, k), TENSOR(const float, v),
                            TENSOR(const int, key_valid), TENSOR(const int, seq_off),
                            TENSOR(const int, score_off), TENSOR(float, ctx), int tokens, int sequences, int heads,
                            int head_dim, float scale)
{
    const int t = get_global_id(0), h = get_global_id(1);
    if (t >= tokens || h >= heads)
        return;
    const int s = sqz_sequence_of(AT(seq_off), sequences, t);
    const int o = AT(seq_off)[s], end = AT(seq_off)[s + 1];
    const int width = heads * head_dim;
    __global const float *qr = AT(q) + (size_t)t * width + h * head_dim;
    float acc[SQZ_MAX_HEAD_DIM];
    for (int i = 0; i < head_dim; i++)
        acc[i] = 0.0f;
    float m = -INFINITY, sum = 0.0f;
    for (int b = o; b < end; b++) {
        if (!AT(key_valid)[b])
            continue;
        __global const float *kr = AT(k) + (size_t)b * width + h * head_dim;
        float score = 0.0f;
        for (int i = 0; i < head_dim; i++)
            score = fma(qr[i], kr[i], score);
        score *= scale;
        const float m_new = fmax(m, score);
        const float rescale = exp(m - m_new), p = exp(score - m_new);
        sum = sum * rescale + p;
        __global const float *vr = AT(v) + (size_t)b * width + h * head_dim;
        for (int i = 0; i < head_dim; i++)
            acc[i] = fma(p, vr[i], acc[i] * rescale);
        m = m_new;
    }
    __global float *out = AT(ctx) + (size_t)t * width + h * head_dim;
    const float inv = 1.0f / sum;
    for (int i = 0; i < head_dim; i++)
        out[i] = acc[i] * inv;
}
