/* Loading a checkpoint directory: config.json + weights, bound to canonical names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "graph/builder.h"
#include "runtime/error.h"
#include "runtime/files.h"
#include "runtime/model.h"
#include "runtime/model_weights.h"
#include "runtime/tensor_file.h"

/* ---- the weights a config needs ------------------------------------------------------ */

typedef struct spec_list {
    sqz_weight_spec *items;
    size_t count, cap;
} spec_list;

static void add_spec(spec_list *list, sqz_weight_role role, bool base, bool conv, bool optional,
                     int64_t rows, int64_t cols, const char *why, const char *name)
{
    if (list->items && list->count < list->cap) {
        sqz_weight_spec *s = &list->items[list->count];
        memset(s, 0, sizeof *s);
        snprintf(s->canonical, sizeof s->canonical, "%s", name);
        s->rows = rows;
        s->cols = cols;
        s->role = role;
        s->in_base_model = base;
        s->conv = conv;
        s->optional = optional;
        snprintf(s->why, sizeof s->why, "%s", why);
    }
    list->count++;
}

/* A grouped projection: weight [out, in/groups] and bias [out]. */
static void add_projection(spec_list *list, int layer, const char *part, int64_t out, int64_t in,
                           int groups, const char *groups_name)
{
    char why[96], name[96];
    snprintf(why, sizeof why, "%lld outputs, %lld inputs / %s %d", (long long)out, (long long)in,
             groups_name, groups);
    snprintf(name, sizeof name, "encoder.layers.%d.%s.weight", layer, part);
    add_spec(list, SQZ_WEIGHT_MATRIX, true, true, false, out, in / groups, why, name);
    snprintf(name, sizeof name, "encoder.layers.%d.%s.bias", layer, part);
    add_spec(list, SQZ_WEIGHT_VECTOR, true, false, false, 1, out, why, name);
}

static void add_layernorm(spec_list *list, bool base, int64_t n, const char *name)
{
    char full[96];
    snprintf(full, sizeof full, "%s.weight", name);
    add_spec(list, SQZ_WEIGHT_VECTOR, base, false, false, 1, n, "hidden_size", full);
    snprintf(full, sizeof full, "%s.bias", name);
    add_spec(list, SQZ_WEIGHT_VECTOR, base, false, false, 1, n, "hidden_size", full);
}

