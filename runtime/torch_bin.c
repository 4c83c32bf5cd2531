/* PyTorch checkpoints as torch.save writes them since 1.6 (and save_pretrained with
 * safe_serialization=False): a zip archive, stored (uncompressed), with one top folder
 * holding data.pkl (a pickle of the state dict), data/<key> (the raw storages) and
 * optionally byteorder. The pickle is interpreted by a small machine that knows only the
 * opcodes and the handful of callables torch.save emits for a dict of tensors; anything
 * else is refused before it could mean anything. Nothing here recurses on file data. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/tensor_file.h"
#include "runtime/tensor_file_internal.h"

/* ======================================================================================
 * Zip
 * ====================================================================================== */

#define ZIP_EOCD_SIZE 22
#define ZIP_EOCD_SEARCH (65535 + ZIP_EOCD_SIZE) /* the comment is at most 65535 bytes */
#define ZIP_Z64_LOCATOR_SIZE 20
#define ZIP_Z64_EOCD_SIZE 56
#define ZIP_CDIR_SIZE 46
#define ZIP_LOCAL_SIZE 30
#define ZIP_MAX_ENTRIES (SQZ_TF_MAX_TENSORS + 64)

typedef struct zip_entry {
    char *name;
    uint64_t local_offset;
    uint64_t size; /* compressed and uncompressed sizes agree for stored entries */
    uint64_t csize;
    uint32_t crc;
    uint16_t method;
    uint16_t flags;
} zip_entry;

typedef struct zip_archive {
    zip_entry *entries; /* sorted by name */
    size_t count;
    uint64_t cd_offset; /* entry data must lie before the central directory */
    uint32_t crc_table[8][256];
} zip_archive;

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* CRC-32 (zip's polynomial), eight bytes a step: checking every storage must not cost
 * noticeable time next to reading it. */
static void crc_init(uint32_t table[8][256])
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int s = 1; s < 8; s++)
            table[s][i] = (table[s - 1][i] >> 8) ^ table[0][table[s - 1][i] & 0xffu];
}

static uint32_t crc_compute(const uint32_t table[8][256], const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    while (n >= 8) {
        uint32_t lo = c ^ le32(p), hi = le32(p + 4);
        c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
            table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
            table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    for (; n > 0; n--)
        c = table[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const zip_entry *)a)->name, ((const zip_entry *)b)->name);
}

static void zip_close(zip_archive *zip)
{
    if (zip->entries)
        for (size_t i = 0; i < zip->count; i++)
            free(zip->entries[i].name);
    free(zip->entries);
    zip->entries = NULL;
    zip->count = 0;
}

static const zip_entry *zip_find(const zip_archive *zip, const char *name)
{
    size_t lo = 0, hi = zip->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, zip->entries[mid].name);
        if (c == 0)
            return &zip->entries[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Finds the central directory: the end record (and its zip64 twin when present). */
static sqz_status zip_locate_cd(const sqz_tf_source *src, uint64_t *cd_offset, uint64_t *cd_size,
                                uint64_t *count)
{
    const char *path = src->path;
    if (src->size < ZIP_EOCD_SIZE)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged or truncated: %llu bytes is too short for the "
                        "end-of-central-directory record",
                        path, (unsigned long long)src->size);
    size_t tail_len = src->size < ZIP_EOCD_SEARCH ? (size_t)src->size : ZIP_EOCD_SEARCH;
    uint64_t tail_start = src->size - tail_len;
    unsigned char *tail = malloc(tail_len);
    if (!tail)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    sqz_status status = sqz_tf_read_at(src, tail_start, tail, tail_len, "the zip end record");
    if (status != SQZ_OK) {
        free(tail);
        return status;
    }
    /* The record must end exactly at the end of the file (after its comment); scanning
     * backwards picks the last one, as other readers do. */
    size_t p = 0;
    int found = 0;
    for (size_t q = tail_len - ZIP_EOCD_SIZE + 1; q > 0 && !found; q--) {
        p = q - 1;
        found = le32(tail + p) == 0x06054b50u &&
                (size_t)le16(tail + p + 20) == tail_len - p - ZIP_EOCD_SIZE;
    }
    if (!found) {
        free(tail);
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged or truncated: no end-of-central-directory "
                        "record in its last %zu bytes",
                        path, tail_len);
    }
    uint64_t eocd_pos = tail_start + p;
    const unsigned char *e = tail + p;
    unsigned disk = le16(e + 4), cd_disk = le16(e + 6);
    uint64_t n_disk = le16(e + 8), n_total = le16(e + 10);
    uint64_t size = le32(e + 12), offset = le32(e + 16);
    free(tail);

    uint64_t cd_limit = eocd_pos; /* the central directory must end before this */
    unsigned char loc[ZIP_Z64_LOCATOR_SIZE];
    int has_locator = 0;
    if (eocd_pos >= ZIP_Z64_LOCATOR_SIZE) {
        status = sqz_tf_read_at(src, eocd_pos - ZIP_Z64_LOCATOR_SIZE, loc, sizeof loc,
                                "the zip64 locator");
        if (status != SQZ_OK)
            return status;
        has_locator = le32(loc) == 0x07064b50u;
    }
    if (has_locator) {
        uint64_t z64_pos = le64(loc + 8);
        if (le32(loc + 4) != 0 || le32(loc + 16) > 1)
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "%s: multi-disk zip archives are not supported (zip64 locator at "
                            "byte offset %llu)",
                            path, (unsigned long long)(eocd_pos - ZIP_Z64_LOCATOR_SIZE));
        if (z64_pos > eocd_pos - ZIP_Z64_LOCATOR_SIZE ||
            eocd_pos - ZIP_Z64_LOCATOR_SIZE - z64_pos < ZIP_Z64_EOCD_SIZE)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: zip archive damaged: zip64 end record offset %llu (from the "
                            "locator at byte offset %llu) is out of range",
                            path, (unsigned long long)z64_pos,
                            (unsigned long long)(eocd_pos - ZIP_Z64_LOCATOR_SIZE));
        unsigned char z[ZIP_Z64_EOCD_SIZE];
        status = sqz_tf_read_at(src, z64_pos, z, sizeof z, "the zip64 end record");
        if (status != SQZ_OK)
            return status;
        if (le32(z) != 0x06064b50u)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: zip archive damaged: expected the zip64 end record signature at "
                            "byte offset %llu, found 0x%08x",
                            path, (unsigned long long)z64_pos, (unsigned)le32(z));
        /* Only fields the classic record could not hold come from the zip64 record. */
        if (disk == 0xffff)
            disk = le32(z + 16) ? 1u : 0u;
        if (cd_disk == 0xffff)
            cd_disk = le32(z + 20) ? 1u : 0u;
        if (n_disk == 0xffff)
            n_disk = le64(z + 24);
        if (n_total == 0xffff)
            n_total = le64(z + 32);
        if (size == 0xffffffffu)
            size = le64(z + 40);
        if (offset == 0xffffffffu)
            offset = le64(z + 48);
        cd_limit = z64_pos;
    }
    if (disk != 0 || cd_disk != 0 || n_disk != n_total)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: multi-disk zip archives are not supported (end record at byte "
                        "offset %llu)",
                        path, (unsigned long long)eocd_pos);
    if (offset > cd_limit || size > cd_limit - offset)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged or truncated: central directory [%llu, +%llu) "
                        "does not fit before its end record at byte offset %llu",
                        path, (unsigned long long)offset, (unsigned long long)size,
                        (unsigned long long)cd_limit);
    if (n_total > ZIP_MAX_ENTRIES || n_total > size / ZIP_CDIR_SIZE)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged: %llu entries cannot fit in a %llu-byte "
                        "central directory (or exceed the limit of %d)",
                        path, (unsigned long long)n_total, (unsigned long long)size,
                        ZIP_MAX_ENTRIES);
    *cd_offset = offset;
    *cd_size = size;
    *count = n_total;
    return SQZ_OK;
}

/* Applies a zip64 extended-information extra field (id 1): it holds, in this order, the
 * 64-bit values of exactly those fields that are saturated in the fixed header. */
