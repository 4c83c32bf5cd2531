/* Outputs in the caller's layout and runs in flight (issue 12), on every backend that runs
 * here (cpu_ref, cuda-sim, opencl), on fresh random inputs:
 * - layout: every head's outputs of a padded batch equal, position by position, the same
 *   sequences run alone (cpu_ref is bit-identical across batching; other backends within
 *   their bar of cpu_ref), with exact zeros at padding;
 * - fp16 outputs are the fp32 outputs rounded to nearest even, bit for bit; outputs left on
 *   the device hold the same bytes as host outputs; outputs written into the caller's memory
 *   are the same values;
 * - two runs in flight give results identical to synchronous runs, in any wait order;
 * - cuda-sim: batches of other lengths in the same replay step replay one CUDA graph and get
 *   the answers of a session without graphs, bit for bit (a graph that froze a per-run value
 *   would not);
 * - misuse is refused by name: a third run in flight, an unknown ticket, memory too small,
 *   device outputs where the backend has none; results outlive their session. */
#include "tests/test_util.h"

#include <math.h>
#include <pthread.h>

#include "runtime/backend.h"
#include "tests/test_float16.h"
#ifdef SQZ_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

#define ODD SQZ_FIXTURES_DIR "/models/sqb-odd"

/* CUDA takes the highest-numbered kernel variant that applies, without measuring: on a GPU,
 * sessions compared bit for bit must not pick different variants by their timings */
#define NO_MEASURING "cuda.measure=0"

static sqz_status open_session(const sqz_model *m, const char *backend, sqz_session **out)
{
    const sqz_session_options so = {.backend = backend, .settings = NO_MEASURING};
    return sqz_session_create(m, &so, out);
}

static const char *const heads[] = {"base-safetensors", "seqcls-safetensors", "tokcls-safetensors",
                                    "qa-safetensors", "mc-safetensors", "mlm-safetensors"};

/* The backends that can run here, cpu_ref first (cuda where a GPU is: the GPU check runs this). */
static size_t backends_here(const char **out)
{
    static const char *const all[] = {"cpu_ref", "cuda-sim", "opencl", "cuda"};
    size_t n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (sqz_backend_probe(all[i]) == SQZ_OK)
            out[n++] = all[i];
    return n;
}

static sqz_model *load_model(const char *dir, sqz_model_info *info)
{
    sqz_model *m = NULL;
    assert_sqz_ok(sqz_model_load(dir, NULL, &m));
    sqz_model_get_info(m, info);
    return m;
}

static uint64_t next(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 33;
}

/* A padded batch of `rows` sequences of width W with random ids and prefix masks (every
 * row at least 1 token long); lengths[] gets each row's real length. */
typedef struct batch {
    int batch, choices, width;
    int64_t *ids, *mask, *types;
    int *lengths;
} batch;

static batch make_batch(const sqz_model_info *info, int n, int choices, int width, uint64_t seed)
{
    batch b = {n, choices, width, NULL, NULL, NULL, NULL};
    const int rows = n * (choices ? choices : 1);
    b.ids = calloc((size_t)rows * width, sizeof *b.ids);
    b.mask = calloc((size_t)rows * width, sizeof *b.mask);
    b.types = calloc((size_t)rows * width, sizeof *b.types);
    b.lengths = calloc((size_t)rows, sizeof *b.lengths);
    assert_true(b.ids && b.mask && b.types && b.lengths);
    uint64_t state = seed;
    for (int r = 0; r < rows; r++) {
        b.lengths[r] = 1 + (int)(next(&state) % (uint64_t)width);
        for (int w = 0; w < b.lengths[r]; w++) {
            b.ids[r * width + w] = 1 + (int64_t)(next(&state) % (uint64_t)(info->vocab_size - 1));
            b.mask[r * width + w] = 1;
            b.types[r * width + w] = (int64_t)(next(&state) % (uint64_t)info->type_vocab_size);
        }
    }
    return b;
}

