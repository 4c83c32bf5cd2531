/* The backend contract: one const table of functions per backend (cpu_ref, cpu, opencl,
 * cuda, cuda-sim), so any backend can be run against any other. A backend is one folder and
 * one sqz_backend() line in CMakeLists.txt, which lists it in the registry the build
 * generates (sqz_backend_table); runtime/backend.c looks backends up there, and the session
 * and the tests call the slots. */
#ifndef SQZ_RUNTIME_BACKEND_H
#define SQZ_RUNTIME_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "graph/plan.h"
#include "squeezebert.h"

#define SQZ_BACKEND_API_VERSION 2

typedef struct sqz_buffer sqz_buffer; /* defined by each backend */

#define SQZ_RUN_SLOTS SQZ_MAX_IN_FLIGHT /* runs a session keeps in flight */

/* Where a plan's tensors live for one launch. */
typedef struct sqz_binding {
    const sqz_plan *plan;
    sqz_buffer *weights;          /* every model weight, carved by weight_offsets */
    const size_t *weight_offsets; /* byte offset of model weight i in `weights` */
    sqz_buffer *arena;            /* inputs and activations at plan->offsets */
} sqz_binding;

/* One output of a run in the layout the caller gets (sqz_output): rows of col_count values
 * taken from columns [col_begin, col_begin + col_count) of a plan tensor, as fp32 or as
 * IEEE fp16 (rounded to nearest even), whatever the tensor's storage type. */
typedef struct sqz_output_format {
    int tensor;       /* the source: a plan tensor in the arena */
    int64_t col_begin, col_count;
    int64_t rows;     /* rows written */
    /* 0: row i is source row i. W > 0 (per-token outputs): row r * W + w is the packed token
     * at position w of sequence r (found through the seq_offsets and positions inputs), or
     * zeros when that position was dropped or its key_valid is 0 (padding). */
    int64_t width;
    bool half;        /* write fp16 instead of fp32 */
} sqz_output_format;

typedef struct sqz_backend_ops {
    int api_version;
    const char *name;
    /* SQZ_OK when the backend can run here; otherwise SQZ_ERR_NO_DEVICE with the reason.
     * NULL: always. */
    sqz_status (*probe)(void);
    /* Appends one line per device it can see ("NAME INDEX description"), or one line with
     * "-" and the reason it has none, to *text (malloc'd). */
    sqz_status (*list_devices)(char **text);
    /* device: NULL for the default, or the backend's own device text (an index, a name
     * substring, "threads=N", a schedule). settings: NULL or "PREFIX.KEY=VALUE;..." (see
     * sqz_settings_get); the backend reads the keys of its own prefix and refuses unknown ones
     * of it by name (sqz_settings_check). */
    sqz_status (*create)(void **ctx, const char *device, const char *settings);
    void (*destroy)(void *ctx);
    /* One line naming the device in use ("pthread-skylake-avx512 (PoCL 3.1), 11.3 GiB"). */
    const char *(*describe)(void *ctx);
    sqz_status (*buffer_alloc)(void *ctx, size_t bytes, sqz_buffer **out);
    void (*buffer_free)(void *ctx, sqz_buffer *buffer);
    sqz_status (*upload)(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes);
    sqz_status (*download)(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes);
    /* Whether the backend implements this node (fused ops may be absent). NULL = all. */
    bool (*supports)(void *ctx, const sqz_node *node);
    /* Enqueues one node; may return before it completes. */
    sqz_status (*launch)(void *ctx, const sqz_binding *binding, const sqz_node *node,
                         const sqz_run_dims *dims);
    /* Waits for everything enqueued. NULL = launches are synchronous. */
    sqz_status (*synchronize)(void *ctx);
    /* Optional (NULL: fp32 only). Called once, right after create, before supports(). */
    sqz_status (*set_precision)(void *ctx, sqz_precision precision);
    /* Optional: a plan is about to run with this binding (called again when the arena or
     * weights buffer changes): per-plan work once, not at every launch. */
    sqz_status (*prepare)(void *ctx, const sqz_binding *binding);
    /* Optional: the plan is about to be freed (its buffers may live on). */
    void (*release)(void *ctx, const sqz_plan *plan);
    /* Optional: brackets the launches of one run so a backend can record them once and
     * replay them (CUDA graphs). run_begin sets *replayed when it already enqueued the whole
     * run, and the caller then launches nothing; otherwise the caller launches every node
     * and calls run_end(ok = whether all launches were enqueued). Not used for runs that
     * must see each launch (guard bytes, profiling, fault injection). */
    sqz_status (*run_begin)(void *ctx, const sqz_binding *binding, const sqz_run_dims *dims,
                            bool *replayed);
    sqz_status (*run_end)(void *ctx, const sqz_binding *binding, const sqz_run_dims *dims, bool ok);
    /* Runs device code on the host to check it (cuda-sim): never chosen by `auto` and left
     * out of `sqz bench` unless named. */
    bool emulated;

    /* ---- runs in flight (all optional; docs/engineering.md "Runs in flight") ----
     * A session keeps up to SQZ_RUN_SLOTS runs in flight. Without these slots it does every
     * copy synchronously and formats outputs on the host, which is always correct. */
    /* Host memory the device copies to and from asynchronously (pinned). host_free takes no
     * context: a result may outlive its session. NULL: malloc/free. */
    sqz_status (*host_alloc)(void *ctx, size_t bytes, void **out);
    void (*host_free)(void *memory);
    /* Starts run `slot` with a host-to-device copy behind everything enqueued and returns at
     * once; `src` (from host_alloc) stays unchanged until run_wait(slot) returns. NULL: upload. */
    sqz_status (*upload_async)(void *ctx, int slot, sqz_buffer *dst, size_t offset, const void *src, size_t bytes);
    /* Enqueues the writing of one output in its final layout into `dst` at `offset` (see
     * sqz_output_format). NULL: the session downloads the tensor and formats it on the host. */
    sqz_status (*format_output)(void *ctx, const sqz_binding *binding, const sqz_output_format *format,
                                sqz_buffer *dst, size_t offset);
    /* Ends run `slot` (0 <= slot < SQZ_RUN_SLOTS): once everything enqueued so far is done,
     * copies `bytes` (possibly 0) of `src` at `offset` into `host` (from host_alloc), without
     * waiting. run_wait(slot) returns when that copy has landed, with the first error of the
     * run's work. Both NULL: the session synchronizes and downloads. */
    sqz_status (*run_download)(void *ctx, int slot, sqz_buffer *src, size_t offset, void *host, size_t bytes);
    sqz_status (*run_wait)(void *ctx, int slot);
    /* After run_wait: seconds the device spent on the run, from its upload_async starting to
     * its outputs being written; < 0 when unknown. NULL: unknown. */
    double (*run_device_seconds)(void *ctx, int slot);
    /* The device address of a buffer's first byte, for outputs left on the device (CUDA: a
     * device pointer; host-memory backends: the host pointer). NULL: not offered. */
    void *(*device_address)(void *ctx, sqz_buffer *buffer);
    /* Whether run_begin records runs for replay: the session then pads the packed batch to
     * a few shapes per bucket so that runs of different lengths replay one graph. */
    bool (*records_runs)(void *ctx);
    /* Counters for tests and reports: graphs captured and runs replayed. */
    void (*graph_counts)(void *ctx, unsigned long *captured, unsigned long *replayed);
    /* Optional: the kernel variants chosen so far, one tab-separated line per variant of each
     * op shape: family, shape, variant, seconds per run (-1: did not apply), max difference
     * from variant 0 relative to its largest value, FLOPs, bytes moved, 1 if chosen. */
    sqz_status (*kernel_report)(void *ctx, char **text);
} sqz_backend_ops;


