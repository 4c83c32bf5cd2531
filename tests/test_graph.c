/* The graph compiler: the builder for many configurations, the verifier catching broken
 * graphs, dead-node elimination, and liveness-based memory planning. */
#include "tests/test_util.h"

#include "graph/builder.h"
#include "graph/plan.h"
#include "tests/test_float16.h"

/* A fake model: weights are looked up by name and given the shape the name implies. */
typedef struct fake_model {
    const sqz_net_desc *net;
    char names[4096][SQZ_NAME_LEN];
    int64_t rows[4096], cols[4096];
    int count;
} fake_model;

static fake_model fake;

static int groups_for(const sqz_net_desc *n, const char *name)
{
    if (strstr(name, "attention.query")) return n->q_groups;
    if (strstr(name, "attention.key")) return n->k_groups;
    if (strstr(name, "attention.value")) return n->v_groups;
    if (strstr(name, "post_attention.conv1d")) return n->post_attention_groups;
    if (strstr(name, "intermediate.conv1d")) return n->intermediate_groups;
    if (strstr(name, "output.conv1d")) return n->output_groups;
    return 1;
}

static int fake_index(const void *user, const char *name)
{
    fake_model *m = (fake_model *)user;
    const sqz_net_desc *n = m->net;
    const int64_t H = n->hidden_size, F = n->intermediate_size;
    int64_t rows = 1, cols = H;
    const bool bias = strstr(name, ".bias") != NULL;
    if (strstr(name, "word_embeddings")) rows = n->vocab_size;
    else if (strstr(name, "position_embeddings")) rows = n->max_position_embeddings;
    else if (strstr(name, "token_type_embeddings")) rows = n->type_vocab_size;
    else if (strstr(name, "decoder.weight")) rows = n->vocab_size;
    else if (strstr(name, "predictions.bias")) cols = n->vocab_size;
    else if (strstr(name, "intermediate.conv1d")) bias ? (cols = F) : (rows = F, cols = H / groups_for(n, name));
    else if (strstr(name, "output.conv1d")) bias ? (cols = H) : (rows = H, cols = F / groups_for(n, name));
    else if (strstr(name, "classifier") || strstr(name, "qa_outputs")) {
        int64_t out = strstr(name, "qa_outputs") ? 2 : n->head == SQZ_HEAD_MULTIPLE_CHOICE ? 1 : n->num_labels;
        bias ? (cols = out) : (rows = out);
    } else if (!bias && !strstr(name, "LayerNorm") && !strstr(name, "layernorm"))
        rows = H, cols = H / groups_for(n, name);
    snprintf(m->names[m->count], SQZ_NAME_LEN, "%s", name);
    m->rows[m->count] = rows;
    m->cols[m->count] = cols;
    return m->count++;
}

static void fake_shape(const void *user, int index, int64_t *rows, int64_t *cols)
{
    const fake_model *m = user;
    *rows = m->rows[index];
    *cols = m->cols[index];
}

static sqz_net_desc net_desc(sqz_head head, int H, int layers, int heads, int F, const int g[6])
{
    sqz_net_desc n = {
        .head = head, .vocab_size = 50, .hidden_size = H, .num_layers = layers,
        .num_heads = heads, .intermediate_size = F, .max_position_embeddings = 32,
        .type_vocab_size = 2, .num_labels = 3, .q_groups = g[0], .k_groups = g[1],
        .v_groups = g[2], .post_attention_groups = g[3], .intermediate_groups = g[4],
        .output_groups = g[5], .layer_norm_eps = 1e-12f, .encoder_layer_norm_eps = 1e-12f,
        .has_pooler = true, .weight_index = fake_index, .weight_shape = fake_shape, .user = &fake,
    };
    return n;
}

static void build(const sqz_net_desc *n, sqz_graph *g)
{
    fake.count = 0;
    fake.net = n;
    assert_sqz_ok(sqz_build_graph(n, g));
}

