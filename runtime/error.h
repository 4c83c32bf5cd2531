/* Internal error reporting: every failing path records one sentence for sqz_last_error()
 * and returns the status, so callers can write `return sqz_fail(SQZ_ERR_FORMAT, ...)`. */
#ifndef SQZ_RUNTIME_ERROR_H
#define SQZ_RUNTIME_ERROR_H

#include "squeezebert.h"

#if defined(__GNUC__)
#define SQZ_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SQZ_PRINTF(a, b)
#endif

/* Records the message (printf-style) for this thread and returns `status`. */
sqz_status sqz_fail(sqz_status status, const char *fmt, ...) SQZ_PRINTF(2, 3);

/* Prefixes the current message with more context ("loading DIR: <old message>") and
 * returns `status` unchanged. */
sqz_status sqz_fail_context(sqz_status status, const char *fmt, ...) SQZ_PRINTF(2, 3);

void sqz_clear_error(void);

/* Checks an invariant of the engine itself; a violation is a bug, reported not aborted. */
#define SQZ_CHECK_INTERNAL(cond)                                                          \
    do {                                                                                  \
        if (!(cond))                                                                      \
            return sqz_fail(SQZ_ERR_INTERNAL, "internal check failed: %s (%s:%d)", #cond, \
                            __FILE__, __LINE__);                                          \
    } while (0)

#endif
