/* See runtime/files.h. */
#include "runtime/files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/error.h"

char *sqz_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s%s%s", dir, (dir[0] && dir[strlen(dir) - 1] == '/') ? "" : "/", name);
    return p;
}

bool sqz_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

sqz_status sqz_json_read(const char *path, size_t max_bytes, size_t flags, json_type top,
                         bool optional, json_t **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT && optional)
            return SQZ_OK;
        return sqz_fail(SQZ_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return sqz_fail(SQZ_ERR_IO, "%s is not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        fclose(f);
        return sqz_fail(SQZ_ERR_FORMAT, "%s is %lld bytes, more than the %zu this file may have",
                        path, (long long)st.st_size, max_bytes);
    }
    json_error_t err;
    json_t *root = json_loadf(f, flags, &err);
    fclose(f);
    if (!root)
        return sqz_fail(SQZ_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", path, err.line,
                        err.column, err.text);
    if (json_typeof(root) != top) {
        json_decref(root);
        return sqz_fail(SQZ_ERR_FORMAT, "%s: the top level is not %s", path,
                        top == JSON_ARRAY ? "a list" : "an object");
    }
    *out = root;
    return SQZ_OK;
}
