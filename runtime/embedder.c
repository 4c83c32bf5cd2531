/* Sentence embeddings as sentence-transformers computes them after the transformer: the
 * modules of modules.json (Pooling, Dense, Normalize) read from the directory exactly as
 * sentence-transformers saves it, both its current and its older file formats. Every file is
 * hostile input: sizes are limited, every field's type is checked, and anything this code does
 * not implement is refused by name rather than approximated. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/files.h"
#include "runtime/model.h"
#include "runtime/tensor_file.h"

enum {
    MAX_MODULE_JSON_BYTES = 1 << 20, /* modules.json and the modules' configs are a few lines */
    MAX_MODULES = 64,
    MAX_DENSE_FEATURES = 1 << 16,
};

static const char *const mode_names[SQZ_POOL_MODE_COUNT] = {
    "cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", "pooler",
};

/* The older boolean keys, in the order sentence-transformers concatenates their modes. */
static const struct { const char *key; sqz_pool_mode mode; } legacy_keys[] = {
    {"pooling_mode_cls_token", SQZ_POOL_CLS},
    {"pooling_mode_max_tokens", SQZ_POOL_MAX},
    {"pooling_mode_mean_tokens", SQZ_POOL_MEAN},
    {"pooling_mode_mean_sqrt_len_tokens", SQZ_POOL_MEAN_SQRT_LEN},
    {"pooling_mode_weightedmean_tokens", SQZ_POOL_WEIGHTED_MEAN},
    {"pooling_mode_lasttoken", SQZ_POOL_LAST_TOKEN},
};

typedef enum activation { ACT_IDENTITY, ACT_TANH, ACT_RELU, ACT_SIGMOID, ACT_GELU } activation;

static const struct { const char *name; activation act; } activations[] = {
    {"torch.nn.modules.linear.Identity", ACT_IDENTITY},
    {"torch.nn.modules.activation.Tanh", ACT_TANH},
    {"torch.nn.modules.activation.ReLU", ACT_RELU},
    {"torch.nn.modules.activation.Sigmoid", ACT_SIGMOID},
    {"torch.nn.modules.activation.GELU", ACT_GELU},
};

typedef struct dense {
    int in, out;
    float *weight; /* [out][in] */
    float *bias;   /* [out] or NULL */
    activation act;
} dense;

struct sqz_embedder {
    int hidden;
    int from_modules;
    int pool_count;
    sqz_pool_mode pool[SQZ_MAX_POOL_MODES];
    dense *dense;
    int dense_count;
    int normalize;
    int max_seq_length, truncate_at, max_positions;
    int do_lower_case;
    bool has_pooler;
    sqz_model_load_options load_options; /* the model's, for the Dense modules' weight files */
    char pooling_file[1024]; /* where the pooling came from, for messages and sqz info */
};

const char *sqz_pool_mode_name(sqz_pool_mode mode)
{
    return (unsigned)mode < SQZ_POOL_MODE_COUNT ? mode_names[mode] : "?";
}

sqz_status sqz_pool_mode_from_name(const char *name, sqz_pool_mode *out)
{
    for (int i = 0; name && i < SQZ_POOL_MODE_COUNT; i++)
        if (strcmp(name, mode_names[i]) == 0) {
            *out = (sqz_pool_mode)i;
            return SQZ_OK;
        }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "pooling mode \"%s\" is not one of cls, max, mean, "
                    "mean_sqrt_len_tokens, weightedmean, lasttoken, pooler", name ? name : "(null)");
}

/* A module's folder must be a plain relative name inside the checkpoint: no escaping it. */
static bool safe_subpath(const char *p)
{
    if (p[0] == '/' || strlen(p) > 255)
        return false;
    for (const char *s = p; *s; s++) {
        if ((s == p || s[-1] == '/') && s[0] == '.' && s[1] == '.' && (s[2] == '/' || !s[2]))
            return false;
        if ((unsigned char)*s < 0x20)
            return false;
    }
    return true;
}

