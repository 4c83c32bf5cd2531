/* sqz bench: the statistics, the deterministic inputs bench/peers.py reproduces, and the
 * report writers (JSON, CSV, SVG, table) on a real run of the tiny model on cpu_ref. No
 * assertion depends on how fast anything ran. */
#include "tests/test_util.h"

#include <jansson.h>
#include <math.h>

#include "cli/bench_writers.h"
#include "cli/sqz_bench.h"
#include "cli/sqz_commands.h"

static char *tmp;

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

static int bench(int argc, const char **argv)
{
    return sqz_cli_bench(argc, (char **)argv);
}

/* ---- statistics ----------------------------------------------------------------------------- */

static void test_percentiles(void **unused)
{
    const double sorted[] = {1, 2, 3, 4};
    assert_float_equal(bench_percentile(sorted, 4, 0), 1, 1e-12);
    assert_float_equal(bench_percentile(sorted, 4, 50), 2.5, 1e-12);   /* mean of the middle two */
    assert_float_equal(bench_percentile(sorted, 4, 90), 3.7, 1e-12);   /* 1 + 0.9 * 3 ranks */
    assert_float_equal(bench_percentile(sorted, 4, 100), 4, 1e-12);
    assert_float_equal(bench_percentile(sorted, 1, 99), 1, 1e-12);
    assert_float_equal(bench_percentile(sorted, 0, 50), 0, 1e-12);

    const double samples[] = {5, 1, 4, 2, 3}; /* unsorted: the summary sorts a copy */
    bench_stats s;
    bench_stats_compute(samples, 5, &s);
    assert_int_equal(s.n, 5);
    assert_float_equal(s.p50, 3, 1e-12);
    assert_float_equal(s.p90, 4.6, 1e-12);
    assert_float_equal(s.p99, 4.96, 1e-12);
    assert_float_equal(s.mean, 3, 1e-12);
    assert_float_equal(s.min, 1, 1e-12);
    assert_float_equal(s.max, 5, 1e-12);
    assert_float_equal(samples[0], 5, 0); /* not modified */
    bench_stats_compute(samples, 0, &s);
    assert_int_equal(s.n, 0);
}

/* ---- inputs ------------------------------------------------------------------------------------ */

static void test_inputs(void **unused)
{
    /* the reference value of splitmix64 from state 0: peers.py must agree bit for bit */
    assert_true(bench_splitmix64(0) == 0xE220A8397B1DCDAFull);
    for (int row = 0; row < 4; row++)
        for (int pos = 0; pos < 20; pos++) {
            int64_t id = bench_token_id(1, row, pos, 20, 30528);
            if (pos == 0)
                assert_int_equal(id, 101);
            else if (pos == 19)
                assert_int_equal(id, 102);
            else
                assert_true(id >= 1000 && id < 30528);
            assert_int_equal(id, bench_token_id(1, row, pos, 20, 30528));
        }
    for (int pos = 0; pos < 50; pos++) { /* a vocabulary smaller than the special range */
        int64_t id = bench_token_id(3, 1, pos, 50, 99);
        assert_true(id >= 0 && id < 99);
    }
    /* mixed lengths: within bounds, deterministic, median near the model's 40 tokens */
    int counts[129] = {0};
    for (int r = 0; r < 4000; r++) {
        int len = bench_mixed_length(1, 4000, r, 128);
        assert_true(len >= BENCH_MIXED_MIN && len <= 128);
        assert_int_equal(len, bench_mixed_length(1, 4000, r, 128));
        counts[len]++;
    }
    int below = 0, median = 0;
    while (below + counts[median] < 2000)
        below += counts[median++];
    assert_in_range(median, 36, 44);
    assert_true(bench_mixed_length(1, 8, 0, 10) <= 10);
}

/* ---- a run and its report ------------------------------------------------------------------------- */

static json_t *run_tiny(const char *json_path, const char *csv_path, const char *svg_path)
{
    const char *argv[] = {"--random", "tiny", "--backends", "cpu_ref", "--batch", "1,2",
                          "--length", "8,16", "--mixed-batch", "4", "--mixed-max", "16",
                          "--ref-max-tokens", "40", "--precisions", "fp32,fp16", "--budget", "0.01",
                          "--min-repeats", "3", "--max-repeats", "5", "--peak-budget", "0.05",
                          "--json", json_path, "--csv", csv_path, "--plot", svg_path, "--quiet"};
    assert_int_equal(bench(sizeof argv / sizeof argv[0], argv), 0);
    json_error_t err;
    json_t *report = json_load_file(json_path, 0, &err);
    if (!report)
        fail_msg("%s: %s", json_path, err.text);
    return report;
}

