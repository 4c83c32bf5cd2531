/* The scalar reference: every op in plain C loops, fp32 storage, double accumulation,
 * no fusion and no cleverness, so that it can be read in one sitting and trusted. */
#ifndef SQZ_CPU_REF_OPS_H
#define SQZ_CPU_REF_OPS_H

#include <stdbool.h>
#include <stdint.h>

/* Sequence layout shared by the attention ops: sequence s holds packed tokens
 * [seq_offsets[s], seq_offsets[s+1]); its scores are a [heads][len][len] block starting
 * at element score_offsets[s] * heads (score_offsets is the prefix sum of len^2). */
typedef struct sqz_ref_sequences {
    const int32_t *seq_offsets;   /* [n + 1] */
    const int32_t *score_offsets; /* [n + 1] */
    int64_t n;
} sqz_ref_sequences;

/* out[r, :] = table[index[r], :]; false if an index is outside [0, table_rows). */
bool sqz_ref_gather_rows(const int32_t *index, int64_t rows, const float *table,
                         int64_t table_rows, int64_t cols, float *out);
void sqz_ref_add(const float *a, const float *b, int64_t count, float *out);
/* Per row: (x - mean) / sqrt(biased variance + eps) * gamma + beta. */
void sqz_ref_layernorm(const float *x, int64_t rows, int64_t cols, const float *gamma,
                       const float *beta, double eps, float *out);
/* Grouped 1x1 convolution / nn.Linear on token-major rows:
 * out[r, o] = bias[o] + sum_j w[o, j] * x[r, g*cin/groups + j], g = o / (cout/groups).
 * w is [cout][cin/groups]; bias may be NULL. */
void sqz_ref_linear(const float *x, int64_t rows, int64_t cin, const float *w,
                    const float *bias, int64_t cout, int groups, float *out);
/* Exact GELU: 0.5 x (1 + erf(x / sqrt(2))). */
void sqz_ref_gelu(const float *x, int64_t count, float *out);
void sqz_ref_tanh(const float *x, int64_t count, float *out);
/* scores[s][h][a][b] = scale * sum_i q[o+a, h*d+i] * k[o+b, h*d+i] */
void sqz_ref_attn_scores(const float *q, const float *k, int heads, int head_dim, float scale,
                         const sqz_ref_sequences *seqs, float *scores);
/* Adds the lowest float to every score whose key has key_valid == 0, as transformers
 * adds torch.finfo(float32).min for padded keys. */
void sqz_ref_attn_key_mask(const float *scores, const int32_t *key_valid, int heads,
                           const sqz_ref_sequences *seqs, float *out);
/* Max-subtracted softmax over each row of keys. */
void sqz_ref_attn_softmax(const float *scores, int heads, const sqz_ref_sequences *seqs,
                          float *out);
/* ctx[o+a, h*d+i] = sum_b p[s][h][a][b] * v[o+b, h*d+i] */
void sqz_ref_attn_context(const float *probs, const float *v, int heads, int head_dim,
                          const sqz_ref_sequences *seqs, float *ctx);
/* The linear-attention variant (docs/variants.md): with f(x) = elu(x) + 1 and b over the keys
 * of the sequence with key_valid != 0,
 * ctx[o+a, h*d+:] = sum_b (f(q_a) . f(k_b)) v_b / sum_b (f(q_a) . f(k_b)), computed as
 * f(q_a) KV / f(q_a) . Z with KV = sum_b f(k_b) v_b^T and Z = sum_b f(k_b), so its cost grows
 * with the length, not its square; zeros where a sequence has no valid key. Uses only
 * seqs->seq_offsets. False when its [head_dim]^2 scratch cannot be allocated. */
bool sqz_ref_linear_attention(const float *q, const float *k, const float *v, const int32_t *key_valid,
                              int heads, int head_dim, const sqz_ref_sequences *seqs, float *ctx);
/* Checks that offsets are consistent with `tokens` packed tokens (score_offsets too unless
 * it is NULL). */
bool sqz_ref_sequences_valid(const sqz_ref_sequences *seqs, int64_t tokens, int64_t score_rows);

#endif
