/* The writers of `sqz bench`: the JSON report itself, and the CSV, the readable table and
 * the SVG plot drawn from it (cli/bench_writers.h). They read only the report, never the
 * run, so a report from --json (or one bench/peers.py extended) is drawn the same way. */
#include "cli/bench_writers.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading the report ------------------------------------------------------------------- */

static double jget_num(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *jget_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

/* Throughput rows (two runs in flight; --timing throughput) are apart from latency rows. */
static bool is_throughput(const json_t *row) { return strcmp(jget_str(row, "timing"), "throughput") == 0; }

json_t *bench_read_report(const char *path)
{
    json_error_t jerr;
    json_t *report = json_load_file(path, 0, &jerr);
    if (!report || strcmp(jget_str(report, "schema"), BENCH_SCHEMA) != 0 ||
        !json_is_array(json_object_get(report, "rows"))) {
        fprintf(stderr, "sqz bench: %s is not an %s report%s%s\n", path, BENCH_SCHEMA,
                report ? "" : ": ", report ? "" : jerr.text);
        json_decref(report);
        return NULL;
    }
    return report;
}

/* ---- writers ------------------------------------------------------------------------------- */

int bench_write_json(FILE *f, json_t *report)
{
    if (json_dumpf(report, f, JSON_INDENT(1) | JSON_REAL_PRECISION(7)) != 0)
        return 1;
    return fputc('\n', f) == EOF;
}

static void csv_str(FILE *f, const char *s)
{
    if (strpbrk(s, ",\"\n")) {
        fputc('"', f);
        for (; *s; s++) {
            if (*s == '"')
                fputc('"', f);
            fputc(*s == '\n' ? ' ' : *s, f);
        }
        fputc('"', f);
    } else {
        fputs(s, f);
    }
}

static void csv_num(FILE *f, double x)
{
    if (isfinite(x))
        fprintf(f, ",%.6g", x);
    else
        fputs(",", f);
}

int bench_write_csv(FILE *f, json_t *report)
{
    fputs("engine,backend,device,precision,mode,batch,seq_len,status,real_tokens,padded_tokens,"
          "repeats,seq_per_s,tokens_per_s,p50_ms,p90_ms,p99_ms,mean_ms,flops_per_batch,gflops,"
          "peak_gflops,peak_fraction,arena_bytes,weight_bytes,memory_bytes,session_create_s,"
          "first_run_s,plan_compile_s,validation,max_rel,threads,reason,timing,devices,device_ms\n", f);
    json_t *rows = json_object_get(report, "rows");
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *strs[] = {"engine", "backend", "device", "precision", "mode"};
        for (size_t k = 0; k < 5; k++) {
            if (k)
                fputc(',', f);
            csv_str(f, jget_str(row, strs[k]));
        }
        csv_num(f, jget_num(row, "batch"));
        csv_num(f, jget_num(row, "seq_len"));
        fputc(',', f);
        csv_str(f, jget_str(row, "status"));
        csv_num(f, jget_num(row, "real_tokens"));
        csv_num(f, jget_num(row, "padded_tokens"));
        csv_num(f, jget_num(row, "repeats"));
        csv_num(f, jget_num(row, "seq_per_s"));
        csv_num(f, jget_num(row, "tokens_per_s"));
        json_t *lat = json_object_get(row, "latency_ms");
        csv_num(f, jget_num(lat, "p50"));
        csv_num(f, jget_num(lat, "p90"));
        csv_num(f, jget_num(lat, "p99"));
        csv_num(f, jget_num(lat, "mean"));
        csv_num(f, jget_num(row, "flops_per_batch"));
        csv_num(f, jget_num(row, "gflops"));
        csv_num(f, jget_num(row, "peak_gflops"));
        csv_num(f, jget_num(row, "peak_fraction"));
        csv_num(f, jget_num(row, "arena_bytes"));
        csv_num(f, jget_num(row, "weight_bytes"));
        csv_num(f, jget_num(row, "memory_bytes"));
        json_t *warm = json_object_get(row, "warmup");
        csv_num(f, jget_num(warm, "session_create_s"));
        csv_num(f, jget_num(warm, "first_run_s"));
        csv_num(f, jget_num(warm, "plan_compile_s"));
        json_t *val = json_object_get(row, "validation");
        fputc(',', f);
        csv_str(f, jget_str(val, "status"));
        csv_num(f, jget_num(val, "max_rel"));
        fputc(',', f);
        csv_str(f, jget_str(row, "threads"));
        fputc(',', f);
        csv_str(f, jget_str(row, "reason"));
        fputc(',', f);
        csv_str(f, is_throughput(row) ? "throughput" : "latency");
        csv_num(f, jget_num(row, "devices"));
        csv_num(f, jget_num(row, "device_ms"));
        fputc('\n', f);
    }
    return ferror(f) != 0;
}

