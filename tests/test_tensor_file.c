/* Checkpoint reading: real files written by torch.save and safetensors (fixtures made by
 * tools/gen_tensor_file_fixtures.py, with torch's own view of their contents next to
 * them), hand-built hostile files, the safetensors writer and the fp16/bf16 conversions.
 * Every refusal is checked for its message, not only its status. */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>

#include <cmocka.h>

#include "runtime/pickle.h"
#include "runtime/tensor_file.h"
#include "runtime/tensor_file_internal.h"
#include "runtime/zip.h"

#ifndef SQZ_FIXTURES_DIR
#error "SQZ_FIXTURES_DIR must name tests/fixtures"
#endif
#define TF_DIR SQZ_FIXTURES_DIR "/tensor_files/"

static char tmp_dir[512];

/* ---- small helpers -------------------------------------------------------------------- */

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmp_dir, name);
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long n = ftell(fp);
    assert_true(n >= 0);
    rewind(fp);
    unsigned char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void write_all(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (len)
        assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* Asserts status and that the message contains every given fragment (NULL-terminated). */
static void check_error(sqz_status got, sqz_status want, ...)
{
    const char *msg = sqz_last_error();
    if (got != want) {
        print_error("status %d (%s), expected %d; message: %s\n", (int)got, sqz_status_str(got),
                    (int)want, msg);
        fail();
    }
    va_list ap;
    va_start(ap, want);
    for (const char *frag = va_arg(ap, const char *); frag; frag = va_arg(ap, const char *)) {
        if (!strstr(msg, frag)) {
            print_error("message lacks \"%s\": %s\n", frag, msg);
            va_end(ap);
            fail();
        }
    }
    va_end(ap);
}

/* Reads `path` expecting failure with `want` and the fragments; *out stays NULL. */
#define EXPECT_READ_FAIL(path, want, ...)                                                \
    do {                                                                                 \
        sqz_tensor_file *f_ = (sqz_tensor_file *)1;                                      \
        sqz_status s_ = sqz_tensor_file_read((path), NULL, &f_);                        \
        assert_null(f_);                                                                 \
        check_error(s_, (want), __VA_ARGS__, (const char *)NULL);                        \
    } while (0)

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- a byte builder, a CRC and a zip writer (independent of the reader's) -------------- */

typedef struct bytes {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put1(bytes *b, unsigned v)
{
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}

static void put_le(bytes *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        put1(b, (unsigned)(v >> (8 * i)) & 0xffu);
}

static void set_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t crc32_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

typedef struct zfile {
    const char *name;
    const void *data;
    size_t len;
    unsigned method; /* 0 stored; anything else is only claimed, not done */
} zfile;

/* Writes a zip of `files`. zip64 puts sizes and offsets in zip64 extra fields and the
 * counts in a zip64 end record, as big archives (and torch, partly) do. */
static void write_zip(const char *path, const zfile *files, size_t n, int zip64)
{
    bytes z = {0}, cd = {0};
    for (size_t i = 0; i < n; i++) {
        uint64_t offset = z.n;
        size_t nl = strlen(files[i].name);
        uint32_t crc = crc32_bitwise(files[i].data, files[i].len);
        put_le(&z, 0x04034b50u, 4);
        put_le(&z, zip64 ? 45 : 20, 2);
        put_le(&z, 0, 2);
        put_le(&z, files[i].method, 2);
        put_le(&z, 0, 4); /* time, date */
        put_le(&z, crc, 4);
        put_le(&z, zip64 ? 0xffffffffu : files[i].len, 4);
        put_le(&z, zip64 ? 0xffffffffu : files[i].len, 4);
        put_le(&z, nl, 2);
        put_le(&z, zip64 ? 20 : 0, 2);
        put(&z, files[i].name, nl);
        if (zip64) {
            put_le(&z, 1, 2);
            put_le(&z, 16, 2);
            put_le(&z, files[i].len, 8);
            put_le(&z, files[i].len, 8);
        }
        put(&z, files[i].data, files[i].len);

        put_le(&cd, 0x02014b50u, 4);
        put_le(&cd, zip64 ? 45 : 20, 2);
        put_le(&cd, zip64 ? 45 : 20, 2);
        put_le(&cd, 0, 2);
        put_le(&cd, files[i].method, 2);
        put_le(&cd, 0, 4);
        put_le(&cd, crc, 4);
        put_le(&cd, zip64 ? 0xffffffffu : files[i].len, 4);
        put_le(&cd, zip64 ? 0xffffffffu : files[i].len, 4);
        put_le(&cd, nl, 2);
        put_le(&cd, zip64 ? 28 : 0, 2);
        put_le(&cd, 0, 2); /* comment */
        put_le(&cd, 0, 2); /* disk */
        put_le(&cd, 0, 2);
        put_le(&cd, 0, 4);
        put_le(&cd, zip64 ? 0xffffffffu : offset, 4);
        put(&cd, files[i].name, nl);
        if (zip64) {
            put_le(&cd, 1, 2);
            put_le(&cd, 24, 2);
            put_le(&cd, files[i].len, 8);
            put_le(&cd, files[i].len, 8);
            put_le(&cd, offset, 8);
        }
    }
    uint64_t cd_offset = z.n;
    put(&z, cd.p, cd.n);
    if (zip64) {
        uint64_t z64 = z.n;
        put_le(&z, 0x06064b50u, 4);
        put_le(&z, 44, 8);
        put_le(&z, 45, 2);
        put_le(&z, 45, 2);
        put_le(&z, 0, 4);
        put_le(&z, 0, 4);
        put_le(&z, n, 8);
        put_le(&z, n, 8);
        put_le(&z, cd.n, 8);
        put_le(&z, cd_offset, 8);
        put_le(&z, 0x07064b50u, 4);
        put_le(&z, 0, 4);
        put_le(&z, z64, 8);
        put_le(&z, 1, 4);
    }
    put_le(&z, 0x06054b50u, 4);
    put_le(&z, 0, 2);
    put_le(&z, 0, 2);
    put_le(&z, zip64 ? 0xffff : n, 2);
    put_le(&z, zip64 ? 0xffff : n, 2);
    put_le(&z, zip64 ? 0xffffffffu : cd.n, 4);
    put_le(&z, zip64 ? 0xffffffffu : cd_offset, 4);
    put_le(&z, 0, 2);
    write_all(path, z.p, z.n);
    free(z.p);
    free(cd.p);
}

/* ---- a pickle writer for the subset torch.save emits ----------------------------------- */

static void pk_str(bytes *b, const char *s)
{
    put1(b, 'X');
    put_le(b, strlen(s), 4);
    put(b, s, strlen(s));
}

static void pk_global(bytes *b, const char *module, const char *name)
{
    put1(b, 'c');
    put(b, module, strlen(module));
    put1(b, '\n');
    put(b, name, strlen(name));
    put1(b, '\n');
}

static void pk_int(bytes *b, int64_t v)
{
    if (v >= 0 && v < 256) {
        put1(b, 'K');
        put1(b, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        put1(b, 'J');
        put_le(b, (uint64_t)v, 4);
    } else {
        put1(b, 0x8a);
        put1(b, 8);
        put_le(b, (uint64_t)v, 8);
    }
}

static void pk_begin_state_dict(bytes *b)
{
    put1(b, 0x80);
    put1(b, 2);
    pk_global(b, "collections", "OrderedDict");
    put1(b, ')');
    put1(b, 'R');
    put1(b, '(');
}

static void pk_end_state_dict(bytes *b)
{
    put1(b, 'u');
    put1(b, '.');
}

typedef struct tspec {
    const char *storage_class;
    const char *key;
    int64_t storage_numel;
    int64_t offset;
    int ndim;
    int64_t shape[9];
    int64_t stride[9];
} tspec;

static void pk_tensor(bytes *b, const tspec *t)
{
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    put1(b, '(');
    put1(b, '(');
    pk_str(b, "storage");
    pk_global(b, "torch", t->storage_class);
    pk_str(b, t->key);
    pk_str(b, "cpu");
    pk_int(b, t->storage_numel);
    put1(b, 't');
    put1(b, 'Q');
    pk_int(b, t->offset);
    put1(b, '(');
    for (int d = 0; d < t->ndim; d++)
        pk_int(b, t->shape[d]);
    put1(b, 't');
    put1(b, '(');
    for (int d = 0; d < t->ndim; d++)
        pk_int(b, t->stride[d]);
    put1(b, 't');
    put1(b, 0x89);
    pk_global(b, "collections", "OrderedDict");
    put1(b, ')');
    put1(b, 'R');
    put1(b, 't');
    put1(b, 'R');
}

/* A state dict {name: tensor} over one FloatStorage "0" holding `values`. */
static void pk_one_tensor(bytes *b, const char *name, const tspec *t)
{
    pk_begin_state_dict(b);
    pk_str(b, name);
    pk_tensor(b, t);
    pk_end_state_dict(b);
}

static const float storage6[6] = {1.0f, -2.0f, 3.5f, 0.25f, -0.125f, 100.0f};

/* Writes "archive/data.pkl" = pickle, "archive/data/0" = storage bytes, plus extras. */
static void write_torch_zip(const char *path, const bytes *pickle, const void *storage,
                            size_t storage_len, int zip64)
{
    zfile files[2] = {
        {"archive/data.pkl", pickle->p, pickle->n, 0},
        {"archive/data/0", storage, storage_len, 0},
    };
    write_zip(path, files, 2, zip64);
}

/* ---- comparing against the generator's JSON -------------------------------------------- */

static void check_against_json(const char *bin_name, const char *json_name)
{
    char path[1024], jpath[1024];
    snprintf(path, sizeof path, TF_DIR "%s", bin_name);
    snprintf(jpath, sizeof jpath, TF_DIR "%s", json_name);
    json_error_t jerr;
    json_t *root = json_load_file(jpath, 0, &jerr);
    if (!root)
        print_error("%s: %s (run tools/gen_tensor_file_fixtures.py)\n", jpath, jerr.text);
    assert_non_null(root);
    json_t *list = json_object_get(root, "tensors");
    assert_true(json_is_array(list));

    sqz_tensor_file *file = NULL;
    sqz_status status = sqz_tensor_file_read(path, NULL, &file);
    if (status != SQZ_OK)
        print_error("%s\n", sqz_last_error());
    assert_int_equal(status, SQZ_OK);
    assert_non_null(file);
    assert_string_equal(file->path, path);
    assert_int_equal(file->count, json_array_size(list));

    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *e = json_array_get(list, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        const sqz_tf_tensor *t = &file->tensors[i];
        assert_string_equal(t->name, name); /* file order is kept */
        assert_ptr_equal(sqz_tensor_file_find(file, name), t);
        assert_string_equal(sqz_tf_dtype_name(t->dtype),
                            json_string_value(json_object_get(e, "dtype")));
        json_t *shape = json_object_get(e, "shape");
        assert_int_equal(t->ndim, (int)json_array_size(shape));
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], json_integer_value(json_array_get(shape, (size_t)d)));
            numel *= t->shape[d];
        }
        assert_int_equal(t->numel, numel);
        json_t *values = json_object_get(e, "values");
        if (json_is_null(values)) {
            assert_null(t->data);
            continue;
        }
        assert_non_null(t->data);
        assert_int_equal(json_array_size(values), (size_t)numel);
        for (size_t k = 0; k < (size_t)numel; k++) {
            json_t *v = json_array_get(values, k);
            float got = t->data[k];
            if (json_is_string(v)) {
                const char *s = json_string_value(v);
                if (strcmp(s, "nan") == 0)
                    assert_true(isnan(got));
                else
                    assert_true(isinf(got) && (s[0] == '-') == (got < 0));
            } else {
                float want = (float)json_number_value(v);
                if (f32_bits(got) != f32_bits(want)) {
                    print_error("%s: %s[%zu] = %.9g, torch says %.9g\n", bin_name, name, k,
                                (double)got, (double)want);
                    fail();
                }
            }
        }
    }
    assert_null(sqz_tensor_file_find(file, "no.such.tensor"));
    sqz_tensor_file_free(file);
    json_decref(root);
}

/* ---- real torch.save / safetensors files --------------------------------------------- */

static void test_torch_fp32_state_dict(void **state)
{
    (void)state;
    check_against_json("model_fp32.bin", "model_fp32.json");
}

static void test_torch_fp16(void **state)
{
    (void)state;
    check_against_json("model_fp16.bin", "model_fp16.json");
}

static void test_torch_bf16(void **state)
{
    (void)state;
    check_against_json("model_bf16.bin", "model_bf16.json");
}

static void test_torch_views(void **state)
{
    (void)state;
    check_against_json("views.bin", "views.json");
}

static void test_torch_protocol4(void **state)
{
    (void)state;
    check_against_json("proto4.bin", "proto4.json");
}

static void test_torch_tied_and_buffer(void **state)
{
    (void)state;
    sqz_tensor_file *file = NULL;
    assert_int_equal(sqz_tensor_file_read(TF_DIR "model_fp32.bin", NULL, &file), SQZ_OK);
    const sqz_tf_tensor *emb = sqz_tensor_file_find(file, "embeddings.word_embeddings.weight");
    const sqz_tf_tensor *dec = sqz_tensor_file_find(file, "cls.predictions.decoder.weight");
    const sqz_tf_tensor *pos = sqz_tensor_file_find(file, "embeddings.position_ids");
    assert_non_null(emb);
    assert_non_null(dec);
    assert_non_null(pos);
    /* Tied: same values, separate copies (each tensor owns its data). */
    assert_int_equal(emb->numel, dec->numel);
    assert_ptr_not_equal(emb->data, dec->data);
    assert_memory_equal(emb->data, dec->data, (size_t)emb->numel * sizeof(float));
    assert_int_equal(pos->dtype, SQZ_TF_I64);
    assert_int_equal(pos->ndim, 2);
    assert_int_equal(pos->shape[0], 1);
    assert_int_equal(pos->shape[1], 6);
    assert_null(pos->data);
    const sqz_tf_tensor *q = sqz_tensor_file_find(file, "encoder.layers.0.attention.query.weight");
    assert_non_null(q);
    assert_int_equal(q->ndim, 3); /* grouped Conv1d: [out, in/groups, 1] */
    assert_int_equal(q->shape[0], 4);
    assert_int_equal(q->shape[1], 2);
    assert_int_equal(q->shape[2], 1);
    sqz_tensor_file_free(file);
}

static void test_safetensors_fixtures(void **state)
{
    (void)state;
    check_against_json("st_f32.safetensors", "st_f32.json");
    check_against_json("st_f16.safetensors", "st_f16.json");
    check_against_json("st_bf16.safetensors", "st_bf16.json");
}

/* torch.save before 1.6 (the format of the 2019-2020 hub uploads): the same state dicts as
 * the zip fixtures, so the same expectations, views and shared storages included. */
static void test_legacy_format(void **state)
{
    (void)state;
    check_against_json("model_fp32_legacy.bin", "model_fp32.json");
    check_against_json("model_fp16_legacy.bin", "model_fp16.json");
    check_against_json("views_legacy.bin", "views.json");
    sqz_tensor_file *f = NULL;
    assert_int_equal(sqz_tensor_file_read(TF_DIR "legacy.bin", NULL, &f), SQZ_OK);
    assert_int_equal(f->count, 1);
    assert_string_equal(f->tensors[0].name, "a");
    assert_true(f->tensors[0].numel == 2 && f->tensors[0].data[0] == 1.0f && f->tensors[0].data[1] == 1.0f);
    sqz_tensor_file_free(f);
}

/* Damage to a legacy file is caught like damage to a zip: truncation anywhere, a storage
 * count that runs past the end, bytes after the last storage. */
static void test_legacy_damaged(void **state)
{
    (void)state;
    size_t len;
    unsigned char *data = read_all(TF_DIR "model_fp32_legacy.bin", &len);
    char path[1024];
    tmp_path(path, sizeof path, "legacy_damaged.bin");
    const size_t cuts[] = {15, 21, 40, len / 3, len - 9, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(path, data, cuts[i]);
        sqz_tensor_file *f = NULL;
        sqz_status st = sqz_tensor_file_read(path, NULL, &f);
        assert_int_not_equal(st, SQZ_OK);
        assert_null(f);
        assert_non_null(strstr(sqz_last_error(), path));
    }
    unsigned char *longer = malloc(len + 3);
    memcpy(longer, data, len);
    memset(longer + len, 0, 3);
    write_all(path, longer, len + 3);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "3 bytes follow the last storage");
    free(longer);
    free(data);
    remove(path);
}

