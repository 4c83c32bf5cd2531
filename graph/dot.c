/* Graphviz drawing of a plan: ops as boxes (weights folded into their label), inputs as
 * ellipses, outputs as double octagons, edges labelled with tensor shapes. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/plan.h"
#include "runtime/error.h"

typedef struct text {
    char *data;
    size_t len, cap;
    bool failed;
} text;

static void append(text *t, const char *fmt, ...) SQZ_PRINTF(2, 3);

static void append(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list args;
        va_start(args, fmt);
        int n = vsnprintf(t->data ? t->data + t->len : NULL, t->data ? t->cap - t->len : 0, fmt, args);
        va_end(args);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if (t->data && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
        char *bigger = realloc(t->data, cap);
        if (!bigger) {
            t->failed = true;
            return;
        }
        t->data = bigger;
        t->cap = cap;
    }
}

static const char *extent_symbol(sqz_extent e)
{
    switch (e) {
    case SQZ_EXTENT_TOKENS: return "T";
    case SQZ_EXTENT_SEQUENCES: return "S";
    case SQZ_EXTENT_SEQUENCES_PLUS_ONE: return "S+1";
    case SQZ_EXTENT_SCORES: return "sum(len^2)";
    case SQZ_EXTENT_SELECTED: return "selected";
    default: return "";
    }
}

static void shape(text *t, const sqz_tensor_desc *d)
{
    if (d->extent == SQZ_EXTENT_FIXED)
        append(t, "%lldx%lld", (long long)d->fixed_rows, (long long)d->cols);
    else
        append(t, "%sx%lld", extent_symbol(d->extent), (long long)d->cols);
}

sqz_status sqz_plan_to_dot(const sqz_plan *plan, char **out)
{
    const sqz_graph *g = &plan->graph;
    text t = {0};
    append(&t, "digraph squeezebert {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n");
    append(&t, "  label=\"plan: %zu launches, arena %.2f MiB, bucket T=%lld S=%lld L=%lld\";\n",
           plan->n_launches, plan->arena_bytes / 1048576.0, (long long)plan->bucket.max_tokens,
           (long long)plan->bucket.max_sequences, (long long)plan->bucket.max_len);
    for (size_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].kind == SQZ_TENSOR_INPUT) {
            append(&t, "  t%zu [shape=ellipse, style=filled, fillcolor=\"#e8f0ff\", label=\"%s\\n",
                   i, g->tensors[i].name);
            shape(&t, &g->tensors[i]);
            append(&t, "\"];\n");
        }
    for (size_t k = 0; k < plan->n_launches; k++) {
        const sqz_node *n = &g->nodes[plan->launches[k]];
        append(&t, "  n%d [shape=box, style=filled, fillcolor=\"#fff6e0\", label=\"#%zu %s\\n%s",
               plan->launches[k], k, n->name, sqz_op_name(n->op));
        if (n->op == SQZ_OP_LINEAR && n->params.linear.groups > 1)
            append(&t, " groups=%d", n->params.linear.groups);
        for (int i = 0; i < n->n_inputs; i++) {
            int in = n->inputs[i];
            if (in >= 0 && g->tensors[in].kind == SQZ_TENSOR_WEIGHT) {
                append(&t, "\\nW ");
                shape(&t, &g->tensors[in]);
            }
        }
        append(&t, "\"];\n");
        for (int i = 0; i < n->n_inputs; i++) {
            int in = n->inputs[i];
            if (in < 0 || g->tensors[in].kind == SQZ_TENSOR_WEIGHT)
                continue;
            const sqz_tensor_desc *d = &g->tensors[in];
            if (d->kind == SQZ_TENSOR_INPUT && d->extent == SQZ_EXTENT_SEQUENCES_PLUS_ONE)
                append(&t, "  t%d -> n%d [style=dashed, color=gray60, fontcolor=gray50, label=\"",
                       in, plan->launches[k]); /* sequence layout: context, not data flow */
            else if (d->kind == SQZ_TENSOR_INPUT)
                append(&t, "  t%d -> n%d [label=\"", in, plan->launches[k]);
            else
                append(&t, "  n%d -> n%d [label=\"", d->producer, plan->launches[k]);
            shape(&t, d);
            append(&t, "\"];\n");
        }
    }
    for (size_t o = 0; o < g->n_outputs; o++) {
        const sqz_graph_output *go = &g->outputs[o];
        append(&t, "  out%zu [shape=doubleoctagon, style=filled, fillcolor=\"#e6ffe6\", label=\"%s\"];\n",
               o, go->name);
        append(&t, "  n%d -> out%zu;\n", g->tensors[go->tensor].producer, o);
    }
    append(&t, "}\n");
    if (t.failed) {
        free(t.data);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory drawing the graph");
    }
    *out = t.data;
    return SQZ_OK;
}
