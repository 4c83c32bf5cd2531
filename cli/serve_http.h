/* The HTTP side of `sqz serve` (libmicrohttpd, one thread per connection): the routes of
 * Hugging Face text-embeddings-inference (TEI), their JSON in and out, and their error classes
 * and status codes. The contract is docs/serve.md; batching is cli/serve_engine.c's. */
#ifndef SQZ_TOOLS_SERVE_HTTP_H
#define SQZ_TOOLS_SERVE_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "squeezebert_pipeline.h"
#include "cli/serve_engine.h"

typedef struct serve_http_options {
    const char *host;            /* IPv4 or IPv6 address to listen on */
    int port;                    /* 0: any free port (the one taken is printed) */
    size_t payload_limit;        /* request body bytes; more is 413 */
    long max_client_batch_size;  /* inputs per request; more is 413 */
    long max_concurrent_requests, max_batch_tokens; /* the engine's, for /info */
    bool auto_truncate;          /* truncate even when a request does not ask */
    const char *model_id;        /* /info's model_id (the folder) */
    const char *model_dtype;     /* /info's model_dtype ("float32", ...) */
    const char *pooling;         /* /info's pooling of an embedding model */
} serve_http_options;

typedef struct serve_http serve_http;

/* Starts listening (requests are 503 Unhealthy until serve_http_set_ready). Non-zero with a
 * message printed when the address cannot be bound. */
int serve_http_start(const sqz_pipeline *pipeline, serve_engine *engine,
                     const serve_http_options *options, serve_http **out);
/* The port listened on. */
int serve_http_port(const serve_http *server);
void serve_http_set_ready(serve_http *server);
/* New requests become 503 Unhealthy; returns once every admitted request's answer is sent. */
void serve_http_drain(serve_http *server);
/* Stops listening, ends the connections and frees the server. */
void serve_http_stop(serve_http *server);

#endif
