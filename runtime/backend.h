/* The backend contract: one const table of functions per backend. cpu_ref implements it,
 * and so will the OpenCL and CUDA backends, so any backend can be run against any other.
 * Nothing outside runtime/ calls a slot directly; runtime/backend.c wraps them. */
#ifndef SQZ_RUNTIME_BACKEND_H
#define SQZ_RUNTIME_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

#include "graph/plan.h"
#include "squeezebert.h"

#define SQZ_BACKEND_API_VERSION 1

typedef struct sqz_buffer sqz_buffer; /* defined by each backend */

/* Where a plan's tensors live for one launch. */
typedef struct sqz_binding {
    const sqz_plan *plan;
    sqz_buffer *weights;          /* every model weight, carved by weight_offsets */
    const size_t *weight_offsets; /* byte offset of model weight i in `weights` */
    sqz_buffer *arena;            /* inputs and activations at plan->offsets */
} sqz_binding;

typedef struct sqz_backend_ops {
    int api_version;
    const char *name;
    /* SQZ_OK when the backend can run here; otherwise SQZ_ERR_NO_DEVICE with the reason. */
    sqz_status (*probe)(void);
    /* device: NULL for the default, or an index or a name substring. */
    sqz_status (*create)(void **ctx, const char *device);
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
    /* Optional: the kernel variants chosen so far, one tab-separated line per variant of each
     * op shape: family, shape, variant, seconds per run (-1: did not apply), max difference
     * from variant 0 relative to its largest value, FLOPs, bytes moved, 1 if chosen. */
    sqz_status (*kernel_report)(void *ctx, char **text);
} sqz_backend_ops;

const sqz_backend_ops *sqz_backend_find(const char *name);

/* Appends one line per device this backend can see to *text (malloc'd, may be NULL). */
typedef sqz_status (*sqz_list_devices_fn)(char **text);

extern const sqz_backend_ops sqz_cpu_ref_backend;
#ifdef SQZ_HAVE_CPU
extern const sqz_backend_ops sqz_cpu_backend;
sqz_status sqz_cpu_list_devices(char **text);
#endif
#ifdef SQZ_HAVE_OPENCL
extern const sqz_backend_ops sqz_opencl_backend;
sqz_status sqz_opencl_list_devices(char **text);
#endif
#ifdef SQZ_HAVE_CUDA
extern const sqz_backend_ops sqz_cuda_backend;
sqz_status sqz_cuda_probe(void);
sqz_status sqz_cuda_list_devices(char **text);
#endif
#ifdef SQZ_HAVE_CUDA_SIM
extern const sqz_backend_ops sqz_cuda_sim_backend;
sqz_status sqz_cuda_sim_probe(void);
sqz_status sqz_cuda_sim_list_devices(char **text);
#endif

/* The bar for one op against cpu_ref at a precision (max |difference| / max |reference|),
 * with inputs already in the storage type: fp32 1e-4 (summation order); tf32 1e-2 (the
 * network's bar: cuBLAS rounds the operands, a few units of 2^-11 times sqrt(K) at worst);
 * fp16 and bf16 four unit roundoffs of the storage type (the output's rounding, at most two
 * intermediate roundings such as P in attention or a GEMM result before its GELU, and fp32
 * accumulation): 4 x 2^-11 and 4 x 2^-8. docs/engineering.md, "Tolerances". */
double sqz_precision_op_tolerance(sqz_precision precision);

/* Appends printf-formatted text to a malloc'd string (for device listings). */
sqz_status sqz_text_append(char **text, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
