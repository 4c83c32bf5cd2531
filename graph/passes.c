#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/plan.h"
#include "runtime/error.h"

sqz_run_dims sqz_bucket_worst_case(const sqz_bucket *b)
{
    /* sum of len^2 over sequences with sum len <= T and len <= L is at most T * L */
    sqz_run_dims d = {b->max_tokens, b->max_sequences, b->max_tokens * b->max_len, b->max_len};
    return d;
}

/* ---- eliminate-dead-nodes ------------------------------------------------------------- */

sqz_status sqz_pass_eliminate_dead_nodes(sqz_graph *g)
{
    size_t nt = g->n_tensors ? g->n_tensors : 1, nn = g->n_nodes ? g->n_nodes : 1;
    bool *live_tensor = calloc(nt, sizeof *live_tensor);
    bool *live_node = calloc(nn, sizeof *live_node);
    int *tensor_map = malloc(nt * sizeof *tensor_map);
    int *node_map = malloc(nn * sizeof *node_map);
    sqz_status status = SQZ_OK;
    if (!live_tensor || !live_node || !tensor_map || !node_map) {
        status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory in eliminate-dead-nodes");
        goto done;
    }
    for (size_t o = 0; o < g->n_outputs; o++)
        live_tensor[g->outputs[o].tensor] = true;
    /* nodes are topologically ordered, so one backward sweep marks everything needed */
    for (size_t n = g->n_nodes; n-- > 0;) {
        if (!live_tensor[g->nodes[n].output])
            continue;
        live_node[n] = true;
        for (int i = 0; i < g->nodes[n].n_inputs; i++)
            if (g->nodes[n].inputs[i] >= 0)
                live_tensor[g->nodes[n].inputs[i]] = true;
    }
    /* inputs stay even if unused: the executor fills them by role */
    for (size_t t = 0; t < g->n_tensors; t++)
        if (g->tensors[t].kind == SQZ_TENSOR_INPUT)
            live_tensor[t] = true;
    size_t kept_t = 0, kept_n = 0;
    for (size_t t = 0; t < g->n_tensors; t++) {
        tensor_map[t] = live_tensor[t] ? (int)kept_t : -1;
        if (live_tensor[t])
            g->tensors[kept_t++] = g->tensors[t];
    }
    for (size_t n = 0; n < g->n_nodes; n++) {
        node_map[n] = live_node[n] ? (int)kept_n : -1;
        if (!live_node[n])
            continue;
        sqz_node *node = &g->nodes[kept_n++];
        *node = g->nodes[n];
        for (int i = 0; i < node->n_inputs; i++)
            if (node->inputs[i] >= 0)
                node->inputs[i] = tensor_map[node->inputs[i]];
        node->output = tensor_map[node->output];
    }
    g->n_tensors = kept_t;
    g->n_nodes = kept_n;
    for (size_t t = 0; t < g->n_tensors; t++)
        if (g->tensors[t].producer >= 0)
            g->tensors[t].producer = node_map[g->tensors[t].producer];
    for (size_t o = 0; o < g->n_outputs; o++)
        g->outputs[o].tensor = tensor_map[g->outputs[o].tensor];
    int *roles[] = {&g->in.token_ids, &g->in.token_types, &g->in.positions, &g->in.key_valid,
                    &g->in.seq_offsets, &g->in.score_offsets, &g->in.first_tokens};
    for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++)
        if (*roles[r] >= 0)
            *roles[r] = tensor_map[*roles[r]];
done:
    free(live_tensor);
    free(live_node);
    free(tensor_map);
    free(node_map);
    return status;
}

/* ---- plan-memory ------------------------------------------------------------------------ */

typedef struct block {
    size_t offset, size;
} block;

typedef struct free_list {
    block *items;
    size_t count, cap;
    size_t end; /* high-water mark of the arena */
} free_list;

static size_t align_up(size_t x) { return (x + SQZ_ARENA_ALIGN - 1) / SQZ_ARENA_ALIGN * SQZ_ARENA_ALIGN; }

/* First fit; grows the arena when nothing fits. */
static size_t take(free_list *fl, size_t size)
{
    for (size_t i = 0; i < fl->count; i++)
        if (fl->items[i].size >= size) {
            size_t offset = fl->items[i].offset;
            fl->items[i].offset += size;
            fl->items[i].size -= size;
            if (fl->items[i].size == 0) {
                memmove(&fl->items[i], &fl->items[i + 1], (fl->count - i - 1) * sizeof(block));
                fl->count--;
            }
            return offset;
        }
    /* a free block touching the end can be extended instead of leaving a hole */
    if (fl->count && fl->items[fl->count - 1].offset + fl->items[fl->count - 1].size == fl->end) {
        size_t offset = fl->items[fl->count - 1].offset;
        fl->end = offset + size;
        fl->count--;
        return offset;
    }
    size_t offset = fl->end;
    fl->end += size;
    return offset;
}

