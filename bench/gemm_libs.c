/* Which GEMM library for the cpu backend: OpenBLAS's sgemm against oneDNN's matmul on the
 * products of one SqueezeBERT layer (grouped 1x1 convolutions as one GEMM per group on
 * strided slices of the token-major activations) and on a square 1024^3 product, 1024 rows
 * (8 x 128 tokens), fp32, the same thread count for both. The two run in alternation, R
 * rounds, and each keeps its best round, so a machine other work shares treats them alike.
 * Not part of the build (OpenBLAS is not a dependency):
 *
 *     apt-get install libopenblas-dev libdnnl-dev
 *     cc -O2 -fopenmp bench/gemm_libs.c -o gemm_libs -ldnnl -lopenblas && ./gemm_libs 2 5
 *
 * (threads, rounds). OpenBLAS is Debian's pthreads build, told its thread count with
 * openblas_set_num_threads; oneDNN runs on OpenMP with omp_set_num_threads. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int n); /* OpenBLAS's own, not in cblas.h everywhere */

typedef struct shape {
    const char *what;
    long rows, cin, cout, groups;
} shape;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static float *filled(long n, unsigned seed)
{
    float *x = malloc((size_t)n * sizeof *x);
    for (long i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = ((float)(seed >> 9) / 8388608.0f - 0.5f) * 0.1f;
    }
    return x;
}

/* y[:, g] = x[:, g] W_g^T for every group g: one sgemm per group */
static double time_openblas(const shape *s, const float *x, const float *w, float *y)
{
    const long k = s->cin / s->groups, n = s->cout / s->groups;
    double t = now();
    for (long g = 0; g < s->groups; g++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s->rows, (int)n, (int)k, 1.0f, x + g * k,
                    (int)s->cin, w + g * n * k, (int)k, 0.0f, y + g * n, (int)s->cout);
    return now() - t;
}

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static void desc(dnnl_memory_desc_t *md, long r, long c, long rs, long cs)
{
    dnnl_dims_t dims = {r, c}, strides = {rs, cs};
    dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
}

/* the same with a oneDNN matmul primitive per group (made once, outside the timing) */
static double time_onednn(const shape *s, dnnl_primitive_t prim, const float *x, const float *w, float *y)
{
    const long k = s->cin / s->groups, n = s->cout / s->groups;
    dnnl_memory_desc_t src, wei, dst;
    desc(&src, s->rows, k, s->cin, 1);
    desc(&wei, k, n, 1, k);
    desc(&dst, s->rows, n, s->cout, 1);
    double t = now();
    for (long g = 0; g < s->groups; g++) {
        dnnl_memory_t m[3];
        dnnl_memory_create(&m[0], &src, engine, (void *)(x + g * k));
        dnnl_memory_create(&m[1], &wei, engine, (void *)(w + g * n * k));
        dnnl_memory_create(&m[2], &dst, engine, y + g * n);
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, m[0]}, {DNNL_ARG_WEIGHTS, m[1]}, {DNNL_ARG_DST, m[2]}};
        dnnl_primitive_execute(prim, stream, 3, args);
        for (int i = 0; i < 3; i++)
            dnnl_memory_destroy(m[i]);
    }
    dnnl_stream_wait(stream);
    return now() - t;
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 2, rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (threads < 1 || rounds < 1) {
        fprintf(stderr, "usage: gemm_libs [THREADS [ROUNDS]]\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    dnnl_engine_create(&engine, dnnl_cpu, 0);
    dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    const shape shapes[] = {
        {"square", 1024, 1024, 1024, 1},       {"q/k/v (4 groups)", 1024, 768, 768, 4},
        {"post-attention", 1024, 768, 768, 1}, {"intermediate (4 groups)", 1024, 768, 3072, 4},
        {"output (4 groups)", 1024, 3072, 768, 4},
    };
    printf("GFLOP/s, best of %d alternating rounds, %d threads, 1024 rows\n", rounds, threads);
    printf("%-26s %10s %10s\n", "product", "OpenBLAS", "oneDNN");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape *s = &shapes[i];
        const long k = s->cin / s->groups, n = s->cout / s->groups;
        float *x = filled(s->rows * s->cin, 1), *w = filled(s->cout * k, 2), *y = filled(s->rows * s->cout, 3);
        dnnl_memory_desc_t src, wei, dst;
        desc(&src, s->rows, k, s->cin, 1);
        desc(&wei, k, n, 1, k);
        desc(&dst, s->rows, n, s->cout, 1);
        dnnl_matmul_desc_t md;
        dnnl_primitive_desc_t pd;
        dnnl_primitive_t prim;
        dnnl_matmul_desc_init(&md, &src, &wei, NULL, &dst);
        dnnl_primitive_desc_create(&pd, &md, NULL, engine, NULL);
        dnnl_primitive_create(&prim, pd);
        dnnl_primitive_desc_destroy(pd);
        time_openblas(s, x, w, y); /* warm-up: thread start, packing buffers */
        time_onednn(s, prim, x, w, y);
        double best_blas = 1e30, best_dnnl = 1e30;
        for (int r = 0; r < rounds; r++) {
            double a = time_openblas(s, x, w, y), b = time_onednn(s, prim, x, w, y);
            best_blas = a < best_blas ? a : best_blas;
            best_dnnl = b < best_dnnl ? b : best_dnnl;
        }
        const double flops = 2.0 * s->rows * s->cin / s->groups * s->cout;
        printf("%-26s %10.1f %10.1f\n", s->what, flops / best_blas * 1e-9, flops / best_dnnl * 1e-9);
        dnnl_primitive_destroy(prim);
        free(x), free(w), free(y);
    }
    dnnl_stream_destroy(stream);
    dnnl_engine_destroy(engine);
    return 0;
}