/* "sqz:opencl", "sqz:opencl:1", "torch:cpu": one name per engine, backend and device. */
static void row_name(const json_t *row, char *out, size_t size)
{
    const char *dev = jget_str(row, "device");
    bool show_dev = *dev && strcmp(dev, "default") != 0 && strcmp(dev, "-") != 0;
    snprintf(out, size, "%s:%s%s%s", jget_str(row, "engine"), jget_str(row, "backend"),
             show_dev ? ":" : "", show_dev ? dev : "");
}

/* The row of `engine` in the same cell as `row` (same mode, batch, length, precision). */
static const json_t *same_cell(json_t *rows, const json_t *row, const char *engine)
{
    size_t i;
    json_t *other;
    json_array_foreach(rows, i, other) {
        if (strcmp(jget_str(other, "engine"), engine) == 0 &&
            strcmp(jget_str(other, "status"), "ok") == 0 &&
            strcmp(jget_str(other, "mode"), jget_str(row, "mode")) == 0 &&
            is_throughput(other) == is_throughput(row) &&
            strcmp(jget_str(other, "precision"), jget_str(row, "precision")) == 0 &&
            jget_num(other, "batch") == jget_num(row, "batch") &&
            jget_num(other, "seq_len") == jget_num(row, "seq_len"))
            return other;
    }
    return NULL;
}

static void fmt_num(char *out, size_t size, double x, int width)
{
    if (!isfinite(x))
        snprintf(out, size, "%*s", width, "-");
    else if (fabs(x) >= 1000)
        snprintf(out, size, "%*.0f", width, x);
    else if (fabs(x) >= 100)
        snprintf(out, size, "%*.1f", width, x);
    else if (fabs(x) >= 1)
        snprintf(out, size, "%*.2f", width, x);
    else
        snprintf(out, size, "%*.3f", width, x);
}

static void fmt_fixed(char *out, size_t size, double x, int width, int decimals)
{
    if (isfinite(x))
        snprintf(out, size, "%*.*f", width, decimals, x);
    else
        snprintf(out, size, "%*s", width, "-");
}

/* The model, the machine, how it was timed, and every device with its peaks. */
static void print_run(FILE *f, json_t *report)
{
    json_t *meta = json_object_get(report, "run");
    json_t *model = json_object_get(report, "model");
    size_t i;
    json_t *dev;
    fprintf(f, "sqz bench: %s (%s), %.1f M parameters\n", jget_str(model, "architecture"),
            jget_str(model, "source"), jget_num(model, "parameters") / 1e6);
    fprintf(f, "run: %s on %s (%s cores), load average at start %s\n", jget_str(meta, "date"),
            jget_str(meta, "machine"), jget_str(meta, "cores"), jget_str(meta, "loadavg"));
    fprintf(f, "timing: %s\n", jget_str(meta, "timing"));
    fprintf(f, "devices and threads:\n");
    json_array_foreach(json_object_get(report, "devices"), i, dev) {
        char name[96];
        row_name(dev, name, sizeof name);
        if (strcmp(jget_str(dev, "status"), "ok") != 0) {
            fprintf(f, "  %-18s unavailable: %s\n", name, jget_str(dev, "reason"));
            continue;
        }
        fprintf(f, "  %-18s %s\n  %-18s threads: %s\n", name, jget_str(dev, "description"), "",
                jget_str(dev, "threads"));
        size_t k;
        json_t *p;
        json_array_foreach(json_object_get(dev, "peaks"), k, p) {
            if (strcmp(jget_str(p, "status"), "ok") == 0)
                fprintf(f, "  %-18s peak %s: %.1f GFLOP/s (%s, best of %d launches)\n", "",
                        jget_str(p, "precision"), jget_num(p, "gflops"), jget_str(p, "kernel"),
                        (int)jget_num(p, "launches"));
            else
                fprintf(f, "  %-18s peak %s: not measured: %s\n", "", jget_str(p, "precision"),
                        jget_str(p, "reason"));
        }
    }
}

