/* Shared helpers of the libFuzzer targets. Most parsers take a path, so each target writes
 * its input to a file in a private temporary folder (on tmpfs when there is one, so a write
 * costs microseconds) and calls the real entry point: what is fuzzed is exactly what the
 * engine runs on a downloaded file. */
#ifndef SQZ_TESTS_FUZZ_UTIL_H
#define SQZ_TESTS_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir_path[256];
static char fuzz_file_path[512];

static inline void fuzz_remove_dir(void)
{
    static const char *const names[] = {"input", "config.json", "vocab.txt", "tokenizer.json",
                                        "tokenizer_config.json", "model.bin"};
    char p[600];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", fuzz_dir_path, names[i]);
        unlink(p);
    }
    rmdir(fuzz_dir_path);
}

/* The private folder, made on first use and removed at exit. */
static inline const char *fuzz_dir(void)
{
    if (!fuzz_dir_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/sqz-fuzz-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(fuzz_dir_path)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_remove_dir);
    }
    return fuzz_dir_path;
}

/* Writes `data` to `name` in the private folder; returns the path (valid until the next
 * call). A write failure aborts: a harness that silently tests nothing is worse. */
static inline const char *fuzz_write(const char *name, const uint8_t *data, size_t size)
{
    snprintf(fuzz_file_path, sizeof fuzz_file_path, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(fuzz_file_path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror("fuzz: write");
        abort();
    }
    return fuzz_file_path;
}

/* Splits data at each occurrence of the two-byte separator 0xFF 0xFE (never valid UTF-8,
 * so it cannot clash with text) into at most `max` parts; returns the number of parts. */
static inline size_t fuzz_split(const uint8_t *data, size_t size, const uint8_t **parts, size_t *lens,
                         size_t max)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i + 1 < size && n + 1 < max; i++) {
        if (data[i] == 0xFF && data[i + 1] == 0xFE) {
            parts[n] = data + start;
            lens[n++] = i - start;
            start = i + 2;
            i++;
        }
    }
    parts[n] = data + start;
    lens[n++] = size - start;
    return n;
}

/* A failed invariant: abort so that libFuzzer records the input. */
#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#endif
