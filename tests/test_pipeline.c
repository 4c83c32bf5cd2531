/* The text pipeline through its API (include/squeezebert_pipeline.h), no binary: packed runs
 * against padded ones on every backend here; every task's answers against the records
 * transformers computed for the infer fixtures (tools/gen_infer_fixtures.py) and against this
 * test's own softmax over a cpu_ref padded run; per-item errors; input order; batches under
 * the budget; retry in halves under the session's fault injection (sqz_session_options.fault_launch). */
#include "tests/test_util.h"
#include "tests/test_json_lines.h"

#include <jansson.h>
#include <math.h>

#include "squeezebert_pipeline.h"

#define INFER SQZ_FIXTURES_DIR "/infer"
#define ODD SQZ_FIXTURES_DIR "/models/sqb-odd"

/* ---- packed runs ------------------------------------------------------------------------- */

/* A random batch: n sequences of 1..max_len tokens, ids and types in range. */
typedef struct random_batch {
    int n, width;
    int64_t *offsets, *ids, *types;          /* packed */
    int64_t *pad_ids, *pad_types, *pad_mask; /* [n][width] */
} random_batch;

static uint64_t next_random(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 33;
}

static random_batch make_batch(const sqz_model_info *info, int n, int max_len, uint64_t seed)
{
    random_batch b = {n, 0, calloc((size_t)n + 1, sizeof(int64_t)), NULL, NULL, NULL, NULL, NULL};
    int *lens = calloc((size_t)n, sizeof *lens);
    assert_true(b.offsets && lens);
    for (int i = 0; i < n; i++) {
        lens[i] = 1 + (int)(next_random(&seed) % (uint64_t)max_len);
        b.width = lens[i] > b.width ? lens[i] : b.width;
        b.offsets[i + 1] = b.offsets[i] + lens[i];
    }
    const size_t T = (size_t)b.offsets[n], P = (size_t)n * (size_t)b.width;
    b.ids = calloc(T, sizeof(int64_t)), b.types = calloc(T, sizeof(int64_t));
    b.pad_ids = calloc(P, sizeof(int64_t)), b.pad_types = calloc(P, sizeof(int64_t));
    b.pad_mask = calloc(P, sizeof(int64_t));
    assert_true(b.ids && b.types && b.pad_ids && b.pad_types && b.pad_mask);
    for (int i = 0; i < n; i++)
        for (int w = 0; w < lens[i]; w++) {
            const size_t t = (size_t)b.offsets[i] + (size_t)w, p = (size_t)i * (size_t)b.width + (size_t)w;
            b.ids[t] = b.pad_ids[p] = (int64_t)(next_random(&seed) % (uint64_t)info->vocab_size);
            b.types[t] = b.pad_types[p] = (int64_t)(next_random(&seed) % (uint64_t)info->type_vocab_size);
            b.pad_mask[p] = 1;
        }
    free(lens);
    return b;
}

static void free_batch(random_batch *b)
{
    free(b->offsets), free(b->ids), free(b->types), free(b->pad_ids), free(b->pad_types), free(b->pad_mask);
}

/* Runs `b` padded and packed on one session and requires the same bits at every real
 * position, zeros at padding, and the packed shapes. */
static void packed_equals_padded(sqz_session *s, const random_batch *b, const char *what)
{
    sqz_input padded = {.batch = b->n, .seq_len = b->width, .input_ids = b->pad_ids,
                        .attention_mask = b->pad_mask, .token_type_ids = b->pad_types};
    sqz_packed_input packed = {b->n, 0, b->offsets, b->ids, b->types, NULL, 0};
    sqz_result *rp = NULL, *rk = NULL;
    assert_sqz_ok(sqz_session_run(s, &padded, &rp));
    assert_sqz_ok(sqz_session_run_packed(s, &packed, &rk));
    assert_int_equal(sqz_result_count(rp), sqz_result_count(rk));
    const int64_t T = b->offsets[b->n];
    for (size_t o = 0; o < sqz_result_count(rp); o++) {
        const sqz_output *x = sqz_result_get(rp, o), *y = sqz_result_find(rk, x->name);
        assert_non_null(y);
        if (y->ndim == x->ndim - 1) { /* per token: [N][W](...) padded, [T](...) packed */
            assert_int_equal(y->shape[0], T);
            const int64_t C = x->ndim == 3 ? x->shape[2] : 1;
            assert_int_equal(y->ndim, x->ndim - 1);
            for (int i = 0; i < b->n; i++)
                for (int w = 0; w < b->width; w++) {
                    const float *pad = x->data + ((int64_t)i * b->width + w) * C;
                    const int64_t t = b->offsets[i] + w;
                    if (t < b->offsets[i + 1]) {
                        if (memcmp(pad, y->data + t * C, (size_t)C * sizeof(float)) != 0)
                            fail_msg("%s: %s sequence %d position %d differs packed and padded", what, x->name, i, w);
                    } else {
                        for (int64_t c = 0; c < C; c++)
                            assert_true(pad[c] == 0.0f);
                    }
                }
        } else { /* per sequence: the same layout */
            assert_int_equal(x->ndim, y->ndim);
            assert_memory_equal(x->shape, y->shape, sizeof x->shape);
            if (memcmp(x->data, y->data, x->bytes) != 0)
                fail_msg("%s: %s differs packed and padded", what, x->name);
        }
    }
    sqz_result_free(rp);
    sqz_result_free(rk);
}