static void builds_every_head_and_grouping(void **unused)
{
    const int groupings[][6] = {{4, 4, 4, 1, 4, 4}, {2, 2, 2, 2, 4, 1}, {3, 5, 1, 2, 3, 5}, {1, 1, 1, 1, 1, 1}};
    const int sizes[][4] = {{64, 2, 4, 256}, {32, 5, 4, 64}, {60, 3, 5, 90}, {48, 3, 4, 96}};
    for (size_t c = 0; c < 4; c++)
        for (int head = 0; head < SQZ_HEAD_COUNT; head++) {
            sqz_net_desc n = net_desc((sqz_head)head, sizes[c][0], sizes[c][1], sizes[c][2],
                                      sizes[c][3], groupings[c]);
            sqz_graph g;
            build(&n, &g);
            /* 6 embedding nodes, 17 per layer, then pooler and head */
            size_t linear = 0, grouped = 0;
            for (size_t i = 0; i < g.n_nodes; i++)
                if (g.nodes[i].op == SQZ_OP_LINEAR) {
                    linear++;
                    grouped += g.nodes[i].params.linear.groups > 1;
                }
            assert_true(linear >= (size_t)(6 * sizes[c][1]));
            size_t expected_grouped = 0;
            for (int k = 0; k < 6; k++)
                expected_grouped += groupings[c][k] > 1;
            assert_int_equal(grouped, expected_grouped * (size_t)sizes[c][1]);
            assert_true(g.n_outputs >= 1);
            sqz_graph_release(&g);
        }
}

static sqz_graph small_graph(void)
{
    static const int g4[6] = {4, 4, 4, 1, 4, 4};
    static sqz_net_desc n;
    n = net_desc(SQZ_HEAD_SEQUENCE_CLASSIFICATION, 64, 2, 4, 256, g4);
    sqz_graph g;
    build(&n, &g);
    return g;
}

static void verifier_rejects_broken_graphs(void **unused)
{
    sqz_graph g = small_graph();
    assert_sqz_ok(sqz_graph_verify(&g));
    size_t lin = 0;
    while (g.nodes[lin].op != SQZ_OP_LINEAR)
        lin++;
    /* wrong group count for the weight */
    g.nodes[lin].params.linear.groups = 3;
    assert_fails_with(sqz_graph_verify(&g), SQZ_ERR_INTERNAL, "graph verifier", g.nodes[lin].name);
    g.nodes[lin].params.linear.groups = 4;
    /* an input used before it is produced */
    int saved = g.nodes[lin].inputs[0];
    g.nodes[lin].inputs[0] = g.nodes[g.n_nodes - 1].output;
    assert_fails_with(sqz_graph_verify(&g), SQZ_ERR_INTERNAL, "not produced before use");
    g.nodes[lin].inputs[0] = saved;
    /* a float tensor where indices are expected */
    int idx = g.nodes[0].inputs[0];
    g.nodes[0].inputs[0] = g.nodes[0].inputs[1];
    assert_fails_with(sqz_graph_verify(&g), SQZ_ERR_INTERNAL, g.nodes[0].name);
    g.nodes[0].inputs[0] = idx;
    /* zero layernorm eps */
    for (size_t i = 0; i < g.n_nodes; i++)
        if (g.nodes[i].op == SQZ_OP_LAYERNORM) {
            g.nodes[i].params.layernorm.eps = 0.0f;
            assert_fails_with(sqz_graph_verify(&g), SQZ_ERR_INTERNAL, g.nodes[i].name);
            g.nodes[i].params.layernorm.eps = 1e-12f;
            break;
        }
    assert_sqz_ok(sqz_graph_verify(&g));
    sqz_graph_release(&g);
}

static void dead_nodes_are_removed(void **unused)
{
    sqz_graph g = small_graph();
    size_t before = g.n_nodes;
    /* a dangling branch: tanh of the embedding output, read by nobody */
    int emb = g.nodes[5].output;
    sqz_op_params none = {0};
    int dangling = sqz_graph_add_node(&g, SQZ_OP_TANH, "dangling", &emb, 1, none, SQZ_EXTENT_TOKENS, 64);
    assert_true(dangling >= 0);
    int second = sqz_graph_add_node(&g, SQZ_OP_GELU, "dangling2", &dangling, 1, none, SQZ_EXTENT_TOKENS, 64);
    assert_true(second >= 0);
    assert_sqz_ok(sqz_graph_verify(&g));
    assert_sqz_ok(sqz_pass_eliminate_dead_nodes(&g));
    assert_int_equal(g.n_nodes, before);
    for (size_t i = 0; i < g.n_nodes; i++)
        assert_true(strncmp(g.nodes[i].name, "dangling", 8) != 0);
    assert_sqz_ok(sqz_graph_verify(&g));
    sqz_graph_release(&g);
}

