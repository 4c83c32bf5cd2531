/* `sqz infer` through the binary, as users run it: every task against the records
 * tools/gen_infer_fixtures.py computed with transformers for the same text (and embeddings of
 * sentence-transformers folders against its encode, tools/gen_sentence_fixtures.py), on every
 * backend that can run here; results independent of batching; errors on their own line;
 * 10,000 lines back in input order. */
#include "tests/test_util.h"
#include "tests/test_json_lines.h"

#include <jansson.h>
#include <math.h>
#include <sys/wait.h>

#define INFER SQZ_FIXTURES_DIR "/infer"

static char *tmp;

static int run(const char *args, int *status)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s infer %s 2> '%s/stderr.log'", SQZ_SQZ_BINARY, args, tmp);
    int rc = system(cmd);
    *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    return 0;
}

/* Same keys in the same order, same strings and integers, reals within tolerance. */
static void same_value(json_t *got, json_t *want, const char *where, double tolerance)
{
    if (json_is_real(want) || json_is_real(got)) {
        double a = json_number_value(got), b = json_number_value(want);
        if (!(fabs(a - b) <= tolerance * fmax(1.0, fabs(b))))
            fail_msg("%s: %.9g, transformers %.9g", where, a, b);
        return;
    }
    if (json_typeof(got) != json_typeof(want))
        fail_msg("%s: JSON types differ", where);
    char path[512];
    if (json_is_object(want)) {
        assert_int_equal(json_object_size(got), json_object_size(want));
        void *gi = json_object_iter(got), *wi = json_object_iter(want);
        for (; wi; gi = json_object_iter_next(got, gi), wi = json_object_iter_next(want, wi)) {
            snprintf(path, sizeof path, "%s.%s", where, json_object_iter_key(wi));
            if (strcmp(json_object_iter_key(gi), json_object_iter_key(wi)) != 0)
                fail_msg("%s: key '%s' where transformers has '%s'", where, json_object_iter_key(gi),
                         json_object_iter_key(wi));
            same_value(json_object_iter_value(gi), json_object_iter_value(wi), path, tolerance);
        }
    } else if (json_is_array(want)) {
        if (json_array_size(got) != json_array_size(want))
            fail_msg("%s: %zu entries, transformers %zu", where, json_array_size(got), json_array_size(want));
        for (size_t i = 0; i < json_array_size(want); i++) {
            snprintf(path, sizeof path, "%s[%zu]", where, i);
            same_value(json_array_get(got, i), json_array_get(want, i), path, tolerance);
        }
    } else if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_ENCODE_ANY), *w = json_dumps(want, JSON_ENCODE_ANY);
        fail_msg("%s: %s, transformers %s", where, g, w);
    }
}

static void compare_files(const char *got_path, const char *want_path, const char *label)
{
    size_t ng, nw;
    json_t **got = read_lines(got_path, &ng), **want = read_lines(want_path, &nw);
    assert_int_equal(ng, nw);
    size_t errors = 0;
    for (size_t i = 0; i < nw; i++) {
        char where[128];
        snprintf(where, sizeof where, "%s line %zu", label, i + 1);
        if (!got[i])
            fail_msg("%s: output is not JSON", where);
        if (json_object_get(want[i], "error")) {
            if (!json_object_get(got[i], "error"))
                fail_msg("%s: expected an error record", where);
            assert_int_equal(json_integer_value(json_object_get(got[i], "line")), (json_int_t)(i + 1));
            errors++;
            continue;
        }
        same_value(got[i], want[i], where, 1e-5);
    }
    assert_true(errors > 0); /* every fixture has bad lines */
    free_lines(got, ng);
    free_lines(want, nw);
}