static void test_packed_runs_equal_padded_runs(void **state)
{
    (void)state;
    char *tmp = make_temp_dir();
    assert_sqz_ok(sqz_random_model_write("tiny", 3, tmp));
    const char *const models[] = {tmp, ODD "/qa-safetensors", ODD "/mlm-safetensors"};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        sqz_model *model = NULL;
        assert_sqz_ok(sqz_model_load(models[m], NULL, &model));
        sqz_model_info info;
        sqz_model_get_info(model, &info);
        for (size_t k = 0; sqz_backend_name(k); k++) {
            const char *backend = sqz_backend_name(k);
            if (sqz_backend_probe(backend) != SQZ_OK || strcmp(backend, "cuda") == 0)
                continue; /* the real GPU has its own tests where there is one */
            const bool emulated = sqz_backend_is_emulated(backend);
            if (emulated && m > 0)
                continue; /* cuda-sim: the tiny model only (it is slow) */
            sqz_session *s = NULL;
            assert_sqz_ok(sqz_session_create(model, &(sqz_session_options){.backend = backend}, &s));
            for (int round = 0; round < (emulated ? 1 : 3); round++) {
                const int longest = round == 2 ? info.max_position_embeddings : 12;
                random_batch b = make_batch(&info, 1 + round * 3, longest, 100 + round + 7 * (uint64_t)m);
                char what[256];
                snprintf(what, sizeof what, "%s on %s, round %d", models[m] == tmp ? "tiny" : models[m], backend, round);
                packed_equals_padded(s, &b, what);
                free_batch(&b);
            }
            /* submit_packed: the same outputs as run_packed, two in flight */
            random_batch b = make_batch(&info, 3, 10, 77);
            sqz_packed_input in = {b.n, 0, b.offsets, b.ids, b.types, NULL, 0};
            sqz_ticket t1, t2;
            sqz_result *r1 = NULL, *r2 = NULL, *r3 = NULL;
            assert_sqz_ok(sqz_session_submit_packed(s, &in, &t1));
            assert_sqz_ok(sqz_session_submit_packed(s, &in, &t2));
            assert_sqz_ok(sqz_session_wait(s, t1, &r1));
            assert_sqz_ok(sqz_session_wait(s, t2, &r2));
            assert_sqz_ok(sqz_session_run_packed(s, &in, &r3));
            for (size_t o = 0; o < sqz_result_count(r3); o++) {
                assert_memory_equal(sqz_result_get(r1, o)->data, sqz_result_get(r3, o)->data, sqz_result_get(r3, o)->bytes);
                assert_memory_equal(sqz_result_get(r2, o)->data, sqz_result_get(r3, o)->data, sqz_result_get(r3, o)->bytes);
            }
            sqz_run_stats stats;
            assert_sqz_ok(sqz_session_last_stats(s, &stats));
            assert_int_equal(stats.tokens, b.offsets[b.n]);
            assert_int_equal(stats.padded_tokens, b.offsets[b.n]);
            sqz_result_free(r1), sqz_result_free(r2), sqz_result_free(r3);
            free_batch(&b);
            print_message("packed = padded: %s on %s (%s)\n", models[m] == tmp ? "tiny" : models[m], backend,
                          sqz_session_device(s));
            sqz_session_free(s);
        }
        sqz_model_free(model);
    }
    remove_temp_dir(tmp);
}

static void test_packed_input_errors(void **state)
{
    (void)state;
    sqz_model *model = NULL;
    assert_sqz_ok(sqz_model_load(ODD "/qa-safetensors", NULL, &model));
    sqz_model_info info;
    sqz_model_get_info(model, &info);
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_session_create(model, NULL, &s));
    int64_t offsets[3] = {0, 2, 5}, ids[5] = {1, 2, 3, 4, 5}, types[5] = {0, 0, 1, 1, 1};
    sqz_packed_input in = {2, 0, offsets, ids, types, NULL, 0};
    sqz_result *r = NULL;
    offsets[0] = 1;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "offsets[0] = 1");
    offsets[0] = 0, offsets[1] = 0;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "sequence 0 has 0 tokens");
    offsets[1] = 2, ids[3] = info.vocab_size;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "input_ids[3] (sequence 1, token 1)",
                      "outside the vocabulary");
    ids[3] = 4, types[4] = 7;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "token_type_ids[4] (sequence 1, token 2)");
    types[4] = 1, in.sequences = 0;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "sequences (0)");
    in.sequences = 2, in.choices = 2;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "only for multiple-choice models");
    in.choices = 0, in.offsets = NULL;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INVALID_ARGUMENT, "offsets are required");
    assert_null(r);
    in.offsets = offsets;
    assert_sqz_ok(sqz_session_run_packed(s, &in, &r)); /* still works after the failures */
    sqz_result_free(r);
    sqz_session_free(s);
    sqz_model_free(model);
}

