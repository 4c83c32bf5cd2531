/* config.json parsing (jansson) and the built-in presets. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/model.h"

/* Upper bounds that keep a hostile config from asking for absurd allocations. */
enum {
    MAX_HIDDEN = 1 << 16,
    MAX_LAYERS = 1024,
    MAX_VOCAB = 1 << 24,
    MAX_INTERMEDIATE = 1 << 18,
    MAX_POSITIONS = 1 << 16,
    MAX_LABELS = 1 << 16,
};

typedef struct head_suffix {
    const char *suffix;
    sqz_head head;
} head_suffix;

static const head_suffix head_suffixes[] = {
    {"Model", SQZ_HEAD_BASE},
    {"ForSequenceClassification", SQZ_HEAD_SEQUENCE_CLASSIFICATION},
    {"ForTokenClassification", SQZ_HEAD_TOKEN_CLASSIFICATION},
    {"ForQuestionAnswering", SQZ_HEAD_QUESTION_ANSWERING},
    {"ForMultipleChoice", SQZ_HEAD_MULTIPLE_CHOICE},
    {"ForMaskedLM", SQZ_HEAD_MASKED_LM},
};

const char *sqz_head_name(sqz_head head)
{
    static const char *const names[SQZ_HEAD_COUNT] = {
        [SQZ_HEAD_BASE] = "base",
        [SQZ_HEAD_SEQUENCE_CLASSIFICATION] = "sequence-classification",
        [SQZ_HEAD_TOKEN_CLASSIFICATION] = "token-classification",
        [SQZ_HEAD_QUESTION_ANSWERING] = "question-answering",
        [SQZ_HEAD_MULTIPLE_CHOICE] = "multiple-choice",
        [SQZ_HEAD_MASKED_LM] = "masked-lm",
    };
    return (unsigned)head < SQZ_HEAD_COUNT ? names[head] : "unknown";
}

static void set_defaults(sqz_config *c, bool bert)
{
    c->is_bert = bert;
    snprintf(c->model_type, sizeof c->model_type, "%s", bert ? "bert" : "squeezebert");
    c->vocab_size = bert ? 30522 : 30522;
    c->hidden_size = 768;
    c->num_layers = 12;
    c->num_heads = 12;
    c->intermediate_size = 3072;
    c->max_position_embeddings = 512;
    c->type_vocab_size = 2;
    c->num_labels = 2;
    int g = bert ? 1 : 4;
    c->q_groups = c->k_groups = c->v_groups = g;
    c->post_attention_groups = 1;
    c->intermediate_groups = c->output_groups = g;
    c->layer_norm_eps = 1e-12;
    c->encoder_layer_norm_eps = 1e-12;
    c->tie_word_embeddings = true;
    c->layer_stride = 1;
}

int sqz_config_layers_run(const sqz_config *c)
{
    const int selected = (c->num_layers + c->layer_stride - 1) / c->layer_stride;
    return c->run_layers > 0 && c->run_layers < selected ? c->run_layers : selected;
}

/* Reads an optional positive integer field within [1, max]. */
static sqz_status read_int(json_t *root, const char *path, const char *key, int max, int *value)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return SQZ_OK;
    if (!json_is_integer(v))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: field '%s' must be an integer, found %s", path, key,
                        json_is_string(v) ? "a string" : json_is_real(v) ? "a real number"
                                                                          : "another JSON type");
    json_int_t x = json_integer_value(v);
    if (x < 1 || x > max)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: field '%s' = %lld is outside the accepted range 1..%d",
                        path, key, (long long)x, max);
    *value = (int)x;
    return SQZ_OK;
}

static sqz_status make_labels(sqz_config *c, json_t *id2label, const char *path)
{
    c->labels = calloc((size_t)c->num_labels, sizeof *c->labels);
    if (!c->labels)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for %d labels", c->num_labels);
    for (int i = 0; i < c->num_labels; i++) {
        char key[32], fallback[32];
        snprintf(key, sizeof key, "%d", i);
        snprintf(fallback, sizeof fallback, "LABEL_%d", i);
        const char *name = fallback;
        if (id2label) {
            json_t *v = json_object_get(id2label, key);
            if (!v || !json_is_string(v))
                return sqz_fail(SQZ_ERR_FORMAT,
                                "%s: id2label has %d entries but no string for id \"%s\"", path,
                                c->num_labels, key);
            name = json_string_value(v);
        }
        c->labels[i] = strdup(name);
        if (!c->labels[i])
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for labels");
    }
    return SQZ_OK;
}