static int zip_apply_zip64(const unsigned char *extra, size_t len, uint64_t *usize,
                           uint64_t *csize, uint64_t *offset, uint32_t *disk)
{
    size_t q = 0;
    while (len - q >= 4) {
        uint16_t id = le16(extra + q), n = le16(extra + q + 2);
        if (n > len - q - 4)
            return 0;
        if (id == 1) {
            const unsigned char *f = extra + q + 4;
            size_t used = 0;
            uint64_t *wide[3] = {usize, csize, offset};
            for (int k = 0; k < 3; k++) {
                if (*wide[k] != 0xffffffffu)
                    continue;
                if (n - used < 8)
                    return 0;
                *wide[k] = le64(f + used);
                used += 8;
            }
            if (*disk == 0xffff) {
                if (n - used < 4)
                    return 0;
                *disk = le32(f + used);
            }
        }
        q += 4 + (size_t)n;
    }
    return 1;
}

static sqz_status zip_open(const sqz_tf_source *src, zip_archive *zip)
{
    const char *path = src->path;
    uint64_t cd_offset = 0, cd_size = 0, count = 0;
    sqz_status status = zip_locate_cd(src, &cd_offset, &cd_size, &count);
    if (status != SQZ_OK)
        return status;
    unsigned char *cd = malloc(cd_size ? (size_t)cd_size : 1);
    zip->entries = calloc(count ? (size_t)count : 1, sizeof *zip->entries);
    if (!cd || !zip->entries) {
        free(cd);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory for the zip directory", path);
    }
    zip->cd_offset = cd_offset;
    status = sqz_tf_read_at(src, cd_offset, cd, (size_t)cd_size, "the zip central directory");
    size_t q = 0;
    for (uint64_t i = 0; status == SQZ_OK && i < count; i++) {
        uint64_t at = cd_offset + q;
        if (cd_size - q < ZIP_CDIR_SIZE || le32(cd + q) != 0x02014b50u) {
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: zip archive damaged: expected central directory entry %llu "
                              "of %llu at byte offset %llu",
                              path, (unsigned long long)i, (unsigned long long)count,
                              (unsigned long long)at);
            break;
        }
        const unsigned char *h = cd + q;
        size_t name_len = le16(h + 28), extra_len = le16(h + 30), comment_len = le16(h + 32);
        if (cd_size - q - ZIP_CDIR_SIZE < name_len + extra_len + comment_len) {
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: zip archive damaged: central directory entry at byte offset "
                              "%llu runs past the directory",
                              path, (unsigned long long)at);
            break;
        }
        zip_entry *ze = &zip->entries[i];
        uint64_t usize = le32(h + 24), csize = le32(h + 20), local = le32(h + 42);
        uint32_t disk = le16(h + 34);
        ze->flags = le16(h + 8);
        ze->method = le16(h + 10);
        ze->crc = le32(h + 16);
        if (!zip_apply_zip64(h + ZIP_CDIR_SIZE + name_len, extra_len, &usize, &csize, &local,
                             &disk)) {
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: zip archive damaged: bad extra field in the central "
                              "directory entry at byte offset %llu",
                              path, (unsigned long long)at);
            break;
        }
        const char *raw = (const char *)h + ZIP_CDIR_SIZE;
        ze->name = malloc(name_len + 1);
        if (!ze->name) {
            status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
            break;
        }
        memcpy(ze->name, raw, name_len);
        ze->name[name_len] = '\0';
        zip->count = (size_t)i + 1;
        if (memchr(raw, '\0', name_len) || disk != 0) {
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: zip archive damaged: central directory entry at byte offset "
                              "%llu has a NUL in its name or lives on another disk",
                              path, (unsigned long long)at);
            break;
        }
        ze->size = usize;
        ze->csize = csize;
        ze->local_offset = local;
        q += ZIP_CDIR_SIZE + name_len + extra_len + comment_len;
    }
    free(cd);
    if (status != SQZ_OK)
        return status;
    qsort(zip->entries, zip->count, sizeof *zip->entries, compare_entries);
    for (size_t i = 1; i < zip->count; i++) {
        if (strcmp(zip->entries[i - 1].name, zip->entries[i].name) == 0) {
            char shown[160];
            const char *n = zip->entries[i].name;
            return sqz_fail(SQZ_ERR_FORMAT, "%s: zip archive has two entries named '%s'", path,
                            sqz_tf_printable(n, strlen(n), shown, sizeof shown));
        }
    }
    crc_init(zip->crc_table);
    return SQZ_OK;
}

/* Reads a whole stored entry (checking its local header and CRC) into a new buffer. */
static sqz_status zip_read(const sqz_tf_source *src, const zip_archive *zip, const zip_entry *e,
                           unsigned char **out)
{
    const char *path = src->path;
    char shown[200];
    sqz_tf_printable(e->name, strlen(e->name), shown, sizeof shown);
    *out = NULL;
    if (e->flags & 0x41u)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: zip entry '%s' is encrypted", path, shown);
    if (e->method != 0)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: zip entry '%s' is compressed (method %u); only stored entries "
                        "(method 0, as torch.save writes them) are supported",
                        path, shown, (unsigned)e->method);
    if (e->csize != e->size)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip entry '%s' is stored but its sizes differ (%llu vs %llu bytes)",
                        path, shown, (unsigned long long)e->csize, (unsigned long long)e->size);
    unsigned char lh[ZIP_LOCAL_SIZE];
    sqz_status status = sqz_tf_read_at(src, e->local_offset, lh, sizeof lh, "a zip local header");
    if (status != SQZ_OK)
        return status;
    if (le32(lh) != 0x04034b50u)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged: expected the local header of '%s' at byte "
                        "offset %llu, found 0x%08x",
                        path, shown, (unsigned long long)e->local_offset, (unsigned)le32(lh));
    size_t name_len = le16(lh + 26), extra_len = le16(lh + 28);
    size_t name_cmp = strlen(e->name);
    char local_name[512];
    if (name_len != name_cmp || name_len > sizeof local_name)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged: local header at byte offset %llu does not "
                        "match the directory entry '%s'",
                        path, (unsigned long long)e->local_offset, shown);
    status = sqz_tf_read_at(src, e->local_offset + ZIP_LOCAL_SIZE, local_name, name_len,
                            "a zip local header name");
    if (status != SQZ_OK)
        return status;
    if (memcmp(local_name, e->name, name_len) != 0 || le16(lh + 8) != e->method)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged: local header at byte offset %llu does not "
                        "match the directory entry '%s'",
                        path, (unsigned long long)e->local_offset, shown);
    uint64_t data = e->local_offset + ZIP_LOCAL_SIZE + name_len + extra_len;
    if (data > zip->cd_offset || e->size > zip->cd_offset - data)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged: data of '%s' [%llu, +%llu) runs into the "
                        "central directory at byte offset %llu",
                        path, shown, (unsigned long long)data, (unsigned long long)e->size,
                        (unsigned long long)zip->cd_offset);
    if (e->size > SIZE_MAX - 1)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: zip entry '%s' is too large", path, shown);
    unsigned char *buf = malloc(e->size ? (size_t)e->size : 1);
    if (!buf)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory for zip entry '%s' (%llu bytes)",
                        path, shown, (unsigned long long)e->size);
    char what[260];
    snprintf(what, sizeof what, "zip entry '%s'", shown);
    status = sqz_tf_read_at(src, data, buf, (size_t)e->size, what);
    if (status != SQZ_OK) {
        free(buf);
        return status;
    }
    /* torch can be told not to compute CRCs (it then writes 0): only check real ones. */
    uint32_t crc = crc_compute(zip->crc_table, buf, (size_t)e->size);
    if (e->crc != 0 && crc != e->crc) {
        free(buf);
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip entry '%s' is corrupt: CRC-32 is 0x%08x, the directory says "
                        "0x%08x",
                        path, shown, (unsigned)crc, (unsigned)e->crc);
    }
    *out = buf;
    return SQZ_OK;
}

/* ======================================================================================
 * Pickle
 * ====================================================================================== */

#define PK_MAX_STRING 65536 /* no string torch.save writes for a state dict is near this */
#define PK_MAX_GLOBAL_LINE 256
#define PK_MAX_VALUES ((size_t)SQZ_TF_MAX_TENSORS * 40) /* objects and container slots */

typedef enum pk_kind {
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_FLOAT,
    PK_STR,
    PK_TUPLE,
    PK_LIST,
    PK_DICT, /* items hold key, value, key, value, ... */
    PK_GLOBAL,
    PK_STORAGE,
    PK_TENSOR,
} pk_kind;

static const char *const pk_kind_names[] = {
    "None", "bool", "int", "float", "str", "tuple", "list", "dict", "class", "storage", "tensor",
};

typedef enum pk_global {
    PG_ORDERED_DICT,
    PG_REBUILD_TENSOR_V2,
    PG_REBUILD_PARAMETER,
    PG_STORAGE, /* torch.<X>Storage, dtype in the value */
} pk_global;