/* One line of the main table: a timed cell, or its error. */
static void print_row(FILE *f, json_t *rows, json_t *row, const char *baseline)
{
    const char *status = jget_str(row, "status");
    char name[96];
    row_name(row, name, sizeof name);
    char n1[32], n2[32], n3[32], n4[32], n5[32], n6[32], n7[32], n8[32], n9[32];
    if (strcmp(status, "error") == 0) {
        fprintf(f, "%-18s %-5s %-5s%-2s %5d %5d  ERROR: %s\n", name, jget_str(row, "precision"),
                jget_str(row, "mode"), is_throughput(row) ? "/T" : "", (int)jget_num(row, "batch"),
                (int)jget_num(row, "seq_len"), jget_str(row, "reason"));
        return;
    }
    json_t *lat = json_object_get(row, "latency_ms"), *val = json_object_get(row, "validation");
    fmt_num(n1, sizeof n1, jget_num(row, "seq_per_s"), 8);
    fmt_num(n2, sizeof n2, jget_num(row, "tokens_per_s"), 8);
    fmt_num(n3, sizeof n3, jget_num(lat, "p50"), 8);
    fmt_num(n4, sizeof n4, jget_num(lat, "p90"), 8);
    fmt_num(n5, sizeof n5, jget_num(lat, "p99"), 8);
    fmt_num(n6, sizeof n6, jget_num(row, "gflops"), 8);
    fmt_num(n9, sizeof n9, jget_num(row, "device_ms"), 8);
    double frac = jget_num(row, "peak_fraction");
    if (isfinite(frac))
        snprintf(n7, sizeof n7, "%5.0f%%", frac * 100);
    else
        snprintf(n7, sizeof n7, "%6s", "-");
    double mem = jget_num(row, "memory_bytes");
    fmt_num(n8, sizeof n8, mem / 1048576.0, 8);
    char valid[48];
    const char *vs = jget_str(val, "status");
    if (isfinite(jget_num(val, "max_rel")))
        snprintf(valid, sizeof valid, "%s %.0e", vs, jget_num(val, "max_rel"));
    else
        snprintf(valid, sizeof valid, "%s", *vs ? vs : "-");
    fprintf(f, "%-18s %-5s %-5s%-2s %5d %5d %6lld %s %s %s %s %s %s %s %s %s %4d %-11s", name,
            jget_str(row, "precision"), jget_str(row, "mode"), is_throughput(row) ? "/T" : "",
            (int)jget_num(row, "batch"), (int)jget_num(row, "seq_len"), (long long)jget_num(row, "real_tokens"),
            n1, n2, n3, n4, n5, n9, n6, n7, n8, (int)jget_num(row, "repeats"), valid);
    if (baseline) {
        const json_t *base = same_cell(rows, row, baseline);
        if (base)
            fprintf(f, " %6.2f", jget_num(row, "seq_per_s") / jget_num(base, "seq_per_s"));
        else
            fprintf(f, " %6s", "-");
    }
    fputc('\n', f);
}

/* The rows without figures: n/a ones each, skipped ones one line per reason (the cells are
 * listed in the JSON and CSV). */
static void print_not_run(FILE *f, json_t *rows, int skipped)
{
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        if (strcmp(jget_str(row, "status"), "n/a") == 0) {
            char name[96];
            row_name(row, name, sizeof name);
            fprintf(f, "n/a: %s %s: %s\n", name, jget_str(row, "precision"), jget_str(row, "reason"));
        }
    }
    if (skipped) {
        json_t *seen = json_object();
        json_array_foreach(rows, i, row) {
            if (strcmp(jget_str(row, "status"), "skipped") != 0)
                continue;
            char key[700], name[96];
            row_name(row, name, sizeof name);
            snprintf(key, sizeof key, "%s: %s", name, jget_str(row, "reason"));
            json_t *c = json_object_get(seen, key);
            json_object_set_new(seen, key, json_integer(c ? json_integer_value(c) + 1 : 1));
        }
        const char *key;
        json_t *c;
        json_object_foreach(seen, key, c)
            fprintf(f, "skipped: %lld cells of %s\n", (long long)json_integer_value(c), key);
        json_decref(seen);
    }
}