static void test_refuses_malicious(void **state)
{
    (void)state;
    EXPECT_READ_FAIL(TF_DIR "evil_reduce.bin", SQZ_ERR_UNSUPPORTED, TF_DIR "evil_reduce.bin",
                     "pickle refers to class posix.system which is not allowed", "offset 13");
}

/* ---- damaged torch files ------------------------------------------------------------- */

static void test_torch_truncated(void **state)
{
    (void)state;
    size_t len;
    unsigned char *data = read_all(TF_DIR "model_fp32.bin", &len);
    char path[1024];
    tmp_path(path, sizeof path, "truncated.bin");
    size_t cuts[] = {4, 30, 100, len / 2, len - 60, len - 23, len - 22, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(path, data, cuts[i]);
        EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "zip archive damaged or truncated",
                         "end-of-central-directory");
    }
    /* A central directory offset that points one byte early. */
    memcpy(path + strlen(path) - 4, ".cd", 4);
    unsigned char *copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, data, len);
    unsigned char *eocd = copy + len - 22;
    assert_int_equal(eocd[0], 'P');
    assert_int_equal(eocd[3], 6);
    set_le(eocd + 16, (uint64_t)(eocd[16] | eocd[17] << 8 | eocd[18] << 16) - 1, 4);
    write_all(path, copy, len);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "expected central directory entry 0 of",
                     "at byte offset");
    remove(path);
    tmp_path(path, sizeof path, "truncated.bin");
    remove(path);
    free(copy);
    free(data);
}

