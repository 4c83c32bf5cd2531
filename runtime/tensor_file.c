/* Checkpoint reading: format detection by content, the tensor list, and the exact
 * fp16/bf16/fp64 <-> fp32 conversions shared by both readers and the writer. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include "runtime/tensor_file.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "runtime/error.h"
#include "runtime/tensor_file_internal.h"

static const char *const dtype_names[SQZ_TF_DTYPE_COUNT] = {
    [SQZ_TF_F32] = "F32", [SQZ_TF_F16] = "F16", [SQZ_TF_BF16] = "BF16", [SQZ_TF_F64] = "F64",
    [SQZ_TF_I64] = "I64", [SQZ_TF_I32] = "I32", [SQZ_TF_I16] = "I16",  [SQZ_TF_I8] = "I8",
    [SQZ_TF_U8] = "U8",   [SQZ_TF_BOOL] = "BOOL",
};

static const size_t dtype_sizes[SQZ_TF_DTYPE_COUNT] = {
    [SQZ_TF_F32] = 4, [SQZ_TF_F16] = 2, [SQZ_TF_BF16] = 2, [SQZ_TF_F64] = 8, [SQZ_TF_I64] = 8,
    [SQZ_TF_I32] = 4, [SQZ_TF_I16] = 2, [SQZ_TF_I8] = 1,   [SQZ_TF_U8] = 1,  [SQZ_TF_BOOL] = 1,
};

const char *sqz_tf_dtype_name(sqz_tf_dtype dtype)
{
    if ((unsigned)dtype >= SQZ_TF_DTYPE_COUNT)
        return "?";
    return dtype_names[dtype];
}

size_t sqz_tf_dtype_size(sqz_tf_dtype dtype)
{
    if ((unsigned)dtype >= SQZ_TF_DTYPE_COUNT)
        return 0;
    return dtype_sizes[dtype];
}

int sqz_tf_dtype_is_float(sqz_tf_dtype dtype)
{
    return dtype == SQZ_TF_F32 || dtype == SQZ_TF_F16 || dtype == SQZ_TF_BF16 ||
           dtype == SQZ_TF_F64;
}

/* ---- conversions ---------------------------------------------------------------------- */

static float f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

float sqz_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf / nan: keep the payload (and so the quiet bit) */
        return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0)
        return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0)
        return f32_from_bits(sign);
    /* Subnormal half: every one is a normal float; shift the leading 1 into place. */
    uint32_t e = 113;
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return f32_from_bits(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

float sqz_bf16_to_f32(uint16_t bits) { return f32_from_bits((uint32_t)bits << 16); }

uint16_t sqz_f32_to_f16(float value)
{
    uint32_t bits = f32_bits(value);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t abs = bits & 0x7fffffffu;
    if (abs > 0x7f800000u) /* nan: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    if (abs >= 0x477ff000u) /* >= 65520 rounds past the largest half (65504): inf */
        return (uint16_t)(sign | 0x7c00u);
    uint32_t exp = abs >> 23;
    if (exp < 113) {
        /* Result is a half subnormal (or zero): value = man * 2^(exp-150), unit 2^-24. */
        if (exp < 102) /* below 2^-25, half the smallest subnormal: rounds to zero */
            return sign;
        uint32_t man = (abs & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - exp; /* 14 .. 24 */
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q); /* q may reach 0x400: the smallest normal, correctly */
    }
    uint32_t q = ((exp - 112u) << 10) | ((abs >> 13) & 0x3ffu);
    uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u)))
        q++; /* a carry into the exponent is the correct rounding */
    return (uint16_t)(sign | q);
}

uint16_t sqz_f32_to_bf16(float value)
{
    uint32_t bits = f32_bits(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40u); /* nan stays nan (quiet) */
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding) >> 16); /* overflow lands on inf, as it should */
}

float sqz_tf_f64_to_f32(double value)
{
    if (isnan(value))
        return (float)value;
    double mag = fabs(value);
    if (mag > FLT_MAX) {
        /* C leaves out-of-range conversion undefined; round by hand: at or beyond
         * FLT_MAX + half an ulp goes to inf (ties to the even neighbour, 2^128). */
        float r = mag >= 0x1.ffffffp+127 ? INFINITY : FLT_MAX;
        return value < 0 ? -r : r;
    }
    return (float)value;
}

float sqz_tf_load_f32(sqz_tf_dtype dtype, const unsigned char *p)
{
    switch (dtype) {
    case SQZ_TF_F32:
        return f32_from_bits(sqz_tf_le32(p));
    case SQZ_TF_F16:
        return sqz_f16_to_f32(sqz_tf_le16(p));
    case SQZ_TF_BF16:
        return sqz_bf16_to_f32(sqz_tf_le16(p));
    case SQZ_TF_F64: {
        uint64_t bits = sqz_tf_le64(p);
        double d;
        memcpy(&d, &bits, sizeof d);
        return sqz_tf_f64_to_f32(d);
    }
    default:
        return 0.0f;
    }
}

/* ---- helpers for messages and checks ---------------------------------------------------- */

const char *sqz_tf_printable(const char *s, size_t len, char *out, size_t cap)
{
    if (cap == 0)
        return out;
    size_t keep = len;
    int cut = 0;
    if (keep > cap - 1) {
        cut = cap >= 4;
        keep = cut ? cap - 4 : cap - 1;
    }
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (cut)
        memcpy(out + keep, "...", 3);
    out[keep + (cut ? 3 : 0)] = '\0';
    return out;
}