/* Only these keys may appear in a module's config: another key could change what the module
 * computes in a way this code would silently miss. */
static sqz_status check_keys(json_t *obj, const char *file, const char *const *allowed, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        bool ok = false;
        for (size_t i = 0; i < n && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: field \"%s\" is not supported", file, key);
    }
    return SQZ_OK;
}

static sqz_status get_positive(json_t *obj, const char *key, const char *file, int max, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: field \"%s\" must be an integer in 1..%d", file, key, max);
    *out = (int)json_integer_value(v);
    return SQZ_OK;
}

static sqz_status get_flag(json_t *obj, const char *key, const char *file, bool fallback, bool *out)
{
    json_t *v = json_object_get(obj, key);
    *out = fallback;
    if (!v)
        return SQZ_OK;
    if (!json_is_boolean(v))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: field \"%s\" must be true or false", file, key);
    *out = json_is_true(v);
    return SQZ_OK;
}

/* module_input_name / module_output_name: only the sentence embedding is supported (other
 * names feed token-level or multi-vector models). */
static sqz_status check_io_names(json_t *cfg, const char *file)
{
    static const char *const keys[] = {"module_input_name", "module_output_name"};
    for (int k = 0; k < 2; k++) {
        json_t *v = json_object_get(cfg, keys[k]);
        if (v && !json_is_null(v) &&
            !(json_is_string(v) && strcmp(json_string_value(v), "sentence_embedding") == 0))
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: field \"%s\" must be \"sentence_embedding\" "
                            "(other inputs or outputs are not supported)", file, keys[k]);
    }
    return SQZ_OK;
}

static sqz_status read_pooling(sqz_embedder *e, const char *dir, const char *sub)
{
    char *sub_dir = sqz_path_join(dir, sub), *file = sub_dir ? sqz_path_join(sub_dir, "config.json") : NULL;
    json_t *cfg = NULL;
    sqz_status st = file ? sqz_json_read(file, MAX_MODULE_JSON_BYTES, 0, JSON_OBJECT, false, &cfg)
                         : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st != SQZ_OK)
        goto done;
    snprintf(e->pooling_file, sizeof e->pooling_file, "%s", file);
    static const char *const allowed[] = {
        "embedding_dimension", "word_embedding_dimension", "pooling_mode", "include_prompt",
        "pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_tokens",
        "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken"};
    if ((st = check_keys(cfg, file, allowed, sizeof allowed / sizeof allowed[0])) != SQZ_OK)
        goto done;
    const char *dim_key = json_object_get(cfg, "embedding_dimension") ? "embedding_dimension"
                                                                      : "word_embedding_dimension";
    int dim = 0;
    if ((st = get_positive(cfg, dim_key, file, 1 << 20, &dim)) != SQZ_OK)
        goto done;
    if (dim != e->hidden) {
        st = sqz_fail(SQZ_ERR_MODEL_MISMATCH, "%s: field \"%s\" is %d, but the model's hidden_size "
                      "is %d", file, dim_key, dim, e->hidden);
        goto done;
    }
    bool include_prompt; /* no prompts are ever added here, so either value computes the same */
    if ((st = get_flag(cfg, "include_prompt", file, true, &include_prompt)) != SQZ_OK)
        goto done;
    json_t *mode = json_object_get(cfg, "pooling_mode");
    e->pool_count = 0;
    if (mode) { /* the newer format: a mode name or a list of them, concatenated in list order */
        size_t n = json_is_array(mode) ? json_array_size(mode) : 1;
        if (!(json_is_string(mode) || json_is_array(mode)) || n == 0 || n > SQZ_MAX_POOL_MODES) {
            st = sqz_fail(SQZ_ERR_FORMAT, "%s: field \"pooling_mode\" must be a mode name or a list "
                          "of 1 to %d of them", file, SQZ_MAX_POOL_MODES);
            goto done;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *m = json_is_array(mode) ? json_array_get(mode, i) : mode;
            sqz_pool_mode pm;
            if (!json_is_string(m) || sqz_pool_mode_from_name(json_string_value(m), &pm) != SQZ_OK ||
                pm == SQZ_POOL_POOLER) {
                st = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: field \"pooling_mode\": %s%s%s is not one of "
                              "cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken", file,
                              json_is_string(m) ? "\"" : "", json_is_string(m) ? json_string_value(m) : "a non-string",
                              json_is_string(m) ? "\"" : "");
                goto done;
            }
            e->pool[e->pool_count++] = pm;
        }
    } else { /* the older boolean keys: fixed order, and none set means mean */
        for (size_t i = 0; i < sizeof legacy_keys / sizeof legacy_keys[0]; i++) {
            bool on;
            if ((st = get_flag(cfg, legacy_keys[i].key, file, false, &on)) != SQZ_OK)
                goto done;
            if (on)
                e->pool[e->pool_count++] = legacy_keys[i].mode;
        }
        if (e->pool_count == 0)
            e->pool[e->pool_count++] = SQZ_POOL_MEAN;
    }