/* Offset of the data of `entry` in a torch zip (located by name; names are unique). */
static size_t find_entry_data(const unsigned char *zip, size_t len, const char *entry)
{
    size_t nl = strlen(entry);
    for (size_t i = 0; i + 30 + nl <= len; i++) {
        if (memcmp(zip + i, "PK\x03\x04", 4) == 0 &&
            (size_t)(zip[i + 26] | zip[i + 27] << 8) == nl && memcmp(zip + i + 30, entry, nl) == 0)
            return i + 30 + nl + (size_t)(zip[i + 28] | zip[i + 29] << 8);
    }
    fail_msg("no entry %s", entry);
    return 0;
}

static void test_torch_corrupt_bytes(void **state)
{
    (void)state;
    size_t len;
    unsigned char *data = read_all(TF_DIR "model_fp32.bin", &len);
    char path[1024];
    tmp_path(path, sizeof path, "corrupt.bin");

    size_t pkl = find_entry_data(data, len, "model_fp32/data.pkl");
    data[pkl + 40] ^= 0x20;
    write_all(path, data, len);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "zip entry 'model_fp32/data.pkl' is corrupt",
                     "CRC-32");
    data[pkl + 40] ^= 0x20;

    /* Storage 0 is the int64 position_ids (only listed, still checked); 1 holds floats. */
    for (int k = 0; k < 2; k++) {
        char entry[64];
        snprintf(entry, sizeof entry, "model_fp32/data/%d", k);
        size_t storage = find_entry_data(data, len, entry);
        data[storage + 3] ^= 0x01;
        write_all(path, data, len);
        char frag[96];
        snprintf(frag, sizeof frag, "zip entry '%s' is corrupt", entry);
        EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, frag);
        data[storage + 3] ^= 0x01;
    }
    remove(path);
    free(data);
}

/* Reads the (damaged) file and accepts success or a clean refusal naming the file; the
 * sanitizers and valgrind catch anything else. */
static sqz_status read_damaged(const char *path)
{
    sqz_tensor_file *f = NULL;
    sqz_status s = sqz_tensor_file_read(path, NULL, &f);
    if (s == SQZ_OK) {
        assert_non_null(f);
        sqz_tensor_file_free(f);
    } else {
        assert_null(f);
        assert_true(s == SQZ_ERR_FORMAT || s == SQZ_ERR_UNSUPPORTED);
        assert_non_null(strstr(sqz_last_error(), path));
    }
    return s;
}

/* Sets every CRC in a zip's central directory to 0 ("not recorded"), so that damage to
 * data.pkl reaches the pickle reader instead of being caught by the CRC check. */
static void zero_zip_crcs(unsigned char *zip, size_t len)
{
    const unsigned char *eocd = zip + len - 22;
    assert_int_equal(memcmp(eocd, "PK\x05\x06", 4), 0);
    size_t count = (size_t)(eocd[10] | eocd[11] << 8);
    size_t at = (size_t)eocd[16] | (size_t)eocd[17] << 8 | (size_t)eocd[18] << 16;
    for (size_t i = 0; i < count; i++) {
        assert_true(at + 46 <= len);
        assert_int_equal(memcmp(zip + at, "PK\x01\x02", 4), 0);
        memset(zip + at + 16, 0, 4);
        at += 46 + (size_t)(zip[at + 28] | zip[at + 29] << 8) +
              (size_t)(zip[at + 30] | zip[at + 31] << 8) + (size_t)(zip[at + 32] | zip[at + 33] << 8);
    }
}

/* Every single-byte change (two ways) and every truncation. The copy is patched in place
 * so the loop costs reads, not file creation. */
static void fuzz_file(const char *fixture, const char *tmp_name)
{
    size_t len;
    unsigned char *data = read_all(fixture, &len);
    if (memcmp(data, "PK", 2) == 0)
        zero_zip_crcs(data, len);
    char path[1024];
    tmp_path(path, sizeof path, tmp_name);
    write_all(path, data, len);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    for (size_t i = 0; i < len; i++) {
        for (int variant = 0; variant < 3; variant++) {
            unsigned char c = variant == 0   ? (unsigned char)(data[i] ^ 0xff)
                              : variant == 1 ? (unsigned char)(data[i] + 1)
                                             : data[i];
            assert_int_equal(fseek(fp, (long)i, SEEK_SET), 0);
            assert_int_equal(fputc(c, fp), c);
            assert_int_equal(fflush(fp), 0);
            if (variant < 2)
                read_damaged(path);
        }
    }
    for (size_t cut = len; cut > 0; cut--) {
        assert_int_equal(ftruncate(fileno(fp), (off_t)(cut - 1)), 0);
        assert_int_not_equal(read_damaged(path), SQZ_OK);
    }
    fclose(fp);
    remove(path);
    free(data);
}

