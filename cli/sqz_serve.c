/* sqz serve: an HTTP server speaking Hugging Face text-embeddings-inference's API over the
 * text pipeline (the contract is docs/serve.md). This file is the command line: options, the
 * model, the session, and the lifecycle (warm up, serve, drain on SIGTERM/SIGINT, stop);
 * cli/serve_http.c answers the routes and cli/serve_engine.c batches. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "squeezebert.h"
#include "squeezebert_pipeline.h"
#include "cli/cli_options.h"
#include "cli/sqz_commands.h"

#define EXIT_USAGE 2
#define MAX_DEVICES 32

static const char serve_help[] =
    "usage: sqz serve --model DIR [options]\n"
    "\n"
    "Serves the model over HTTP with text-embeddings-inference's API: POST /embed,\n"
    "/v1/embeddings (OpenAI), /predict, /rerank, /tokenize and /; GET /health, /info,\n"
    "/metrics. See docs/serve.md.\n"
    "\n"
    "  --model DIR                     checkpoint folder (embedding or classification model)\n"
    "  --backend B                     auto (default), cuda, opencl, cpu, cpu_ref, cuda-sim\n"
    "  --device D                      the backend's device (sqz devices lists them)\n"
    "  --devices LIST                  several devices, one session each, batches spread over\n"
    "                                  them: BACKEND[:DEVICE],... (e.g. cuda:0,cuda:1) or all\n"
    "                                  (every device of --backend)\n"
    "  --precision P                   fp32 (default), tf32, fp16 or bf16 where the backend has it\n"
    "  --host ADDR                     address to listen on (default 127.0.0.1)\n"
    "  --port P                        port (default 3000; 0: any free one, printed at start)\n"
    "  --max-batch-tokens N            tokens per packed run (default 16384)\n"
    "  --max-concurrent-requests N     requests running at once; more get 429 (default 512)\n"
    "  --max-client-batch-size N       inputs per request; more get 413 (default 32)\n"
    "  --payload-limit BYTES           request body size; more gets 413 (default 2000000)\n"
    "  --auto-truncate                 truncate long inputs even when a request does not ask\n";

#ifndef SQZ_HAVE_MICROHTTPD

int sqz_cli_serve(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(serve_help, stdout);
        return 0;
    }
    fprintf(stderr, "sqz serve: this sqz was built without libmicrohttpd (install libmicrohttpd-dev, "
                    "e.g. with tools/install_deps.sh, and build again)\n");
    return 1;
}

#else

#include "cli/serve_engine.h"
#include "cli/serve_http.h"

typedef struct serve_options {
    const char *model, *backend, *device, *devices, *host;
    sqz_precision precision;
    long port, max_batch_tokens, max_concurrent, max_client_batch, payload_limit;
    bool auto_truncate;
} serve_options;

static int parse_options(int argc, char **argv, serve_options *o)
{
    cli_option opts[] = {
        {"model", true, NULL},
        {"backend", true, NULL},
        {"device", true, NULL},
        {"devices", true, NULL},
        {"precision", true, NULL},
        {"host", true, NULL},
        {"port", true, NULL},
        {"max-batch-tokens", true, NULL},
        {"max-concurrent-requests", true, NULL},
        {"max-client-batch-size", true, NULL},
        {"payload-limit", true, NULL},
        {"auto-truncate", false, NULL},
    };
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("serve", argc, argv, opts, n))
        return EXIT_USAGE;
    *o = (serve_options){.port = 3000, .max_batch_tokens = 16384, .max_concurrent = 512,
                         .max_client_batch = 32, .payload_limit = 2000000};
    o->model = cli_get(opts, n, "model");
    o->backend = cli_get(opts, n, "backend") ? cli_get(opts, n, "backend") : "auto";
    o->device = cli_get(opts, n, "device");
    o->devices = cli_get(opts, n, "devices");
    o->host = cli_get(opts, n, "host") ? cli_get(opts, n, "host") : "127.0.0.1";
    o->auto_truncate = cli_get(opts, n, "auto-truncate") != NULL;
    if (!o->model) {
        fprintf(stderr, "sqz serve: --model is required\n\n%s", serve_help);
        return EXIT_USAGE;
    }
    if (o->device && o->devices) {
        fprintf(stderr, "sqz serve: --device and --devices contradict each other (--devices takes BACKEND:DEVICE,...)\n");
        return EXIT_USAGE;
    }
    if (sqz_precision_from_name(cli_get(opts, n, "precision"), &o->precision) != SQZ_OK) {
        fprintf(stderr, "sqz serve: %s\n", sqz_last_error());
        return EXIT_USAGE;
    }
    const struct {
        const char *name;
        long min, max;
        long *out;
    } numbers[] = {
        {"port", 0, 65535, &o->port},
        {"max-batch-tokens", 16, 1L << 24, &o->max_batch_tokens},
        {"max-concurrent-requests", 1, 100000, &o->max_concurrent},
        {"max-client-batch-size", 1, 1L << 20, &o->max_client_batch},
        {"payload-limit", 1, 1L << 34, &o->payload_limit},
    };
    for (size_t i = 0; i < sizeof numbers / sizeof *numbers; i++) {
        const char *text = cli_get(opts, n, numbers[i].name);
        if (text && cli_int("serve", numbers[i].name, text, numbers[i].min, numbers[i].max, numbers[i].out))
            return EXIT_USAGE;
    }
    return 0;
}

/* The testing hook SQZ_SERVE_WARM_UP_GATE=PATH (docs/serve.md): before the warm-up, wait
 * until PATH (a FIFO) is opened for writing and closed, so a test sees the server while it is
 * not ready for as long as it needs, without racing the warm-up. Non-zero when PATH cannot be
 * opened. */
