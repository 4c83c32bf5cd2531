/* The executor (runtime/executor.c) and its observers (runtime/observers.c), reached directly:
 * a watched run gives the same answer as an unwatched one, the guard observer names the node
 * that writes past its tensor, fault injection fails the chosen launch or allocation, and only
 * unwatched runs are offered to the backend for recording and replay. */
#include "tests/test_util.h"

#include <math.h>

#include "graph/plan.h"
#include "runtime/backend.h"
#include "runtime/executor.h"

#define COLS 8
#define TOKENS 5

/* x -> gelu -> tanh -> out, [TOKENS, COLS]; `guard` canary bytes per tensor. */
static sqz_plan *small_plan(size_t guard)
{
    sqz_graph g;
    sqz_graph_init(&g);
    int x = sqz_graph_add_tensor(&g, "x", SQZ_TENSOR_INPUT, SQZ_DTYPE_F32, SQZ_EXTENT_TOKENS, 0, COLS);
    sqz_op_params none = {0};
    int y = sqz_graph_add_node(&g, SQZ_OP_GELU, "first", &x, 1, none, SQZ_EXTENT_TOKENS, COLS);
    int z = sqz_graph_add_node(&g, SQZ_OP_TANH, "second", &y, 1, none, SQZ_EXTENT_TOKENS, COLS);
    assert_true(x >= 0 && y >= 0 && z >= 0);
    assert_sqz_ok(sqz_graph_add_output(&g, "out", z, 0, COLS, false, SQZ_LAYOUT_PER_TOKEN));
    sqz_bucket bucket = {TOKENS, 1, TOKENS};
    sqz_compile_options options = {.guard_bytes = guard};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &options, &plan));
    sqz_graph_release(&g);
    assert_int_equal(plan->n_launches, 2);
    return plan;
}

typedef struct bound {
    sqz_plan *plan;
    sqz_buffer *weights, *arena;
    size_t weight_offsets[1];
    sqz_binding binding;
    sqz_run_dims dims;
    float input[TOKENS * COLS];
} bound;

static void bind(sqz_executor *x, bound *b, size_t guard)
{
    memset(b, 0, sizeof *b);
    b->plan = small_plan(guard);
    assert_sqz_ok(sqz_executor_alloc(x, 64, &b->weights));
    assert_sqz_ok(sqz_executor_alloc(x, b->plan->arena_bytes, &b->arena));
    uint64_t rng = 20261130;
    for (int i = 0; i < TOKENS * COLS; i++)
        b->input[i] = 3.0f * test_uniform(&rng);
    const int input = b->plan->graph.nodes[b->plan->launches[0]].inputs[0];
    assert_sqz_ok(x->ops->upload(x->ctx, b->arena, (size_t)b->plan->offsets[input], b->input, sizeof b->input));
    b->binding = (sqz_binding){b->plan, b->weights, b->weight_offsets, b->arena};
    b->dims = (sqz_run_dims){TOKENS, 1, TOKENS, TOKENS, TOKENS};
    assert_sqz_ok(sqz_executor_prepare(x, &b->binding));
}

static void read_output(sqz_executor *x, const bound *b, float *out)
{
    if (x->ops->synchronize)
        assert_sqz_ok(x->ops->synchronize(x->ctx));
    const int t = b->plan->graph.nodes[b->plan->launches[1]].output;
    assert_sqz_ok(x->ops->download(x->ctx, b->arena, (size_t)b->plan->offsets[t], out, TOKENS * COLS * sizeof *out));
}

static void unbind(sqz_executor *x, bound *b)
{
    x->ops->buffer_free(x->ctx, b->weights);
    x->ops->buffer_free(x->ctx, b->arena);
    sqz_plan_free(b->plan);
}

