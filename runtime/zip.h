/* A reader for the zip archives torch.save writes (runtime/zip.c): the central directory
 * (zip64 included) and whole stored entries, each checked against its local header and
 * its CRC-32. Every message names the file and, where there is one, the entry. */
#ifndef SQZ_RUNTIME_ZIP_H
#define SQZ_RUNTIME_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/tensor_file_internal.h"

typedef struct sqz_zip_entry {
    char *name;
    uint64_t local_offset;
    uint64_t size; /* compressed and uncompressed sizes agree for stored entries */
    uint64_t csize;
    uint32_t crc;
    uint16_t method;
    uint16_t flags;
} sqz_zip_entry;

typedef struct sqz_zip_archive {
    sqz_zip_entry *entries; /* sorted by name */
    size_t count;
    uint64_t cd_offset; /* entry data must lie before the central directory */
} sqz_zip_archive;

/* Reads the central directory into `zip` (zeroed by the caller). Refuses a damaged
 * directory, a multi-disk archive and two entries with one name. Call sqz_zip_close
 * afterwards, after a failure too. */
sqz_status sqz_zip_open(const sqz_tf_source *src, sqz_zip_archive *zip);
void sqz_zip_close(sqz_zip_archive *zip);

/* The entry with exactly this name, or NULL. */
const sqz_zip_entry *sqz_zip_find(const sqz_zip_archive *zip, const char *name);

/* Reads a whole stored entry into a new buffer (*out, the caller frees it). Refuses
 * encrypted and compressed entries, a local header that disagrees with the directory,
 * data that runs into the directory and a CRC-32 that does not match (0 means "not
 * recorded" and is accepted, as torch can write it). */
sqz_status sqz_zip_read(const sqz_tf_source *src, const sqz_zip_archive *zip,
                        const sqz_zip_entry *e, unsigned char **out);

#endif
