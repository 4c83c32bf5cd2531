/* The executor: a backend instance and the launch loop that runs a bound plan on it. The
 * session, the peak measurement (runtime/bench_peak.c) and the per-op tests all run plans
 * through it, so a backend is driven one way everywhere.
 *
 * Checking and measuring are observers of the loop, not branches in it: guard bytes
 * (runtime/observers.c), the per-op profile and fault injection. A run watched launch by
 * launch is never recorded and replayed by the backend (CUDA graphs), since a replay has no
 * launches to watch. */
#ifndef SQZ_RUNTIME_EXECUTOR_H
#define SQZ_RUNTIME_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/backend.h"

#define SQZ_EXECUTOR_MAX_OBSERVERS 4

typedef struct sqz_executor sqz_executor;

/* What an observer sees of one run. */
typedef struct sqz_run_view {
    sqz_executor *executor;
    const sqz_binding *binding;
    const sqz_run_dims *dims;
} sqz_run_view;

/* Every slot is optional. A status other than SQZ_OK (with sqz_fail's message) stops the
 * run; `step` counts the plan's launches from 0. */
typedef struct sqz_observer {
    void *self;
    sqz_status (*run_begin)(void *self, const sqz_run_view *run);
    sqz_status (*before_launch)(void *self, const sqz_run_view *run, size_t step);
    sqz_status (*after_launch)(void *self, const sqz_run_view *run, size_t step);
    void (*run_end)(void *self, const sqz_run_view *run, sqz_status status);
    /* before every buffer allocation through sqz_executor_alloc */
    sqz_status (*before_alloc)(void *self, size_t bytes);
} sqz_observer;

struct sqz_executor {
    const sqz_backend_ops *ops;
    void *ctx;
    sqz_observer observers[SQZ_EXECUTOR_MAX_OBSERVERS];
    int n_observers;
};

/* Finds the backend by name (NULL: cpu_ref), checks it can run here and speaks this table's
 * version, creates it on `device` with `settings` and sets `precision`. On failure the
 * executor holds nothing. */
sqz_status sqz_executor_open(sqz_executor *x, const char *backend, const char *device,
                             const char *settings, sqz_precision precision);
void sqz_executor_close(sqz_executor *x);

/* Watches every later run and allocation; observers are called in the order added. */
sqz_status sqz_executor_observe(sqz_executor *x, const sqz_observer *observer);

sqz_status sqz_executor_alloc(sqz_executor *x, size_t bytes, sqz_buffer **out);

/* The backend's per-plan work for this binding (once per plan and arena). */
sqz_status sqz_executor_prepare(sqz_executor *x, const sqz_binding *binding);

/* Enqueues every launch of the bound plan for `dims` (the inputs are already uploaded); may
 * return before the device finishes. allow_replay: the backend may record the run and replay
 * it later (unless an observer watches runs or launches). */
sqz_status sqz_executor_run(sqz_executor *x, const sqz_binding *binding, const sqz_run_dims *dims,
                            bool allow_replay);

/* The observers (runtime/observers.c). Each is a small struct the caller owns and keeps alive
 * while it is attached; *_observer() returns the table to pass to sqz_executor_observe. */

/* Guard bytes: a canary pattern from each planned tensor's real end to the end of its slot
 * (the plan's guard_bytes), written before the tensor's producer runs (inputs' at the start of
 * the run) and checked after every launch for every live tensor; names the node that wrote
 * past an end. */
typedef struct sqz_guard_observer {
    int *last_use;       /* per tensor: the last launch that reads it */
    size_t n_last_use;
    const sqz_plan *for_plan;
} sqz_guard_observer;
sqz_observer sqz_guard_observer_table(sqz_guard_observer *g);
void sqz_guard_observer_release(sqz_guard_observer *g);

/* The per-op profile (SQZ_DEBUG=3 in the tools): synchronises around every launch, sums time
 * and FLOPs by op and prints the table to stderr at the end of each run. */
typedef struct sqz_profile_observer {
    double seconds[SQZ_OP_COUNT], flops[SQZ_OP_COUNT], started;
    int launches[SQZ_OP_COUNT];
} sqz_profile_observer;
sqz_observer sqz_profile_observer_table(sqz_profile_observer *p);

/* Fault injection (a test hook): the Nth launch or buffer allocation fails, then every Pth
 * after it (0: never). */
typedef struct sqz_fault_observer {
    unsigned long launch_at, launch_every, launches;
    unsigned long alloc_at, alloc_every, allocs;
} sqz_fault_observer;
sqz_observer sqz_fault_observer_table(sqz_fault_observer *f);
/* Parses a fault setting "N", "N:P", "N@K" or "N:P@K" (N >= 1, P >= 0; @K: only the Kth
 * session of the process, session_number counting from 1). NULL or empty: off. Anything
 * else is SQZ_ERR_INVALID_ARGUMENT naming `what`. */
sqz_status sqz_fault_setting_parse(const char *what, const char *text, unsigned long session_number,
                                   unsigned long *at, unsigned long *every);

#endif
