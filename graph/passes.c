#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/plan.h"
#include "runtime/error.h"

sqz_run_dims sqz_bucket_worst_case(const sqz_bucket *b)
{
    /* sum of len^2 over sequences with sum len <= T and len <= L is at most T * L */
    sqz_run_dims d = {b->max_tokens, b->max_sequences, b->max_tokens * b->max_len, b->max_len, b->max_tokens};
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
                    &g->in.seq_offsets, &g->in.score_offsets, &g->in.first_tokens, &g->in.out_rows};
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

/* ---- fuse ----------------------------------------------------------------------------------- */

typedef struct fuse_ctx {
    sqz_graph *g;
    int *readers; /* per tensor: how many node inputs read it */
} fuse_ctx;

/* The node producing `t` if it has op `op` and `t` may disappear inside a fused op. */
static sqz_node *fusable_producer(const fuse_ctx *f, int t, sqz_op op)
{
    if (t < 0)
        return NULL;
    const sqz_tensor_desc *d = &f->g->tensors[t];
    if (d->kind != SQZ_TENSOR_ACTIVATION || d->is_output || f->readers[t] != 1 || d->producer < 0)
        return NULL;
    sqz_node *p = &f->g->nodes[d->producer];
    return p->op == op ? p : NULL;
}

static void set_inputs(sqz_node *node, const int *inputs, int n)
{
    node->n_inputs = n;
    for (int i = 0; i < SQZ_NODE_MAX_INPUTS; i++)
        node->inputs[i] = i < n ? inputs[i] : -1;
}

/* The node reading nothing any more is removed by eliminate-dead-nodes. */
static void retire(fuse_ctx *f, sqz_node *node)
{
    for (int i = 0; i < node->n_inputs; i++)
        if (node->inputs[i] >= 0)
            f->readers[node->inputs[i]]--;
}

static bool fuse_embedding(fuse_ctx *f, sqz_node *ln)
{
    sqz_node *sum = fusable_producer(f, ln->inputs[0], SQZ_OP_ADD);
    sqz_node *word_pos = sum ? fusable_producer(f, sum->inputs[0], SQZ_OP_ADD) : NULL;
    sqz_node *type = sum ? fusable_producer(f, sum->inputs[1], SQZ_OP_GATHER_ROWS) : NULL;
    sqz_node *word = word_pos ? fusable_producer(f, word_pos->inputs[0], SQZ_OP_GATHER_ROWS) : NULL;
    sqz_node *pos = word_pos ? fusable_producer(f, word_pos->inputs[1], SQZ_OP_GATHER_ROWS) : NULL;
    if (!word || !pos || !type)
        return false;
    const sqz_tensor_desc *t = f->g->tensors;
    for (const sqz_node *gather = word; gather; gather = gather == word ? pos : gather == pos ? type : NULL)
        if (t[gather->inputs[0]].kind != SQZ_TENSOR_INPUT || t[gather->inputs[1]].kind != SQZ_TENSOR_WEIGHT)
            return false;
    int inputs[8] = {word->inputs[0], pos->inputs[0], type->inputs[0], word->inputs[1],
                     pos->inputs[1],  type->inputs[1], ln->inputs[1],  ln->inputs[2]};
    retire(f, ln);
    retire(f, sum), retire(f, word_pos), retire(f, word), retire(f, pos), retire(f, type);
    ln->op = SQZ_OP_EMBED_LAYERNORM;
    set_inputs(ln, inputs, 8);
    for (int i = 0; i < 8; i++)
        f->readers[inputs[i]]++;
    return true;
}

static bool fuse_add_layernorm(fuse_ctx *f, sqz_node *ln)
{
    sqz_node *add = fusable_producer(f, ln->inputs[0], SQZ_OP_ADD);
    if (!add)
        return false;
    int inputs[4] = {add->inputs[0], add->inputs[1], ln->inputs[1], ln->inputs[2]};
    retire(f, ln), retire(f, add);
    ln->op = SQZ_OP_ADD_LAYERNORM;
    set_inputs(ln, inputs, 4);
    for (int i = 0; i < 4; i++)
        f->readers[inputs[i]]++;
    return true;
}

static bool fuse_linear_gelu(fuse_ctx *f, sqz_node *gelu)
{
    sqz_node *linear = fusable_producer(f, gelu->inputs[0], SQZ_OP_LINEAR);
    if (!linear || linear->n_inputs != 3)
        return false;
    int inputs[3] = {linear->inputs[0], linear->inputs[1], linear->inputs[2]};
    retire(f, gelu), retire(f, linear);
    gelu->op = SQZ_OP_LINEAR_GELU;
    gelu->params = linear->params;
    set_inputs(gelu, inputs, 3);
    for (int i = 0; i < 3; i++)
        f->readers[inputs[i]]++;
    return true;
}