typedef struct pk_value pk_value;

typedef struct pk_tensor {
    const pk_value *storage;
    int64_t offset;
    int ndim;
    int64_t shape[SQZ_TF_MAX_DIMS];
    int64_t stride[SQZ_TF_MAX_DIMS];
} pk_tensor;

struct pk_value {
    pk_kind kind;
    union {
        int64_t i;
        double f;
        struct {
            char *s;
            size_t len;
        } str;
        struct {
            pk_value **items;
            size_t n, cap;
        } seq;
        struct {
            pk_global which;
            sqz_tf_dtype dtype;
        } global;
        struct {
            sqz_tf_dtype dtype;
            const char *key; /* borrowed from a PK_STR value; both live until the end */
            int64_t numel;
        } storage;
        pk_tensor *tensor;
    } u;
};

typedef struct pk_machine {
    const char *path;  /* the file */
    const char *entry; /* the data.pkl entry name, for messages */
    const unsigned char *buf;
    size_t len, pos;
    size_t op_pos; /* offset of the opcode being run */

    pk_value **stack;
    size_t depth, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    pk_value **memo;
    size_t memo_cap, memo_used;

    /* Every value lives here until the machine is freed: values are shared freely
     * (memo, containers) and may even form cycles, so they are never freed one by one. */
    pk_value **all;
    size_t n_all, all_cap;
    size_t budget_used; /* values plus container slots, against PK_MAX_VALUES */

    pk_value none_value;
    /* the legacy (pre-1.6) format: several pickles back to back, storages after them, and
     * persistent ids with a sixth field (view metadata, always None for a state dict) */
    int legacy;
} pk_machine;

static sqz_status pk_error(pk_machine *m, const char *what)
{
    return sqz_fail(SQZ_ERR_FORMAT, "%s: malformed pickle at offset %zu in %s (entry %s): %s",
                    m->path, m->op_pos, m->path, m->entry, what);
}

static sqz_status pk_oom(pk_machine *m)
{
    return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory reading the pickle (entry %s)",
                    m->path, m->entry);
}

static void pk_free_value(pk_value *v)
{
    switch (v->kind) {
    case PK_STR:
        free(v->u.str.s);
        break;
    case PK_TUPLE:
    case PK_LIST:
    case PK_DICT:
        free(v->u.seq.items);
        break;
    case PK_TENSOR:
        free(v->u.tensor);
        break;
    default:
        break;
    }
    free(v);
}

static void pk_machine_free(pk_machine *m)
{
    for (size_t i = 0; i < m->n_all; i++)
        pk_free_value(m->all[i]);
    free(m->all);
    free(m->stack);
    free(m->marks);
    free(m->memo);
}

/* Grows *arr (of `elem` bytes each) so that it holds at least `need` elements. */
static int pk_reserve(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / elem)
        return 0;
    void *p = realloc(*arr, n * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = n;
    return 1;
}

static sqz_status pk_charge(pk_machine *m, size_t n)
{
    if (n > PK_MAX_VALUES - m->budget_used)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: pickle in entry %s builds more than %zu objects (at offset %zu): "
                        "far more than a state dict needs",
                        m->path, m->entry, PK_MAX_VALUES, m->op_pos);
    m->budget_used += n;
    return SQZ_OK;
}

static sqz_status pk_new(pk_machine *m, pk_kind kind, pk_value **out)
{
    sqz_status status = pk_charge(m, 1);
    if (status != SQZ_OK)
        return status;
    if (!pk_reserve((void **)&m->all, &m->all_cap, m->n_all + 1, sizeof *m->all))
        return pk_oom(m);
    pk_value *v = calloc(1, sizeof *v);
    if (!v)
        return pk_oom(m);
    v->kind = kind;
    m->all[m->n_all++] = v;
    *out = v;
    return SQZ_OK;
}

static sqz_status pk_push(pk_machine *m, pk_value *v)
{
    if (m->depth >= SQZ_TF_MAX_PICKLE_STACK)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: pickle stack deeper than %d at offset %zu in %s (entry %s)",
                        m->path, SQZ_TF_MAX_PICKLE_STACK, m->op_pos, m->path, m->entry);
    if (!pk_reserve((void **)&m->stack, &m->stack_cap, m->depth + 1, sizeof *m->stack))
        return pk_oom(m);
    m->stack[m->depth++] = v;
    return SQZ_OK;
}

static sqz_status pk_pop(pk_machine *m, pk_value **out)
{
    size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    if (m->depth <= floor)
        return pk_error(m, "stack underflow (or a pop across a MARK)");
    *out = m->stack[--m->depth];
    return SQZ_OK;
}

/* Pops the topmost mark; returns the index where the marked items start. */
static sqz_status pk_pop_mark(pk_machine *m, size_t *start)
{
    if (m->n_marks == 0)
        return pk_error(m, "no MARK on the stack");
    *start = m->marks[--m->n_marks];
    return SQZ_OK;
}

static sqz_status pk_seq_append(pk_machine *m, pk_value *seq, pk_value **items, size_t n)
{
    sqz_status status = pk_charge(m, n);
    if (status != SQZ_OK)
        return status;
    if (!pk_reserve((void **)&seq->u.seq.items, &seq->u.seq.cap, seq->u.seq.n + n,
                    sizeof *seq->u.seq.items))
        return pk_oom(m);
    if (n)
        memcpy(seq->u.seq.items + seq->u.seq.n, items, n * sizeof *items);
    seq->u.seq.n += n;
    return SQZ_OK;
}

/* Makes a tuple/list/dict of the n top stack items (popping them) and pushes it. */
static sqz_status pk_collect(pk_machine *m, pk_kind kind, size_t start)
{
    size_t n = m->depth - start;
    if (kind == PK_DICT && n % 2)
        return pk_error(m, "DICT needs key/value pairs but has an odd number of items");
    pk_value *v = NULL;
    sqz_status status = pk_new(m, kind, &v);
    if (status == SQZ_OK)
        status = pk_seq_append(m, v, m->stack + start, n);
    if (status != SQZ_OK)
        return status;
    m->depth = start;
    return pk_push(m, v);
}

static sqz_status pk_need(pk_machine *m, size_t n)
{
    if (m->len - m->pos < n) {
        char what[96];
        snprintf(what, sizeof what, "opcode 0x%02x needs %zu more bytes, only %zu left",
                 m->buf[m->op_pos], n, m->len - m->pos);
        return pk_error(m, what);
    }
    return SQZ_OK;
}

static uint64_t pk_read_uint(pk_machine *m, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = v << 8 | m->buf[m->pos + i - 1];
    m->pos += n;
    return v;
}

static sqz_status pk_push_string(pk_machine *m, size_t len)
{
    sqz_status status = pk_need(m, len);
    if (status != SQZ_OK)
        return status;
    if (len > PK_MAX_STRING)
        return pk_error(m, "string longer than 64 KiB");
    if (memchr(m->buf + m->pos, '\0', len))
        return pk_error(m, "string contains a NUL byte");
    pk_value *v = NULL;
    status = pk_new(m, PK_STR, &v);
    if (status != SQZ_OK)
        return status;
    v->u.str.s = malloc(len + 1);
    if (!v->u.str.s)
        return pk_oom(m);
    memcpy(v->u.str.s, m->buf + m->pos, len);
    v->u.str.s[len] = '\0';
    v->u.str.len = len;
    m->pos += len;
    return pk_push(m, v);
}

static sqz_status pk_push_int(pk_machine *m, int64_t i)
{
    pk_value *v = NULL;
    sqz_status status = pk_new(m, PK_INT, &v);
    if (status != SQZ_OK)
        return status;
    v->u.i = i;
    return pk_push(m, v);
}

static const struct {
    const char *name;
    sqz_tf_dtype dtype;
} storage_classes[] = {
    {"FloatStorage", SQZ_TF_F32}, {"HalfStorage", SQZ_TF_F16},  {"BFloat16Storage", SQZ_TF_BF16},
    {"DoubleStorage", SQZ_TF_F64}, {"LongStorage", SQZ_TF_I64}, {"IntStorage", SQZ_TF_I32},
    {"ShortStorage", SQZ_TF_I16}, {"CharStorage", SQZ_TF_I8},   {"ByteStorage", SQZ_TF_U8},
    {"BoolStorage", SQZ_TF_BOOL},
};