done:
    json_decref(cfg);
    free(sub_dir);
    free(file);
    return st;
}

static sqz_status read_dense(sqz_embedder *e, const char *dir, const char *sub, int in_dim)
{
    char *sub_dir = sqz_path_join(dir, sub), *file = sub_dir ? sqz_path_join(sub_dir, "config.json") : NULL;
    json_t *cfg = NULL;
    sqz_tensor_file *tf = NULL;
    char *weights = NULL;
    sqz_status st = file ? sqz_json_read(file, MAX_MODULE_JSON_BYTES, 0, JSON_OBJECT, false, &cfg)
                         : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st != SQZ_OK)
        goto done;
    static const char *const allowed[] = {"in_features", "out_features", "bias", "activation_function",
                                          "module_input_name", "module_output_name", "use_residual"};
    if ((st = check_keys(cfg, file, allowed, sizeof allowed / sizeof allowed[0])) != SQZ_OK ||
        (st = check_io_names(cfg, file)) != SQZ_OK)
        goto done;
    dense d = {0};
    bool bias, residual;
    if ((st = get_positive(cfg, "in_features", file, MAX_DENSE_FEATURES, &d.in)) != SQZ_OK ||
        (st = get_positive(cfg, "out_features", file, MAX_DENSE_FEATURES, &d.out)) != SQZ_OK ||
        (st = get_flag(cfg, "bias", file, true, &bias)) != SQZ_OK ||
        (st = get_flag(cfg, "use_residual", file, false, &residual)) != SQZ_OK)
        goto done;
    if (residual) {
        st = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: field \"use_residual\" true is not supported", file);
        goto done;
    }
    if (d.in != in_dim) {
        st = sqz_fail(SQZ_ERR_MODEL_MISMATCH, "%s: field \"in_features\" is %d, but the embedding "
                      "reaching this module has %d values", file, d.in, in_dim);
        goto done;
    }
    d.act = ACT_TANH; /* sentence-transformers' default */
    json_t *act = json_object_get(cfg, "activation_function");
    if (act) {
        bool known = false;
        for (size_t i = 0; json_is_string(act) && i < sizeof activations / sizeof activations[0]; i++)
            if (strcmp(json_string_value(act), activations[i].name) == 0) {
                d.act = activations[i].act;
                known = true;
            }
        if (!known) {
            st = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: field \"activation_function\" %s%s%s is not "
                          "supported (Identity, Tanh, ReLU, Sigmoid, GELU are)", file,
                          json_is_string(act) ? "\"" : "", json_is_string(act) ? json_string_value(act) : "(not a string)",
                          json_is_string(act) ? "\"" : "");
            goto done;
        }
    }
    static const char *const names[] = {"model.safetensors", "pytorch_model.bin"};
    for (int i = 0; i < 2 && !weights; i++) {
        char *p = sqz_path_join(sub_dir, names[i]);
        if (p && sqz_file_exists(p))
            weights = p;
        else
            free(p);
    }
    if (!weights) {
        st = sqz_fail(SQZ_ERR_IO, "%s: the Dense module has no weights (model.safetensors or "
                      "pytorch_model.bin)", sub_dir);
        goto done;
    }
    if ((st = sqz_tensor_file_read(weights, &e->load_options, &tf)) != SQZ_OK)
        goto done;
    const sqz_tf_tensor *w = sqz_tensor_file_find(tf, "linear.weight");
    const sqz_tf_tensor *b = sqz_tensor_file_find(tf, "linear.bias");
    if (!w || !w->data || w->ndim != 2 || w->shape[0] != d.out || w->shape[1] != d.in) {
        st = sqz_fail(SQZ_ERR_MODEL_MISMATCH, "%s: tensor 'linear.weight' is %s; expected a float "
                      "tensor of shape [%d, %d] (out_features, in_features from %s)", weights,
                      w ? "of another shape or dtype" : "missing", d.out, d.in, file);
        goto done;
    }
    if (bias && (!b || !b->data || b->ndim != 1 || b->shape[0] != d.out)) {
        st = sqz_fail(SQZ_ERR_MODEL_MISMATCH, "%s: tensor 'linear.bias' is %s; expected a float "
                      "tensor of shape [%d] (bias is true in %s)", weights,
                      b ? "of another shape or dtype" : "missing", d.out, file);
        goto done;
    }
    dense *bigger = realloc(e->dense, (size_t)(e->dense_count + 1) * sizeof *bigger);
    if (!bigger) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    e->dense = bigger;
    d.weight = w->data;
    d.bias = bias ? b->data : NULL;
    /* the module owns them now */
    for (size_t i = 0; i < tf->count; i++)
        if (tf->tensors[i].data == d.weight || tf->tensors[i].data == d.bias)
            tf->tensors[i].data = NULL;
    e->dense[e->dense_count++] = d;
