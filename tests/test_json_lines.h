/* JSON Lines files in the tests: one json_t per line. Header-only, like test_util.h. */
#ifndef SQZ_TESTS_TEST_JSON_LINES_H
#define SQZ_TESTS_TEST_JSON_LINES_H

#include <jansson.h>

#include "tests/test_util.h"

/* One json_t per line, NULL where a line is not JSON (or repeats a key, as sqz infer refuses
 * it); *count gets the lines. */
static inline json_t **read_lines(const char *path, size_t *count)
{
    size_t n;
    char *text = (char *)read_whole(path, &n);
    size_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    json_t **out = (json_t **)calloc(lines + 1, sizeof *out);
    assert_non_null(out);
    char *line = text;
    for (size_t k = 0; k < lines; k++) {
        char *end = (char *)memchr(line, '\n', (size_t)(text + n - line));
        out[k] = json_loadb(line, (size_t)(end - line), JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, NULL);
        line = end + 1;
    }
    free(text);
    *count = lines;
    return out;
}

static inline void free_lines(json_t **lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(lines[i]);
    free(lines);
}

#endif
