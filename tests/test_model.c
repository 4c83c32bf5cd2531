/* Models through the public API: deterministic random checkpoints, metadata, and the
 * properties packing must keep: a sequence's outputs do not depend on the other sequences
 * of its batch, on how much padding follows it, or on the ids at masked positions. */
#include "tests/test_util.h"

#define FIXTURES SQZ_FIXTURES_DIR "/models"

static sqz_result *run(sqz_session *s, int batch, int len, const int64_t *ids, const int64_t *mask,
                       const int64_t *types)
{
    sqz_input in = {.batch = batch, .seq_len = len, .input_ids = ids, .attention_mask = mask,
                    .token_type_ids = types};
    sqz_result *r = NULL;
    assert_sqz_ok(sqz_session_run(s, &in, &r));
    return r;
}

static void random_model_is_deterministic(void **unused)
{
    char *a = make_temp_dir(), *b = make_temp_dir(), *c = make_temp_dir();
    assert_sqz_ok(sqz_random_model_write("tiny", 7, a));
    assert_sqz_ok(sqz_random_model_write("tiny", 7, b));
    assert_sqz_ok(sqz_random_model_write("tiny", 8, c));
    char *pa = test_path(a, "model.safetensors"), *pb = test_path(b, "model.safetensors"),
         *pc = test_path(c, "model.safetensors");
    size_t na, nb, nc;
    unsigned char *da = read_whole(pa, &na), *db = read_whole(pb, &nb), *dc = read_whole(pc, &nc);
    assert_int_equal(na, nb);
    assert_memory_equal(da, db, na);
    assert_int_equal(na, nc);
    assert_true(memcmp(da, dc, na) != 0);
    free(da), free(db), free(dc), free(pa), free(pb), free(pc);
    assert_fails_with(sqz_random_model_write("huge", 1, a), SQZ_ERR_INVALID_ARGUMENT, "huge",
                      "squeezebert-uncased");
    remove_temp_dir(a), remove_temp_dir(b), remove_temp_dir(c);
}

static void full_size_random_model_has_the_published_shape(void **unused)
{
    char *dir = make_temp_dir();
    assert_sqz_ok(sqz_random_model_write("squeezebert-uncased", 1, dir));
    sqz_model *m = NULL;
    assert_sqz_ok(sqz_model_load(dir, NULL, &m));
    sqz_model_info info;
    assert_sqz_ok(sqz_model_get_info(m, &info));
    /* 51,094,272 = embeddings + 12 layers + pooler: the parameter count of the published
     * squeezebert/squeezebert-uncased checkpoint */
    assert_int_equal(info.num_parameters, 51094272);
    assert_int_equal(info.vocab_size, 30528);
    assert_int_equal(info.q_groups, 4);
    assert_int_equal(info.post_attention_groups, 1);
    assert_int_equal(info.head, SQZ_HEAD_BASE);
    /* one short sequence through all 12 layers */
    sqz_session *s = NULL;
    const sqz_session_options guarded = {.guard_bytes = 64}; /* canaries checked after every launch */
    assert_sqz_ok(sqz_session_create(m, &guarded, &s));
    const int64_t ids[6] = {101, 7592, 2088, 2003, 1037, 102};
    sqz_result *r = run(s, 1, 6, ids, NULL, NULL);
    const sqz_output *h = sqz_result_find(r, "last_hidden_state");
    const sqz_output *p = sqz_result_find(r, "pooler_output");
    assert_non_null(h);
    assert_non_null(p);
    assert_int_equal(h->shape[2], 768);
    for (int i = 0; i < 6 * 768; i++)
        assert_true(h->data[i] == h->data[i] && h->data[i] > -1e3f && h->data[i] < 1e3f);
    for (int i = 0; i < 768; i++)
        assert_true(p->data[i] >= -1.0f && p->data[i] <= 1.0f); /* tanh */
    sqz_result_free(r);
    sqz_session_free(s);
    sqz_model_free(m);
    remove_temp_dir(dir);
}