done:
    sqz_tensor_file_free(tf);
    json_decref(cfg);
    free(weights);
    free(sub_dir);
    free(file);
    return st;
}

static sqz_status read_normalize(const char *dir, const char *sub)
{
    /* the folder is optional: sentence-transformers saves nothing for a default Normalize */
    char *sub_dir = sqz_path_join(dir, sub), *file = sub_dir ? sqz_path_join(sub_dir, "config.json") : NULL;
    json_t *cfg = NULL;
    sqz_status st = file ? sqz_json_read(file, MAX_MODULE_JSON_BYTES, 0, JSON_OBJECT, true, &cfg)
                         : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    static const char *const allowed[] = {"module_input_name", "module_output_name"};
    if (st == SQZ_OK && cfg && (st = check_keys(cfg, file, allowed, 2)) == SQZ_OK)
        st = check_io_names(cfg, file);
    json_decref(cfg);
    free(sub_dir);
    free(file);
    return st;
}

/* The class a modules.json "type" names, when it is one of sentence-transformers' own
 * (older "sentence_transformers.models.Pooling" and newer module paths alike); NULL else. */
static const char *module_kind(const char *type)
{
    static const char *const kinds[] = {"Transformer", "Pooling", "Dense", "Normalize"};
    const char *dot = strrchr(type, '.');
    if (strncmp(type, "sentence_transformers.", 22) != 0 || !dot)
        return NULL;
    for (int i = 0; i < 4; i++)
        if (strcmp(dot + 1, kinds[i]) == 0)
            return kinds[i];
    return NULL;
}