/* LINEAR_GELU then LINEAR with the same groups: the feed-forward block, whose hidden activation
 * a backend may keep on chip */
static bool fuse_ffn(fuse_ctx *f, sqz_node *output)
{
    sqz_node *inter = fusable_producer(f, output->inputs[0], SQZ_OP_LINEAR_GELU);
    if (!inter || output->n_inputs != 3 || output->inputs[2] < 0 ||
        inter->params.linear.groups != output->params.linear.groups)
        return false;
    int inputs[5] = {inter->inputs[0], inter->inputs[1], inter->inputs[2], output->inputs[1], output->inputs[2]};
    retire(f, output), retire(f, inter);
    output->op = SQZ_OP_FFN;
    set_inputs(output, inputs, 5);
    for (int i = 0; i < 5; i++)
        f->readers[inputs[i]]++;
    return true;
}

/* ADD_LAYERNORM whose one addend is an FFN output read nowhere else: the FFN with its residual
 * and LayerNorm, which a backend may run without storing the FFN output. Which addend is the
 * FFN does not matter (fp32 addition commutes). */
static bool fuse_ffn_add_layernorm(fuse_ctx *f, sqz_node *ln)
{
    int side = 0;
    sqz_node *ffn = fusable_producer(f, ln->inputs[0], SQZ_OP_FFN);
    if (!ffn && (ffn = fusable_producer(f, ln->inputs[1], SQZ_OP_FFN)) != NULL)
        side = 1;
    if (!ffn)
        return false;
    int inputs[8] = {ffn->inputs[0], ffn->inputs[1], ffn->inputs[2], ffn->inputs[3], ffn->inputs[4],
                     ln->inputs[1 - side], ln->inputs[2], ln->inputs[3]};
    const float eps = ln->params.layernorm.eps;
    retire(f, ln), retire(f, ffn);
    ln->op = SQZ_OP_FFN_ADD_LAYERNORM;
    ln->params.ffn_layernorm.groups = ffn->params.linear.groups;
    ln->params.ffn_layernorm.eps = eps;
    set_inputs(ln, inputs, 8);
    for (int i = 0; i < 8; i++)
        f->readers[inputs[i]]++;
    return true;
}

static bool fuse_attention(fuse_ctx *f, sqz_node *context)
{
    sqz_node *softmax = fusable_producer(f, context->inputs[0], SQZ_OP_ATTN_SOFTMAX);
    sqz_node *mask = softmax ? fusable_producer(f, softmax->inputs[0], SQZ_OP_ATTN_KEY_MASK) : NULL;
    sqz_node *scores = mask ? fusable_producer(f, mask->inputs[0], SQZ_OP_ATTN_SCORES) : NULL;
    if (!scores)
        return false;
    int inputs[6] = {scores->inputs[0], scores->inputs[1], context->inputs[1], mask->inputs[1],
                     context->inputs[2], context->inputs[3]};
    retire(f, context), retire(f, softmax), retire(f, mask), retire(f, scores);
    context->op = SQZ_OP_ATTENTION;
    context->params = scores->params;
    set_inputs(context, inputs, 6);
    for (int i = 0; i < 6; i++)
        f->readers[inputs[i]]++;
    return true;
}

/* An ATTENTION node's three projections of one input, alike in groups and bias: one QKV node
 * (in the query's place) whose output the attention reads through sqz_qkv_column. */
static bool fuse_qkv(fuse_ctx *f, sqz_node *attention)
{
    sqz_node *part[3];
    for (int i = 0; i < 3; i++) {
        part[i] = fusable_producer(f, attention->inputs[i], SQZ_OP_LINEAR);
        if (!part[i] || part[i]->n_inputs != 3 || part[i]->inputs[2] < 0 ||
            part[i]->inputs[0] != part[0]->inputs[0] ||
            part[i]->params.linear.groups != part[0]->params.linear.groups)
            return false;
    }
    sqz_tensor_desc *out = &f->g->tensors[part[0]->output];
    const int groups = part[0]->params.linear.groups;
    int inputs[7] = {part[0]->inputs[0], part[0]->inputs[1], part[0]->inputs[2], part[1]->inputs[1],
                     part[1]->inputs[2],  part[2]->inputs[1], part[2]->inputs[2]};
    retire(f, part[0]), retire(f, part[1]), retire(f, part[2]), retire(f, attention);
    sqz_node *qkv = part[0];
    qkv->op = SQZ_OP_QKV;
    set_inputs(qkv, inputs, 7);
    char *tail = strrchr(qkv->name, '.'); /* layerN.query -> layerN.qkv */
    tail = tail ? tail + 1 : qkv->name;
    snprintf(tail, (size_t)(qkv->name + SQZ_NAME_LEN - tail), "qkv");
    snprintf(out->name, SQZ_NAME_LEN, "%s", qkv->name);
    out->cols *= 3;
    const int attention_inputs[6] = {qkv->output, qkv->output, qkv->output, attention->inputs[3],
                                     attention->inputs[4], attention->inputs[5]};
    set_inputs(attention, attention_inputs, 6);
    attention->params.attention.qkv_groups = groups;
    for (int i = 0; i < 7; i++)
        f->readers[inputs[i]]++;
    for (int i = 0; i < 6; i++)
        f->readers[attention_inputs[i]]++;
    return true;
}