/* The answer through the executor, watched or not, is tanh(gelu(x)) computed here. */
static void watched_runs_answer_the_same(void **unused)
{
    (void)unused;
    const char *backends[] = {"cpu_ref", "cpu", "opencl"};
    for (size_t k = 0; k < sizeof backends / sizeof backends[0]; k++) {
        if (sqz_backend_probe(backends[k]) != SQZ_OK)
            continue;
        for (int watched = 0; watched < 2; watched++) {
            sqz_executor x;
            assert_sqz_ok(sqz_executor_open(&x, backends[k], NULL, NULL, SQZ_PRECISION_FP32));
            sqz_guard_observer guard = {0};
            sqz_profile_observer profile;
            if (watched) {
                sqz_observer g = sqz_guard_observer_table(&guard), p = sqz_profile_observer_table(&profile);
                assert_sqz_ok(sqz_executor_observe(&x, &g));
                assert_sqz_ok(sqz_executor_observe(&x, &p));
            }
            bound b;
            bind(&x, &b, watched ? 32 : 0);
            assert_sqz_ok(sqz_executor_run(&x, &b.binding, &b.dims, true));
            float out[TOKENS * COLS];
            read_output(&x, &b, out);
            for (int i = 0; i < TOKENS * COLS; i++) {
                const double v = b.input[i], want = tanh(0.5 * v * (1.0 + erf(v / sqrt(2.0))));
                if (fabs(out[i] - want) > 1e-5)
                    fail_msg("%s (watched %d): element %d is %g, want %g", backends[k], watched, i, out[i], want);
            }
            if (watched)
                assert_int_equal(profile.launches[SQZ_OP_GELU] + profile.launches[SQZ_OP_TANH], 2);
            unbind(&x, &b);
            sqz_guard_observer_release(&guard);
            sqz_executor_close(&x);
        }
    }
}

/* cpu_ref with a defect put in on purpose: the node named "second" writes one byte past the
 * end of its output. */
static const sqz_backend_ops *real_ops;

static sqz_status launch_past_the_end(void *ctx, const sqz_binding *binding, const sqz_node *node,
                                      const sqz_run_dims *dims)
{
    sqz_status st = real_ops->launch(ctx, binding, node, dims);
    if (st == SQZ_OK && strcmp(node->name, "second") == 0) {
        const sqz_tensor_desc *d = &binding->plan->graph.tensors[node->output];
        const size_t end = (size_t)binding->plan->offsets[node->output] +
                           (size_t)sqz_tensor_rows(d, dims) * (size_t)d->cols * sizeof(float);
        const unsigned char stray = 0;
        st = real_ops->upload(ctx, binding->arena, end, &stray, 1);
    }
    return st;
}

static void guard_observer_names_the_node(void **unused)
{
    (void)unused;
    sqz_executor x;
    assert_sqz_ok(sqz_executor_open(&x, "cpu_ref", NULL, NULL, SQZ_PRECISION_FP32));
    real_ops = x.ops;
    sqz_backend_ops defective = *x.ops;
    defective.launch = launch_past_the_end;
    x.ops = &defective;
    sqz_guard_observer guard = {0};
    sqz_observer g = sqz_guard_observer_table(&guard);
    assert_sqz_ok(sqz_executor_observe(&x, &g));
    bound b;
    bind(&x, &b, 16);
    assert_fails_with(sqz_executor_run(&x, &b.binding, &b.dims, true), SQZ_ERR_INTERNAL, "guard bytes after",
                      "byte 0 past its end", "by node 'second'");
    /* without the defect the same run passes */
    x.ops = real_ops;
    assert_sqz_ok(sqz_executor_run(&x, &b.binding, &b.dims, true));
    unbind(&x, &b);
    sqz_guard_observer_release(&guard);
    sqz_executor_close(&x);
}

static void fault_observer_fails_what_it_is_told(void **unused)
{
    (void)unused;
    sqz_executor x;
    assert_sqz_ok(sqz_executor_open(&x, "cpu_ref", NULL, NULL, SQZ_PRECISION_FP32));
    sqz_fault_observer f = {0};
    assert_sqz_ok(sqz_fault_setting_parse("fault_launch", "2:3", 1, &f.launch_at, &f.launch_every));
    assert_sqz_ok(sqz_fault_setting_parse("fault_alloc", "3", 1, &f.alloc_at, &f.alloc_every));
    sqz_observer o = sqz_fault_observer_table(&f);
    assert_sqz_ok(sqz_executor_observe(&x, &o));
    bound b;
    bind(&x, &b, 0); /* allocations 1 and 2 */
    sqz_buffer *third = NULL;
    assert_fails_with(sqz_executor_alloc(&x, 8, &third), SQZ_ERR_OUT_OF_MEMORY, "allocation 3");
    assert_null(third);
    /* launch 2 (node 'second') fails, then 5 (the second of the next run: 3 after 2) */
    assert_fails_with(sqz_executor_run(&x, &b.binding, &b.dims, true), SQZ_ERR_BACKEND, "launch 2", "'second'");
    assert_sqz_ok(sqz_executor_run(&x, &b.binding, &b.dims, true)); /* launches 3, 4 */
    assert_fails_with(sqz_executor_run(&x, &b.binding, &b.dims, true), SQZ_ERR_BACKEND, "launch 5", "'first'");
    unbind(&x, &b);
    sqz_executor_close(&x);
}