static sqz_status read_modules(sqz_embedder *e, const char *dir, json_t *list, const char *file)
{
    size_t n = json_array_size(list);
    if (n == 0 || n > MAX_MODULES)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: expected a list of 1 to %d modules", file, MAX_MODULES);
    int dim = e->hidden;
    bool pooled = false;
    e->pool_count = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(list, i);
        json_t *type = json_object_get(m, "type"), *path = json_object_get(m, "path");
        if (!json_is_object(m) || !json_is_string(type) || !json_is_string(path))
            return sqz_fail(SQZ_ERR_FORMAT, "%s: module %zu needs \"type\" and \"path\" strings", file, i);
        const char *kind = module_kind(json_string_value(type)), *sub = json_string_value(path);
        if (!kind)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: module %zu has type \"%s\"; supported are "
                            "sentence-transformers' Transformer, Pooling, Dense and Normalize", file,
                            i, json_string_value(type));
        if (!safe_subpath(sub))
            return sqz_fail(SQZ_ERR_FORMAT, "%s: module %zu: field \"path\" \"%s\" is not a folder "
                            "inside the checkpoint", file, i, sub);
        sqz_status st = SQZ_OK;
        if (strcmp(kind, "Transformer") == 0) {
            if (i != 0 || sub[0])
                return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: module %zu: the Transformer must be the "
                                "first module and live in the checkpoint's own folder (\"path\": \"\"), "
                                "not \"%s\"", file, i, sub);
        } else if (i == 0) {
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: the first module is a %s; it must be the "
                            "Transformer", file, kind);
        } else if (strcmp(kind, "Pooling") == 0) {
            if (pooled)
                return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: module %zu is a second Pooling", file, i);
            if ((st = read_pooling(e, dir, sub)) != SQZ_OK)
                return st;
            pooled = true;
            dim = e->pool_count * e->hidden;
        } else if (!pooled) {
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: module %zu (%s) comes before the Pooling; "
                            "token-level modules are not supported", file, i, kind);
        } else if (strcmp(kind, "Dense") == 0) {
            if ((st = read_dense(e, dir, sub, dim)) != SQZ_OK)
                return st;
            dim = e->dense[e->dense_count - 1].out;
        } else { /* Normalize */
            if ((st = read_normalize(dir, sub)) != SQZ_OK)
                return st;
            if (i != n - 1)
                return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: module %zu: Normalize must be the last module",
                                file, i);
            e->normalize = 1;
        }
    }
    if (!pooled)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: there is no Pooling module, so no sentence "
                        "embedding", file);
    return SQZ_OK;
}

static sqz_status read_sbert_config(sqz_embedder *e, const char *dir)
{
    char *file = sqz_path_join(dir, "sentence_bert_config.json");
    json_t *cfg = NULL;
    sqz_status st = file ? sqz_json_read(file, MAX_MODULE_JSON_BYTES, 0, JSON_OBJECT, true, &cfg)
                         : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st == SQZ_OK && cfg) {
        json_t *m = json_object_get(cfg, "max_seq_length");
        bool lower;
        if (m && !json_is_null(m) && (st = get_positive(cfg, "max_seq_length", file, 1 << 20, &e->max_seq_length)) != SQZ_OK)
            goto done;
        if ((st = get_flag(cfg, "do_lower_case", file, false, &lower)) != SQZ_OK)
            goto done;
        e->do_lower_case = lower;
    }
done:
    json_decref(cfg);
    free(file);
    return st;
}

