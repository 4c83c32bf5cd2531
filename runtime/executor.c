/* The executor's backend instance and launch loop (runtime/executor.h). */
#include "runtime/executor.h"

#include <string.h>

#include "runtime/error.h"

sqz_status sqz_executor_open(sqz_executor *x, const char *backend, const char *device,
                             const char *settings, sqz_precision precision)
{
    memset(x, 0, sizeof *x);
    const char *name = backend ? backend : "cpu_ref";
    if ((unsigned)precision >= SQZ_PRECISION_COUNT)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "precision %d is not one of sqz_precision", (int)precision);
    sqz_status st = sqz_backend_probe(name);
    if (st != SQZ_OK)
        return st;
    const sqz_backend_ops *ops = sqz_backend_find(name);
    if (!ops || ops->api_version != SQZ_BACKEND_API_VERSION)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "backend '%s' cannot run plans", name);
    void *ctx = NULL;
    if ((st = ops->create(&ctx, device, settings)) != SQZ_OK)
        return st;
    if (precision != SQZ_PRECISION_FP32)
        st = ops->set_precision ? ops->set_precision(ctx, precision)
                                : sqz_fail(SQZ_ERR_UNSUPPORTED, "backend '%s' runs fp32 only, not %s", name,
                                           sqz_precision_name(precision));
    if (st != SQZ_OK) {
        ops->destroy(ctx);
        return st;
    }
    x->ops = ops;
    x->ctx = ctx;
    return SQZ_OK;
}

void sqz_executor_close(sqz_executor *x)
{
    if (x->ops && x->ctx)
        x->ops->destroy(x->ctx);
    memset(x, 0, sizeof *x);
}

sqz_status sqz_executor_observe(sqz_executor *x, const sqz_observer *observer)
{
    if (x->n_observers == SQZ_EXECUTOR_MAX_OBSERVERS)
        return sqz_fail(SQZ_ERR_INTERNAL, "more than %d observers on one executor", SQZ_EXECUTOR_MAX_OBSERVERS);
    x->observers[x->n_observers++] = *observer;
    return SQZ_OK;
}

sqz_status sqz_executor_alloc(sqz_executor *x, size_t bytes, sqz_buffer **out)
{
    for (int i = 0; i < x->n_observers; i++)
        if (x->observers[i].before_alloc) {
            sqz_status st = x->observers[i].before_alloc(x->observers[i].self, bytes);
            if (st != SQZ_OK)
                return st;
        }
    return x->ops->buffer_alloc(x->ctx, bytes, out);
}

sqz_status sqz_executor_prepare(sqz_executor *x, const sqz_binding *binding)
{
    return x->ops->prepare ? x->ops->prepare(x->ctx, binding) : SQZ_OK;
}

/* Calls one hook of every observer that has it, stopping at the first failure. */
#define NOTIFY(hook, ...)                                                                   \
    for (int i_ = 0; st == SQZ_OK && i_ < x->n_observers; i_++)                             \
        if (x->observers[i_].hook)                                                          \
            st = x->observers[i_].hook(x->observers[i_].self, __VA_ARGS__)

sqz_status sqz_executor_run(sqz_executor *x, const sqz_binding *binding, const sqz_run_dims *dims,
                            bool allow_replay)
{
    const sqz_plan *plan = binding->plan;
    const sqz_backend_ops *ops = x->ops;
    const sqz_run_view run = {x, binding, dims};
    sqz_status st = SQZ_OK;
    NOTIFY(run_begin, &run);
    /* a backend may record the run's launches once and replay them (CUDA graphs) */
    bool watched = false;
    for (int i = 0; i < x->n_observers; i++)
        watched |= x->observers[i].run_begin || x->observers[i].before_launch || x->observers[i].after_launch;
    const bool hooks = st == SQZ_OK && allow_replay && !watched && ops->run_begin && ops->run_end;
    bool replayed = false;
    if (hooks)
        st = ops->run_begin(x->ctx, binding, dims, &replayed);
    for (size_t step = 0; st == SQZ_OK && !replayed && step < plan->n_launches; step++) {
        NOTIFY(before_launch, &run, step);
        if (st == SQZ_OK)
            st = ops->launch(x->ctx, binding, &plan->graph.nodes[plan->launches[step]], dims);
        NOTIFY(after_launch, &run, step);
    }
    if (hooks && !replayed) {
        sqz_status end = ops->run_end(x->ctx, binding, dims, st == SQZ_OK);
        if (st == SQZ_OK)
            st = end;
    }
    for (int i = 0; i < x->n_observers; i++)
        if (x->observers[i].run_end)
            x->observers[i].run_end(x->observers[i].self, &run, st);
    return st;
}