static void test_fuzz_single_bytes(void **state)
{
    (void)state;
    fuzz_file(TF_DIR "views.bin", "fuzz.bin");
    fuzz_file(TF_DIR "proto4.bin", "fuzz4.bin");
    fuzz_file(TF_DIR "st_f16.safetensors", "fuzz.safetensors");
}

/* ---- hand-built torch zips ----------------------------------------------------------- */

static const tspec t23 = {"FloatStorage", "0", 6, 0, 2, {2, 3}, {3, 1}};

static void test_crafted_valid(void **state)
{
    (void)state;
    char path[1024];
    tmp_path(path, sizeof path, "crafted.bin");
    for (int zip64 = 0; zip64 < 2; zip64++) {
        bytes b = {0};
        tspec t = t23;
        t.stride[0] = 1; /* a transposed [2, 3] view of the 6 values */
        t.stride[1] = 2;
        pk_one_tensor(&b, "w", &t);
        write_torch_zip(path, &b, storage6, sizeof storage6, zip64);
        free(b.p);
        sqz_tensor_file *f = NULL;
        sqz_status s = sqz_tensor_file_read(path, NULL, &f);
        if (s != SQZ_OK)
            print_error("%s\n", sqz_last_error());
        assert_int_equal(s, SQZ_OK);
        assert_int_equal(f->count, 1);
        const float want[6] = {1.0f, 3.5f, -0.125f, -2.0f, 0.25f, 100.0f};
        assert_memory_equal(f->tensors[0].data, want, sizeof want);
        sqz_tensor_file_free(f);
    }
    remove(path);
}

/* Builds the one-tensor archive with pickle `b` and expects a failure. */
static void expect_pickle_fail(bytes *b, const void *storage, size_t storage_len,
                               sqz_status want, const char *frag1, const char *frag2)
{
    char path[1024];
    tmp_path(path, sizeof path, "pickle.bin");
    write_torch_zip(path, b, storage, storage_len, 0);
    free(b->p);
    memset(b, 0, sizeof *b);
    EXPECT_READ_FAIL(path, want, path, frag1, frag2);
    remove(path);
}

static void test_pickle_disallowed_global(void **state)
{
    (void)state;
    bytes b = {0};
    put1(&b, 0x80);
    put1(&b, 2);
    pk_global(&b, "os", "system");
    pk_str(&b, "echo pwned");
    put1(&b, 0x85);
    put1(&b, 'R');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_UNSUPPORTED,
                       "pickle refers to class os.system which is not allowed", "at offset 2");

    /* STACK_GLOBAL spelling of the same thing. */
    put1(&b, 0x80);
    put1(&b, 4);
    put1(&b, 0x8c);
    put1(&b, 8);
    put(&b, "builtins", 8);
    put1(&b, 0x8c);
    put1(&b, 4);
    put(&b, "eval", 4);
    put1(&b, 0x93);
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_UNSUPPORTED,
                       "pickle refers to class builtins.eval which is not allowed",
                       "at offset 18");

    /* An allowed module with a name that is not: torch.load. */
    pk_begin_state_dict(&b);
    pk_global(&b, "torch", "load");
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_UNSUPPORTED,
                       "pickle refers to class torch.load which is not allowed", "data.pkl");
}

static void test_pickle_disallowed_opcode(void **state)
{
    (void)state;
    static const unsigned char refused[] = {0x81 /* NEWOBJ */, 'i' /* INST */, 'o' /* OBJ */,
                                            'I' /* INT */,      'S' /* STRING */, 0x82 /* EXT1 */,
                                            'P' /* PERSID */,   0x96 /* BYTEARRAY8 */};
    for (size_t i = 0; i < sizeof refused; i++) {
        bytes b = {0};
        put1(&b, 0x80);
        put1(&b, 2);
        put1(&b, refused[i]);
        put1(&b, '.');
        char frag[64];
        snprintf(frag, sizeof frag, "unsupported pickle opcode 0x%02x at offset 2 in ",
                 refused[i]);
        expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_UNSUPPORTED, frag,
                           "archive/data.pkl");
    }
    /* A corrupted byte in an otherwise good pickle (the CRC matches the bad bytes):
     * BINPERSID 'Q' turned into 'P' (PERSID, text form). */
    bytes b = {0};
    pk_one_tensor(&b, "w", &t23);
    unsigned char *q = memchr(b.p, 'Q', b.n);
    assert_non_null(q);
    *q = 'P';
    char frag[64];
    snprintf(frag, sizeof frag, "unsupported pickle opcode 0x50 at offset %zu in ",
             (size_t)(q - b.p));
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_UNSUPPORTED, frag, "data.pkl");
}

static void test_pickle_storage_too_small(void **state)
{
    (void)state;
    bytes b = {0};
    tspec t = {"FloatStorage", "0", 6, 2, 1, {5}, {1}}; /* elements 2..6 of 6 */
    pk_one_tensor(&b, "encoder.w", &t);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "tensor 'encoder.w' reads element 6 of storage '0'",
                       "the storage has only 6 elements");

    tspec strided = {"FloatStorage", "0", 6, 0, 2, {2, 3}, {3, 2}}; /* last = 3 + 4 = 7 */
    pk_one_tensor(&b, "s", &strided);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "tensor 's' reads element 7 of storage '0'", "only 6 elements");

    /* The pickle claims 6 floats but the entry holds 5. */
    pk_one_tensor(&b, "w", &t23);
    expect_pickle_fail(&b, storage6, 5 * sizeof(float), SQZ_ERR_FORMAT,
                       "storage '0' (entry 'archive/data/0') has 20 bytes",
                       "6 elements of F32 (4 bytes each) = 24 bytes");

    /* A HalfStorage of 6 needs 12 bytes; 24 is wrong too. */
    tspec half = t23;
    half.storage_class = "HalfStorage";
    pk_one_tensor(&b, "h", &half);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "has 24 bytes",
                       "6 elements of F16 (2 bytes each) = 12 bytes");

    tspec missing = t23;
    missing.key = "7";
    pk_one_tensor(&b, "m", &missing);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "storage '7' of tensor 'm' is missing",
                       "no zip entry 'archive/data/7'");

    tspec sneaky = t23;
    sneaky.key = "../0";
    pk_one_tensor(&b, "k", &sneaky);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "storage key must be 1-64 letters, digits or '_'", "data.pkl");

    /* Views that repeat one element 2^25 times: a tiny file must not cost 128 MB. */
    tspec broadcast = {"FloatStorage", "0", 6, 0, 1, {(int64_t)1 << 25}, {0}};
    pk_one_tensor(&b, "b", &broadcast);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "tensors total 33554432 elements but their storages hold only 6",
                       "views repeat data");

    tspec overflow = {"FloatStorage", "0", 6, 0, 2, {(int64_t)1 << 40, (int64_t)1 << 40}, {0, 0}};
    pk_one_tensor(&b, "o", &overflow);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "tensor 'o'",
                       "overflows 64 bits");

    tspec deep = {"FloatStorage", "0", 6, 0, 9, {1, 1, 1, 1, 1, 1, 1, 1, 1},
                  {1, 1, 1, 1, 1, 1, 1, 1, 1}};
    pk_one_tensor(&b, "d", &deep);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_UNSUPPORTED,
                       "has 9 dimensions (at most 8)", "data.pkl");

    tspec negative = t23;
    negative.stride[1] = -1;
    pk_one_tensor(&b, "n", &negative);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "size and stride must be tuples of non-negative ints", "data.pkl");
}

