/* The SqueezeBERT builder: a network description -> graph of primitive ops. BERT is the
 * same network with every group count 1. */
#ifndef SQZ_GRAPH_BUILDER_H
#define SQZ_GRAPH_BUILDER_H

#include <stdbool.h>

#include "graph/graph.h"

typedef struct sqz_net_desc {
    sqz_head head;
    int vocab_size, hidden_size, num_layers, num_heads, intermediate_size;
    int max_position_embeddings, type_vocab_size, num_labels;
    int q_groups, k_groups, v_groups, post_attention_groups, intermediate_groups, output_groups;
    float layer_norm_eps, encoder_layer_norm_eps;
    bool has_pooler; /* a base model whose file has no pooler produces no pooler_output */
    /* the variants (docs/variants.md): num_layers layers run; layer l takes its weights from
     * checkpoint layer sqz_weight_layer(l, layer_stride, share_layers) */
    bool linear_attention;
    int layer_stride, share_layers;
    /* Returns the model weight index bound to a canonical name, or -1. */
    int (*weight_index)(const void *user, const char *canonical_name);
    /* Returns the [rows, cols] of weight `index`. */
    void (*weight_shape)(const void *user, int index, int64_t *rows, int64_t *cols);
    const void *user;
} sqz_net_desc;

sqz_status sqz_build_graph(const sqz_net_desc *net, sqz_graph *out);

/* The checkpoint layer whose weights layer `layer` of the run uses: every stride-th layer,
 * then the first of its group of `share` layers (share 0: no sharing). */
static inline int sqz_weight_layer(int layer, int stride, int share)
{
    const int source = layer * (stride > 0 ? stride : 1);
    return share > 0 ? source - source % share : source;
}

#endif