static double num(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        fail_msg("field %s is not a number", key);
    return json_number_value(v);
}

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s)
        fail_msg("field %s is not a string", key);
    return s;
}

static size_t count(const char *text, const char *what)
{
    size_t n = 0;
    for (const char *p = strstr(text, what); p; p = strstr(p + 1, what))
        n++;
    return n;
}

/* Fields of one CSV line, quotes respected. */
static int csv_fields(const char *line)
{
    int n = 1;
    bool quoted = false;
    for (const char *p = line; *p && *p != '\n'; p++) {
        if (*p == '"')
            quoted = !quoted;
        else if (*p == ',' && !quoted)
            n++;
    }
    return n;
}

static void test_report(void **unused)
{
    char *json_path = test_path(tmp, "r.json"), *csv_path = test_path(tmp, "r.csv"),
         *svg_path = test_path(tmp, "r.svg");
    json_t *report = run_tiny(json_path, csv_path, svg_path);
    assert_string_equal(str(report, "schema"), "sqz-bench/1");
    assert_string_equal(str(json_object_get(report, "model"), "architecture"),
                        "SqueezeBertForSequenceClassification");
    json_t *devices = json_object_get(report, "devices");
    assert_int_equal(json_array_size(devices), 1);
    json_t *dev = json_array_get(devices, 0);
    assert_string_equal(str(dev, "status"), "ok");
    assert_non_null(strstr(str(dev, "threads"), "1 host thread"));
    json_t *peak = json_array_get(json_object_get(dev, "peaks"), 0);
    assert_string_equal(str(peak, "status"), "ok");
    assert_true(num(peak, "gflops") > 0);

    json_t *rows = json_object_get(report, "rows");
    int ok = 0, na = 0, skipped = 0;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *status = str(row, "status");
        if (strcmp(status, "n/a") == 0) {
            na++;
            assert_string_equal(str(row, "precision"), "fp16");
            continue;
        }
        assert_string_equal(str(row, "precision"), "fp32");
        if (strcmp(status, "skipped") == 0) {
            /* the mixed 4 x 16 cell: 64 padded tokens, over --ref-max-tokens 40 */
            skipped++;
            assert_string_equal(str(row, "mode"), "mixed");
            json_t *lens = json_object_get(row, "lengths");
            assert_int_equal(json_array_size(lens), 4);
            double real = 0;
            for (size_t k = 0; k < 4; k++) {
                double len = json_number_value(json_array_get(lens, k));
                assert_true(len >= BENCH_MIXED_MIN && len <= 16);
                real += len;
            }
            assert_float_equal(num(row, "real_tokens"), real, 0);
            continue;
        }
        assert_string_equal(status, "ok");
        ok++;
        const double batch = num(row, "batch"), width = num(row, "seq_len");
        assert_float_equal(num(row, "real_tokens"), batch * width, 0);
        const double reps = num(row, "repeats");
        assert_true(reps >= 3 && reps <= 5);
        json_t *lat = json_object_get(row, "latency_ms");
        assert_true(num(lat, "min") <= num(lat, "p50"));
        assert_true(num(lat, "p50") <= num(lat, "p90"));
        assert_true(num(lat, "p90") <= num(lat, "p99"));
        assert_true(num(lat, "p99") <= num(lat, "max"));
        assert_int_equal(json_array_size(json_object_get(row, "samples_ms")), (size_t)reps);
        /* every rate is the median latency's (the JSON keeps 7 significant digits) */
        const double p50 = num(lat, "p50") * 1e-3;
        assert_float_equal(num(row, "seq_per_s") * p50, batch, 1e-5 * batch);
        assert_float_equal(num(row, "tokens_per_s") * p50, batch * width, 1e-5 * batch * width);
        assert_true(num(row, "flops_per_batch") > 0);
        assert_float_equal(num(row, "gflops") * 1e9 * p50, num(row, "flops_per_batch"),
                           1e-5 * num(row, "flops_per_batch"));
        assert_float_equal(num(row, "peak_fraction") * num(row, "peak_gflops"), num(row, "gflops"),
                           1e-5 * num(row, "gflops"));
        assert_true(num(row, "weight_bytes") > 0 && num(row, "arena_bytes") > 0);
        assert_float_equal(num(row, "memory_bytes"), num(row, "weight_bytes") + num(row, "arena_bytes"), 0);
        json_t *warm = json_object_get(row, "warmup");
        assert_true(num(warm, "first_run_s") > 0 && num(warm, "session_create_s") >= 0);
        /* cpu_ref is bit-identical whether a sequence runs alone or in a batch */
        json_t *val = json_object_get(row, "validation");
        assert_string_equal(str(val, "status"), "pass");
        assert_float_equal(num(val, "max_rel"), 0, 0);
    }
    assert_int_equal(ok, 4);
    assert_int_equal(na, 1);
    assert_int_equal(skipped, 1);

    size_t n;
    char *csv = (char *)read_whole(csv_path, &n);
    const int header_fields = csv_fields(csv);
    assert_non_null(strstr(csv, "engine,backend,device,precision,mode,batch,seq_len,status"));
    int lines = 0;
    for (char *line = csv; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        assert_int_equal(csv_fields(line), header_fields);
        lines++;
    }
    assert_int_equal(lines, (int)json_array_size(rows) + 1);
    free(csv);

    char *svg = (char *)read_whole(svg_path, &n);
    assert_true(strncmp(svg, "<?xml", 5) == 0);
    assert_non_null(strstr(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_true(n > 7 && strcmp(svg + n - 7, "</svg>\n") == 0);
    assert_int_equal(count(svg, "<text"), count(svg, "</text>"));
    assert_true(count(svg, "<polyline") >= 2); /* batch 1 and 2 joined, at lengths 8 and 16 */
    assert_true(count(svg, "<circle") >= 4 + 3 * 4); /* throughput points and latency samples */
    assert_non_null(strstr(svg, "every row 16 tokens"));
    assert_null(strstr(svg, "nan"));
    free(svg);

    json_decref(report);
    free(json_path), free(csv_path), free(svg_path);
}

/* bench/peers.py appends rows of other engines and draws with --from: ratios appear. */
static void test_from_with_peer_rows(void **unused)
{
    char *json_path = test_path(tmp, "p.json"), *csv_path = test_path(tmp, "p.csv"),
         *svg_path = test_path(tmp, "p.svg"), *merged = test_path(tmp, "merged.json");
    json_t *report = run_tiny(json_path, csv_path, svg_path);
    json_t *rows = json_object_get(report, "rows");
    json_t *first = NULL, *row;
    size_t i;
    json_array_foreach(rows, i, row)
        if (!first && strcmp(json_string_value(json_object_get(row, "status")), "ok") == 0)
            first = row;
    assert_non_null(first);
    json_t *peer = json_deep_copy(first);
    json_object_set_new(peer, "engine", json_string("torch"));
    json_object_set_new(peer, "backend", json_string("cpu"));
    json_object_set_new(peer, "seq_per_s", json_real(num(first, "seq_per_s") / 2));
    json_array_append_new(rows, peer);
    assert_int_equal(json_dump_file(report, merged, 0), 0);

    char *table = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&table, &size);
    bench_print_table(f, report, NULL);
    fclose(f);
    assert_non_null(strstr(table, "x torch"));
    assert_non_null(strstr(table, "torch:cpu"));
    assert_non_null(strstr(table, "  2.00\n")); /* sqz:cpu_ref against the half-speed peer */
    assert_non_null(strstr(table, "n/a: sqz:cpu_ref fp16"));
    assert_non_null(strstr(table, "skipped: 1 cells of sqz:cpu_ref"));
    assert_non_null(strstr(table, "warm-up"));
    free(table);

    char *svg2 = test_path(tmp, "merged.svg");
    const char *argv[] = {"--from", merged, "--plot", svg2, "--baseline", "torch"};
    assert_int_equal(bench(6, argv), 0);
    size_t n;
    char *svg = (char *)read_whole(svg2, &n);
    assert_non_null(strstr(svg, "torch:cpu fp32"));
    assert_non_null(strstr(svg, "stroke-dasharray")); /* peers are dashed */
    free(svg);
    json_decref(report);
    free(json_path), free(csv_path), free(svg_path), free(merged), free(svg2);
}