/* The allow-list: a name that is not here is refused before anything refers to it. */
static sqz_status pk_push_global(pk_machine *m, const char *module, size_t module_len,
                                 const char *name, size_t name_len)
{
    pk_global which = PG_ORDERED_DICT;
    sqz_tf_dtype dtype = SQZ_TF_F32;
    int ok = 0;
#define IS(s, len, lit) ((len) == sizeof(lit) - 1 && memcmp((s), (lit), (len)) == 0)
    if (IS(module, module_len, "collections") && IS(name, name_len, "OrderedDict")) {
        which = PG_ORDERED_DICT;
        ok = 1;
    } else if (IS(module, module_len, "torch._utils") &&
               IS(name, name_len, "_rebuild_tensor_v2")) {
        which = PG_REBUILD_TENSOR_V2;
        ok = 1;
    } else if (IS(module, module_len, "torch._utils") &&
               IS(name, name_len, "_rebuild_parameter")) {
        which = PG_REBUILD_PARAMETER;
        ok = 1;
    } else if (IS(module, module_len, "torch")) {
        for (size_t k = 0; k < sizeof storage_classes / sizeof storage_classes[0]; k++) {
            if (name_len == strlen(storage_classes[k].name) &&
                memcmp(name, storage_classes[k].name, name_len) == 0) {
                which = PG_STORAGE;
                dtype = storage_classes[k].dtype;
                ok = 1;
            }
        }
    }
#undef IS
    if (!ok) {
        char mod[100], nam[100];
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: pickle refers to class %s.%s which is not allowed (at offset %zu in "
                        "%s, entry %s; only collections.OrderedDict, "
                        "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and "
                        "torch.*Storage are)",
                        m->path, sqz_tf_printable(module, module_len, mod, sizeof mod),
                        sqz_tf_printable(name, name_len, nam, sizeof nam), m->op_pos, m->path,
                        m->entry);
    }
    pk_value *v = NULL;
    sqz_status status = pk_new(m, PK_GLOBAL, &v);
    if (status != SQZ_OK)
        return status;
    v->u.global.which = which;
    v->u.global.dtype = dtype;
    return pk_push(m, v);
}

static sqz_status pk_read_line(pk_machine *m, const char **s, size_t *len)
{
    size_t avail = m->len - m->pos;
    size_t limit = avail < PK_MAX_GLOBAL_LINE ? avail : PK_MAX_GLOBAL_LINE;
    const unsigned char *nl = memchr(m->buf + m->pos, '\n', limit);
    if (!nl)
        return pk_error(m, "GLOBAL name is not terminated by a newline within 256 bytes");
    *s = (const char *)m->buf + m->pos;
    *len = (size_t)(nl - (m->buf + m->pos));
    m->pos += *len + 1;
    return SQZ_OK;
}

static int pk_is_int_tuple(const pk_value *v, int allow_negative)
{
    if (v->kind != PK_TUPLE)
        return 0;
    for (size_t k = 0; k < v->u.seq.n; k++)
        if (v->u.seq.items[k]->kind != PK_INT || (!allow_negative && v->u.seq.items[k]->u.i < 0))
            return 0;
    return 1;
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]): the tensor is only described here; its data is checked
 * and copied once all storages are known. */
static sqz_status pk_rebuild_tensor(pk_machine *m, const pk_value *args, pk_value **out)
{
    size_t n = args->u.seq.n;
    pk_value *const *a = args->u.seq.items;
    if (n != 6 && n != 7)
        return pk_error(m, "_rebuild_tensor_v2 expects 6 or 7 arguments");
    if (a[0]->kind != PK_STORAGE)
        return pk_error(m, "_rebuild_tensor_v2: argument 1 must be a storage (persistent id)");
    if (a[1]->kind != PK_INT || a[1]->u.i < 0)
        return pk_error(m, "_rebuild_tensor_v2: storage_offset must be a non-negative int");
    if (!pk_is_int_tuple(a[2], 0) || !pk_is_int_tuple(a[3], 0) ||
        a[2]->u.seq.n != a[3]->u.seq.n)
        return pk_error(m, "_rebuild_tensor_v2: size and stride must be tuples of "
                           "non-negative ints of equal length");
    if (a[2]->u.seq.n > SQZ_TF_MAX_DIMS)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: tensor at pickle offset %zu in %s has %zu dimensions (at most %d)",
                        m->path, m->op_pos, m->entry, a[2]->u.seq.n, SQZ_TF_MAX_DIMS);
    if (a[4]->kind != PK_BOOL || a[5]->kind != PK_DICT ||
        (n == 7 && a[6]->kind != PK_NONE && a[6]->kind != PK_DICT))
        return pk_error(m, "_rebuild_tensor_v2: requires_grad must be a bool, backward_hooks "
                           "a dict and metadata None or a dict");
    pk_value *v = NULL;
    sqz_status status = pk_new(m, PK_TENSOR, &v);
    if (status != SQZ_OK)
        return status;
    pk_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return pk_oom(m);
    v->u.tensor = t;
    t->storage = a[0];
    t->offset = a[1]->u.i;
    t->ndim = (int)a[2]->u.seq.n;
    for (int d = 0; d < t->ndim; d++) {
        t->shape[d] = a[2]->u.seq.items[d]->u.i;
        t->stride[d] = a[3]->u.seq.items[d]->u.i;
    }
    *out = v;
    return SQZ_OK;
}

static sqz_status pk_reduce(pk_machine *m)
{
    pk_value *args = NULL, *callable = NULL, *result = NULL;
    sqz_status status = pk_pop(m, &args);
    if (status == SQZ_OK)
        status = pk_pop(m, &callable);
    if (status != SQZ_OK)
        return status;
    if (callable->kind != PK_GLOBAL || args->kind != PK_TUPLE)
        return pk_error(m, "REDUCE needs an allowed class and a tuple of arguments");
    switch (callable->u.global.which) {
    case PG_ORDERED_DICT:
        if (args->u.seq.n != 0)
            return pk_error(m, "OrderedDict is only accepted with no arguments");
        status = pk_new(m, PK_DICT, &result);
        break;
    case PG_REBUILD_TENSOR_V2:
        status = pk_rebuild_tensor(m, args, &result);
        break;
    case PG_REBUILD_PARAMETER:
        /* _rebuild_parameter(data, requires_grad, backward_hooks): the tensor itself. */
        if (args->u.seq.n != 3 || args->u.seq.items[0]->kind != PK_TENSOR)
            return pk_error(m, "_rebuild_parameter expects (tensor, requires_grad, hooks)");
        result = args->u.seq.items[0];
        break;
    default:
        return pk_error(m, "a storage class cannot be called");
    }
    if (status != SQZ_OK)
        return status;
    return pk_push(m, result);
}

/* BINPERSID: ('storage', torch.<X>Storage, key, location, numel) names a storage. */
static sqz_status pk_persistent_load(pk_machine *m)
{
    pk_value *pid = NULL;
    sqz_status status = pk_pop(m, &pid);
    if (status != SQZ_OK)
        return status;
    pk_value *const *a = pid->kind == PK_TUPLE ? pid->u.seq.items : NULL;
    const size_t fields = m->legacy ? 6 : 5;
    if (a && m->legacy && pid->u.seq.n == 6 && a[5]->kind != PK_NONE)
        return pk_error(m, "persistent id names a view of a storage, which state dicts never do");
    if (!a || pid->u.seq.n != fields || a[0]->kind != PK_STR || strcmp(a[0]->u.str.s, "storage") ||
        a[1]->kind != PK_GLOBAL || a[1]->u.global.which != PG_STORAGE || a[2]->kind != PK_STR ||
        a[3]->kind != PK_STR || a[4]->kind != PK_INT || a[4]->u.i < 0)
        return pk_error(m, m->legacy ? "persistent id must be ('storage', torch.<Type>Storage, "
                                       "key, location, numel, None)"
                                     : "persistent id must be ('storage', torch.<Type>Storage, key, "
                                       "location, numel)");
    /* The key becomes part of a zip entry name: keep it to a plain file name. */
    const char *key = a[2]->u.str.s;
    size_t key_len = a[2]->u.str.len;
    int key_ok = key_len > 0 && key_len <= 64;
    for (size_t k = 0; key_ok && k < key_len; k++) {
        char c = key[k];
        key_ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 c == '_';
    }
    if (!key_ok)
        return pk_error(m, "storage key must be 1-64 letters, digits or '_'");
    int64_t numel = a[4]->u.i;
    if ((uint64_t)numel > UINT64_MAX / 8)
        return pk_error(m, "storage element count is out of range");
    pk_value *v = NULL;
    status = pk_new(m, PK_STORAGE, &v);
    if (status != SQZ_OK)
        return status;
    v->u.storage.dtype = a[1]->u.global.dtype;
    v->u.storage.key = key;
    v->u.storage.numel = numel;
    return pk_push(m, v);
}