static void every_task_matches_transformers(void **unused)
{
    const struct { const char *dir, *args, *expected; } cases[] = {
        {"classify", "", "expected.jsonl"},
        {"classify-bert", "", "expected.jsonl"},
        {"tokens", "", "expected.jsonl"},
        {"qa", "", "expected.jsonl"},
        {"fill-mask", "", "expected.jsonl"},
        {"embed", "--pooling pooler", "expected-pooler.jsonl"},
        {"embed", "--pooling mean", "expected-mean.jsonl"},
        {"embed", "--pooling cls --normalize", "expected-cls-normalized.jsonl"},
        /* sentence-transformers folders with no flags: what its encode gives (1e-5 as above) */
        {"../sentence/st-bert-mean", "", "expected.jsonl"},
        {"../sentence/st-sqb-dense", "", "expected.jsonl"},
        {"../sentence/st-bert-cls-sqrt", "", "expected.jsonl"},
    };
    for (size_t b = 0; sqz_backend_name(b); b++) {
        const char *backend = sqz_backend_name(b);
        if (sqz_backend_probe(backend) != SQZ_OK) {
            print_message("SKIPPED backend %s: %s\n", backend, sqz_last_error());
            continue;
        }
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            char args[2048], out[512], want[512], label[256];
            snprintf(out, sizeof out, "%s/out.jsonl", tmp);
            snprintf(args, sizeof args, "--model %s/%s --backend %s --input %s/%s/input.jsonl --output %s %s",
                     INFER, cases[c].dir, backend, INFER, cases[c].dir, out, cases[c].args);
            int status;
            run(args, &status);
            assert_int_equal(status, 1); /* the fixtures hold lines that must fail */
            snprintf(want, sizeof want, "%s/%s/%s", INFER, cases[c].dir, cases[c].expected);
            snprintf(label, sizeof label, "%s %s on %s", cases[c].dir, cases[c].args, backend);
            compare_files(out, want, label);
            print_message("%-44s matches the reference\n", label);
        }
    }
}

