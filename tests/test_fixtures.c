/* End to end against transformers itself: every case in tests/fixtures/models/manifest.json
 * (written by tools/gen_fixtures.py with save_pretrained and the model's own forward) is
 * loaded through the public API, run on cpu_ref, and every output compared at the valid
 * positions. The error measure is the infinity-norm relative error of each output tensor,
 * max|engine - transformers| / max|transformers|, which must stay below 1e-5. */
#include "tests/test_util.h"

#include <jansson.h>
#include <math.h>

#define TOLERANCE 1e-5

typedef struct fixture_case {
    char dir[512];
    char label[200];
    const char *backend;
    bool unfused; /* plan without fused ops */
} fixture_case;

static int64_t *read_ints(json_t *field, int64_t *dims, int *ndim)
{
    /* nested arrays of 2 or 3 levels, rectangular by construction of the fixtures */
    json_t *a = json_array_get(field, 0), *b = json_array_get(a, 0);
    *ndim = json_is_array(b) ? 3 : 2;
    dims[0] = (int64_t)json_array_size(field);
    dims[1] = (int64_t)json_array_size(a);
    dims[2] = *ndim == 3 ? (int64_t)json_array_size(b) : 1;
    int64_t *v = malloc((size_t)(dims[0] * dims[1] * dims[2]) * sizeof *v);
    assert_non_null(v);
    int64_t k = 0;
    for (int64_t i = 0; i < dims[0]; i++)
        for (int64_t j = 0; j < dims[1]; j++) {
            json_t *x = json_array_get(json_array_get(field, (size_t)i), (size_t)j);
            for (int64_t l = 0; l < dims[2]; l++)
                v[k++] = json_integer_value(*ndim == 3 ? json_array_get(x, (size_t)l) : x);
        }
    return v;
}

static void run_case(void **state)
{
    const fixture_case *fc = *state;
    char *in_path = test_path(fc->dir, "input.json"), *exp_path = test_path(fc->dir, "expected.json");
    json_error_t err;
    json_t *in = json_load_file(in_path, 0, &err), *expected = json_load_file(exp_path, 0, &err);
    assert_non_null(in);
    assert_non_null(expected);
    int64_t dims[3];
    int ndim;
    int64_t *ids = read_ints(json_object_get(in, "input_ids"), dims, &ndim);
    int64_t mdims[3], tdims[3];
    int mnd, tnd;
    int64_t *mask = read_ints(json_object_get(in, "attention_mask"), mdims, &mnd);
    int64_t *types = read_ints(json_object_get(in, "token_type_ids"), tdims, &tnd);
    sqz_input input = {.batch = (int)dims[0], .choices = ndim == 3 ? (int)dims[1] : 0,
                       .seq_len = (int)(ndim == 3 ? dims[2] : dims[1]), .input_ids = ids,
                       .attention_mask = mask, .token_type_ids = types};
    sqz_model *model = NULL;
    sqz_session *session = NULL;
    sqz_result *result = NULL;
    assert_sqz_ok(sqz_model_load(fc->dir, NULL, &model));
    /* guard bytes after every tensor, checked after every launch */
    const sqz_session_options options = {.backend = fc->backend, .guard_bytes = 64, .unfused = fc->unfused};
    assert_sqz_ok(sqz_session_create(model, &options, &session));
    assert_sqz_ok(sqz_session_run(session, &input, &result));

    json_t *outputs = json_object_get(expected, "outputs");
    assert_int_equal(sqz_result_count(result), json_object_size(outputs));
    const char *name;
    json_t *want;
    json_object_foreach(outputs, name, want) {
        const sqz_output *got = sqz_result_find(result, name);
        if (!got)
            fail_msg("%s: the engine produced no '%s'", fc->label, name);
        json_t *shape = json_object_get(want, "shape"), *data = json_object_get(want, "data");
        assert_int_equal(got->ndim, (int)json_array_size(shape));
        int64_t count = 1;
        for (int d = 0; d < got->ndim; d++) {
            assert_int_equal(got->shape[d], json_integer_value(json_array_get(shape, (size_t)d)));
            count *= got->shape[d];
        }
        assert_int_equal(count, (int64_t)json_array_size(data));
        /* per-token outputs are compared only where the mask is 1 */
        const bool per_token = ndim == 2 && got->ndim >= 2 && got->shape[1] == input.seq_len &&
                               (got->ndim == 3 || strstr(name, "start") || strstr(name, "end"));
        const int64_t inner = per_token ? count / (input.batch * input.seq_len) : 1;
        double max_err = 0, max_ref = 0;
        int64_t compared = 0;
        for (int64_t i = 0; i < count; i++) {
            if (per_token && mask[i / inner] == 0)
                continue;
            double ref = json_number_value(json_array_get(data, (size_t)i));
            if (!isfinite(got->data[i]))
                fail_msg("%s: %s[%lld] is not finite", fc->label, name, (long long)i);
            max_err = fmax(max_err, fabs(got->data[i] - ref));
            max_ref = fmax(max_ref, fabs(ref));
            compared++;
        }
        assert_true(compared > 0 && max_ref > 0);
        double rel = max_err / max_ref;
        print_message("%-56s %-18s rel %.2e (max abs %.2e over %lld values)\n", fc->label, name,
                      rel, max_err, (long long)compared);
        if (!(rel <= TOLERANCE))
            fail_msg("%s: output '%s' differs from transformers: relative error %.3e > %.0e",
                     fc->label, name, rel, TOLERANCE);
    }
    sqz_result_free(result);
    sqz_session_free(session);
    sqz_model_free(model);
    free(ids), free(mask), free(types), free(in_path), free(exp_path);
    json_decref(in);
    json_decref(expected);
}