static void free_batch(batch *b)
{
    free(b->ids), free(b->mask), free(b->types), free(b->lengths);
}

static sqz_input input_of(const batch *b)
{
    sqz_input in = {.batch = b->batch, .choices = b->choices, .seq_len = b->width, .input_ids = b->ids,
                    .attention_mask = b->mask, .token_type_ids = b->types};
    return in;
}

static bool per_token(const sqz_output *o)
{
    return o->ndim == 3 || strcmp(o->name, "start_logits") == 0 || strcmp(o->name, "end_logits") == 0;
}

/* Values of one row of an output: per-token ones have W positions of `inner` values. */
static int64_t inner_of(const sqz_output *o)
{
    int64_t inner = 1;
    for (int d = per_token(o) ? 2 : 1; d < o->ndim; d++)
        inner *= o->shape[d];
    return inner;
}

/* Every output of `got` (a batch) against the same sequences run alone on cpu_ref: equal
 * within `bar` of the largest reference value (0: bit for bit) at real positions, exactly 0
 * at padding. Multiple choice is compared as a whole batch instead (one row is K sequences). */
static void compare_with_alone(sqz_session *ref, const batch *b, const sqz_result *got, double bar,
                               const char *what)
{
    const int rows = b->batch;
    for (int r = 0; r < rows; r++) {
        const int K = b->choices ? b->choices : 1;
        int len = 0;
        for (int k = 0; k < K; k++)
            len = b->lengths[r * K + k] > len ? b->lengths[r * K + k] : len;
        sqz_input alone = {.batch = 1, .choices = b->choices, .seq_len = len};
        int64_t *ids = calloc((size_t)K * len, sizeof *ids), *mask = calloc((size_t)K * len, sizeof *mask);
        int64_t *types = calloc((size_t)K * len, sizeof *types);
        for (int k = 0; k < K; k++)
            for (int w = 0; w < len; w++) {
                ids[k * len + w] = b->ids[(r * K + k) * b->width + w];
                mask[k * len + w] = b->mask[(r * K + k) * b->width + w];
                types[k * len + w] = b->types[(r * K + k) * b->width + w];
            }
        alone.input_ids = ids, alone.attention_mask = mask, alone.token_type_ids = types;
        sqz_result *want = NULL;
        assert_sqz_ok(sqz_session_run(ref, &alone, &want));
        for (size_t i = 0; i < sqz_result_count(want); i++) {
            const sqz_output *w = sqz_result_get(want, i), *g = sqz_result_find(got, w->name);
            assert_non_null(g);
            assert_int_equal(g->ndim, w->ndim);
            assert_int_equal(g->shape[0], b->batch);
            const int64_t inner = inner_of(w);
            double max_ref = 0, max_diff = 0;
            if (per_token(w)) {
                assert_int_equal(g->shape[1], b->width);
                for (int w2 = 0; w2 < b->width; w2++)
                    for (int64_t c = 0; c < inner; c++) {
                        const float v = g->data[((int64_t)r * b->width + w2) * inner + c];
                        if (w2 >= b->lengths[r]) {
                            if (v != 0.0f)
                                fail_msg("%s: %s[%d][%d] is %g at padding, not 0", what, w->name, r, w2, v);
                            continue;
                        }
                        const float x = w->data[(int64_t)w2 * inner + c];
                        max_ref = fmax(max_ref, fabs(x));
                        max_diff = fmax(max_diff, fabs((double)v - x));
                    }
            } else {
                for (int64_t c = 0; c < inner; c++) {
                    const float v = g->data[(int64_t)r * inner + c], x = w->data[c];
                    max_ref = fmax(max_ref, fabs(x));
                    max_diff = fmax(max_diff, fabs((double)v - x));
                }
            }
            if (bar == 0 ? max_diff != 0 : !(max_diff <= bar * max_ref))
                fail_msg("%s: %s of row %d differs from the sequence alone by %.3e (largest value %.3e, bar %g)",
                         what, w->name, r, max_diff, max_ref, bar);
        }
        sqz_result_free(want);
        free(ids), free(mask), free(types);
    }
}