/* Warm-up, excluded from every figure of the table. */
static void print_warmup(FILE *f, json_t *rows)
{
    size_t i;
    json_t *row;
    bool any_warm = false;
    json_array_foreach(rows, i, row) {
        json_t *warm = json_object_get(row, "warmup");
        if (!warm || strcmp(jget_str(row, "status"), "ok") != 0)
            continue;
        if (!any_warm)
            fprintf(f, "\nwarm-up (not in the figures above):\n  %-18s %-5s %-5s %9s %10s %10s %12s %13s\n",
                    "engine", "prec", "mode", "cell", "session s", "first s", "over p50 s",
                    "compile ms");
        any_warm = true;
        char name[96], cellname[32];
        row_name(row, name, sizeof name);
        snprintf(cellname, sizeof cellname, "%dx%d", (int)jget_num(row, "batch"),
                 (int)jget_num(row, "seq_len"));
        double first = jget_num(warm, "first_run_s");
        double p50 = jget_num(json_object_get(row, "latency_ms"), "p50") * 1e-3;
        char w1[32], w2[32], w3[32], w4[32];
        fmt_fixed(w1, sizeof w1, jget_num(warm, "session_create_s"), 10, 3);
        fmt_fixed(w2, sizeof w2, first, 10, 3);
        fmt_fixed(w3, sizeof w3, first - p50, 12, 3);
        fmt_fixed(w4, sizeof w4, jget_num(warm, "plan_compile_s") * 1e3, 13, 3);
        fprintf(f, "  %-18s %-5s %-5s %9s %s %s %s %s\n", name, jget_str(row, "precision"),
                jget_str(row, "mode"), cellname, w1, w2, w3, w4);
    }
    if (any_warm)
        fprintf(f, "  session: create (weights upload, kernel build); first: the first run (plan "
                "compile,\n  first launches); over p50: what the first run cost beyond a timed one\n");
}

/* What packing saved: each mixed cell against the same engine's padded (fixed) cell. */
static void print_mixed(FILE *f, json_t *report, json_t *rows)
{
    size_t i;
    json_t *row;
    bool any_mixed = false;
    json_array_foreach(rows, i, row) {
        if (strcmp(jget_str(row, "mode"), "mixed") != 0 || strcmp(jget_str(row, "status"), "ok") != 0)
            continue;
        if (!any_mixed)
            fprintf(f, "\nmixed lengths (%s):\n", jget_str(json_object_get(report, "settings"),
                                                          "mixed_lengths"));
        any_mixed = true;
        char name[96];
        row_name(row, name, sizeof name);
        double real = jget_num(row, "real_tokens"), padded = jget_num(row, "padded_tokens");
        double computed = jget_num(row, "computed_tokens");
        fprintf(f, "  %-18s batch %3d: %5.0f real tokens of %5.0f padded (%3.0f%%)", name,
                (int)jget_num(row, "batch"), real, padded, 100 * real / padded);
        if (isfinite(computed))
            fprintf(f, ", computes %5.0f", computed);
        /* the same engine, backend and device, every row full length */
        size_t k;
        json_t *other;
        const json_t *full = NULL;
        json_array_foreach(rows, k, other) {
            if (strcmp(jget_str(other, "mode"), "fixed") == 0 &&
                strcmp(jget_str(other, "status"), "ok") == 0 &&
                strcmp(jget_str(other, "engine"), jget_str(row, "engine")) == 0 &&
                strcmp(jget_str(other, "backend"), jget_str(row, "backend")) == 0 &&
                strcmp(jget_str(other, "device"), jget_str(row, "device")) == 0 &&
                strcmp(jget_str(other, "precision"), jget_str(row, "precision")) == 0 &&
                jget_num(other, "batch") == jget_num(row, "batch") &&
                jget_num(other, "seq_len") == jget_num(row, "seq_len"))
                full = other;
        }
        if (full) {
            double fr = jget_num(row, "flops_per_batch") / jget_num(full, "flops_per_batch");
            fprintf(f, "; %.2fx the seq/s of %dx%d full rows", jget_num(row, "seq_per_s") /
                    jget_num(full, "seq_per_s"), (int)jget_num(full, "batch"),
                    (int)jget_num(full, "seq_len"));
            if (isfinite(fr) && strcmp(jget_str(row, "engine"), "sqz") == 0) /* peers: ours */
                fprintf(f, ", %.2fx the FLOPs", fr);
        }
        fputc('\n', f);
    }
}