sqz_status sqz_embedder_load(const sqz_model *model, sqz_embedder **out)
{
    if (!model || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_load: model and out are required");
    *out = NULL;
    sqz_embedder *e = calloc(1, sizeof *e);
    char *file = sqz_path_join(model->dir, "modules.json");
    json_t *list = NULL;
    sqz_status st = e && file ? SQZ_OK : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st == SQZ_OK) {
        e->hidden = model->config.hidden_size;
        e->max_positions = e->truncate_at = model->config.max_position_embeddings;
        e->has_pooler = model->has_pooler;
        e->load_options = model->load_options;
        st = sqz_json_read(file, MAX_MODULE_JSON_BYTES, 0, JSON_ARRAY, true, &list);
    }
    if (st == SQZ_OK && list) {
        e->from_modules = 1;
        st = read_modules(e, model->dir, list, file);
        if (st == SQZ_OK)
            st = read_sbert_config(e, model->dir);
    } else if (st == SQZ_OK) { /* a plain checkpoint: the pooler when there is one */
        e->pool[0] = model->has_pooler ? SQZ_POOL_POOLER : SQZ_POOL_CLS;
        e->pool_count = 1;
    }
    json_decref(list);
    free(file);
    if (st != SQZ_OK) {
        sqz_embedder_free(e);
        return st;
    }
    *out = e;
    return SQZ_OK;
}

void sqz_embedder_free(sqz_embedder *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->dense_count; i++) {
        free(e->dense[i].weight);
        free(e->dense[i].bias);
    }
    free(e->dense);
    free(e);
}

static int out_dimension(const sqz_embedder *e)
{
    return e->dense_count ? e->dense[e->dense_count - 1].out : e->pool_count * e->hidden;
}

sqz_status sqz_embedder_use_tokenizer(sqz_embedder *e, const sqz_tokenizer *tok)
{
    sqz_tokenizer_info t;
    if (!e || sqz_tokenizer_get_info(tok, &t) != SQZ_OK)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_use_tokenizer: NULL argument");
    if (e->do_lower_case && !t.do_lower_case)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "sentence_bert_config.json: field \"do_lower_case\" true "
                        "is supported only with a tokenizer that lower-cases itself");
    int n = e->max_positions;
    if (e->max_seq_length)
        n = e->max_seq_length;
    else if (e->from_modules && t.model_max_length)
        n = t.model_max_length;
    e->truncate_at = n < e->max_positions ? n : e->max_positions;
    return SQZ_OK;
}

sqz_status sqz_embedder_override(sqz_embedder *e, const sqz_pool_mode *modes, int count, int normalize)
{
    if (!e || count < 0 || count > SQZ_MAX_POOL_MODES || (count && !modes))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_override: bad arguments");
    for (int i = 0; i < count; i++) {
        if ((unsigned)modes[i] >= SQZ_POOL_MODE_COUNT)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_override: unknown pooling mode %d",
                            (int)modes[i]);
        if (modes[i] == SQZ_POOL_POOLER && !e->has_pooler)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "pooling \"pooler\": this checkpoint has no pooler");
    }
    /* a Dense module expects the width the file's pooling gives */
    if (count && e->dense_count && count * e->hidden != e->dense[0].in)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%d pooling modes give %d values, but the Dense "
                        "module after the pooling takes %d", count, count * e->hidden, e->dense[0].in);
    if (count) {
        memcpy(e->pool, modes, (size_t)count * sizeof *modes);
        e->pool_count = count;
    }
    if (normalize >= 0)
        e->normalize = normalize != 0;
    return SQZ_OK;
}

sqz_status sqz_embedder_get_info(const sqz_embedder *e, sqz_embedder_info *out)
{
    if (!e || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_get_info: NULL argument");
    memset(out, 0, sizeof *out);
    out->from_modules = e->from_modules;
    out->pool_count = e->pool_count;
    memcpy(out->pool, e->pool, sizeof out->pool);
    out->dense_count = e->dense_count;
    out->normalize = e->normalize;
    out->max_seq_length = e->max_seq_length;
    out->truncate_at = e->truncate_at;
    out->do_lower_case = e->do_lower_case;
    out->dimension = out_dimension(e);
    out->pooling_file = e->pooling_file;
    for (int i = 0; i < e->pool_count; i++) {
        out->needs_pooler |= e->pool[i] == SQZ_POOL_POOLER;
        out->needs_hidden |= e->pool[i] != SQZ_POOL_POOLER;
    }
    return SQZ_OK;
}

static double activate(activation act, double x)
{
    switch (act) {
    case ACT_TANH: return tanh(x);
    case ACT_RELU: return x > 0 ? x : 0;
    case ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); /* torch's default: exact erf */
    default: return x;
    }
}

