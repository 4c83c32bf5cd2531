/* The loaded model: parsed config plus weights bound to canonical names. */
#ifndef SQZ_RUNTIME_MODEL_H
#define SQZ_RUNTIME_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "squeezebert.h"

#define SQZ_MAX_LABEL_LEN 128

typedef struct sqz_config {
    char model_type[32];     /* "squeezebert" or "bert" */
    char architecture[128];
    sqz_head head;
    bool is_bert;
    int vocab_size, hidden_size, num_layers, num_heads, intermediate_size;
    int max_position_embeddings, type_vocab_size, num_labels;
    int q_groups, k_groups, v_groups, post_attention_groups, intermediate_groups, output_groups;
    double layer_norm_eps;         /* embeddings and MLM head */
    double encoder_layer_norm_eps; /* the two LayerNorms of every layer */
    bool tie_word_embeddings;
    /* The variants of docs/variants.md: config.json keys of our own, off by default so real
     * checkpoints keep matching transformers. */
    bool linear_attention; /* "sqz_attention": "linear" (default "softmax") */
    int share_layers;      /* "sqz_share_layers": k >= 1: layer l uses the weights of layer
                              l - l % k, which alone the checkpoint needs; 0: off */
    int layer_stride;      /* "sqz_layer_stride": run layers 0, k, 2k, ... of the checkpoint (1) */
    int run_layers;        /* "sqz_run_layers": run only the first N of those (0: all) */
    char **labels; /* num_labels names from id2label (LABEL_i when absent) */
} sqz_config;

/* Parses config.json at `path` with the validation the engine needs. */
sqz_status sqz_config_load(const char *path, sqz_config *out);
void sqz_config_release(sqz_config *config);

/* One weight the graph uses, stored [rows][cols] fp32 (conv weights [O, I/g, 1] are
 * flattened to [O, I/g]; vectors are [1, n]). */
typedef struct sqz_weight {
    char name[96]; /* canonical, SqueezeBERT-style, without prefix */
    int64_t rows, cols;
    float *data;   /* owned unless alias_of >= 0 */
    int alias_of;  /* index of the weight this one shares storage with (tied decoder) */
} sqz_weight;

struct sqz_model {
    char *dir;
    char *weights_path;
    sqz_config config;
    sqz_weight *weights;
    size_t n_weights;
    bool has_pooler;
    char **ignored_keys;
    size_t n_ignored_keys;
    sqz_model_load_options load_options; /* kept for the files read later (sentence Dense modules) */
};

/* How many layers run, after sqz_layer_stride and sqz_run_layers. */
int sqz_config_layers_run(const sqz_config *config);

/* Canonical weight names used by the graph builder. */
int sqz_model_weight_index(const sqz_model *model, const char *canonical_name);

/* Presets shared by `sqz random-model` and the tests. */
sqz_status sqz_config_preset(const char *preset, sqz_config *out);

#endif
