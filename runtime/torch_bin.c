/* PyTorch checkpoints as torch.save writes them since 1.6 (and save_pretrained with
 * safe_serialization=False): a zip archive, stored (uncompressed), with one top folder
 * holding data.pkl (a pickle of the state dict), data/<key> (the raw storages) and
 * optionally byteorder; and the legacy format before it (below). The archive is read by
 * runtime/zip.c and the pickle run by the machine in runtime/pickle.c; this file turns
 * what they give into tensors, checking every view against its storage. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/pickle.h"
#include "runtime/tensor_file.h"
#include "runtime/tensor_file_internal.h"
#include "runtime/zip.h"

/* ======================================================================================
 * From pickle objects to tensors
 * ====================================================================================== */

/* Extra elements a file may make us materialise beyond what it stores (views that
 * repeat data, such as expand()); keeps a tiny hostile file from costing gigabytes. */
#define TB_EXPANSION_ALLOWANCE ((uint64_t)1 << 24)

typedef struct tb_record {
    const sqz_pk_tensor *t;
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
static sqz_status tb_check_extent(const char *path, const char *name, const sqz_pk_tensor *t,
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
static void tb_gather(const sqz_pk_tensor *t, int64_t numel, const unsigned char *storage,
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
static sqz_status tb_list_tensors(const char *path, const char *entry, const sqz_pk_value *root,
                                  sqz_tensor_file *out, tb_record **records_out)
{
    if (root->kind != SQZ_PK_DICT)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: the pickled object in %s is of type %s; expected a dict (state dict) "
                        "of name -> tensor",
                        path, entry, sqz_pk_kind_name(root->kind));
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
        const sqz_pk_value *k = root->u.seq.items[2 * i], *v = root->u.seq.items[2 * i + 1];
        if (k->kind != SQZ_PK_STR)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: state dict key %zu in %s is of type %s; expected a string", path, i,
                            entry, sqz_pk_kind_name(k->kind));
        sqz_tf_printable(k->u.str.s, k->u.str.len, name, sizeof name);
        if (v->kind != SQZ_PK_TENSOR)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: state dict entry '%s' in %s is of type %s; expected a tensor", path,
                            name, entry, sqz_pk_kind_name(v->kind));
        if (k->u.str.len > SQZ_TF_MAX_NAME)
            return sqz_fail(SQZ_ERR_FORMAT, "%s: tensor name '%s' is longer than %d bytes",
                            path, name, SQZ_TF_MAX_NAME);
        sqz_tf_tensor *t = &out->tensors[i];
        t->name = malloc(k->u.str.len + 1);
        if (!t->name)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        memcpy(t->name, k->u.str.s, k->u.str.len + 1);
        out->count = i + 1;
        const sqz_pk_tensor *pt = v->u.tensor;
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
typedef sqz_status (*tb_read_storage)(const tb_storages *where, const sqz_pk_value *storage,
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
        const sqz_pk_value *s = records[i].t->storage;
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
        const sqz_pk_value *s = records[g].t->storage;
        const char *key = s->u.storage.key;
        size_t end = g + 1;
        int need_data = sqz_tf_dtype_is_float(s->u.storage.dtype);
        while (end < count && strcmp(records[end].t->storage->u.storage.key, key) == 0) {
            const sqz_pk_value *o = records[end].t->storage;
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
    const sqz_zip_archive *zip;
    const char *prefix;
    /* legacy: (key, element count, file offset of the data) after the pickles */
    const sqz_pk_value *keys; /* the list of keys, in file order */
    const uint64_t *offsets, *numels;
};

static sqz_status zip_storage(const tb_storages *w, const sqz_pk_value *storage, const char *first,
                              unsigned char **out)
{
    const char *key = storage->u.storage.key;
    const size_t item = sqz_tf_dtype_size(storage->u.storage.dtype);
    const uint64_t bytes = (uint64_t)storage->u.storage.numel * item;
    char entry_name[600];
    snprintf(entry_name, sizeof entry_name, "%s/data/%s", w->prefix, key);
    const sqz_zip_entry *e = sqz_zip_find(w->zip, entry_name);
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
    return sqz_zip_read(w->src, w->zip, e, out);
}

static sqz_status legacy_storage(const tb_storages *w, const sqz_pk_value *storage,
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
static sqz_status tb_find_pickle(const char *path, const sqz_zip_archive *zip,
                                 const sqz_zip_entry **out, size_t *prefix_len)
{
    const sqz_zip_entry *found = NULL;
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

static sqz_status tb_check_byteorder(const sqz_tf_source *src, const sqz_zip_archive *zip,
                                     const char *prefix)
{
    char name[300];
    snprintf(name, sizeof name, "%s/byteorder", prefix);
    const sqz_zip_entry *e = sqz_zip_find(zip, name);
    if (!e)
        return SQZ_OK; /* written since torch 1.10 or so; older files are little-endian */
    if (e->size > 16)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: entry '%s' is %llu bytes; expected \"little\"",
                        src->path, name, (unsigned long long)e->size);
    unsigned char *bytes;
    sqz_status status = sqz_zip_read(src, zip, e, &bytes);
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
    sqz_zip_archive archive = {0}, *zip = &archive;
    unsigned char *pickle = NULL;
    tb_record *records = NULL;
    char prefix[256];
    char pickle_name[300] = "";
    sqz_pk_machine m;
    sqz_pk_init(&m, path, pickle_name, 0);

    sqz_status status = sqz_zip_open(src, zip);
    const sqz_zip_entry *pe = NULL;
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
        status = sqz_zip_read(src, zip, pe, &pickle);
    sqz_pk_value *root = NULL;
    if (status == SQZ_OK) {
        m.buf = pickle;
        m.len = (size_t)pe->size;
        status = sqz_pk_run(&m, &root);
    }
    if (status == SQZ_OK)
        status = tb_list_tensors(path, pickle_name, root, out, &records);
    if (status == SQZ_OK) {
        tb_storages where = {src, zip, prefix, NULL, NULL, NULL};
        status = tb_materialise(src, &where, zip_storage, records, out);
    }

    free(records);
    free(pickle);
    sqz_pk_free(&m);
    sqz_zip_close(zip);
    return status;
}

/* ======================================================================================
 * The legacy format (torch.save before 1.6, and what the 2019-2020 Hugging Face uploads
 * such as bert-base-uncased use): five pickles back to back - a magic number, the protocol
 * version 1001, a dict of system facts, the state dict (its storages named by persistent
 * ids), the sorted list of storage keys - then, for each key in that order, the element
 * count as 8 little-endian bytes followed by the raw elements.
 * ====================================================================================== */

/* Parses the pickles from the first `window` bytes of the file and reads the storages. */
static sqz_status read_legacy(const sqz_tf_source *src, size_t window, sqz_tensor_file *out)
{
    static const unsigned char protocol_pickle[6] = {0x80, 0x02, 'M', 0xe9, 0x03, '.'};
    const char *path = src->path;
    const size_t head_len = src->size < (uint64_t)window ? (size_t)src->size : window;
    unsigned char *buf = malloc(head_len ? head_len : 1);
    sqz_pk_machine m;
    sqz_pk_init(&m, path, "the legacy pickles", 1);
    tb_record *records = NULL;
    uint64_t *offsets = NULL, *numels = NULL;
    sqz_pk_value *sys_info = NULL, *root = NULL, *keys = NULL;
    sqz_status status = buf ? sqz_tf_read_at(src, 0, buf, head_len, "the legacy pickles")
                            : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    /* the magic-number pickle (checked by the caller up to its STOP), then the version */
    if (status == SQZ_OK && (head_len < 21 || buf[14] != '.' ||
                             memcmp(buf + 15, protocol_pickle, sizeof protocol_pickle) != 0))
        status = sqz_fail(SQZ_ERR_UNSUPPORTED,
                          "%s: legacy torch.save file without protocol version 1001 after its "
                          "magic number; not a format this reader knows",
                          path);
    if (status == SQZ_OK) {
        m.buf = buf;
        m.len = head_len;
        m.pos = 21;
        status = sqz_pk_run(&m, &sys_info);
    }
    if (status == SQZ_OK) {
        const sqz_pk_value *little = sqz_pk_dict_get(sys_info, "little_endian");
        if (!little || little->kind != SQZ_PK_BOOL)
            status = sqz_fail(SQZ_ERR_FORMAT, "%s: the legacy system-info pickle has no "
                              "little_endian flag", path);
        else if (!little->u.i)
            status = sqz_fail(SQZ_ERR_UNSUPPORTED, "%s: checkpoint was saved on a big-endian "
                              "machine; only little-endian checkpoints are supported", path);
    }
    if (status == SQZ_OK) {
        sqz_pk_reset(&m);
        status = sqz_pk_run(&m, &root);
    }
    if (status == SQZ_OK) {
        sqz_pk_reset(&m);
        status = sqz_pk_run(&m, &keys);
    }
    if (status == SQZ_OK && keys->kind != SQZ_PK_LIST)
        status = sqz_fail(SQZ_ERR_FORMAT, "%s: the legacy storage-key pickle holds a %s, not a "
                          "list", path, sqz_pk_kind_name(keys->kind));
    for (size_t i = 0; status == SQZ_OK && i < keys->u.seq.n; i++)
        if (keys->u.seq.items[i]->kind != SQZ_PK_STR)
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
        numels[i] = sqz_tf_le64(count);
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
    sqz_pk_free(&m);
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