/* An output's bytes on the host: its values, or its device memory (host memory on cuda-sim and
 * cpu_ref; copied back with the CUDA runtime on a GPU). Freed by the caller. */
static void *host_copy(const sqz_output *o, bool gpu)
{
    void *copy = malloc(o->bytes ? o->bytes : 1);
    assert_non_null(copy);
    if (o->values || !gpu) {
        memcpy(copy, o->values ? o->values : o->device_data, o->bytes);
        return copy;
    }
#ifdef SQZ_TEST_CUDA
    assert_int_equal(cudaMemcpy(copy, o->device_data, o->bytes, cudaMemcpyDeviceToHost), cudaSuccess);
#else
    fail_msg("a GPU output in a build without the CUDA runtime");
#endif
    return copy;
}

static void same_bytes_on(const sqz_result *a, const sqz_result *b, const char *what, bool gpu)
{
    assert_int_equal(sqz_result_count(a), sqz_result_count(b));
    for (size_t i = 0; i < sqz_result_count(a); i++) {
        const sqz_output *x = sqz_result_get(a, i), *y = sqz_result_find(b, x->name);
        assert_non_null(y);
        assert_int_equal(x->bytes, y->bytes);
        assert_memory_equal(x->shape, y->shape, sizeof x->shape);
        void *vx = host_copy(x, gpu), *vy = host_copy(y, gpu);
        if (memcmp(vx, vy, x->bytes) != 0)
            fail_msg("%s: %s differs", what, x->name);
        free(vx), free(vy);
    }
}

static void same_bytes(const sqz_result *a, const sqz_result *b, const char *what)
{
    same_bytes_on(a, b, what, false);
}

static void layouts_match_sequences_alone(void **unused)
{
    const char *backends[8];
    const size_t nb = backends_here(backends);
    for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", ODD, heads[h]);
        sqz_model_info info;
        sqz_model *m = load_model(dir, &info);
        sqz_session *ref = NULL;
        assert_sqz_ok(sqz_session_create(m, NULL, &ref));
        const bool mc = info.head == SQZ_HEAD_MULTIPLE_CHOICE;
        batch b = make_batch(&info, 5, mc ? 2 : 0, 19, 1000 + h);
        const sqz_input in = input_of(&b);
        for (size_t k = 0; k < nb; k++) {
            sqz_session *s = NULL;
            assert_sqz_ok(open_session(m, backends[k], &s));
            sqz_result *got = NULL;
            assert_sqz_ok(sqz_session_run(s, &in, &got));
            char what[256];
            snprintf(what, sizeof what, "%s on %s", heads[h], backends[k]);
            const double bar = strcmp(backends[k], "cpu_ref") == 0 ? 0 : sqz_precision_tolerance(SQZ_PRECISION_FP32);
            if (mc) { /* a row is K sequences: the whole batch against cpu_ref's */
                sqz_result *want = NULL;
                assert_sqz_ok(sqz_session_run(ref, &in, &want));
                const sqz_output *g = sqz_result_find(got, "logits"), *w = sqz_result_find(want, "logits");
                assert_int_equal(g->shape[0], b.batch);
                assert_int_equal(g->shape[1], b.choices);
                for (int i = 0; i < b.batch * b.choices; i++)
                    assert_true(fabs((double)g->data[i] - w->data[i]) <= fmax(bar, 1e-7) * fabs(w->data[i]) + 1e-6);
                sqz_result_free(want);
            } else {
                compare_with_alone(ref, &b, got, bar, what);
            }
            sqz_result_free(got);
            sqz_session_free(s);
        }
        free_batch(&b);
        sqz_session_free(ref);
        sqz_model_free(m);
    }
}

/* A mask with holes: the dropped positions come back as zeros, the kept ones as in a dense
 * run of the same kept tokens at the same positions. */
