/* The fixed command-line contract, through the installed binary as checks outside the
 * project use it: `sqz forward --model DIR --input IN.json --output OUT.json` reproduces
 * transformers, every subcommand answers --help, and bad input exits non-zero with a
 * message naming the problem. */
#include "tests/test_util.h"

#include <jansson.h>
#include <math.h>
#include <sys/wait.h>

#define FIXTURES SQZ_FIXTURES_DIR "/models"

static char *tmp;

/* Runs sqz with `args`; returns the exit status and leaves stdout+stderr in *output. */
static int sqz(const char *args, char **output)
{
    char cmd[4096], *log = test_path(tmp, "cli.log");
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2>&1", SQZ_SQZ_BINARY, args, log);
    int rc = system(cmd);
    size_t n;
    *output = (char *)read_whole(log, &n);
    free(log);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int setup(void **unused)
{
    tmp = make_temp_dir();
    return 0;
}

static int teardown(void **unused)
{
    remove_temp_dir(tmp);
    return 0;
}

/* Flattens nested JSON arrays of numbers; returns the count and the depth in *ndim. */
static size_t flatten(json_t *x, double *out, size_t k, int depth, int *ndim)
{
    if (!json_is_array(x)) {
        out[k] = json_number_value(x);
        *ndim = depth;
        return k + 1;
    }
    for (size_t i = 0; i < json_array_size(x); i++)
        k = flatten(json_array_get(x, i), out, k, depth + 1, ndim);
    return k;
}

static json_t *load_json(const char *dir, const char *name)
{
    char *path = test_path(dir, name);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j)
        fail_msg("cannot read %s: %s", path, err.text);
    free(path);
    return j;
}

static void forward_reproduces_the_fixture(void **unused)
{
    const char *cases[] = {"sqb-hf-test/qa-bin", "bert/tokcls-safetensors", "sqb-odd/mc-bin"};
    /* the default backend (cpu_ref), then every other backend that can run here */
    const char *backends[8] = {NULL};
    size_t n_backends = 1;
    for (size_t b = 1; sqz_backend_name(b) && n_backends < 8; b++)
        if (sqz_backend_probe(sqz_backend_name(b)) == SQZ_OK)
            backends[n_backends++] = sqz_backend_name(b);
    for (size_t run = 0; run < 3 * n_backends; run++) {
        const size_t c = run % 3;
        const char *backend = backends[run / 3];
        char dir[1024], args[4096], *out, *out_path = test_path(tmp, "out.json");
        snprintf(dir, sizeof dir, "%s/%s", FIXTURES, cases[c]);
        snprintf(args, sizeof args, "forward --model %s --input %s/input.json --output %s%s%s", dir,
                 dir, out_path, backend ? " --backend " : "", backend ? backend : "");
        int rc = sqz(args, &out);
        if (rc != 0)
            fail_msg("sqz %s exited %d: %s", args, rc, out);
        free(out);
        json_error_t err;
        json_t *got = json_load_file(out_path, 0, &err);
        json_t *expected = load_json(dir, "expected.json"), *input = load_json(dir, "input.json");
        assert_non_null(got);
        json_t *outputs = json_object_get(expected, "outputs");
        assert_int_equal(json_object_size(got), json_object_size(outputs));
        static double mask[4096], values[65536], ref[65536];
        int mask_ndim = 0, got_ndim = 0;
        size_t positions = flatten(json_object_get(input, "attention_mask"), mask, 0, 0, &mask_ndim);
        const char *name;
        json_t *want;
        json_object_foreach(outputs, name, want) {
            assert_non_null(json_object_get(got, name));
            size_t n = flatten(json_object_get(got, name), values, 0, 0, &got_ndim);
            json_t *data = json_object_get(want, "data");
            assert_int_equal(n, json_array_size(data));
            for (size_t i = 0; i < n; i++)
                ref[i] = json_number_value(json_array_get(data, i));
            /* per-token outputs ([N][W] or [N][W][X] for [N][W] input) skip padded positions */
            bool per_token = mask_ndim == 2 && got_ndim >= 2 && n % positions == 0 &&
                             (got_ndim == 3 || strstr(name, "_logits"));
            size_t inner = per_token ? n / positions : 1;
            double max_err = 0, max_ref = 0;
            for (size_t i = 0; i < n; i++) {
                if (per_token && mask[i / inner] == 0)
                    continue;
                max_err = fmax(max_err, fabs(values[i] - ref[i]));
                max_ref = fmax(max_ref, fabs(ref[i]));
            }
            assert_true(max_ref > 0);
            if (!(max_err <= 1e-5 * max_ref))
                fail_msg("%s %s on %s: relative error %.3e", cases[c], name,
                         backend ? backend : "cpu_ref", max_err / max_ref);
        }
        json_decref(got);
        json_decref(expected);
        json_decref(input);
        free(out_path);
    }
}