static sqz_status pk_memo_put(pk_machine *m, uint64_t index)
{
    if (index >= SQZ_TF_MAX_PICKLE_MEMO)
        return pk_error(m, "memo index beyond the limit");
    if (m->depth == 0)
        return pk_error(m, "memo store with an empty stack");
    if (index >= m->memo_cap) {
        size_t old = m->memo_cap;
        if (!pk_reserve((void **)&m->memo, &m->memo_cap, (size_t)index + 1, sizeof *m->memo))
            return pk_oom(m);
        memset(m->memo + old, 0, (m->memo_cap - old) * sizeof *m->memo);
    }
    if (!m->memo[index])
        m->memo_used++;
    m->memo[index] = m->stack[m->depth - 1];
    return SQZ_OK;
}

static sqz_status pk_memo_get(pk_machine *m, uint64_t index)
{
    if (index >= m->memo_cap || !m->memo[index]) {
        char what[80];
        snprintf(what, sizeof what, "memo entry %llu read before it was stored",
                 (unsigned long long)index);
        return pk_error(m, what);
    }
    return pk_push(m, m->memo[index]);
}

static sqz_status pk_setitems(pk_machine *m, size_t start)
{
    if (start == 0 || m->stack[start - 1]->kind != PK_DICT)
        return pk_error(m, "SETITEM(S) needs a dict below its items");
    if ((m->depth - start) % 2)
        return pk_error(m, "SETITEMS has an odd number of items");
    sqz_status status = pk_seq_append(m, m->stack[start - 1], m->stack + start, m->depth - start);
    m->depth = start;
    return status;
}

static sqz_status pk_appends(pk_machine *m, size_t start)
{
    if (start == 0 || m->stack[start - 1]->kind != PK_LIST)
        return pk_error(m, "APPEND(S) needs a list below its items");
    sqz_status status = pk_seq_append(m, m->stack[start - 1], m->stack + start, m->depth - start);
    m->depth = start;
    return status;
}

/* Runs the pickle to STOP; *result is the single object it built. */
static sqz_status pk_run(pk_machine *m, pk_value **result)
{
    sqz_status status = SQZ_OK;
    for (;;) {
        if (status != SQZ_OK)
            return status;
        if (m->pos >= m->len) {
            m->op_pos = m->pos;
            return pk_error(m, "the pickle ends without a STOP opcode (truncated?)");
        }
        m->op_pos = m->pos;
        unsigned op = m->buf[m->pos++];
        pk_value *v = NULL, *w = NULL;
        size_t start = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if ((status = pk_need(m, 1)) != SQZ_OK)
                return status;
            if (m->buf[m->pos] < 2 || m->buf[m->pos] > 5)
                return pk_error(m, "pickle protocol must be 2..5");
            m->pos++;
            break;
        case 0x95: /* FRAME: a length hint for buffered readers; the data follows inline */
            if ((status = pk_need(m, 8)) != SQZ_OK)
                return status;
            if (pk_read_uint(m, 8) > m->len - m->pos)
                return pk_error(m, "FRAME is longer than the rest of the pickle");
            break;
        case '.': /* STOP */
            if (m->n_marks != 0 || m->depth != 1)
                return pk_error(m, "STOP with an unbalanced stack (expected exactly one object)");
            if (m->pos != m->len && !m->legacy)
                return pk_error(m, "bytes follow the STOP opcode");
            *result = m->stack[0];
            return SQZ_OK;
        case '(': /* MARK */
            if (m->n_marks >= SQZ_TF_MAX_PICKLE_STACK)
                return pk_error(m, "too many nested MARKs");
            if (!pk_reserve((void **)&m->marks, &m->marks_cap, m->n_marks + 1, sizeof *m->marks))
                return pk_oom(m);
            m->marks[m->n_marks++] = m->depth;
            break;
        case '}': /* EMPTY_DICT */
        case ']': /* EMPTY_LIST */
        case ')': /* EMPTY_TUPLE */
            status = pk_new(m, op == '}' ? PK_DICT : op == ']' ? PK_LIST : PK_TUPLE, &v);
            if (status == SQZ_OK)
                status = pk_push(m, v);
            break;
        case 't': /* TUPLE */
        case 'l': /* LIST */
        case 'd': /* DICT */
            status = pk_pop_mark(m, &start);
            if (status == SQZ_OK)
                status = pk_collect(m, op == 't' ? PK_TUPLE : op == 'l' ? PK_LIST : PK_DICT,
                                    start);
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            size_t n = op - 0x84u;
            size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
            if (m->depth < floor + n)
                return pk_error(m, "TUPLE1/2/3 with too few items on the stack");
            status = pk_collect(m, PK_TUPLE, m->depth - n);
            break;
        }
        case 's': /* SETITEM */
            if (m->depth < 3 || (m->n_marks && m->depth < m->marks[m->n_marks - 1] + 3))
                return pk_error(m, "SETITEM with too few items on the stack");
            status = pk_setitems(m, m->depth - 2);
            break;
        case 'u': /* SETITEMS */
            status = pk_pop_mark(m, &start);
            if (status == SQZ_OK)
                status = pk_setitems(m, start);
            break;
        case 'a': /* APPEND */
            if (m->depth < 2 || (m->n_marks && m->depth < m->marks[m->n_marks - 1] + 2))
                return pk_error(m, "APPEND with too few items on the stack");
            status = pk_appends(m, m->depth - 1);
            break;
        case 'e': /* APPENDS */
            status = pk_pop_mark(m, &start);
            if (status == SQZ_OK)
                status = pk_appends(m, start);
            break;
        case 'J': /* BININT: signed 32-bit */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_push_int(m, (int64_t)(int32_t)pk_read_uint(m, 4));
            break;
        case 'K': /* BININT1 */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_push_int(m, (int64_t)pk_read_uint(m, 1));
            break;
        case 'M': /* BININT2 */
            if ((status = pk_need(m, 2)) == SQZ_OK)
                status = pk_push_int(m, (int64_t)pk_read_uint(m, 2));
            break;
        case 0x8a: { /* LONG1: n-byte two's complement; only what fits in 64 bits */
            if ((status = pk_need(m, 1)) != SQZ_OK)
                return status;
            size_t n = m->buf[m->pos++];
            if (n > 8)
                return pk_error(m, "LONG1 integer wider than 64 bits");
            if ((status = pk_need(m, n)) != SQZ_OK)
                return status;
            uint64_t u = pk_read_uint(m, n);
            if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1u)
                u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
            int64_t i;
            memcpy(&i, &u, sizeof i);
            status = pk_push_int(m, i);
            break;
        }
        case 'G': { /* BINFLOAT: big-endian IEEE double */
            if ((status = pk_need(m, 8)) != SQZ_OK)
                return status;
            uint64_t u = 0;
            for (int k = 0; k < 8; k++)
                u = u << 8 | m->buf[m->pos++];
            status = pk_new(m, PK_FLOAT, &v);
            if (status == SQZ_OK) {
                memcpy(&v->u.f, &u, sizeof v->u.f);
                status = pk_push(m, v);
            }
            break;
        }
        case 'N': /* NONE */
            status = pk_push(m, &m->none_value);
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            status = pk_new(m, PK_BOOL, &v);
            if (status == SQZ_OK) {
                v->u.i = op == 0x88;
                status = pk_push(m, v);
            }
            break;
        case 'X': /* BINUNICODE */
        case 'T': /* BINSTRING */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_push_string(m, (size_t)pk_read_uint(m, 4));
            break;
        case 0x8c: /* SHORT_BINUNICODE */
        case 'U':  /* SHORT_BINSTRING */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_push_string(m, (size_t)pk_read_uint(m, 1));
            break;
        case 0x8d: { /* BINUNICODE8 */
            if ((status = pk_need(m, 8)) != SQZ_OK)
                return status;
            uint64_t n = pk_read_uint(m, 8);
            if (n > PK_MAX_STRING)
                return pk_error(m, "string longer than 64 KiB");
            status = pk_push_string(m, (size_t)n);
            break;
        }
        case 'q': /* BINPUT */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_memo_put(m, pk_read_uint(m, 1));
            break;
        case 'r': /* LONG_BINPUT */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_memo_put(m, pk_read_uint(m, 4));
            break;
        case 0x94: /* MEMOIZE */
            status = pk_memo_put(m, m->memo_used);
            break;
        case 'h': /* BINGET */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_memo_get(m, pk_read_uint(m, 1));
            break;
        case 'j': /* LONG_BINGET */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_memo_get(m, pk_read_uint(m, 4));
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            const char *mod = NULL, *name = NULL;
            size_t mod_len = 0, name_len = 0;
            status = pk_read_line(m, &mod, &mod_len);
            if (status == SQZ_OK)
                status = pk_read_line(m, &name, &name_len);
            if (status == SQZ_OK)
                status = pk_push_global(m, mod, mod_len, name, name_len);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            status = pk_pop(m, &w);
            if (status == SQZ_OK)
                status = pk_pop(m, &v);
            if (status != SQZ_OK)
                return status;
            if (v->kind != PK_STR || w->kind != PK_STR)
                return pk_error(m, "STACK_GLOBAL needs two strings");
            status = pk_push_global(m, v->u.str.s, v->u.str.len, w->u.str.s, w->u.str.len);
            break;
        case 'R': /* REDUCE */
            status = pk_reduce(m);
            break;
        case 'b': /* BUILD: only the OrderedDict state torch writes (_metadata); ignored */
            status = pk_pop(m, &w);
            if (status != SQZ_OK)
                return status;
            if (m->depth == 0 || m->stack[m->depth - 1]->kind != PK_DICT)
                return pk_error(m, "BUILD is only accepted on an OrderedDict");
            break;
        case 'Q': /* BINPERSID */
            status = pk_persistent_load(m);
            break;
        default:
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "%s: unsupported pickle opcode 0x%02x at offset %zu in %s (entry %s); "
                            "only the subset torch.save writes for a state dict is accepted",
                            m->path, op, m->op_pos, m->path, m->entry);
        }
    }
}