/* Returns a block, keeping the list sorted and coalesced. */
static bool give_back(free_list *fl, size_t offset, size_t size)
{
    if (fl->count == fl->cap) {
        size_t cap = fl->cap ? fl->cap * 2 : 64;
        block *bigger = realloc(fl->items, cap * sizeof *bigger);
        if (!bigger)
            return false;
        fl->items = bigger;
        fl->cap = cap;
    }
    size_t i = 0;
    while (i < fl->count && fl->items[i].offset < offset)
        i++;
    memmove(&fl->items[i + 1], &fl->items[i], (fl->count - i) * sizeof(block));
    fl->items[i] = (block){offset, size};
    fl->count++;
    if (i + 1 < fl->count && fl->items[i].offset + fl->items[i].size == fl->items[i + 1].offset) {
        fl->items[i].size += fl->items[i + 1].size;
        memmove(&fl->items[i + 1], &fl->items[i + 2], (fl->count - i - 2) * sizeof(block));
        fl->count--;
    }
    if (i > 0 && fl->items[i - 1].offset + fl->items[i - 1].size == fl->items[i].offset) {
        fl->items[i - 1].size += fl->items[i].size;
        memmove(&fl->items[i], &fl->items[i + 1], (fl->count - i - 1) * sizeof(block));
        fl->count--;
    }
    return true;
}

static sqz_status plan_memory(sqz_plan *plan)
{
    const sqz_graph *g = &plan->graph;
    sqz_run_dims worst = sqz_bucket_worst_case(&plan->bucket);
    size_t nt = g->n_tensors ? g->n_tensors : 1;
    plan->offsets = malloc(nt * sizeof *plan->offsets);
    plan->bytes = calloc(nt, sizeof *plan->bytes);
    int *last_use = malloc(nt * sizeof *last_use);
    free_list fl = {0};
    sqz_status status = SQZ_OK;
    if (!plan->offsets || !plan->bytes || !last_use) {
        status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory planning memory");
        goto done;
    }
    for (size_t t = 0; t < g->n_tensors; t++) {
        const sqz_tensor_desc *d = &g->tensors[t];
        plan->offsets[t] = -1;
        last_use[t] = -1;
        if (d->kind == SQZ_TENSOR_WEIGHT)
            continue;
        int64_t rows = sqz_tensor_rows(d, &worst);
        double bytes = (double)rows * (double)d->cols * (double)sqz_dtype_size(d->dtype);
        if (bytes > (double)(SIZE_MAX / 4)) {
            status = sqz_fail(SQZ_ERR_UNSUPPORTED, "tensor '%s' would need %.0f bytes for this "
                              "bucket", d->name, bytes);
            goto done;
        }
        plan->bytes[t] = (size_t)bytes;
    }
    for (size_t n = 0; n < g->n_nodes; n++)
        for (int i = 0; i < g->nodes[n].n_inputs; i++)
            if (g->nodes[n].inputs[i] >= 0)
                last_use[g->nodes[n].inputs[i]] = (int)n;
    /* inputs first and pinned for the whole run; outputs are never given back */
    for (size_t t = 0; t < g->n_tensors; t++)
        if (g->tensors[t].kind == SQZ_TENSOR_INPUT)
            plan->offsets[t] = (int64_t)take(&fl, align_up(plan->bytes[t] + plan->guard_bytes));
    for (size_t n = 0; n < g->n_nodes; n++) {
        int out = g->nodes[n].output;
        plan->offsets[out] = (int64_t)take(&fl, align_up(plan->bytes[out] + plan->guard_bytes));
        /* an input whose last reader is this node is free once the node has run; the output
         * was placed first so a launch never reads and writes the same bytes */
        for (int i = 0; i < g->nodes[n].n_inputs; i++) {
            int t = g->nodes[n].inputs[i];
            if (t < 0 || last_use[t] != (int)n || g->tensors[t].kind != SQZ_TENSOR_ACTIVATION ||
                g->tensors[t].is_output)
                continue;
            bool repeated = false; /* the same tensor twice in one node: free once */
            for (int j = 0; j < i; j++)
                repeated |= g->nodes[n].inputs[j] == t;
            if (!repeated &&
                !give_back(&fl, (size_t)plan->offsets[t], align_up(plan->bytes[t] + plan->guard_bytes))) {
                status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory planning memory");
                goto done;
            }
        }
        /* an activation nobody reads (and not an output) is dead on arrival */
        if (last_use[out] < 0 && !g->tensors[out].is_output &&
            !give_back(&fl, (size_t)plan->offsets[out], align_up(plan->bytes[out] + plan->guard_bytes))) {
            status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory planning memory");
            goto done;
        }
    }
    plan->arena_bytes = fl.end ? fl.end : SQZ_ARENA_ALIGN;
done:
    free(fl.items);
    free(last_use);
    return status;
}