/* assign-dtypes: activations take the precision's storage type, weights stay f32 and index
 * inputs i32, and the memory plan sizes each tensor by its dtype */
static void dtypes_follow_the_precision(void **unused)
{
    sqz_graph g = small_graph();
    const sqz_bucket bucket = {64, 8, 16};
    const sqz_run_dims worst = sqz_bucket_worst_case(&bucket);
    const sqz_dtype expected[SQZ_PRECISION_COUNT] = {SQZ_DTYPE_F32, SQZ_DTYPE_F32, SQZ_DTYPE_F16, SQZ_DTYPE_BF16};
    size_t arena[SQZ_PRECISION_COUNT];
    for (int p = 0; p < SQZ_PRECISION_COUNT; p++) {
        sqz_compile_options opts = {.precision = (sqz_precision)p};
        sqz_plan *plan = NULL;
        assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
        const sqz_graph *pg = &plan->graph;
        size_t activations = 0;
        for (size_t t = 0; t < pg->n_tensors; t++) {
            const sqz_tensor_desc *d = &pg->tensors[t];
            const sqz_dtype want = d->kind == SQZ_TENSOR_WEIGHT  ? SQZ_DTYPE_F32
                                   : d->kind == SQZ_TENSOR_INPUT ? SQZ_DTYPE_I32
                                                                 : expected[p];
            assert_int_equal(d->dtype, want);
            if (d->kind == SQZ_TENSOR_WEIGHT)
                continue;
            const size_t element = want == SQZ_DTYPE_F16 || want == SQZ_DTYPE_BF16 ? 2 : 4;
            assert_int_equal(plan->bytes[t], (size_t)(sqz_tensor_rows(d, &worst) * d->cols) * element);
            activations += d->kind == SQZ_TENSOR_ACTIVATION;
        }
        assert_true(activations > 0);
        arena[p] = plan->arena_bytes;
        sqz_plan_free(plan);
    }
    assert_int_equal(arena[SQZ_PRECISION_TF32], arena[SQZ_PRECISION_FP32]);
    assert_int_equal(arena[SQZ_PRECISION_FP16], arena[SQZ_PRECISION_BF16]);
    assert_true(arena[SQZ_PRECISION_FP16] < arena[SQZ_PRECISION_FP32]);
    sqz_compile_options bad = {.precision = SQZ_PRECISION_COUNT};
    sqz_plan *plan = NULL;
    assert_fails_with(sqz_plan_compile(&g, &bucket, &bad, &plan), SQZ_ERR_INVALID_ARGUMENT, "assign-dtypes");
    assert_null(plan);

    /* the verifier holds a plan to one activation type and f32 weights */
    size_t act = 0, weight = 0;
    while (g.tensors[act].kind != SQZ_TENSOR_ACTIVATION)
        act++;
    while (g.tensors[weight].kind != SQZ_TENSOR_WEIGHT)
        weight++;
    g.tensors[act].dtype = SQZ_DTYPE_F16;
    assert_fails_with(sqz_graph_verify(&g), SQZ_ERR_INTERNAL, g.tensors[act].name);
    g.tensors[act].dtype = SQZ_DTYPE_F32;
    g.tensors[weight].dtype = SQZ_DTYPE_BF16;
    assert_fails_with(sqz_graph_verify(&g), SQZ_ERR_INTERNAL, g.tensors[weight].name);
    g.tensors[weight].dtype = SQZ_DTYPE_F32;
    assert_sqz_ok(sqz_pass_assign_dtypes(&g, SQZ_PRECISION_BF16));
    assert_sqz_ok(sqz_graph_verify(&g));
    sqz_graph_release(&g);
}

