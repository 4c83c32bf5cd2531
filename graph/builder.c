#include "graph/builder.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime/error.h"

typedef struct builder {
    const sqz_net_desc *net;
    sqz_graph *g;
    sqz_status status;
} builder;

static int weight(builder *b, const char *name)
{
    if (b->status != SQZ_OK)
        return -1;
    int index = b->net->weight_index(b->net->user, name);
    if (index < 0) {
        b->status = sqz_fail(SQZ_ERR_INTERNAL, "graph builder: weight '%s' is not bound", name);
        return -1;
    }
    int64_t rows, cols;
    b->net->weight_shape(b->net->user, index, &rows, &cols);
    int t = sqz_graph_add_weight(b->g, name, index, rows, cols);
    if (t < 0)
        b->status = SQZ_ERR_OUT_OF_MEMORY;
    return t;
}

static int node(builder *b, sqz_op op, const char *name, const int *inputs, int n_inputs,
                sqz_op_params params, sqz_extent extent, int64_t cols)
{
    if (b->status != SQZ_OK)
        return -1;
    int t = sqz_graph_add_node(b->g, op, name, inputs, n_inputs, params, extent, cols);
    if (t < 0)
        b->status = SQZ_ERR_OUT_OF_MEMORY;
    return t;
}

static int input(builder *b, const char *name, sqz_extent extent)
{
    if (b->status != SQZ_OK)
        return -1;
    int t = sqz_graph_add_tensor(b->g, name, SQZ_TENSOR_INPUT, SQZ_DTYPE_I32, extent, 0, 1);
    if (t < 0)
        b->status = SQZ_ERR_OUT_OF_MEMORY;
    return t;
}

/* `prefix` names the weight pair: "<prefix>.weight" and "<prefix>.bias". */
static int linear(builder *b, const char *name, int x, const char *prefix, int groups,
                  sqz_extent extent)
{
    char wname[SQZ_NAME_LEN], bname[SQZ_NAME_LEN];
    snprintf(wname, sizeof wname, "%s.weight", prefix);
    snprintf(bname, sizeof bname, "%s.bias", prefix);
    int w = weight(b, wname);
    int bias = weight(b, bname);
    if (b->status != SQZ_OK)
        return -1;
    int in[3] = {x, w, bias};
    sqz_op_params p = {.linear = {groups}};
    return node(b, SQZ_OP_LINEAR, name, in, 3, p, extent, b->g->tensors[w].fixed_rows);
}

static int layernorm(builder *b, const char *name, int x, const char *prefix, float eps,
                     sqz_extent extent)
{
    char gname[SQZ_NAME_LEN], bname[SQZ_NAME_LEN];
    snprintf(gname, sizeof gname, "%s.weight", prefix);
    snprintf(bname, sizeof bname, "%s.bias", prefix);
    int gamma = weight(b, gname), beta = weight(b, bname);
    if (b->status != SQZ_OK)
        return -1;
    int in[3] = {x, gamma, beta};
    sqz_op_params p = {.layernorm = {eps}};
    return node(b, SQZ_OP_LAYERNORM, name, in, 3, p, extent, b->g->tensors[x].cols);
}

static int binary(builder *b, sqz_op op, const char *name, int x, int y)
{
    int in[2] = {x, y};
    sqz_op_params p = {0};
    return node(b, op, name, in, 2, p, b->status == SQZ_OK ? b->g->tensors[x].extent : 0,
                b->status == SQZ_OK ? b->g->tensors[x].cols : 0);
}

static int unary(builder *b, sqz_op op, const char *name, int x)
{
    sqz_op_params p = {0};
    return node(b, op, name, &x, 1, p, b->status == SQZ_OK ? b->g->tensors[x].extent : 0,
                b->status == SQZ_OK ? b->g->tensors[x].cols : 0);
}

static int gather(builder *b, const char *name, int index, int table)
{
    int in[2] = {index, table};
    sqz_op_params p = {0};
    return node(b, SQZ_OP_GATHER_ROWS, name, in, 2, p,
                b->status == SQZ_OK ? b->g->tensors[index].extent : 0,
                b->status == SQZ_OK ? b->g->tensors[table].cols : 0);
}

/* softmax(scale Q K^T + key mask) V, as four primitive nodes the fusion pass may join */
static int softmax_attention(builder *b, int l, int q, int k, int v, sqz_op_params attn)
{
    const sqz_graph_inputs *in = &b->g->in;
    const int heads = attn.attention.heads;
    char name[SQZ_NAME_LEN];
#define NAME(part) (snprintf(name, sizeof name, "layer%d.%s", l, part), name)
    int s_in[4] = {q, k, in->seq_offsets, in->score_offsets};
    int s = node(b, SQZ_OP_ATTN_SCORES, NAME("scores"), s_in, 4, attn, SQZ_EXTENT_SCORES, heads);
    int m_in[4] = {s, in->key_valid, in->seq_offsets, in->score_offsets};
    int masked = node(b, SQZ_OP_ATTN_KEY_MASK, NAME("masked_scores"), m_in, 4, attn, SQZ_EXTENT_SCORES, heads);
    int p_in[3] = {masked, in->seq_offsets, in->score_offsets};
    int probs = node(b, SQZ_OP_ATTN_SOFTMAX, NAME("probs"), p_in, 3, attn, SQZ_EXTENT_SCORES, heads);
    int c_in[4] = {probs, v, in->seq_offsets, in->score_offsets};
    return node(b, SQZ_OP_ATTN_CONTEXT, NAME("context"), c_in, 4, attn, SQZ_EXTENT_TOKENS,
                (int64_t)heads * attn.attention.head_dim);
#undef NAME
}