static void outputs_do_not_depend_on_batch_padding_or_masked_ids(void **unused)
{
    sqz_model *m = NULL;
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-odd/tokcls-safetensors", NULL, &m));
    const sqz_session_options guarded = {.backend = "cpu_ref", .guard_bytes = 64};
    assert_sqz_ok(sqz_session_create(m, &guarded, &s));
    sqz_model_info info;
    sqz_model_get_info(m, &info);
    const int L = 4; /* labels */
    /* three sequences of lengths 7, 3 and 5 (with position 2 masked) padded to 9 */
    const int W = 9;
    int64_t ids[3 * 9], mask[3 * 9], types[3 * 9];
    uint64_t state = 5;
    const int lens[3] = {7, 3, 5};
    for (int b = 0; b < 3; b++)
        for (int w = 0; w < W; w++) {
            ids[b * W + w] = (int64_t)((test_uniform(&state) + 1.0f) * 38.0f) % info.vocab_size;
            mask[b * W + w] = w < lens[b] && !(b == 2 && w == 2);
            types[b * W + w] = w > 1 ? 1 + (w % 2) : 0;
        }
    sqz_result *all = run(s, 3, W, ids, mask, types);
    const sqz_output *all_logits = sqz_result_find(all, "logits");
    for (int b = 0; b < 3; b++) {
        /* alone, unpadded */
        sqz_result *one = run(s, 1, lens[b], ids + b * W, mask + b * W, types + b * W);
        const sqz_output *logits = sqz_result_find(one, "logits");
        for (int w = 0; w < lens[b]; w++)
            if (mask[b * W + w])
                assert_memory_equal(&logits->data[w * L], &all_logits->data[(b * W + w) * L],
                                    L * sizeof(float));
        sqz_result_free(one);
    }
    /* a different id at the masked position changes nothing elsewhere */
    int64_t ids2[3 * 9];
    memcpy(ids2, ids, sizeof ids);
    ids2[2 * W + 2] = (ids2[2 * W + 2] + 17) % info.vocab_size;
    ids2[1 * W + 7] = (ids2[1 * W + 7] + 3) % info.vocab_size; /* padding of row 1 */
    sqz_result *changed = run(s, 3, W, ids2, mask, types);
    assert_memory_equal(sqz_result_find(changed, "logits")->data, all_logits->data,
                        3 * W * L * sizeof(float) - 0);
    /* while a real token's id does change the outputs of its sequence */
    ids2[2 * W + 1] = (ids2[2 * W + 1] + 1) % info.vocab_size;
    sqz_result *real = run(s, 3, W, ids2, mask, types);
    assert_true(memcmp(sqz_result_find(real, "logits")->data + 2 * W * L,
                       all_logits->data + 2 * W * L, W * L * sizeof(float)) != 0);
    sqz_result_free(changed);
    sqz_result_free(real);
    sqz_result_free(all);
    sqz_session_free(s);
    sqz_model_free(m);
}

static void metadata_labels_and_ignored_keys(void **unused)
{
    sqz_model *m = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/seqcls-safetensors", NULL, &m));
    assert_string_equal(sqz_model_label(m, 0), "contradiction");
    assert_string_equal(sqz_model_label(m, 2), "entailment");
    assert_null(sqz_model_label(m, 3));
    assert_null(sqz_model_label(m, -1));
    assert_int_equal(sqz_model_ignored_key_count(m), 0);
    sqz_model_free(m);

    assert_sqz_ok(sqz_model_load(FIXTURES "/bert/seqcls-bin-gamma", NULL, &m));
    sqz_model_info info;
    assert_sqz_ok(sqz_model_get_info(m, &info));
    assert_string_equal(info.model_type, "bert");
    assert_int_equal(info.q_groups, 1);
    assert_int_equal(info.output_groups, 1);
    bool extra = false, position_ids = false;
    for (size_t i = 0; i < sqz_model_ignored_key_count(m); i++) {
        extra |= strcmp(sqz_model_ignored_key(m, i), "bert.unused_extra.weight") == 0;
        position_ids |= strcmp(sqz_model_ignored_key(m, i), "bert.embeddings.position_ids") == 0;
    }
    assert_true(extra && position_ids);
    assert_int_equal(sqz_model_ignored_key_count(m), 2);
    char *dot = NULL;
    assert_sqz_ok(sqz_model_graph_dot(m, 64, 2, &dot));
    assert_non_null(strstr(dot, "digraph"));
    assert_non_null(strstr(dot, "layer2.output_norm"));
    sqz_free(dot);
    assert_fails_with(sqz_model_graph_dot(m, 2, 4, &dot), SQZ_ERR_INVALID_ARGUMENT, "sequences");
    sqz_model_free(m);

    /* the tied MLM decoder: absent from safetensors, a shared storage in .bin; both used */
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/mlm-bin", NULL, &m));
    for (size_t i = 0; i < sqz_model_ignored_key_count(m); i++)
        assert_null(strstr(sqz_model_ignored_key(m, i), "decoder"));
    sqz_model_free(m);
}

