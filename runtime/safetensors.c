/* safetensors: an 8-byte little-endian header length N, N bytes of JSON describing each
 * tensor (dtype, shape, [begin, end) in the data region), then the data region. Every
 * number in the header is checked against the file before any data is touched. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/tensor_file.h"
#include "runtime/tensor_file_internal.h"

/* Conversion goes through a bounded buffer so a big tensor never needs a second copy. */
#define ST_CHUNK_BYTES ((size_t)1 << 20)

typedef struct st_span {
    uint64_t begin, end;
    size_t tensor;
} st_span;

static int compare_spans(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_dtype(const char *s, sqz_tf_dtype *out)
{
    for (int d = 0; d < SQZ_TF_DTYPE_COUNT; d++) {
        if (strcmp(s, sqz_tf_dtype_name((sqz_tf_dtype)d)) == 0) {
            *out = (sqz_tf_dtype)d;
            return 1;
        }
    }
    return 0;
}

/* Reads one tensor entry of the header into `t` (and its span). `name` is printable. */
static sqz_status parse_entry(const sqz_tf_source *src, const char *key, const char *name,
                              json_t *value, uint64_t data_size, sqz_tf_tensor *t,
                              st_span *span)
{
    const char *path = src->path;
    if (strlen(key) > SQZ_TF_MAX_NAME)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: tensor name '%s' is %zu bytes long (at most %d)",
                        path, name, strlen(key), SQZ_TF_MAX_NAME);
    if (!json_is_object(value))
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: header entry for tensor '%s' must be a JSON object with dtype, "
                        "shape and data_offsets",
                        path, name);
    json_t *jdtype = json_object_get(value, "dtype");
    json_t *jshape = json_object_get(value, "shape");
    json_t *joffsets = json_object_get(value, "data_offsets");
    if (!json_is_string(jdtype))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: tensor '%s': expected a string \"dtype\" field",
                        path, name);
    if (!json_is_array(jshape))
        return sqz_fail(SQZ_ERR_FORMAT, "%s: tensor '%s': expected an array \"shape\" field",
                        path, name);
    if (!json_is_array(joffsets) || json_array_size(joffsets) != 2)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: tensor '%s': expected \"data_offsets\" to be an array [begin, end]",
                        path, name);

    const char *dtype_str = json_string_value(jdtype);
    if (!parse_dtype(dtype_str, &t->dtype)) {
        char shown[64];
        sqz_tf_printable(dtype_str, strlen(dtype_str), shown, sizeof shown);
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: tensor '%s' has dtype '%s', which is not supported (expected one "
                        "of F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)",
                        path, name, shown);
    }

    size_t ndim = json_array_size(jshape);
    if (ndim > SQZ_TF_MAX_DIMS)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions (at most %d)",
                        path, name, ndim, SQZ_TF_MAX_DIMS);
    t->ndim = (int)ndim;
    int64_t numel = 1;
    for (size_t d = 0; d < ndim; d++) {
        json_t *jd = json_array_get(jshape, d);
        if (!json_is_integer(jd) || json_integer_value(jd) < 0)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: tensor '%s': shape[%zu] must be a non-negative integer", path,
                            name, d);
        int64_t dim = (int64_t)json_integer_value(jd);
        t->shape[d] = dim;
        if (dim != 0 && numel > INT64_MAX / dim)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: tensor '%s': the element count of its shape overflows 64 bits",
                            path, name);
        numel *= dim;
    }
    t->numel = numel;

    json_t *jb = json_array_get(joffsets, 0), *je = json_array_get(joffsets, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < 0)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets must be two non-negative integers", path,
                        name);
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    if (begin > end || end > data_size)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] lie outside the data region "
                        "of %llu bytes",
                        path, name, (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)data_size);
    size_t item = sqz_tf_dtype_size(t->dtype);
    if ((uint64_t)numel > UINT64_MAX / item || end - begin != (uint64_t)numel * item)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: tensor '%s': shape has %lld elements of %s (%zu bytes each) but "
                        "data_offsets [%llu, %llu] span %llu bytes",
                        path, name, (long long)numel, sqz_tf_dtype_name(t->dtype), item,
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)(end - begin));
    span->begin = begin;
    span->end = end;
    return SQZ_OK;
}

