/* The batching core of `sqz serve`: requests encoded on their connections' threads wait in
 * one queue; one inference thread per device, the only user of that device's session, cuts
 * the front of the queue into packed runs under a token budget and answers each request's
 * items. No HTTP and no JSON here
 * (cli/serve_http.c speaks those); the metrics it keeps are printed as Prometheus text. */
#ifndef SQZ_TOOLS_SERVE_ENGINE_H
#define SQZ_TOOLS_SERVE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "squeezebert_pipeline.h"

typedef struct serve_engine serve_engine;

/* The text the warm-up run embeds before the server says it is ready (tests use it to count
 * the launches of that run). */
#define SERVE_WARM_UP_TEXT "warm up"

typedef struct serve_engine_options {
    long max_batch_tokens;        /* real tokens per packed run (a longer item runs alone) */
    long max_concurrent_requests; /* admitted requests at once; more are refused (429) */
    bool keep_logits;             /* copy each item's "logits" row (classify: raw scores) */
} serve_engine_options;

/* One request's items on their way through the queue. The caller fills items/n (all encoded
 * without error) and reads the rest after serve_engine_run. */
typedef struct serve_request {
    sqz_pipeline_item **items;
    size_t n;
    float *logits;          /* keep_logits: [n][num_labels], filled by the engine */
    bool backend_failed;    /* a run failed for at least one item (its error says why) */
    double queue_seconds, inference_seconds;
    /* the engine's own */
    size_t next, remaining;
    double queued_at;
    struct serve_request *later;
} serve_request;

/* One device the engine runs on: its session (borrowed; used only by the engine's thread for
 * it once started) and its name in /metrics ("cpu", "cuda:1", ...). */
typedef struct serve_device {
    sqz_session *session;
    const char *name;
} serve_device;

/* Borrows the pipeline and the devices' sessions; copies the names. */
int serve_engine_create(const sqz_pipeline *pipeline, const serve_device *devices, int n_devices,
                        const serve_engine_options *options, serve_engine **out);
/* Runs SERVE_WARM_UP_TEXT on every device's session (on the calling thread), then starts one
 * inference thread per device. Non-zero with the reason in `why` when a warm-up fails. */
int serve_engine_start(serve_engine *engine, char *why, size_t size);
/* Waits for the queue to empty and the inference threads to end, then frees the engine. */
void serve_engine_free(serve_engine *engine);

/* Takes one of max_concurrent_requests places; false when all are taken (answer 429). */
bool serve_engine_admit(serve_engine *engine);
/* Gives the place back (after the request is answered, or refused before running). */
void serve_engine_leave(serve_engine *engine);
/* Requests admitted and not yet left. */
long serve_engine_in_flight(serve_engine *engine);

/* Queues the request's items and blocks until every one has an answer or an error. */
void serve_engine_run(serve_engine *engine, serve_request *request);

/* ---- metrics ------------------------------------------------------------------------- */

/* Outcome classes counted per request (TEI's error types, and success). */
typedef enum serve_outcome {
    SERVE_OK = 0,
    SERVE_VALIDATION,
    SERVE_TOKENIZER,
    SERVE_OVERLOADED,
    SERVE_BACKEND,
    SERVE_UNHEALTHY,
    SERVE_OUTCOME_COUNT
} serve_outcome;

/* TEI's error_type for an outcome ("Validation", ...; "" for SERVE_OK). */
const char *serve_outcome_name(serve_outcome outcome);
/* Counts one finished request and how long it took. */
void serve_engine_count(serve_engine *engine, serve_outcome outcome, double seconds);
/* The metrics as Prometheus text exposition (malloc'd; NULL without memory). */
char *serve_engine_metrics(serve_engine *engine);

#endif