size_t sqz_weight_specs(const sqz_config *c, sqz_weight_spec *specs, size_t cap)
{
    spec_list list = {specs, 0, cap};
    const int64_t H = c->hidden_size, F = c->intermediate_size;
    add_spec(&list, SQZ_WEIGHT_TABLE, true, false, false, c->vocab_size, H,
             "vocab_size x hidden_size", "embeddings.word_embeddings.weight");
    add_spec(&list, SQZ_WEIGHT_TABLE, true, false, false, c->max_position_embeddings, H,
             "max_position_embeddings x hidden_size", "embeddings.position_embeddings.weight");
    add_spec(&list, SQZ_WEIGHT_TABLE, true, false, false, c->type_vocab_size, H,
             "type_vocab_size x hidden_size", "embeddings.token_type_embeddings.weight");
    add_layernorm(&list, true, H, "embeddings.LayerNorm");
    /* only the layers whose weights a run uses (docs/variants.md): with sharing, the first of
     * each group; with a stride or fewer layers, the ones selected */
    const int runs = sqz_config_layers_run(c);
    for (int l = 0; l < c->num_layers; l++) {
        bool used = false;
        for (int r = 0; r < runs && !used; r++)
            used = sqz_weight_layer(r, c->layer_stride, c->share_layers) == l;
        if (!used)
            continue;
        add_projection(&list, l, "attention.query", H, H, c->q_groups, "q_groups");
        add_projection(&list, l, "attention.key", H, H, c->k_groups, "k_groups");
        add_projection(&list, l, "attention.value", H, H, c->v_groups, "v_groups");
        add_projection(&list, l, "post_attention.conv1d", H, H, c->post_attention_groups,
                       "post_attention_groups");
        char name[64];
        snprintf(name, sizeof name, "encoder.layers.%d.post_attention.layernorm", l);
        add_layernorm(&list, true, H, name);
        add_projection(&list, l, "intermediate.conv1d", F, H, c->intermediate_groups,
                       "intermediate_groups");
        add_projection(&list, l, "output.conv1d", H, F, c->output_groups, "output_groups");
        snprintf(name, sizeof name, "encoder.layers.%d.output.layernorm", l);
        add_layernorm(&list, true, H, name);
    }
    bool pooler_needed = c->head == SQZ_HEAD_SEQUENCE_CLASSIFICATION ||
                         c->head == SQZ_HEAD_MULTIPLE_CHOICE;
    if (c->head == SQZ_HEAD_BASE || pooler_needed) {
        add_spec(&list, SQZ_WEIGHT_MATRIX, true, false, !pooler_needed, H, H, "hidden_size",
                 "pooler.dense.weight");
        add_spec(&list, SQZ_WEIGHT_VECTOR, true, false, !pooler_needed, 1, H, "hidden_size",
                 "pooler.dense.bias");
    }
    int64_t head_out = 0;
    const char *head_name = NULL, *head_why = "";
    switch (c->head) {
    case SQZ_HEAD_SEQUENCE_CLASSIFICATION:
    case SQZ_HEAD_TOKEN_CLASSIFICATION:
        head_out = c->num_labels, head_name = "classifier", head_why = "num_labels x hidden_size";
        break;
    case SQZ_HEAD_MULTIPLE_CHOICE:
        head_out = 1, head_name = "classifier", head_why = "1 x hidden_size (multiple choice)";
        break;
    case SQZ_HEAD_QUESTION_ANSWERING:
        head_out = 2, head_name = "qa_outputs", head_why = "2 x hidden_size (start, end)";
        break;
    case SQZ_HEAD_MASKED_LM:
        add_spec(&list, SQZ_WEIGHT_MATRIX, false, false, false, H, H, "hidden_size", "cls.predictions.transform.dense.weight");
        add_spec(&list, SQZ_WEIGHT_VECTOR, false, false, false, 1, H, "hidden_size", "cls.predictions.transform.dense.bias");
        add_layernorm(&list, false, H, "cls.predictions.transform.LayerNorm");
        add_spec(&list, SQZ_WEIGHT_VECTOR, false, false, false, 1, c->vocab_size, "vocab_size",
                 "cls.predictions.bias");
        if (!c->tie_word_embeddings)
            add_spec(&list, SQZ_WEIGHT_TABLE, false, false, false, c->vocab_size, H,
                     "vocab_size x hidden_size (untied decoder)", "cls.predictions.decoder.weight");
        break;
    default: break;
    }
    if (head_name) {
        char name[64];
        snprintf(name, sizeof name, "%s.weight", head_name);
        add_spec(&list, SQZ_WEIGHT_MATRIX, false, false, false, head_out, H, head_why, name);
        snprintf(name, sizeof name, "%s.bias", head_name);
        add_spec(&list, SQZ_WEIGHT_VECTOR, false, false, false, 1, head_out, head_why, name);
    }
    return list.count;
}

/* ---- names in files ------------------------------------------------------------------- */

/* SqueezeBERT layer part -> BERT layer part. */
static const struct { const char *squeezebert, *bert; } bert_parts[] = {
    {"attention.query.", "attention.self.query."},
    {"attention.key.", "attention.self.key."},
    {"attention.value.", "attention.self.value."},
    {"post_attention.conv1d.", "attention.output.dense."},
    {"post_attention.layernorm.", "attention.output.LayerNorm."},
    {"intermediate.conv1d.", "intermediate.dense."},
    {"output.conv1d.", "output.dense."},
    {"output.layernorm.", "output.LayerNorm."},
};

/* The name without any prefix as this model family spells it. */
static void family_name(const sqz_config *c, const char *canonical, char *out, size_t size)
{
    int layer;
    int consumed = 0;
    if (c->is_bert && sscanf(canonical, "encoder.layers.%d.%n", &layer, &consumed) == 1 &&
        consumed > 0) {
        const char *rest = canonical + consumed;
        for (size_t i = 0; i < sizeof bert_parts / sizeof bert_parts[0]; i++) {
            size_t n = strlen(bert_parts[i].squeezebert);
            if (strncmp(rest, bert_parts[i].squeezebert, n) == 0) {
                snprintf(out, size, "encoder.layer.%d.%s%s", layer, bert_parts[i].bert, rest + n);
                return;
            }
        }
    }
    snprintf(out, size, "%s", canonical);
}