static void dropped_positions_are_zero(void **unused)
{
    const char *backends[8];
    const size_t nb = backends_here(backends);
    sqz_model_info info;
    sqz_model *m = load_model(ODD "/base-safetensors", &info);
    batch b = make_batch(&info, 3, 0, 12, 77);
    for (int r = 0; r < 3; r++)
        for (int w = 0; w < 12; w++)
            b.mask[r * 12 + w] = w == 0 || (w + r) % 3 != 0; /* position 0 kept, as the pooler reads it */
    b.mask[1 * 12 + 0] = 0; /* a masked position 0: kept as a query, returned as 0 */
    const sqz_input in = input_of(&b);
    for (size_t k = 0; k < nb; k++) {
        sqz_session *s = NULL;
        assert_sqz_ok(open_session(m, backends[k], &s));
        sqz_result *res = NULL;
        assert_sqz_ok(sqz_session_run(s, &in, &res));
        const sqz_output *h = sqz_result_find(res, "last_hidden_state");
        assert_non_null(h);
        for (int r = 0; r < 3; r++)
            for (int w = 0; w < 12; w++) {
                double norm = 0;
                for (int c = 0; c < info.hidden_size; c++)
                    norm += fabs(h->data[(r * 12 + w) * info.hidden_size + c]);
                if (b.mask[r * 12 + w] ? norm == 0 : norm != 0)
                    fail_msg("%s: position [%d][%d] (mask %lld) has norm %g", backends[k], r, w,
                             (long long)b.mask[r * 12 + w], norm);
            }
        sqz_result_free(res);
        sqz_session_free(s);
    }
    free_batch(&b);
    sqz_model_free(m);
}

/* fp16 outputs are the fp32 ones rounded; outputs on the device and in the caller's memory
 * hold the same bytes as host outputs. */
static void types_and_places(void **unused)
{
    const char *backends[8];
    const size_t nb = backends_here(backends);
    for (size_t h = 0; h < 4; h++) { /* base, seqcls, tokcls, qa: every layout but choices */
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", ODD, heads[h]);
        sqz_model_info info;
        sqz_model *m = load_model(dir, &info);
        batch b = make_batch(&info, 4, 0, 17, 300 + h);
        const sqz_input in = input_of(&b);
        for (size_t k = 0; k < nb; k++) {
            sqz_session *s = NULL;
            assert_sqz_ok(open_session(m, backends[k], &s));
            sqz_result *f32 = NULL, *f16 = NULL, *dev = NULL, *mine = NULL;
            assert_sqz_ok(sqz_session_run(s, &in, &f32));
            sqz_output_options half = {SQZ_OUTPUT_FP16, SQZ_OUTPUT_ON_HOST};
            assert_sqz_ok(sqz_session_set_output_options(s, &half));
            assert_sqz_ok(sqz_session_run(s, &in, &f16));
            for (size_t i = 0; i < sqz_result_count(f32); i++) {
                const sqz_output *x = sqz_result_get(f32, i), *y = sqz_result_find(f16, x->name);
                assert_int_equal(y->type, SQZ_OUTPUT_FP16);
                assert_null(y->data);
                assert_int_equal(y->bytes * 2, x->bytes);
                const uint16_t *bits = y->values;
                for (size_t e = 0; e < x->bytes / 4; e++)
                    if (bits[e] != test_half_bits(x->data[e]))
                        fail_msg("%s %s: fp16 %s[%zu] is 0x%04x, the fp32 value %.9g rounds to 0x%04x", backends[k],
                                 heads[h], x->name, e, bits[e], x->data[e], test_half_bits(x->data[e]));
            }
            sqz_output_options device = {SQZ_OUTPUT_FP32, SQZ_OUTPUT_ON_DEVICE};
            sqz_status st = sqz_session_set_output_options(s, &device);
            if (strcmp(backends[k], "opencl") == 0) {
                assert_fails_with(st, SQZ_ERR_UNSUPPORTED, "opencl", "cannot leave outputs on the device");
            } else {
                assert_sqz_ok(st);
                assert_sqz_ok(sqz_session_run(s, &in, &dev));
                for (size_t i = 0; i < sqz_result_count(dev); i++) {
                    assert_null(sqz_result_get(dev, i)->values);
                    assert_non_null(sqz_result_get(dev, i)->device_data);
                }
                same_bytes_on(f32, dev, "device outputs", strcmp(backends[k], "cuda") == 0);
            }
            sqz_output_options plain = {SQZ_OUTPUT_FP32, SQZ_OUTPUT_ON_HOST};
            assert_sqz_ok(sqz_session_set_output_options(s, &plain));
            size_t need = 0;
            assert_sqz_ok(sqz_session_output_bytes(s, &in, &need));
            unsigned char *memory = malloc(need + 1);
            sqz_ticket t;
            assert_fails_with(sqz_session_submit_into(s, &in, memory, need - 1, &t), SQZ_ERR_INVALID_ARGUMENT,
                              "need", "sqz_session_output_bytes");
            assert_int_equal(sqz_session_in_flight(s), 0);
            assert_sqz_ok(sqz_session_submit_into(s, &in, memory, need, &t));
            assert_sqz_ok(sqz_session_wait(s, t, &mine));
            same_bytes(f32, mine, "caller's memory");
            for (size_t i = 0; i < sqz_result_count(mine); i++) {
                const unsigned char *v = sqz_result_get(mine, i)->values;
                assert_true(v >= memory && v + sqz_result_get(mine, i)->bytes <= memory + need);
            }
            sqz_result_free(mine); /* leaves the caller's memory alone */
            memory[need] = 1;
            free(memory);
            sqz_result_free(f32), sqz_result_free(f16), sqz_result_free(dev);
            sqz_session_free(s);
        }
        free_batch(&b);
        sqz_model_free(m);
    }
}

