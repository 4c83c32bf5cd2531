/* The executor's observers: guard bytes, the per-op profile, fault injection
 * (runtime/executor.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/error.h"
#include "runtime/executor.h"

#define GUARD_BYTE 0xA5
#define CHUNK 4096

/* ---- guard bytes ---------------------------------------------------------------------- */

/* Guard region of tensor t for this run: from its actual end to the end of its slot. */
static void guard_region(const sqz_plan *plan, size_t t, const sqz_run_dims *dims, size_t *begin,
                         size_t *size)
{
    const sqz_tensor_desc *d = &plan->graph.tensors[t];
    size_t used = (size_t)sqz_tensor_rows(d, dims) * (size_t)d->cols * sqz_dtype_size(d->dtype);
    *begin = (size_t)plan->offsets[t] + used;
    *size = plan->bytes[t] + plan->guard_bytes - used;
}

static sqz_status fill_guard(const sqz_run_view *run, size_t t)
{
    unsigned char pattern[CHUNK];
    memset(pattern, GUARD_BYTE, sizeof pattern);
    size_t begin, size;
    guard_region(run->binding->plan, t, run->dims, &begin, &size);
    const sqz_executor *x = run->executor;
    for (size_t done = 0; done < size;) {
        size_t n = size - done < sizeof pattern ? size - done : sizeof pattern;
        sqz_status st = x->ops->upload(x->ctx, run->binding->arena, begin + done, pattern, n);
        if (st != SQZ_OK)
            return st;
        done += n;
    }
    return SQZ_OK;
}

/* Memory is reused, so only tensors alive at launch `step` own their guard bytes. */
static bool live_at(const sqz_plan *plan, const int *last_use, size_t t, size_t step)
{
    const sqz_tensor_desc *d = &plan->graph.tensors[t];
    if (d->kind == SQZ_TENSOR_INPUT)
        return true;
    return d->kind == SQZ_TENSOR_ACTIVATION && d->producer <= (int)step &&
           (d->is_output || last_use[t] >= (int)step);
}

static sqz_status guard_run_begin(void *self, const sqz_run_view *run)
{
    sqz_guard_observer *g = self;
    const sqz_plan *plan = run->binding->plan;
    if (plan->guard_bytes == 0)
        return sqz_fail(SQZ_ERR_INTERNAL, "guard bytes are watched on a plan compiled without them");
    if (g->for_plan != plan || g->n_last_use < plan->graph.n_tensors) {
        int *last_use = realloc(g->last_use, (plan->graph.n_tensors ? plan->graph.n_tensors : 1) * sizeof *last_use);
        if (!last_use)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        g->last_use = last_use;
        g->n_last_use = plan->graph.n_tensors;
        for (size_t t = 0; t < plan->graph.n_tensors; t++)
            last_use[t] = -1;
        for (size_t k = 0; k < plan->n_launches; k++) {
            const sqz_node *node = &plan->graph.nodes[plan->launches[k]];
            for (int i = 0; i < node->n_inputs; i++)
                if (node->inputs[i] >= 0)
                    last_use[node->inputs[i]] = (int)k;
        }
        g->for_plan = plan;
    }
    /* the inputs are in place: guard what follows each of them */
    for (size_t t = 0; t < plan->graph.n_tensors; t++)
        if (plan->offsets[t] >= 0 && plan->graph.tensors[t].kind == SQZ_TENSOR_INPUT) {
            sqz_status st = fill_guard(run, t);
            if (st != SQZ_OK)
                return st;
        }
    return SQZ_OK;
}

static sqz_status guard_before_launch(void *self, const sqz_run_view *run, size_t step)
{
    (void)self;
    const sqz_plan *plan = run->binding->plan;
    return fill_guard(run, (size_t)plan->graph.nodes[plan->launches[step]].output);
}

static sqz_status guard_after_launch(void *self, const sqz_run_view *run, size_t step)
{
    const sqz_guard_observer *g = self;
    const sqz_plan *plan = run->binding->plan;
    const sqz_executor *x = run->executor;
    const sqz_node *after = &plan->graph.nodes[plan->launches[step]];
    sqz_status st = x->ops->synchronize ? x->ops->synchronize(x->ctx) : SQZ_OK;
    unsigned char chunk[CHUNK];
    for (size_t t = 0; st == SQZ_OK && t < plan->graph.n_tensors; t++) {
        if (plan->offsets[t] < 0 || !live_at(plan, g->last_use, t, step))
            continue;
        size_t begin, size;
        guard_region(plan, t, run->dims, &begin, &size);
        for (size_t done = 0; st == SQZ_OK && done < size;) {
            size_t n = size - done < sizeof chunk ? size - done : sizeof chunk;
            st = x->ops->download(x->ctx, run->binding->arena, begin + done, chunk, n);
            for (size_t i = 0; st == SQZ_OK && i < n; i++)
                if (chunk[i] != GUARD_BYTE)
                    st = sqz_fail(SQZ_ERR_INTERNAL,
                                  "guard bytes after tensor '%s' were overwritten (byte %zu past its "
                                  "end) by node '%s' (%s)", plan->graph.tensors[t].name, done + i,
                                  after->name, sqz_op_name(after->op));
            done += n;
        }
    }
    return st;
}

