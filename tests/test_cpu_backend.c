/* The cpu backend's own pieces, apart from what test_backend_ops and sqz validate check of
 * its arithmetic: the thread team runs every task exactly once, on a valid worker index, over
 * many runs of any size (fewer tasks than threads included); the device string is checked. */
#include "tests/test_util.h"

#include <stdatomic.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_task_once),
        cmocka_unit_test(device_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