static sqz_status check_divides(const char *path, const char *what, int groups, int channels,
                                const char *channel_name)
{
    if (channels % groups != 0)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: %s = %d does not divide %s = %d", path, what, groups,
                        channel_name, channels);
    return SQZ_OK;
}

static sqz_status validate(const sqz_config *c, const char *path)
{
    sqz_status s;
    if (c->hidden_size % c->num_heads != 0)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                        c->hidden_size, c->num_heads);
    struct { const char *name; int groups; } in_hidden[] = {
        {"q_groups", c->q_groups}, {"k_groups", c->k_groups}, {"v_groups", c->v_groups},
        {"post_attention_groups", c->post_attention_groups},
        {"intermediate_groups", c->intermediate_groups}, {"output_groups", c->output_groups}};
    for (size_t i = 0; i < sizeof in_hidden / sizeof in_hidden[0]; i++)
        if ((s = check_divides(path, in_hidden[i].name, in_hidden[i].groups, c->hidden_size,
                               "hidden_size")) != SQZ_OK)
            return s;
    if ((s = check_divides(path, "intermediate_groups", c->intermediate_groups,
                           c->intermediate_size, "intermediate_size")) != SQZ_OK ||
        (s = check_divides(path, "output_groups", c->output_groups, c->intermediate_size,
                           "intermediate_size")) != SQZ_OK)
        return s;
    if (c->share_layers > c->num_layers)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: sqz_share_layers %d is more than num_hidden_layers %d", path,
                        c->share_layers, c->num_layers);
    if (c->layer_stride > c->num_layers)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: sqz_layer_stride %d is more than num_hidden_layers %d", path,
                        c->layer_stride, c->num_layers);
    const int selected = (c->num_layers + c->layer_stride - 1) / c->layer_stride;
    if (c->run_layers > selected)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: sqz_run_layers %d is more than the %d layers there are to run "
                        "(num_hidden_layers %d, sqz_layer_stride %d)", path, c->run_layers, selected,
                        c->num_layers, c->layer_stride);
    if (c->head == SQZ_HEAD_QUESTION_ANSWERING && c->num_labels != 2)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: question answering needs num_labels 2 (start, end), found %d", path,
                        c->num_labels);
    return SQZ_OK;
}

