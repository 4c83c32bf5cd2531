#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define SQZ_ERROR_CAPACITY 2048

static _Thread_local char last_error[SQZ_ERROR_CAPACITY];

static const char *const status_names[SQZ_STATUS_COUNT] = {
    [SQZ_OK] = "ok",
    [SQZ_ERR_INVALID_ARGUMENT] = "invalid argument",
    [SQZ_ERR_IO] = "i/o error",
    [SQZ_ERR_FORMAT] = "format error",
    [SQZ_ERR_UNSUPPORTED] = "unsupported",
    [SQZ_ERR_MODEL_MISMATCH] = "model mismatch",
    [SQZ_ERR_INPUT] = "invalid input",
    [SQZ_ERR_OUT_OF_MEMORY] = "out of memory",
    [SQZ_ERR_NO_DEVICE] = "no device",
    [SQZ_ERR_BACKEND] = "backend error",
    [SQZ_ERR_INTERNAL] = "internal error",
};

const char *sqz_status_str(sqz_status status)
{
    if ((unsigned)status >= SQZ_STATUS_COUNT || !status_names[status])
        return "unknown status";
    return status_names[status];
}

const char *sqz_last_error(void) { return last_error; }

void sqz_clear_error(void) { last_error[0] = '\0'; }

sqz_status sqz_fail(sqz_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}

sqz_status sqz_fail_context(sqz_status status, const char *fmt, ...)
{
    char previous[SQZ_ERROR_CAPACITY];
    memcpy(previous, last_error, sizeof previous);
    char prefix[SQZ_ERROR_CAPACITY];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    snprintf(last_error, sizeof last_error, "%s: %s", prefix, previous);
    return status;
}
