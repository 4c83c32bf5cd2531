/* The graph compiler's passes and their product: a plan, a flat list of launches with
 * every activation placed in one arena, specialised for a bucket. */
#ifndef SQZ_GRAPH_PLAN_H
#define SQZ_GRAPH_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "graph/graph.h"

typedef struct sqz_bucket {
    int64_t max_tokens, max_sequences, max_len;
} sqz_bucket;

#define SQZ_ARENA_ALIGN 256

typedef struct sqz_compile_options {
    size_t guard_bytes;   /* 0 in production; tests put canaries after every tensor */
    int debug;            /* SQZ_DEBUG level: 1 = passes, 2 = graph after each pass */
    uint64_t fusable_ops; /* bit (1 << op) set: the backend implements that fused op */
    bool keep_all;        /* no memory reuse: every tensor readable after the run (validation) */
    sqz_precision precision; /* the backend's: sets the activations' storage type (assign-dtypes) */
} sqz_compile_options;

typedef struct sqz_plan {
    sqz_graph graph;      /* after all passes; launches index its nodes */
    sqz_compile_options options;
    sqz_bucket bucket;
    size_t arena_bytes;   /* one allocation holds every input and activation */
    size_t guard_bytes;   /* bytes after each tensor that must stay untouched (test builds) */
    int64_t *offsets;     /* per tensor: byte offset in the arena; -1 for weights */
    size_t *bytes;        /* per tensor: worst-case bytes for the bucket (0 for weights) */
    int *launches;        /* node indices in execution order */
    size_t n_launches;
} sqz_plan;



/* Runs the named passes (fuse, eliminate-dead-nodes, assign-dtypes, plan-memory, lower) on
 * a copy of `graph`, verifying it before the first and after each. */
sqz_status sqz_plan_compile(const sqz_graph *graph, const sqz_bucket *bucket,
                            const sqz_compile_options *options, sqz_plan **out);
void sqz_plan_free(sqz_plan *plan);

/* Worst-case run dims of a bucket (used to size every tensor). */
sqz_run_dims sqz_bucket_worst_case(const sqz_bucket *bucket);

/* Graph passes, exposed for tests. */
sqz_status sqz_pass_eliminate_dead_nodes(sqz_graph *graph);
/* Rewrites legal patterns into the fused ops allowed by `fusable_ops`; the fused node takes
 * the place and the output tensor of the pattern's last node, and the nodes it replaces
 * are left for eliminate-dead-nodes. Legal: every intermediate has exactly one reader and
 * is not a graph output. */
sqz_status sqz_pass_fuse(sqz_graph *graph, uint64_t fusable_ops);
/* Gives every activation and float input the storage type of `precision`
 * (sqz_precision_activation_dtype): 16 bits at fp16 and bf16, so that the memory plan sizes
 * them at 2 bytes and backends read their type from the tensor. Weights stay F32 and index
 * inputs I32; graph outputs take the activations' type too (a backend converts them when it
 * writes the caller's fp32 or fp16 outputs, sqz_output_format). */
sqz_status sqz_pass_assign_dtypes(sqz_graph *graph, sqz_precision precision);

/* Draws the plan as Graphviz DOT; *out is malloc'd. */
sqz_status sqz_plan_to_dot(const sqz_plan *plan, char **out);

#endif
