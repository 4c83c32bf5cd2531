/* Bad input gets a clear message naming the file, tensor or field and what was expected;
 * no crash, no leak (this suite also runs under ASan/UBSan), a failing status. Each case
 * copies a good fixture to a temporary directory and breaks one thing. */
#include "tests/test_util.h"

#include "runtime/tensor_file.h"

#define FIXTURES SQZ_FIXTURES_DIR "/models"

/* A temporary checkpoint: config.json and the weights of a fixture case. */
static char *copy_case(const char *case_dir, const char *weights_name)
{
    char *dir = make_temp_dir();
    char *from = test_path(case_dir, "config.json"), *to = test_path(dir, "config.json");
    copy_file(from, to);
    free(from), free(to);
    from = test_path(case_dir, weights_name);
    to = test_path(dir, weights_name);
    copy_file(from, to);
    free(from), free(to);
    return dir;
}

static sqz_status load_with(const char *dir, const sqz_model_load_options *options)
{
    sqz_model *m = NULL;
    sqz_status st = sqz_model_load(dir, options, &m);
    if (st == SQZ_OK)
        sqz_model_free(m);
    else
        assert_null(m);
    return st;
}

static sqz_status load(const char *dir) { return load_with(dir, NULL); }

static void edit_config(const char *dir, const char *from, const char *to)
{
    char *path = test_path(dir, "config.json");
    size_t n;
    char *text = (char *)read_whole(path, &n);
    char *at = strstr(text, from);
    if (!at)
        fail_msg("config.json has no \"%s\"", from);
    size_t out_cap = n + strlen(to) + 1;
    char *out = malloc(out_cap);
    snprintf(out, out_cap, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    write_whole(path, out, strlen(out));
    free(text), free(out), free(path);
}

static void truncated_weight_files(void **unused)
{
    const char *names[] = {"pytorch_model.bin", "model.safetensors"};
    const char *cases[] = {FIXTURES "/sqb-default/base-bin", FIXTURES "/sqb-default/base-safetensors"};
    for (int k = 0; k < 2; k++) {
        char *dir = copy_case(cases[k], names[k]);
        char *path = test_path(dir, names[k]);
        size_t n;
        unsigned char *data = read_whole(path, &n);
        const size_t cuts[] = {0, 7, 100, n / 2, n - 1};
        for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
            write_whole(path, data, cuts[c]);
            assert_fails_with(load(dir), SQZ_ERR_FORMAT, names[k]);
        }
        free(data), free(path);
        remove_temp_dir(dir);
    }
}

static void corrupted_pickle(void **unused)
{
    char *dir = copy_case(FIXTURES "/sqb-default/base-bin", "pytorch_model.bin");
    char *path = test_path(dir, "pytorch_model.bin");
    size_t n;
    unsigned char *data = read_whole(path, &n);
    /* the pickle follows the local header of ".../data.pkl"; its first opcode is PROTO
     * (0x80), then the protocol number: make the opcode one no pickle reader accepts */
    unsigned char *name = NULL;
    for (size_t i = 0; i + 8 < n && !name; i++)
        if (memcmp(data + i, "data.pkl", 8) == 0)
            name = data + i;
    assert_non_null(name);
    unsigned char *pickle = memchr(name, 0x80, 200);
    assert_non_null(pickle);
    pickle[2] = 0xFF;
    write_whole(path, data, n);
    /* torch writes a CRC-32 for every entry: a flipped byte is caught before unpickling */
    assert_fails_with(load(dir), SQZ_ERR_FORMAT, "pytorch_model.bin", "data.pkl", "CRC-32");
    free(data), free(path);
    remove_temp_dir(dir);
}

static void shape_that_does_not_match_the_config(void **unused)
{
    char *dir = copy_case(FIXTURES "/sqb-default/base-safetensors", "model.safetensors");
    edit_config(dir, "\"intermediate_size\": 256", "\"intermediate_size\": 128");
    assert_fails_with(load(dir), SQZ_ERR_MODEL_MISMATCH, "model.safetensors",
                      "tensor 'encoder.layers.0.intermediate.conv1d.weight' has shape [256, 16, 1]",
                      "expected [128, 16, 1]", "intermediate_groups 4");
    remove_temp_dir(dir);
}