/* the host conversions against the tests' own, in place as the session uses them */
static void dtype_conversions_round_to_nearest_even(void **unused)
{
    const float values[] = {1.0f, -2.5f, 65504.0f, 70000.0f, 1e-8f, 3.14159265f, -0.0f, 1.0f + 0x1p-11f, 0x1p-20f};
    enum { N = sizeof values / sizeof values[0] };
    const sqz_dtype types[] = {SQZ_DTYPE_F16, SQZ_DTYPE_BF16, SQZ_DTYPE_F32};
    for (size_t k = 0; k < 3; k++) {
        float buffer[N];
        memcpy(buffer, values, sizeof buffer);
        sqz_dtype_from_f32(types[k], buffer, N, buffer);
        for (size_t i = 0; i < N && types[k] != SQZ_DTYPE_F32; i++) {
            uint16_t bits;
            memcpy(&bits, (const char *)buffer + 2 * i, 2);
            assert_int_equal(bits, types[k] == SQZ_DTYPE_F16 ? test_half_bits(values[i]) : test_bf16_bits(values[i]));
        }
        sqz_dtype_to_f32(types[k], buffer, N, buffer);
        for (size_t i = 0; i < N; i++) {
            const float want = types[k] == SQZ_DTYPE_F16    ? test_half_value(test_half_bits(values[i]))
                               : types[k] == SQZ_DTYPE_BF16 ? test_bf16_value(test_bf16_bits(values[i]))
                                                            : values[i];
            assert_memory_equal(&buffer[i], &want, sizeof want);
        }
    }
}

static void memory_plan_never_overlaps_live_tensors(void **unused)
{
    sqz_graph g = small_graph();
    const sqz_bucket buckets[] = {{16, 1, 16}, {64, 8, 16}, {512, 4, 128}};
    for (size_t b = 0; b < 3; b++) {
        /* the middle bucket with 2-byte activations */
        sqz_compile_options opts = {.guard_bytes = 32, .precision = b == 1 ? SQZ_PRECISION_FP16 : SQZ_PRECISION_FP32};
        sqz_plan *plan = NULL;
        assert_sqz_ok(sqz_plan_compile(&g, &buckets[b], &opts, &plan));
        const sqz_graph *pg = &plan->graph;
        /* lifetime of each tensor in launch steps: [first write, last read or end] */
        size_t nt = pg->n_tensors;
        int *first = malloc(nt * sizeof *first), *last = malloc(nt * sizeof *last);
        size_t total = 0;
        for (size_t t = 0; t < nt; t++) {
            bool pinned = pg->tensors[t].kind == SQZ_TENSOR_INPUT || pg->tensors[t].is_output;
            first[t] = pg->tensors[t].kind == SQZ_TENSOR_INPUT ? -1 : pg->tensors[t].producer;
            last[t] = pinned ? (int)pg->n_nodes : first[t];
            if (plan->offsets[t] >= 0)
                total += plan->bytes[t] + plan->guard_bytes;
        }
        for (size_t n = 0; n < pg->n_nodes; n++)
            for (int i = 0; i < pg->nodes[n].n_inputs; i++) {
                int t = pg->nodes[n].inputs[i];
                if (t >= 0 && last[t] < (int)n)
                    last[t] = (int)n;
            }
        for (size_t a = 0; a < nt; a++) {
            if (plan->offsets[a] < 0)
                continue;
            size_t a0 = (size_t)plan->offsets[a], a1 = a0 + plan->bytes[a] + plan->guard_bytes;
            assert_true(a1 <= plan->arena_bytes);
            assert_int_equal(a0 % SQZ_ARENA_ALIGN, 0);
            for (size_t c = a + 1; c < nt; c++) {
                if (plan->offsets[c] < 0)
                    continue;
                bool live_together = first[a] <= last[c] && first[c] <= last[a];
                size_t c0 = (size_t)plan->offsets[c], c1 = c0 + plan->bytes[c] + plan->guard_bytes;
                bool overlap = a0 < c1 && c0 < a1;
                if (live_together && overlap)
                    fail_msg("tensors '%s' and '%s' are live together and overlap",
                             pg->tensors[a].name, pg->tensors[c].name);
            }
        }
        /* reuse happened: the arena is far smaller than every tensor side by side */
        assert_true(plan->arena_bytes < total / 4);
        assert_int_equal(plan->n_launches, pg->n_nodes);
        free(first);
        free(last);
        sqz_plan_free(plan);
    }
    sqz_graph_release(&g);
}