/* Two runs in flight, waited in both orders, against runs one at a time. */
static void runs_in_flight_match_synchronous_runs(void **unused)
{
    const char *backends[8];
    const size_t nb = backends_here(backends);
    sqz_model_info info;
    sqz_model *m = load_model(ODD "/tokcls-safetensors", &info);
    enum { RUNS = 6 };
    batch b[RUNS];
    for (int i = 0; i < RUNS; i++) /* widths and sizes change, so buckets and arenas do */
        b[i] = make_batch(&info, 1 + 3 * (i % 3), 0, 6 + 3 * i, 500 + i);
    for (size_t k = 0; k < nb; k++) {
        sqz_session *s = NULL;
        assert_sqz_ok(open_session(m, backends[k], &s));
        sqz_result *sync[RUNS];
        for (int i = 0; i < RUNS; i++) {
            const sqz_input in = input_of(&b[i]);
            assert_sqz_ok(sqz_session_run(s, &in, &sync[i]));
        }
        sqz_session_free(s);
        assert_sqz_ok(open_session(m, backends[k], &s)); /* a fresh one: new arenas mid-flight */
        sqz_ticket t[RUNS];
        sqz_result *async[RUNS];
        for (int i = 0; i < RUNS; i++) {
            const sqz_input in = input_of(&b[i]);
            assert_sqz_ok(sqz_session_submit(s, &in, &t[i]));
            if (i % 2 == 1) { /* two in flight: wait the newer first, then the older */
                assert_int_equal(sqz_session_in_flight(s), 2);
                sqz_ticket extra;
                assert_fails_with(sqz_session_submit(s, &in, &extra), SQZ_ERR_INVALID_ARGUMENT, "in flight");
                assert_sqz_ok(sqz_session_wait(s, t[i], &async[i]));
                assert_sqz_ok(sqz_session_wait(s, t[i - 1], &async[i - 1]));
            }
        }
        sqz_result *none = NULL;
        assert_fails_with(sqz_session_wait(s, t[0], &none), SQZ_ERR_INVALID_ARGUMENT, "not a run in flight");
        assert_null(none);
        /* a bad input is refused at submit and leaves nothing in flight */
        b[0].ids[0] = info.vocab_size;
        sqz_input bad = input_of(&b[0]);
        sqz_ticket tb;
        assert_fails_with(sqz_session_submit(s, &bad, &tb), SQZ_ERR_INPUT, "input_ids[0][0]", "vocab");
        b[0].ids[0] = 1;
        assert_int_equal(sqz_session_in_flight(s), 0);
        double busy = 0;
        assert_sqz_ok(sqz_session_busy_seconds(s, &busy));
        assert_true(busy > 0);
        sqz_session_free(s); /* results outlive their session */
        for (int i = 0; i < RUNS; i++) {
            char what[128];
            snprintf(what, sizeof what, "%s run %d in flight", backends[k], i);
            same_bytes(sync[i], async[i], what);
            sqz_result_free(sync[i]);
            sqz_result_free(async[i]);
        }
    }
    for (int i = 0; i < RUNS; i++)
        free_batch(&b[i]);
    sqz_model_free(m);
}