/* ======================================================================================
 * From pickle objects to tensors
 * ====================================================================================== */

/* Extra elements a file may make us materialise beyond what it stores (views that
 * repeat data, such as expand()); keeps a tiny hostile file from costing gigabytes. */
#define TB_EXPANSION_ALLOWANCE ((uint64_t)1 << 24)

typedef struct tb_record {
    const pk_tensor *t;
    size_t index; /* into out->tensors */
} tb_record;

static int compare_records(const void *a, const void *b)
{
    const tb_record *x = a, *y = b;
    int c = strcmp(x->t->storage->u.storage.key, y->t->storage->u.storage.key);
    if (c)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Checks that every element the view touches lies inside its storage. */
static sqz_status tb_check_extent(const char *path, const char *name, const pk_tensor *t,
                                  int64_t *numel_out)
{
    const int64_t storage_numel = t->storage->u.storage.numel;
    const char *key = t->storage->u.storage.key;
    int64_t numel = 1, last = t->offset;
    for (int d = 0; d < t->ndim; d++) {
        int64_t size = t->shape[d];
        if (size != 0 && numel > INT64_MAX / size)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: tensor '%s': element count of its shape overflows 64 bits",
                            path, name);
        numel *= size;
    }
    if (numel > 0) {
        for (int d = 0; d < t->ndim; d++) {
            int64_t span;
            if (t->stride[d] != 0 && t->shape[d] - 1 > INT64_MAX / t->stride[d])
                span = -1;
            else
                span = (t->shape[d] - 1) * t->stride[d];
            if (span < 0 || last > INT64_MAX - span)
                return sqz_fail(SQZ_ERR_FORMAT,
                                "%s: tensor '%s': strides reach beyond 64-bit offsets", path,
                                name);
            last += span;
        }
        if (last >= storage_numel)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: tensor '%s' reads element %lld of storage '%s' (offset %lld, "
                            "shape and strides as pickled), but the storage has only %lld "
                            "elements",
                            path, name, (long long)last, key, (long long)t->offset,
                            (long long)storage_numel);
    } else if (t->offset > storage_numel) {
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: tensor '%s': storage offset %lld is beyond storage '%s' of %lld "
                        "elements",
                        path, name, (long long)t->offset, key, (long long)storage_numel);
    }
    *numel_out = numel;
    return SQZ_OK;
}

/* Copies the view into a contiguous row-major fp32 array; offsets stay inside the
 * storage because tb_check_extent bounded the largest one. */
static void tb_gather(const pk_tensor *t, int64_t numel, const unsigned char *storage,
                      sqz_tf_dtype dtype, float *dst)
{
    size_t item = sqz_tf_dtype_size(dtype);
    int contiguous = 1;
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect)
            contiguous = 0;
        expect *= t->shape[d];
    }
    if (contiguous) {
        const unsigned char *src = storage + (size_t)t->offset * item;
        for (int64_t i = 0; i < numel; i++)
            dst[i] = sqz_tf_load_f32(dtype, src + (size_t)i * item);
        return;
    }
    int64_t idx[SQZ_TF_MAX_DIMS] = {0};
    int64_t off = t->offset;
    for (int64_t i = 0; i < numel; i++) {
        dst[i] = sqz_tf_load_f32(dtype, storage + (size_t)off * item);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (idx[d] + 1 < t->shape[d]) {
                idx[d]++;
                off += t->stride[d];
                break;
            }
            off -= idx[d] * t->stride[d];
            idx[d] = 0;
        }
    }
}

/* Turns the top-level dict into the tensor list (names, dtypes, shapes). */
static sqz_status tb_list_tensors(const char *path, const char *entry, const pk_value *root,
                                  sqz_tensor_file *out, tb_record **records_out)
{
    if (root->kind != PK_DICT)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: the pickled object in %s is of type %s; expected a dict (state dict) "
                        "of name -> tensor",
                        path, entry, pk_kind_names[root->kind]);
    size_t count = root->u.seq.n / 2;
    if (count > SQZ_TF_MAX_TENSORS)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: state dict has %zu entries (at most %d)", path,
                        count, SQZ_TF_MAX_TENSORS);
    tb_record *records = malloc((count ? count : 1) * sizeof *records);
    out->tensors = calloc(count ? count : 1, sizeof *out->tensors);
    if (!records || !out->tensors) {
        free(records);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu tensors", path, count);
    }
    *records_out = records;
    char name[160];
    for (size_t i = 0; i < count; i++) {
        const pk_value *k = root->u.seq.items[2 * i], *v = root->u.seq.items[2 * i + 1];
        if (k->kind != PK_STR)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: state dict key %zu in %s is of type %s; expected a string", path, i,
                            entry, pk_kind_names[k->kind]);
        sqz_tf_printable(k->u.str.s, k->u.str.len, name, sizeof name);
        if (v->kind != PK_TENSOR)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: state dict entry '%s' in %s is of type %s; expected a tensor", path,
                            name, entry, pk_kind_names[v->kind]);
        if (k->u.str.len > SQZ_TF_MAX_NAME)
            return sqz_fail(SQZ_ERR_FORMAT, "%s: tensor name '%s' is longer than %d bytes",
                            path, name, SQZ_TF_MAX_NAME);
        sqz_tf_tensor *t = &out->tensors[i];
        t->name = malloc(k->u.str.len + 1);
        if (!t->name)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        memcpy(t->name, k->u.str.s, k->u.str.len + 1);
        out->count = i + 1;
        const pk_tensor *pt = v->u.tensor;
        t->dtype = pt->storage->u.storage.dtype;
        t->ndim = pt->ndim;
        for (int d = 0; d < pt->ndim; d++)
            t->shape[d] = pt->shape[d];
        sqz_status status = tb_check_extent(path, name, pt, &t->numel);
        if (status != SQZ_OK)
            return status;
        records[i].t = pt;
        records[i].index = i;
    }
    return SQZ_OK;
}

/* Where a format keeps its storages: reads storage `key` of `bytes` bytes into a malloc'd
 * buffer, checking that the file holds exactly that (the message names the tensor `first`). */
typedef struct tb_storages tb_storages;
typedef sqz_status (*tb_read_storage)(const tb_storages *where, const pk_value *storage,
                                      const char *first, unsigned char **out);