void bench_print_table(FILE *f, json_t *report, const char *baseline)
{
    json_t *rows = json_object_get(report, "rows");
    size_t i;
    json_t *row;
    /* the ratio column: against torch when the report has torch rows, unless told otherwise */
    if (!baseline) {
        json_array_foreach(rows, i, row)
            if (strcmp(jget_str(row, "engine"), "torch") == 0)
                baseline = "torch";
    }
    print_run(f, report);
    fprintf(f, "\n%-18s %-5s %-7s %5s %5s %6s %8s %8s %8s %8s %8s %8s %8s %6s %8s %4s %-11s",
            "engine", "prec", "mode", "batch", "len", "tokens", "seq/s", "tok/s", "p50 ms",
            "p90 ms", "p99 ms", "dev ms", "GFLOP/s", "%peak", "mem MiB", "runs", "valid");
    if (baseline)
        fprintf(f, " x %s", baseline);
    fputc('\n', f);
    int skipped = 0, errors = 0, throughput_rows = 0;
    json_array_foreach(rows, i, row) {
        const char *status = jget_str(row, "status");
        if (strcmp(status, "skipped") == 0) {
            skipped++;
            continue;
        }
        if (strcmp(status, "ok") != 0 && strcmp(status, "error") != 0)
            continue; /* n/a rows are listed after the table */
        if (strcmp(status, "error") == 0)
            errors++;
        else if (is_throughput(row))
            throughput_rows++;
        print_row(f, rows, row, baseline);
    }
    if (throughput_rows)
        fprintf(f, "/T: throughput, two runs in flight per device (and every listed device at once where the "
                "device is a+b): seq/s over the whole timed span; p50/p90/p99 are times between completions\n");
    print_not_run(f, rows, skipped);
    print_warmup(f, rows);
    print_mixed(f, report, rows);
    const char *vnote = jget_str(json_object_get(report, "settings"), "validation");
    if (*vnote)
        fprintf(f, "\nvalid: %s\n", vnote);
    if (errors)
        fprintf(f, "%d cell(s) failed; see the reasons above\n", errors);
}

/* ---- SVG ------------------------------------------------------------------------------------ */

static void svg_text(FILE *f, double x, double y, const char *anchor, int size, const char *extra,
                     const char *text)
{
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%d\"%s%s>", x, y, anchor,
            size, *extra ? " " : "", extra);
    for (const char *p = text; *p; p++) {
        if (*p == '<')
            fputs("&lt;", f);
        else if (*p == '>')
            fputs("&gt;", f);
        else if (*p == '&')
            fputs("&amp;", f);
        else if (*p == '"')
            fputs("&quot;", f);
        else
            fputc(*p, f);
    }
    fputs("</text>\n", f);
}

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

/* Series: one per engine, backend, device and precision; same colour in every panel. */
static void series_key(const json_t *row, char *out, size_t size)
{
    char name[96];
    row_name(row, name, sizeof name);
    snprintf(out, size, "%s %s%s", name, jget_str(row, "precision"), is_throughput(row) ? " throughput" : "");
}

static bool row_ok(const json_t *row)
{
    return strcmp(jget_str(row, "status"), "ok") == 0 && isfinite(jget_num(row, "seq_per_s")) &&
           jget_num(row, "seq_per_s") > 0;
}

static double log_floor(double x) { return pow(10, floor(log10(x))); }
static double log_ceil(double x) { return pow(10, ceil(log10(x))); }

static void tick_label(double v, char *out, size_t size)
{
    if (v >= 1)
        snprintf(out, size, "%.0f", v);
    else
        snprintf(out, size, "%g", v);
}

/* The page: panels of throughput against batch size, the legend under them, then the
 * latency of every cell. */
static const double svg_w = 1100, svg_top = 70, svg_ph = 260, svg_pad_l = 70, svg_gap = 40,
                    svg_row_h = 16;

/* What the rows hold: one panel per (mode, length), one series per engine, backend, device
 * and precision (same colour in every panel), and the ranges of the axes. */
typedef struct svg_panel {
    bool mixed;
    int len;
} svg_panel;

typedef struct svg_plot {
    svg_panel panels[8];
    int n_panels;
    char series[16][128];
    int n_series;
    double ymin, ymax, bmin, bmax, lmin, lmax; /* seq/s, batch, ms */
    int n_lat;                                 /* rows with figures: one latency line each */
} svg_plot;