/* ---- lower ------------------------------------------------------------------------------- */

static sqz_status lower(sqz_plan *plan)
{
    plan->n_launches = plan->graph.n_nodes;
    plan->launches = malloc((plan->n_launches ? plan->n_launches : 1) * sizeof *plan->launches);
    if (!plan->launches)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory lowering the plan");
    for (size_t i = 0; i < plan->n_launches; i++)
        plan->launches[i] = (int)i;
    return SQZ_OK;
}

/* ---- the pass pipeline ------------------------------------------------------------------- */

typedef struct pass {
    const char *name;
    sqz_status (*run)(sqz_plan *plan);
} pass;

static sqz_status run_dead_nodes(sqz_plan *plan) { return sqz_pass_eliminate_dead_nodes(&plan->graph); }

static const pass passes[] = {
    {"eliminate-dead-nodes", run_dead_nodes},
    {"plan-memory", plan_memory},
    {"lower", lower},
};

static void dump_graph(const sqz_graph *g)
{
    for (size_t n = 0; n < g->n_nodes; n++) {
        const sqz_node *node = &g->nodes[n];
        fprintf(stderr, "  [%3zu] %-14s %-36s <-", n, sqz_op_name(node->op), node->name);
        for (int i = 0; i < node->n_inputs; i++)
            fprintf(stderr, " %s", node->inputs[i] >= 0 ? g->tensors[node->inputs[i]].name : "-");
        fprintf(stderr, "\n");
    }
}

sqz_status sqz_plan_compile(const sqz_graph *graph, const sqz_bucket *bucket,
                            const sqz_compile_options *options, sqz_plan **out)
{
    *out = NULL;
    if (bucket->max_tokens < 1 || bucket->max_sequences < 1 || bucket->max_len < 1 ||
        bucket->max_sequences > bucket->max_tokens)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "bad bucket: %lld tokens, %lld sequences, length %lld",
                        (long long)bucket->max_tokens, (long long)bucket->max_sequences,
                        (long long)bucket->max_len);
    sqz_plan *plan = calloc(1, sizeof *plan);
    if (!plan)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory compiling a plan");
    plan->bucket = *bucket;
    plan->guard_bytes = options ? options->guard_bytes : 0;
    int debug = options ? options->debug : 0;
    sqz_status s = sqz_graph_copy(graph, &plan->graph);
    if (s == SQZ_OK)
        s = sqz_graph_verify(&plan->graph);
    for (size_t p = 0; p < sizeof passes / sizeof passes[0] && s == SQZ_OK; p++) {
        s = passes[p].run(plan);
        if (s == SQZ_OK)
            s = sqz_graph_verify(&plan->graph);
        if (s != SQZ_OK) {
            sqz_fail_context(s, "graph pass '%s'", passes[p].name);
            break;
        }
        if (debug >= 1)
            fprintf(stderr, "sqz: pass %-22s ok: %zu nodes, %zu tensors\n", passes[p].name,
                    plan->graph.n_nodes, plan->graph.n_tensors);
        if (debug >= 2)
            dump_graph(&plan->graph);
    }
    if (s == SQZ_OK && debug >= 1)
        fprintf(stderr, "sqz: plan for %lld tokens / %lld sequences / length %lld: %zu launches, "
                "arena %.1f MiB\n", (long long)bucket->max_tokens, (long long)bucket->max_sequences,
                (long long)bucket->max_len, plan->n_launches, plan->arena_bytes / 1048576.0);
    if (s != SQZ_OK) {
        sqz_plan_free(plan);
        return s;
    }
    *out = plan;
    return SQZ_OK;
}

void sqz_plan_free(sqz_plan *plan)
{
    if (!plan)
        return;
    sqz_graph_release(&plan->graph);
    free(plan->offsets);
    free(plan->bytes);
    free(plan->launches);
    free(plan);
}
