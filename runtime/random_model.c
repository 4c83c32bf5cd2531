/* `sqz random-model`: a deterministic random-weight checkpoint in the Hugging Face layout,
 * so the full-size network can be run and benchmarked on any machine. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/error.h"
#include "runtime/model.h"
#include "runtime/model_weights.h"
#include "runtime/tensor_file.h"

/* splitmix64: small, fast, and the same stream on every platform */
static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double next_normal(uint64_t *state)
{
    /* Box-Muller; u1 in (0, 1] so the log is finite */
    double u1 = ((double)(next_u64(state) >> 11) + 1.0) / 9007199254740992.0;
    double u2 = (double)(next_u64(state) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Scales chosen so activations stay O(1) through many layers and every parameter (biases,
 * LayerNorm shifts) visibly matters. */
static void fill(const sqz_weight_spec *spec, uint64_t *state, float *data)
{
    const int64_t n = spec->rows * spec->cols;
    const bool layernorm = strstr(spec->canonical, "LayerNorm.") || strstr(spec->canonical, "layernorm.");
    const bool gamma = layernorm && strstr(spec->canonical, ".weight");
    double scale = 0.1, shift = 0.0;
    if (gamma)
        shift = 1.0;
    else if (spec->role == SQZ_WEIGHT_MATRIX)
        scale = 1.0 / sqrt((double)spec->cols);
    for (int64_t i = 0; i < n; i++)
        data[i] = (float)(shift + scale * next_normal(state));
}

static sqz_status write_config(const sqz_config *c, const char *path)
{
    json_t *root = json_object();
    json_t *archs = json_array();
    json_t *labels = json_object();
    if (!root || !archs || !labels) {
        json_decref(root);
        json_decref(archs);
        json_decref(labels);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory writing %s", path);
    }
    json_array_append_new(archs, json_string(c->architecture));
    json_object_set_new(root, "architectures", archs);
    json_object_set_new(root, "model_type", json_string("squeezebert"));
    struct { const char *key; int value; } ints[] = {
        {"vocab_size", c->vocab_size}, {"hidden_size", c->hidden_size},
        {"embedding_size", c->hidden_size}, {"num_hidden_layers", c->num_layers},
        {"num_attention_heads", c->num_heads}, {"intermediate_size", c->intermediate_size},
        {"max_position_embeddings", c->max_position_embeddings},
        {"type_vocab_size", c->type_vocab_size}, {"q_groups", c->q_groups},
        {"k_groups", c->k_groups}, {"v_groups", c->v_groups},
        {"post_attention_groups", c->post_attention_groups},
        {"intermediate_groups", c->intermediate_groups}, {"output_groups", c->output_groups},
        {"pad_token_id", 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        json_object_set_new(root, ints[i].key, json_integer(ints[i].value));
    /* the variants, only when on, so default checkpoints stay plain transformers configs */
    if (c->linear_attention)
        json_object_set_new(root, "sqz_attention", json_string("linear"));
    struct { const char *key; int value, off; } variants[] = {
        {"sqz_share_layers", c->share_layers, 0}, {"sqz_layer_stride", c->layer_stride, 1},
        {"sqz_run_layers", c->run_layers, 0}};
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
        if (variants[i].value != variants[i].off)
            json_object_set_new(root, variants[i].key, json_integer(variants[i].value));
    json_object_set_new(root, "hidden_act", json_string("gelu"));
    json_object_set_new(root, "layer_norm_eps", json_real(c->layer_norm_eps));
    if (c->head != SQZ_HEAD_BASE) {
        for (int i = 0; i < c->num_labels; i++) {
            char key[16];
            snprintf(key, sizeof key, "%d", i);
            json_object_set_new(labels, key, json_string(c->labels[i]));
        }
        json_object_set_new(root, "id2label", labels);
    } else {
        json_decref(labels);
    }
    int rc = json_dump_file(root, path, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (rc != 0)
        return sqz_fail(SQZ_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return SQZ_OK;
}

sqz_status sqz_random_model_write(const char *preset, uint64_t seed, const char *out_dir)
{
    if (!preset || !out_dir)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_random_model_write: preset and out_dir are required");
    sqz_config c;
    sqz_status st = sqz_config_preset(preset, &c);
    if (st != SQZ_OK)
        return st;
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
        sqz_config_release(&c);
        return sqz_fail(SQZ_ERR_IO, "cannot create directory %s: %s", out_dir, strerror(errno));
    }
    size_t n = sqz_weight_specs(&c, NULL, 0);
    sqz_weight_spec *specs = calloc(n, sizeof *specs);
    sqz_tf_write_tensor *tensors = calloc(n, sizeof *tensors);
    char (*names)[192] = calloc(n, sizeof *names);
    float **data = calloc(n, sizeof *data);
    size_t path_len = strlen(out_dir) + 32;
    char *path = malloc(path_len);
    if (!specs || !tensors || !names || !data || !path) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    sqz_weight_specs(&c, specs, n);
    uint64_t state = seed;
    for (size_t i = 0; i < n; i++) {
        const sqz_weight_spec *spec = &specs[i];
        data[i] = malloc((size_t)(spec->rows * spec->cols) * sizeof(float));
        if (!data[i]) {
            st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for %s", spec->canonical);
            goto done;
        }
        fill(spec, &state, data[i]);
        sqz_weight_file_name(&c, spec, names[i], sizeof names[i]);
        sqz_tf_write_tensor *t = &tensors[i];
        t->name = names[i];
        t->data = data[i];
        if (spec->role == SQZ_WEIGHT_VECTOR) {
            t->ndim = 1;
            t->shape[0] = spec->cols;
        } else {
            t->ndim = spec->conv ? 3 : 2;
            t->shape[0] = spec->rows;
            t->shape[1] = spec->cols;
            t->shape[2] = 1;
        }
    }
    snprintf(path, path_len, "%s/config.json", out_dir);
    st = write_config(&c, path);
    if (st == SQZ_OK) {
        snprintf(path, path_len, "%s/model.safetensors", out_dir);
        st = sqz_safetensors_write(path, tensors, n, SQZ_TF_F32);
    }
done:
    if (data)
        for (size_t i = 0; i < n; i++)
            free(data[i]);
    free(data);
    free(names);
    free(tensors);
    free(specs);
    free(path);
    sqz_config_release(&c);
    return st;
}
