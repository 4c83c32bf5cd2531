/* The registry of backends compiled into this library (the table CMake generates), device
 * listings, and backend settings. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend.h"
#include "runtime/error.h"

static size_t backend_count(void)
{
    size_t n = 0;
    while (sqz_backend_table[n])
        n++;
    return n;
}

const sqz_backend_ops *sqz_backend_find(const char *name)
{
    for (size_t i = 0; sqz_backend_table[i]; i++)
        if (strcmp(sqz_backend_table[i]->name, name) == 0)
            return sqz_backend_table[i];
    return NULL;
}

const char *sqz_backend_name(size_t index)
{
    return index < backend_count() ? sqz_backend_table[index]->name : NULL;
}

bool sqz_backend_is_emulated(const char *name)
{
    const sqz_backend_ops *ops = name ? sqz_backend_find(name) : NULL;
    return ops && ops->emulated;
}

sqz_status sqz_backend_probe(const char *name)
{
    if (!name)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_backend_probe: name is required");
    const sqz_backend_ops *ops = sqz_backend_find(name);
    if (ops)
        return ops->probe ? ops->probe() : SQZ_OK;
    char known[128] = "";
    for (size_t i = 0; sqz_backend_table[i]; i++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                 sqz_backend_table[i]->name);
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "unknown backend '%s' (this build has: %s)", name, known);
}

/* Whether OpenCL lists a GPU: its device lines mark each device's type ("... [GPU] (...") */
static bool opencl_lists_gpu(void)
{
    const sqz_backend_ops *ops = sqz_backend_find("opencl");
    char *text = NULL;
    bool gpu = false;
    if (ops && ops->list_devices && ops->list_devices(&text) == SQZ_OK)
        for (const char *line = text; line && *line && !gpu;) {
            const char *end = strchr(line, '\n'), *mark = strstr(line, " [GPU] (");
            gpu = strncmp(line, "opencl ", 7) == 0 && mark && (!end || mark < end);
            line = end ? end + 1 : NULL;
        }
    free(text);
    return gpu;
}

const char *sqz_backend_auto(void)
{
    if (sqz_backend_probe("cuda") == SQZ_OK)
        return "cuda";
    /* without a GPU the cpu backend is the faster one: measured 2-4x PoCL's OpenCL on the same
     * cores (bench/RESULTS.md); on an OpenCL GPU, OpenCL */
    const bool opencl = sqz_backend_probe("opencl") == SQZ_OK;
    if (opencl && opencl_lists_gpu())
        return "opencl";
    if (sqz_backend_probe("cpu") == SQZ_OK)
        return "cpu";
    return opencl ? "opencl" : "cpu_ref";
}

sqz_status sqz_backend_check_dtype(const char *backend, const sqz_binding *b, const sqz_node *node, sqz_dtype stored)
{
    const sqz_dtype written = b->plan->graph.tensors[node->output].dtype;
    if (written == stored)
        return SQZ_OK;
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%s: node '%s' writes %s, but this backend stores activations as %s "
                    "at its precision: compile the plan at the backend's precision (sqz_compile_options)",
                    backend, node->name, sqz_dtype_name(written), sqz_dtype_name(stored));
}

double sqz_precision_op_tolerance(sqz_precision p)
{
    static const double bars[SQZ_PRECISION_COUNT] = {1e-4, 1e-2, 4.0 / 2048, 4.0 / 256};
    return (unsigned)p < SQZ_PRECISION_COUNT ? bars[p] : 1e-4;
}

sqz_status sqz_text_append(char **text, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    size_t old = *text ? strlen(*text) : 0;
    char *bigger = n >= 0 ? realloc(*text, old + (size_t)n + 1) : NULL;
    if (!bigger)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    va_start(args, fmt);
    vsnprintf(bigger + old, (size_t)n + 1, fmt, args);
    va_end(args);
    *text = bigger;
    return SQZ_OK;
}

sqz_status sqz_devices_describe(char **out)
{
    if (!out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_devices_describe: out is required");
    *out = NULL;
    sqz_status st = SQZ_OK;
    for (size_t i = 0; sqz_backend_table[i] && st == SQZ_OK; i++) {
        const sqz_backend_ops *ops = sqz_backend_table[i];
        st = ops->list_devices ? ops->list_devices(out) : sqz_text_append(out, "%-8s 0  (no listing)\n", ops->name);
    }
    for (size_t i = 0; sqz_backends_not_built[i] && st == SQZ_OK; i += 2)
        st = sqz_text_append(out, "%-8s -  not built in (%s)\n", sqz_backends_not_built[i], sqz_backends_not_built[i + 1]);
    if (st != SQZ_OK) {
        free(*out);
        *out = NULL;
    }
    return st;
}

/* the value of PREFIX.KEY in a settings text, or NULL; *len its length */
static const char *settings_find(const char *settings, const char *prefix, const char *key, size_t *len)
{
    const size_t np = strlen(prefix), nk = strlen(key);
    for (const char *item = settings; item && *item;) {
        const char *end = strchr(item, ';');
        const size_t n = end ? (size_t)(end - item) : strlen(item);
        if (n > np + nk + 1 && strncmp(item, prefix, np) == 0 && item[np] == '.' &&
            strncmp(item + np + 1, key, nk) == 0 && item[np + 1 + nk] == '=') {
            *len = n - (np + nk + 2);
            return item + np + nk + 2;
        }
        item = end ? end + 1 : NULL;
    }
    return NULL;
}

bool sqz_settings_get(const char *settings, const char *prefix, const char *key, char *out, size_t size)
{
    size_t len = 0;
    const char *v = settings_find(settings, prefix, key, &len);
    if (!v)
        return false;
    snprintf(out, size, "%.*s", (int)len, v);
    return true;
}

sqz_status sqz_settings_check(const char *settings, const char *prefix, const char *const *known)
{
    const size_t np = strlen(prefix);
    for (const char *item = settings; item && *item;) {
        const char *end = strchr(item, ';');
        const size_t n = end ? (size_t)(end - item) : strlen(item);
        if (n > np && strncmp(item, prefix, np) == 0 && item[np] == '.') {
            const char *key = item + np + 1, *eq = memchr(key, '=', n - np - 1);
            const size_t nk = eq ? (size_t)(eq - key) : n - np - 1;
            bool found = false;
            for (size_t i = 0; eq && known[i] && !found; i++)
                found = strlen(known[i]) == nk && strncmp(key, known[i], nk) == 0;
            if (!found) {
                char list[256] = "";
                for (size_t i = 0; known[i]; i++)
                    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s.%s", i ? ", " : "", prefix,
                             known[i]);
                return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "backend setting '%.*s' is not one %s takes (%s)", (int)n,
                                item, prefix, known[0] ? list : "it takes none");
            }
        }
        item = end ? end + 1 : NULL;
    }
    return SQZ_OK;
}