static void dot_output_draws_the_plan(void **unused)
{
    sqz_graph g = small_graph();
    sqz_bucket bucket = {32, 2, 16};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, NULL, &plan));
    char *dot = NULL;
    assert_sqz_ok(sqz_plan_to_dot(plan, &dot));
    assert_non_null(strstr(dot, "digraph squeezebert {"));
    assert_non_null(strstr(dot, "layer1.intermediate"));
    assert_non_null(strstr(dot, "groups=4"));
    assert_non_null(strstr(dot, "label=\"logits\""));
    assert_non_null(strstr(dot, "}\n"));
    free(dot);
    sqz_plan_free(plan);
    sqz_graph_release(&g);
}

static size_t count_op(const sqz_graph *g, sqz_op op)
{
    size_t n = 0;
    for (size_t i = 0; i < g->n_nodes; i++)
        n += g->nodes[i].op == op;
    return n;
}

static void fusion_makes_nine_launches_per_layer(void **unused)
{
    sqz_graph g = small_graph(); /* 2 layers, sequence classification */
    const uint64_t all = (1ull << SQZ_OP_EMBED_LAYERNORM) | (1ull << SQZ_OP_LINEAR_GELU) |
                         (1ull << SQZ_OP_ADD_LAYERNORM) | (1ull << SQZ_OP_ATTENTION);
    sqz_bucket bucket = {64, 4, 32};
    sqz_compile_options opts = {.fusable_ops = all};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    const sqz_graph *f = &plan->graph;
    assert_int_equal(count_op(f, SQZ_OP_EMBED_LAYERNORM), 1);
    assert_int_equal(count_op(f, SQZ_OP_ATTENTION), 2);
    assert_int_equal(count_op(f, SQZ_OP_ADD_LAYERNORM), 4);
    assert_int_equal(count_op(f, SQZ_OP_LINEAR_GELU), 2);
    for (sqz_op op = SQZ_OP_GATHER_ROWS; op <= SQZ_OP_ATTN_CONTEXT; op++)
        if (op != SQZ_OP_LINEAR && op != SQZ_OP_TANH && op != SQZ_OP_GATHER_ROWS)
            assert_int_equal(count_op(f, op), 0);
    /* embedding 1 + 9 per layer + pooler (first token, dense, tanh) + classifier */
    assert_int_equal(plan->n_launches, 1 + 9 * 2 + 3 + 1);
    /* the fused node keeps the name and output tensor of the pattern's last node */
    bool found = false;
    for (size_t i = 0; i < f->n_nodes; i++)
        if (f->nodes[i].op == SQZ_OP_ATTENTION && strcmp(f->nodes[i].name, "layer1.context") == 0)
            found = strcmp(f->tensors[f->nodes[i].output].name, "layer1.context") == 0;
    assert_true(found);
    sqz_plan_free(plan);

    /* only what the backend allows */
    opts.fusable_ops = 1ull << SQZ_OP_ADD_LAYERNORM;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    /* the embedding's last add and its LayerNorm fuse too when EMBED_LAYERNORM may not */
    assert_int_equal(count_op(&plan->graph, SQZ_OP_ADD_LAYERNORM), 5);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_ATTENTION), 0);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_LAYERNORM), 0);
    sqz_plan_free(plan);

    /* an intermediate that is also a graph output must survive: no fusion across it */
    int gelu_out = -1;
    for (size_t i = 0; i < g.n_nodes; i++)
        if (g.nodes[i].op == SQZ_OP_LINEAR && strcmp(g.nodes[i].name, "layer0.intermediate") == 0)
            gelu_out = g.nodes[i].output;
    assert_true(gelu_out >= 0);
    assert_sqz_ok(sqz_graph_add_output(&g, "intermediate", gelu_out, 0, 1, false, SQZ_LAYOUT_PER_TOKEN));
    opts.fusable_ops = all;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_LINEAR_GELU), 1);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_GELU), 1);
    sqz_plan_free(plan);
    sqz_graph_release(&g);
}