static const char *base_prefix(const sqz_config *c) { return c->is_bert ? "bert." : "transformer."; }

void sqz_weight_file_name(const sqz_config *c, const sqz_weight_spec *spec, char *out, size_t size)
{
    char name[160];
    family_name(c, spec->canonical, name, sizeof name);
    bool prefixed = spec->in_base_model && c->head != SQZ_HEAD_BASE;
    snprintf(out, size, "%s%s", prefixed ? base_prefix(c) : "", name);
}

#define MAX_CANDIDATES 6

/* Every name under which a file may hold `spec`: with and without the base-model prefix,
 * and gamma/beta for LayerNorm parameters. */
static int candidate_names(const sqz_config *c, const sqz_weight_spec *spec,
                           char names[MAX_CANDIDATES][192])
{
    char name[160];
    family_name(c, spec->canonical, name, sizeof name);
    char alt[160] = "";
    size_t len = strlen(name);
    bool layernorm = strstr(name, "LayerNorm.") || strstr(name, "layernorm.");
    if (layernorm && len > 7 && strcmp(name + len - 7, ".weight") == 0)
        snprintf(alt, sizeof alt, "%.*s.gamma", (int)(len - 7), name);
    else if (layernorm && len > 5 && strcmp(name + len - 5, ".bias") == 0)
        snprintf(alt, sizeof alt, "%.*s.beta", (int)(len - 5), name);
    else if (strcmp(name, "cls.predictions.bias") == 0)
        snprintf(alt, sizeof alt, "cls.predictions.decoder.bias");
    int n = 0;
    const char *bases[2] = {name, alt};
    for (int b = 0; b < 2; b++) {
        if (!bases[b][0])
            continue;
        if (spec->in_base_model)
            snprintf(names[n++], 192, "%s%s", base_prefix(c), bases[b]);
        snprintf(names[n++], 192, "%s", bases[b]);
    }
    return n;
}

/* ---- loading ------------------------------------------------------------------------- */

static void format_shape(const int64_t *shape, int ndim, char *out, size_t size)
{
    size_t used = 0;
    used += (size_t)snprintf(out, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < size)
        snprintf(out + used, size - used, "]");
}

static void expected_shape(const sqz_weight_spec *spec, bool bert, char *out, size_t size)
{
    if (spec->role == SQZ_WEIGHT_VECTOR)
        snprintf(out, size, "[%lld]", (long long)spec->cols);
    else if (spec->conv && !bert)
        snprintf(out, size, "[%lld, %lld, 1]", (long long)spec->rows, (long long)spec->cols);
    else
        snprintf(out, size, "[%lld, %lld]", (long long)spec->rows, (long long)spec->cols);
}

static bool shape_fits(const sqz_tf_tensor *t, const sqz_weight_spec *spec)
{
    if (spec->role == SQZ_WEIGHT_VECTOR)
        return t->ndim == 1 && t->shape[0] == spec->cols;
    if (t->ndim == 2)
        return t->shape[0] == spec->rows && t->shape[1] == spec->cols;
    return spec->conv && t->ndim == 3 && t->shape[0] == spec->rows && t->shape[1] == spec->cols &&
           t->shape[2] == 1;
}

/* The weights file, in transformers' order of preference: safetensors before .bin, one file
 * before shards. *sharded is set for an index (model.safetensors.index.json and the like). */
static sqz_status find_weights_file(sqz_model *m, bool *sharded)
{
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json",
                                        "pytorch_model.bin", "pytorch_model.bin.index.json"};
    for (size_t i = 0; i < 4; i++) {
        char *p = sqz_path_join(m->dir, names[i]);
        if (!p)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        if (sqz_file_exists(p)) {
            m->weights_path = p;
            *sharded = i % 2 == 1;
            return SQZ_OK;
        }
        free(p);
    }
    return sqz_fail(SQZ_ERR_IO, "%s: no weights found (expected model.safetensors or "
                    "pytorch_model.bin, or a sharded checkpoint's model.safetensors.index.json or "
                    "pytorch_model.bin.index.json)", m->dir);
}

enum {
    MAX_INDEX_BYTES = 64 << 20, /* an index lists tensor names only: a few hundred kB */
    MAX_SHARDS = 4096,
};

