/* Small helpers shared by the tests: temporary directories, file copies, random data and
 * assertions on error messages. Header-only so each test stays one executable. */
#ifndef SQZ_TESTS_TEST_UTIL_H
#define SQZ_TESTS_TEST_UTIL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __cplusplus /* cmocka's header has no C++ linkage block of its own */
extern "C" {
#endif
#include <cmocka.h>
#ifdef __cplusplus
}
#endif

#include "squeezebert.h"

/* Fails the test with the engine's message unless `expr` is SQZ_OK. */
#define assert_sqz_ok(expr)                                                                \
    do {                                                                                   \
        sqz_status st_ = (expr);                                                           \
        if (st_ != SQZ_OK)                                                                 \
            fail_msg("%s returned %s: %s", #expr, sqz_status_str(st_), sqz_last_error()); \
    } while (0)

/* Asserts a failing status and that the message contains every given fragment. */
static inline void assert_failure_mentions(sqz_status got, sqz_status expected, const char *what,
                                           const char *const *fragments, size_t n)
{
    const char *msg = sqz_last_error();
    if (got != expected)
        fail_msg("%s: expected status '%s', got '%s' (message: %s)", what,
                 sqz_status_str(expected), sqz_status_str(got), msg);
    for (size_t i = 0; i < n; i++)
        if (!strstr(msg, fragments[i]))
            fail_msg("%s: message lacks \"%s\": %s", what, fragments[i], msg);
}

#define assert_fails_with(expr, status, ...)                                               \
    do {                                                                                   \
        const char *const frags_[] = {__VA_ARGS__};                                        \
        assert_failure_mentions((expr), (status), #expr, frags_,                           \
                                sizeof frags_ / sizeof frags_[0]);                         \
    } while (0)

static inline char *test_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = (char *)malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static inline char *make_temp_dir(void)
{
    char *dir = strdup("/tmp/sqz-test-XXXXXX");
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

/* Removes a flat directory made by make_temp_dir (files only, no subfolders). */
static inline void remove_temp_dir(char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static inline unsigned char *read_whole(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = (unsigned char *)malloc((size_t)n + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    data[n] = 0;
    *size = (size_t)n;
    return data;
}

static inline void write_whole(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot write %s", path);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

static inline void copy_file(const char *from, const char *to)
{
    size_t n;
    unsigned char *data = read_whole(from, &n);
    write_whole(to, data, n);
    free(data);
}

/* Deterministic uniform floats in [-1, 1) for op tests. */
static inline float test_uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*state >> 11) / 4503599627370496.0 - 1.0);
}

#endif
