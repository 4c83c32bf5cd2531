/* The cpu backend's own pieces, apart from what test_backend_ops and sqz validate check of
 * its arithmetic: the thread team runs every task exactly once, on a valid worker index, over
 * many runs of any size (fewer tasks than threads included); the device string is checked;
 * the row kernels of every x86 level this CPU runs (the backend uses only the best one, so the
 * others are otherwise untested here) against double-precision references. */
#include "tests/test_util.h"

#include <stdatomic.h>

#include <float.h>
#include <math.h>

#include "cpu/cpu_kernels.h"
#include "cpu/cpu_pool.h"
#include "runtime/backend.h"

#define MAX_TASKS 5000

typedef struct tally {
    atomic_int count[MAX_TASKS];
    atomic_int bad_worker;
    int threads;
} tally;

static void count_task(void *arg, int64_t task, int worker)
{
    tally *t = arg;
    atomic_fetch_add(&t->count[task], 1);
    if (worker < 0 || worker >= t->threads)
        atomic_store(&t->bad_worker, 1);
}

static void every_task_once(void **unused)
{
    const int team_sizes[] = {1, 2, 3, 8};
    uint64_t rng = 7;
    for (size_t k = 0; k < sizeof team_sizes / sizeof team_sizes[0]; k++) {
        cpu_pool *pool = NULL;
        assert_sqz_ok(sqz_cpu_pool_create(team_sizes[k], &pool));
        tally *t = calloc(1, sizeof *t);
        t->threads = team_sizes[k];
        for (int run = 0; run < 300; run++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            const int64_t tasks = run % 3 == 0 ? run % 5 : (int64_t)((rng >> 33) % MAX_TASKS);
            for (int64_t i = 0; i < tasks; i++)
                atomic_store(&t->count[i], 0);
            sqz_cpu_pool_run(pool, count_task, t, tasks);
            for (int64_t i = 0; i < tasks; i++)
                if (atomic_load(&t->count[i]) != 1)
                    fail_msg("team of %d, run %d: task %lld of %lld ran %d times", team_sizes[k], run,
                             (long long)i, (long long)tasks, atomic_load(&t->count[i]));
        }
        assert_int_equal(atomic_load(&t->bad_worker), 0);
        free(t);
        sqz_cpu_pool_destroy(pool);
    }
}

static void device_strings(void **unused)
{
    const sqz_backend_ops *cpu = sqz_backend_find("cpu");
    assert_non_null(cpu);
    void *ctx = NULL;
    const char *good[] = {NULL, "", "0", "default", "threads=1", "threads=3"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_sqz_ok(cpu->create(&ctx, good[i], NULL));
        cpu->destroy(ctx);
    }
    const char *bad[] = {"threads=0", "threads=", "threads=2x", "threads=100000", "gpu", "1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *fragments[] = {"cpu: device", bad[i], "threads=N"};
        assert_failure_mentions(cpu->create(&ctx, bad[i], NULL), SQZ_ERR_INVALID_ARGUMENT, bad[i],
                                fragments, 3);
    }
    /* settings: none of its own; other backends' are not its business */
    assert_sqz_ok(cpu->create(&ctx, NULL, "cuda.graphs=0;opencl.cache_dir=/tmp"));
    cpu->destroy(ctx);
    const char *fragments[] = {"cpu.threads=2", "not one cpu takes"};
    assert_failure_mentions(cpu->create(&ctx, NULL, "cpu.threads=2"), SQZ_ERR_INVALID_ARGUMENT, "setting",
                            fragments, 2);
}

static double uniform(uint64_t *rng)
{
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*rng >> 11) / 9007199254740992.0;
}

/* softmax at lengths across whole 16-lane blocks and tails, with masked scores (the lowest
 * float added, as the attention does) and rows that are all masked (uniform, as cpu_ref) */
static void check_softmax(const cpu_kernels *k)
{
    uint64_t rng = 11;
    float s[300], s_in[300];
    double ref[300];
    for (int n = 1; n <= 300; n += n < 40 ? 1 : 37) {
        for (int variant = 0; variant < 3; variant++) {
            for (int i = 0; i < n; i++) {
                s[i] = (float)((uniform(&rng) - 0.5) * (variant == 1 ? 60.0 : 8.0));
                if (variant == 2 || (variant == 1 && uniform(&rng) < 0.3))
                    s[i] += -FLT_MAX;
            }
            double max = s[0], sum = 0.0;
            for (int i = 1; i < n; i++)
                max = s[i] > max ? s[i] : max;
            memcpy(s_in, s, sizeof s);
            for (int i = 0; i < n; i++)
                sum += ref[i] = exp((double)s[i] - max);
            k->softmax(s, n);
            for (int i = 0; i < n; i++) {
                /* relative, in units of 2^-24: x - max rounded to float (|x - max| of them in the
                 * exponential), exp to a few, a float sum of n terms */
                const double bar = (8.0 + n + fabs((double)s_in[i] - max)) * 0x1p-24;
                const double want = ref[i] / sum;
                if (!(fabs(s[i] - want) <= bar * want + 1e-30))
                    fail_msg("%s softmax, n %d, variant %d, element %d: %.9g, want %.9g", k->level, n, variant, i,
                             s[i], want);
            }
        }
    }
}

static void check_rows(const cpu_kernels *k)
{
    uint64_t rng = 5;
    float x[777], y[777], g[777], b[777], out[777];
    uint16_t h[777];
    for (int n = 1; n <= 777; n += n < 40 ? 1 : 61) {
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < n; i++) {
            x[i] = (float)(uniform(&rng) * 6.0 - 2.0);
            y[i] = (float)(uniform(&rng) - 0.5);
            g[i] = (float)(uniform(&rng) + 0.5);
            b[i] = (float)(uniform(&rng) - 0.5);
            mean += x[i];
        }
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (x[i] - mean) * (x[i] - mean);
        var /= n;
        k->layernorm(x, n, g, b, 1e-12f, out);
        for (int i = 0; i < n; i++) {
            const double want = (x[i] - mean) / sqrt(var + 1e-12) * g[i] + b[i];
            if (n > 1 && !(fabs(out[i] - want) <= 1e-5 * (1.0 + fabs(want))))
                fail_msg("%s layernorm, n %d, element %d: %.9g, want %.9g", k->level, n, i, out[i], want);
        }
        k->add(x, y, n, out);
        for (int i = 0; i < n; i++)
            assert_true(out[i] == x[i] + y[i]); /* one rounding, exactly as the reference */
        k->f32_to_bf16(x, n, h);
        k->bf16_to_f32(h, n, out);
        for (int i = 0; i < n; i++) /* round to nearest: within half a bf16 unit (2^-8 relative) */
            if (!(fabs(out[i] - x[i]) <= fabs(x[i]) * 0x1p-8))
                fail_msg("%s bf16 round trip, element %d: %.9g from %.9g", k->level, i, out[i], x[i]);
    }
}

static void row_kernels_every_level(void **unused)
{
    const cpu_kernels *levels[3] = {&sqz_cpu_kernels_baseline};
    int count = 1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        levels[count++] = &sqz_cpu_kernels_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        levels[count++] = &sqz_cpu_kernels_avx512;
#endif
    for (int i = 0; i < count; i++) {
        print_message("row kernels: %s\n", levels[i]->level);
        check_softmax(levels[i]);
        check_rows(levels[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_task_once),
        cmocka_unit_test(device_strings),
        cmocka_unit_test(row_kernels_every_level),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