static void test_pickle_structure(void **state)
{
    (void)state;
    bytes b = {0};

    /* Top level must be a dict of name -> tensor. */
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, ']');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "the pickled object in archive/data.pkl is of type list",
                       "expected a dict (state dict) of name -> tensor");

    pk_begin_state_dict(&b);
    pk_str(&b, "step");
    pk_int(&b, 1000);
    pk_end_state_dict(&b);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "state dict entry 'step' in archive/data.pkl is of type int",
                       "expected a tensor");

    pk_begin_state_dict(&b);
    pk_str(&b, "w");
    pk_tensor(&b, &t23);
    pk_str(&b, "w");
    pk_tensor(&b, &t23);
    pk_end_state_dict(&b);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "tensor name 'w'",
                       "appears more than once");

    /* A MARK and TUPLE on an otherwise empty stack (found by fuzzing). */
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, '(');
    put1(&b, 't');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "is of type tuple",
                       "expected a dict");

    /* Truncated: no STOP. */
    pk_one_tensor(&b, "w", &t23);
    b.n--;
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "the pickle ends without a STOP opcode", "data.pkl");

    pk_one_tensor(&b, "w", &t23);
    put1(&b, 'N');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "bytes follow the STOP",
                       "data.pkl");

    /* A string length running past the end. */
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, 'X');
    put_le(&b, 0xfffffff0u, 4);
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "malformed pickle at offset 2",
                       "needs 4294967280 more bytes");

    /* Memo read before write, and a memo index beyond the limit. */
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, 'h');
    put1(&b, 5);
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "memo entry 5 read before it was stored", "offset 2");
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, 'N');
    put1(&b, 'r');
    put_le(&b, 0x7fffffff, 4);
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "memo index beyond the limit", "offset 3");

    /* Stack and MARK depth limits. */
    put1(&b, 0x80);
    put1(&b, 2);
    for (int i = 0; i <= SQZ_TF_MAX_PICKLE_STACK; i++)
        put1(&b, 'N');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "pickle stack deeper than",
                       "data.pkl");
    put1(&b, 0x80);
    put1(&b, 2);
    for (int i = 0; i <= SQZ_TF_MAX_PICKLE_STACK; i++)
        put1(&b, '(');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "too many nested MARKs",
                       "data.pkl");

    /* Underflow, and items below a MARK are out of reach. */
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, 'R');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT, "stack underflow",
                       "offset 2");
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, '}');
    put1(&b, 'N');
    put1(&b, '(');
    put1(&b, 'N');
    put1(&b, 's');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "SETITEM with too few items", "offset 6");

    /* REDUCE of an allowed callable with the wrong arguments. */
    put1(&b, 0x80);
    put1(&b, 2);
    pk_global(&b, "collections", "OrderedDict");
    pk_str(&b, "x");
    put1(&b, 0x85);
    put1(&b, 'R');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "OrderedDict is only accepted with no arguments", "data.pkl");

    /* BUILD on something other than a dict. */
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, ']');
    put1(&b, '}');
    put1(&b, 'b');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "BUILD is only accepted on an OrderedDict", "offset 4");

    /* A persistent id that is not a storage tuple. */
    put1(&b, 0x80);
    put1(&b, 2);
    pk_str(&b, "storage");
    put1(&b, 'Q');
    put1(&b, '.');
    expect_pickle_fail(&b, storage6, sizeof storage6, SQZ_ERR_FORMAT,
                       "persistent id must be ('storage', torch.<Type>Storage", "data.pkl");
}

static void test_zip_structure(void **state)
{
    (void)state;
    char path[1024];
    tmp_path(path, sizeof path, "zip.bin");
    bytes b = {0};
    pk_one_tensor(&b, "w", &t23);

    /* Compressed entries are refused (torch never writes them). */
    zfile comp[2] = {{"archive/data.pkl", b.p, b.n, 8}, {"archive/data/0", storage6, 24, 0}};
    write_zip(path, comp, 2, 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_UNSUPPORTED, path, "zip entry 'archive/data.pkl'",
                     "compressed (method 8)");

    /* No data.pkl at all. */
    zfile none[1] = {{"archive/data/0", storage6, 24, 0}};
    write_zip(path, none, 1, 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "no <folder>/data.pkl entry");

    /* Any top folder name works; big-endian byte order does not. */
    zfile named[3] = {{"pytorch_model/data.pkl", b.p, b.n, 0},
                      {"pytorch_model/byteorder", "little", 6, 0},
                      {"pytorch_model/data/0", storage6, 24, 0}};
    write_zip(path, named, 3, 1);
    sqz_tensor_file *f = NULL;
    assert_int_equal(sqz_tensor_file_read(path, NULL, &f), SQZ_OK);
    assert_int_equal(f->count, 1);
    assert_true(f->tensors[0].data[5] == 100.0f);
    sqz_tensor_file_free(f);
    named[1].data = "big";
    named[1].len = 3;
    write_zip(path, named, 3, 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_UNSUPPORTED, path, "big-endian",
                     "entry 'pytorch_model/byteorder' says \"big\"");

    /* Two entries with one name, and two data.pkl folders. */
    zfile dup[3] = {{"archive/data.pkl", b.p, b.n, 0}, {"archive/data/0", storage6, 24, 0},
                    {"archive/data/0", storage6, 24, 0}};
    write_zip(path, dup, 3, 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "two entries named 'archive/data/0'");
    zfile two[3] = {{"a/data.pkl", b.p, b.n, 0}, {"b/data.pkl", b.p, b.n, 0},
                    {"a/data/0", storage6, 24, 0}};
    write_zip(path, two, 3, 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "more than one top-level data.pkl");

    /* An empty archive: just the end record. */
    write_zip(path, NULL, 0, 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "no <folder>/data.pkl entry");

    remove(path);
    free(b.p);
}

/* ---- the zip reader and the pickle machine on their own ----------------------------- */

/* Opens `path` as the readers see it; the caller closes src->fp. */
static void open_source(const char *path, sqz_tf_source *src)
{
    src->fp = fopen(path, "rb");
    assert_non_null(src->fp);
    assert_int_equal(fseek(src->fp, 0, SEEK_END), 0);
    src->size = (uint64_t)ftell(src->fp);
    src->path = path;
}

/* Entries of lengths around the 8-byte steps a fast CRC takes are read back whole, their
 * CRC-32s (written by this test's bitwise CRC) accepted; a CRC changed in the directory
 * is refused, naming the entry and both values. */