static sqz_status parse(json_t *root, const char *path, sqz_config *c)
{
    if (!json_is_object(root))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: expected a JSON object at the top level", path);
    json_t *type = json_object_get(root, "model_type");
    if (!type || !json_is_string(type))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: field 'model_type' is missing or not a string "
                        "(expected \"squeezebert\" or \"bert\")", path);
    const char *model_type = json_string_value(type);
    bool bert = strcmp(model_type, "bert") == 0;
    if (!bert && strcmp(model_type, "squeezebert") != 0)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: model_type \"%s\" is not supported (expected \"squeezebert\" or "
                        "\"bert\")", path, model_type);
    set_defaults(c, bert);

    json_t *archs = json_object_get(root, "architectures");
    c->head = SQZ_HEAD_BASE;
    snprintf(c->architecture, sizeof c->architecture, "%s", bert ? "BertModel" : "SqueezeBertModel");
    if (archs && !json_is_null(archs)) {
        json_t *first = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
        if (!first || !json_is_string(first))
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: field 'architectures' must be a non-empty list of strings", path);
        const char *arch = json_string_value(first);
        const char *prefix = bert ? "Bert" : "SqueezeBert";
        size_t plen = strlen(prefix);
        bool found = false;
        if (strncmp(arch, prefix, plen) == 0)
            for (size_t i = 0; i < sizeof head_suffixes / sizeof head_suffixes[0]; i++)
                if (strcmp(arch + plen, head_suffixes[i].suffix) == 0) {
                    c->head = head_suffixes[i].head;
                    found = true;
                }
        if (!found)
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "%s: architecture \"%s\" is not supported for model_type \"%s\" "
                            "(supported: %sModel, %sForSequenceClassification, "
                            "%sForTokenClassification, %sForQuestionAnswering, "
                            "%sForMultipleChoice, %sForMaskedLM)",
                            path, arch, model_type, prefix, prefix, prefix, prefix, prefix, prefix);
        snprintf(c->architecture, sizeof c->architecture, "%s", arch);
    }

    struct { const char *key; int max; int *dst; } ints[] = {
        {"vocab_size", MAX_VOCAB, &c->vocab_size},
        {"hidden_size", MAX_HIDDEN, &c->hidden_size},
        {"num_hidden_layers", MAX_LAYERS, &c->num_layers},
        {"num_attention_heads", MAX_HIDDEN, &c->num_heads},
        {"intermediate_size", MAX_INTERMEDIATE, &c->intermediate_size},
        {"max_position_embeddings", MAX_POSITIONS, &c->max_position_embeddings},
        {"type_vocab_size", MAX_POSITIONS, &c->type_vocab_size},
        {"num_labels", MAX_LABELS, &c->num_labels},
        {"q_groups", MAX_HIDDEN, &c->q_groups},
        {"k_groups", MAX_HIDDEN, &c->k_groups},
        {"v_groups", MAX_HIDDEN, &c->v_groups},
        {"post_attention_groups", MAX_HIDDEN, &c->post_attention_groups},
        {"intermediate_groups", MAX_HIDDEN, &c->intermediate_groups},
        {"output_groups", MAX_HIDDEN, &c->output_groups},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (bert && strstr(ints[i].key, "groups"))
            continue; /* BERT is SqueezeBERT with every group count 1 */
        sqz_status s = read_int(root, path, ints[i].key, ints[i].max, ints[i].dst);
        if (s != SQZ_OK)
            return s;
    }
    int embedding_size = c->hidden_size;
    sqz_status s = read_int(root, path, "embedding_size", MAX_HIDDEN, &embedding_size);
    if (s != SQZ_OK)
        return s;
    if (embedding_size != c->hidden_size)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: embedding_size %d differs from hidden_size %d; the model has no "
                        "embedding projection, so they must be equal", path, embedding_size,
                        c->hidden_size);

    json_t *eps = json_object_get(root, "layer_norm_eps");
    if (eps && !json_is_null(eps)) {
        if (!json_is_number(eps) || !(json_number_value(eps) > 0.0) ||
            json_number_value(eps) > 1.0)
            return sqz_fail(SQZ_ERR_FORMAT, "%s: field 'layer_norm_eps' must be a number in (0, 1]",
                            path);
        c->layer_norm_eps = json_number_value(eps);
    }
    /* SqueezeBERT's encoder LayerNorms ignore the config and keep 1e-12; BERT's use it. */
    c->encoder_layer_norm_eps = bert ? c->layer_norm_eps : 1e-12;

    json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act)) {
        const char *a = json_is_string(act) ? json_string_value(act) : "";
        if (strcmp(a, "gelu") != 0 && strcmp(a, "gelu_python") != 0)
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "%s: hidden_act \"%s\" is not supported (the engine implements the "
                            "exact erf GELU, \"gelu\")", path, a);
    }
    json_t *pet = json_object_get(root, "position_embedding_type");
    if (pet && !json_is_null(pet) &&
        (!json_is_string(pet) || strcmp(json_string_value(pet), "absolute") != 0))
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: position_embedding_type must be \"absolute\"", path);
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && json_is_boolean(tie))
        c->tie_word_embeddings = json_is_true(tie);

    struct { const char *key; int *dst; } variant_ints[] = {
        {"sqz_share_layers", &c->share_layers}, {"sqz_layer_stride", &c->layer_stride},
        {"sqz_run_layers", &c->run_layers}};
    for (size_t i = 0; i < sizeof variant_ints / sizeof variant_ints[0]; i++)
        if ((s = read_int(root, path, variant_ints[i].key, MAX_LAYERS, variant_ints[i].dst)) != SQZ_OK)
            return s;
    json_t *attention = json_object_get(root, "sqz_attention");
    if (attention && !json_is_null(attention)) {
        const char *a = json_is_string(attention) ? json_string_value(attention) : "";
        if (strcmp(a, "linear") != 0 && strcmp(a, "softmax") != 0)
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: sqz_attention must be \"softmax\" or \"linear\"", path);
        c->linear_attention = strcmp(a, "linear") == 0;
    }

    json_t *id2label = json_object_get(root, "id2label");
    if (id2label && !json_is_null(id2label)) {
        if (!json_is_object(id2label))
            return sqz_fail(SQZ_ERR_FORMAT, "%s: field 'id2label' must be an object", path);
        size_t n = json_object_size(id2label);
        if (n < 1 || n > MAX_LABELS)
            return sqz_fail(SQZ_ERR_FORMAT, "%s: id2label has %zu entries", path, n);
        c->num_labels = (int)n;
    } else {
        id2label = NULL;
    }
    if ((s = validate(c, path)) != SQZ_OK)
        return s;
    return make_labels(c, id2label, path);
}