/* A masked LM decodes only the tokens named in output_tokens: its logits rows equal those rows
 * of a run that decodes every token (cpu_ref: bit for bit; others within 1e-5 of the largest
 * logit, the GEMM may sum a smaller matrix in another order), on every backend here. */
static void test_masked_lm_decodes_named_rows(void **state)
{
    (void)state;
    sqz_model *model = NULL;
    assert_sqz_ok(sqz_model_load(ODD "/mlm-safetensors", NULL, &model));
    sqz_model_info info;
    sqz_model_get_info(model, &info);
    int64_t offsets[4] = {0, 5, 6, 13}, ids[13], named[5] = {12, 0, 6, 3, 12};
    uint64_t rng = 20261130;
    for (int i = 0; i < 13; i++)
        ids[i] = 1 + (int64_t)((test_uniform(&rng) + 1.0f) * 0.5f * (float)(info.vocab_size - 2));
    const char *backends[] = {"cpu_ref", "cpu", "opencl", "cuda-sim"};
    for (size_t k = 0; k < sizeof backends / sizeof backends[0]; k++) {
        if (sqz_backend_probe(backends[k]) != SQZ_OK)
            continue;
        const sqz_session_options o = {.backend = backends[k]};
        sqz_session *s = NULL;
        assert_sqz_ok(sqz_session_create(model, &o, &s));
        sqz_packed_input all = {3, 0, offsets, ids, NULL, NULL, 0}, some = all;
        some.output_tokens = named, some.n_output_tokens = 5;
        sqz_result *full = NULL, *part = NULL;
        assert_sqz_ok(sqz_session_run_packed(s, &all, &full));
        assert_sqz_ok(sqz_session_run_packed(s, &some, &part));
        const sqz_output *f = sqz_result_find(full, "logits"), *g = sqz_result_find(part, "logits");
        assert_non_null(f), assert_non_null(g);
        assert_int_equal(g->ndim, 2);
        assert_int_equal(g->shape[0], 5);
        assert_int_equal(g->shape[1], f->shape[1]);
        const int64_t V = f->shape[1];
        double worst = 0, scale = 0;
        for (int64_t r = 0; r < 5; r++)
            for (int64_t v = 0; v < V; v++) {
                const double want = f->data[named[r] * V + v];
                worst = fmax(worst, fabs(g->data[r * V + v] - want));
                scale = fmax(scale, fabs(want));
            }
        print_message("%-8s named rows vs every row: max |difference| %.2e (largest logit %.2f)\n", backends[k], worst,
                      scale);
        if (strcmp(backends[k], "cpu_ref") == 0)
            assert_true(worst == 0.0);
        else
            assert_true(worst <= 1e-5 * scale);
        sqz_result_free(full), sqz_result_free(part);
        /* refusals name the problem */
        named[1] = 13;
        assert_fails_with(sqz_session_run_packed(s, &some, &part), SQZ_ERR_INPUT, "output_tokens[1] = 13");
        named[1] = 0, some.n_output_tokens = 0;
        assert_fails_with(sqz_session_run_packed(s, &some, &part), SQZ_ERR_INPUT, "n_output_tokens = 0");
        assert_null(part);
        sqz_session_free(s);
    }
    sqz_model_free(model);
    /* only a masked LM decodes named rows */
    assert_sqz_ok(sqz_model_load(ODD "/tokcls-safetensors", NULL, &model));
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_session_create(model, NULL, &s));
    int64_t few[1] = {0}, one[2] = {0, 3}, tok[3] = {1, 2, 3};
    const sqz_packed_input in = {1, 0, one, tok, NULL, few, 1};
    sqz_result *r = NULL;
    assert_fails_with(sqz_session_run_packed(s, &in, &r), SQZ_ERR_INPUT, "masked LM", "SqueezeBertForTokenClassification");
    sqz_session_free(s);
    sqz_model_free(model);
}

/* ---- the fixtures' records ------------------------------------------------------------------ */

/* The text and pair of an input line (NULL when the line is not an object with the task's
 * string fields: those are the front end's errors, not the pipeline's). */