static void the_feed_forward_block_fuses_when_allowed(void **unused)
{
    sqz_graph g = small_graph();
    const uint64_t all = (1ull << SQZ_OP_EMBED_LAYERNORM) | (1ull << SQZ_OP_LINEAR_GELU) |
                         (1ull << SQZ_OP_ADD_LAYERNORM) | (1ull << SQZ_OP_ATTENTION) | (1ull << SQZ_OP_FFN);
    sqz_bucket bucket = {64, 4, 32};
    sqz_compile_options opts = {.fusable_ops = all};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    const sqz_graph *f = &plan->graph;
    assert_int_equal(count_op(f, SQZ_OP_FFN), 2);
    assert_int_equal(count_op(f, SQZ_OP_LINEAR_GELU), 0);
    /* 8 launches per layer now; the FFN node keeps the output layer's name and tensor, which
     * is what sqz validate compares with cpu_ref's */
    assert_int_equal(plan->n_launches, 1 + 8 * 2 + 3 + 1);
    bool found = false;
    for (size_t i = 0; i < f->n_nodes; i++)
        if (f->nodes[i].op == SQZ_OP_FFN && strcmp(f->nodes[i].name, "layer0.output") == 0)
            found = strcmp(f->tensors[f->nodes[i].output].name, "layer0.output") == 0 && f->nodes[i].n_inputs == 5;
    assert_true(found);
    sqz_plan_free(plan);
    /* FFN alone is not enough: it fuses a LINEAR_GELU, which must be allowed too */
    opts.fusable_ops = 1ull << SQZ_OP_FFN;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_FFN), 0);
    sqz_plan_free(plan);
    /* different groups in the two layers: not block diagonal, not fused */
    for (size_t i = 0; i < g.n_nodes; i++)
        if (strcmp(g.nodes[i].name, "layer1.output") == 0) {
            g.nodes[i].params.linear.groups = 1;
            g.tensors[g.nodes[i].inputs[1]].cols = g.tensors[g.nodes[i].inputs[0]].cols;
        }
    opts.fusable_ops = all;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_FFN), 1);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_LINEAR_GELU), 1);
    sqz_plan_free(plan);
    sqz_graph_release(&g);
}

static const sqz_node *node_named(const sqz_graph *g, const char *name)
{
    for (size_t i = 0; i < g->n_nodes; i++)
        if (strcmp(g->nodes[i].name, name) == 0)
            return &g->nodes[i];
    return NULL;
}

static int node_output(const sqz_graph *g, const char *name)
{
    const sqz_node *node = node_named(g, name);
    return node ? node->output : -1;
}

