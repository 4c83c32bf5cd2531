#include "cli/json_io.h"

#include <jansson.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT_VALUES (1 << 26) /* ids per field; beyond this split the input */

/* Shape of a 2- or 3-level nested array of integers; rectangular or an error. */
static int read_field(json_t *root, const char *path, const char *field, int ndim_required,
                      int64_t dims[3], int *ndim, int64_t **values, char *err, size_t err_size)
{
    json_t *top = json_object_get(root, field);
    if (!top || !json_is_array(top) || json_array_size(top) == 0) {
        snprintf(err, err_size, "%s: field '%s' must be a non-empty array of arrays of integers",
                 path, field);
        return 1;
    }
    json_t *first = json_array_get(top, 0);
    json_t *first_inner = json_is_array(first) ? json_array_get(first, 0) : NULL;
    int nd = first_inner && json_is_array(first_inner) ? 3 : 2;
    if (ndim_required && nd != ndim_required) {
        snprintf(err, err_size, "%s: field '%s' has %d levels of nesting, input_ids has %d", path,
                 field, nd, ndim_required);
        return 1;
    }
    dims[0] = (int64_t)json_array_size(top);
    dims[1] = json_is_array(first) ? (int64_t)json_array_size(first) : 0;
    dims[2] = nd == 3 ? (int64_t)json_array_size(first_inner) : 1;
    if (dims[1] == 0 || dims[2] == 0) {
        snprintf(err, err_size, "%s: field '%s'[0] is empty or not an array", path, field);
        return 1;
    }
    double total = (double)dims[0] * (double)dims[1] * (double)dims[2];
    if (total > MAX_INPUT_VALUES || dims[0] > INT32_MAX || dims[1] > INT32_MAX || dims[2] > INT32_MAX) {
        snprintf(err, err_size, "%s: field '%s' holds %.0f values, more than the limit of %d",
                 path, field, total, MAX_INPUT_VALUES);
        return 1;
    }
    int64_t *v = malloc((size_t)total * sizeof *v);
    if (!v) {
        snprintf(err, err_size, "%s: out of memory reading '%s'", path, field);
        return 1;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < dims[0]; i++) {
        json_t *a = json_array_get(top, (size_t)i);
        if (!json_is_array(a) || (int64_t)json_array_size(a) != dims[1]) {
            snprintf(err, err_size, "%s: field '%s'[%lld] must be an array of %lld %s like '%s'[0]",
                     path, field, (long long)i, (long long)dims[1], nd == 3 ? "arrays" : "integers",
                     field);
            free(v);
            return 1;
        }
        for (int64_t j = 0; j < dims[1]; j++) {
            json_t *b = json_array_get(a, (size_t)j);
            if (nd == 2) {
                if (!json_is_integer(b)) {
                    snprintf(err, err_size, "%s: field '%s'[%lld][%lld] must be an integer", path,
                             field, (long long)i, (long long)j);
                    free(v);
                    return 1;
                }
                v[k++] = json_integer_value(b);
                continue;
            }
            if (!json_is_array(b) || (int64_t)json_array_size(b) != dims[2]) {
                snprintf(err, err_size, "%s: field '%s'[%lld][%lld] must be an array of %lld integers",
                         path, field, (long long)i, (long long)j, (long long)dims[2]);
                free(v);
                return 1;
            }
            for (int64_t l = 0; l < dims[2]; l++) {
                json_t *c = json_array_get(b, (size_t)l);
                if (!json_is_integer(c)) {
                    snprintf(err, err_size, "%s: field '%s'[%lld][%lld][%lld] must be an integer",
                             path, field, (long long)i, (long long)j, (long long)l);
                    free(v);
                    return 1;
                }
                v[k++] = json_integer_value(c);
            }
        }
    }
    *ndim = nd;
    *values = v;
    return 0;
}

int cli_input_read(const char *path, cli_input *out, char *err, size_t err_size)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        FILE *probe = fopen(path, "rb");
        if (!probe)
            snprintf(err, err_size, "cannot open input file %s", path);
        else
            snprintf(err, err_size, "%s: invalid JSON at line %d, column %d: %s", path, jerr.line,
                     jerr.column, jerr.text);
        if (probe)
            fclose(probe);
        return 1;
    }
    int rc = 1;
    if (!json_is_object(root)) {
        snprintf(err, err_size, "%s: expected a JSON object with 'input_ids'", path);
        goto done;
    }
    const char *known[] = {"input_ids", "attention_mask", "token_type_ids"};
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        bool ok = false;
        for (size_t i = 0; i < 3; i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(err, err_size, "%s: unknown field '%s' (expected input_ids, attention_mask, "
                     "token_type_ids)", path, key);
            goto done;
        }
    }
    int64_t dims[3];
    int ndim = 0;
    if (read_field(root, path, "input_ids", 0, dims, &ndim, &out->ids, err, err_size))
        goto done;
    int64_t **optional[2] = {&out->mask, &out->types};
    for (int f = 0; f < 2; f++) {
        if (!json_object_get(root, known[f + 1]) || json_is_null(json_object_get(root, known[f + 1])))
            continue;
        int64_t other[3];
        int other_ndim;
        if (read_field(root, path, known[f + 1], ndim, other, &other_ndim, optional[f], err, err_size))
            goto done;
        if (memcmp(other, dims, sizeof dims) != 0) {
            snprintf(err, err_size, "%s: field '%s' has shape [%lld][%lld]%s, input_ids has "
                     "[%lld][%lld]%s", path, known[f + 1], (long long)other[0], (long long)other[1],
                     ndim == 3 ? "[..]" : "", (long long)dims[0], (long long)dims[1],
                     ndim == 3 ? "[..]" : "");
            goto done;
        }
    }
    out->input.batch = (int)dims[0];
    out->input.choices = ndim == 3 ? (int)dims[1] : 0;
    out->input.seq_len = (int)(ndim == 3 ? dims[2] : dims[1]);
    out->input.input_ids = out->ids;
    out->input.attention_mask = out->mask;
    out->input.token_type_ids = out->types;
    rc = 0;
done:
    json_decref(root);
    if (rc)
        cli_input_release(out);
    return rc;
}

void cli_input_release(cli_input *in)
{
    free(in->ids);
    free(in->mask);
    free(in->types);
    memset(in, 0, sizeof *in);
}

static void write_array(FILE *f, const sqz_output *o, int dim, const float **cursor,
                        size_t *non_finite)
{
    if (dim >= SQZ_MAX_DIMS || dim >= o->ndim)
        return;
    fputc('[', f);
    for (int64_t i = 0; i < o->shape[dim]; i++) {
        if (i)
            fputc(',', f);
        if (dim + 1 < o->ndim) {
            write_array(f, o, dim + 1, cursor, non_finite);
            continue;
        }
        float x = *(*cursor)++;
        if (isfinite(x)) {
            fprintf(f, "%.9g", (double)x);
        } else {
            fputs("null", f);
            (*non_finite)++;
        }
    }
    fputc(']', f);
}

int cli_outputs_write(FILE *f, const sqz_result *result, size_t *non_finite)
{
    *non_finite = 0;
    fputc('{', f);
    for (size_t i = 0; i < sqz_result_count(result); i++) {
        const sqz_output *o = sqz_result_get(result, i);
        fprintf(f, "%s\n\"%s\": ", i ? "," : "", o->name);
        const float *cursor = o->data;
        write_array(f, o, 0, &cursor, non_finite);
    }
    fputs("\n}\n", f);
    return ferror(f) ? 1 : 0;
}