/* The host implementation of sqz_output_format (cpu_ref's format_output, and the session's
 * fallback after a download): `src` holds the tensor as fp32 rows of src_cols. */
void sqz_format_output_host(const sqz_output_format *format, const float *src, int64_t src_cols,
                            const int32_t *seq_offsets, const int32_t *positions, const int32_t *key_valid,
                            void *dst);

const sqz_backend_ops *sqz_backend_find(const char *name);

/* The backends of this build, NULL-terminated, and the known ones it was built without as
 * pairs (name, how to get it), NULL-terminated: generated by CMake from its sqz_backend()
 * lines (runtime/backend_list.c.in). */
extern const sqz_backend_ops *const sqz_backend_table[];
extern const char *const sqz_backends_not_built[];

/* Backend settings: "PREFIX.KEY=VALUE;PREFIX.KEY=VALUE" (a value may hold '=' and ','; ';'
 * separates). sqz_settings_get copies the value of PREFIX.KEY into out and returns true when
 * present; sqz_settings_check refuses, naming it, a key with this prefix that is not among
 * `known` (NULL-terminated). */
bool sqz_settings_get(const char *settings, const char *prefix, const char *key, char *out, size_t size);
sqz_status sqz_settings_check(const char *settings, const char *prefix, const char *const *known);

/* The bar for one op against cpu_ref at a precision (max |difference| / max |reference|),
 * with inputs already in the storage type: fp32 1e-4 (summation order); tf32 1e-2 (the
 * network's bar: cuBLAS rounds the operands, a few units of 2^-11 times sqrt(K) at worst);
 * fp16 and bf16 four unit roundoffs of the storage type (the output's rounding, at most two
 * intermediate roundings such as P in attention or a GEMM result before its GELU, and fp32
 * accumulation): 4 x 2^-11 and 4 x 2^-8. docs/engineering.md, "Tolerances". */
double sqz_precision_op_tolerance(sqz_precision precision);

/* For a backend's launch: SQZ_OK when the node writes `stored`, the activation type the
 * backend computes in at its precision (by sqz_graph_verify, every activation and float input
 * of the plan then has it); otherwise SQZ_ERR_INVALID_ARGUMENT naming the node: the plan was
 * compiled at another precision. */
sqz_status sqz_backend_check_dtype(const char *backend, const sqz_binding *binding, const sqz_node *node,
                                   sqz_dtype stored);

/* Graphs a session's backend captured and runs it replayed (tests and reports). */
void sqz_session_graph_counts(const sqz_session *session, unsigned long *captured, unsigned long *replayed);

/* Appends printf-formatted text to a malloc'd string (for device listings). */
sqz_status sqz_text_append(char **text, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