static bool line_texts(json_t *line, bool qa, sqz_text *out)
{
    json_t *a = line ? json_object_get(line, qa ? "question" : "text") : NULL;
    json_t *b = line ? json_object_get(line, qa ? "context" : "text_pair") : NULL;
    if (!json_is_string(a) || (qa && !json_is_string(b)) || (b && !json_is_null(b) && !json_is_string(b)))
        return false;
    *out = (sqz_text){json_string_value(a), json_string_length(a), json_is_string(b) ? json_string_value(b) : NULL,
                      json_is_string(b) ? json_string_length(b) : 0};
    return true;
}

static void near(double got, double want, const char *what, size_t line)
{
    if (!(fabs(got - want) <= 1e-5 * fmax(1.0, fabs(want))))
        fail_msg("line %zu: %s %.9g, transformers %.9g", line, what, got, want);
}

/* The answer against transformers' record (docs/infer.md's fields). */
static void same_as_record(const sqz_answer *a, json_t *want, size_t line)
{
    switch (a->task) {
    case SQZ_TASK_CLASSIFY: {
        assert_string_equal(a->label_name, json_string_value(json_object_get(want, "label")));
        near(a->score, json_number_value(json_object_get(want, "score")), "score", line);
        json_t *scores = json_object_get(want, "scores");
        assert_int_equal(json_object_size(scores), (size_t)a->num_labels);
        for (int i = 0; i < a->num_labels; i++)
            near(a->probabilities[i], json_number_value(json_object_get(scores, a->label_names[i])), "scores", line);
        break;
    }
    case SQZ_TASK_EMBED: {
        json_t *v = json_object_get(want, "embedding");
        assert_int_equal(json_array_size(v), (size_t)a->dimension);
        for (int c = 0; c < a->dimension; c++)
            near(a->embedding[c], json_number_value(json_array_get(v, (size_t)c)), "embedding", line);
        break;
    }
    case SQZ_TASK_TOKENS: {
        json_t *tokens = json_object_get(want, "tokens");
        assert_int_equal(json_array_size(tokens), a->n_tokens);
        for (size_t i = 0; i < a->n_tokens; i++) {
            json_t *t = json_array_get(tokens, i);
            assert_string_equal(a->tokens[i].token, json_string_value(json_object_get(t, "token")));
            assert_string_equal(a->tokens[i].label_name, json_string_value(json_object_get(t, "label")));
            assert_int_equal(a->tokens[i].start, json_integer_value(json_object_get(t, "start")));
            assert_int_equal(a->tokens[i].end, json_integer_value(json_object_get(t, "end")));
            near(a->tokens[i].score, json_number_value(json_object_get(t, "score")), "token score", line);
        }
        break;
    }
    case SQZ_TASK_QA: {
        json_t *answer = json_object_get(want, "answer");
        assert_int_equal(a->answer_len, json_string_length(answer));
        assert_memory_equal(a->answer, json_string_value(answer), a->answer_len);
        assert_int_equal(a->start, json_integer_value(json_object_get(want, "start")));
        assert_int_equal(a->end, json_integer_value(json_object_get(want, "end")));
        near(a->score, json_number_value(json_object_get(want, "score")), "qa score", line);
        break;
    }
    case SQZ_TASK_FILL_MASK: {
        json_t *masks = json_object_get(want, "masks");
        assert_int_equal(json_array_size(masks), a->n_masks);
        for (size_t m = 0; m < a->n_masks; m++) {
            json_t *top = json_array_get(masks, m);
            assert_int_equal(json_array_size(top), a->per_mask);
            for (size_t k = 0; k < a->per_mask; k++) {
                const sqz_mask_candidate *c = &a->candidates[m * a->per_mask + k];
                json_t *t = json_array_get(top, k);
                assert_int_equal(c->token_id, json_integer_value(json_object_get(t, "token_id")));
                assert_string_equal(c->token, json_string_value(json_object_get(t, "token")));
                near(c->score, json_number_value(json_object_get(t, "score")), "mask score", line);
            }
        }
        break;
    }
    default: fail_msg("unexpected task %d", (int)a->task);
    }
}

/* The fixture's lines through the pipeline on `backend`; each answer against transformers'
 * record, each error where transformers' record is an error. */