sqz_status sqz_config_load(const char *path, sqz_config *out)
{
    memset(out, 0, sizeof *out);
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        FILE *probe = fopen(path, "rb");
        if (!probe)
            return sqz_fail(SQZ_ERR_IO, "cannot open %s (a checkpoint directory needs config.json)",
                            path);
        fclose(probe);
        return sqz_fail(SQZ_ERR_FORMAT, "%s: invalid JSON at line %d, column %d: %s", path,
                        err.line, err.column, err.text);
    }
    sqz_status s = parse(root, path, out);
    json_decref(root);
    if (s != SQZ_OK)
        sqz_config_release(out);
    return s;
}

void sqz_config_release(sqz_config *config)
{
    if (config->labels)
        for (int i = 0; i < config->num_labels; i++)
            free(config->labels[i]);
    free(config->labels);
    config->labels = NULL;
}

/* "+linear", "+share=K", "+stride=K", "+layers=N", "+positions=P" after a preset name. */
static sqz_status apply_variants(sqz_config *c, const char *preset, const char *variants)
{
    while (variants && *variants) {
        const char *end = strchr(variants, '+');
        const size_t len = end ? (size_t)(end - variants) : strlen(variants);
        char part[64];
        if (len >= sizeof part)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "preset \"%s\": variant too long", preset);
        memcpy(part, variants, len);
        part[len] = '\0';
        struct { const char *key; int max; int *dst; } keys[] = {
            {"share=", MAX_LAYERS, &c->share_layers}, {"stride=", MAX_LAYERS, &c->layer_stride},
            {"layers=", MAX_LAYERS, &c->run_layers}, {"positions=", MAX_POSITIONS, &c->max_position_embeddings}};
        bool known = strcmp(part, "linear") == 0;
        c->linear_attention |= known;
        for (size_t i = 0; !known && i < sizeof keys / sizeof keys[0]; i++) {
            const size_t n = strlen(keys[i].key);
            if (strncmp(part, keys[i].key, n) != 0)
                continue;
            char *stop = NULL;
            long v = strtol(part + n, &stop, 10);
            if (stop == part + n || *stop || v < 1 || v > keys[i].max)
                return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "preset \"%s\": %s needs an integer in 1..%d", preset,
                                part, keys[i].max);
            *keys[i].dst = (int)v;
            known = true;
        }
        if (!known)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "preset \"%s\": unknown variant \"%s\" (expected linear, "
                            "share=K, stride=K, layers=N or positions=P)", preset, part);
        variants = end ? end + 1 : NULL;
    }
    return validate(c, preset);
}

sqz_status sqz_config_preset(const char *preset, sqz_config *c)
{
    memset(c, 0, sizeof *c);
    set_defaults(c, false);
    c->vocab_size = 30528;
    const char *plus = strchr(preset, '+');
    char name[64];
    snprintf(name, sizeof name, "%.*s", plus ? (int)(plus - preset) : (int)strlen(preset), preset);
    if (strcmp(name, "squeezebert-uncased") == 0) {
        c->head = SQZ_HEAD_BASE;
    } else if (strcmp(name, "squeezebert-mnli") == 0) {
        c->head = SQZ_HEAD_SEQUENCE_CLASSIFICATION;
        c->num_labels = 3;
    } else if (strcmp(name, "tiny") == 0) {
        c->head = SQZ_HEAD_SEQUENCE_CLASSIFICATION;
        c->hidden_size = 128; /* two heads of 64, the real head size, so quick checks reach the */
        c->num_layers = 2;    /* kernels specialised for it */
        c->num_heads = 2;
        c->intermediate_size = 512;
        c->num_labels = 3;
    } else {
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "unknown preset \"%s\" (expected squeezebert-uncased, squeezebert-mnli "
                        "or tiny, each optionally followed by +linear, +share=K, +stride=K, +layers=N, "
                        "+positions=P)", name);
    }
    snprintf(c->architecture, sizeof c->architecture, "SqueezeBert%s",
             c->head == SQZ_HEAD_BASE ? "Model" : "ForSequenceClassification");
    sqz_status st = apply_variants(c, preset, plus ? plus + 1 : NULL);
    return st == SQZ_OK ? make_labels(c, NULL, preset) : st;
}