static void svg_collect(json_t *rows, svg_plot *pl)
{
    size_t i;
    json_t *row;
    pl->n_panels = pl->n_series = pl->n_lat = 0;
    pl->ymin = pl->bmin = pl->lmin = INFINITY;
    pl->ymax = pl->bmax = pl->lmax = 0;
    json_array_foreach(rows, i, row) {
        if (!row_ok(row))
            continue;
        bool mixed = strcmp(jget_str(row, "mode"), "mixed") == 0;
        int len = (int)jget_num(row, "seq_len");
        int k = 0;
        while (k < pl->n_panels && !(pl->panels[k].mixed == mixed && pl->panels[k].len == len))
            k++;
        if (k == pl->n_panels && pl->n_panels < 8)
            pl->panels[pl->n_panels++] = (svg_panel){mixed, len};
        char key[128];
        series_key(row, key, sizeof key);
        int s = 0;
        while (s < pl->n_series && strcmp(pl->series[s], key) != 0)
            s++;
        if (s == pl->n_series && pl->n_series < 16)
            snprintf(pl->series[pl->n_series++], sizeof pl->series[0], "%s", key);
        pl->ymin = fmin(pl->ymin, jget_num(row, "seq_per_s"));
        pl->ymax = fmax(pl->ymax, jget_num(row, "seq_per_s"));
        pl->bmin = fmin(pl->bmin, jget_num(row, "batch"));
        pl->bmax = fmax(pl->bmax, jget_num(row, "batch"));
        size_t k2;
        json_t *v;
        json_array_foreach(json_object_get(row, "samples_ms"), k2, v) {
            pl->lmin = fmin(pl->lmin, json_number_value(v));
            pl->lmax = fmax(pl->lmax, json_number_value(v));
        }
        pl->n_lat++;
    }
    for (int a = 1; a < pl->n_panels; a++) /* fixed before mixed, then by length */
        for (int b = a; b > 0 && (pl->panels[b].mixed < pl->panels[b - 1].mixed ||
                                  (pl->panels[b].mixed == pl->panels[b - 1].mixed &&
                                   pl->panels[b].len < pl->panels[b - 1].len));
             b--) {
            svg_panel t = pl->panels[b];
            pl->panels[b] = pl->panels[b - 1];
            pl->panels[b - 1] = t;
        }
}

/* Panel p: its frame and axes, then every series' points by batch. The y axis runs over
 * whole decades [ymin, ymax]; the x axis over log2 batch [lb0, lb1]. */
static void svg_throughput_panel(FILE *f, json_t *rows, const svg_plot *pl, int p, double pw,
                                 double lb0, double lb1, bool label_minor)
{
    const double top = svg_top, ph = svg_ph;
    const double ymin = pl->ymin, ymax = pl->ymax;
    const svg_panel *panels = pl->panels;
    const int n_series = pl->n_series;
    size_t i;
    json_t *row;
    const double x0 = svg_pad_l + p * (pw + svg_gap), y0 = top, x1 = x0 + pw, y1 = top + ph;
    char heading[96];
    if (panels[p].mixed)
        snprintf(heading, sizeof heading, "mixed lengths up to %d tokens", panels[p].len);
    else
        snprintf(heading, sizeof heading, "every row %d tokens", panels[p].len);
    svg_text(f, (x0 + x1) / 2, y0 - 8, "middle", 12, "font-weight=\"bold\"", heading);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"#888\"/>\n", x0, y0, pw, ph);
    /* decades on y, with 2 and 5 as faint lines */
    for (double d = ymin; d <= ymax * 1.0001; d *= 10) {
        for (int m = 1; m <= 5; m += (m == 1 ? 1 : 3)) {
            double v = d * m;
            if (v > ymax * 1.0001)
                break;
            double y = y1 - (log10(v) - log10(ymin)) / (log10(ymax) - log10(ymin)) * ph;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n",
                    x0, y, x1, y, m == 1 ? "#ccc" : "#eee");
            if ((m == 1 || label_minor) && p == 0) {
                char t[32];
                tick_label(v, t, sizeof t);
                svg_text(f, x0 - 6, y + 4, "end", 11, "", t);
            }
        }
    }
    for (double lb = ceil(lb0); lb <= lb1 + 1e-9; lb += 1) {
        double x = x0 + (lb - lb0) / (lb1 - lb0) * pw;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n",
                x, y0, x, y1);
        char t[32];
        snprintf(t, sizeof t, "%.0f", pow(2, lb));
        svg_text(f, x, y1 + 16, "middle", 11, "", t);
    }
    svg_text(f, (x0 + x1) / 2, y1 + 34, "middle", 11, "", "batch size");
    if (p == 0) {
        char rot[96];
        snprintf(rot, sizeof rot, "transform=\"rotate(-90 %.1f %.1f)\"", x0 - 48, (y0 + y1) / 2);
        svg_text(f, x0 - 48, (y0 + y1) / 2, "middle", 11, rot, "sequences / s");
    }
    for (int s = 0; s < n_series; s++) {
        /* this series' points in this panel, by batch */
        double px[64], py[64];
        int np = 0;
        json_array_foreach(rows, i, row) {
            char key[128];
            series_key(row, key, sizeof key);
            if (!row_ok(row) || strcmp(key, pl->series[s]) != 0 ||
                (strcmp(jget_str(row, "mode"), "mixed") == 0) != panels[p].mixed ||
                (int)jget_num(row, "seq_len") != panels[p].len || np == 64)
                continue;
            double bx = x0 + (log2(jget_num(row, "batch")) - lb0) / (lb1 - lb0) * pw;
            double by = y1 - (log10(jget_num(row, "seq_per_s")) - log10(ymin)) /
                                 (log10(ymax) - log10(ymin)) * ph;
            int k = np++;
            while (k > 0 && px[k - 1] > bx) {
                px[k] = px[k - 1];
                py[k] = py[k - 1];
                k--;
            }
            px[k] = bx;
            py[k] = by;
        }
        const char *color = palette[s % 10];
        const char *dash = strncmp(pl->series[s], "sqz:", 4) == 0 ? "" : " stroke-dasharray=\"6 3\"";
        if (np > 1) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", color, dash);
            for (int k = 0; k < np; k++)
                fprintf(f, "%s%.1f,%.1f", k ? " " : "", px[k], py[k]);
            fputs("\"/>\n", f);
        }
        for (int k = 0; k < np; k++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", px[k], py[k], color);
    }
}