static void test_zip_reader(void **state)
{
    (void)state;
    char path[1024];
    tmp_path(path, sizeof path, "direct.zip");
    static const size_t lens[] = {0, 1, 7, 8, 9, 1000};
    enum { N = sizeof lens / sizeof lens[0] };
    unsigned char data[1000];
    uint32_t seed = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        seed = seed * 1103515245u + 12345u;
        data[i] = (unsigned char)(seed >> 16);
    }
    char names[N][16];
    zfile files[N];
    for (size_t i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "d/%zu", lens[i]);
        files[i] = (zfile){names[i], data, lens[i], 0};
    }
    for (int zip64 = 0; zip64 < 2; zip64++) {
        write_zip(path, files, N, zip64);
        sqz_tf_source src;
        open_source(path, &src);
        sqz_zip_archive zip = {0};
        assert_int_equal(sqz_zip_open(&src, &zip), SQZ_OK);
        assert_int_equal(zip.count, N);
        assert_null(sqz_zip_find(&zip, "d/2"));
        for (size_t i = 0; i < N; i++) {
            const sqz_zip_entry *e = sqz_zip_find(&zip, names[i]);
            assert_non_null(e);
            assert_int_equal(e->crc, crc32_bitwise(data, lens[i]));
            unsigned char *got = NULL;
            assert_int_equal(sqz_zip_read(&src, &zip, e, &got), SQZ_OK);
            assert_int_equal(e->size, lens[i]);
            if (lens[i])
                assert_memory_equal(got, data, lens[i]);
            free(got);
        }
        sqz_zip_close(&zip);
        fclose(src.fp);
    }

    /* The directory's CRC of "d/1000" off by one bit. */
    size_t len;
    unsigned char *z = read_all(path, &len);
    const uint32_t right = crc32_bitwise(data, 1000);
    size_t at = 0;
    for (size_t i = 0; i + 46 + 6 <= len && !at; i++)
        if (memcmp(z + i, "PK\x01\x02", 4) == 0 && memcmp(z + i + 46, "d/1000", 6) == 0)
            at = i;
    assert_true(at != 0);
    set_le(z + at + 16, right ^ 1u, 4);
    write_all(path, z, len);
    free(z);
    sqz_tf_source src;
    open_source(path, &src);
    sqz_zip_archive zip = {0};
    assert_int_equal(sqz_zip_open(&src, &zip), SQZ_OK);
    unsigned char *got = (unsigned char *)1;
    char want[160];
    snprintf(want, sizeof want,
             "zip entry 'd/1000' is corrupt: CRC-32 is 0x%08x, the directory says 0x%08x",
             (unsigned)right, (unsigned)(right ^ 1u));
    check_error(sqz_zip_read(&src, &zip, sqz_zip_find(&zip, "d/1000"), &got), SQZ_ERR_FORMAT,
                path, want, (const char *)NULL);
    assert_null(got);
    sqz_zip_close(&zip);
    fclose(src.fp);
    remove(path);
}

/* The machine on bytes written here: a dict built with SETITEMS, two pickles back to back
 * (as the legacy format has them), and an opcode outside the subset refused by name. */
static void test_pickle_machine(void **state)
{
    (void)state;
    bytes b = {0};
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, '}');
    put1(&b, '(');
    pk_str(&b, "seven");
    put1(&b, 'K');
    put1(&b, 7);
    pk_str(&b, "nothing");
    put1(&b, 'N');
    put1(&b, 'u');
    put1(&b, '.');
    const size_t first_len = b.n;
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, ']');
    put1(&b, '.');

    sqz_pk_machine m;
    sqz_pk_init(&m, "mem.pkl", "the test bytes", 1);
    m.buf = b.p;
    m.len = b.n;
    sqz_pk_value *root = NULL;
    assert_int_equal(sqz_pk_run(&m, &root), SQZ_OK);
    assert_string_equal(sqz_pk_kind_name(root->kind), "dict");
    const sqz_pk_value *seven = sqz_pk_dict_get(root, "seven");
    assert_non_null(seven);
    assert_int_equal(seven->kind, SQZ_PK_INT);
    assert_int_equal(seven->u.i, 7);
    assert_int_equal(sqz_pk_dict_get(root, "nothing")->kind, SQZ_PK_NONE);
    assert_null(sqz_pk_dict_get(root, "eight"));
    assert_int_equal(m.pos, first_len);
    sqz_pk_reset(&m);
    assert_int_equal(sqz_pk_run(&m, &root), SQZ_OK);
    assert_string_equal(sqz_pk_kind_name(root->kind), "list");
    assert_int_equal(m.pos, b.n);
    sqz_pk_free(&m);

    /* NEWOBJ (0x81) after the protocol. */
    b.n = 0;
    put1(&b, 0x80);
    put1(&b, 2);
    put1(&b, 0x81);
    put1(&b, '.');
    sqz_pk_init(&m, "mem.pkl", "the test bytes", 0);
    m.buf = b.p;
    m.len = b.n;
    check_error(sqz_pk_run(&m, &root), SQZ_ERR_UNSUPPORTED,
                "mem.pkl: unsupported pickle opcode 0x81 at offset 2 in mem.pkl (entry the test "
                "bytes)",
                (const char *)NULL);
    sqz_pk_free(&m);
    free(b.p);
}

/* ---- hand-built safetensors ----------------------------------------------------------- */

static void write_st(const char *path, uint64_t header_len, const char *header,
                     const void *data, size_t data_len)
{
    bytes b = {0};
    put_le(&b, header_len, 8);
    put(&b, header, strlen(header));
    put(&b, data, data_len);
    write_all(path, b.p, b.n);
    free(b.p);
}

static void write_st_json(const char *path, const char *header, const void *data, size_t len)
{
    write_st(path, strlen(header), header, data, len);
}

static void test_safetensors_valid_crafted(void **state)
{
    (void)state;
    char path[1024];
    tmp_path(path, sizeof path, "ok.safetensors");
    unsigned char data[8 + 16 + 2];
    float f[2] = {1.5f, -2.0f};
    memcpy(data, f, 8);
    int64_t ids[2] = {7, -1};
    memcpy(data + 8, ids, 16);
    data[24] = 1;
    data[25] = 0;
    write_st_json(path,
                  "{\"__metadata__\":{\"format\":\"pt\"},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"ids\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[8,24]},"
                  "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[24,26]},"
                  "\"none\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[26,26]}}   ",
                  data, sizeof data);
    sqz_tensor_file *file = NULL;
    assert_int_equal(sqz_tensor_file_read(path, NULL, &file), SQZ_OK);
    assert_int_equal(file->count, 4);
    assert_string_equal(file->tensors[0].name, "a");
    assert_true(file->tensors[0].data[0] == 1.5f && file->tensors[0].data[1] == -2.0f);
    assert_int_equal(file->tensors[1].dtype, SQZ_TF_I64);
    assert_null(file->tensors[1].data);
    assert_int_equal(file->tensors[2].dtype, SQZ_TF_BOOL);
    assert_int_equal(file->tensors[3].numel, 0);
    assert_non_null(file->tensors[3].data);
    sqz_tensor_file_free(file);

    write_st_json(path, "{}", NULL, 0);
    assert_int_equal(sqz_tensor_file_read(path, NULL, &file), SQZ_OK);
    assert_int_equal(file->count, 0);
    sqz_tensor_file_free(file);
    remove(path);
}

static void test_safetensors_bad(void **state)
{
    (void)state;
    char path[1024];
    tmp_path(path, sizeof path, "bad.safetensors");
    unsigned char data[32] = {0};

    write_st(path, 1000, "{}", data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "safetensors header length 1000",
                     "larger than the 10 bytes that follow");

    write_st_json(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                  data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "tensor 'a'",
                     "data_offsets [0, 16] lie outside the data region of 8 bytes");

    write_st_json(path,
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  data, 12);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path,
                     "data of tensors 'a' [0, 8) and 'b' [4, 12) overlap");

    write_st_json(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
                  data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "tensor 'a': shape has 3 elements of F32",
                     "data_offsets [0, 8] span 8 bytes");

    write_st_json(path, "{\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                  data, 2);
    EXPECT_READ_FAIL(path, SQZ_ERR_UNSUPPORTED, path, "tensor 'q' has dtype 'F8_E4M3'",
                     "not supported");
    write_st_json(path, "{\"q\":{\"dtype\":\"complex\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                  data, 2);
    EXPECT_READ_FAIL(path, SQZ_ERR_UNSUPPORTED, path, "tensor 'q' has dtype 'complex'");

    write_st_json(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],", data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "header (bytes 8..", "is not valid JSON");

    write_st_json(path,
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "not valid JSON", "duplicate");

    write_st_json(path, "[1, 2]", data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "to start with '{' at byte offset 8",
                     "found byte 0x5b");

    write_st_json(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
                  data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "tensor 'a': shape[0] must be a non-negative");

    write_st_json(path,
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                  "\"data_offsets\":[0,4]}}",
                  data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "tensor 'a'", "overflows 64 bits");

    write_st_json(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "tensor 'a'", "data_offsets");

    write_st_json(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}",
                  data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "data_offsets [8, 4] lie outside");

    write_st_json(path, "{\"a\":[1]}", data, 8);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "header entry for tensor 'a' must be a JSON object");

    write_all(path, "\x05\0\0\0", 4);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "too short for a safetensors header");

    write_all(path, "", 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "is empty (0 bytes)");

    /* A header length over the limit, in a (sparse) file big enough to hold it. */
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    unsigned char len[8];
    set_le(len, (uint64_t)SQZ_TF_MAX_HEADER_BYTES + 1, 8);
    assert_int_equal(fwrite(len, 1, 8, fp), 8);
    assert_int_equal(ftruncate(fileno(fp), (off_t)SQZ_TF_MAX_HEADER_BYTES + 64), 0);
    assert_int_equal(fclose(fp), 0);
    EXPECT_READ_FAIL(path, SQZ_ERR_FORMAT, path, "exceeds the limit of");
    remove(path);

    EXPECT_READ_FAIL(TF_DIR "does-not-exist.safetensors", SQZ_ERR_IO,
                     "cannot open " TF_DIR "does-not-exist.safetensors");
    EXPECT_READ_FAIL(tmp_dir, SQZ_ERR_IO, tmp_dir, "is not a regular file");

    sqz_tensor_file *f = NULL;
    check_error(sqz_tensor_file_read(NULL, NULL, &f), SQZ_ERR_INVALID_ARGUMENT, "NULL", NULL);
    check_error(sqz_tensor_file_read(path, NULL, NULL), SQZ_ERR_INVALID_ARGUMENT, "NULL", NULL);
}

