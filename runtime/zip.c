/* The zip archives torch.save writes: entries stored (uncompressed), zip64 records when
 * the archive is large, one disk. Every offset and size taken from the file is checked
 * against the file before it is used. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "runtime/error.h"
#include "runtime/zip.h"

#define ZIP_EOCD_SIZE 22
#define ZIP_EOCD_SEARCH (65535 + ZIP_EOCD_SIZE) /* the comment is at most 65535 bytes */
#define ZIP_Z64_LOCATOR_SIZE 20
#define ZIP_Z64_EOCD_SIZE 56
#define ZIP_CDIR_SIZE 46
#define ZIP_LOCAL_SIZE 30
#define ZIP_MAX_ENTRIES (SQZ_TF_MAX_TENSORS + 64)

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const sqz_zip_entry *)a)->name, ((const sqz_zip_entry *)b)->name);
}

void sqz_zip_close(sqz_zip_archive *zip)
{
    if (zip->entries)
        for (size_t i = 0; i < zip->count; i++)
            free(zip->entries[i].name);
    free(zip->entries);
    zip->entries = NULL;
    zip->count = 0;
}

const sqz_zip_entry *sqz_zip_find(const sqz_zip_archive *zip, const char *name)
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
        found = sqz_tf_le32(tail + p) == 0x06054b50u &&
                (size_t)sqz_tf_le16(tail + p + 20) == tail_len - p - ZIP_EOCD_SIZE;
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
    unsigned disk = sqz_tf_le16(e + 4), cd_disk = sqz_tf_le16(e + 6);
    uint64_t n_disk = sqz_tf_le16(e + 8), n_total = sqz_tf_le16(e + 10);
    uint64_t size = sqz_tf_le32(e + 12), offset = sqz_tf_le32(e + 16);
    free(tail);

    uint64_t cd_limit = eocd_pos; /* the central directory must end before this */
    unsigned char loc[ZIP_Z64_LOCATOR_SIZE];
    int has_locator = 0;
    if (eocd_pos >= ZIP_Z64_LOCATOR_SIZE) {
        status = sqz_tf_read_at(src, eocd_pos - ZIP_Z64_LOCATOR_SIZE, loc, sizeof loc,
                                "the zip64 locator");
        if (status != SQZ_OK)
            return status;
        has_locator = sqz_tf_le32(loc) == 0x07064b50u;
    }
    if (has_locator) {
        uint64_t z64_pos = sqz_tf_le64(loc + 8);
        if (sqz_tf_le32(loc + 4) != 0 || sqz_tf_le32(loc + 16) > 1)
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
        if (sqz_tf_le32(z) != 0x06064b50u)
            return sqz_fail(SQZ_ERR_FORMAT,
                            "%s: zip archive damaged: expected the zip64 end record signature at "
                            "byte offset %llu, found 0x%08x",
                            path, (unsigned long long)z64_pos, (unsigned)sqz_tf_le32(z));
        /* Only fields the classic record could not hold come from the zip64 record. */
        if (disk == 0xffff)
            disk = sqz_tf_le32(z + 16) ? 1u : 0u;
        if (cd_disk == 0xffff)
            cd_disk = sqz_tf_le32(z + 20) ? 1u : 0u;
        if (n_disk == 0xffff)
            n_disk = sqz_tf_le64(z + 24);
        if (n_total == 0xffff)
            n_total = sqz_tf_le64(z + 32);
        if (size == 0xffffffffu)
            size = sqz_tf_le64(z + 40);
        if (offset == 0xffffffffu)
            offset = sqz_tf_le64(z + 48);
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
        uint16_t id = sqz_tf_le16(extra + q), n = sqz_tf_le16(extra + q + 2);
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
                *wide[k] = sqz_tf_le64(f + used);
                used += 8;
            }
            if (*disk == 0xffff) {
                if (n - used < 4)
                    return 0;
                *disk = sqz_tf_le32(f + used);
            }
        }
        q += 4 + (size_t)n;
    }
    return 1;
}

sqz_status sqz_zip_open(const sqz_tf_source *src, sqz_zip_archive *zip)
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
        if (cd_size - q < ZIP_CDIR_SIZE || sqz_tf_le32(cd + q) != 0x02014b50u) {
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: zip archive damaged: expected central directory entry %llu "
                              "of %llu at byte offset %llu",
                              path, (unsigned long long)i, (unsigned long long)count,
                              (unsigned long long)at);
            break;
        }
        const unsigned char *h = cd + q;
        size_t name_len = sqz_tf_le16(h + 28), extra_len = sqz_tf_le16(h + 30);
        size_t comment_len = sqz_tf_le16(h + 32);
        if (cd_size - q - ZIP_CDIR_SIZE < name_len + extra_len + comment_len) {
            status = sqz_fail(SQZ_ERR_FORMAT,
                              "%s: zip archive damaged: central directory entry at byte offset "
                              "%llu runs past the directory",
                              path, (unsigned long long)at);
            break;
        }
        sqz_zip_entry *ze = &zip->entries[i];
        uint64_t usize = sqz_tf_le32(h + 24), csize = sqz_tf_le32(h + 20);
        uint64_t local = sqz_tf_le32(h + 42);
        uint32_t disk = sqz_tf_le16(h + 34);
        ze->flags = sqz_tf_le16(h + 8);
        ze->method = sqz_tf_le16(h + 10);
        ze->crc = sqz_tf_le32(h + 16);
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
    return SQZ_OK;
}

/* Reads a whole stored entry (checking its local header and CRC) into a new buffer. */
sqz_status sqz_zip_read(const sqz_tf_source *src, const sqz_zip_archive *zip,
                        const sqz_zip_entry *e, unsigned char **out)
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
    if (sqz_tf_le32(lh) != 0x04034b50u)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: zip archive damaged: expected the local header of '%s' at byte "
                        "offset %llu, found 0x%08x",
                        path, shown, (unsigned long long)e->local_offset,
                        (unsigned)sqz_tf_le32(lh));
    size_t name_len = sqz_tf_le16(lh + 26), extra_len = sqz_tf_le16(lh + 28);
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
    if (memcmp(local_name, e->name, name_len) != 0 || sqz_tf_le16(lh + 8) != e->method)
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
    /* torch can be told not to compute CRCs (it then writes 0): only check real ones.
     * zlib's crc32 rather than one of our own: it is well kept and fast (several bytes a
     * step), so checking every storage costs little next to reading it. */
    uint32_t crc = (uint32_t)crc32_z(0, buf, (size_t)e->size);
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