static void backends_are_listed_and_probed(void **unused)
{
    assert_string_equal(sqz_backend_name(0), "cpu_ref");
    assert_sqz_ok(sqz_backend_probe("cpu_ref"));
    size_t n = 0;
    while (sqz_backend_name(n))
        n++;
    assert_true(n >= 1);
    assert_fails_with(sqz_backend_probe("tpu"), SQZ_ERR_INVALID_ARGUMENT, "unknown backend 'tpu'");
    sqz_model *m = NULL;
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/base-safetensors", NULL, &m));
    assert_fails_with(sqz_session_create(m, &(sqz_session_options){.backend = "tpu"}, &s),
                      SQZ_ERR_INVALID_ARGUMENT, "tpu");
    assert_null(s);
    sqz_model_free(m);
}

/* The auto choice against its documented rule, derived here from the public probes and the
 * device listing: cuda, else opencl on an OpenCL GPU, else cpu, else opencl, else cpu_ref. */
static void auto_backend_follows_the_rule(void **unused)
{
    const char *picked = sqz_backend_auto();
    assert_non_null(picked);
    assert_string_equal(sqz_backend_auto(), picked);
    assert_sqz_ok(sqz_backend_probe(picked));
    assert_false(sqz_backend_is_emulated(picked));
    char *devices = NULL;
    assert_sqz_ok(sqz_devices_describe(&devices));
    bool opencl_gpu = false;
    for (char *line = strtok(devices, "\n"); line; line = strtok(NULL, "\n"))
        opencl_gpu |= strncmp(line, "opencl ", 7) == 0 && strstr(line, "[GPU]") != NULL;
    sqz_free(devices);
    const bool cuda = sqz_backend_probe("cuda") == SQZ_OK, opencl = sqz_backend_probe("opencl") == SQZ_OK;
    const bool cpu = sqz_backend_probe("cpu") == SQZ_OK;
    const char *rule = cuda                  ? "cuda"
                       : opencl && opencl_gpu ? "opencl"
                       : cpu                  ? "cpu"
                       : opencl               ? "opencl"
                                              : "cpu_ref";
    assert_string_equal(picked, rule);
}

static void status_strings_are_distinct(void **unused)
{
    for (int a = 0; a < SQZ_STATUS_COUNT; a++) {
        assert_string_not_equal(sqz_status_str((sqz_status)a), "unknown status");
        for (int b = a + 1; b < SQZ_STATUS_COUNT; b++)
            assert_string_not_equal(sqz_status_str((sqz_status)a), sqz_status_str((sqz_status)b));
    }
    assert_string_equal(sqz_status_str(SQZ_STATUS_COUNT), "unknown status");
    for (int h = 0; h < SQZ_HEAD_COUNT; h++)
        assert_string_not_equal(sqz_head_name((sqz_head)h), "unknown");
}

/* sqz_validate compares the argmax of classification outputs: one row per sequence, per
 * choice set, per real token, or per sequence for each of start and end; none for a masked
 * LM. cpu_ref against itself must agree everywhere. */