/* ---- the writer ---------------------------------------------------------------------- */

static void test_safetensors_write_roundtrip(void **state)
{
    (void)state;
    const float special[12] = {0.0f,      -0.0f,       1.0f,    -1.5f,   65504.0f,   65520.0f,
                               1e-40f,    5.96e-8f,    1e30f,   3.14159265f, bits_f32(0x7f800000),
                               bits_f32(0xff800000)};
    float matrix[2 * 3 * 2];
    for (int i = 0; i < 12; i++)
        matrix[i] = (float)i * 0.1f - 0.55f;
    const float scalar = 42.0f;
    const float nanv = bits_f32(0x7fc00001);
    sqz_tf_write_tensor tensors[5] = {
        {"z.special", 1, {12}, special},
        {"a.matrix", 3, {2, 3, 2}, matrix},
        {"scalar", 0, {0}, &scalar},
        {"empty", 2, {0, 5}, NULL},
        {"nan", 1, {1}, &nanv},
    };
    const sqz_tf_dtype stored[3] = {SQZ_TF_F32, SQZ_TF_F16, SQZ_TF_BF16};
    char path[1024];
    tmp_path(path, sizeof path, "written.safetensors");
    for (int s = 0; s < 3; s++) {
        assert_int_equal(sqz_safetensors_write(path, tensors, 5, stored[s]), SQZ_OK);

        /* The data region starts 8-byte aligned, the header padded with spaces. */
        size_t len;
        unsigned char *raw = read_all(path, &len);
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = n << 8 | raw[i];
        assert_int_equal((8 + n) % 8, 0);
        assert_true(8 + n <= len);
        assert_int_equal(raw[8], '{');
        size_t close = 8 + (size_t)n;
        while (raw[close - 1] == ' ')
            close--;
        assert_int_equal(raw[close - 1], '}');
        assert_true(8 + (size_t)n - close < 8);
        free(raw);

        sqz_tensor_file *file = NULL;
        sqz_status st = sqz_tensor_file_read(path, NULL, &file);
        if (st != SQZ_OK)
            print_error("%s\n", sqz_last_error());
        assert_int_equal(st, SQZ_OK);
        assert_int_equal(file->count, 5);
        for (int t = 0; t < 5; t++) {
            const sqz_tf_tensor *got = &file->tensors[t];
            assert_string_equal(got->name, tensors[t].name); /* order kept */
            assert_int_equal(got->dtype, stored[s]);
            assert_int_equal(got->ndim, tensors[t].ndim);
            for (int d = 0; d < got->ndim; d++)
                assert_int_equal(got->shape[d], tensors[t].shape[d]);
            for (int64_t i = 0; i < got->numel; i++) {
                float in = tensors[t].data[i];
                float want = stored[s] == SQZ_TF_F32   ? in
                             : stored[s] == SQZ_TF_F16 ? sqz_f16_to_f32(sqz_f32_to_f16(in))
                                                       : sqz_bf16_to_f32(sqz_f32_to_bf16(in));
                if (isnan(in))
                    assert_true(isnan(got->data[i]));
                else
                    assert_int_equal(f32_bits(got->data[i]), f32_bits(want));
            }
        }
        /* F32 keeps even the NaN payload. */
        if (stored[s] == SQZ_TF_F32)
            assert_int_equal(f32_bits(file->tensors[4].data[0]), 0x7fc00001u);
        if (stored[s] == SQZ_TF_F16) {
            assert_true(isinf(file->tensors[0].data[5])); /* 65520 -> inf */
            assert_true(file->tensors[0].data[4] == 65504.0f);
            assert_true(file->tensors[0].data[6] == 0.0f); /* 1e-40 underflows */
        }
        sqz_tensor_file_free(file);
    }

    /* Refusals. */
    sqz_tf_write_tensor dup[2] = {{"x", 1, {1}, &scalar}, {"x", 1, {1}, &scalar}};
    check_error(sqz_safetensors_write(path, dup, 2, SQZ_TF_F32), SQZ_ERR_INVALID_ARGUMENT,
                "tensor 1", "unique", NULL);
    check_error(sqz_safetensors_write(path, tensors, 1, SQZ_TF_I64), SQZ_ERR_INVALID_ARGUMENT,
                "only store F32, F16 or BF16, not I64", NULL);
    sqz_tf_write_tensor nodata = {"x", 1, {3}, NULL};
    check_error(sqz_safetensors_write(path, &nodata, 1, SQZ_TF_F32), SQZ_ERR_INVALID_ARGUMENT,
                "tensor 'x'", "data is NULL", NULL);
    sqz_tf_write_tensor negative = {"x", 1, {-3}, &scalar};
    check_error(sqz_safetensors_write(path, &negative, 1, SQZ_TF_F32), SQZ_ERR_INVALID_ARGUMENT,
                "tensor 'x'", "negative", NULL);
    sqz_tf_write_tensor meta = {"__metadata__", 1, {1}, &scalar};
    check_error(sqz_safetensors_write(path, &meta, 1, SQZ_TF_F32), SQZ_ERR_INVALID_ARGUMENT,
                "__metadata__", NULL);
    check_error(sqz_safetensors_write("/nonexistent-dir/x.safetensors", tensors, 1, SQZ_TF_F32),
                SQZ_ERR_IO, "cannot create /nonexistent-dir/x.safetensors", NULL);
    remove(path);
}

/* ---- conversions --------------------------------------------------------------------- */