static void check_fixture(const char *dir, const char *expected, const sqz_pipeline_options *options,
                          const char *backend, size_t batch_tokens)
{
    char path[512];
    sqz_pipeline *pipe = NULL;
    sqz_pipeline_options o = *options;
    o.batch_tokens = (long)batch_tokens;
    assert_sqz_ok(sqz_pipeline_open(dir, &o, &pipe));
    sqz_pipeline_info info;
    assert_sqz_ok(sqz_pipeline_get_info(pipe, &info));
    sqz_session *s = NULL;
    const sqz_session_options session_options = {.backend = backend};
    assert_sqz_ok(sqz_session_create(sqz_pipeline_model(pipe), &session_options, &s));
    assert_sqz_ok(sqz_pipeline_use_session(pipe, s));
    snprintf(path, sizeof path, "%s/input.jsonl", dir);
    size_t n_in, n_want;
    json_t **in = read_lines(path, &n_in);
    snprintf(path, sizeof path, "%s/%s", dir, expected);
    json_t **want = read_lines(path, &n_want);
    assert_int_equal(n_in, n_want);
    sqz_pipeline_item **items = calloc(n_in, sizeof *items);
    size_t *line_of = calloc(n_in, sizeof *line_of), n = 0;
    assert_true(items && line_of);
    for (size_t i = 0; i < n_in; i++) {
        sqz_text text;
        if (!line_texts(in[i], info.task == SQZ_TASK_QA, &text))
            continue;
        assert_sqz_ok(sqz_pipeline_encode(pipe, &text, &items[n]));
        line_of[n++] = i;
    }
    assert_true(n > 10);
    size_t retried = 99;
    assert_sqz_ok(sqz_pipeline_run(pipe, s, items, n, &retried));
    assert_int_equal(retried, 0);
    size_t answered = 0, errors = 0;
    for (size_t k = 0; k < n; k++) {
        json_t *w = want[line_of[k]];
        const bool error_expected = json_object_get(w, "error") != NULL;
        const sqz_answer *a = sqz_pipeline_item_answer(items[k]);
        if (error_expected) {
            if (a || !sqz_pipeline_item_error(items[k]))
                fail_msg("%s line %zu: transformers has an error, the pipeline an answer", dir, line_of[k] + 1);
            errors++;
        } else {
            if (!a)
                fail_msg("%s line %zu: %s", dir, line_of[k] + 1, sqz_pipeline_item_error(items[k]));
            same_as_record(a, w, line_of[k] + 1);
            answered++;
        }
        sqz_pipeline_item_free(items[k]);
    }
    print_message("%s (%s) on %s: %zu answers, %zu errors as transformers has\n", dir, expected, backend, answered,
                  errors);
    assert_true(answered > 10);
    free(items), free(line_of);
    free_lines(in, n_in), free_lines(want, n_want);
    sqz_session_free(s);
    sqz_pipeline_free(pipe);
}

/* cpu_ref, and the cpu backend where it is built in; a tiny budget (one line per batch) and
 * the default (many) give the same answers. */
static void test_tasks_match_transformers(void **state)
{
    (void)state;
    const sqz_pipeline_options none = {0};
    sqz_pipeline_options mean = {0}, cls_norm = {0};
    mean.pooling[0] = SQZ_POOL_MEAN, mean.pooling_count = 1;
    cls_norm.pooling[0] = SQZ_POOL_CLS, cls_norm.pooling_count = 1, cls_norm.normalize = SQZ_NORMALIZE_ON;
    const struct {
        const char *dir, *expected;
        const sqz_pipeline_options *options;
    } cases[] = {
        {INFER "/classify", "expected.jsonl", &none},    {INFER "/classify-bert", "expected.jsonl", &none},
        {INFER "/tokens", "expected.jsonl", &none},      {INFER "/qa", "expected.jsonl", &none},
        {INFER "/fill-mask", "expected.jsonl", &none},   {INFER "/embed", "expected-pooler.jsonl", &none},
        {INFER "/embed", "expected-mean.jsonl", &mean},  {INFER "/embed", "expected-cls-normalized.jsonl", &cls_norm},
    };
    const char *backends[2] = {"cpu_ref", sqz_backend_probe("cpu") == SQZ_OK ? "cpu" : NULL};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int b = 0; b < 2 && backends[b]; b++)
            check_fixture(cases[c].dir, cases[c].expected, cases[c].options, backends[b], b ? 0 : 1);
}

/* ---- own computation on a padded cpu_ref run --------------------------------------------------- */

/* Classification on the cpu_ref padded run of the items' own tokens, softmax computed here
 * (in long double, a different path from the library's), against the pipeline on every
 * backend but the real GPU, to the precision bar of fp32. */