/* Fills t->data from the file (fp32, widened or narrowed from the stored dtype). */
static sqz_status load_tensor_data(const sqz_tf_source *src, uint64_t data_start,
                                   const st_span *span, sqz_tf_tensor *t, unsigned char *chunk,
                                   const char *name)
{
    if ((uint64_t)t->numel > SIZE_MAX / sizeof(float))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: tensor '%s' is too large for this machine",
                        src->path, name);
    t->data = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
    if (!t->data)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY,
                        "%s: out of memory for tensor '%s' (%lld elements)", src->path, name,
                        (long long)t->numel);
    size_t item = sqz_tf_dtype_size(t->dtype);
    size_t per_chunk = ST_CHUNK_BYTES / item;
    char what[256];
    snprintf(what, sizeof what, "the data of tensor '%s'", name);
    for (size_t done = 0; done < (size_t)t->numel;) {
        size_t n = (size_t)t->numel - done;
        if (n > per_chunk)
            n = per_chunk;
        sqz_status status = sqz_tf_read_at(src, data_start + span->begin + done * item, chunk,
                                           n * item, what);
        if (status != SQZ_OK)
            return status;
        for (size_t i = 0; i < n; i++)
            t->data[done + i] = sqz_tf_load_f32(t->dtype, chunk + i * item);
        done += n;
    }
    return SQZ_OK;
}

static sqz_status read_header_json(const sqz_tf_source *src, uint64_t header_len, json_t **out)
{
    const char *path = src->path;
    char *header = malloc((size_t)header_len);
    if (!header)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory for a %llu-byte header",
                        path, (unsigned long long)header_len);
    sqz_status status = sqz_tf_read_at(src, 8, header, (size_t)header_len,
                                       "the safetensors JSON header");
    if (status != SQZ_OK) {
        free(header);
        return status;
    }
    if (header[0] != '{') {
        unsigned c = (unsigned char)header[0];
        free(header);
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: expected the safetensors JSON header to start with '{' at byte "
                        "offset 8, found byte 0x%02x (not a safetensors file?)",
                        path, c);
    }
    json_error_t jerr;
    json_t *root = json_loadb(header, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    free(header);
    if (!root)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: safetensors header (bytes 8..%llu) is not valid JSON: %s at header "
                        "byte %d (file byte offset %lld)",
                        path, (unsigned long long)(8 + header_len), jerr.text, jerr.position,
                        (long long)jerr.position + 8);
    if (!json_is_object(root)) {
        json_decref(root);
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: safetensors header must be a JSON object of tensor entries", path);
    }
    *out = root;
    return SQZ_OK;
}

