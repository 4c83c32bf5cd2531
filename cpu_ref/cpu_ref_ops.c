#include "cpu_ref/cpu_ref_ops.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

bool sqz_ref_gather_rows(const int32_t *index, int64_t rows, const float *table,
                         int64_t table_rows, int64_t cols, float *out)
{
    for (int64_t r = 0; r < rows; r++) {
        if (index[r] < 0 || index[r] >= table_rows)
            return false;
        for (int64_t c = 0; c < cols; c++)
            out[r * cols + c] = table[(int64_t)index[r] * cols + c];
    }
    return true;
}

void sqz_ref_add(const float *a, const float *b, int64_t count, float *out)
{
    for (int64_t i = 0; i < count; i++)
        out[i] = a[i] + b[i];
}

void sqz_ref_layernorm(const float *x, int64_t rows, int64_t cols, const float *gamma,
                       const float *beta, double eps, float *out)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * cols;
        double mean = 0.0;
        for (int64_t c = 0; c < cols; c++)
            mean += row[c];
        mean /= (double)cols;
        double var = 0.0;
        for (int64_t c = 0; c < cols; c++)
            var += (row[c] - mean) * (row[c] - mean);
        var /= (double)cols;
        double inv = 1.0 / sqrt(var + eps);
        for (int64_t c = 0; c < cols; c++)
            out[r * cols + c] = (float)((row[c] - mean) * inv * gamma[c] + beta[c]);
    }
}

void sqz_ref_linear(const float *x, int64_t rows, int64_t cin, const float *w,
                    const float *bias, int64_t cout, int groups, float *out)
{
    const int64_t cin_g = cin / groups, cout_g = cout / groups;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < cout; o++) {
            const int64_t g = o / cout_g;
            const float *xin = x + r * cin + g * cin_g;
            const float *wrow = w + o * cin_g;
            double acc = bias ? bias[o] : 0.0;
            for (int64_t j = 0; j < cin_g; j++)
                acc += (double)wrow[j] * xin[j];
            out[r * cout + o] = (float)acc;
        }
}

void sqz_ref_gelu(const float *x, int64_t count, float *out)
{
    for (int64_t i = 0; i < count; i++)
        out[i] = (float)(0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0))));
}

void sqz_ref_tanh(const float *x, int64_t count, float *out)
{
    for (int64_t i = 0; i < count; i++)
        out[i] = (float)tanh(x[i]);
}

bool sqz_ref_sequences_valid(const sqz_ref_sequences *seqs, int64_t tokens, int64_t score_rows)
{
    const int32_t *so = seqs->score_offsets;
    if (seqs->n < 0 || seqs->seq_offsets[0] != 0 || (so && so[0] != 0))
        return false;
    for (int64_t s = 0; s < seqs->n; s++) {
        int64_t len = (int64_t)seqs->seq_offsets[s + 1] - seqs->seq_offsets[s];
        if (len < 1 || (so && (int64_t)so[s + 1] - so[s] != len * len))
            return false;
    }
    return seqs->seq_offsets[seqs->n] == tokens && (!so || so[seqs->n] == score_rows);
}

void sqz_ref_attn_scores(const float *q, const float *k, int heads, int head_dim, float scale,
                         const sqz_ref_sequences *seqs, float *scores)
{
    const int64_t width = (int64_t)heads * head_dim;
    for (int64_t s = 0; s < seqs->n; s++) {
        const int64_t o = seqs->seq_offsets[s], len = seqs->seq_offsets[s + 1] - o;
        float *block = scores + (int64_t)seqs->score_offsets[s] * heads;
        for (int h = 0; h < heads; h++)
            for (int64_t a = 0; a < len; a++)
                for (int64_t b = 0; b < len; b++) {
                    double acc = 0.0;
                    for (int i = 0; i < head_dim; i++)
                        acc += (double)q[(o + a) * width + h * head_dim + i] *
                               k[(o + b) * width + h * head_dim + i];
                    block[((int64_t)h * len + a) * len + b] = (float)(acc * scale);
                }
    }
}