sqz_status sqz_embedder_embed(const sqz_embedder *e, const float *hidden, size_t len,
                              const float *pooled, float *out)
{
    if (!e || !out || (len == 0 && !pooled))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_embed: NULL argument or no tokens");
    const size_t H = (size_t)e->hidden;
    int widest = e->pool_count * e->hidden;
    for (int i = 0; i < e->dense_count; i++)
        widest = e->dense[i].out > widest ? e->dense[i].out : widest;
    double *v = calloc((size_t)widest * 2, sizeof *v);
    if (!v)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    double *next = v + widest;
    /* pooling, in double over the fp32 hidden states; the modes are concatenated in order */
    for (int m = 0; m < e->pool_count; m++) {
        double *dst = v + (size_t)m * H;
        const sqz_pool_mode mode = e->pool[m];
        if ((mode == SQZ_POOL_POOLER && !pooled) || (mode != SQZ_POOL_POOLER && (!hidden || !len))) {
            free(v);
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_embedder_embed: pooling \"%s\" needs %s",
                            mode_names[mode], mode == SQZ_POOL_POOLER ? "pooler_output" : "last_hidden_state");
        }
        switch (mode) {
        case SQZ_POOL_POOLER:
            for (size_t c = 0; c < H; c++)
                dst[c] = pooled[c];
            break;
        case SQZ_POOL_CLS:
        case SQZ_POOL_LAST_TOKEN: {
            const float *row = hidden + (mode == SQZ_POOL_CLS ? 0 : len - 1) * H;
            for (size_t c = 0; c < H; c++)
                dst[c] = row[c];
            break;
        }
        case SQZ_POOL_MAX:
            for (size_t c = 0; c < H; c++) {
                double best = hidden[c];
                for (size_t w = 1; w < len; w++)
                    best = hidden[w * H + c] > best ? hidden[w * H + c] : best;
                dst[c] = best;
            }
            break;
        default: { /* mean, mean_sqrt_len_tokens, weightedmean (weights 1, 2, ... by position) */
            double total = 0;
            for (size_t w = 0; w < len; w++) {
                const double weight = mode == SQZ_POOL_WEIGHTED_MEAN ? (double)(w + 1) : 1.0;
                total += weight;
                for (size_t c = 0; c < H; c++)
                    dst[c] += weight * hidden[w * H + c];
            }
            const double divisor = mode == SQZ_POOL_MEAN_SQRT_LEN ? sqrt(total) : total;
            for (size_t c = 0; c < H; c++)
                dst[c] /= divisor;
        }
        }
    }
    int dim = e->pool_count * e->hidden;
    for (int i = 0; i < e->dense_count; i++) {
        const dense *d = &e->dense[i];
        for (int o = 0; o < d->out; o++) {
            double acc = d->bias ? d->bias[o] : 0.0;
            const float *row = d->weight + (size_t)o * (size_t)d->in;
            for (int k = 0; k < d->in; k++)
                acc += (double)row[k] * v[k];
            next[o] = activate(d->act, acc);
        }
        memcpy(v, next, (size_t)d->out * sizeof *v);
        dim = d->out;
    }
    if (e->normalize) { /* torch's F.normalize: x / max(|x|, 1e-12) */
        double norm = 0;
        for (int c = 0; c < dim; c++)
            norm += v[c] * v[c];
        norm = fmax(sqrt(norm), 1e-12);
        for (int c = 0; c < dim; c++)
            v[c] /= norm;
    }
    for (int c = 0; c < dim; c++)
        out[c] = (float)v[c];
    free(v);
    return SQZ_OK;
}
