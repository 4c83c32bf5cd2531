/* The scalar reference checked against independent formulations: a grouped linear against
 * a dense one with a block-diagonal weight, packed attention against per-sequence padded
 * attention, GELU against published values, and the invariants of softmax and LayerNorm. */
#include "tests/test_util.h"

#include <float.h>
#include <math.h>

#include "cpu_ref/cpu_ref_ops.h"

static float *random_floats(int64_t n, uint64_t *state)
{
    float *x = malloc((size_t)n * sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < n; i++)
        x[i] = test_uniform(state);
    return x;
}

static void grouped_linear_matches_block_diagonal_dense(void **unused)
{
    /* odd sizes, one row, and the SqueezeBERT shapes scaled down */
    const struct { int64_t rows, cin, cout; int groups; } cases[] = {
        {1, 4, 4, 1}, {7, 12, 18, 3}, {5, 60, 90, 3}, {3, 90, 60, 5}, {9, 64, 256, 4},
        {2, 30, 30, 30}, {11, 8, 2, 2},
    };
    uint64_t state = 42;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t R = cases[c].rows, CI = cases[c].cin, CO = cases[c].cout;
        const int G = cases[c].groups;
        const int64_t cin_g = CI / G, cout_g = CO / G;
        float *x = random_floats(R * CI, &state), *w = random_floats(CO * cin_g, &state);
        float *bias = random_floats(CO, &state);
        float *dense = calloc((size_t)(CO * CI), sizeof *dense);
        float *got = malloc((size_t)(R * CO) * sizeof *got);
        assert_non_null(dense);
        assert_non_null(got);
        for (int64_t o = 0; o < CO; o++) /* expand to the block-diagonal dense matrix */
            for (int64_t j = 0; j < cin_g; j++)
                dense[o * CI + (o / cout_g) * cin_g + j] = w[o * cin_g + j];
        sqz_ref_linear(x, R, CI, w, bias, CO, G, got);
        for (int64_t r = 0; r < R; r++)
            for (int64_t o = 0; o < CO; o++) {
                long double acc = bias[o];
                for (int64_t i = 0; i < CI; i++)
                    acc += (long double)dense[o * CI + i] * x[r * CI + i];
                assert_float_equal(got[r * CO + o], (double)acc, 1e-6 * (1 + fabsl(acc)));
            }
        free(x), free(w), free(bias), free(dense), free(got);
    }
}

static void gelu_is_the_exact_erf_form(void **unused)
{
    /* x * Phi(x) with Phi the standard normal CDF, values from tables of Phi */
    const double xs[] = {-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0};
    const double phi[] = {0.0013498980316301, 0.15865525393145707, 0.3085375387259869, 0.5,
                          0.6914624612740131, 0.8413447460685429, 0.9772498680518208,
                          0.9986501019683699};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        float x = (float)xs[i], y;
        sqz_ref_gelu(&x, 1, &y);
        assert_float_equal(y, xs[i] * phi[i], 2e-7);
    }
    /* the tanh approximation differs measurably at x = 1.5: the reference must not be it */
    float x = 1.5f, y;
    sqz_ref_gelu(&x, 1, &y);
    double tanh_form = 0.5 * 1.5 * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (1.5 + 0.044715 * 1.5 * 1.5 * 1.5)));
    assert_true(fabs(y - tanh_form) > 1e-4);
}

static void layernorm_normalises_each_row(void **unused)
{
    uint64_t state = 7;
    const int64_t R = 5, C = 37;
    float *x = random_floats(R * C, &state);
    for (int64_t i = 0; i < R * C; i++)
        x[i] = 3.0f + 10.0f * x[i]; /* offset and scale must not matter */
    float *gamma = malloc(C * sizeof *gamma), *beta = malloc(C * sizeof *beta);
    float *y = malloc((size_t)(R * C) * sizeof *y);
    for (int64_t c = 0; c < C; c++)
        gamma[c] = 1.0f, beta[c] = 0.0f;
    sqz_ref_layernorm(x, R, C, gamma, beta, 1e-12, y);
    for (int64_t r = 0; r < R; r++) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < C; c++)
            mean += y[r * C + c];
        mean /= C;
        for (int64_t c = 0; c < C; c++)
            var += (y[r * C + c] - mean) * (y[r * C + c] - mean);
        var /= C; /* biased, as PyTorch */
        assert_float_equal(mean, 0.0, 1e-6);
        assert_float_equal(var, 1.0, 1e-5);
    }
    /* gamma and beta apply per channel after normalisation */
    for (int64_t c = 0; c < C; c++)
        gamma[c] = 2.0f, beta[c] = (float)c;
    float *z = malloc((size_t)(R * C) * sizeof *z);
    sqz_ref_layernorm(x, R, C, gamma, beta, 1e-12, z);
    for (int64_t i = 0; i < R * C; i++)
        assert_float_equal(z[i], 2.0f * y[i] + (float)(i % C), 1e-5);
    /* a large eps shrinks the output: eps is really used */
    float *big_eps = malloc((size_t)(R * C) * sizeof *big_eps);
    for (int64_t c = 0; c < C; c++)
        gamma[c] = 1.0f, beta[c] = 0.0f;
    sqz_ref_layernorm(x, R, C, gamma, beta, 1e3, big_eps);
    assert_true(fabsf(big_eps[0]) < fabsf(y[0]));
    free(x), free(gamma), free(beta), free(y), free(z), free(big_eps);
}

/* Naive attention of one sequence of length L over padded storage, written directly from
 * the transformers formulation: scores / sqrt(d) + mask, softmax, times V. */