sqz_status sqz_tf_read_safetensors(const sqz_tf_source *src, sqz_tensor_file *out)
{
    const char *path = src->path;
    unsigned char lenbuf[8];
    if (src->size < 8)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: file is %llu bytes, too short for a safetensors header (8-byte "
                        "length, then JSON) and not a PyTorch zip",
                        path, (unsigned long long)src->size);
    sqz_status status = sqz_tf_read_at(src, 0, lenbuf, 8, "the safetensors header length");
    if (status != SQZ_OK)
        return status;
    uint64_t header_len = sqz_tf_le64(lenbuf);
    if (header_len > src->size - 8)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: safetensors header length %llu (bytes 0-7) is larger than the %llu "
                        "bytes that follow: truncated, or not a safetensors file%s",
                        path, (unsigned long long)header_len,
                        (unsigned long long)(src->size - 8),
                        lenbuf[0] == 0x80 ? " (it starts like a Python pickle)" : "");
    if (header_len > src->max_header_bytes)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: safetensors header length %llu exceeds the limit of %zu bytes "
                        "(" SQZ_TF_HEADER_LIMIT_KNOB ")", path, (unsigned long long)header_len,
                        src->max_header_bytes);
    if (header_len < 2)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: safetensors header length %llu is too small for a JSON object",
                        path, (unsigned long long)header_len);
    uint64_t data_start = 8 + header_len;
    uint64_t data_size = src->size - data_start;

    json_t *root = NULL;
    status = read_header_json(src, header_len, &root);
    if (status != SQZ_OK)
        return status;

    size_t count = 0;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "__metadata__") != 0)
            count++;
    }
    if (count > SQZ_TF_MAX_TENSORS) {
        json_decref(root);
        return sqz_fail(SQZ_ERR_FORMAT, "%s: header lists %zu tensors (at most %d)", path,
                        count, SQZ_TF_MAX_TENSORS);
    }
    st_span *spans = malloc((count ? count : 1) * sizeof *spans);
    out->tensors = calloc(count ? count : 1, sizeof *out->tensors);
    unsigned char *chunk = malloc(ST_CHUNK_BYTES);
    if (!spans || !out->tensors || !chunk) {
        free(spans);
        free(chunk);
        json_decref(root);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu tensor entries", path,
                        count);
    }

    char name[160];
    size_t i = 0;
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue; /* free-form string map; nothing the engine needs */
        sqz_tf_printable(key, strlen(key), name, sizeof name);
        sqz_tf_tensor *t = &out->tensors[i];
        status = parse_entry(src, key, name, value, data_size, t, &spans[i]);
        if (status != SQZ_OK)
            goto done;
        size_t klen = strlen(key) + 1;
        t->name = malloc(klen);
        if (!t->name) {
            status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
            goto done;
        }
        memcpy(t->name, key, klen);
        spans[i].tensor = i;
        i++;
        out->count = i;
    }

    /* Overlapping data would let one region be read as two tensors: refuse it. */
    qsort(spans, count, sizeof *spans, compare_spans);
    for (size_t k = 1; k < count; k++) {
        if (spans[k].begin < spans[k - 1].end) {
            char other[160];
            const sqz_tf_tensor *a = &out->tensors[spans[k - 1].tensor];
            const sqz_tf_tensor *b = &out->tensors[spans[k].tensor];
            sqz_tf_printable(a->name, strlen(a->name), name, sizeof name);
            sqz_tf_printable(b->name, strlen(b->name), other, sizeof other);
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: data of tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) "
                              "overlap",
                              path, name, (unsigned long long)spans[k - 1].begin,
                              (unsigned long long)spans[k - 1].end, other,
                              (unsigned long long)spans[k].begin,
                              (unsigned long long)spans[k].end);
            goto done;
        }
    }

    for (size_t k = 0; k < count; k++) {
        sqz_tf_tensor *t = &out->tensors[spans[k].tensor];
        if (!sqz_tf_dtype_is_float(t->dtype))
            continue; /* listed only: the engine never reads integer buffers */
        sqz_tf_printable(t->name, strlen(t->name), name, sizeof name);
        status = load_tensor_data(src, data_start, &spans[k], t, chunk, name);
        if (status != SQZ_OK)
            goto done;
    }
    status = SQZ_OK;

done:
    free(spans);
    free(chunk);
    json_decref(root);
    return status;
}

/* ---- writer ------------------------------------------------------------------------------- */

static sqz_status write_fail(FILE *fp, const char *path, const char *what)
{
    int err = errno;
    if (fp)
        fclose(fp);
    remove(path); /* never leave a half-written checkpoint behind */
    return sqz_fail(SQZ_ERR_IO, "%s: cannot write %s: %s", path, what, strerror(err));
}

static sqz_status build_header(const sqz_tf_write_tensor *tensors, size_t count,
                               sqz_tf_dtype stored, const char *path, char **out_json)
{
    size_t item = sqz_tf_dtype_size(stored);
    json_t *root = json_object();
    json_t *meta = json_object();
    /* transformers checks metadata "format" before trusting a safetensors file. */
    if (!root || !meta || json_object_set_new(meta, "format", json_string("pt")) != 0 ||
        json_object_set_new(root, "__metadata__", meta) != 0) {
        json_decref(root);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory building the header", path);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        const sqz_tf_write_tensor *t = &tensors[i];
        if (!t->name || strlen(t->name) > SQZ_TF_MAX_NAME ||
            strcmp(t->name, "__metadata__") == 0 || json_object_get(root, t->name)) {
            json_decref(root);
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                            "%s: tensor %zu: name must be non-NULL, unique, not \"__metadata__\" "
                            "and at most %d bytes",
                            path, i, SQZ_TF_MAX_NAME);
        }
        if (t->ndim < 0 || t->ndim > SQZ_TF_MAX_DIMS) {
            json_decref(root);
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%s: tensor '%s': ndim %d out of range",
                            path, t->name, t->ndim);
        }
        json_t *entry = json_object();
        json_t *shape = json_array();
        json_t *offsets = json_array();
        int bad = !entry || !shape || !offsets;
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim && !bad; d++) {
            if (t->shape[d] < 0 ||
                (t->shape[d] != 0 && numel > (UINT64_MAX / item) / (uint64_t)t->shape[d]))
                bad = 2;
            else {
                numel *= (uint64_t)t->shape[d];
                bad = json_array_append_new(shape, json_integer(t->shape[d])) != 0;
            }
        }
        if (!bad && numel > 0 && !t->data)
            bad = 3;
        if (!bad && numel * item > (uint64_t)INT64_MAX - offset)
            bad = 2;
        if (!bad) {
            bad = json_array_append_new(offsets, json_integer((json_int_t)offset)) != 0 ||
                  json_array_append_new(offsets, json_integer((json_int_t)(offset + numel * item))) != 0 ||
                  json_object_set_new(entry, "dtype", json_string(sqz_tf_dtype_name(stored))) != 0 ||
                  json_object_set(entry, "shape", shape) != 0 ||
                  json_object_set(entry, "data_offsets", offsets) != 0;
            /* json_string fails (NULL) for names that are not UTF-8. */
            if (!bad && json_object_set(root, t->name, entry) != 0)
                bad = 4;
        }
        json_decref(shape);
        json_decref(offsets);
        json_decref(entry);
        if (bad) {
            json_decref(root);
            if (bad == 1)
                return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory building the header",
                                path);
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                            "%s: tensor '%s': %s", path, t->name,
                            bad == 2   ? "shape has a negative or too large dimension"
                            : bad == 3 ? "data is NULL"
                                       : "name is not valid UTF-8");
        }
        offset += numel * item;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory writing the header", path);
    *out_json = text;
    return SQZ_OK;
}