static int wait_for_gate(void)
{
    const char *path = getenv("SQZ_SERVE_WARM_UP_GATE");
    if (!path || !*path)
        return 0;
    fprintf(stderr, "sqz serve: warm-up held until %s is written and closed (SQZ_SERVE_WARM_UP_GATE)\n", path);
    const int fd = open(path, O_RDONLY); /* a FIFO: blocks until a writer comes */
    if (fd < 0) {
        perror("sqz serve: SQZ_SERVE_WARM_UP_GATE");
        return -1;
    }
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) /* until the writer closes */
        ;
    close(fd);
    return 0;
}

/* /info's model_dtype, in TEI's words (tf32 keeps float32 weights and outputs). */
static const char *dtype_name(sqz_precision precision)
{
    switch (precision) {
    case SQZ_PRECISION_FP16: return "float16";
    case SQZ_PRECISION_BF16: return "bfloat16";
    default: return "float32";
    }
}

/* The embedding's pooling modes as /info names them ("mean", "cls+mean", ...). */
static void pooling_name(const sqz_model *model, const sqz_tokenizer *tok, char *out, size_t size)
{
    snprintf(out, size, "unknown");
    sqz_embedder *emb = NULL;
    sqz_embedder_info info;
    if (sqz_embedder_load(model, &emb) == SQZ_OK && sqz_embedder_use_tokenizer(emb, tok) == SQZ_OK &&
        sqz_embedder_get_info(emb, &info) == SQZ_OK) {
        size_t len = 0;
        out[0] = '\0';
        for (int i = 0; i < info.pool_count && len < size; i++)
            len += (size_t)snprintf(out + len, size - len, "%s%s", i ? "+" : "", sqz_pool_mode_name(info.pool[i]));
    }
    sqz_embedder_free(emb);
}