static void dtype_that_is_not_float(void **unused)
{
    char *dir = copy_case(FIXTURES "/sqb-default/base-safetensors", "config.json");
    /* a word-embedding table stored as int64 */
    const char header[] = "{\"embeddings.word_embeddings.weight\":{\"dtype\":\"I64\",\"shape\":[120,64],"
                          "\"data_offsets\":[0,61440]}}";
    size_t hlen = sizeof header - 1, total = 8 + hlen + 61440;
    unsigned char *file = calloc(total, 1);
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(file + 8, header, hlen);
    char *path = test_path(dir, "model.safetensors");
    write_whole(path, file, total);
    assert_fails_with(load(dir), SQZ_ERR_MODEL_MISMATCH, "embeddings.word_embeddings.weight",
                      "dtype I64", "expected a float dtype");
    free(file), free(path);
    remove_temp_dir(dir);
}

static void missing_tensor(void **unused)
{
    char *dir = copy_case(FIXTURES "/sqb-default/seqcls-safetensors", "config.json");
    sqz_tensor_file *tf = NULL;
    assert_sqz_ok(sqz_tensor_file_read(FIXTURES "/sqb-default/seqcls-safetensors/model.safetensors", NULL, &tf));
    sqz_tf_write_tensor *keep = calloc(tf->count, sizeof *keep);
    size_t k = 0;
    for (size_t i = 0; i < tf->count; i++) {
        if (strcmp(tf->tensors[i].name, "transformer.encoder.layers.1.output.conv1d.bias") == 0)
            continue;
        keep[k].name = tf->tensors[i].name;
        keep[k].ndim = tf->tensors[i].ndim;
        memcpy(keep[k].shape, tf->tensors[i].shape, sizeof keep[k].shape);
        keep[k].data = tf->tensors[i].data;
        k++;
    }
    assert_int_equal(k, tf->count - 1);
    char *path = test_path(dir, "model.safetensors");
    assert_sqz_ok(sqz_safetensors_write(path, keep, k, SQZ_TF_F32));
    assert_fails_with(load(dir), SQZ_ERR_MODEL_MISMATCH, "model.safetensors",
                      "tensor 'encoder.layers.1.output.conv1d.bias' is missing",
                      "'transformer.encoder.layers.1.output.conv1d.bias'");
    /* the classifier of a task model is required too */
    k = 0;
    for (size_t i = 0; i < tf->count; i++)
        if (strncmp(tf->tensors[i].name, "classifier.", 11) != 0)
            keep[k++] = (sqz_tf_write_tensor){tf->tensors[i].name, tf->tensors[i].ndim, {0}, tf->tensors[i].data},
            memcpy(keep[k - 1].shape, tf->tensors[i].shape, sizeof keep[k - 1].shape);
    assert_sqz_ok(sqz_safetensors_write(path, keep, k, SQZ_TF_F32));
    assert_fails_with(load(dir), SQZ_ERR_MODEL_MISMATCH, "'classifier.weight' is missing",
                      "SqueezeBertForSequenceClassification");
    free(keep), free(path);
    sqz_tensor_file_free(tf);
    remove_temp_dir(dir);
}

static void bad_or_unsupported_config(void **unused)
{
    const struct { const char *from, *to; sqz_status status; const char *frag1, *frag2; } cases[] = {
        {"\"hidden_size\": 64", "\"hidden_size\": 64,,", SQZ_ERR_FORMAT, "invalid JSON at line", "config.json"},
        {"\"model_type\": \"squeezebert\"", "\"model_type\": \"gpt2\"", SQZ_ERR_UNSUPPORTED, "model_type \"gpt2\"", "squeezebert"},
        {"\"SqueezeBertModel\"", "\"SqueezeBertForPreTraining\"", SQZ_ERR_UNSUPPORTED, "SqueezeBertForPreTraining", "supported:"},
        {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu_new\"", SQZ_ERR_UNSUPPORTED, "gelu_new", "exact erf"},
        {"\"q_groups\": 4", "\"q_groups\": 3", SQZ_ERR_FORMAT, "q_groups = 3 does not divide hidden_size = 64", "config.json"},
        {"\"hidden_size\": 64", "\"hidden_size\": \"64\"", SQZ_ERR_FORMAT, "field 'hidden_size' must be an integer", "a string"},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": 5", SQZ_ERR_FORMAT, "not a multiple of num_attention_heads 5", "hidden_size 64"},
        {"\"vocab_size\": 120", "\"vocab_size\": -3", SQZ_ERR_FORMAT, "'vocab_size' = -3", "range"},
        {"\"vocab_size\": 120", "\"vocab_size\": 1000000000000", SQZ_ERR_FORMAT, "'vocab_size'", "range"},
        /* the variants' keys (docs/variants.md); the fixture has 2 layers */
        {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"sqz_attention\": \"quadratic\"", SQZ_ERR_UNSUPPORTED,
         "sqz_attention must be", "\"linear\""},
        {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"sqz_share_layers\": 3", SQZ_ERR_FORMAT,
         "sqz_share_layers 3 is more than num_hidden_layers 2", "config.json"},
        {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"sqz_layer_stride\": 2, \"sqz_run_layers\": 2",
         SQZ_ERR_FORMAT, "sqz_run_layers 2 is more than the 1 layers", "sqz_layer_stride 2"},
        {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"sqz_share_layers\": 0", SQZ_ERR_FORMAT,
         "'sqz_share_layers' = 0", "range"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *dir = copy_case(FIXTURES "/sqb-default/base-safetensors", "model.safetensors");
        edit_config(dir, cases[i].from, cases[i].to);
        assert_fails_with(load(dir), cases[i].status, cases[i].frag1, cases[i].frag2);
        remove_temp_dir(dir);
    }
}

