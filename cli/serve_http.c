/* The HTTP side of `sqz serve` (see cli/serve_http.h). Each connection has its own thread
 * (libmicrohttpd's thread-per-connection mode), which reads the body, parses it, encodes its
 * texts (tokenization runs on these threads, in parallel) and then blocks in the engine until
 * its items are answered, so a slow or vanished client holds only its own thread. */
#include "cli/serve_http.h"
#include "cli/cli_options.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))
#define CONNECTION_TIMEOUT_S 60 /* a client silent this long is dropped */
#define SQZ_SERVE_VERSION "0.1.0"

/* Status codes by number: libmicrohttpd renames its constants between versions. */
enum {
    HTTP_OK = 200,
    HTTP_NOT_FOUND = 404,
    HTTP_TOO_LARGE = 413,
    HTTP_UNPROCESSABLE = 422,
    HTTP_FAILED_DEPENDENCY = 424,
    HTTP_TOO_MANY = 429,
    HTTP_INTERNAL = 500,
    HTTP_UNAVAILABLE = 503,
};

struct serve_http {
    const sqz_pipeline *pipeline;
    serve_engine *engine;
    serve_http_options opt;
    sqz_pipeline_info info;
    struct MHD_Daemon *daemon;
    int port;
    atomic_bool ready, draining;
};

/* One connection's request as its body arrives. */
typedef struct upload {
    char *body;
    size_t len, cap;
    bool too_large;
    bool holds_place; /* admitted: the place is given back once the answer is sent */
    double started;
} upload;

/* ---- responses -------------------------------------------------------------------------- */

/* TEI's status code for each error type. */
static unsigned status_of(serve_outcome outcome)
{
    switch (outcome) {
    case SERVE_OK: return HTTP_OK;
    case SERVE_VALIDATION: return HTTP_TOO_LARGE;
    case SERVE_TOKENIZER: return HTTP_UNPROCESSABLE;
    case SERVE_OVERLOADED: return HTTP_TOO_MANY;
    case SERVE_BACKEND: return HTTP_FAILED_DEPENDENCY;
    case SERVE_UNHEALTHY: return HTTP_UNAVAILABLE;
    default: return HTTP_INTERNAL;
    }
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, char *text,
                                 const char *content_type)
{
    struct MHD_Response *r = text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE)
                                  : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    const enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Sends and releases `body`; a body that cannot be printed (no memory) is a 500. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_FLAGS) : NULL;
    json_decref(body);
    if (!text)
        return send_text(c, HTTP_INTERNAL,
                         strdup("{\"error\":\"out of memory\",\"error_type\":\"Backend\"}"), "application/json");
    return send_text(c, status, text, "application/json");
}

/* An error in TEI's shape, or for the OpenAI route in the OpenAI client's shape. */
typedef struct failure {
    serve_outcome outcome;
    unsigned status; /* 0: the outcome's */
    char message[1024];
} failure;

static void fail_with(failure *f, serve_outcome outcome, unsigned status, const char *format, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_with(failure *f, serve_outcome outcome, unsigned status, const char *format, ...)
{
    f->outcome = outcome;
    f->status = status;
    va_list ap;
    va_start(ap, format);
    vsnprintf(f->message, sizeof f->message, format, ap);
    va_end(ap);
}

static enum MHD_Result send_failure(struct MHD_Connection *c, const failure *f, bool openai)
{
    const unsigned status = f->status ? f->status : status_of(f->outcome);
    json_t *body = json_object();
    if (openai) {
        json_object_set_new(body, "message", json_string(f->message));
        json_object_set_new(body, "code", json_integer(status));
        json_object_set_new(body, "type", json_string(serve_outcome_name(f->outcome)));
    } else {
        json_object_set_new(body, "error", json_string(f->message));
        json_object_set_new(body, "error_type", json_string(serve_outcome_name(f->outcome)));
    }
    return send_json(c, status, body);
}

/* ---- request bodies --------------------------------------------------------------------- */

/* The texts of a request (pointers into the parsed body). */
typedef struct inputs {
    sqz_text *texts;
    size_t n;
    bool batch; /* given as a list (the answer is a list too) */
} inputs;

/* A field that must be a boolean when present. */
static bool get_bool(json_t *root, const char *name, bool fallback, failure *f)
{
    json_t *v = json_object_get(root, name);
    if (!v || json_is_null(v))
        return fallback;
    if (!json_is_boolean(v)) {
        fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "field '%s' must be true or false", name);
        return fallback;
    }
    return json_is_true(v);
}