static void test_classify_against_padded_reference(void **state)
{
    (void)state;
    sqz_pipeline *pipe = NULL;
    assert_sqz_ok(sqz_pipeline_open(INFER "/classify", NULL, &pipe));
    const sqz_model *model = sqz_pipeline_model(pipe);
    const char *texts[] = {"a happy day", "this is not good at all", "meh", "the cat sat on the mat and slept",
                           "x", "what a wonderful, marvellous, splendid afternoon it was"};
    const size_t n = sizeof texts / sizeof texts[0];
    sqz_pipeline_item *items[6];
    size_t width = 0;
    for (size_t i = 0; i < n; i++) {
        assert_sqz_ok(sqz_pipeline_encode(pipe, &(sqz_text){texts[i], strlen(texts[i]), NULL, 0}, &items[i]));
        const size_t len = sqz_pipeline_item_tokens(items[i], NULL, NULL);
        width = len > width ? len : width;
    }
    int64_t *ids = calloc(n * width, sizeof *ids), *types = calloc(n * width, sizeof *types);
    int64_t *mask = calloc(n * width, sizeof *mask);
    assert_true(ids && types && mask);
    for (size_t i = 0; i < n; i++) {
        const int64_t *ti, *tt;
        const size_t len = sqz_pipeline_item_tokens(items[i], &ti, &tt);
        for (size_t w = 0; w < len; w++)
            ids[i * width + w] = ti[w], types[i * width + w] = tt[w], mask[i * width + w] = 1;
    }
    sqz_session *ref = NULL;
    assert_sqz_ok(sqz_session_create(model, NULL, &ref));
    sqz_input in = {.batch = (int)n, .seq_len = (int)width, .input_ids = ids, .attention_mask = mask,
                    .token_type_ids = types};
    sqz_result *r = NULL;
    assert_sqz_ok(sqz_session_run(ref, &in, &r));
    const sqz_output *logits = sqz_result_find(r, "logits");
    const int L = (int)logits->shape[1];
    for (size_t k = 0; sqz_backend_name(k); k++) {
        const char *backend = sqz_backend_name(k);
        if (sqz_backend_probe(backend) != SQZ_OK || strcmp(backend, "cuda") == 0)
            continue;
        sqz_session *s = NULL;
        assert_sqz_ok(sqz_session_create(model, &(sqz_session_options){.backend = backend}, &s));
        assert_sqz_ok(sqz_pipeline_run(pipe, s, items, n, NULL));
        for (size_t i = 0; i < n; i++) {
            const sqz_answer *a = sqz_pipeline_item_answer(items[i]);
            assert_non_null(a);
            long double m = -INFINITY, sum = 0;
            const float *row = logits->data + i * (size_t)L;
            for (int c = 0; c < L; c++)
                m = row[c] > m ? row[c] : m;
            for (int c = 0; c < L; c++)
                sum += expl((long double)row[c] - m);
            int best = 0;
            for (int c = 0; c < L; c++) {
                const double p = (double)(expl((long double)row[c] - m) / sum);
                if (!(fabs(a->probabilities[c] - p) <= 1e-4))
                    fail_msg("%s, text %zu, label %d: %.9g, reference %.9g", backend, i, c, a->probabilities[c], p);
                best = row[c] > row[best] ? c : best;
            }
            if (strcmp(backend, "cpu_ref") == 0) /* the same arithmetic: the same argmax */
                assert_int_equal(a->label, best);
            assert_string_equal(a->label_name, sqz_model_label(model, a->label));
        }
        sqz_session_free(s);
    }
    sqz_result_free(r);
    sqz_session_free(ref);
    for (size_t i = 0; i < n; i++)
        sqz_pipeline_item_free(items[i]);
    free(ids), free(types), free(mask);
    sqz_pipeline_free(pipe);
}

/* ---- errors, order, batches, retries -------------------------------------------------------- */