static void naive_attention(const float *q, const float *k, const float *v, const int32_t *valid,
                            int64_t L, int heads, int d, float *ctx)
{
    for (int h = 0; h < heads; h++)
        for (int64_t a = 0; a < L; a++) {
            double scores[64], max = -INFINITY, sum = 0;
            for (int64_t b = 0; b < L; b++) {
                double s = 0;
                for (int i = 0; i < d; i++)
                    s += (double)q[a * heads * d + h * d + i] * k[b * heads * d + h * d + i];
                scores[b] = s / sqrt((double)d) + (valid[b] ? 0.0 : -FLT_MAX);
                max = scores[b] > max ? scores[b] : max;
            }
            for (int64_t b = 0; b < L; b++)
                sum += exp(scores[b] - max);
            for (int i = 0; i < d; i++) {
                double acc = 0;
                for (int64_t b = 0; b < L; b++)
                    acc += exp(scores[b] - max) / sum * v[b * heads * d + h * d + i];
                ctx[a * heads * d + h * d + i] = (float)acc;
            }
        }
}

static void packed_attention_matches_per_sequence_attention(void **unused)
{
    const int heads = 3, d = 5, W = heads * d;
    /* many short sequences, one token, one long, with some keys masked */
    const int32_t lengths[] = {1, 4, 2, 17, 1, 9};
    const int64_t n = sizeof lengths / sizeof lengths[0];
    int32_t seq_off[7] = {0}, score_off[7] = {0};
    for (int64_t s = 0; s < n; s++) {
        seq_off[s + 1] = seq_off[s] + lengths[s];
        score_off[s + 1] = score_off[s] + lengths[s] * lengths[s];
    }
    const int64_t T = seq_off[n], SR = score_off[n];
    uint64_t state = 99;
    float *q = random_floats(T * W, &state), *k = random_floats(T * W, &state);
    float *v = random_floats(T * W, &state);
    for (int64_t i = 0; i < T * W; i++)
        q[i] *= 4.0f; /* sharper softmax */
    int32_t *valid = malloc((size_t)T * sizeof *valid);
    for (int64_t t = 0; t < T; t++)
        valid[t] = (t % 3 != 2) || t == 0;
    for (int64_t s = 0; s < n; s++)
        valid[seq_off[s]] = 1; /* every sequence keeps one valid key */
    float *scores = malloc((size_t)(SR * heads) * sizeof *scores);
    float *masked = malloc((size_t)(SR * heads) * sizeof *masked);
    float *probs = malloc((size_t)(SR * heads) * sizeof *probs);
    float *ctx = malloc((size_t)(T * W) * sizeof *ctx), *want = malloc((size_t)(T * W) * sizeof *want);
    sqz_ref_sequences seqs = {seq_off, score_off, n};
    assert_true(sqz_ref_sequences_valid(&seqs, T, SR));
    sqz_ref_attn_scores(q, k, heads, d, (float)(1.0 / sqrt(d)), &seqs, scores);
    sqz_ref_attn_key_mask(scores, valid, heads, &seqs, masked);
    sqz_ref_attn_softmax(masked, heads, &seqs, probs);
    sqz_ref_attn_context(probs, v, heads, d, &seqs, ctx);
    for (int64_t s = 0; s < n; s++) {
        const int64_t o = seq_off[s];
        naive_attention(q + o * W, k + o * W, v + o * W, valid + o, lengths[s], heads, d, want + o * W);
        /* probabilities sum to one and masked keys get none */
        for (int64_t row = 0; row < heads * lengths[s]; row++) {
            double sum = 0;
            for (int64_t b = 0; b < lengths[s]; b++) {
                float p = probs[(int64_t)score_off[s] * heads + row * lengths[s] + b];
                sum += p;
                if (!valid[o + b])
                    assert_true(p == 0.0f);
            }
            assert_float_equal(sum, 1.0, 1e-6);
        }
    }
    for (int64_t i = 0; i < T * W; i++)
        assert_float_equal(ctx[i], want[i], 1e-5);
    /* inconsistent offsets are detected */
    int32_t bad[7];
    memcpy(bad, seq_off, sizeof bad);
    bad[2] = bad[1]; /* an empty sequence */
    sqz_ref_sequences bad_seqs = {bad, score_off, n};
    assert_false(sqz_ref_sequences_valid(&bad_seqs, T, SR));
    free(q), free(k), free(v), free(valid), free(scores), free(masked), free(probs), free(ctx),
        free(want);
}

static void gather_rejects_out_of_range_indices(void **unused)
{
    const float table[6] = {1, 2, 3, 4, 5, 6}; /* 3 rows x 2 */
    float out[4];
    const int32_t ok[2] = {2, 0}, bad[2] = {1, 3}, negative[1] = {-1};
    assert_true(sqz_ref_gather_rows(ok, 2, table, 3, 2, out));
    assert_true(out[0] == 5 && out[1] == 6 && out[2] == 1 && out[3] == 2);
    assert_false(sqz_ref_gather_rows(bad, 2, table, 3, 2, out));
    assert_false(sqz_ref_gather_rows(negative, 1, table, 3, 2, out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(grouped_linear_matches_block_diagonal_dense),
        cmocka_unit_test(gelu_is_the_exact_erf_form),
        cmocka_unit_test(layernorm_normalises_each_row),
        cmocka_unit_test(packed_attention_matches_per_sequence_attention),
        cmocka_unit_test(gather_rejects_out_of_range_indices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
