/* JSON files of `sqz forward`: the input ids and the output tensors. */
#ifndef SQZ_TOOLS_JSON_IO_H
#define SQZ_TOOLS_JSON_IO_H

#include <stdio.h>

#include "squeezebert.h"

/* Owns the arrays an sqz_input points into. */
typedef struct cli_input {
    sqz_input input;
    int64_t *ids, *mask, *types;
} cli_input;

/* Reads {"input_ids": [[...]], "attention_mask": ..., "token_type_ids": ...} ([N][W], or
 * [N][K][W] for multiple choice). On failure writes a message naming the file, field and
 * index to `err` and returns non-zero. */
int cli_input_read(const char *path, cli_input *out, char *err, size_t err_size);
void cli_input_release(cli_input *in);

/* Writes every output as nested arrays with 9 significant digits. Non-finite values are
 * written as null (JSON has no NaN) and counted in *non_finite. */
int cli_outputs_write(FILE *f, const sqz_result *result, size_t *non_finite);

#endif