static void test_per_item_errors_and_order(void **state)
{
    (void)state;
    sqz_pipeline *fill = NULL, *qa = NULL;
    assert_sqz_ok(sqz_pipeline_open(INFER "/fill-mask", NULL, &fill));
    const sqz_pipeline_options short_qa = {.max_length = 6};
    assert_sqz_ok(sqz_pipeline_open(INFER "/qa", &short_qa, &qa));
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_session_create(sqz_pipeline_model(fill), NULL, &s));
    assert_sqz_ok(sqz_pipeline_use_session(fill, s));
    const char *texts[] = {"the [MASK] sat", "", "no mask here", "bad \xff byte [MASK]", "a [MASK] and a [MASK] too",
                           "[MASK]"};
    const char *errors[] = {NULL, "empty text", "no [MASK] token", "UTF-8", NULL, NULL};
    const size_t n = 6;
    sqz_pipeline_item *items[6], *alone[6];
    for (size_t i = 0; i < n; i++) {
        const sqz_text t = {texts[i], strlen(texts[i]), NULL, 0};
        assert_sqz_ok(sqz_pipeline_encode(fill, &t, &items[i]));
        assert_sqz_ok(sqz_pipeline_encode(fill, &t, &alone[i]));
    }
    assert_sqz_ok(sqz_pipeline_run(fill, s, items, n, NULL));
    for (size_t i = 0; i < n; i++) {
        if (errors[i]) {
            assert_null(sqz_pipeline_item_answer(items[i]));
            if (!strstr(sqz_pipeline_item_error(items[i]), errors[i]))
                fail_msg("item %zu: error '%s' lacks '%s'", i, sqz_pipeline_item_error(items[i]), errors[i]);
            continue;
        }
        /* the answer landed on its own item: the same as running that item alone */
        assert_sqz_ok(sqz_pipeline_run(fill, s, &alone[i], 1, NULL));
        const sqz_answer *a = sqz_pipeline_item_answer(items[i]), *b = sqz_pipeline_item_answer(alone[i]);
        assert_true(a && b);
        assert_int_equal(a->n_masks, b->n_masks);
        assert_true(a->n_masks >= 1);
        for (size_t k = 0; k < a->n_masks * a->per_mask; k++) {
            assert_int_equal(a->candidates[k].token_id, b->candidates[k].token_id);
            assert_true(a->candidates[k].score == b->candidates[k].score);
        }
    }
    for (size_t i = 0; i < n; i++)
        sqz_pipeline_item_free(items[i]), sqz_pipeline_item_free(alone[i]);
    /* qa: a question that leaves no room for the context, and a context of spaces */
    const sqz_text q1 = {"what is the meaning of all this here", 36, "a context", 9};
    const sqz_text q2 = {"why", 3, "   ", 3};
    const sqz_text q3 = {"why", 3, "", 0};
    sqz_pipeline_item *e1 = NULL, *e2 = NULL, *e3 = NULL;
    assert_sqz_ok(sqz_pipeline_encode(qa, &q1, &e1));
    assert_sqz_ok(sqz_pipeline_encode(qa, &q2, &e2));
    assert_sqz_ok(sqz_pipeline_encode(qa, &q3, &e3));
    assert_non_null(strstr(sqz_pipeline_item_error(e1), "leaves no room for the context"));
    assert_non_null(strstr(sqz_pipeline_item_error(e2), "the context has no tokens"));
    assert_non_null(strstr(sqz_pipeline_item_error(e3), "empty question or context"));
    sqz_pipeline_item_free(e1), sqz_pipeline_item_free(e2), sqz_pipeline_item_free(e3);
    /* a task the head does not answer */
    sqz_pipeline *wrong = NULL;
    const sqz_pipeline_options classify = {.task = SQZ_TASK_CLASSIFY};
    assert_fails_with(sqz_pipeline_create(sqz_pipeline_model(fill), sqz_pipeline_tokenizer(fill), &classify, &wrong),
                      SQZ_ERR_INVALID_ARGUMENT, "needs a different head");
    assert_null(wrong);
    sqz_model *mc = NULL;
    assert_sqz_ok(sqz_model_load(ODD "/mc-safetensors", NULL, &mc));
    assert_fails_with(sqz_pipeline_create(mc, sqz_pipeline_tokenizer(fill), NULL, &wrong), SQZ_ERR_UNSUPPORTED,
                      "no task for this checkpoint", "multiple");
    sqz_model_free(mc);
    sqz_session_free(s);
    sqz_pipeline_free(fill);
    sqz_pipeline_free(qa);
}

static void test_batches_respect_the_budget(void **state)
{
    (void)state;
    const sqz_pipeline_options options = {.batch_tokens = 64};
    sqz_pipeline *pipe = NULL;
    assert_sqz_ok(sqz_pipeline_open(INFER "/classify", &options, &pipe));
    size_t n_lines;
    json_t **lines = read_lines(INFER "/classify/input.jsonl", &n_lines);
    sqz_pipeline_item **items = calloc(n_lines, sizeof *items), **given = calloc(n_lines, sizeof *given);
    size_t *ends = calloc(n_lines, sizeof *ends), n = 0;
    assert_true(items && given && ends);
    for (size_t i = 0; i < n_lines; i++) {
        sqz_text t;
        if (line_texts(lines[i], false, &t)) {
            assert_sqz_ok(sqz_pipeline_encode(pipe, &t, &items[n]));
            given[n] = items[n];
            n++;
        }
    }
    size_t failed = 0;
    const size_t batches = sqz_pipeline_plan_batches(pipe, items, n, &failed, ends);
    assert_true(failed > 0 && batches > 1);
    /* the failed ones first, in the given order */
    for (size_t i = 0, j = 0; i < failed; i++, j++) {
        assert_non_null(sqz_pipeline_item_error(items[i]));
        while (j < n && given[j] != items[i])
            j++;
        assert_true(j < n); /* found after the previous one */
    }
    size_t start = failed, covered = failed;
    for (size_t b = 0; b < batches; start = ends[b++]) {
        assert_true(ends[b] > start);
        const size_t width = sqz_pipeline_item_tokens(items[ends[b] - 1], NULL, NULL);
        assert_true(ends[b] - start == 1 || (ends[b] - start) * width <= 64);
        for (size_t i = start; i + 1 < ends[b]; i++) /* ascending */
            assert_true(sqz_pipeline_item_tokens(items[i], NULL, NULL) <= width);
        covered += ends[b] - start;
    }
    assert_int_equal(covered, n);
    for (size_t i = 0; i < n; i++)
        sqz_pipeline_item_free(items[i]);
    free(items), free(given), free(ends);
    free_lines(lines, n_lines);
    sqz_pipeline_free(pipe);
}