sqz_observer sqz_guard_observer_table(sqz_guard_observer *g)
{
    return (sqz_observer){.self = g, .run_begin = guard_run_begin, .before_launch = guard_before_launch,
                          .after_launch = guard_after_launch};
}

void sqz_guard_observer_release(sqz_guard_observer *g)
{
    free(g->last_use);
    memset(g, 0, sizeof *g);
}

/* ---- the per-op profile --------------------------------------------------------------- */

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static sqz_status profile_run_begin(void *self, const sqz_run_view *run)
{
    (void)run;
    sqz_profile_observer *p = self;
    memset(p, 0, sizeof *p);
    return SQZ_OK;
}

static sqz_status profile_before_launch(void *self, const sqz_run_view *run, size_t step)
{
    (void)step;
    sqz_profile_observer *p = self;
    const sqz_executor *x = run->executor;
    sqz_status st = x->ops->synchronize ? x->ops->synchronize(x->ctx) : SQZ_OK;
    p->started = seconds_now();
    return st;
}

static sqz_status profile_after_launch(void *self, const sqz_run_view *run, size_t step)
{
    sqz_profile_observer *p = self;
    const sqz_executor *x = run->executor;
    const sqz_plan *plan = run->binding->plan;
    const sqz_node *node = &plan->graph.nodes[plan->launches[step]];
    sqz_status st = x->ops->synchronize ? x->ops->synchronize(x->ctx) : SQZ_OK;
    p->seconds[node->op] += seconds_now() - p->started;
    p->flops[node->op] += sqz_node_flops(&plan->graph, node, run->dims);
    p->launches[node->op]++;
    return st;
}

static void profile_run_end(void *self, const sqz_run_view *run, sqz_status status)
{
    const sqz_profile_observer *p = self;
    if (status != SQZ_OK)
        return;
    fprintf(stderr, "sqz profile (%lld tokens, %lld sequences):\n", (long long)run->dims->tokens,
            (long long)run->dims->sequences);
    for (int op = 0; op < SQZ_OP_COUNT; op++)
        if (p->launches[op])
            fprintf(stderr, "  %-16s %4d launches %9.3f ms %8.1f GFLOP/s\n", sqz_op_name((sqz_op)op),
                    p->launches[op], p->seconds[op] * 1e3,
                    p->seconds[op] > 0 ? p->flops[op] / p->seconds[op] * 1e-9 : 0.0);
}

sqz_observer sqz_profile_observer_table(sqz_profile_observer *p)
{
    return (sqz_observer){.self = p, .run_begin = profile_run_begin, .before_launch = profile_before_launch,
                          .after_launch = profile_after_launch, .run_end = profile_run_end};
}

/* ---- fault injection ------------------------------------------------------------------ */

/* Whether the count-th event (1-based) is one the setting makes fail. */
static bool fault_hits(unsigned long count, unsigned long at, unsigned long every)
{
    if (at == 0 || count < at)
        return false;
    return count == at || (every > 0 && (count - at) % every == 0);
}

static sqz_status fault_before_launch(void *self, const sqz_run_view *run, size_t step)
{
    sqz_fault_observer *f = self;
    const sqz_plan *plan = run->binding->plan;
    if (f->launch_at && fault_hits(++f->launches, f->launch_at, f->launch_every))
        return sqz_fail(SQZ_ERR_BACKEND, "injected fault: launch %lu (node '%s') failed (SQZ_FAULT_LAUNCH)",
                        f->launches, plan->graph.nodes[plan->launches[step]].name);
    return SQZ_OK;
}

static sqz_status fault_before_alloc(void *self, size_t bytes)
{
    sqz_fault_observer *f = self;
    if (f->alloc_at && fault_hits(++f->allocs, f->alloc_at, f->alloc_every))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "injected fault: buffer allocation %lu of %zu bytes failed "
                        "(SQZ_FAULT_ALLOC)", f->allocs, bytes);
    return SQZ_OK;
}

sqz_observer sqz_fault_observer_table(sqz_fault_observer *f)
{
    return (sqz_observer){.self = f, .before_launch = f->launch_at ? fault_before_launch : NULL,
                          .before_alloc = f->alloc_at ? fault_before_alloc : NULL};
}

sqz_status sqz_fault_setting_parse(const char *what, const char *text, unsigned long session_number,
                                   unsigned long *at, unsigned long *every)
{
    *at = *every = 0;
    if (!text || !*text)
        return SQZ_OK;
    char *end = (char *)text;
    unsigned long n = isdigit((unsigned char)*end) ? strtoul(end, &end, 10) : 0, p = 0, only = 0;
    bool ok = n > 0;
    if (ok && *end == ':') {
        ok = isdigit((unsigned char)end[1]);
        p = strtoul(end + 1, &end, 10);
    }
    if (ok && *end == '@') {
        ok = isdigit((unsigned char)end[1]);
        only = strtoul(end + 1, &end, 10);
        ok = ok && only > 0;
    }
    if (!ok || *end != '\0')
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%s '%s' is not N, N:P, N@K or N:P@K (N, K >= 1)", what, text);
    if (only && only != session_number)
        return SQZ_OK;
    *at = n;
    *every = p;
    return SQZ_OK;
}