sqz_status sqz_pass_fuse(sqz_graph *g, uint64_t fusable_ops)
{
    if (!fusable_ops)
        return SQZ_OK;
    fuse_ctx f = {g, calloc(g->n_tensors ? g->n_tensors : 1, sizeof(int))};
    if (!f.readers)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory in the fusion pass");
    for (size_t n = 0; n < g->n_nodes; n++)
        for (int i = 0; i < g->nodes[n].n_inputs; i++)
            if (g->nodes[n].inputs[i] >= 0)
                f.readers[g->nodes[n].inputs[i]]++;
#define ALLOWED(op) (fusable_ops & (1ull << (op)))
    bool widened = false;
    for (size_t n = 0; n < g->n_nodes; n++) {
        sqz_node *node = &g->nodes[n];
        switch (node->op) {
        case SQZ_OP_LAYERNORM:
            /* the FFN before it, if any, is fused already: its output layer came first */
            if (!(ALLOWED(SQZ_OP_EMBED_LAYERNORM) && fuse_embedding(&f, node)) &&
                ALLOWED(SQZ_OP_ADD_LAYERNORM) && fuse_add_layernorm(&f, node) && ALLOWED(SQZ_OP_FFN_ADD_LAYERNORM))
                fuse_ffn_add_layernorm(&f, node);
            break;
        case SQZ_OP_GELU:
            if (ALLOWED(SQZ_OP_LINEAR_GELU))
                fuse_linear_gelu(&f, node);
            break;
        case SQZ_OP_ATTN_CONTEXT:
            if (ALLOWED(SQZ_OP_ATTENTION) && fuse_attention(&f, node) && ALLOWED(SQZ_OP_QKV))
                widened |= fuse_qkv(&f, node);
            break;
        case SQZ_OP_LINEAR: /* after the GELU before it became LINEAR_GELU */
            if (ALLOWED(SQZ_OP_FFN) && ALLOWED(SQZ_OP_LINEAR_GELU))
                fuse_ffn(&f, node);
            break;
        default: break;
        }
    }
#undef ALLOWED
    free(f.readers);
    /* the retired score nodes still read a projection that is now three times as wide: they go
     * before the verifier sees them */
    return widened ? sqz_pass_eliminate_dead_nodes(g) : SQZ_OK;
}

/* ---- assign-dtypes ------------------------------------------------------------------------ */

sqz_status sqz_pass_assign_dtypes(sqz_graph *g, sqz_precision precision)
{
    if ((unsigned)precision >= SQZ_PRECISION_COUNT)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "assign-dtypes: precision %d is not one of sqz_precision",
                        (int)precision);
    const sqz_dtype stored = sqz_precision_activation_dtype(precision);
    for (size_t t = 0; t < g->n_tensors; t++) {
        sqz_tensor_desc *d = &g->tensors[t];
        if (d->kind != SQZ_TENSOR_WEIGHT && sqz_dtype_is_float(d->dtype))
            d->dtype = stored;
    }
    return SQZ_OK;
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
        for (int i = 0; i < g->nodes[n].n_inputs && !plan->options.keep_all; i++) {
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
        if (last_use[out] < 0 && !g->tensors[out].is_output && !plan->options.keep_all &&
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
static sqz_status run_fuse(sqz_plan *plan) { return sqz_pass_fuse(&plan->graph, plan->options.fusable_ops); }
static sqz_status run_assign_dtypes(sqz_plan *plan)
{
    return sqz_pass_assign_dtypes(&plan->graph, plan->options.precision);
}

static const pass passes[] = {
    {"fuse", run_fuse},
    {"eliminate-dead-nodes", run_dead_nodes},
    {"assign-dtypes", run_assign_dtypes},
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
    if (options)
        plan->options = *options;
    plan->guard_bytes = plan->options.guard_bytes;
    int debug = plan->options.debug;
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
                "arena %.1f MiB (%zu bytes, activations %s)\n", (long long)bucket->max_tokens,
                (long long)bucket->max_sequences, (long long)bucket->max_len, plan->n_launches,
                plan->arena_bytes / 1048576.0, plan->arena_bytes,
                sqz_dtype_name(sqz_precision_activation_dtype(plan->options.precision)));
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