/* a checkpoint that stores one layer for all (sqz_share_layers) cannot serve groups of two:
 * the missing group's first layer is named */
static void shared_layers_missing(void **unused)
{
    char *dir = copy_case(FIXTURES "/variants/share-all", "model.safetensors");
    assert_sqz_ok(load(dir));
    edit_config(dir, "\"sqz_share_layers\": 4", "\"sqz_share_layers\": 2");
    assert_fails_with(load(dir), SQZ_ERR_MODEL_MISMATCH, "'encoder.layers.2.attention.query.weight' is missing");
    remove_temp_dir(dir);
}

static void configurable_limits(void **unused)
{
    /* a caller can tighten (or raise) the pickle and header limits; the message names the
     * option (and the variable sqz fills it from, which test_cli checks) */
    const sqz_model_load_options pickle = {.max_pickle_bytes = 100}, header = {.max_header_bytes = 100};
    assert_fails_with(load_with(FIXTURES "/sqb-default/base-bin", &pickle), SQZ_ERR_FORMAT, "data.pkl",
                      "at most 100", "max_pickle_bytes");
    assert_fails_with(load_with(FIXTURES "/sqb-default/base-safetensors", &header), SQZ_ERR_FORMAT,
                      "header length", "limit of 100 bytes", "max_header_bytes");
    /* each limit applies to its own format only; zero fields are the defaults */
    assert_int_equal(load_with(FIXTURES "/sqb-default/base-safetensors", &pickle), SQZ_OK);
    assert_int_equal(load_with(FIXTURES "/sqb-default/base-bin", &header), SQZ_OK);
    assert_int_equal(load_with(FIXTURES "/sqb-default/base-safetensors", &(sqz_model_load_options){0}), SQZ_OK);
}

static void missing_files(void **unused)
{
    char *dir = make_temp_dir();
    assert_fails_with(load(dir), SQZ_ERR_IO, "config.json");
    char *from = test_path(FIXTURES "/sqb-default/base-safetensors", "config.json");
    char *to = test_path(dir, "config.json");
    copy_file(from, to);
    assert_fails_with(load(dir), SQZ_ERR_IO, "no weights found", "model.safetensors",
                      "pytorch_model.bin");
    free(from), free(to);
    remove_temp_dir(dir);
    assert_fails_with(load("/nonexistent/model/dir"), SQZ_ERR_IO, "/nonexistent/model/dir");
}

/* Precisions: names round-trip, unknown ones are named, and a backend without a precision
 * refuses it at session creation instead of silently running fp32. */