static void the_ffn_takes_its_residual_and_layernorm_when_allowed(void **unused)
{
    sqz_graph g = small_graph();
    const uint64_t ffn = (1ull << SQZ_OP_EMBED_LAYERNORM) | (1ull << SQZ_OP_LINEAR_GELU) |
                         (1ull << SQZ_OP_ADD_LAYERNORM) | (1ull << SQZ_OP_ATTENTION) | (1ull << SQZ_OP_FFN);
    const uint64_t all = ffn | (1ull << SQZ_OP_FFN_ADD_LAYERNORM);
    sqz_bucket bucket = {64, 4, 32};
    sqz_compile_options opts = {.fusable_ops = all};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    const sqz_graph *f = &plan->graph;
    assert_int_equal(count_op(f, SQZ_OP_FFN_ADD_LAYERNORM), 2);
    assert_int_equal(count_op(f, SQZ_OP_FFN), 0);
    assert_int_equal(count_op(f, SQZ_OP_ADD_LAYERNORM), 2); /* the post-attention ones */
    /* 7 launches per layer; the node keeps the LayerNorm's name and output tensor, which sqz
     * validate compares with cpu_ref's */
    assert_int_equal(plan->n_launches, 1 + 7 * 2 + 3 + 1);
    float eps = 0.0f;
    for (size_t i = 0; i < g.n_nodes; i++)
        if (strcmp(g.nodes[i].name, "layer1.output_norm") == 0)
            eps = g.nodes[i].params.layernorm.eps;
    assert_true(eps > 0.0f);
    bool found = false;
    for (size_t i = 0; i < f->n_nodes; i++) {
        const sqz_node *n = &f->nodes[i];
        if (n->op != SQZ_OP_FFN_ADD_LAYERNORM || strcmp(n->name, "layer1.output_norm") != 0)
            continue;
        /* SqueezeBERT's residual is the FFN's own input; weights in the FFN's order */
        found = strcmp(f->tensors[n->output].name, "layer1.output_norm") == 0 && n->n_inputs == 8 &&
                n->inputs[5] == n->inputs[0] && n->params.ffn_layernorm.groups == 4 &&
                n->params.ffn_layernorm.eps == eps &&
                strstr(f->tensors[n->inputs[1]].name, "intermediate") != NULL &&
                strstr(f->tensors[n->inputs[3]].name, "output.conv1d") != NULL &&
                strstr(f->tensors[n->inputs[6]].name, "output.layernorm") != NULL;
    }
    assert_true(found);
    /* the verifier's rules for it: eps > 0, a residual as wide as the output */
    sqz_graph broken;
    assert_sqz_ok(sqz_graph_copy(f, &broken));
    sqz_node *fused = &broken.nodes[0];
    while (fused->op != SQZ_OP_FFN_ADD_LAYERNORM)
        fused++;
    fused->params.ffn_layernorm.eps = 0.0f;
    assert_fails_with(sqz_graph_verify(&broken), SQZ_ERR_INTERNAL, fused->name, "eps > 0");
    fused->params.ffn_layernorm.eps = eps;
    assert_sqz_ok(sqz_graph_verify(&broken));
    fused->inputs[5] = fused->inputs[2]; /* b1: [1, hidden] */
    assert_fails_with(sqz_graph_verify(&broken), SQZ_ERR_INTERNAL, fused->name, "residual");
    sqz_graph_release(&broken);
    sqz_plan_free(plan);

    /* not allowed: the FFN and a separate add + LayerNorm, as before */
    opts.fusable_ops = ffn;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_FFN_ADD_LAYERNORM), 0);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_FFN), 2);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_ADD_LAYERNORM), 4);
    sqz_plan_free(plan);

    /* an FFN output that is a graph output, or that another node reads, must stay */
    const int out0 = node_output(&g, "layer0.output"), out1 = node_output(&g, "layer1.output");
    assert_true(out0 >= 0 && out1 >= 0);
    assert_sqz_ok(sqz_graph_add_output(&g, "ffn0", out0, 0, 1, false, SQZ_LAYOUT_PER_TOKEN));
    const int also = sqz_graph_add_node(&g, SQZ_OP_TANH, "also_reads_ffn1", &out1, 1, (sqz_op_params){0},
                                        SQZ_EXTENT_TOKENS, g.tensors[out1].cols);
    assert_true(also >= 0);
    assert_sqz_ok(sqz_graph_add_output(&g, "also", also, 0, 1, false, SQZ_LAYOUT_PER_TOKEN));
    opts.fusable_ops = all;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_FFN_ADD_LAYERNORM), 0);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_FFN), 2);
    sqz_plan_free(plan);
    sqz_graph_release(&g);
}

