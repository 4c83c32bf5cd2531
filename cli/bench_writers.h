/* The report of `sqz bench` and its writers. A report is the JSON document --json writes
 * (schema BENCH_SCHEMA, described in bench/README.md); the table, CSV and SVG are all drawn
 * from it, so `--from FILE` redraws a report that bench/peers.py extended with its rows. */
#ifndef SQZ_TOOLS_BENCH_WRITERS_H
#define SQZ_TOOLS_BENCH_WRITERS_H

#include <jansson.h>
#include <stdio.h>

#define BENCH_SCHEMA "sqz-bench/1"

/* Loads a report; NULL (having said why on stderr) when the file is no BENCH_SCHEMA report. */
json_t *bench_read_report(const char *path);

/* Writers; each returns 0 on success. */
int bench_write_json(FILE *f, json_t *report);
int bench_write_csv(FILE *f, json_t *report);
int bench_write_svg(FILE *f, json_t *report);
/* The readable table; `baseline` names the engine the ratio column divides by (NULL: "torch"
 * when the report has torch rows, else no ratio column). */
void bench_print_table(FILE *f, json_t *report, const char *baseline);

/* The table on stdout (on stderr when a file goes to stdout), and each file whose path is
 * given ("-" is stdout); returns 0, or 1 when a file could not be written. */
int bench_write_report(json_t *report, const char *json_path, const char *csv_path,
                       const char *plot_path, const char *baseline);

#endif