/* A shard must be a file next to the index: a plain name, no folder, nothing hidden. */
static bool plain_file_name(const char *name)
{
    return name[0] && name[0] != '.' && !strchr(name, '/') && !strchr(name, '\\') &&
           strlen(name) <= 255;
}

/* Reads every shard an index names and gathers their tensors into one file. The index and
 * the shards must agree exactly: each tensor the index lists is in the shard it names, and
 * each shard holds only tensors the index gives to it (a stale or mixed-up shard could
 * otherwise put wrong weights in silently). */
static sqz_status read_sharded(sqz_model *m, sqz_tensor_file **out)
{
    const char *index = m->weights_path;
    json_t *root = NULL;
    const char **shards = NULL;
    size_t n_shards = 0;
    sqz_tensor_file *all = calloc(1, sizeof *all), *part = NULL;
    sqz_status st = all ? sqz_json_read(index, MAX_INDEX_BYTES, JSON_REJECT_DUPLICATES, JSON_OBJECT, false, &root)
                        : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st != SQZ_OK)
        goto done;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0 || json_object_size(map) > SQZ_TF_MAX_TENSORS) {
        st = sqz_fail(SQZ_ERR_FORMAT, "%s: field \"weight_map\" must be an object of 1 to %d "
                      "tensor names, each naming its shard", index, SQZ_TF_MAX_TENSORS);
        goto done;
    }
    shards = calloc(MAX_SHARDS, sizeof *shards);
    if (!shards || !(all->path = strdup(index))) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        if (!json_is_string(v) || !plain_file_name(json_string_value(v))) {
            st = sqz_fail(SQZ_ERR_FORMAT, "%s: weight_map[\"%s\"] must be the file name of a shard "
                          "in the same folder", index, name);
            goto done;
        }
        size_t k = 0;
        while (k < n_shards && strcmp(shards[k], json_string_value(v)) != 0)
            k++;
        if (k == n_shards) {
            if (n_shards == MAX_SHARDS) {
                st = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: more than %d shards", index, MAX_SHARDS);
                goto done;
            }
            shards[n_shards++] = json_string_value(v);
        }
    }
    for (size_t k = 0; k < n_shards; k++) {
        char *path = sqz_path_join(m->dir, shards[k]);
        if (!path) {
            st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        if (!sqz_file_exists(path)) {
            st = sqz_fail(SQZ_ERR_IO, "%s names shard %s, which is missing (%s)", index, shards[k], path);
            free(path);
            goto done;
        }
        st = sqz_tensor_file_read(path, &m->load_options, &part);
        free(path);
        if (st != SQZ_OK)
            goto done;
        for (size_t i = 0; i < part->count; i++) {
            json_t *owner = json_object_get(map, part->tensors[i].name);
            if (!owner || strcmp(json_string_value(owner), shards[k]) != 0) {
                st = sqz_fail(SQZ_ERR_MODEL_MISMATCH, "shard %s holds tensor '%s', which %s %s%s: the "
                              "index and its shards disagree", shards[k], part->tensors[i].name, index,
                              owner ? "gives to shard " : "does not list",
                              owner ? json_string_value(owner) : "");
                goto done;
            }
        }
        json_object_foreach(map, name, v) {
            if (strcmp(json_string_value(v), shards[k]) == 0 && !sqz_tensor_file_find(part, name)) {
                st = sqz_fail(SQZ_ERR_MODEL_MISMATCH, "%s gives tensor '%s' to shard %s, which does "
                              "not hold it: the index and its shards disagree", index, name, shards[k]);
                goto done;
            }
        }
        sqz_tf_tensor *bigger = realloc(all->tensors, (all->count + part->count) * sizeof *bigger);
        if (!bigger) {
            st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        all->tensors = bigger;
        memcpy(all->tensors + all->count, part->tensors, part->count * sizeof *part->tensors);
        all->count += part->count;
        part->count = 0; /* moved: names and data belong to `all` now */
        sqz_tensor_file_free(part);
        part = NULL;
    }
done:
    sqz_tensor_file_free(part);
    free(shards);
    json_decref(root);
    if (st != SQZ_OK) {
        sqz_tensor_file_free(all);
        all = NULL;
    }
    *out = all;
    return st;
}

static sqz_status bind_weights(sqz_model *m, sqz_tensor_file *file)
{
    const sqz_config *c = &m->config;
    size_t n_specs = sqz_weight_specs(c, NULL, 0);
    sqz_weight_spec *specs = calloc(n_specs, sizeof *specs);
    bool *used = calloc(file->count ? file->count : 1, sizeof *used);
    m->weights = calloc(n_specs + 1, sizeof *m->weights); /* +1: the tied decoder alias */
    sqz_status status = SQZ_OK;
    if (!specs || !used || !m->weights) {
        status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory binding weights");
        goto done;
    }
    sqz_weight_specs(c, specs, n_specs);
    m->has_pooler = c->head != SQZ_HEAD_MASKED_LM && c->head != SQZ_HEAD_TOKEN_CLASSIFICATION &&
                    c->head != SQZ_HEAD_QUESTION_ANSWERING;
    for (size_t i = 0; i < n_specs; i++) {
        const sqz_weight_spec *spec = &specs[i];
        char names[MAX_CANDIDATES][192];
        int n_names = candidate_names(c, spec, names);
        const sqz_tf_tensor *t = NULL;
        size_t t_index = 0;
        for (int k = 0; k < n_names && !t; k++)
            for (size_t j = 0; j < file->count; j++)
                if (strcmp(file->tensors[j].name, names[k]) == 0) {
                    t = &file->tensors[j];
                    t_index = j;
                    break;
                }
        if (!t) {
            if (spec->optional) {
                m->has_pooler = false; /* only the pooler is optional */
                continue;
            }
            char looked[700] = "";
            for (int k = 0; k < n_names; k++) {
                size_t used_len = strlen(looked);
                snprintf(looked + used_len, sizeof looked - used_len, "%s'%s'", k ? ", " : "",
                         names[k]);
            }
            status = sqz_fail(SQZ_ERR_MODEL_MISMATCH,
                              "%s: tensor '%s' is missing (looked for %s); config.json asks for "
                              "%s", m->weights_path, spec->canonical, looked, c->architecture);
            goto done;
        }
        used[t_index] = true;
        char found[128], expected[128];
        format_shape(t->shape, t->ndim, found, sizeof found);
        expected_shape(spec, c->is_bert, expected, sizeof expected);
        if (!t->data) {
            status = sqz_fail(SQZ_ERR_MODEL_MISMATCH,
                              "%s: tensor '%s' has dtype %s, expected a float dtype (F32, F16 or "
                              "BF16)", m->weights_path, t->name, sqz_tf_dtype_name(t->dtype));
            goto done;
        }
        if (!shape_fits(t, spec)) {
            status = sqz_fail(SQZ_ERR_MODEL_MISMATCH,
                              "%s: tensor '%s' has shape %s, expected %s (%s, from config.json)",
                              m->weights_path, t->name, found, expected, spec->why);
            goto done;
        }
        sqz_weight *w = &m->weights[m->n_weights++];
        snprintf(w->name, sizeof w->name, "%s", spec->canonical);
        w->rows = spec->rows;
        w->cols = spec->cols;
        w->alias_of = -1;
        w->data = t->data;
        file->tensors[t_index].data = NULL; /* the model owns it now */
    }
    if (c->head == SQZ_HEAD_MASKED_LM && c->tie_word_embeddings) {
        /* The decoder is the word-embedding matrix (tied); a stored copy is redundant. */
        sqz_weight *w = &m->weights[m->n_weights++];
        snprintf(w->name, sizeof w->name, "cls.predictions.decoder.weight");
        w->rows = m->weights[0].rows;
        w->cols = m->weights[0].cols;
        w->data = m->weights[0].data;
        w->alias_of = 0;
    }
    if (c->head == SQZ_HEAD_MASKED_LM)
        /* torch.save keeps the tied copies under their own names: the decoder weight (when
         * tied) and the decoder bias, which is cls.predictions.bias itself. */
        for (size_t j = 0; j < file->count; j++)
            if ((c->tie_word_embeddings &&
                 strcmp(file->tensors[j].name, "cls.predictions.decoder.weight") == 0) ||
                strcmp(file->tensors[j].name, "cls.predictions.decoder.bias") == 0)
                used[j] = true;
    for (size_t j = 0; j < file->count; j++)
        if (!used[j])
            m->n_ignored_keys++;
    if (m->n_ignored_keys) {
        m->ignored_keys = calloc(m->n_ignored_keys, sizeof *m->ignored_keys);
        if (!m->ignored_keys) {
            m->n_ignored_keys = 0;
            status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        size_t k = 0;
        for (size_t j = 0; j < file->count; j++)
            if (!used[j]) {
                m->ignored_keys[k] = strdup(file->tensors[j].name);
                if (!m->ignored_keys[k]) {
                    status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
                    goto done;
                }
                k++;
            }
    }
done:
    free(specs);
    free(used);
    return status;
}

sqz_status sqz_model_load(const char *dir, const sqz_model_load_options *options, sqz_model **out)
{
    if (!dir || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_model_load: dir and out are required");
    *out = NULL;
    sqz_model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (options)
        m->load_options = *options;
    char *config_path = sqz_path_join(dir, "config.json");
    sqz_status s = config_path ? sqz_config_load(config_path, &m->config)
                               : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    free(config_path);
    sqz_tensor_file *file = NULL;
    bool sharded = false;
    if (s == SQZ_OK)
        s = find_weights_file(m, &sharded);
    if (s == SQZ_OK)
        s = sharded ? read_sharded(m, &file) : sqz_tensor_file_read(m->weights_path, &m->load_options, &file);
    if (s == SQZ_OK)
        s = bind_weights(m, file);
    sqz_tensor_file_free(file);
    if (s != SQZ_OK) {
        sqz_model_free(m);
        return s;
    }
    *out = m;
    return SQZ_OK;
}

void sqz_model_free(sqz_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_weights; i++)
        if (m->weights[i].alias_of < 0)
            free(m->weights[i].data);
    free(m->weights);
    for (size_t i = 0; i < m->n_ignored_keys; i++)
        free(m->ignored_keys[i]);
    free(m->ignored_keys);
    sqz_config_release(&m->config);
    free(m->weights_path);
    free(m->dir);
    free(m);
}

int sqz_model_weight_index(const sqz_model *m, const char *canonical_name)
{
    for (size_t i = 0; i < m->n_weights; i++)
        if (strcmp(m->weights[i].name, canonical_name) == 0)
            return (int)i;
    return -1;
}

sqz_status sqz_model_get_info(const sqz_model *m, sqz_model_info *out)
{
    if (!m || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_model_get_info: model and out are required");
    const sqz_config *c = &m->config;
    memset(out, 0, sizeof *out);
    out->model_type = c->model_type;
    out->architecture = c->architecture;
    out->weights_path = m->weights_path;
    out->head = c->head;
    out->vocab_size = c->vocab_size;
    out->hidden_size = c->hidden_size;
    out->num_layers = c->num_layers;
    out->num_heads = c->num_heads;
    out->intermediate_size = c->intermediate_size;
    out->max_position_embeddings = c->max_position_embeddings;
    out->type_vocab_size = c->type_vocab_size;
    out->num_labels = c->num_labels;
    out->q_groups = c->q_groups;
    out->k_groups = c->k_groups;
    out->v_groups = c->v_groups;
    out->post_attention_groups = c->post_attention_groups;
    out->intermediate_groups = c->intermediate_groups;
    out->output_groups = c->output_groups;
    out->layer_norm_eps = c->layer_norm_eps;
    out->encoder_layer_norm_eps = c->encoder_layer_norm_eps;
    out->linear_attention = c->linear_attention;
    out->share_layers = c->share_layers;
    out->layer_stride = c->layer_stride;
    out->layers_run = sqz_config_layers_run(c);
    for (size_t i = 0; i < m->n_weights; i++)
        if (m->weights[i].alias_of < 0)
            out->num_parameters += m->weights[i].rows * m->weights[i].cols;
    return SQZ_OK;
}

const char *sqz_model_label(const sqz_model *m, int index)
{
    if (!m || index < 0 || index >= m->config.num_labels || !m->config.labels)
        return NULL;
    return m->config.labels[index];
}

size_t sqz_model_ignored_key_count(const sqz_model *m) { return m ? m->n_ignored_keys : 0; }

const char *sqz_model_ignored_key(const sqz_model *m, size_t index)
{
    return m && index < m->n_ignored_keys ? m->ignored_keys[index] : NULL;
}