static void *free_in_thread(void *result)
{
    sqz_result_free(result);
    return NULL;
}

/* Results freed by other threads while the session runs on and after it is gone: the pool is
 * shared under one lock, and blocks come back for reuse. */
static void results_freed_elsewhere(void **unused)
{
    sqz_model_info info;
    sqz_model *m = load_model(ODD "/seqcls-safetensors", &info);
    batch b = make_batch(&info, 3, 0, 10, 9);
    const sqz_input in = input_of(&b);
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_session_create(m, NULL, &s));
    sqz_result *first = NULL;
    assert_sqz_ok(sqz_session_run(s, &in, &first));
    pthread_t threads[20];
    for (int i = 0; i < 20; i++) { /* the threads free while the session runs on */
        sqz_result *r = NULL;
        assert_sqz_ok(sqz_session_run(s, &in, &r));
        same_bytes(first, r, "repeated run");
        assert_int_equal(pthread_create(&threads[i], NULL, free_in_thread, r), 0);
    }
    sqz_session_free(s);
    for (int i = 0; i < 20; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    sqz_result_free(first);
    free_batch(&b);
    sqz_model_free(m);
}

static void replay_across_lengths(const char *backend)
{
    static const char *const models[] = {"tiny", ODD "/qa-safetensors"};
    char *tmp = make_temp_dir();
    for (int mi = 0; mi < 2; mi++) {
        const char *dir = models[mi];
        if (mi == 0) {
            assert_sqz_ok(sqz_random_model_write("tiny", 5, tmp));
            dir = tmp;
        }
        sqz_model_info info;
        sqz_model *m = load_model(dir, &info);
        { /* the tiny model at fp16 (tensor-core attention), the odd fixture at fp32 */
            const int p = mi == 0;
            sqz_session_options so = {.backend = backend,
                                      .device = strcmp(backend, "cuda-sim") == 0 ? "random:3" : NULL,
                                      .precision = p ? SQZ_PRECISION_FP16 : SQZ_PRECISION_FP32,
                                      .settings = NO_MEASURING};
            sqz_session *graphs = NULL, *plain = NULL;
            assert_sqz_ok(sqz_session_create(m, &so, &graphs));
            so.settings = NO_MEASURING ";cuda.graphs=0";
            assert_sqz_ok(sqz_session_create(m, &so, &plain));
            /* one and two sequences of 17..23 tokens: one step of the 32-token bucket each */
            enum { N = 4 };
            const int lengths[N] = {20, 17, 23, 18};
            for (int batch_size = 1; batch_size <= (mi ? 2 : 1); batch_size++) { /* the tiny model costs more */
                batch b[N];
                sqz_result *want[N];
                for (int i = 0; i < N; i++) {
                    const int len = lengths[i] < info.max_position_embeddings ? lengths[i] : info.max_position_embeddings;
                    b[i] = make_batch(&info, batch_size, 0, len, 40 + i + 10 * batch_size);
                    for (int r = 0; r < batch_size; r++) /* full rows: tokens = batch x length */
                        for (int w = b[i].lengths[r]; w < len; w++) {
                            b[i].mask[r * len + w] = 1;
                            b[i].ids[r * len + w] = 1 + w;
                        }
                    const sqz_input in = input_of(&b[i]);
                    assert_sqz_ok(sqz_session_run(plain, &in, &want[i]));
                }
                /* pass 0 launches, captures and may already replay; in pass 1, after the warm-up,
                 * every run of the step replays the one graph */
                for (int pass = 0; pass < 2; pass++) {
                    unsigned long captured0 = 0, replayed0 = 0, captured = 0, replayed = 0;
                    sqz_session_graph_counts(graphs, &captured0, &replayed0);
                    for (int i = 0; i < N; i++) {
                        const sqz_input in = input_of(&b[i]);
                        sqz_result *x = NULL;
                        assert_sqz_ok(sqz_session_run(graphs, &in, &x));
                        char what[160];
                        snprintf(what, sizeof what, "%s %s batch %d length %d pass %d", mi ? "qa fixture" : "tiny",
                                 p ? "fp16" : "fp32", batch_size, b[i].width, pass);
                        same_bytes(x, want[i], what);
                        sqz_result_free(x);
                    }
                    sqz_session_graph_counts(graphs, &captured, &replayed);
                    if (pass == 0) {
                        assert_true(captured > captured0);
                    } else {
                        assert_int_equal(captured, captured0);
                        assert_int_equal(replayed - replayed0, N);
                    }
                }
                for (int i = 0; i < N; i++) {
                    sqz_result_free(want[i]);
                    free_batch(&b[i]);
                }
                unsigned long pc = 0, pr = 0;
                sqz_session_graph_counts(plain, &pc, &pr);
                assert_int_equal(pc + pr, 0);
            }
            sqz_session_free(graphs);
            sqz_session_free(plain);
        }
        sqz_model_free(m);
    }
    remove_temp_dir(tmp);
}

