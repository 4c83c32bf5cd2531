/* Command-line options shared by every sqz subcommand: --name value or --name=value,
 * flags without a value, integers with a range, --help anywhere. */
#include "cli/cli_options.h"

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "squeezebert.h"

/* Accepts --name value and --name=value; returns non-zero (message printed) on misuse. */
int cli_parse(const char *command, int argc, char **argv, cli_option *opts, size_t n)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "sqz %s: unexpected argument '%s' (see sqz %s --help)\n", command, arg,
                    command);
            return 1;
        }
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        cli_option *match = NULL;
        for (size_t k = 0; k < n; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, arg + 2, len) == 0)
                match = &opts[k];
        if (!match) {
            fprintf(stderr, "sqz %s: unknown option '%s' (see sqz %s --help)\n", command, arg, command);
            return 1;
        }
        if (!match->takes_value) {
            if (eq) {
                fprintf(stderr, "sqz %s: option --%s takes no value\n", command, match->name);
                return 1;
            }
            match->value = "1";
        } else if (eq) {
            match->value = eq + 1;
        } else if (i + 1 < argc) {
            match->value = argv[++i];
        } else {
            fprintf(stderr, "sqz %s: option --%s needs a value\n", command, match->name);
            return 1;
        }
    }
    return 0;
}

const char *cli_get(const cli_option *opts, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(opts[k].name, name) == 0)
            return opts[k].value;
    return NULL;
}

int cli_int(const char *command, const char *name, const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || !end || *end || end == text || v < min || v > max) {
        fprintf(stderr, "sqz %s: --%s must be an integer in %ld..%ld, got '%s'\n", command, name,
                min, max, text);
        return 1;
    }
    *out = v;
    return 0;
}

bool cli_wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

const char *cli_backend_settings(void)
{
    static const struct { const char *env, *setting; } map[] = {
        {"SQZ_CUDA_SYNC", "cuda.sync"},       {"SQZ_CUDA_GRAPHS", "cuda.graphs"},
        {"SQZ_CUDA_MEASURE", "cuda.measure"}, {"SQZ_CUDA_REPORT", "cuda.report"},
        {"SQZ_CUDA_VARIANTS", "cuda.variants"}, {"SQZ_CUDA_PDL", "cuda.pdl"},
        {"SQZ_CACHE_DIR", "opencl.cache_dir"},
    };
    static char settings[2048];
    settings[0] = '\0';
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *v = getenv(map[i].env);
        if (v && *v && !strchr(v, ';'))
            snprintf(settings + strlen(settings), sizeof settings - strlen(settings), "%s%s=%s",
                     settings[0] ? ";" : "", map[i].setting, v);
    }
    return settings[0] ? settings : NULL;
}

/* A positive byte count from the environment; 0 (the library's default) when unset or not one */
static size_t env_byte_count(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    char *end = NULL;
    const unsigned long long n = strtoull(v, &end, 10);
    return *end == '\0' && n <= SIZE_MAX ? (size_t)n : 0;
}

sqz_status cli_load_model(const char *dir, sqz_model **out)
{
    const sqz_model_load_options limits = {
        .max_header_bytes = env_byte_count("SQZ_MAX_HEADER_BYTES"),
        .max_pickle_bytes = env_byte_count("SQZ_MAX_PICKLE_BYTES"),
    };
    return sqz_model_load(dir, &limits, out);
}

sqz_session_options cli_session_options(const char *backend, const char *device, sqz_precision precision)
{
    const char *debug = getenv("SQZ_DEBUG"), *guard = getenv("SQZ_GUARD_BYTES");
    const char *unfused = getenv("SQZ_DISABLE_FUSION");
    sqz_session_options o = {
        .backend = backend,
        .device = device,
        .precision = precision,
        .settings = cli_backend_settings(),
        .debug = debug ? atoi(debug) : 0,
        .guard_bytes = guard ? (size_t)strtoul(guard, NULL, 10) : 0,
        .unfused = unfused && *unfused && strcmp(unfused, "0") != 0,
        .fault_launch = getenv("SQZ_FAULT_LAUNCH"),
        .fault_alloc = getenv("SQZ_FAULT_ALLOC"),
    };
    return o;
}

const char *cli_pick_backend(const char *wanted)
{
    return strcmp(wanted, "auto") == 0 ? sqz_backend_auto() : wanted;
}

int cli_device_for(const char *command, const char *backend, const char *device, const char *threads,
                   char *buf, size_t size, const char **out)
{
    *out = device;
    if (!threads)
        return 0;
    long n = 0;
    if (cli_int(command, "threads", threads, 1, 1024, &n))
        return 1;
    if (strcmp(backend, "cpu") != 0) {
        fprintf(stderr, "sqz %s: --threads is for the cpu backend (this run is on %s)\n", command, backend);
        return 1;
    }
    if (device) {
        fprintf(stderr, "sqz %s: give --threads or --device threads=N, not both\n", command);
        return 1;
    }
    snprintf(buf, size, "threads=%ld", n);
    *out = buf;
    return 0;
}

int cli_devices_of(const char *backend, cli_device *out, int max)
{
    char *text = NULL;
    int n = 0;
    if (sqz_devices_describe(&text) != SQZ_OK || !text)
        return 0;
    for (const char *line = text; *line && n < max;) {
        char bk[64], idx[64];
        if (sscanf(line, "%63s %63s", bk, idx) == 2 && strcmp(bk, backend) == 0 && strcmp(idx, "-") != 0) {
            snprintf(out[n].backend, sizeof out[0].backend, "%s", bk);
            snprintf(out[n++].device, sizeof out[0].device, "%s", idx);
        }
        const char *end = strchr(line, '\n');
        line = end ? end + 1 : line + strlen(line);
    }
    free(text);
    return n;
}

int cli_parse_devices(const char *command, const char *spec, cli_device *out, int max)
{
    int n = 0;
    for (const char *p = spec;;) {
        const char *comma = strchr(p, ',');
        const size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        const size_t blen = colon ? (size_t)(colon - p) : len;
        if (len == 0 || blen == 0 || blen >= sizeof out[0].backend || (colon && len - blen - 1 >= sizeof out[0].device)) {
            fprintf(stderr, "sqz %s: --devices takes BACKEND[:DEVICE],... (e.g. cuda:0,cuda:1), got '%s'\n", command,
                    spec);
            return -1;
        }
        if (n == max) {
            fprintf(stderr, "sqz %s: --devices names more than %d devices\n", command, max);
            return -1;
        }
        snprintf(out[n].backend, sizeof out[n].backend, "%.*s", (int)blen, p);
        snprintf(out[n++].device, sizeof out[0].device, "%.*s", colon ? (int)(len - blen - 1) : 0,
                 colon ? colon + 1 : "");
        if (!comma)
            return n;
        p = comma + 1;
    }
}

int cli_resolve_devices(const char *command, const char *backend, const char *device, const char *devices,
                        cli_device *out, int max)
{
    if (!devices) {
        snprintf(out[0].backend, sizeof out[0].backend, "%s", backend);
        snprintf(out[0].device, sizeof out[0].device, "%s", device ? device : "");
        return 1;
    }
    if (strcmp(devices, "all") == 0) {
        const int n = cli_devices_of(backend, out, max);
        if (n == 0)
            fprintf(stderr, "sqz %s: --devices all: backend %s lists no device (sqz devices)\n", command, backend);
        return n;
    }
    const int n = cli_parse_devices(command, devices, out, max);
    return n < 0 ? 0 : n;
}

double cli_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_remove_checkpoint(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}