static int set_text(sqz_text *t, json_t *s)
{
    t->text = json_string_value(s);
    t->text_len = json_string_length(s);
    return 0;
}

/* `inputs` (or `input`) as a string or a list of strings. */
static int read_texts(json_t *root, const char *field, inputs *in, failure *f)
{
    json_t *v = json_object_get(root, field);
    if (!v) {
        fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "missing field '%s'", field);
        return -1;
    }
    if (json_is_string(v)) {
        in->texts = calloc(1, sizeof *in->texts);
        if (!in->texts)
            goto oom;
        in->n = 1;
        return set_text(&in->texts[0], v);
    }
    if (!json_is_array(v)) {
        fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE,
                  "field '%s' must be a string or a list of strings", field);
        return -1;
    }
    in->batch = true;
    in->n = json_array_size(v);
    in->texts = calloc(in->n ? in->n : 1, sizeof *in->texts);
    if (!in->texts)
        goto oom;
    for (size_t i = 0; i < in->n; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s)) {
            fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "'%s'[%zu] is not a string", field, i);
            return -1;
        }
        set_text(&in->texts[i], s);
    }
    return 0;
oom:
    fail_with(f, SERVE_BACKEND, HTTP_INTERNAL, "out of memory");
    return -1;
}

/* A sequence of /predict: ["text"] or ["text", "pair"]. */
static int read_sequence(json_t *seq, size_t index, sqz_text *t, failure *f)
{
    const size_t n = json_array_size(seq);
    if (n < 1 || n > 2 || !json_is_string(json_array_get(seq, 0)) || (n == 2 && !json_is_string(json_array_get(seq, 1)))) {
        fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE,
                  "'inputs'[%zu] must be [text] or [text, text_pair] (strings)", index);
        return -1;
    }
    set_text(t, json_array_get(seq, 0));
    if (n == 2) {
        t->pair = json_string_value(json_array_get(seq, 1));
        t->pair_len = json_string_length(json_array_get(seq, 1));
    }
    return 0;
}

/* /predict's `inputs`: "text", ["text", "pair"], or a batch [["text"], ["text", "pair"], ...]. */
static int read_predict_inputs(json_t *root, inputs *in, failure *f)
{
    json_t *v = json_object_get(root, "inputs");
    if (v && json_is_array(v) && json_array_size(v) > 0 && json_is_array(json_array_get(v, 0))) {
        in->batch = true;
        in->n = json_array_size(v);
        in->texts = calloc(in->n, sizeof *in->texts);
        if (!in->texts) {
            fail_with(f, SERVE_BACKEND, HTTP_INTERNAL, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < in->n; i++) {
            json_t *seq = json_array_get(v, i);
            if (!json_is_array(seq)) {
                fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE,
                          "'inputs'[%zu] must be a list like the first one", i);
                return -1;
            }
            if (read_sequence(seq, i, &in->texts[i], f) != 0)
                return -1;
        }
        return 0;
    }
    if (v && json_is_array(v)) { /* one sequence: a text and maybe its pair */
        in->texts = calloc(1, sizeof *in->texts);
        if (!in->texts) {
            fail_with(f, SERVE_BACKEND, HTTP_INTERNAL, "out of memory");
            return -1;
        }
        if (json_array_size(v) == 0) {
            in->n = 0;
            return 0;
        }
        in->n = 1;
        return read_sequence(v, 0, &in->texts[0], f);
    }
    return read_texts(root, "inputs", in, f);
}

/* ---- running a request ------------------------------------------------------------------ */

/* A request's items through the engine: admitted, encoded, checked for length, run. On
 * success the items are answered; the caller frees them with free_items. */
typedef struct job {
    serve_request request;
    bool admitted;
} job;

static void free_job(serve_http *s, job *j)
{
    for (size_t i = 0; i < j->request.n; i++)
        sqz_pipeline_item_free(j->request.items[i]);
    free(j->request.items);
    free(j->request.logits);
    if (j->admitted)
        serve_engine_leave(s->engine);
}