static void validate_counts_argmax_rows(void **unused)
{
    (void)unused;
    static const struct {
        const char *head;
        int64_t rows;
    } cases[] = {{"seqcls", 3}, {"qa", 6}, {"tokcls", 4 + 2 + 4}, {"mlm", 0}, {"base", 0}};
    int64_t ids[3][4] = {{101, 5, 6, 102}, {101, 7, 102, 0}, {101, 9, 10, 102}};
    int64_t mask[3][4] = {{1, 1, 1, 1}, {1, 1, 0, 0}, {1, 1, 1, 1}};
    sqz_input in = {.batch = 3, .seq_len = 4, .input_ids = &ids[0][0], .attention_mask = &mask[0][0]};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[512];
        snprintf(dir, sizeof dir, FIXTURES "/sqb-default/%s-safetensors", cases[i].head);
        sqz_model *m = NULL;
        sqz_validation *v = NULL;
        assert_sqz_ok(sqz_model_load(dir, NULL, &m));
        assert_sqz_ok(sqz_validate(m, NULL, &in, 1e-6, &v));
        int64_t mismatches = -1;
        assert_int_equal(sqz_validation_argmax(v, &mismatches), cases[i].rows);
        assert_int_equal(mismatches, 0);
        assert_int_equal(sqz_validation_first_failure(v), -1);
        sqz_validation_free(v);
        sqz_model_free(m);
    }
}

/* A run returns only the selected outputs, with the same values as when it returns all. */
static void selected_outputs_only(void **unused)
{
    (void)unused;
    sqz_model *m = NULL;
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/base-safetensors", NULL, &m));
    assert_sqz_ok(sqz_session_create(m, NULL, &s));
    int64_t ids[2][4] = {{101, 5, 6, 102}, {101, 7, 102, 0}}, mask[2][4] = {{1, 1, 1, 1}, {1, 1, 1, 0}};
    sqz_input in = {.batch = 2, .seq_len = 4, .input_ids = &ids[0][0], .attention_mask = &mask[0][0]};
    sqz_result *all = NULL, *some = NULL;
    assert_sqz_ok(sqz_session_run(s, &in, &all));
    assert_int_equal(sqz_result_count(all), 2);
    const char *pooled[] = {"pooler_output"};
    assert_sqz_ok(sqz_session_select_outputs(s, pooled, 1));
    assert_sqz_ok(sqz_session_run(s, &in, &some));
    assert_int_equal(sqz_result_count(some), 1);
    assert_null(sqz_result_find(some, "last_hidden_state"));
    const sqz_output *a = sqz_result_find(all, "pooler_output"), *b = sqz_result_find(some, "pooler_output");
    assert_non_null(b);
    assert_memory_equal(a->shape, b->shape, sizeof a->shape);
    assert_memory_equal(a->data, b->data, (size_t)(a->shape[0] * a->shape[1]) * sizeof(float));
    sqz_result_free(some);
    const char *unknown[] = {"logits"};
    assert_fails_with(sqz_session_select_outputs(s, unknown, 1), SQZ_ERR_INVALID_ARGUMENT, "'logits'",
                      "last_hidden_state, pooler_output");
    assert_sqz_ok(sqz_session_select_outputs(s, NULL, 0));
    assert_sqz_ok(sqz_session_run(s, &in, &some));
    assert_int_equal(sqz_result_count(some), 2);
    sqz_result_free(some);
    sqz_result_free(all);
    sqz_session_free(s);
    sqz_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_model_is_deterministic),
        cmocka_unit_test(full_size_random_model_has_the_published_shape),
        cmocka_unit_test(outputs_do_not_depend_on_batch_padding_or_masked_ids),
        cmocka_unit_test(metadata_labels_and_ignored_keys),
        cmocka_unit_test(backends_are_listed_and_probed),
        cmocka_unit_test(auto_backend_follows_the_rule),
        cmocka_unit_test(status_strings_are_distinct),
        cmocka_unit_test(validate_counts_argmax_rows),
        cmocka_unit_test(selected_outputs_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