sqz_status sqz_tf_read_at(const sqz_tf_source *src, uint64_t offset, void *buf, size_t n,
                          const char *what)
{
    if (offset > src->size || n > src->size - offset)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: %s needs bytes %llu..%llu but the file has only %llu bytes "
                        "(truncated?)",
                        src->path, what, (unsigned long long)offset,
                        (unsigned long long)offset + (unsigned long long)n,
                        (unsigned long long)src->size);
    if (n == 0)
        return SQZ_OK;
    if ((uint64_t)(off_t)offset != offset || fseeko(src->fp, (off_t)offset, SEEK_SET) != 0)
        return sqz_fail(SQZ_ERR_IO, "%s: cannot seek to byte offset %llu for %s: %s", src->path,
                        (unsigned long long)offset, what, strerror(errno));
    size_t got = fread(buf, 1, n, src->fp);
    if (got != n) {
        if (ferror(src->fp))
            return sqz_fail(SQZ_ERR_IO, "%s: read error at byte offset %llu (%s): %s",
                            src->path, (unsigned long long)offset, what, strerror(errno));
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: file ended at byte offset %llu while reading %s (expected %zu "
                        "bytes, got %zu): truncated?",
                        src->path, (unsigned long long)(offset + got), what, n, got);
    }
    return SQZ_OK;
}

static int compare_tensor_names(const void *a, const void *b)
{
    const sqz_tf_tensor *ta = *(const sqz_tf_tensor *const *)a;
    const sqz_tf_tensor *tb = *(const sqz_tf_tensor *const *)b;
    return strcmp(ta->name, tb->name);
}

sqz_status sqz_tf_check_unique_names(const sqz_tensor_file *file)
{
    if (file->count < 2)
        return SQZ_OK;
    const sqz_tf_tensor **order = malloc(file->count * sizeof *order);
    if (!order)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory checking %zu tensor names",
                        file->path, file->count);
    for (size_t i = 0; i < file->count; i++)
        order[i] = &file->tensors[i];
    qsort(order, file->count, sizeof *order, compare_tensor_names);
    for (size_t i = 1; i < file->count; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            char name[160];
            sqz_tf_printable(order[i]->name, strlen(order[i]->name), name, sizeof name);
            free(order);
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: tensor name '%s' appears more than once (names must be unique)",
                            file->path, name);
        }
    }
    free(order);
    return SQZ_OK;
}

/* ---- the file ------------------------------------------------------------------------------ */

/* The first bytes torch.save wrote before 1.6: PROTO 2, then LONG1 of the magic number
 * 0x1950a86a20f9469cfc6c. Long enough that no safetensors length could start this way
 * and still fit a real file. */
static const unsigned char legacy_torch_magic[14] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                                     0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

static char *copy_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c)
        memcpy(c, s, n);
    return c;
}

sqz_status sqz_tensor_file_read(const char *path, const sqz_model_load_options *limits,
                                sqz_tensor_file **out)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "sqz_tensor_file_read: path and out must not be NULL");

    FILE *fp = fopen(path, "rb");
    if (!fp)
        return sqz_fail(SQZ_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        int err = errno;
        fclose(fp);
        return sqz_fail(SQZ_ERR_IO, "cannot stat %s: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        fclose(fp);
        return sqz_fail(SQZ_ERR_IO, "%s is not a regular file (expected a .safetensors or "
                        "PyTorch .bin checkpoint)", path);
    }
    sqz_tf_source src = {fp, path, (uint64_t)st.st_size, SQZ_TF_MAX_HEADER_BYTES, SQZ_TF_MAX_PICKLE_BYTES};
    if (limits && limits->max_header_bytes)
        src.max_header_bytes = limits->max_header_bytes;
    if (limits && limits->max_pickle_bytes)
        src.max_pickle_bytes = limits->max_pickle_bytes;
    if (src.size == 0) {
        fclose(fp);
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s is empty (0 bytes): expected a safetensors or PyTorch zip checkpoint",
                        path);
    }

    unsigned char head[sizeof legacy_torch_magic] = {0};
    size_t head_len = src.size < sizeof head ? (size_t)src.size : sizeof head;
    sqz_status status = sqz_tf_read_at(&src, 0, head, head_len, "the file's first bytes");
    if (status != SQZ_OK) {
        fclose(fp);
        return status;
    }
    const int is_legacy = head_len == sizeof head && memcmp(head, legacy_torch_magic, sizeof head) == 0;

    sqz_tensor_file *file = calloc(1, sizeof *file);
    if (file)
        file->path = copy_string(path);
    if (!file || !file->path) {
        free(file);
        fclose(fp);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }

    int is_zip = head_len >= 4 && head[0] == 'P' && head[1] == 'K' &&
                 ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6));
    status = is_legacy ? sqz_tf_read_torch_legacy(&src, file)
             : is_zip  ? sqz_tf_read_torch_zip(&src, file)
                       : sqz_tf_read_safetensors(&src, file);
    if (status == SQZ_OK)
        status = sqz_tf_check_unique_names(file);
    fclose(fp);
    if (status != SQZ_OK) {
        sqz_tensor_file_free(file);
        return status;
    }
    *out = file;
    return SQZ_OK;
}

void sqz_tensor_file_clear(sqz_tensor_file *file)
{
    if (file->tensors) {
        for (size_t i = 0; i < file->count; i++) {
            free(file->tensors[i].name);
            free(file->tensors[i].data);
        }
    }
    free(file->tensors);
    file->tensors = NULL;
    file->count = 0;
}

void sqz_tensor_file_free(sqz_tensor_file *file)
{
    if (!file)
        return;
    sqz_tensor_file_clear(file);
    free(file->path);
    free(file);
}

const sqz_tf_tensor *sqz_tensor_file_find(const sqz_tensor_file *file, const char *name)
{
    if (!file || !name)
        return NULL;
    for (size_t i = 0; i < file->count; i++)
        if (file->tensors[i].name && strcmp(file->tensors[i].name, name) == 0)
            return &file->tensors[i];
    return NULL;
}
