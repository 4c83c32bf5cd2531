/* The cpu backend's row kernels: the loops that are not matrix products (those are oneDNN's),
 * written as plain C that the compiler vectorises. cpu_kernels.inc is compiled once per x86
 * level (AVX-512, AVX2+FMA, baseline) and the backend takes the best table the CPU runs, so
 * the library itself still loads on any x86-64. Rows are fp32 here; bf16 activations are
 * converted at the edges (cpu_bf16_*). */
#ifndef SQZ_CPU_KERNELS_H
#define SQZ_CPU_KERNELS_H

#include <stdint.h>

typedef struct cpu_kernels {
    const char *level; /* "avx512", "avx2", "baseline" */
    /* out = LN(x) * gamma + beta over n values (biased variance); out may be x */
    void (*layernorm)(const float *x, int64_t n, const float *gamma, const float *beta, float eps,
                      float *out);
    void (*add)(const float *a, const float *b, int64_t n, float *out);
    /* in place: p = softmax(s) over n values */
    void (*softmax)(float *s, int64_t n);
    void (*bf16_to_f32)(const uint16_t *src, int64_t n, float *dst);
    /* round to nearest even; NaN stays NaN */
    void (*f32_to_bf16)(const float *src, int64_t n, uint16_t *dst);
} cpu_kernels;

extern const cpu_kernels sqz_cpu_kernels_baseline;
#if defined(__x86_64__)
extern const cpu_kernels sqz_cpu_kernels_avx2;
extern const cpu_kernels sqz_cpu_kernels_avx512;
#endif

#endif
