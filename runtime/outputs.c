/* Outputs in the caller's layout: the host implementation of sqz_output_format (the
 * reference for the backends' own, and the fallback of backends without one), fp16
 * conversion, and the pool of result memory a session shares with its results. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend.h"
#include "runtime/error.h"
#include "runtime/output_rows.h"
#include "runtime/outputs.h"
#include "runtime/tensor_file.h"

/* ---- fp16 ------------------------------------------------------------------------------- */

/* the public names of the loaders' conversions (round to nearest even; NaN stays NaN) */
uint16_t sqz_float_to_half(float value) { return sqz_f32_to_f16(value); }

float sqz_half_to_float(uint16_t bits) { return sqz_f16_to_f32(bits); }

/* ---- the layout of one output --------------------------------------------------------- */

void sqz_format_output_host(const sqz_output_format *f, const float *src, int64_t src_cols,
                            const int32_t *seq_offsets, const int32_t *positions, const int32_t *key_valid,
                            void *dst)
{
    const int64_t n = f->col_count;
    for (int64_t row = 0; row < f->rows; row++) {
        const int64_t from = sqz_output_source_row(row, f->width, seq_offsets, positions, key_valid);
        const float *in = from >= 0 ? src + from * src_cols + f->col_begin : NULL;
        if (f->half) {
            uint16_t *out = (uint16_t *)dst + row * n;
            for (int64_t c = 0; c < n; c++)
                out[c] = in ? sqz_float_to_half(in[c]) : 0;
        } else {
            float *out = (float *)dst + row * n;
            if (in)
                memcpy(out, in, (size_t)n * sizeof *out);
            else
                memset(out, 0, (size_t)n * sizeof *out);
        }
    }
}

/* ---- the pool ------------------------------------------------------------------------- */

sqz_status sqz_pool_create(void (*host_free)(void *), sqz_pool **out)
{
    sqz_pool *p = calloc(1, sizeof *p);
    if (!p)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    pthread_mutex_init(&p->lock, NULL);
    p->refs = 1;
    p->host_free = host_free;
    *out = p;
    return SQZ_OK;
}

static void free_host(const sqz_pool *p, void *memory)
{
    if (p->host_free)
        p->host_free(memory);
    else
        free(memory);
}

/* Drops one reference (the lock held); frees the pool with the last one. */
static void pool_unref_locked(sqz_pool *p)
{
    if (--p->refs > 0) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_destroy(&p->lock);
    free(p->leases);
    free(p);
}

void sqz_pool_ref(sqz_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->refs++;
    pthread_mutex_unlock(&p->lock);
}

void *sqz_pool_take_block(sqz_pool *p, size_t bytes, size_t *capacity)
{
    pthread_mutex_lock(&p->lock);
    int best = -1;
    for (size_t i = 0; i < p->n_idle; i++)
        if (p->idle[i].bytes >= bytes && (best < 0 || p->idle[i].bytes < p->idle[best].bytes))
            best = (int)i;
    void *block = NULL;
    if (best >= 0) {
        block = p->idle[best].memory;
        *capacity = p->idle[best].bytes;
        p->idle[best] = p->idle[--p->n_idle];
    }
    pthread_mutex_unlock(&p->lock);
    return block;
}

void sqz_pool_give_block(sqz_pool *p, void *block, size_t capacity)
{
    pthread_mutex_lock(&p->lock);
    if (!p->orphaned && p->n_idle < SQZ_POOL_IDLE_BLOCKS) {
        p->idle[p->n_idle].memory = block;
        p->idle[p->n_idle++].bytes = capacity;
        block = NULL;
    } else if (!p->orphaned && p->n_idle > 0) {
        /* full: keep the larger block, so the pool ends up holding what runs need */
        size_t smallest = 0;
        for (size_t i = 1; i < p->n_idle; i++)
            if (p->idle[i].bytes < p->idle[smallest].bytes)
                smallest = i;
        if (p->idle[smallest].bytes < capacity) {
            void *old = p->idle[smallest].memory;
            p->idle[smallest].memory = block;
            p->idle[smallest].bytes = capacity;
            block = old;
        }
    }
    pthread_mutex_unlock(&p->lock);
    if (block)
        free_host(p, block);
}

sqz_status sqz_pool_lend(sqz_pool *p, sqz_buffer *buffer, size_t bytes, int *lease)
{
    pthread_mutex_lock(&p->lock);
    size_t i = 0;
    while (i < p->n_leases && p->leases[i].buffer)
        i++;
    if (i == p->n_leases) {
        sqz_lease *bigger = realloc(p->leases, (p->n_leases + 1) * sizeof *bigger);
        if (!bigger) {
            pthread_mutex_unlock(&p->lock);
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        }
        p->leases = bigger;
        p->n_leases++;
    }
    p->leases[i].buffer = buffer;
    p->leases[i].bytes = bytes;
    p->leases[i].returned = false;
    pthread_mutex_unlock(&p->lock);
    *lease = (int)i;
    return SQZ_OK;
}

sqz_buffer *sqz_pool_collect_returned(sqz_pool *p, size_t *bytes)
{
    sqz_buffer *found = NULL;
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_leases && !found; i++)
        if (p->leases[i].buffer && p->leases[i].returned) {
            found = p->leases[i].buffer;
            *bytes = p->leases[i].bytes;
            p->leases[i].buffer = NULL;
        }
    pthread_mutex_unlock(&p->lock);
    return found;
}

void sqz_pool_release_result(sqz_pool *p, void *block, size_t capacity, int lease)
{
    if (block)
        sqz_pool_give_block(p, block, capacity);
    pthread_mutex_lock(&p->lock);
    /* a device buffer goes back to the session, which frees it on its own thread (a backend
     * context is used by one thread at a time); gone already if the session is */
    if (lease >= 0 && (size_t)lease < p->n_leases && p->leases[lease].buffer)
        p->leases[lease].returned = true;
    pool_unref_locked(p);
}

sqz_buffer *sqz_pool_orphan(sqz_pool *p, size_t *index)
{
    pthread_mutex_lock(&p->lock);
    sqz_buffer *found = NULL;
    for (; *index < p->n_leases && !found; (*index)++)
        if (p->leases[*index].buffer) {
            found = p->leases[*index].buffer;
            p->leases[*index].buffer = NULL;
        }
    pthread_mutex_unlock(&p->lock);
    return found;
}

void sqz_pool_session_done(sqz_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->orphaned = true;
    for (size_t i = 0; i < p->n_idle; i++)
        free_host(p, p->idle[i].memory);
    p->n_idle = 0;
    pool_unref_locked(p);
}