static void precisions(void **unused)
{
    (void)unused;
    sqz_precision p = SQZ_PRECISION_BF16;
    assert_sqz_ok(sqz_precision_from_name(NULL, &p));
    assert_int_equal(p, SQZ_PRECISION_FP32);
    for (int i = 0; i < SQZ_PRECISION_COUNT; i++) {
        assert_sqz_ok(sqz_precision_from_name(sqz_precision_name((sqz_precision)i), &p));
        assert_int_equal(p, i);
        assert_true(sqz_precision_tolerance((sqz_precision)i) >= 1e-4);
    }
    assert_fails_with(sqz_precision_from_name("fp8", &p), SQZ_ERR_INVALID_ARGUMENT, "'fp8'", "fp16, bf16");
    sqz_model *m = NULL;
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/seqcls-safetensors", NULL, &m));
    sqz_session_options o = {.backend = "cpu_ref", .precision = SQZ_PRECISION_FP16};
    assert_fails_with(sqz_session_create(m, &o, &s), SQZ_ERR_UNSUPPORTED, "cpu_ref", "fp32 only", "fp16");
    assert_null(s);
    o.precision = (sqz_precision)99;
    assert_fails_with(sqz_session_create(m, &o, &s), SQZ_ERR_INVALID_ARGUMENT, "precision 99");
    o.precision = SQZ_PRECISION_FP32;
    assert_sqz_ok(sqz_session_create(m, &o, &s));
    assert_int_equal(sqz_session_precision(s), SQZ_PRECISION_FP32);
    sqz_session_free(s);
    sqz_model_free(m);
}

static void bad_run_inputs(void **unused)
{
    sqz_model *m = NULL;
    sqz_session *s = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/seqcls-safetensors", NULL, &m)); /* vocab 120, 32 positions */
    assert_sqz_ok(sqz_session_create(m, NULL, &s));
    int64_t ids[2][4] = {{101, 5, 6, 102}, {101, 7, 8, 102}}, mask[2][4] = {{1, 1, 1, 1}, {1, 1, 1, 0}},
            types[2][4] = {{0, 0, 1, 1}, {0, 0, 0, 0}};
    sqz_input in = {.batch = 2, .seq_len = 4, .input_ids = &ids[0][0], .attention_mask = &mask[0][0],
                    .token_type_ids = &types[0][0]};
    sqz_result *r = NULL;
    assert_sqz_ok(sqz_session_run(s, &in, &r));
    sqz_result_free(r);
    r = NULL;

    ids[1][2] = 120;
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "input_ids[1][2] = 120",
                      "vocab_size 120");
    ids[1][2] = -1;
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "input_ids[1][2] = -1");
    ids[1][2] = 8;
    types[0][3] = 2;
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "token_type_ids[0][3] = 2",
                      "type_vocab_size 2");
    types[0][3] = 1;
    mask[1][1] = 2;
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "attention_mask[1][1] = 2",
                      "expected 0 or 1");
    for (int w = 0; w < 4; w++)
        mask[1][w] = 0;
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "attention_mask[1]", "all zeros");
    mask[1][0] = 1;
    in.choices = 2;
    in.batch = 1;
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "only for multiple-choice models");
    in.choices = 0;
    in.batch = 2;
    /* longer than the position table */
    int64_t long_ids[33] = {0};
    sqz_input too_long = {.batch = 1, .seq_len = 33, .input_ids = long_ids};
    assert_fails_with(sqz_session_run(s, &too_long, &r), SQZ_ERR_INPUT, "sequence length 33",
                      "max_position_embeddings 32");
    sqz_input empty = {.batch = 0, .seq_len = 4, .input_ids = &ids[0][0]};
    assert_fails_with(sqz_session_run(s, &empty, &r), SQZ_ERR_INPUT, "batch (0)");
    sqz_input no_ids = {.batch = 1, .seq_len = 4};
    assert_fails_with(sqz_session_run(s, &no_ids, &r), SQZ_ERR_INVALID_ARGUMENT, "input_ids");
    assert_null(r);
    sqz_session_free(s);
    sqz_model_free(m);

    /* a multiple-choice model needs [N][K][W] */
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/mc-safetensors", NULL, &m));
    assert_sqz_ok(sqz_session_create(m, NULL, &s));
    assert_fails_with(sqz_session_run(s, &in, &r), SQZ_ERR_INPUT, "multiple-choice",
                      "[batch][choices][length]");
    sqz_session_free(s);
    sqz_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(truncated_weight_files),
        cmocka_unit_test(corrupted_pickle),
        cmocka_unit_test(shape_that_does_not_match_the_config),
        cmocka_unit_test(dtype_that_is_not_float),
        cmocka_unit_test(missing_tensor),
        cmocka_unit_test(bad_or_unsupported_config),
        cmocka_unit_test(shared_layers_missing),
        cmocka_unit_test(configurable_limits),
        cmocka_unit_test(missing_files),
        cmocka_unit_test(bad_run_inputs),
        cmocka_unit_test(precisions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