void sqz_ref_attn_key_mask(const float *scores, const int32_t *key_valid, int heads,
                           const sqz_ref_sequences *seqs, float *out)
{
    for (int64_t s = 0; s < seqs->n; s++) {
        const int64_t o = seqs->seq_offsets[s], len = seqs->seq_offsets[s + 1] - o;
        const int64_t base = (int64_t)seqs->score_offsets[s] * heads;
        for (int64_t row = 0; row < heads * len; row++)
            for (int64_t b = 0; b < len; b++) {
                const int64_t i = base + row * len + b;
                out[i] = key_valid[o + b] ? scores[i] : scores[i] + -FLT_MAX;
            }
    }
}

void sqz_ref_attn_softmax(const float *scores, int heads, const sqz_ref_sequences *seqs,
                          float *out)
{
    for (int64_t s = 0; s < seqs->n; s++) {
        const int64_t len = seqs->seq_offsets[s + 1] - seqs->seq_offsets[s];
        const int64_t base = (int64_t)seqs->score_offsets[s] * heads;
        for (int64_t row = 0; row < heads * len; row++) {
            const float *in = scores + base + row * len;
            float *p = out + base + row * len;
            double max = in[0];
            for (int64_t b = 1; b < len; b++)
                max = in[b] > max ? in[b] : max;
            double sum = 0.0;
            for (int64_t b = 0; b < len; b++)
                sum += exp(in[b] - max);
            for (int64_t b = 0; b < len; b++)
                p[b] = (float)(exp(in[b] - max) / sum);
        }
    }
}

void sqz_ref_attn_context(const float *probs, const float *v, int heads, int head_dim,
                          const sqz_ref_sequences *seqs, float *ctx)
{
    const int64_t width = (int64_t)heads * head_dim;
    for (int64_t s = 0; s < seqs->n; s++) {
        const int64_t o = seqs->seq_offsets[s], len = seqs->seq_offsets[s + 1] - o;
        const float *block = probs + (int64_t)seqs->score_offsets[s] * heads;
        for (int h = 0; h < heads; h++)
            for (int64_t a = 0; a < len; a++)
                for (int i = 0; i < head_dim; i++) {
                    double acc = 0.0;
                    for (int64_t b = 0; b < len; b++)
                        acc += (double)block[((int64_t)h * len + a) * len + b] *
                               v[(o + b) * width + h * head_dim + i];
                    ctx[(o + a) * width + h * head_dim + i] = (float)acc;
                }
    }
}

/* elu(x) + 1: positive everywhere, so every weight f(q) . f(k) is too */
static double feature(float x) { return x > 0.0f ? (double)x + 1.0 : exp((double)x); }

bool sqz_ref_linear_attention(const float *q, const float *k, const float *v, const int32_t *key_valid,
                              int heads, int head_dim, const sqz_ref_sequences *seqs, float *ctx)
{
    const int64_t width = (int64_t)heads * head_dim;
    const size_t d = (size_t)head_dim;
    double *kv = malloc(d * d * sizeof *kv), *z = malloc(d * sizeof *z);
    if (!kv || !z) {
        free(kv), free(z);
        return false;
    }
    for (int64_t s = 0; s < seqs->n; s++) {
        const int64_t o = seqs->seq_offsets[s], len = seqs->seq_offsets[s + 1] - o;
        for (int h = 0; h < heads; h++) {
            const int64_t col = (int64_t)h * head_dim;
            memset(kv, 0, d * d * sizeof *kv);
            memset(z, 0, d * sizeof *z);
            bool any = false;
            for (int64_t b = 0; b < len; b++) {
                if (!key_valid[o + b])
                    continue;
                any = true;
                for (size_t i = 0; i < d; i++) {
                    const double fk = feature(k[(o + b) * width + col + (int64_t)i]);
                    z[i] += fk;
                    for (size_t j = 0; j < d; j++)
                        kv[i * d + j] += fk * v[(o + b) * width + col + (int64_t)j];
                }
            }
            for (int64_t a = 0; a < len; a++) {
                float *out = ctx + (o + a) * width + col;
                double den = 0.0;
                for (size_t i = 0; i < d; i++)
                    den += feature(q[(o + a) * width + col + (int64_t)i]) * z[i];
                for (size_t j = 0; j < d; j++) {
                    double num = 0.0;
                    for (size_t i = 0; i < d; i++)
                        num += feature(q[(o + a) * width + col + (int64_t)i]) * kv[i * d + j];
                    out[j] = any ? (float)(num / den) : 0.0f;
                }
            }
        }
    }
    free(kv);
    free(z);
    return true;
}