static void results_do_not_depend_on_batching(void **unused)
{
    /* cpu_ref's arithmetic per token is the same in any batch: bit-identical records */
    char args[2048], a[512], b[512];
    snprintf(a, sizeof a, "%s/small.jsonl", tmp);
    snprintf(b, sizeof b, "%s/large.jsonl", tmp);
    const char *tasks[] = {"classify", "tokens", "qa"};
    for (size_t t = 0; t < 3; t++) {
        int status;
        snprintf(args, sizeof args, "--model %s/%s --backend cpu_ref --batch-tokens 20 --input %s/%s/input.jsonl --output %s",
                 INFER, tasks[t], INFER, tasks[t], a);
        run(args, &status);
        snprintf(args, sizeof args, "--model %s/%s --backend cpu_ref --batch-tokens 100000 --input %s/%s/input.jsonl --output %s",
                 INFER, tasks[t], INFER, tasks[t], b);
        run(args, &status);
        size_t na, nb;
        unsigned char *da = read_whole(a, &na), *db = read_whole(b, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(da, db, na);
        free(db);
        /* and on two devices at once (two sessions on the host), small batches spread over both */
        snprintf(args, sizeof args, "--model %s/%s --devices cpu_ref,cpu_ref:0 --batch-tokens 20 --input "
                 "%s/%s/input.jsonl --output %s", INFER, tasks[t], INFER, tasks[t], b);
        run(args, &status);
        db = read_whole(b, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(da, db, na);
        free(da), free(db);
    }
    /* the CUDA backend's path (runs in flight, outputs formatted on the device, graphs
     * replayed across lengths), on cuda-sim: one device and big batches against two sessions
     * and small batches, record for record */
    if (sqz_backend_probe("cuda-sim") != SQZ_OK)
        return;
    int status;
    snprintf(args, sizeof args, "--model %s/classify --backend cuda-sim --batch-tokens 100000 --input "
             "%s/classify/input.jsonl --output %s", INFER, INFER, a);
    run(args, &status);
    snprintf(args, sizeof args, "--model %s/classify --devices cuda-sim,cuda-sim:reverse --batch-tokens 30 --input "
             "%s/classify/input.jsonl --output %s", INFER, INFER, b);
    run(args, &status);
    size_t na, nb;
    unsigned char *da = read_whole(a, &na), *db = read_whole(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(da, db, na);
    free(da), free(db);
}

static void ten_thousand_lines_in_order_with_errors_in_place(void **unused)
{
    char in[512], out[512], args[2048];
    snprintf(in, sizeof in, "%s/many.jsonl", tmp);
    snprintf(out, sizeof out, "%s/many-out.jsonl", tmp);
    FILE *f = fopen(in, "w");
    const char *words[] = {"good", "bad", "the", "film", "was", "not", "really", "very", "fun", "and"};
    uint64_t state = 1;
    for (int i = 0; i < 10000; i++) {
        if (i % 997 == 13) {
            fprintf(f, "{\"id\": %d, \"text\": \n", i); /* broken JSON */
            continue;
        }
        if (i % 1009 == 7) {
            fprintf(f, "{\"id\": %d, \"text\": \"\"}\n", i); /* empty text */
            continue;
        }
        fprintf(f, "{\"id\": %d, \"text\": \"", i);
        int n = 1 + (int)((test_uniform(&state) + 1.0f) * 20.0f); /* lengths vary: sorting reorders */
        for (int w = 0; w < n; w++)
            fprintf(f, "%s%s", w ? " " : "", words[(i + w * 7) % 10]);
        fprintf(f, "\"}\n");
    }
    fclose(f);
    int status;
    snprintf(args, sizeof args, "--model %s/classify --backend cpu_ref --batch-tokens 512 --input %s --output %s",
             INFER, in, out);
    run(args, &status);
    assert_int_equal(status, 1);
    size_t n;
    json_t **lines = read_lines(out, &n);
    assert_int_equal(n, 10000);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(lines[i]);
        const bool broken = i % 997 == 13, empty = i % 1009 == 7;
        if (broken) {
            /* nothing could be copied from a line that is not JSON */
            assert_non_null(json_object_get(lines[i], "error"));
            assert_int_equal(json_integer_value(json_object_get(lines[i], "line")), (json_int_t)(i + 1));
            continue;
        }
        assert_int_equal(json_integer_value(json_object_get(lines[i], "id")), (json_int_t)i);
        if (empty)
            assert_non_null(strstr(json_string_value(json_object_get(lines[i], "error")), "empty"));
        else
            assert_non_null(json_object_get(lines[i], "label"));
    }
    free_lines(lines, n);
    /* the summary says what happened */
    char log[512];
    snprintf(log, sizeof log, "%s/stderr.log", tmp);
    size_t ln;
    char *summary = (char *)read_whole(log, &ln);
    assert_non_null(strstr(summary, "10000 lines (21 failed)"));
    free(summary);
    /* the windows (4096 lines) tokenized on several threads: the same bytes, in the same order */
    char threaded[512];
    snprintf(threaded, sizeof threaded, "%s/many-out-threaded.jsonl", tmp);
    snprintf(args, sizeof args, "--model %s/classify --backend cpu_ref --batch-tokens 512 --tokenize-threads 4 "
             "--input %s --output %s", INFER, in, threaded);
    run(args, &status);
    assert_int_equal(status, 1);
    size_t n_one, n_four;
    unsigned char *one = read_whole(out, &n_one), *four = read_whole(threaded, &n_four);
    assert_int_equal(n_one, n_four);
    assert_memory_equal(one, four, n_one);
    free(one), free(four);
    summary = (char *)read_whole(log, &ln);
    assert_non_null(strstr(summary, "(4 threads)"));
    free(summary);
}

/* sqz infer on the classify fixture with `args` after --model exits with `want` */
static void classify_exits_with(const char *args, int want)
{
    char all[1024];
    snprintf(all, sizeof all, "--model %s/classify %s", INFER, args);
    int status;
    run(all, &status);
    if (status != want)
        fail_msg("sqz infer --model .../classify %s: exit %d, expected %d", args, status, want);
}

static void usage_errors(void **unused)
{
    int status;
    run("--task classify", &status);
    assert_int_equal(status, 2);
    classify_exits_with("--task qa --input /dev/null", 2);
    classify_exits_with("--input /nonexistent/file", 1);
    classify_exits_with("--batch-tokens 0", 2);
    classify_exits_with("--tokenize-threads 0", 2);
    classify_exits_with("--tokenize-threads 17", 2);
    classify_exits_with("--device 0 --devices cpu_ref,cpu_ref", 2);
    classify_exits_with("--devices cpu_ref,,cpu_ref --input /dev/null", 1);
    classify_exits_with("--devices cpu_ref,nosuch:1 --input /dev/null", 1);
    char log[512];
    snprintf(log, sizeof log, "%s/stderr.log", tmp);
    size_t n;
    char *text = (char *)read_whole(log, &n);
    assert_non_null(strstr(text, "nosuch:1: invalid argument: unknown backend 'nosuch'"));
    free(text);
}

/* --backend auto, and no --backend, run on the library's sqz_backend_auto() */
static void auto_backend_is_the_librarys_choice(void **unused)
{
    char want[128], log[512], args[1024];
    snprintf(want, sizeof want, " tokens on %s (", sqz_backend_auto());
    snprintf(log, sizeof log, "%s/stderr.log", tmp);
    for (int given = 0; given < 2; given++) {
        snprintf(args, sizeof args, "--model %s/classify --input /dev/null%s", INFER, given ? " --backend auto" : "");
        int status;
        run(args, &status);
        assert_int_equal(status, 0);
        size_t n;
        char *text = (char *)read_whole(log, &n);
        if (!strstr(text, want))
            fail_msg("sqz infer %s: expected '%s' in: %s", args, want, text);
        free(text);
    }
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_task_matches_transformers),
        cmocka_unit_test(results_do_not_depend_on_batching),
        cmocka_unit_test(ten_thousand_lines_in_order_with_errors_in_place),
        cmocka_unit_test(usage_errors),
        cmocka_unit_test(auto_backend_is_the_librarys_choice),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