sqz_status sqz_safetensors_write(const char *path, const sqz_tf_write_tensor *tensors,
                                 size_t count, sqz_tf_dtype stored_dtype)
{
    if (!path || (count > 0 && !tensors))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "sqz_safetensors_write: path and tensors must not be NULL");
    if (stored_dtype != SQZ_TF_F32 && stored_dtype != SQZ_TF_F16 && stored_dtype != SQZ_TF_BF16)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "%s: can only store F32, F16 or BF16, not %s", path,
                        sqz_tf_dtype_name(stored_dtype));
    if (count > SQZ_TF_MAX_TENSORS)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%s: %zu tensors (at most %d)", path, count,
                        SQZ_TF_MAX_TENSORS);

    char *header = NULL;
    sqz_status status = build_header(tensors, count, stored_dtype, path, &header);
    if (status != SQZ_OK)
        return status;
    size_t hlen = strlen(header);
    size_t padded = hlen + (8 - (8 + hlen) % 8) % 8; /* data starts 8-byte aligned */
    unsigned char *chunk = malloc(ST_CHUNK_BYTES);
    if (!chunk) {
        free(header);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }

    FILE *fp = fopen(path, "wb");
    if (!fp) {
        int err = errno;
        free(header);
        free(chunk);
        return sqz_fail(SQZ_ERR_IO, "cannot create %s: %s", path, strerror(err));
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(header, 1, hlen, fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', fp) != EOF;
    free(header);
    if (!ok) {
        free(chunk);
        return write_fail(fp, path, "the header");
    }

    size_t item = sqz_tf_dtype_size(stored_dtype);
    size_t per_chunk = ST_CHUNK_BYTES / item;
    for (size_t t = 0; t < count; t++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[t].ndim; d++)
            numel *= (size_t)tensors[t].shape[d];
        for (size_t done = 0; done < numel;) {
            size_t n = numel - done < per_chunk ? numel - done : per_chunk;
            const float *src = tensors[t].data + done;
            for (size_t i = 0; i < n; i++) {
                unsigned char *p = chunk + i * item;
                uint32_t bits;
                if (stored_dtype == SQZ_TF_F32) {
                    memcpy(&bits, &src[i], 4);
                    p[2] = (unsigned char)(bits >> 16);
                    p[3] = (unsigned char)(bits >> 24);
                } else {
                    bits = stored_dtype == SQZ_TF_F16 ? sqz_f32_to_f16(src[i])
                                                      : sqz_f32_to_bf16(src[i]);
                }
                p[0] = (unsigned char)bits;
                p[1] = (unsigned char)(bits >> 8);
            }
            if (fwrite(chunk, item, n, fp) != n) {
                free(chunk);
                return write_fail(fp, path, "tensor data");
            }
            done += n;
        }
    }
    free(chunk);
    if (fclose(fp) != 0)
        return write_fail(NULL, path, "the file (close failed)");
    return SQZ_OK;
}