/* Solid lines are this engine, dashed ones the peers. */
static void svg_legend(FILE *f, const svg_plot *pl)
{
    const double W = svg_w, top = svg_top, ph = svg_ph, pad_l = svg_pad_l;
    const int n_series = pl->n_series;
    for (int s = 0; s < n_series; s++) {
        double lx = pad_l + (s % 3) * 330, ly = top + ph + 56 + 22.0 * (s / 3);
        const char *dash = strncmp(pl->series[s], "sqz:", 4) == 0 ? "" : " stroke-dasharray=\"6 3\"";
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"3\"%s/>\n", lx, ly - 4, lx + 28, ly - 4, palette[s % 10], dash);
        svg_text(f, lx + 34, ly, "start", 12, "", pl->series[s]);
    }
    svg_text(f, W - 20, top + ph + 56 + 22.0 * ((n_series - 1) / 3) + 22, "end", 11, "fill=\"#444\"",
             "solid: sqz backends; dashed: peers. Mixed batches: sqz packs the real tokens, "
             "peers pad to the longest row");
}

/* Every timed run as a dot, p50 as a bar, p90 and p99 as ticks; one line per row. */
static void svg_latency(FILE *f, json_t *rows, const svg_plot *pl, double lat_top)
{
    const double W = svg_w, row_h = svg_row_h;
    double lmin = pl->lmin, lmax = pl->lmax;
    const int n_lat = pl->n_lat, n_series = pl->n_series;
    size_t i;
    json_t *row;
    svg_text(f, W / 2, lat_top, "middle", 12, "font-weight=\"bold\"",
             "latency per batch (ms, log scale): dots = every timed run, bar = p50, ticks = p90 and p99");
    lmin = log_floor(lmin);
    lmax = log_ceil(lmax);
    if (lmax <= lmin)
        lmax = lmin * 10;
    const double lx0 = 330, lx1 = W - 30, ly0 = lat_top + 16;
    const double ly1 = ly0 + row_h * n_lat + 8;
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n",
            lx0, ly0, lx1 - lx0, ly1 - ly0);
    for (double d = lmin; d <= lmax * 1.0001; d *= 10) {
        double x = lx0 + (log10(d) - log10(lmin)) / (log10(lmax) - log10(lmin)) * (lx1 - lx0);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ccc\"/>\n", x, ly0, x, ly1);
        char t[32];
        tick_label(d, t, sizeof t);
        svg_text(f, x, ly1 + 15, "middle", 11, "", t);
    }
    int r = 0;
    json_array_foreach(rows, i, row) {
        if (!row_ok(row))
            continue;
        char key[128], label[200];
        series_key(row, key, sizeof key);
        int s = 0;
        while (s < n_series && strcmp(pl->series[s], key) != 0)
            s++;
        snprintf(label, sizeof label, "%s %s %dx%d", key, jget_str(row, "mode"),
                 (int)jget_num(row, "batch"), (int)jget_num(row, "seq_len"));
        double y = ly0 + 4 + row_h * (r + 0.5);
        svg_text(f, lx0 - 6, y + 4, "end", 10, "", label);
        const char *color = palette[s % 10];
        size_t k;
        json_t *v;
        json_array_foreach(json_object_get(row, "samples_ms"), k, v) {
            double x = lx0 + (log10(json_number_value(v)) - log10(lmin)) / (log10(lmax) - log10(lmin)) * (lx1 - lx0);
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.2\" fill=\"%s\" fill-opacity=\"0.45\"/>\n",
                    x, y, color);
        }
        json_t *lat = json_object_get(row, "latency_ms");
        const char *keys[] = {"p50", "p90", "p99"};
        for (int q = 0; q < 3; q++) {
            double val = jget_num(lat, keys[q]);
            if (!isfinite(val) || val <= 0)
                continue;
            double x = lx0 + (log10(val) - log10(lmin)) / (log10(lmax) - log10(lmin)) * (lx1 - lx0);
            double hh = q == 0 ? 6.5 : 4;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                    "stroke-width=\"%s\"/>\n", x, y - hh, x, y + hh, q == 0 ? "black" : color,
                    q == 0 ? "2.5" : "1.5");
        }
        r++;
    }
    svg_text(f, (lx0 + lx1) / 2, ly1 + 32, "middle", 11, "", "milliseconds per batch");
}