/* Tokens the text has untruncated (to refuse one over the limit when truncation is off). */
static size_t untruncated_tokens(serve_http *s, const sqz_text *t)
{
    sqz_encoding *enc = NULL;
    size_t n = 0;
    if (sqz_tokenizer_encode(sqz_pipeline_tokenizer(s->pipeline), t->text, t->text_len, t->pair, t->pair_len, 0,
                             &enc) == SQZ_OK)
        n = enc->length;
    sqz_encoding_free(enc);
    return n;
}

static int run_job(serve_http *s, const inputs *in, bool truncate, job *j, failure *f)
{
    memset(j, 0, sizeof *j);
    if (in->n == 0) {
        fail_with(f, SERVE_VALIDATION, 0, "'inputs' cannot be empty");
        return -1;
    }
    if ((long)in->n > s->opt.max_client_batch_size) {
        fail_with(f, SERVE_VALIDATION, 0, "%zu inputs in one request, more than --max-client-batch-size %ld",
                  in->n, s->opt.max_client_batch_size);
        return -1;
    }
    if (!serve_engine_admit(s->engine)) {
        fail_with(f, SERVE_OVERLOADED, 0, "the server is overloaded: --max-concurrent-requests requests are running");
        return -1;
    }
    j->admitted = true;
    j->request.items = calloc(in->n, sizeof *j->request.items);
    if (s->info.task == SQZ_TASK_CLASSIFY)
        j->request.logits = malloc(in->n * (size_t)s->info.num_labels * sizeof(float));
    if (!j->request.items || (s->info.task == SQZ_TASK_CLASSIFY && !j->request.logits)) {
        fail_with(f, SERVE_BACKEND, HTTP_INTERNAL, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < in->n; i++) {
        if (sqz_pipeline_encode(s->pipeline, &in->texts[i], &j->request.items[i]) != SQZ_OK) {
            fail_with(f, SERVE_BACKEND, HTTP_INTERNAL, "input %zu: %s", i, sqz_last_error());
            return -1;
        }
        j->request.n = i + 1;
        const char *why = sqz_pipeline_item_error(j->request.items[i]);
        if (why) {
            fail_with(f, SERVE_TOKENIZER, 0, "input %zu: %s", i, why);
            return -1;
        }
        const size_t tokens = sqz_pipeline_item_tokens(j->request.items[i], NULL, NULL);
        if (!truncate && (long)tokens >= s->info.max_length) {
            const size_t whole = untruncated_tokens(s, &in->texts[i]);
            if ((long)whole > s->info.max_length) {
                fail_with(f, SERVE_VALIDATION, 0,
                          "input %zu has %zu tokens, more than the model's %ld; send \"truncate\": true "
                          "(or start the server with --auto-truncate)", i, whole, s->info.max_length);
                return -1;
            }
        }
    }
    serve_engine_run(s->engine, &j->request);
    if (j->request.backend_failed) {
        for (size_t i = 0; i < j->request.n; i++) {
            const char *why = sqz_pipeline_item_error(j->request.items[i]);
            if (why) {
                fail_with(f, SERVE_BACKEND, 0, "input %zu: %s", i, why);
                return -1;
            }
        }
    }
    for (size_t i = 0; i < j->request.n; i++) {
        const char *why = sqz_pipeline_item_error(j->request.items[i]);
        if (why || !sqz_pipeline_item_answer(j->request.items[i])) {
            fail_with(f, SERVE_TOKENIZER, 0, "input %zu: %s", i, why ? why : "no answer");
            return -1;
        }
    }
    return 0;
}

/* ---- the routes ------------------------------------------------------------------------- */

typedef enum route { ROUTE_EMBED, ROUTE_OPENAI, ROUTE_PREDICT, ROUTE_RERANK, ROUTE_TOKENIZE } route;

/* An embedding, L2-normalised when asked (torch's F.normalize: x / max(|x|, 1e-12)). */
static void embedding_values(const sqz_answer *a, bool normalize, float *out)
{
    double norm = 0;
    for (int c = 0; c < a->dimension; c++)
        norm += (double)a->embedding[c] * a->embedding[c];
    norm = normalize ? fmax(sqrt(norm), 1e-12) : 1.0;
    for (int c = 0; c < a->dimension; c++)
        out[c] = (float)(a->embedding[c] / norm);
}

static json_t *float_array(const float *v, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, json_real(v[i]));
    return arr;
}