static void q_k_and_v_fuse_into_one_product_when_allowed(void **unused)
{
    sqz_graph g = small_graph(); /* 64 channels, 4 heads of 16, q/k/v in 4 groups */
    const uint64_t all = (1ull << SQZ_OP_EMBED_LAYERNORM) | (1ull << SQZ_OP_LINEAR_GELU) |
                         (1ull << SQZ_OP_ADD_LAYERNORM) | (1ull << SQZ_OP_ATTENTION) | (1ull << SQZ_OP_FFN) |
                         (1ull << SQZ_OP_QKV);
    sqz_bucket bucket = {64, 4, 32};
    sqz_compile_options opts = {.fusable_ops = all};
    sqz_plan *plan = NULL;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    const sqz_graph *f = &plan->graph;
    assert_int_equal(count_op(f, SQZ_OP_QKV), 2);
    /* 6 launches per layer: qkv, attention, post-attention, add+norm, ffn, add+norm */
    assert_int_equal(plan->n_launches, 1 + 6 * 2 + 3 + 1);
    /* 5 with the FFN's residual and LayerNorm too (issue 12's count) */
    sqz_plan *every = NULL;
    opts.fusable_ops = all | (1ull << SQZ_OP_FFN_ADD_LAYERNORM);
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &every));
    assert_int_equal(every->n_launches, 1 + 5 * 2 + 3 + 1);
    sqz_plan_free(every);
    opts.fusable_ops = all;
    const sqz_node *qkv = node_named(f, "layer1.qkv"), *attention = node_named(f, "layer1.context");
    assert_non_null(qkv);
    assert_non_null(attention);
    assert_int_equal(qkv->op, SQZ_OP_QKV);
    assert_int_equal(qkv->params.linear.groups, 4);
    assert_int_equal(f->tensors[qkv->output].cols, 3 * 64);
    assert_string_equal(f->tensors[qkv->output].name, "layer1.qkv");
    /* the weights in q, k, v order, each with its bias */
    const char *const weights[6] = {"encoder.layers.1.attention.query.weight", "encoder.layers.1.attention.query.bias",
                                    "encoder.layers.1.attention.key.weight",   "encoder.layers.1.attention.key.bias",
                                    "encoder.layers.1.attention.value.weight", "encoder.layers.1.attention.value.bias"};
    for (int i = 0; i < 6; i++)
        assert_string_equal(f->tensors[qkv->inputs[1 + i]].name, weights[i]);
    assert_int_equal(attention->params.attention.qkv_groups, 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(attention->inputs[i], qkv->output);
    assert_null(node_named(f, "layer1.query"));
    assert_null(node_named(f, "layer1.value"));
    /* the verifier holds a fused attention to one QKV input in all three places */
    sqz_graph broken;
    assert_sqz_ok(sqz_graph_copy(f, &broken));
    sqz_node *reads = (sqz_node *)node_named(&broken, "layer1.context");
    reads->inputs[1] = reads->inputs[3]; /* the key_valid input */
    assert_fails_with(sqz_graph_verify(&broken), SQZ_ERR_INTERNAL, "layer1.context", "one [tokens, 3 x 64] tensor");
    sqz_graph_release(&broken);
    sqz_plan_free(plan);
    /* QKV alone is not enough: it feeds the fused attention, which must be allowed too */
    opts.fusable_ops = 1ull << SQZ_OP_QKV;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_QKV), 0);
    sqz_plan_free(plan);
    /* not without QKV allowed (the other backends) */
    opts.fusable_ops = all & ~(1ull << SQZ_OP_QKV);
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_QKV), 0);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_ATTENTION), 2);
    sqz_plan_free(plan);
    /* layer 0's key in other groups than its query; layer 1's value a graph output */
    sqz_node *key = NULL;
    for (size_t i = 0; i < g.n_nodes; i++)
        if (strcmp(g.nodes[i].name, "layer0.key") == 0)
            key = &g.nodes[i];
    assert_non_null(key);
    key->params.linear.groups = 1;
    g.tensors[key->inputs[1]].cols = g.tensors[key->inputs[0]].cols;
    const sqz_node *value = node_named(&g, "layer1.value");
    assert_non_null(value);
    assert_sqz_ok(sqz_graph_add_output(&g, "value", value->output, 0, 1, false, SQZ_LAYOUT_PER_TOKEN));
    opts.fusable_ops = all;
    assert_sqz_ok(sqz_plan_compile(&g, &bucket, &opts, &plan));
    assert_int_equal(count_op(&plan->graph, SQZ_OP_QKV), 0);
    assert_int_equal(count_op(&plan->graph, SQZ_OP_ATTENTION), 2);
    sqz_plan_free(plan);
    sqz_graph_release(&g);
}

static void bad_buckets_are_rejected(void **unused)
{
    sqz_graph g = small_graph();
    sqz_plan *plan = NULL;
    sqz_bucket zero = {0, 1, 1}, more_seqs = {4, 8, 4};
    assert_fails_with(sqz_plan_compile(&g, &zero, NULL, &plan), SQZ_ERR_INVALID_ARGUMENT, "bad bucket");
    assert_fails_with(sqz_plan_compile(&g, &more_seqs, NULL, &plan), SQZ_ERR_INVALID_ARGUMENT, "bad bucket");
    assert_null(plan);
    sqz_graph_release(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(builds_every_head_and_grouping),
        cmocka_unit_test(verifier_rejects_broken_graphs),
        cmocka_unit_test(dead_nodes_are_removed),
        cmocka_unit_test(memory_plan_never_overlaps_live_tensors),
        cmocka_unit_test(dtypes_follow_the_precision),
        cmocka_unit_test(dtype_conversions_round_to_nearest_even),
        cmocka_unit_test(dot_output_draws_the_plan),
        cmocka_unit_test(fusion_makes_nine_launches_per_layer),
        cmocka_unit_test(the_feed_forward_block_fuses_when_allowed),
        cmocka_unit_test(the_ffn_takes_its_residual_and_layernorm_when_allowed),
        cmocka_unit_test(q_k_and_v_fuse_into_one_product_when_allowed),
        cmocka_unit_test(bad_buckets_are_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
