/* The weights a config needs, by canonical name, and how they are named in files. */
#ifndef SQZ_RUNTIME_MODEL_WEIGHTS_H
#define SQZ_RUNTIME_MODEL_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/model.h"

typedef enum sqz_weight_role {
    SQZ_WEIGHT_MATRIX = 0, /* [rows, cols]; conv weights may be stored [rows, cols, 1] */
    SQZ_WEIGHT_VECTOR,     /* stored [cols], used as [1, cols] */
    SQZ_WEIGHT_TABLE,      /* embedding table [rows, cols] */
} sqz_weight_role;

typedef struct sqz_weight_spec {
    char canonical[96];
    int64_t rows, cols;
    sqz_weight_role role;
    bool in_base_model;   /* carries the base-model prefix (transformer. / bert.) in files */
    bool conv;            /* SqueezeBERT stores it as a Conv1d weight [rows, cols, 1] */
    bool optional;        /* absence is allowed (pooler of a base model) */
    char why[96];         /* the config fields that fix the shape, for messages */
} sqz_weight_spec;

/* Fills up to `cap` specs (specs may be NULL to count) and returns how many exist. */
size_t sqz_weight_specs(const sqz_config *config, sqz_weight_spec *specs, size_t cap);

/* The name `spec` has in a Hugging Face file written by save_pretrained for this config
 * (with the prefix a task model adds), e.g. "transformer.encoder.layers.0.attention.query.weight". */
void sqz_weight_file_name(const sqz_config *config, const sqz_weight_spec *spec, char *out,
                          size_t out_size);

#endif
