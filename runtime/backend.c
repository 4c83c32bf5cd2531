/* The registry of backends compiled into this library. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend.h"
#include "runtime/error.h"

static const sqz_backend_ops *const runnable[] = {
    &sqz_cpu_ref_backend,
#ifdef SQZ_HAVE_CPU
    &sqz_cpu_backend,
#endif
#ifdef SQZ_HAVE_OPENCL
    &sqz_opencl_backend,
#endif
#ifdef SQZ_HAVE_CUDA
    &sqz_cuda_backend,
#endif
#ifdef SQZ_HAVE_CUDA_SIM
    &sqz_cuda_sim_backend,
#endif
};

const sqz_backend_ops *sqz_backend_find(const char *name)
{
    for (size_t i = 0; i < sizeof runnable / sizeof runnable[0]; i++)
        if (strcmp(runnable[i]->name, name) == 0)
            return runnable[i];
    return NULL;
}

const char *sqz_backend_name(size_t index)
{
    return index < sizeof runnable / sizeof runnable[0] ? runnable[index]->name : NULL;
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
    for (size_t i = 0; i < sizeof runnable / sizeof runnable[0]; i++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", runnable[i]->name);
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "unknown backend '%s' (this build has: %s)", name, known);
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
    sqz_status st = sqz_text_append(out, "cpu_ref  0  host CPU, scalar reference (always available)\n");
#ifdef SQZ_HAVE_CPU
    if (st == SQZ_OK)
        st = sqz_cpu_list_devices(out);
#else
    if (st == SQZ_OK)
        st = sqz_text_append(out, "cpu      -  not built in (install libdnnl-dev; -DSQZ_WITH_CPU=ON)\n");
#endif
#ifdef SQZ_HAVE_OPENCL
    if (st == SQZ_OK)
        st = sqz_opencl_list_devices(out);
#else
    if (st == SQZ_OK)
        st = sqz_text_append(out, "opencl   -  not built in (configure with -DSQZ_WITH_OPENCL=ON)\n");
#endif
#ifdef SQZ_HAVE_CUDA
    if (st == SQZ_OK)
        st = sqz_cuda_list_devices(out);
#else
    if (st == SQZ_OK)
        st = sqz_text_append(out, "cuda     -  not built in (configure with -DSQZ_WITH_CUDA=ON)\n");
#endif
#ifdef SQZ_HAVE_CUDA_SIM
    if (st == SQZ_OK)
        st = sqz_cuda_sim_list_devices(out);
#endif
    if (st != SQZ_OK) {
        free(*out);
        *out = NULL;
    }
    return st;
}