/* the linear-attention variant: one node, cost linear in the sequence length */
static int linear_attention(builder *b, const char *name, int q, int k, int v, sqz_op_params attn)
{
    const sqz_graph_inputs *in = &b->g->in;
    int inputs[5] = {q, k, v, in->key_valid, in->seq_offsets};
    return node(b, SQZ_OP_LINEAR_ATTENTION, name, inputs, 5, attn, SQZ_EXTENT_TOKENS,
                (int64_t)attn.attention.heads * attn.attention.head_dim);
}

static int encoder_layer(builder *b, int l, int x)
{
    const sqz_net_desc *n = b->net;
    char name[SQZ_NAME_LEN], prefix[SQZ_NAME_LEN];
#define NAME(part) (snprintf(name, sizeof name, "layer%d.%s", l, part), name)
    const int wl = sqz_weight_layer(l, n->layer_stride, n->share_layers);
#define W(part) (snprintf(prefix, sizeof prefix, "encoder.layers.%d.%s", wl, part), prefix)
    int q = linear(b, NAME("query"), x, W("attention.query"), n->q_groups,
                   SQZ_EXTENT_TOKENS);
    int k = linear(b, NAME("key"), x, W("attention.key"), n->k_groups,
                   SQZ_EXTENT_TOKENS);
    int v = linear(b, NAME("value"), x, W("attention.value"), n->v_groups,
                   SQZ_EXTENT_TOKENS);
    const int head_dim = n->hidden_size / n->num_heads;
    sqz_op_params attn = {
        .attention = {.heads = n->num_heads, .head_dim = head_dim, .scale = (float)(1.0 / sqrt(head_dim))}};
    int ctx = n->linear_attention ? linear_attention(b, NAME("context"), q, k, v, attn)
                                  : softmax_attention(b, l, q, k, v, attn);
    int pa = linear(b, NAME("post_attention"), ctx, W("post_attention.conv1d"),
                    n->post_attention_groups, SQZ_EXTENT_TOKENS);
    int r1 = binary(b, SQZ_OP_ADD, NAME("post_attention_residual"), pa, x);
    int y = layernorm(b, NAME("post_attention_norm"), r1,
                      W("post_attention.layernorm"), n->encoder_layer_norm_eps,
                      SQZ_EXTENT_TOKENS);
    int i = linear(b, NAME("intermediate"), y, W("intermediate.conv1d"),
                   n->intermediate_groups, SQZ_EXTENT_TOKENS);
    int gelu = unary(b, SQZ_OP_GELU, NAME("intermediate_gelu"), i);
    int o = linear(b, NAME("output"), gelu, W("output.conv1d"),
                   n->output_groups, SQZ_EXTENT_TOKENS);
    int r2 = binary(b, SQZ_OP_ADD, NAME("output_residual"), o, y);
    return layernorm(b, NAME("output_norm"), r2, W("output.layernorm"),
                     n->encoder_layer_norm_eps, SQZ_EXTENT_TOKENS);
#undef NAME
#undef W
}

static void output(builder *b, const char *name, int tensor, int64_t col_begin, int64_t cols,
                   bool squeeze, sqz_output_layout layout)
{
    if (b->status == SQZ_OK)
        b->status = sqz_graph_add_output(b->g, name, tensor, col_begin, cols, squeeze, layout);
}