/* cuda-sim (and cuda on a GPU): runs of other lengths in the same replay step replay one
 * graph, and their answers are those of a session that launches every kernel
 * (the setting cuda.graphs=0), bit for bit. */
static void graphs_replay_across_lengths(void **unused)
{
    for (int gpu = 0; gpu < 2; gpu++) {
        const char *backend = gpu ? "cuda" : "cuda-sim";
        if (sqz_backend_probe(backend) == SQZ_OK)
            replay_across_lengths(backend);
    }
}
/* The host's fp16 rounding (the fallback and cpu_ref's) against the tests' own. */
static void half_conversion_rounds_to_nearest_even(void **unused)
{
    for (uint32_t h = 0; h < 65536; h++) { /* every half: exact both ways (NaNs stay NaN) */
        const float f = test_half_value((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(sqz_half_to_float((uint16_t)h)));
            assert_true((sqz_float_to_half(f) & 0x7c00) == 0x7c00 && (sqz_float_to_half(f) & 0x3ff));
            continue;
        }
        assert_int_equal(sqz_float_to_half(f), h);
        assert_true(sqz_half_to_float((uint16_t)h) == f);
    }
    uint64_t state = 42;
    for (int i = 0; i < 2000000; i++) { /* random bit patterns, and the ties between halves */
        uint32_t bits = (uint32_t)(next(&state) << 16 ^ next(&state));
        if (i % 2)
            bits = (bits & 0xffffe000u) | 0x1000u; /* exactly half way in the normal range */
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f))
            continue;
        if (sqz_float_to_half(f) != test_half_bits(f))
            fail_msg("%.9g (0x%08x) rounds to 0x%04x, expected 0x%04x", f, bits, sqz_float_to_half(f),
                     test_half_bits(f));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(half_conversion_rounds_to_nearest_even),
        cmocka_unit_test(layouts_match_sequences_alone),
        cmocka_unit_test(dropped_positions_are_zero),
        cmocka_unit_test(types_and_places),
        cmocka_unit_test(runs_in_flight_match_synchronous_runs),
        cmocka_unit_test(results_freed_elsewhere),
        cmocka_unit_test(graphs_replay_across_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