static void test_f16_conversions(void **state)
{
    (void)state;
    /* Exact decoding of landmarks. */
    assert_true(sqz_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_true(sqz_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
    assert_true(sqz_f16_to_f32(0x0400) == ldexpf(1.0f, -14));
    assert_true(sqz_f16_to_f32(0x3c00) == 1.0f);
    assert_true(sqz_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(sqz_f16_to_f32(0xc000) == -2.0f);
    assert_true(isinf(sqz_f16_to_f32(0x7c00)) && sqz_f16_to_f32(0x7c00) > 0);
    assert_true(isinf(sqz_f16_to_f32(0xfc00)) && sqz_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(sqz_f16_to_f32(0x7e00)));
    assert_true(isnan(sqz_f16_to_f32(0x7c01)));
    assert_int_equal(f32_bits(sqz_f16_to_f32(0x8000)), 0x80000000u);

    /* Every half survives a round trip; every NaN stays NaN. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = sqz_f16_to_f32((uint16_t)h);
        uint16_t back = sqz_f32_to_f16(f);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            assert_true(isnan(f) && (back & 0x7c00) == 0x7c00 && (back & 0x3ff));
        else
            assert_int_equal(back, h);
    }
    /* Halfway points between neighbouring halves round to the even one; just above rounds
     * up, just below rounds down. Checked over all positive finite halves. */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        double lo = sqz_f16_to_f32((uint16_t)h), hi = sqz_f16_to_f32((uint16_t)(h + 1));
        float mid = (float)((lo + hi) / 2); /* exact in fp32 */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        assert_int_equal(sqz_f32_to_f16(mid), even);
        assert_int_equal(sqz_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
        assert_int_equal(sqz_f32_to_f16(nextafterf(mid, 0.0f)), h);
        assert_int_equal(sqz_f32_to_f16(-mid), 0x8000 | even);
    }
    assert_int_equal(sqz_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(sqz_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(sqz_f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(sqz_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(sqz_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);            /* tie to 0 */
    assert_int_equal(sqz_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1)), 1); /* just above */
    assert_int_equal(sqz_f32_to_f16(ldexpf(3.0f, -25)), 0x0002);            /* tie to even */
    assert_int_equal(sqz_f32_to_f16(bits_f32(0x00000001)), 0x0000);         /* f32 subnormal */
    assert_int_equal(sqz_f32_to_f16(-0.0f), 0x8000);
}

static void test_bf16_conversions(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = sqz_bf16_to_f32((uint16_t)h);
        assert_int_equal(f32_bits(f), h << 16);
        uint16_t back = sqz_f32_to_bf16(f);
        if (isnan(f))
            assert_true((back & 0x7f80) == 0x7f80 && (back & 0x7f));
        else
            assert_int_equal(back, h);
        /* Ties to even, and one ulp either side. */
        if ((h & 0x7f80) != 0x7f80 && h != 0x7f7f && h != 0xff7f) {
            uint32_t mid = (h << 16) | 0x8000u;
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            assert_int_equal(sqz_f32_to_bf16(bits_f32(mid)), even);
            assert_int_equal(sqz_f32_to_bf16(bits_f32(mid + 1)), h + 1);
            assert_int_equal(sqz_f32_to_bf16(bits_f32(mid - 1)), h);
        }
    }
    assert_int_equal(sqz_f32_to_bf16(FLT_MAX), 0x7f80); /* rounds to inf, as torch does */
    assert_int_equal(sqz_f32_to_bf16(bits_f32(0x7f7f7fff)), 0x7f7f);
    assert_true(isnan(sqz_bf16_to_f32(sqz_f32_to_bf16(bits_f32(0x7f800001)))));
}

static void test_conversions_match_torch(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *root = json_load_file(TF_DIR "f16_bf16_conversions.json", 0, &jerr);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) > 200);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        float in = bits_f32((uint32_t)json_integer_value(json_object_get(c, "f32")));
        uint16_t want16 = (uint16_t)json_integer_value(json_object_get(c, "f16"));
        uint16_t wantb = (uint16_t)json_integer_value(json_object_get(c, "bf16"));
        uint16_t got16 = sqz_f32_to_f16(in), gotb = sqz_f32_to_bf16(in);
        if (isnan(in)) {
            assert_true(isnan(sqz_f16_to_f32(got16)) && isnan(sqz_bf16_to_f32(gotb)));
            continue;
        }
        if (got16 != want16 || gotb != wantb) {
            print_error("f32 0x%08x: f16 0x%04x (torch 0x%04x), bf16 0x%04x (torch 0x%04x)\n",
                        f32_bits(in), got16, want16, gotb, wantb);
            fail();
        }
    }
    json_decref(root);
}

static void test_f64_and_names(void **state)
{
    (void)state;
    assert_true(sqz_tf_f64_to_f32(1e300) == INFINITY);
    assert_true(sqz_tf_f64_to_f32(-1e300) == -INFINITY);
    assert_true(sqz_tf_f64_to_f32((double)FLT_MAX) == FLT_MAX);
    assert_true(sqz_tf_f64_to_f32(0x1.fffffefffffffp+127) == FLT_MAX);
    assert_true(sqz_tf_f64_to_f32(0x1.ffffffp+127) == INFINITY); /* the tie goes to inf */
    assert_true(sqz_tf_f64_to_f32(1.0 + 0x1p-24) == 1.0f);        /* tie to even */
    assert_true(sqz_tf_f64_to_f32(1e-50) == 0.0f);
    assert_true(isnan(sqz_tf_f64_to_f32(NAN)));

    assert_string_equal(sqz_tf_dtype_name(SQZ_TF_F32), "F32");
    assert_string_equal(sqz_tf_dtype_name(SQZ_TF_BF16), "BF16");
    assert_string_equal(sqz_tf_dtype_name(SQZ_TF_BOOL), "BOOL");
    assert_string_equal(sqz_tf_dtype_name(SQZ_TF_DTYPE_COUNT), "?");
    assert_null(sqz_tensor_file_find(NULL, "x"));
    sqz_tensor_file_free(NULL);

    char out[8];
    assert_string_equal(sqz_tf_printable("ab\ncd", 5, out, sizeof out), "ab?cd");
    assert_string_equal(sqz_tf_printable("abcdefghij", 10, out, sizeof out), "abcd...");
}

/* ---- setup --------------------------------------------------------------------------- */

static int make_tmp_dir(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/sqz_tensor_file_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_tmp_dir(void **state)
{
    (void)state;
    DIR *dir = opendir(tmp_dir);
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                char path[1024];
                tmp_path(path, sizeof path, e->d_name);
                remove(path);
            }
        }
        closedir(dir);
    }
    return rmdir(tmp_dir);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]); /* e.g. test_tensor_file 'test_safetensors*' */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_torch_fp32_state_dict),
        cmocka_unit_test(test_torch_fp16),
        cmocka_unit_test(test_torch_bf16),
        cmocka_unit_test(test_torch_views),
        cmocka_unit_test(test_torch_protocol4),
        cmocka_unit_test(test_torch_tied_and_buffer),
        cmocka_unit_test(test_safetensors_fixtures),
        cmocka_unit_test(test_legacy_format),
        cmocka_unit_test(test_legacy_damaged),
        cmocka_unit_test(test_refuses_malicious),
        cmocka_unit_test(test_torch_truncated),
        cmocka_unit_test(test_torch_corrupt_bytes),
        cmocka_unit_test(test_fuzz_single_bytes),
        cmocka_unit_test(test_crafted_valid),
        cmocka_unit_test(test_pickle_disallowed_global),
        cmocka_unit_test(test_pickle_disallowed_opcode),
        cmocka_unit_test(test_pickle_storage_too_small),
        cmocka_unit_test(test_pickle_structure),
        cmocka_unit_test(test_zip_structure),
        cmocka_unit_test(test_zip_reader),
        cmocka_unit_test(test_pickle_machine),
        cmocka_unit_test(test_safetensors_valid_crafted),
        cmocka_unit_test(test_safetensors_bad),
        cmocka_unit_test(test_safetensors_write_roundtrip),
        cmocka_unit_test(test_f16_conversions),
        cmocka_unit_test(test_bf16_conversions),
        cmocka_unit_test(test_conversions_match_torch),
        cmocka_unit_test(test_f64_and_names),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