int main(void)
{
    /* transformers' own models (tools/gen_fixtures.py), then the variants computed with
     * transformers' modules rearranged (tools/gen_variant_fixtures.py, docs/variants.md) */
    json_error_t err;
    json_t *manifest = json_load_file(SQZ_FIXTURES_DIR "/models/manifest.json", 0, &err);
    json_t *variants = json_load_file(SQZ_FIXTURES_DIR "/models/variants/manifest.json", 0, &err);
    if (!manifest || !json_is_array(manifest) || json_array_size(manifest) == 0 || !variants ||
        !json_is_array(variants) || json_array_size(variants) == 0) {
        fprintf(stderr, "cannot read %s/models/manifest.json or variants/manifest.json: %s\n", SQZ_FIXTURES_DIR,
                err.text);
        return 1;
    }
    json_array_extend(manifest, variants);
    json_decref(variants);
    /* every case on cpu_ref, and on each other backend that can run here, fused and not */
    struct { const char *backend; bool unfused; } runs[12];
    size_t n_runs = 0;
    for (size_t b = 0; sqz_backend_name(b) && n_runs + 2 <= 12; b++) {
        const char *name = sqz_backend_name(b);
        if (sqz_backend_probe(name) != SQZ_OK) {
            printf("SKIPPED backend %s: %s\n", name, sqz_last_error());
            continue;
        }
        runs[n_runs].backend = name, runs[n_runs++].unfused = false;
        if (strcmp(name, "cpu_ref") != 0)
            runs[n_runs].backend = name, runs[n_runs++].unfused = true;
    }
    size_t n = json_array_size(manifest) * n_runs;
    fixture_case *cases = calloc(n, sizeof *cases);
    struct CMUnitTest *tests = calloc(n, sizeof *tests);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(manifest, i / n_runs);
        const char *dir = json_string_value(json_object_get(c, "dir"));
        cases[i].backend = runs[i % n_runs].backend;
        cases[i].unfused = runs[i % n_runs].unfused;
        snprintf(cases[i].dir, sizeof cases[i].dir, "%s/models/%s", SQZ_FIXTURES_DIR, dir);
        snprintf(cases[i].label, sizeof cases[i].label, "%s %s%s", dir, cases[i].backend,
                 cases[i].unfused ? " unfused" : "");
        tests[i] = (struct CMUnitTest){.name = cases[i].label, .test_func = run_case,
                                       .initial_state = &cases[i]};
    }
    int failed = _cmocka_run_group_tests("transformers_fixtures", tests, n, NULL, NULL);
    free(tests);
    free(cases);
    json_decref(manifest);
    return failed;
}