static void every_subcommand_has_help(void **unused)
{
    const char *commands[] = {"forward", "graph", "random-model", "info", "backends", "demo", "kernels"};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        char args[128], *out, want[128];
        snprintf(args, sizeof args, "%s --help", commands[i]);
        assert_int_equal(sqz(args, &out), 0);
        snprintf(want, sizeof want, "usage: sqz %s", commands[i]);
        if (!strstr(out, want))
            fail_msg("sqz %s printed: %s", args, out);
        free(out);
    }
    char *out;
    assert_int_equal(sqz("--help", &out), 0);
    assert_non_null(strstr(out, "forward"));
    free(out);
    assert_int_equal(sqz("frobnicate", &out), 2);
    assert_non_null(strstr(out, "unknown command 'frobnicate'"));
    free(out);
    assert_int_equal(sqz("forward --model x", &out), 2);
    assert_non_null(strstr(out, "--input and --output are required"));
    free(out);
    assert_int_equal(sqz("forward --model x --bogus 1", &out), 2);
    assert_non_null(strstr(out, "unknown option '--bogus'"));
    free(out);
}

static void bad_input_exits_non_zero_with_a_message(void **unused)
{
    char *in_path = test_path(tmp, "in.json"), args[2048], *out;
    const struct { const char *json, *fragment; } cases[] = {
        {"{\"input_ids\": [[101, 5, 102]", "invalid JSON at line"},
        {"{\"input_ids\": [[101, 500, 102]]}", "input_ids[0][1] = 500 is outside the vocabulary"},
        {"{\"input_ids\": [[101, 5], [101]]}", "'input_ids'[1] must be an array of 2 integers"},
        {"{\"input_ids\": [[101, 5]], \"attention_mask\": [[1]]}", "attention_mask' has shape [1][1]"},
        {"{\"input_ids\": [[101, 5.5]]}", "'input_ids'[0][1] must be an integer"},
        {"{\"input_ids\": [[101, 5]], \"labels\": [1]}", "unknown field 'labels'"},
        {"[1, 2]", "expected a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_whole(in_path, cases[i].json, strlen(cases[i].json));
        snprintf(args, sizeof args, "forward --model %s/sqb-default/seqcls-bin --input %s --output %s/o.json",
                 FIXTURES, in_path, tmp);
        assert_int_equal(sqz(args, &out), 1);
        if (!strstr(out, cases[i].fragment))
            fail_msg("case %zu: expected \"%s\" in: %s", i, cases[i].fragment, out);
        free(out);
    }
    const char *valid = "{\"input_ids\": [[101, 5]]}";
    write_whole(in_path, valid, strlen(valid));
    snprintf(args, sizeof args, "forward --model %s/no-such-model --input %s --output %s/o.json",
             FIXTURES, in_path, tmp);
    assert_int_equal(sqz(args, &out), 1);
    assert_non_null(strstr(out, "no-such-model/config.json"));
    free(out);
    free(in_path);
}

/* sqz fills the library's load limits from SQZ_MAX_PICKLE_BYTES and SQZ_MAX_HEADER_BYTES */
static void load_limits_from_the_environment(void **unused)
{
    const struct { const char *setting, *model, *fragment; } cases[] = {
        {"SQZ_MAX_PICKLE_BYTES=100", "sqb-default/base-bin", "at most 100, max_pickle_bytes"},
        {"SQZ_MAX_HEADER_BYTES=100", "sqb-default/base-safetensors", "limit of 100 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048], *out;
        snprintf(args, sizeof args, "info --model %s/%s", FIXTURES, cases[i].model);
        const char *eq = strchr(cases[i].setting, '=');
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(eq - cases[i].setting), cases[i].setting);
        setenv(name, eq + 1, 1);
        const int rc = sqz(args, &out);
        unsetenv(name);
        assert_int_equal(rc, 1);
        if (!strstr(out, cases[i].fragment) || !strstr(out, name))
            fail_msg("expected \"%s\" and %s in: %s", cases[i].fragment, name, out);
        free(out);
        assert_int_equal(sqz(args, &out), 0); /* the default limits read it */
        free(out);
    }
}

static void random_model_info_and_graph(void **unused)
{
    char args[2048], *out, *dir = test_path(tmp, "tiny");
    snprintf(args, sizeof args, "random-model --config tiny --seed 3 --out %s", dir);
    assert_int_equal(sqz(args, &out), 0);
    free(out);
    snprintf(args, sizeof args, "info --model %s", dir);
    assert_int_equal(sqz(args, &out), 0);
    assert_non_null(strstr(out, "SqueezeBertForSequenceClassification"));
    assert_non_null(strstr(out, "4/4/4, post-attention 1"));
    free(out);
    snprintf(args, sizeof args, "graph --model %s --dot --tokens 64 --sequences 4", dir);
    assert_int_equal(sqz(args, &out), 0);
    assert_non_null(strstr(out, "digraph squeezebert"));
    assert_non_null(strstr(out, "layer1.attention") || strstr(out, "layer1.scores"));
    free(out);
    assert_int_equal(sqz("random-model --config nope --out /tmp/x", &out), 1);
    assert_non_null(strstr(out, "unknown preset \"nope\""));
    free(out);
    snprintf(args, sizeof args, "demo --config tiny --batch 3 --length 8");
    assert_int_equal(sqz(args, &out), 0);
    assert_non_null(strstr(out, "logits"));
    assert_non_null(strstr(out, "tokens/s"));
    free(out);
    free(dir);
}

/* sqz kernels on cuda-sim: the variants of every op family, the tensor-core ones chosen at
 * fp16 (cuda-sim keeps the newest variant that matches variant 0), and a clear refusal for a
 * backend without variants */
static void kernels_lists_the_variants(void **unused)
{
    char *out;
    if (sqz("backends", &out) != 0 || !strstr(out, "cuda-sim ready")) {
        free(out);
        skip();
    }
    free(out);
    assert_int_equal(sqz("kernels --random tiny --backend cuda-sim --precision fp16 --batch 3 --seq 40 "
                         "--peak-tflops 1 --peak-gbs 10", &out), 0);
    const char *wants[] = {"flash ", "fused ", "mma64 ", "roofline from 1 TFLOP/s"};
    for (size_t i = 0; i < sizeof wants / sizeof wants[0]; i++)
        if (!strstr(out, wants[i]))
            fail_msg("no '%s' in: %s", wants[i], out);
    const char *flash = strstr(out, "flash ");
    assert_non_null(strstr(flash, "<- chosen"));
    assert_true(strstr(flash, "<- chosen") < strchr(flash, '\n'));
    free(out);
    assert_int_equal(sqz("kernels --random tiny --backend cpu_ref", &out), 1);
    assert_non_null(strstr(out, "no kernel variants"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forward_reproduces_the_fixture),
        cmocka_unit_test(every_subcommand_has_help),
        cmocka_unit_test(bad_input_exits_non_zero_with_a_message),
        cmocka_unit_test(load_limits_from_the_environment),
        cmocka_unit_test(random_model_info_and_graph),
        cmocka_unit_test(kernels_lists_the_variants),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
