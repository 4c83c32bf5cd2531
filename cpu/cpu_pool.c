/* A team of worker threads sharing numbered tasks (cpu_pool.h says why not OpenMP's). */
#include "cpu/cpu_pool.h"

#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "runtime/error.h"

typedef struct job {
    cpu_task_fn fn;
    void *arg;
    int64_t tasks;
    atomic_llong next, done;
} job;

struct cpu_pool {
    int threads;
    pthread_t *workers;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    /* written under mu; read without it only while spinning (see spin_until) */
    atomic_ullong generation; /* bumped for every run, so a worker takes each job at most once */
    job *current;             /* NULL between runs */
    atomic_int active;        /* workers inside the current job */
    bool stop;
};

/* A run's launches follow each other within tens of microseconds, and waking a thread that
 * sleeps on a condition variable took about as long on this VM, twice per launch (the worker
 * to start, the caller to see the end). So both sides first poll for a while, then sleep as
 * before: on a busy machine a thread that has lost its core costs at most this much polling. */
#define SPIN_NS 100000

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Polls until done(pool, arg) or SPIN_NS pass; the caller then checks again under the lock. */
static void spin_until(bool (*done)(cpu_pool *, const void *), cpu_pool *pool, const void *arg)
{
    const int64_t end = now_ns() + SPIN_NS;
    for (int i = 1; !done(pool, arg); i++) {
        if (i % 16 == 0) { /* on a busy machine, let whoever waits for this core run */
            sched_yield();
            if (now_ns() > end)
                return;
        }
        cpu_relax();
    }
}

static bool new_run(cpu_pool *pool, const void *seen)
{
    return atomic_load_explicit(&pool->generation, memory_order_acquire) != *(const uint64_t *)seen;
}

static bool run_finished(cpu_pool *pool, const void *j)
{
    const job *run = j;
    return atomic_load(&run->done) == run->tasks && atomic_load(&pool->active) == 0;
}

/* Takes tasks until none is left; true when this thread finished the last one. */
static bool work(job *j, int worker)
{
    bool last = false;
    for (;;) {
        const int64_t t = atomic_fetch_add(&j->next, 1);
        if (t >= j->tasks)
            return last;
        j->fn(j->arg, t, worker);
        last = atomic_fetch_add(&j->done, 1) + 1 == j->tasks;
    }
}

typedef struct worker_start {
    cpu_pool *pool;
    int index;
} worker_start;

static void *worker_main(void *p)
{
    worker_start *ws = p;
    cpu_pool *pool = ws->pool;
    const int index = ws->index;
    free(ws);
    omp_set_num_threads(1); /* oneDNN inside a task stays on this thread */
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        if (!pool->stop && pool->generation == seen) {
            pthread_mutex_unlock(&pool->mu);
            spin_until(new_run, pool, &seen); /* stop is seen under the lock below */
            pthread_mutex_lock(&pool->mu);
        }
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->wake, &pool->mu);
        if (pool->stop)
            break;
        seen = pool->generation;
        job *j = pool->current;
        if (!j)
            continue; /* woke after that run had ended */
        pool->active++;
        pthread_mutex_unlock(&pool->mu);
        work(j, index);
        pthread_mutex_lock(&pool->mu);
        if (--pool->active == 0 && atomic_load(&j->done) == j->tasks)
            pthread_cond_signal(&pool->idle);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

void sqz_cpu_pool_destroy(cpu_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->started; i++)
        pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->idle);
    pthread_mutex_destroy(&pool->mu);
    free(pool->workers);
    free(pool);
}

sqz_status sqz_cpu_pool_create(int threads, cpu_pool **out)
{
    cpu_pool *pool = calloc(1, sizeof *pool);
    if (!pool || !(pool->workers = calloc((size_t)(threads > 1 ? threads - 1 : 1), sizeof *pool->workers))) {
        free(pool);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    }
    pool->threads = threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->idle, NULL);
    for (int i = 1; i < threads; i++) {
        worker_start *ws = malloc(sizeof *ws);
        if (ws)
            *ws = (worker_start){pool, i};
        if (!ws || pthread_create(&pool->workers[pool->started], NULL, worker_main, ws) != 0) {
            free(ws);
            sqz_cpu_pool_destroy(pool);
            return sqz_fail(SQZ_ERR_BACKEND, "cpu: cannot start compute thread %d of %d", i + 1, threads);
        }
        pool->started++;
    }
    *out = pool;
    return SQZ_OK;
}

void sqz_cpu_pool_run(cpu_pool *pool, cpu_task_fn fn, void *arg, int64_t tasks)
{
    if (tasks <= 0)
        return;
    job j = {fn, arg, tasks, 0, 0};
    if (pool->threads == 1 || tasks == 1) {
        work(&j, 0);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->current = &j;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    work(&j, 0);
    spin_until(run_finished, pool, &j);
    pthread_mutex_lock(&pool->mu);
    while (atomic_load(&j.done) < tasks || pool->active > 0)
        pthread_cond_wait(&pool->idle, &pool->mu);
    pool->current = NULL;
    pthread_mutex_unlock(&pool->mu);
}