static void fault_settings_are_parsed_strictly(void **unused)
{
    (void)unused;
    unsigned long at, every;
    const char *bad[] = {"x", "0", "3:", "3:x", "3@0", "3@", "-1", "3 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_fails_with(sqz_fault_setting_parse("fault_launch", bad[i], 1, &at, &every), SQZ_ERR_INVALID_ARGUMENT,
                          "fault_launch", "N, N:P, N@K or N:P@K");
    assert_sqz_ok(sqz_fault_setting_parse("fault_launch", "4:2@2", 1, &at, &every));
    assert_int_equal(at, 0); /* meant for the second session */
    assert_sqz_ok(sqz_fault_setting_parse("fault_launch", "4:2@2", 2, &at, &every));
    assert_int_equal(at, 4);
    assert_int_equal(every, 2);
    assert_sqz_ok(sqz_fault_setting_parse("fault_launch", NULL, 1, &at, &every));
    assert_int_equal(at, 0);
}

/* A backend that records runs: run_begin is offered only when nothing watches the launches. */
static int offered;

static sqz_status recording_begin(void *ctx, const sqz_binding *binding, const sqz_run_dims *dims, bool *replayed)
{
    (void)ctx, (void)binding, (void)dims;
    offered++;
    *replayed = false;
    return SQZ_OK;
}

static sqz_status recording_end(void *ctx, const sqz_binding *binding, const sqz_run_dims *dims, bool ok)
{
    (void)ctx, (void)binding, (void)dims;
    return ok ? SQZ_OK : SQZ_ERR_BACKEND;
}

static void only_unwatched_runs_are_recorded(void **unused)
{
    (void)unused;
    for (int watcher = 0; watcher < 3; watcher++) { /* none, alloc faults only, guard bytes */
        sqz_executor x;
        assert_sqz_ok(sqz_executor_open(&x, "cpu_ref", NULL, NULL, SQZ_PRECISION_FP32));
        sqz_backend_ops recording = *x.ops;
        recording.run_begin = recording_begin;
        recording.run_end = recording_end;
        x.ops = &recording;
        sqz_fault_observer f = {.alloc_at = 1000};
        sqz_guard_observer guard = {0};
        sqz_observer o = watcher == 1 ? sqz_fault_observer_table(&f) : sqz_guard_observer_table(&guard);
        if (watcher)
            assert_sqz_ok(sqz_executor_observe(&x, &o));
        bound b;
        bind(&x, &b, watcher == 2 ? 16 : 0);
        offered = 0;
        assert_sqz_ok(sqz_executor_run(&x, &b.binding, &b.dims, true));
        assert_sqz_ok(sqz_executor_run(&x, &b.binding, &b.dims, false));
        assert_int_equal(offered, watcher == 2 ? 0 : 1);
        unbind(&x, &b);
        sqz_guard_observer_release(&guard);
        sqz_executor_close(&x);
    }
}

static void open_refuses_clearly(void **unused)
{
    (void)unused;
    sqz_executor x;
    assert_fails_with(sqz_executor_open(&x, "tpu", NULL, NULL, SQZ_PRECISION_FP32), SQZ_ERR_INVALID_ARGUMENT, "tpu");
    assert_null(x.ops);
    assert_fails_with(sqz_executor_open(&x, "cpu_ref", NULL, NULL, SQZ_PRECISION_FP16), SQZ_ERR_UNSUPPORTED,
                      "cpu_ref", "fp32 only");
    assert_null(x.ops);
    assert_fails_with(sqz_executor_open(&x, "cpu_ref", NULL, "cpu_ref.speed=11", SQZ_PRECISION_FP32),
                      SQZ_ERR_INVALID_ARGUMENT, "cpu_ref.speed");
    assert_fails_with(sqz_executor_open(&x, "cpu_ref", NULL, NULL, (sqz_precision)77), SQZ_ERR_INVALID_ARGUMENT,
                      "precision 77");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(watched_runs_answer_the_same),
        cmocka_unit_test(guard_observer_names_the_node),
        cmocka_unit_test(fault_observer_fails_what_it_is_told),
        cmocka_unit_test(fault_settings_are_parsed_strictly),
        cmocka_unit_test(only_unwatched_runs_are_recorded),
        cmocka_unit_test(open_refuses_clearly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