static char *base64_of(const unsigned char *bytes, size_t n)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *p = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        const unsigned v = (unsigned)bytes[i] << 16 | (i + 1 < n ? (unsigned)bytes[i + 1] << 8 : 0) |
                           (i + 2 < n ? bytes[i + 2] : 0);
        *p++ = digits[v >> 18 & 63];
        *p++ = digits[v >> 12 & 63];
        *p++ = i + 1 < n ? digits[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? digits[v & 63] : '=';
    }
    *p = '\0';
    return out;
}

/* Little-endian float32 bytes, whatever the host's order. */
static void float_bytes_le(const float *v, int n, unsigned char *out)
{
    for (int i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        for (int b = 0; b < 4; b++)
            out[4 * i + b] = (unsigned char)(bits >> (8 * b));
    }
}

static json_t *embed_answer(serve_http *s, const job *j, bool normalize, bool openai, bool base64,
                            const char *model)
{
    float *v = malloc((size_t)s->info.dimension * sizeof *v);
    unsigned char *bytes = malloc((size_t)s->info.dimension * 4);
    if (!v || !bytes) {
        free(v), free(bytes);
        return NULL;
    }
    json_t *list = json_array();
    size_t tokens = 0;
    for (size_t i = 0; i < j->request.n; i++) {
        const sqz_answer *a = sqz_pipeline_item_answer(j->request.items[i]);
        embedding_values(a, normalize, v);
        tokens += sqz_pipeline_item_tokens(j->request.items[i], NULL, NULL);
        if (!openai) {
            json_array_append_new(list, float_array(v, a->dimension));
            continue;
        }
        json_t *e = json_object();
        json_object_set_new(e, "object", json_string("embedding"));
        if (base64) {
            float_bytes_le(v, a->dimension, bytes);
            char *text = base64_of(bytes, (size_t)a->dimension * 4);
            json_object_set_new(e, "embedding", text ? json_string(text) : json_null());
            free(text);
        } else {
            json_object_set_new(e, "embedding", float_array(v, a->dimension));
        }
        json_object_set_new(e, "index", json_integer((json_int_t)i));
        json_array_append_new(list, e);
    }
    free(v), free(bytes);
    if (!openai)
        return list;
    json_t *body = json_object(), *usage = json_object();
    json_object_set_new(body, "object", json_string("list"));
    json_object_set_new(body, "data", list);
    json_object_set_new(body, "model", json_string(model ? model : s->opt.model_id));
    json_object_set_new(usage, "prompt_tokens", json_integer((json_int_t)tokens));
    json_object_set_new(usage, "total_tokens", json_integer((json_int_t)tokens));
    json_object_set_new(body, "usage", usage);
    return body;
}

/* A one-label model's score: sigmoid(logit), as TEI gives it (softmax would be 1 always). */
static double sigmoid(double logit) { return 1.0 / (1.0 + exp(-logit)); }

