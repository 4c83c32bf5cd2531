/* The registry of backends compiled into this library. */
#include <string.h>

#include "runtime/backend.h"
#include "runtime/error.h"

#ifdef SQZ_HAVE_CUDA
sqz_status sqz_cuda_probe(void);
#endif
#ifdef SQZ_HAVE_OPENCL
sqz_status sqz_opencl_probe(void);
#endif

static const sqz_backend_ops *const runnable[] = {&sqz_cpu_ref_backend};

/* Backends that are compiled in for device discovery but cannot run plans yet. */
typedef struct probe_only {
    const char *name;
    sqz_status (*probe)(void);
} probe_only;

static const probe_only probe_only_backends[] = {
#ifdef SQZ_HAVE_OPENCL
    {"opencl", sqz_opencl_probe},
#endif
#ifdef SQZ_HAVE_CUDA
    {"cuda", sqz_cuda_probe},
#endif
    {NULL, NULL},
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
    size_t n_runnable = sizeof runnable / sizeof runnable[0];
    if (index < n_runnable)
        return runnable[index]->name;
    index -= n_runnable;
    size_t n_probe = sizeof probe_only_backends / sizeof probe_only_backends[0] - 1;
    return index < n_probe ? probe_only_backends[index].name : NULL;
}

sqz_status sqz_backend_probe(const char *name)
{
    if (!name)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_backend_probe: name is required");
    const sqz_backend_ops *ops = sqz_backend_find(name);
    if (ops)
        return ops->probe ? ops->probe() : SQZ_OK;
    for (const probe_only *p = probe_only_backends; p->name; p++)
        if (strcmp(p->name, name) == 0) {
            sqz_status s = p->probe();
            if (s != SQZ_OK)
                return s;
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "backend '%s' found a device but cannot run plans yet in this build",
                            name);
        }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                    "unknown backend '%s' (this build has: cpu_ref%s%s)", name,
#ifdef SQZ_HAVE_OPENCL
                    ", opencl (device probe only)",
#else
                    "",
#endif
#ifdef SQZ_HAVE_CUDA
                    ", cuda (device probe only)"
#else
                    ""
#endif
    );
}