/* --timing both --together on two sessions of one device: a latency and a throughput row per
 * device and cell, and one row for both devices at once; every output checked. */
static void test_throughput_rows(void **unused)
{
    char *json_path = test_path(tmp, "t.json");
    const char *argv[] = {"--random", "tiny", "--backends", "cpu_ref", "--devices", "cpu_ref,cpu_ref:0", "--batch", "2",
                          "--length", "8", "--mixed-batch", "none", "--precisions", "fp32", "--budget", "0.05", "--min-repeats", "3",
                          "--max-repeats", "6", "--peak-budget", "0", "--timing", "both", "--together",
                          "--json", json_path, "--quiet"};
    assert_int_equal(bench(sizeof argv / sizeof argv[0], argv), 0);
    json_error_t err;
    json_t *report = json_load_file(json_path, 0, &err);
    assert_non_null(report);
    json_t *rows = json_object_get(report, "rows"), *row;
    size_t i;
    int latency = 0, throughput = 0, together = 0;
    json_array_foreach(rows, i, row) {
        assert_string_equal(str(row, "status"), "ok");
        const double reps = num(row, "repeats");
        assert_int_equal(json_array_size(json_object_get(row, "samples_ms")), (size_t)reps);
        assert_string_equal(str(json_object_get(row, "validation"), "status"), "pass");
        assert_true(num(row, "seq_per_s") > 0);
        if (strcmp(str(row, "timing"), "latency") == 0) {
            latency++;
            continue;
        }
        assert_string_equal(str(row, "timing"), "throughput");
        if (num(row, "devices") == 2) { /* each device ran its share: at least 3 batches each */
            together++;
            assert_string_equal(str(row, "device"), "default+0");
            assert_true(reps >= 6 && reps <= 12);
        } else {
            throughput++;
            assert_true(reps >= 3 && reps <= 6);
        }
    }
    assert_int_equal(latency, 2);
    assert_int_equal(throughput, 2);
    assert_int_equal(together, 1);
    char *table = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&table, &size);
    bench_print_table(f, report, NULL);
    fclose(f);
    assert_non_null(strstr(table, "fixed/T"));
    assert_non_null(strstr(table, "sqz:cpu_ref:default+0"));
    free(table);
    json_decref(report);
    free(json_path);
}

