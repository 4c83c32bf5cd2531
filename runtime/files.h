/* Small helpers for the files of a checkpoint directory: paths, existence, and JSON read
 * with a size limit (every JSON file of a checkpoint is hostile input). */
#ifndef SQZ_RUNTIME_FILES_H
#define SQZ_RUNTIME_FILES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "squeezebert.h"

/* dir + "/" + name (no doubled slash), malloc'd; NULL without memory. */
char *sqz_path_join(const char *dir, const char *name);

/* A regular file exists at `path`. */
bool sqz_file_exists(const char *path);

/* Reads `path` as JSON (jansson `flags`) after checking that it is a regular file of at most
 * `max_bytes`. The top level must be of type `top` (JSON_OBJECT or JSON_ARRAY). A missing
 * file gives SQZ_OK with *out NULL when `optional`, an I/O error naming the file otherwise.
 * Every other failure names the file and what was wrong. */
sqz_status sqz_json_read(const char *path, size_t max_bytes, size_t flags, json_type top,
                         bool optional, json_t **out);

#endif