/* Reads each storage once and fills every tensor that views it. */
static sqz_status tb_materialise(const sqz_tf_source *src, const tb_storages *where,
                                 tb_read_storage read_storage, tb_record *records,
                                 sqz_tensor_file *out)
{
    const char *path = src->path;
    size_t count = out->count;
    qsort(records, count, sizeof *records, compare_records);

    /* Budget: what we materialise may exceed what the float storages hold only a little. */
    uint64_t stored = 0, wanted = 0;
    for (size_t i = 0; i < count; i++) {
        const pk_value *s = records[i].t->storage;
        if (!sqz_tf_dtype_is_float(s->u.storage.dtype))
            continue;
        wanted += (uint64_t)out->tensors[records[i].index].numel;
        if (i == 0 || strcmp(records[i - 1].t->storage->u.storage.key, s->u.storage.key) != 0)
            stored += (uint64_t)s->u.storage.numel;
    }
    if (wanted > 4 * stored + TB_EXPANSION_ALLOWANCE)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: tensors total %llu elements but their storages hold only %llu: "
                        "views repeat data far beyond what a checkpoint needs",
                        path, (unsigned long long)wanted, (unsigned long long)stored);

    char name[160];
    for (size_t g = 0; g < count;) {
        const pk_value *s = records[g].t->storage;
        const char *key = s->u.storage.key;
        size_t end = g + 1;
        int need_data = sqz_tf_dtype_is_float(s->u.storage.dtype);
        while (end < count && strcmp(records[end].t->storage->u.storage.key, key) == 0) {
            const pk_value *o = records[end].t->storage;
            if (o->u.storage.dtype != s->u.storage.dtype ||
                o->u.storage.numel != s->u.storage.numel)
                return sqz_fail(SQZ_ERR_FORMAT,
                                "%s: storage '%s' is described twice with different types or "
                                "sizes (%s x %lld vs %s x %lld)",
                                path, key, sqz_tf_dtype_name(s->u.storage.dtype),
                                (long long)s->u.storage.numel,
                                sqz_tf_dtype_name(o->u.storage.dtype),
                                (long long)o->u.storage.numel);
            end++;
        }
        const char *first = out->tensors[records[g].index].name;
        sqz_tf_printable(first, strlen(first), name, sizeof name);
        /* Read (and check) every storage, even those only listed. */
        unsigned char *bytes = NULL;
        sqz_status status = read_storage(where, s, name, &bytes);
        if (status != SQZ_OK)
            return status;
        if (need_data) {
            for (size_t r = g; r < end; r++) {
                sqz_tf_tensor *t = &out->tensors[records[r].index];
                if ((uint64_t)t->numel > SIZE_MAX / sizeof(float)) {
                    free(bytes);
                    return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: tensor is too large", path);
                }
                t->data = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
                if (!t->data) {
                    free(bytes);
                    sqz_tf_printable(t->name, strlen(t->name), name, sizeof name);
                    return sqz_fail(SQZ_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory for tensor '%s' (%lld elements)", path,
                                    name, (long long)t->numel);
                }
                tb_gather(records[r].t, t->numel, bytes, s->u.storage.dtype, t->data);
            }
        }
        free(bytes);
        g = end;
    }
    return SQZ_OK;
}

struct tb_storages {
    const sqz_tf_source *src;
    /* zip: entries "<prefix>/data/<key>" */
    const zip_archive *zip;
    const char *prefix;
    /* legacy: (key, element count, file offset of the data) after the pickles */
    const pk_value *keys; /* the list of keys, in file order */
    const uint64_t *offsets, *numels;
};

static sqz_status zip_storage(const tb_storages *w, const pk_value *storage, const char *first,
                              unsigned char **out)
{
    const char *key = storage->u.storage.key;
    const size_t item = sqz_tf_dtype_size(storage->u.storage.dtype);
    const uint64_t bytes = (uint64_t)storage->u.storage.numel * item;
    char entry_name[600];
    snprintf(entry_name, sizeof entry_name, "%s/data/%s", w->prefix, key);
    const zip_entry *e = zip_find(w->zip, entry_name);
    if (!e)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: storage '%s' of tensor '%s' is missing: no zip entry '%s'",
                        w->src->path, key, first, entry_name);
    if (bytes != e->size)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: storage '%s' (entry '%s') has %llu bytes, but the pickle says %lld "
                        "elements of %s (%zu bytes each) = %llu bytes",
                        w->src->path, key, entry_name, (unsigned long long)e->size,
                        (long long)storage->u.storage.numel,
                        sqz_tf_dtype_name(storage->u.storage.dtype), item,
                        (unsigned long long)bytes);
    return zip_read(w->src, w->zip, e, out);
}

static sqz_status legacy_storage(const tb_storages *w, const pk_value *storage,
                                 const char *first, unsigned char **out)
{
    const char *key = storage->u.storage.key;
    const uint64_t bytes = (uint64_t)storage->u.storage.numel * sqz_tf_dtype_size(storage->u.storage.dtype);
    size_t n = w->keys->u.seq.n, i = 0;
    while (i < n && strcmp(w->keys->u.seq.items[i]->u.str.s, key) != 0)
        i++;
    if (i == n)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: storage '%s' of tensor '%s' is not in the file's list of storages",
                        w->src->path, key, first);
    if (w->numels[i] != (uint64_t)storage->u.storage.numel)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: storage '%s' holds %llu elements, but the pickle says %lld",
                        w->src->path, key, (unsigned long long)w->numels[i],
                        (long long)storage->u.storage.numel);
    if (bytes > SIZE_MAX - 1)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: storage '%s' is too large", w->src->path, key);
    *out = malloc(bytes ? (size_t)bytes : 1);
    if (!*out)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory for storage '%s' (%llu bytes)",
                        w->src->path, key, (unsigned long long)bytes);
    sqz_status status = sqz_tf_read_at(w->src, w->offsets[i], *out, (size_t)bytes, "a storage");
    if (status != SQZ_OK) {
        free(*out);
        *out = NULL;
    }
    return status;
}

/* Finds the single "<top>/data.pkl" entry; *prefix_len is the length of <top>. */
static sqz_status tb_find_pickle(const char *path, const zip_archive *zip, const zip_entry **out,
                                 size_t *prefix_len)
{
    const zip_entry *found = NULL;
    for (size_t i = 0; i < zip->count; i++) {
        const char *n = zip->entries[i].name;
        const char *slash = strchr(n, '/');
        if (!slash || slash == n || strcmp(slash, "/data.pkl") != 0)
            continue;
        if (found) {
            char a[160], b[160];
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: zip archive has more than one top-level data.pkl ('%s' and "
                            "'%s')",
                            path, sqz_tf_printable(found->name, strlen(found->name), a, sizeof a),
                            sqz_tf_printable(n, strlen(n), b, sizeof b));
        }
        found = &zip->entries[i];
        *prefix_len = (size_t)(slash - n);
    }
    if (!found)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive has no <folder>/data.pkl entry: not a torch.save "
                        "checkpoint",
                        path);
    if (*prefix_len > 255)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: zip top folder name is too long", path);
    *out = found;
    return SQZ_OK;
}

static sqz_status tb_check_byteorder(const sqz_tf_source *src, const zip_archive *zip,
                                     const char *prefix)
{
    char name[300];
    snprintf(name, sizeof name, "%s/byteorder", prefix);
    const zip_entry *e = zip_find(zip, name);
    if (!e)
        return SQZ_OK; /* written since torch 1.10 or so; older files are little-endian */
    if (e->size > 16)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: entry '%s' is %llu bytes; expected \"little\"",
                        src->path, name, (unsigned long long)e->size);
    unsigned char *bytes;
    sqz_status status = zip_read(src, zip, e, &bytes);
    if (status != SQZ_OK)
        return status;
    size_t n = (size_t)e->size;
    int little = n == 6 && memcmp(bytes, "little", 6) == 0;
    int big = n == 3 && memcmp(bytes, "big", 3) == 0;
    char shown[20];
    sqz_tf_printable((const char *)bytes, n, shown, sizeof shown);
    free(bytes);
    if (big)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: checkpoint was saved on a big-endian machine (entry '%s' says "
                        "\"big\"); only little-endian checkpoints are supported",
                        src->path, name);
    if (!little)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: entry '%s' says \"%s\"; expected \"little\"",
                        src->path, name, shown);
    return SQZ_OK;
}