static void test_usage_errors(void **unused)
{
    const char *both[] = {"--random", "tiny", "--model", "/nonexistent"};
    assert_int_equal(bench(4, both), 2);
    const char *neither[] = {"--batch", "1"};
    assert_int_equal(bench(2, neither), 2);
    const char *unknown[] = {"--random", "tiny", "--frobnicate"};
    assert_int_equal(bench(3, unknown), 2);
    const char *backend[] = {"--random", "tiny", "--backends", "nosuch"};
    assert_int_equal(bench(4, backend), 2);
    const char *precision[] = {"--random", "tiny", "--precisions", "fp64"};
    assert_int_equal(bench(4, precision), 2);
    const char *batch[] = {"--random", "tiny", "--batch", "1,,2"};
    assert_int_equal(bench(4, batch), 2);
    const char *outputs[] = {"--random", "tiny", "--outputs", "logits,,x"};
    assert_int_equal(bench(4, outputs), 2);
    /* an output the model lacks: the cell reports the error and the run fails (status 1) */
    const char *no_such[] = {"--random", "tiny", "--backends", "cpu_ref", "--precisions", "fp32", "--batch", "1",
                             "--length", "8", "--mixed-batch", "none", "--budget", "0.01", "--peak-budget", "0",
                             "--outputs", "pooler_output", "--quiet"};
    assert_int_equal(bench(19, no_such), 1);
    const char *timing[] = {"--random", "tiny", "--timing", "sometimes"};
    assert_int_equal(bench(4, timing), 2);
    const char *devices[] = {"--random", "tiny", "--devices", "cpu_ref,,opencl"};
    assert_int_equal(bench(4, devices), 2);
    const char *too_long[] = {"--random", "tiny", "--backends", "cpu_ref", "--length", "4096",
                              "--quiet"};
    assert_int_equal(bench(7, too_long), 2);
    char *bad = test_path(tmp, "bad.json");
    write_whole(bad, "{\"rows\": []}", 12);
    const char *from[] = {"--from", bad};
    assert_int_equal(bench(2, from), 1);
    free(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_inputs),
        cmocka_unit_test(test_report),
        cmocka_unit_test(test_from_with_peer_rows),
        cmocka_unit_test(test_throughput_rows),
        cmocka_unit_test(test_usage_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