int bench_write_svg(FILE *f, json_t *report)
{
    json_t *rows = json_object_get(report, "rows");
    svg_plot plot, *pl = &plot;
    svg_collect(rows, pl);
    const int n_panels = pl->n_panels, n_series = pl->n_series, n_lat = pl->n_lat;
    const double W = svg_w, top = svg_top, ph = svg_ph, pad_l = svg_pad_l, gap = svg_gap;
    const double legend_h = 22.0 * ((n_series + 2) / 3) + 30;
    const double lat_top = top + ph + 60 + legend_h;
    const double H = lat_top + 50 + svg_row_h * (n_lat ? n_lat : 1) + 40;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    json_t *model = json_object_get(report, "model"), *meta = json_object_get(report, "run");
    char title[512];
    snprintf(title, sizeof title, "sqz bench: %s (%s), %s, %s", jget_str(model, "architecture"),
             jget_str(model, "source"), jget_str(meta, "machine"), jget_str(meta, "date"));
    svg_text(f, W / 2, 24, "middle", 15, "font-weight=\"bold\"", title);
    svg_text(f, W / 2, 44, "middle", 12, "fill=\"#444\"",
             "throughput (sequences/s, log scale) against batch size, per backend and precision");
    if (n_panels == 0) {
        svg_text(f, W / 2, top + 40, "middle", 13, "", "no cell ran");
        fputs("</svg>\n", f);
        return ferror(f) != 0;
    }
    pl->ymin = log_floor(pl->ymin);
    pl->ymax = log_ceil(pl->ymax);
    if (pl->ymax <= pl->ymin)
        pl->ymax = pl->ymin * 10;
    const double bmin = pl->bmin, bmax = pl->bmax;
    /* a quarter of a doubling of margin on each side, so end points are not cut in half */
    const double lb0 = log2(bmin) - 0.25,
                 lb1 = (log2(bmax) > log2(bmin) ? log2(bmax) : log2(bmin) + 1) + 0.25;
    const bool label_minor = log10(pl->ymax) - log10(pl->ymin) <= 2.01; /* few decades: label 2 and 5 */
    const double pw = (W - pad_l - 20 - gap * (n_panels - 1)) / n_panels;
    for (int p = 0; p < n_panels; p++)
        svg_throughput_panel(f, rows, pl, p, pw, lb0, lb1, label_minor);
    svg_legend(f, pl);
    svg_latency(f, rows, pl, lat_top);
    fputs("</svg>\n", f);
    return ferror(f) != 0;
}

/* ---- all of them -------------------------------------------------------------------------- */

int bench_write_report(json_t *report, const char *json_path, const char *csv_path,
                       const char *plot_path, const char *baseline)
{
    int rc = 0;
    bool to_stdout = (json_path && strcmp(json_path, "-") == 0) || (csv_path && strcmp(csv_path, "-") == 0) ||
                     (plot_path && strcmp(plot_path, "-") == 0);
    bench_print_table(to_stdout ? stderr : stdout, report, baseline);
    struct { const char *path; int (*write)(FILE *, json_t *); } outs[] = {
        {json_path, bench_write_json}, {csv_path, bench_write_csv}, {plot_path, bench_write_svg}};
    for (size_t k = 0; k < 3; k++) {
        if (!outs[k].path)
            continue;
        FILE *f = strcmp(outs[k].path, "-") == 0 ? stdout : fopen(outs[k].path, "w");
        int err = !f || outs[k].write(f, report);
        if (f && f != stdout)
            err |= fclose(f) != 0;
        if (err) {
            fprintf(stderr, "sqz bench: cannot write %s%s%s\n", outs[k].path, errno ? ": " : "",
                    errno ? strerror(errno) : "");
            rc = 1;
        } else if (f != stdout) {
            fprintf(to_stdout ? stderr : stdout, "wrote %s\n", outs[k].path);
        }
    }
    return rc;
}