sqz_status sqz_tf_read_torch_zip(const sqz_tf_source *src, sqz_tensor_file *out)
{
    const char *path = src->path;
    zip_archive *zip = calloc(1, sizeof *zip);
    if (!zip)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    pk_machine m;
    memset(&m, 0, sizeof m);
    m.none_value.kind = PK_NONE;
    unsigned char *pickle = NULL;
    tb_record *records = NULL;
    char prefix[256];
    char pickle_name[300];

    sqz_status status = zip_open(src, zip);
    const zip_entry *pe = NULL;
    size_t prefix_len = 0;
    if (status == SQZ_OK)
        status = tb_find_pickle(path, zip, &pe, &prefix_len);
    if (status == SQZ_OK) {
        memcpy(prefix, pe->name, prefix_len);
        prefix[prefix_len] = '\0';
        snprintf(pickle_name, sizeof pickle_name, "%s", pe->name);
        status = tb_check_byteorder(src, zip, prefix);
    }
    if (status == SQZ_OK && pe->size > src->max_pickle_bytes)
        status = sqz_fail(SQZ_ERR_FORMAT, "%s: %s is %llu bytes (at most %zu, " SQZ_TF_PICKLE_LIMIT_KNOB ")",
                          path, pickle_name, (unsigned long long)pe->size, src->max_pickle_bytes);
    if (status == SQZ_OK)
        status = zip_read(src, zip, pe, &pickle);
    pk_value *root = NULL;
    if (status == SQZ_OK) {
        /* Allocated up front so that stack arithmetic never starts from a NULL base. */
        if (!pk_reserve((void **)&m.stack, &m.stack_cap, 64, sizeof *m.stack) ||
            !pk_reserve((void **)&m.marks, &m.marks_cap, 64, sizeof *m.marks))
            status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    if (status == SQZ_OK) {
        m.path = path;
        m.entry = pickle_name;
        m.buf = pickle;
        m.len = (size_t)pe->size;
        status = pk_run(&m, &root);
    }
    if (status == SQZ_OK)
        status = tb_list_tensors(path, pickle_name, root, out, &records);
    if (status == SQZ_OK) {
        tb_storages where = {src, zip, prefix, NULL, NULL, NULL};
        status = tb_materialise(src, &where, zip_storage, records, out);
    }

    free(records);
    free(pickle);
    pk_machine_free(&m);
    zip_close(zip);
    free(zip);
    return status;
}

/* ======================================================================================
 * The legacy format (torch.save before 1.6, and what the 2019-2020 Hugging Face uploads
 * such as bert-base-uncased use): five pickles back to back - a magic number, the protocol
 * version 1001, a dict of system facts, the state dict (its storages named by persistent
 * ids), the sorted list of storage keys - then, for each key in that order, the element
 * count as 8 little-endian bytes followed by the raw elements.
 * ====================================================================================== */

/* The next pickle of the same file starts with an empty stack and memo. */
static void pk_reset(pk_machine *m)
{
    m->depth = 0;
    m->n_marks = 0;
    if (m->memo)
        memset(m->memo, 0, m->memo_cap * sizeof *m->memo);
    m->memo_used = 0;
}

static const pk_value *pk_dict_get(const pk_value *dict, const char *key)
{
    for (size_t i = 0; dict->kind == PK_DICT && i + 1 < dict->u.seq.n; i += 2)
        if (dict->u.seq.items[i]->kind == PK_STR && strcmp(dict->u.seq.items[i]->u.str.s, key) == 0)
            return dict->u.seq.items[i + 1];
    return NULL;
}

/* Parses the pickles from the first `window` bytes of the file and reads the storages. */
static sqz_status read_legacy(const sqz_tf_source *src, size_t window, sqz_tensor_file *out)
{
    static const unsigned char protocol_pickle[6] = {0x80, 0x02, 'M', 0xe9, 0x03, '.'};
    const char *path = src->path;
    const size_t head_len = src->size < (uint64_t)window ? (size_t)src->size : window;
    unsigned char *buf = malloc(head_len ? head_len : 1);
    pk_machine m;
    memset(&m, 0, sizeof m);
    m.none_value.kind = PK_NONE;
    m.legacy = 1;
    m.path = path;
    m.entry = "the legacy pickles";
    tb_record *records = NULL;
    uint64_t *offsets = NULL, *numels = NULL;
    pk_value *sys_info = NULL, *root = NULL, *keys = NULL;
    sqz_status status = buf ? sqz_tf_read_at(src, 0, buf, head_len, "the legacy pickles")
                            : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    /* the magic-number pickle (checked by the caller up to its STOP), then the version */
    if (status == SQZ_OK && (head_len < 21 || buf[14] != '.' ||
                             memcmp(buf + 15, protocol_pickle, sizeof protocol_pickle) != 0))
        status = sqz_fail(SQZ_ERR_UNSUPPORTED,
                          "%s: legacy torch.save file without protocol version 1001 after its "
                          "magic number; not a format this reader knows",
                          path);
    if (status == SQZ_OK &&
        (!pk_reserve((void **)&m.stack, &m.stack_cap, 64, sizeof *m.stack) ||
         !pk_reserve((void **)&m.marks, &m.marks_cap, 64, sizeof *m.marks)))
        status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    if (status == SQZ_OK) {
        m.buf = buf;
        m.len = head_len;
        m.pos = 21;
        status = pk_run(&m, &sys_info);
    }
    if (status == SQZ_OK) {
        const pk_value *little = pk_dict_get(sys_info, "little_endian");
        if (!little || little->kind != PK_BOOL)
            status = sqz_fail(SQZ_ERR_FORMAT, "%s: the legacy system-info pickle has no "
                              "little_endian flag", path);
        else if (!little->u.i)
            status = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: checkpoint was saved on a big-endian "
                              "machine; only little-endian checkpoints are supported", path);
    }
    if (status == SQZ_OK) {
        pk_reset(&m);
        status = pk_run(&m, &root);
    }
    if (status == SQZ_OK) {
        pk_reset(&m);
        status = pk_run(&m, &keys);
    }
    if (status == SQZ_OK && keys->kind != PK_LIST)
        status = sqz_fail(SQZ_ERR_FORMAT, "%s: the legacy storage-key pickle holds a %s, not a "
                          "list", path, pk_kind_names[keys->kind]);
    for (size_t i = 0; status == SQZ_OK && i < keys->u.seq.n; i++)
        if (keys->u.seq.items[i]->kind != PK_STR)
            status = sqz_fail(SQZ_ERR_FORMAT, "%s: storage key %zu is not a string", path, i);
    if (status == SQZ_OK)
        status = tb_list_tensors(path, m.entry, root, out, &records);
    const size_t n_keys = status == SQZ_OK ? keys->u.seq.n : 0;
    if (status == SQZ_OK) {
        offsets = malloc((n_keys ? n_keys : 1) * sizeof *offsets);
        numels = malloc((n_keys ? n_keys : 1) * sizeof *numels);
        if (!offsets || !numels)
            status = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    /* walk the storages: each one's element size comes from the tensors that view it */
    uint64_t at = m.pos;
    for (size_t i = 0; status == SQZ_OK && i < n_keys; i++) {
        const char *key = keys->u.seq.items[i]->u.str.s;
        size_t item = 0;
        for (size_t r = 0; r < out->count && !item; r++)
            if (strcmp(records[r].t->storage->u.storage.key, key) == 0)
                item = sqz_tf_dtype_size(records[r].t->storage->u.storage.dtype);
        unsigned char count[8];
        if (!item) {
            status = sqz_fail(SQZ_ERR_FORMAT, "%s: storage '%s' is listed but no tensor uses it",
                              path, key);
            break;
        }
        if ((status = sqz_tf_read_at(src, at, count, 8, "a storage's element count")) != SQZ_OK)
            break;
        numels[i] = le64(count);
        offsets[i] = at + 8;
        if (numels[i] > (src->size - offsets[i]) / item) {
            status = sqz_fail(SQZ_ERR_FORMAT, "%s: storage '%s' claims %llu elements of %zu bytes "
                              "at offset %llu, past the end of the %llu-byte file", path, key,
                              (unsigned long long)numels[i], item, (unsigned long long)offsets[i],
                              (unsigned long long)src->size);
            break;
        }
        at = offsets[i] + numels[i] * item;
    }
    if (status == SQZ_OK && at != src->size)
        status = sqz_fail(SQZ_ERR_FORMAT, "%s: %llu bytes follow the last storage", path,
                          (unsigned long long)(src->size - at));
    if (status == SQZ_OK) {
        tb_storages where = {src, NULL, NULL, keys, offsets, numels};
        status = tb_materialise(src, &where, legacy_storage, records, out);
    }
    free(offsets);
    free(numels);
    free(records);
    free(buf);
    pk_machine_free(&m);
    return status;
}

sqz_status sqz_tf_read_torch_legacy(const sqz_tf_source *src, sqz_tensor_file *out)
{
    /* a state dict's pickles take tens of kilobytes: read a small window first, and the
     * whole pickle limit only when they really are that long */
    const size_t small = 16u << 20;
    const size_t limit = src->max_pickle_bytes;
    sqz_status status = read_legacy(src, small < limit ? small : limit, out);
    if (status != SQZ_OK && src->size > small && limit > small) {
        sqz_tensor_file_clear(out);
        status = read_legacy(src, limit, out);
    }
    return status;
}
