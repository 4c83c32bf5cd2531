/* Internals of `sqz bench` that tests/test_bench.c checks: the statistics and the
 * deterministic inputs (bench/peers.py computes the same ones). The report and its writers
 * are in cli/bench_writers.h. */
#ifndef SQZ_TOOLS_SQZ_BENCH_H
#define SQZ_TOOLS_SQZ_BENCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct bench_stats {
    size_t n;
    double p50, p90, p99, mean, min, max;
} bench_stats;

/* The p-th percentile (0..100) of n sorted values, interpolating linearly between the two
 * nearest ranks (numpy's default), so p50 of an even count is the mean of the middle two. */
double bench_percentile(const double *sorted, size_t n, double p);
/* Summarises n samples (any order; not modified). n == 0 gives all zeros. */
void bench_stats_compute(const double *samples, size_t n, bench_stats *out);

/* Deterministic inputs: a pure function of (seed, row, position), no hidden state. */
uint64_t bench_splitmix64(uint64_t x);
/* Token id at (row, pos) of a row of `len` real tokens: [CLS]=101 first, [SEP]=102 last,
 * otherwise 1000 + hash % (vocab - 1000) (ids below 1000 are special or unused in BERT's
 * vocabulary); every id is taken modulo vocab so tiny vocabularies work. */
int64_t bench_token_id(uint64_t seed, int row, int pos, int len, int vocab);
/* Length of row `row` of a mixed batch: log-normal with median BENCH_MIXED_MEDIAN tokens and
 * sigma BENCH_MIXED_SIGMA, rounded and clamped to [BENCH_MIXED_MIN, max_len]. */
int bench_mixed_length(uint64_t seed, int batch, int row, int max_len);
#define BENCH_MIXED_MEDIAN 40.0
#define BENCH_MIXED_SIGMA 0.55
#define BENCH_MIXED_MIN 3

#endif
