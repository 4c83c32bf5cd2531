/* The cpu backend's threads: a fixed team that takes numbered tasks from a shared counter,
 * the calling thread working too. A run ends when every task is done; a thread that has not
 * woken up by then is not waited for. (OpenMP's parallel regions end on a barrier that waits
 * for every thread of the team, so on a machine other work shares, each region waits for the
 * slowest thread to be scheduled at all: measured here at 5-10 ms per region on 2 busy cores,
 * against 0.6 ms of work.) Workers run oneDNN single-threaded (their OpenMP thread count is
 * 1); the calling thread must be set so too while it runs tasks (the backend's launch does). */
#ifndef SQZ_CPU_POOL_H
#define SQZ_CPU_POOL_H

#include <stdint.h>

#include "squeezebert.h"

typedef struct cpu_pool cpu_pool;

/* task in [0, tasks); worker in [0, threads): 0 is the calling thread */
typedef void (*cpu_task_fn)(void *arg, int64_t task, int worker);

sqz_status sqz_cpu_pool_create(int threads, cpu_pool **out);
void sqz_cpu_pool_destroy(cpu_pool *pool);
/* Runs fn for every task and returns when all are done. One run at a time per pool. */
void sqz_cpu_pool_run(cpu_pool *pool, cpu_task_fn fn, void *arg, int64_t tasks);

#endif