sqz_status sqz_build_graph(const sqz_net_desc *n, sqz_graph *g)
{
    sqz_graph_init(g);
    builder b = {n, g, SQZ_OK};
    sqz_graph_inputs *in = &g->in;
    in->token_ids = input(&b, "token_ids", SQZ_EXTENT_TOKENS);
    in->token_types = input(&b, "token_types", SQZ_EXTENT_TOKENS);
    in->positions = input(&b, "positions", SQZ_EXTENT_TOKENS);
    in->key_valid = input(&b, "key_valid", SQZ_EXTENT_TOKENS);
    in->seq_offsets = input(&b, "seq_offsets", SQZ_EXTENT_SEQUENCES_PLUS_ONE);
    in->score_offsets = input(&b, "score_offsets", SQZ_EXTENT_SEQUENCES_PLUS_ONE);
    in->first_tokens = input(&b, "first_tokens", SQZ_EXTENT_SEQUENCES);

    int word = gather(&b, "embeddings.word", in->token_ids,
                      weight(&b, "embeddings.word_embeddings.weight"));
    int pos = gather(&b, "embeddings.position", in->positions,
                     weight(&b, "embeddings.position_embeddings.weight"));
    int sum = binary(&b, SQZ_OP_ADD, "embeddings.word_plus_position", word, pos);
    int type = gather(&b, "embeddings.token_type", in->token_types,
                      weight(&b, "embeddings.token_type_embeddings.weight"));
    int emb = binary(&b, SQZ_OP_ADD, "embeddings.sum", sum, type);
    int h = layernorm(&b, "embeddings.norm", emb, "embeddings.LayerNorm",
                      n->layer_norm_eps, SQZ_EXTENT_TOKENS);
    for (int l = 0; l < n->num_layers; l++)
        h = encoder_layer(&b, l, h);

    int pooled = -1;
    bool wants_pooler = n->head == SQZ_HEAD_SEQUENCE_CLASSIFICATION ||
                        n->head == SQZ_HEAD_MULTIPLE_CHOICE ||
                        (n->head == SQZ_HEAD_BASE && n->has_pooler);
    if (wants_pooler) {
        int first = gather(&b, "pooler.first_token", in->first_tokens, h);
        int dense = linear(&b, "pooler.dense", first, "pooler.dense", 1,
                           SQZ_EXTENT_SEQUENCES);
        pooled = unary(&b, SQZ_OP_TANH, "pooler.tanh", dense);
    }
    switch (n->head) {
    case SQZ_HEAD_BASE:
        output(&b, "last_hidden_state", h, 0, n->hidden_size, false, SQZ_LAYOUT_PER_TOKEN);
        if (pooled >= 0)
            output(&b, "pooler_output", pooled, 0, n->hidden_size, false, SQZ_LAYOUT_PER_SEQUENCE);
        break;
    case SQZ_HEAD_SEQUENCE_CLASSIFICATION: {
        int logits = linear(&b, "classifier", pooled, "classifier", 1, SQZ_EXTENT_SEQUENCES);
        output(&b, "logits", logits, 0, n->num_labels, false, SQZ_LAYOUT_PER_SEQUENCE);
        break;
    }
    case SQZ_HEAD_TOKEN_CLASSIFICATION: {
        int logits = linear(&b, "classifier", h, "classifier", 1, SQZ_EXTENT_TOKENS);
        output(&b, "logits", logits, 0, n->num_labels, false, SQZ_LAYOUT_PER_TOKEN);
        break;
    }
    case SQZ_HEAD_QUESTION_ANSWERING: {
        int logits = linear(&b, "qa_outputs", h, "qa_outputs", 1, SQZ_EXTENT_TOKENS);
        output(&b, "start_logits", logits, 0, 1, true, SQZ_LAYOUT_PER_TOKEN);
        output(&b, "end_logits", logits, 1, 1, true, SQZ_LAYOUT_PER_TOKEN);
        break;
    }
    case SQZ_HEAD_MULTIPLE_CHOICE: {
        int logits = linear(&b, "classifier", pooled, "classifier", 1, SQZ_EXTENT_SEQUENCES);
        output(&b, "logits", logits, 0, 1, true, SQZ_LAYOUT_PER_CHOICE);
        break;
    }
    case SQZ_HEAD_MASKED_LM: {
        /* only the tokens the run asks for are decoded: [tokens x vocab] logits are the cost */
        in->out_rows = input(&b, "out_rows", SQZ_EXTENT_SELECTED);
        int rows = gather(&b, "mlm.rows", in->out_rows, h);
        int dense = linear(&b, "mlm.transform.dense", rows, "cls.predictions.transform.dense",
                           1, SQZ_EXTENT_SELECTED);
        int act = unary(&b, SQZ_OP_GELU, "mlm.transform.gelu", dense);
        int norm = layernorm(&b, "mlm.transform.norm", act, "cls.predictions.transform.LayerNorm",
                             n->layer_norm_eps, SQZ_EXTENT_SELECTED);
        int dec_w = weight(&b, "cls.predictions.decoder.weight");
        int dec_b = weight(&b, "cls.predictions.bias");
        if (b.status == SQZ_OK) {
            int dec_in[3] = {norm, dec_w, dec_b};
            sqz_op_params p = {.linear = {1}};
            int logits = node(&b, SQZ_OP_LINEAR, "mlm.decoder", dec_in, 3, p, SQZ_EXTENT_SELECTED,
                              n->vocab_size);
            output(&b, "logits", logits, 0, n->vocab_size, false, SQZ_LAYOUT_PER_TOKEN);
        }
        break;
    }
    default:
        b.status = sqz_fail(SQZ_ERR_INTERNAL, "graph builder: unknown head %d", (int)n->head);
    }
    if (b.status == SQZ_OK)
        b.status = sqz_graph_verify(g);
    if (b.status != SQZ_OK)
        sqz_graph_release(g);
    return b.status;
}