/* Encodes `copies` rounds of the lines with a text into items; returns how many. */
static size_t encode_copies(const sqz_pipeline *pipe, json_t **lines, size_t n_lines, int copies,
                            sqz_pipeline_item **items)
{
    size_t n = 0;
    for (int c = 0; c < copies; c++)
        for (size_t i = 0; i < n_lines; i++) {
            sqz_text t;
            if (line_texts(lines[i], false, &t) && t.text_len > 0)
                assert_sqz_ok(sqz_pipeline_encode(pipe, &t, &items[n++]));
        }
    return n;
}

/* Launch faults through the session's hook: failed batches are retried in halves, every item
 * ends with an answer or the fault's message, and the answers are the fault-free ones. */
static void test_retry_in_halves(void **state)
{
    (void)state;
    const sqz_pipeline_options options = {.batch_tokens = 256};
    sqz_pipeline *pipe = NULL;
    assert_sqz_ok(sqz_pipeline_open(INFER "/classify", &options, &pipe));
    size_t n_lines;
    json_t **lines = read_lines(INFER "/classify/input.jsonl", &n_lines);
    enum { COPIES = 6 };
    sqz_pipeline_item **clean = calloc(n_lines * COPIES, sizeof *clean);
    sqz_pipeline_item **faulty = calloc(n_lines * COPIES, sizeof *faulty);
    assert_true(clean && faulty);
    const size_t n = encode_copies(pipe, lines, n_lines, COPIES, clean);
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_session_create(sqz_pipeline_model(pipe), NULL, &s));
    size_t retried = 0;
    assert_sqz_ok(sqz_pipeline_run(pipe, s, clean, n, &retried));
    assert_int_equal(retried, 0);
    sqz_session_free(s);
    const char *settings[] = {"37:53", "3:120", "1:1"};
    for (size_t f = 0; f < 3; f++) {
        const sqz_session_options faults = {.backend = "cpu_ref", .fault_launch = settings[f]};
        assert_sqz_ok(sqz_session_create(sqz_pipeline_model(pipe), &faults, &s));
        for (size_t i = 0; i < n; i++) /* fresh items (an answered item is not run again) */
            sqz_pipeline_item_free(faulty[i]);
        assert_int_equal(encode_copies(pipe, lines, n_lines, COPIES, faulty), n);
        assert_sqz_ok(sqz_pipeline_run(pipe, s, faulty, n, &retried));
        assert_true(retried > 0);
        size_t answered = 0, failed = 0;
        for (size_t i = 0; i < n; i++) {
            const sqz_answer *want = sqz_pipeline_item_answer(clean[i]), *got = sqz_pipeline_item_answer(faulty[i]);
            if (!want) { /* an encoding error stays that */
                assert_string_equal(sqz_pipeline_item_error(faulty[i]), sqz_pipeline_item_error(clean[i]));
                continue;
            }
            if (!got) {
                assert_non_null(strstr(sqz_pipeline_item_error(faulty[i]), "injected fault"));
                failed++;
                continue;
            }
            assert_memory_equal(got->probabilities, want->probabilities, (size_t)want->num_labels * sizeof(double));
            answered++;
        }
        print_message("fault_launch %s: %zu batches split, %zu answered, %zu failed alone\n", settings[f], retried,
                      answered, failed);
        if (strcmp(settings[f], "1:1") == 0)
            assert_int_equal(answered, 0); /* every launch fails: every item its error */
        else
            assert_true(answered > failed);
        sqz_session_free(s);
    }
    for (size_t i = 0; i < n; i++)
        sqz_pipeline_item_free(clean[i]), sqz_pipeline_item_free(faulty[i]);
    free(clean), free(faulty);
    free_lines(lines, n_lines);
    sqz_pipeline_free(pipe);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_input_errors),
        cmocka_unit_test(test_packed_runs_equal_padded_runs),
        cmocka_unit_test(test_masked_lm_decodes_named_rows),
        cmocka_unit_test(test_tasks_match_transformers),
        cmocka_unit_test(test_classify_against_padded_reference),
        cmocka_unit_test(test_per_item_errors_and_order),
        cmocka_unit_test(test_batches_respect_the_budget),
        cmocka_unit_test(test_retry_in_halves),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