int sqz_cli_serve(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(serve_help, stdout);
        return 0;
    }
    serve_options o;
    int rc = parse_options(argc, argv, &o);
    if (rc)
        return rc;
    rc = 1;
    sqz_model *model = NULL;
    sqz_tokenizer *tok = NULL;
    sqz_pipeline *pipe = NULL;
    sqz_session *sessions[MAX_DEVICES] = {NULL};
    serve_device devices[MAX_DEVICES];
    char names[MAX_DEVICES][sizeof((cli_device *)0)->backend + sizeof((cli_device *)0)->device + 1];
    int n_devices = 0;
    serve_engine *engine = NULL;
    serve_http *http = NULL;
    sqz_status st;
    if ((st = cli_load_model(o.model, &model)) != SQZ_OK || (st = sqz_tokenizer_load(o.model, &tok)) != SQZ_OK) {
        fprintf(stderr, "sqz serve: %s: %s\n", sqz_status_str(st), sqz_last_error());
        goto done;
    }
    /* embeddings come back unnormalised; each request's "normalize" decides (TEI's default: on) */
    const sqz_pipeline_options po = {.task = SQZ_TASK_AUTO, .batch_tokens = o.max_batch_tokens,
                                     .normalize = SQZ_NORMALIZE_OFF};
    if ((st = sqz_pipeline_create(model, tok, &po, &pipe)) != SQZ_OK) {
        fprintf(stderr, "sqz serve: %s: %s\n", sqz_status_str(st), sqz_last_error());
        goto done;
    }
    sqz_pipeline_info info;
    sqz_pipeline_get_info(pipe, &info);
    if (info.task != SQZ_TASK_EMBED && info.task != SQZ_TASK_CLASSIFY) {
        fprintf(stderr, "sqz serve: this checkpoint's task is %s; the server answers embedding and "
                        "sequence-classification models (sqz infer answers the others)\n", sqz_task_name(info.task));
        rc = EXIT_USAGE;
        goto done;
    }
    const char *backend = cli_pick_backend(o.backend);
    cli_device chosen[MAX_DEVICES];
    const int n_chosen = cli_resolve_devices("serve", backend, o.device, o.devices, chosen, MAX_DEVICES);
    if (n_chosen == 0) {
        rc = EXIT_USAGE;
        goto done;
    }
    for (; n_devices < n_chosen; n_devices++) {
        const cli_device *d = &chosen[n_devices];
        snprintf(names[n_devices], sizeof names[0], "%s%s%s", d->backend, d->device[0] ? ":" : "", d->device);
        sqz_session_options so = cli_session_options(d->backend, d->device[0] ? d->device : NULL, o.precision);
        if ((st = sqz_session_create(model, &so, &sessions[n_devices])) != SQZ_OK ||
            (st = sqz_pipeline_use_session(pipe, sessions[n_devices])) != SQZ_OK) {
            fprintf(stderr, "sqz serve: %s: %s: %s\n", names[n_devices], sqz_status_str(st), sqz_last_error());
            n_devices++; /* its session, if made, is freed below */
            goto done;
        }
        devices[n_devices] = (serve_device){sessions[n_devices], names[n_devices]};
    }
    const serve_engine_options eo = {.max_batch_tokens = o.max_batch_tokens,
                                     .max_concurrent_requests = o.max_concurrent,
                                     .keep_logits = info.task == SQZ_TASK_CLASSIFY};
    if (serve_engine_create(pipe, devices, n_devices, &eo, &engine) != 0) {
        fprintf(stderr, "sqz serve: out of memory\n");
        goto done;
    }
    /* the signals are taken by sigwait below: blocked before any thread starts, so every
     * thread inherits the mask and none is interrupted by them */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-answer is that connection's error only */
    char pooling[128] = "";
    if (info.task == SQZ_TASK_EMBED)
        pooling_name(model, tok, pooling, sizeof pooling);
    const serve_http_options ho = {
        .host = o.host, .port = (int)o.port, .payload_limit = (size_t)o.payload_limit,
        .max_client_batch_size = o.max_client_batch, .auto_truncate = o.auto_truncate,
        .max_concurrent_requests = o.max_concurrent, .max_batch_tokens = o.max_batch_tokens,
        .model_id = o.model, .model_dtype = dtype_name(o.precision), .pooling = pooling,
    };
    if (serve_http_start(pipe, engine, &ho, &http) != 0)
        goto done;
    fprintf(stderr, "sqz serve: listening on http://%s%s%s:%d (%s on %s%s); warming up\n",
            strchr(o.host, ':') ? "[" : "", o.host, strchr(o.host, ':') ? "]" : "", serve_http_port(http),
            sqz_task_name(info.task), sqz_session_device(sessions[0]),
            n_devices > 1 ? ", and more below" : "");
    for (int i = 1; i < n_devices; i++)
        fprintf(stderr, "sqz serve: device %d: %s\n", i, sqz_session_device(sessions[i]));
    if (wait_for_gate() != 0)
        goto done;
    char why[1024];
    if (serve_engine_start(engine, why, sizeof why) != 0) {
        fprintf(stderr, "sqz serve: the warm-up run failed: %s\n", why);
        goto done;
    }
    serve_http_set_ready(http);
    fprintf(stderr, "sqz serve: ready\n");
    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "sqz serve: %s: answering the requests in flight, then stopping\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT");
    serve_http_drain(http);
    rc = 0;
done:
    serve_http_stop(http);
    serve_engine_free(engine);
    for (int i = 0; i < n_devices; i++)
        sqz_session_free(sessions[i]);
    sqz_pipeline_free(pipe);
    sqz_tokenizer_free(tok);
    sqz_model_free(model);
    if (rc == 0)
        fprintf(stderr, "sqz serve: stopped\n");
    return rc;
}

#endif
