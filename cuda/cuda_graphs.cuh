/* CUDA graphs for the CUDA backend (cuda/cuda_backend.cu includes it after the launches):
 * the cache of captured runs, and run_begin / run_end, which capture a run on its key's
 * second time and replay it after that. */
#ifndef SQZ_CUDA_GRAPHS_CUH
#define SQZ_CUDA_GRAPHS_CUH

namespace {

/* ---- CUDA graphs ----------------------------------------------------------------------
 * A run's launches depend only on the plan's bucket, the run's dims and the two buffers, so
 * one graph per such key is captured on the key's second run (one-off shapes never pay the
 * capture) and replayed on every later one. */

void graph_drop(graph_entry *e)
{
    if (e->exec)
        cudaGraphExecDestroy(e->exec);
    memset(e, 0, sizeof *e);
}

int graph_find(cuda_ctx *c, const sqz_binding *b, const sqz_run_dims *dims)
{
    int victim = 0;
    for (int i = 0; i < GRAPH_CACHE; i++) {
        graph_entry *e = &c->graphs[i];
        if (e->runs && e->arena == b->arena && e->weights == b->weights &&
            memcmp(&e->bucket, &b->plan->bucket, sizeof e->bucket) == 0 && memcmp(&e->dims, dims, sizeof *dims) == 0)
            return i;
        if (!e->runs || (c->graphs[victim].runs && e->last_used < c->graphs[victim].last_used))
            victim = i;
    }
    graph_entry *e = &c->graphs[victim]; /* a new key takes the least recently used slot */
    graph_drop(e);
    e->bucket = b->plan->bucket;
    e->dims = *dims;
    e->arena = b->arena;
    e->weights = b->weights;
    return victim;
}

sqz_status cuda_run_begin(void *ctx, const sqz_binding *b, const sqz_run_dims *dims, bool *replayed)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    *replayed = false;
    if (!c->use_graphs)
        return SQZ_OK;
    sqz_status st = ensure_shadow(c, b->weights); /* never inside a capture */
    if (st != SQZ_OK)
        return st;
    const int i = graph_find(c, b, dims);
    graph_entry *e = &c->graphs[i];
    e->last_used = ++c->clock;
    if (e->exec) {
        CUDA_TRY(cudaGraphLaunch(e->exec, c->stream));
        e->runs++;
        c->graphs_replayed++;
        *replayed = true;
        return SQZ_OK;
    }
    if (e->runs++ == 0)
        return SQZ_OK; /* first run of this key: launch directly */
    CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = i;
    return SQZ_OK;
}

sqz_status cuda_run_end(void *ctx, const sqz_binding *b, const sqz_run_dims *dims, bool ok)
{
    (void)b;
    (void)dims;
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (c->capturing < 0)
        return SQZ_OK;
    graph_entry *e = &c->graphs[c->capturing];
    c->capturing = -1;
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(c->stream, &graph);
    if (!ok || err != cudaSuccess) {
        if (graph)
            cudaGraphDestroy(graph);
        graph_drop(e);
        cudaGetLastError(); /* clear a capture error; the launch error was reported */
        if (ok)
            return sqz_fail(SQZ_ERR_BACKEND, "%s: cudaStreamEndCapture failed: %s (%s) at %s:%d", SQZ_CUDA_NAME,
                            cudaGetErrorName(err), cudaGetErrorString(err), __FILE__, __LINE__);
        return SQZ_OK;
    }
    err = cudaGraphInstantiate(&e->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
        e->exec = NULL;
        graph_drop(e);
        return sqz_fail(SQZ_ERR_BACKEND, "%s: cudaGraphInstantiate failed: %s (%s) at %s:%d", SQZ_CUDA_NAME,
                        cudaGetErrorName(err), cudaGetErrorString(err), __FILE__, __LINE__);
    }
    /* capturing recorded the launches without running them: run them now */
    c->graphs_captured++;
    CUDA_TRY(cudaGraphLaunch(e->exec, c->stream));
    return SQZ_OK;
}

} // namespace

#endif
