/* The memory a session shares with its results: host blocks given back by sqz_result_free
 * for the next runs (pinned where the backend has host_alloc), and device buffers lent to
 * results left on the device. Results may be freed in any thread and after their session,
 * so the pool is locked and reference-counted (the session and every result holding
 * something of it). */
#ifndef SQZ_RUNTIME_OUTPUTS_H
#define SQZ_RUNTIME_OUTPUTS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "runtime/backend.h"

#define SQZ_POOL_IDLE_BLOCKS 8 /* two runs in flight plus what a consumer holds */

typedef struct sqz_lease {
    sqz_buffer *buffer; /* NULL: slot free */
    size_t bytes;
    bool returned;      /* the result let go; the session frees it */
} sqz_lease;

typedef struct sqz_pool {
    pthread_mutex_t lock;
    int refs;
    bool orphaned; /* the session is gone: blocks coming back are freed */
    void (*host_free)(void *);
    struct {
        void *memory;
        size_t bytes;
    } idle[SQZ_POOL_IDLE_BLOCKS];
    size_t n_idle;
    sqz_lease *leases;
    size_t n_leases;
} sqz_pool;

sqz_status sqz_pool_create(void (*host_free)(void *), sqz_pool **out);
void sqz_pool_ref(sqz_pool *pool);
/* The smallest idle block of at least `bytes` (its size in *capacity), or NULL. */
void *sqz_pool_take_block(sqz_pool *pool, size_t bytes, size_t *capacity);
void sqz_pool_give_block(sqz_pool *pool, void *block, size_t capacity);
/* Records a device buffer lent to a result; *lease names it for sqz_pool_release_result. */
sqz_status sqz_pool_lend(sqz_pool *pool, sqz_buffer *buffer, size_t bytes, int *lease);
/* A lent buffer whose result has been freed (the session reuses or frees it; its size in
 * *bytes), or NULL. */
sqz_buffer *sqz_pool_collect_returned(sqz_pool *pool, size_t *bytes);
/* A result lets go of its block (NULL: none) and lease (-1: none) and its reference. */
void sqz_pool_release_result(sqz_pool *pool, void *block, size_t capacity, int lease);
/* Session teardown: every buffer still lent, one per call from *index (start at 0), then NULL. */
sqz_buffer *sqz_pool_orphan(sqz_pool *pool, size_t *index);
/* The session's reference goes: idle blocks are freed, later ones too. */
void sqz_pool_session_done(sqz_pool *pool);

#endif