/* One input's predictions: every label, highest score first. */
static json_t *predictions(const sqz_answer *a, const float *logits, bool raw)
{
    const int n = a->num_labels;
    if (n == 1) {
        json_t *p = json_object();
        json_object_set_new(p, "score", json_real(raw ? logits[0] : sigmoid(logits[0])));
        json_object_set_new(p, "label", json_string(a->label_names[0]));
        return json_pack("[o]", p);
    }
    int *order = malloc((size_t)n * sizeof *order);
    if (!order)
        return NULL;
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort: few labels, ties keep id order */
        for (int k = i; k > 0 && a->probabilities[order[k]] > a->probabilities[order[k - 1]]; k--) {
            const int t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    json_t *list = json_array();
    for (int i = 0; i < n; i++) {
        json_t *p = json_object();
        const int label = order[i];
        json_object_set_new(p, "score", json_real(raw ? logits[label] : a->probabilities[label]));
        json_object_set_new(p, "label", json_string(a->label_names[label]));
        json_array_append_new(list, p);
    }
    free(order);
    return list;
}

static json_t *predict_answer(serve_http *s, const job *j, bool batch, bool raw)
{
    json_t *all = json_array();
    for (size_t i = 0; i < j->request.n; i++) {
        const sqz_answer *a = sqz_pipeline_item_answer(j->request.items[i]);
        json_t *p = predictions(a, j->request.logits + i * (size_t)s->info.num_labels, raw);
        if (!p) {
            json_decref(all);
            return NULL;
        }
        if (!batch)
            return json_decref(all), p;
        json_array_append_new(all, p);
    }
    return all;
}

/* /rerank: {index, score[, text]} per text, highest score first (ties keep the texts' order). */
static json_t *rerank_answer(const job *j, const inputs *in, bool raw, bool return_text)
{
    const size_t n = j->request.n;
    size_t *order = malloc(n * sizeof *order);
    if (!order)
        return NULL;
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    const float *logits = j->request.logits; /* one label: one logit per input */
    for (size_t i = 1; i < n; i++) /* insertion sort: at most --max-client-batch-size texts */
        for (size_t k = i; k > 0 && logits[order[k]] > logits[order[k - 1]]; k--) {
            const size_t t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    json_t *ranks = json_array();
    for (size_t r = 0; r < n; r++) {
        const size_t i = order[r];
        json_t *rank = json_object();
        json_object_set_new(rank, "index", json_integer((json_int_t)i));
        if (return_text)
            json_object_set_new(rank, "text", json_stringn(in->texts[i].pair, in->texts[i].pair_len));
        json_object_set_new(rank, "score", json_real(raw ? logits[i] : sigmoid(logits[i])));
        json_array_append_new(ranks, rank);
    }
    free(order);
    return ranks;
}

/* /rerank's `query` and `texts`: one (query, text) pair per text. */
static int read_rerank_inputs(json_t *root, inputs *in, failure *f)
{
    json_t *query = json_object_get(root, "query");
    if (!json_is_string(query)) {
        fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, query ? "field 'query' must be a string" : "missing field 'query'");
        return -1;
    }
    if (read_texts(root, "texts", in, f) != 0)
        return -1;
    if (!json_is_array(json_object_get(root, "texts"))) {
        fail_with(f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "field 'texts' must be a list of strings");
        return -1;
    }
    for (size_t i = 0; i < in->n; i++) { /* the query first, as the model was trained */
        in->texts[i].pair = in->texts[i].text;
        in->texts[i].pair_len = in->texts[i].text_len;
        in->texts[i].text = json_string_value(query);
        in->texts[i].text_len = json_string_length(query);
    }
    return 0;
}

/* /tokenize: the tokenizer's tokens of each input, with byte offsets into the text. */
static json_t *tokenize_answer(serve_http *s, const inputs *in, bool special, failure *f)
{
    const sqz_tokenizer *tok = sqz_pipeline_tokenizer(s->pipeline);
    json_t *all = json_array();
    sqz_encoding *enc = NULL;
    for (size_t i = 0; i < in->n; i++) {
        if (sqz_tokenizer_encode(tok, in->texts[i].text, in->texts[i].text_len, NULL, 0, 0, &enc) != SQZ_OK) {
            fail_with(f, SERVE_TOKENIZER, 0, "input %zu: %s", i, sqz_last_error());
            json_decref(all);
            sqz_encoding_free(enc);
            return NULL;
        }
        json_t *tokens = json_array();
        for (size_t t = 0; t < enc->length; t++) {
            const bool added = enc->sequence_ids[t] < 0;
            if (added && !special)
                continue;
            json_t *o = json_object();
            json_object_set_new(o, "id", json_integer((json_int_t)enc->input_ids[t]));
            const sqz_span span = enc->offsets[t];
            if (added)
                json_object_set_new(o, "text", json_string(sqz_tokenizer_id_to_token(tok, (int32_t)enc->input_ids[t])));
            else
                json_object_set_new(o, "text", json_stringn(in->texts[i].text + span.start, span.end - span.start));
            json_object_set_new(o, "special", json_boolean(added));
            json_object_set_new(o, "start", added ? json_null() : json_integer((json_int_t)span.start));
            json_object_set_new(o, "stop", added ? json_null() : json_integer((json_int_t)span.end));
            json_array_append_new(tokens, o);
        }
        json_array_append_new(all, tokens);
    }
    sqz_encoding_free(enc);
    return all;
}

static json_t *info_json(const serve_http *s)
{
    json_t *body = json_object(), *type = json_object(), *kind = json_object();
    json_object_set_new(body, "model_id", json_string(s->opt.model_id));
    json_object_set_new(body, "model_sha", json_null());
    json_object_set_new(body, "model_dtype", json_string(s->opt.model_dtype));
    if (s->info.task == SQZ_TASK_EMBED) {
        json_object_set_new(kind, "pooling", json_string(s->opt.pooling));
        json_object_set_new(type, "embedding", kind);
    } else {
        json_t *id2label = json_object(), *label2id = json_object();
        const sqz_model *model = sqz_pipeline_model(s->pipeline);
        for (int i = 0; i < s->info.num_labels; i++) {
            char key[32];
            snprintf(key, sizeof key, "%d", i);
            json_object_set_new(id2label, key, json_string(sqz_model_label(model, i)));
            json_object_set_new(label2id, sqz_model_label(model, i), json_integer(i));
        }
        json_object_set_new(kind, "id2label", id2label);
        json_object_set_new(kind, "label2id", label2id);
        json_object_set_new(type, s->info.num_labels == 1 ? "reranker" : "classifier", kind);
    }
    json_object_set_new(body, "model_type", type);
    json_object_set_new(body, "max_concurrent_requests", json_integer(s->opt.max_concurrent_requests));
    json_object_set_new(body, "max_input_length", json_integer(s->info.max_length));
    json_object_set_new(body, "max_batch_tokens", json_integer(s->opt.max_batch_tokens));
    json_object_set_new(body, "max_batch_requests", json_null());
    json_object_set_new(body, "max_client_batch_size", json_integer(s->opt.max_client_batch_size));
    json_object_set_new(body, "auto_truncate", json_boolean(s->opt.auto_truncate));
    /* texts are tokenized on the requests' own threads, as many at once as are admitted */
    json_object_set_new(body, "tokenization_workers", json_integer(s->opt.max_concurrent_requests));
    json_object_set_new(body, "version", json_string(SQZ_SERVE_VERSION));
    json_object_set_new(body, "sha", json_null());
    json_object_set_new(body, "docker_label", json_null());
    return body;
}

/* A POST to an inference route, its body complete. */
static enum MHD_Result handle_post(serve_http *s, struct MHD_Connection *c, route r, upload *u)
{
    const bool openai = r == ROUTE_OPENAI;
    failure f = {.outcome = SERVE_OK};
    json_t *root = NULL, *answer = NULL;
    inputs in = {0};
    job j = {0};
    bool ran = false;
    if (u->too_large) {
        fail_with(&f, SERVE_VALIDATION, HTTP_TOO_LARGE, "the request body is over --payload-limit %zu bytes",
                  s->opt.payload_limit);
        goto done;
    }
    if (!atomic_load(&s->ready) || atomic_load(&s->draining)) {
        fail_with(&f, SERVE_UNHEALTHY, 0, atomic_load(&s->draining) ? "the server is shutting down" : "the model is warming up");
        goto done;
    }
    const bool wants_embed = r == ROUTE_EMBED || r == ROUTE_OPENAI;
    if ((wants_embed && s->info.task != SQZ_TASK_EMBED) || (r == ROUTE_PREDICT && s->info.task != SQZ_TASK_CLASSIFY)) {
        fail_with(&f, SERVE_BACKEND, 0, "this model is a %s model: %s", sqz_task_name(s->info.task),
                  s->info.task == SQZ_TASK_EMBED ? "use /embed" : "use /predict");
        goto done;
    }
    if (r == ROUTE_RERANK && (s->info.task != SQZ_TASK_CLASSIFY || s->info.num_labels != 1)) {
        /* TEI's answer to /rerank on a model that is not a re-ranker (424) */
        fail_with(&f, SERVE_BACKEND, 0, "model is not a re-ranker model: /rerank needs a sequence classifier "
                  "with one label (this one is a %s model with %d labels)", sqz_task_name(s->info.task),
                  s->info.task == SQZ_TASK_CLASSIFY ? s->info.num_labels : 0);
        goto done;
    }
    json_error_t err;
    root = json_loadb(u->body ? u->body : "", u->len, JSON_REJECT_DUPLICATES, &err);
    if (!root || !json_is_object(root)) {
        if (root)
            fail_with(&f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "the body must be a JSON object");
        else
            fail_with(&f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "invalid JSON at line %d, column %d: %s",
                      err.line, err.column, err.text);
        goto done;
    }
    const bool truncate = get_bool(root, "truncate", false, &f) || s->opt.auto_truncate;
    const bool normalize = get_bool(root, "normalize", true, &f);
    const bool raw = get_bool(root, "raw_scores", false, &f);
    const bool special = get_bool(root, "add_special_tokens", true, &f);
    const bool return_text = get_bool(root, "return_text", false, &f);
    if (f.outcome != SERVE_OK)
        goto done;
    json_t *direction = json_object_get(root, "truncation_direction");
    if (direction && !json_is_null(direction)) {
        const char *d = json_string_value(direction);
        if (!d || (strcmp(d, "right") != 0 && strcmp(d, "Right") != 0)) {
            fail_with(&f, SERVE_VALIDATION, HTTP_UNPROCESSABLE,
                      "truncation_direction must be \"Right\": the engine keeps the start of a text");
            goto done;
        }
    }
    bool base64 = false;
    const char *model = NULL;
    if (openai) {
        json_t *format = json_object_get(root, "encoding_format");
        const char *fmt = format && !json_is_null(format) ? json_string_value(format) : "float";
        if (!fmt || (strcmp(fmt, "float") != 0 && strcmp(fmt, "base64") != 0)) {
            fail_with(&f, SERVE_VALIDATION, HTTP_UNPROCESSABLE, "encoding_format must be \"float\" or \"base64\"");
            goto done;
        }
        base64 = strcmp(fmt, "base64") == 0;
        model = json_string_value(json_object_get(root, "model"));
    }
    const int read = r == ROUTE_PREDICT  ? read_predict_inputs(root, &in, &f)
                     : r == ROUTE_RERANK ? read_rerank_inputs(root, &in, &f)
                                         : read_texts(root, openai ? "input" : "inputs", &in, &f);
    if (read != 0)
        goto done;
    if (r == ROUTE_TOKENIZE) {
        if (in.n == 0)
            fail_with(&f, SERVE_VALIDATION, 0, "'inputs' cannot be empty");
        else if ((long)in.n > s->opt.max_client_batch_size)
            fail_with(&f, SERVE_VALIDATION, 0, "%zu inputs in one request, more than --max-client-batch-size %ld", in.n,
                      s->opt.max_client_batch_size);
        else
            answer = tokenize_answer(s, &in, special, &f);
        goto done;
    }
    if (r == ROUTE_RERANK && in.n == 0) {
        fail_with(&f, SERVE_VALIDATION, 0, "'texts' cannot be empty");
        goto done;
    }
    ran = true;
    if (run_job(s, &in, truncate, &j, &f) != 0)
        goto done;
    for (size_t i = 0; j.request.logits && i < in.n * (size_t)s->info.num_labels; i++)
        if (isnan(j.request.logits[i])) { /* JSON has no NaN; TEI answers this 424 too */
            fail_with(&f, SERVE_BACKEND, 0, "input %zu: the model's score is NaN", i / (size_t)s->info.num_labels);
            goto done;
        }
    answer = r == ROUTE_PREDICT  ? predict_answer(s, &j, in.batch, raw)
             : r == ROUTE_RERANK ? rerank_answer(&j, &in, raw, return_text)
                                 : embed_answer(s, &j, normalize, openai, base64, model);
    if (!answer)
        fail_with(&f, SERVE_BACKEND, HTTP_INTERNAL, "out of memory");
done:;
    enum MHD_Result result;
    if (f.outcome != SERVE_OK || !answer) {
        if (f.outcome == SERVE_OK)
            fail_with(&f, SERVE_BACKEND, HTTP_INTERNAL, "out of memory");
        json_decref(answer);
        result = send_failure(c, &f, openai);
    } else {
        result = send_json(c, HTTP_OK, answer);
    }
    if (ran) {
        /* the place is kept until the answer has left (on_completed), so a drain waits for it */
        u->holds_place = j.admitted;
        j.admitted = false;
        free_job(s, &j);
    }
    free(in.texts);
    json_decref(root);
    serve_engine_count(s->engine, f.outcome, cli_now_seconds() - u->started);
    return result;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *data_size, void **state)
{
    (void)version;
    serve_http *s = cls;
    upload *u = *state;
    if (!u) { /* the headers: keep a place for the body */
        u = calloc(1, sizeof *u);
        if (!u)
            return MHD_NO;
        u->started = cli_now_seconds();
        *state = u;
        return MHD_YES;
    }
    if (*data_size > 0) { /* a piece of the body: keep it, or only count it once over the limit */
        if (!u->too_large && u->len + *data_size > s->opt.payload_limit) {
            u->too_large = true;
            free(u->body);
            u->body = NULL;
        }
        if (!u->too_large) {
            if (u->len + *data_size + 1 > u->cap) {
                size_t cap = u->cap ? u->cap : 4096;
                while (cap < u->len + *data_size + 1)
                    cap *= 2;
                char *bigger = realloc(u->body, cap);
                if (!bigger)
                    return MHD_NO;
                u->body = bigger;
                u->cap = cap;
            }
            memcpy(u->body + u->len, data, *data_size);
            u->len += *data_size;
        }
        *data_size = 0;
        return MHD_YES;
    }
    const bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0, post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    static const struct { const char *path; route r; } posts[] = {
        {"/embed", ROUTE_EMBED}, {"/v1/embeddings", ROUTE_OPENAI}, {"/embeddings", ROUTE_OPENAI},
        {"/predict", ROUTE_PREDICT}, {"/rerank", ROUTE_RERANK}, {"/tokenize", ROUTE_TOKENIZE}};
    for (size_t i = 0; i < sizeof posts / sizeof *posts; i++)
        if (strcmp(url, posts[i].path) == 0) {
            if (!post)
                break;
            return handle_post(s, c, posts[i].r, u);
        }
    if (strcmp(url, "/") == 0 && post) /* by the model's task, as TEI does */
        return handle_post(s, c, s->info.task == SQZ_TASK_EMBED ? ROUTE_EMBED : ROUTE_PREDICT, u);
    failure f = {.outcome = SERVE_OK};
    if (get && strcmp(url, "/health") == 0) {
        if (atomic_load(&s->ready) && !atomic_load(&s->draining))
            return send_text(c, HTTP_OK, NULL, "text/plain");
        fail_with(&f, SERVE_UNHEALTHY, 0, atomic_load(&s->draining) ? "the server is shutting down" : "the model is warming up");
        return send_failure(c, &f, false);
    }
    if (get && strcmp(url, "/info") == 0)
        return send_json(c, HTTP_OK, info_json(s));
    if (get && strcmp(url, "/metrics") == 0) {
        char *text = serve_engine_metrics(s->engine);
        return text ? send_text(c, HTTP_OK, text, "text/plain; version=0.0.4")
                    : send_text(c, HTTP_INTERNAL, NULL, "text/plain");
    }
    json_t *body = json_object();
    json_object_set_new(body, "error", json_string("no such route (see docs/serve.md)"));
    json_object_set_new(body, "error_type", json_string("Validation"));
    return send_json(c, HTTP_NOT_FOUND, body);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode why)
{
    (void)c, (void)why;
    serve_http *s = cls;
    upload *u = *state;
    if (u) {
        if (u->holds_place)
            serve_engine_leave(s->engine);
        free(u->body);
        free(u);
        *state = NULL;
    }
}

int serve_http_start(const sqz_pipeline *pipeline, serve_engine *engine, const serve_http_options *options,
                     serve_http **out)
{
    serve_http *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->pipeline = pipeline;
    s->engine = engine;
    s->opt = *options;
    sqz_pipeline_get_info(pipeline, &s->info);
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, options->host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)options->port);
    } else if (inet_pton(AF_INET6, options->host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)options->port);
        flags |= MHD_USE_IPv6;
    } else {
        fprintf(stderr, "sqz serve: --host '%s' is not an IPv4 or IPv6 address\n", options->host);
        free(s);
        return -1;
    }
    /* room for the admitted requests and as many again to be told 429 */
    const unsigned limit = (unsigned)(2 * options->max_concurrent_requests + 16);
    s->daemon = MHD_start_daemon(flags, (uint16_t)options->port, NULL, NULL, on_request, s,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_END);
    if (!s->daemon) {
        fprintf(stderr, "sqz serve: cannot listen on %s port %d (in use, or not an address of this machine?)\n",
                options->host, options->port);
        free(s);
        return -1;
    }
    const union MHD_DaemonInfo *bound = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = bound ? bound->port : options->port;
    *out = s;
    return 0;
}

int serve_http_port(const serve_http *s) { return s->port; }

void serve_http_set_ready(serve_http *s) { atomic_store(&s->ready, true); }

void serve_http_drain(serve_http *s)
{
    atomic_store(&s->draining, true);
    const struct timespec pause = {0, 10 * 1000 * 1000};
    while (serve_engine_in_flight(s->engine) > 0)
        nanosleep(&pause, NULL);
}

void serve_http_stop(serve_http *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->daemon);
    free(s);
}
