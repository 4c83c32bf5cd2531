/* `sqz serve` through the binary and raw HTTP on 127.0.0.1, as clients use it: embeddings
 * equal to `sqz infer`'s and to transformers' (the fixtures' expected records) for the same
 * texts, /predict's scores equal sqz infer's, /tokenize's ids the tokenizer's; every error
 * class provoked (413, 422, 424 through the session's fault injection, 429, 404), malformed
 * and wrongly typed bodies, clients that vanish mid-request; SIGTERM answers the request in
 * flight before the server exits 0. Skipped (77) when sqz was built without libmicrohttpd. */
#include "tests/test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "squeezebert_pipeline.h"
#include "cli/serve_engine.h" /* SERVE_WARM_UP_TEXT */
#include "runtime/tensor_file.h" /* writing the one-label model */

#define INFER SQZ_FIXTURES_DIR "/infer"

static char *tmp;
/* servers still running: a failed assertion jumps out of its test, main stops them */
static pid_t live[16];
static int n_live;

typedef struct server {
    pid_t pid;
    int port;
    char log[512];
} server;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- a raw HTTP client ---------------------------------------------------------------- */

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return; /* the server may close early (413): its answer is still read */
        data += n;
        len -= (size_t)n;
    }
}

/* One request; the status (-1 when the connection failed) and the body (malloc'd). */
static int http(int port, const char *method, const char *path, const char *body, size_t len, char **out)
{
    *out = NULL;
    int fd = connect_to(port);
    if (fd < 0)
        return -1;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n", method, path, body ? len : 0);
    send_all(fd, head, (size_t)n);
    if (body)
        send_all(fd, body, len);
    size_t cap = 65536, got = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (got == cap)
            buf = realloc(buf, (cap *= 2) + 1);
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        free(buf);
        return -1;
    }
    char *start = strstr(buf, "\r\n\r\n");
    *out = strdup(start ? start + 4 : "");
    free(buf);
    return status;
}

static int post_text(int port, const char *path, const char *body, char **out)
{
    return http(port, "POST", path, body, strlen(body), out);
}

static json_t *post_json(int port, const char *path, json_t *body, int *status)
{
    char *text = json_dumps(body, JSON_COMPACT);
    char *answer = NULL;
    *status = http(port, "POST", path, text, strlen(text), &answer);
    free(text);
    json_t *parsed = answer ? json_loads(answer, 0, NULL) : NULL;
    if (!parsed && answer && *status == 200)
        fail_msg("%s answered 200 with a body that is not JSON: %.200s", path, answer);
    free(answer);
    return parsed;
}

/* A request that must fail with `status` and TEI's error_type. */
static void expect_error(int port, const char *path, const char *body, int status, const char *type)
{
    char *answer = NULL;
    int got = http(port, "POST", path, body, strlen(body), &answer);
    if (got != status)
        fail_msg("POST %s %.120s: status %d, expected %d (%s)", path, body, got, status, answer ? answer : "");
    json_t *parsed = json_loads(answer, 0, NULL);
    if (!parsed)
        fail_msg("POST %s: the error body is not JSON: %s", path, answer);
    const bool openai = strstr(path, "/v1/") != NULL;
    const char *kind = json_string_value(json_object_get(parsed, openai ? "type" : "error_type"));
    const char *message = json_string_value(json_object_get(parsed, openai ? "message" : "error"));
    if (!kind || strcmp(kind, type) != 0 || !message || !*message)
        fail_msg("POST %s %.120s: expected error_type %s with a message, got %s", path, body, type, answer);
    json_decref(parsed);
    free(answer);
}

/* ---- the server ----------------------------------------------------------------------- */

/* Starts sqz serve on a free port (--port 0; the port is read from its log) and waits until
 * its log has `line` after the port, or, with line NULL, until /health says ready.
 * env: "NAME=VALUE" or NULL. */
static server start_server_until(const char *model, const char *args, const char *env, const char *line)
{
    static int count;
    server s = {0};
    snprintf(s.log, sizeof s.log, "%s/serve-%d.log", tmp, count++);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s %s %s serve --model '%s' --backend cpu_ref --port 0 %s 2> '%s'",
             env ? "env" : "", env ? env : "", SQZ_SQZ_BINARY, model, args ? args : "", s.log);
    s.pid = fork();
    assert_true(s.pid >= 0);
    if (s.pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    const double deadline = now_s() + 120;
    while (now_s() < deadline) {
        int status;
        if (waitpid(s.pid, &status, WNOHANG) == s.pid) {
            size_t size;
            char *text = (char *)read_whole(s.log, &size);
            fail_msg("sqz serve exited before it was ready: %s", text);
        }
        bool logged = false;
        FILE *f = fopen(s.log, "r");
        char text[512];
        while (f && fgets(text, sizeof text, f)) {
            if (strstr(text, "listening on http://127.0.0.1:"))
                s.port = atoi(strstr(text, "127.0.0.1:") + 10);
            logged |= line && s.port > 0 && strstr(text, line);
        }
        if (f)
            fclose(f);
        if (logged) {
            if (n_live < 16)
                live[n_live++] = s.pid;
            return s;
        }
        if (s.port > 0 && !line) {
            char *body = NULL;
            const int st = http(s.port, "GET", "/health", NULL, 0, &body);
            free(body);
            if (st == 200) {
                if (n_live < 16)
                    live[n_live++] = s.pid;
                return s;
            }
        }
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    fail_msg("sqz serve was not ready within 120 s (log %s)", s.log);
    return s;
}

static server start_server(const char *model, const char *args, const char *env)
{
    return start_server_until(model, args, env, NULL);
}

/* A server that has exited (and was waited for) is no longer main's to stop. */
static void forget(pid_t pid)
{
    for (int i = 0; i < n_live; i++)
        if (live[i] == pid)
            live[i] = live[--n_live];
}

/* SIGTERM and the exit status. */
static int stop_server(server *s)
{
    kill(s->pid, SIGTERM);
    int status = 0;
    assert_int_equal(waitpid(s->pid, &status, 0), s->pid);
    forget(s->pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- references ----------------------------------------------------------------------- */

/* The "text" fields of a JSON Lines input file. */
static json_t *texts_of(const char *path)
{
    size_t size;
    char *data = (char *)read_whole(path, &size);
    json_t *texts = json_array();
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *o = json_loads(line, 0, NULL); /* NULL for the fixtures' broken lines */
        json_t *text = json_object_get(o, "text");
        json_array_append(texts, json_is_string(text) ? text : json_null());
        json_decref(o);
    }
    free(data);
    return texts;
}

/* sqz infer's records for `input` (one JSON value per line, in order). */
static json_t *infer_records(const char *model, const char *input, const char *args)
{
    char out[600], cmd[4096];
    snprintf(out, sizeof out, "%s/infer.jsonl", tmp);
    snprintf(cmd, sizeof cmd, "%s infer --model '%s' --backend cpu_ref --input '%s' --output '%s' %s 2>> '%s/infer.log'",
             SQZ_SQZ_BINARY, model, input, out, args, tmp);
    const int rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) <= 1); /* 1: some lines have errors */
    size_t size;
    char *data = (char *)read_whole(out, &size);
    json_t *records = json_array();
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n"))
        json_array_append_new(records, json_loads(line, 0, NULL));
    free(data);
    return records;
}

static void same_floats(json_t *got, json_t *want, double tolerance, const char *what, size_t row)
{
    if (json_array_size(got) != json_array_size(want) || json_array_size(want) == 0)
        fail_msg("%s %zu: %zu values, expected %zu", what, row, json_array_size(got), json_array_size(want));
    for (size_t c = 0; c < json_array_size(want); c++) {
        const double a = json_number_value(json_array_get(got, c)), b = json_number_value(json_array_get(want, c));
        if (!(fabs(a - b) <= tolerance * fmax(1.0, fabs(b))))
            fail_msg("%s %zu [%zu]: %.9g, expected %.9g", what, row, c, a, b);
    }
}

static json_t *embed_request(json_t *texts, const char *extra_key, json_t *extra_value)
{
    json_t *req = json_object();
    json_object_set(req, "inputs", texts);
    if (extra_key)
        json_object_set_new(req, extra_key, extra_value);
    return req;
}

/* ---- tests ---------------------------------------------------------------------------- */

/* Keeps entry i of each list where keep[i]. */
static void keep_only(json_t *list, const bool *keep)
{
    for (size_t i = json_array_size(list); i-- > 0;)
        if (!keep[i])
            json_array_remove(list, i);
}

/* The lines of a task's fixture input that sqz infer answers (no error, no text pair: the
 * routes take single texts): their texts and the records of the runs in `records`. */
static json_t *answerable(const char *input, json_t **records, size_t n_records)
{
    json_t *texts = texts_of(input);
    size_t size;
    char *data = (char *)read_whole(input, &size);
    bool keep[256] = {0};
    size_t line = 0;
    for (char *l = strtok(data, "\n"); l && line < 256; l = strtok(NULL, "\n"), line++)
        keep[line] = !strstr(l, "\"text_pair\"") && json_is_string(json_array_get(texts, line)) &&
                     !json_object_get(json_array_get(records[0], line), "error");
    free(data);
    keep_only(texts, keep);
    for (size_t r = 0; r < n_records; r++)
        keep_only(records[r], keep);
    assert_true(json_array_size(texts) >= 10);
    return texts;
}

static void embeddings_equal_infer_and_transformers(void **unused)
{
    (void)unused;
    json_t *lists[3];
    lists[0] = infer_records(INFER "/embed", INFER "/embed/input.jsonl", "--task embed --normalize");
    lists[1] = infer_records(INFER "/embed", INFER "/embed/input.jsonl", "--task embed --no-normalize");
    /* transformers' pooler output (the fixture's model has no modules.json) */
    size_t size;
    char *data = (char *)read_whole(INFER "/embed/expected-pooler.jsonl", &size);
    lists[2] = json_array();
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n"))
        json_array_append_new(lists[2], json_loads(line, 0, NULL));
    free(data);
    json_t *texts = answerable(INFER "/embed/input.jsonl", lists, 3);
    json_t *normalized = lists[0], *raw = lists[1], *expected = lists[2];
    /* --auto-truncate: the OpenAI route has no "truncate", and two texts are over 64 tokens */
    server s = start_server(INFER "/embed", "--auto-truncate", NULL);
    int status;
    json_t *req = embed_request(texts, NULL, NULL); /* TEI's default: normalize */
    json_t *got = post_json(s.port, "/embed", req, &status);
    assert_int_equal(status, 200);
    assert_int_equal(json_array_size(got), json_array_size(texts));
    for (size_t i = 0; i < json_array_size(texts); i++)
        same_floats(json_array_get(got, i), json_object_get(json_array_get(normalized, i), "embedding"), 1e-6,
                    "normalized embedding", i);
    json_decref(got), json_decref(req);
    req = embed_request(texts, "normalize", json_false());
    got = post_json(s.port, "/embed", req, &status);
    assert_int_equal(status, 200);
    for (size_t i = 0; i < json_array_size(texts); i++) {
        same_floats(json_array_get(got, i), json_object_get(json_array_get(raw, i), "embedding"), 1e-6,
                    "raw embedding", i);
        same_floats(json_array_get(got, i), json_object_get(json_array_get(expected, i), "embedding"), 1e-5,
                    "raw embedding against transformers", i);
    }
    json_decref(got), json_decref(req);
    /* one string: still a list of one embedding; POST / goes to /embed for this model */
    req = embed_request(json_array_get(texts, 0), "normalize", json_false());
    got = post_json(s.port, "/", req, &status);
    assert_int_equal(status, 200);
    assert_int_equal(json_array_size(got), 1);
    same_floats(json_array_get(got, 0), json_object_get(json_array_get(raw, 0), "embedding"), 1e-6, "POST /", 0);
    json_decref(got), json_decref(req);
    /* the OpenAI shape, floats and base64 (little-endian float32), normalized */
    for (int b64 = 0; b64 < 2; b64++) {
        req = json_object();
        json_object_set(req, "input", texts);
        json_object_set_new(req, "model", json_string("sqz"));
        json_object_set_new(req, "encoding_format", json_string(b64 ? "base64" : "float"));
        got = post_json(s.port, "/v1/embeddings", req, &status);
        assert_int_equal(status, 200);
        assert_string_equal(json_string_value(json_object_get(got, "object")), "list");
        assert_string_equal(json_string_value(json_object_get(got, "model")), "sqz");
        json_t *list = json_object_get(got, "data");
        assert_int_equal(json_array_size(list), json_array_size(texts));
        assert_true(json_integer_value(json_object_get(json_object_get(got, "usage"), "prompt_tokens")) > 0);
        for (size_t i = 0; i < json_array_size(list); i++) {
            json_t *e = json_array_get(list, i);
            assert_int_equal(json_integer_value(json_object_get(e, "index")), (json_int_t)i);
            assert_string_equal(json_string_value(json_object_get(e, "object")), "embedding");
            json_t *values = json_object_get(e, "embedding");
            if (b64) { /* decode by hand: an independent reading of the bytes */
                const char *text = json_string_value(values);
                assert_non_null(text);
                static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                size_t n = strlen(text), nb = 0;
                unsigned char *bytes = malloc(n);
                for (size_t k = 0; k + 3 < n; k += 4) {
                    unsigned v = 0;
                    int pad = 0;
                    for (int d = 0; d < 4; d++) {
                        const char *at = strchr(digits, text[k + d]);
                        pad += text[k + d] == '=';
                        v = v << 6 | (at && text[k + d] != '=' ? (unsigned)(at - digits) : 0);
                    }
                    for (int d = 0; d < 3 - pad; d++)
                        bytes[nb++] = (unsigned char)(v >> (16 - 8 * d));
                }
                values = json_array();
                for (size_t k = 0; k + 3 < nb; k += 4) {
                    uint32_t bits = (uint32_t)bytes[k] | (uint32_t)bytes[k + 1] << 8 | (uint32_t)bytes[k + 2] << 16 |
                                    (uint32_t)bytes[k + 3] << 24;
                    float f;
                    memcpy(&f, &bits, sizeof f);
                    json_array_append_new(values, json_real(f));
                }
                free(bytes);
                same_floats(values, json_object_get(json_array_get(normalized, i), "embedding"), 1e-6, "base64", i);
                json_decref(values);
            } else {
                same_floats(values, json_object_get(json_array_get(normalized, i), "embedding"), 1e-6, "openai", i);
            }
        }
        json_decref(got), json_decref(req);
    }
    /* /info says what the server is */
    char *info = NULL;
    assert_int_equal(http(s.port, "GET", "/info", NULL, 0, &info), 200);
    json_t *parsed = json_loads(info, 0, NULL);
    assert_non_null(json_object_get(json_object_get(parsed, "model_type"), "embedding"));
    assert_int_equal(json_integer_value(json_object_get(parsed, "max_input_length")), 64);
    assert_int_equal(json_integer_value(json_object_get(parsed, "max_client_batch_size")), 32);
    json_decref(parsed), free(info);
    /* /metrics counted the requests */
    char *metrics = NULL;
    assert_int_equal(http(s.port, "GET", "/metrics", NULL, 0, &metrics), 200);
    assert_non_null(strstr(metrics, "te_request_success 5\n"));
    assert_non_null(strstr(metrics, "# TYPE te_request_queue_duration histogram"));
    assert_non_null(strstr(metrics, "te_batch_next_tokens_bucket{le=\"+Inf\"}"));
    free(metrics);
    assert_int_equal(stop_server(&s), 0);
    json_decref(texts), json_decref(normalized), json_decref(raw), json_decref(expected);
}

static void predict_equals_infer(void **unused)
{
    (void)unused;
    json_t *want = infer_records(INFER "/classify", INFER "/classify/input.jsonl", "--task classify");
    json_t *texts = answerable(INFER "/classify/input.jsonl", &want, 1);
    server s = start_server(INFER "/classify", "--auto-truncate --max-client-batch-size 64", NULL);
    int status;
    json_t *batch = json_array();
    for (size_t i = 0; i < json_array_size(texts); i++) {
        json_t *one = json_array();
        json_array_append(one, json_array_get(texts, i));
        json_array_append_new(batch, one);
    }
    for (int raw = 0; raw < 2; raw++) {
        json_t *req = embed_request(batch, "raw_scores", json_boolean(raw));
        json_t *got = post_json(s.port, "/predict", req, &status);
        assert_int_equal(status, 200);
        assert_int_equal(json_array_size(got), json_array_size(texts));
        for (size_t i = 0; i < json_array_size(texts); i++) {
            json_t *preds = json_array_get(got, i), *scores = json_object_get(json_array_get(want, i), "scores");
            assert_int_equal(json_array_size(preds), json_object_size(scores));
            double sum = 0, last = INFINITY, max_raw = -INFINITY;
            for (size_t k = 0; k < json_array_size(preds); k++)
                max_raw = fmax(max_raw, json_number_value(json_object_get(json_array_get(preds, k), "score")));
            for (size_t k = 0; k < json_array_size(preds); k++)
                sum += exp(json_number_value(json_object_get(json_array_get(preds, k), "score")) - max_raw);
            for (size_t k = 0; k < json_array_size(preds); k++) {
                json_t *p = json_array_get(preds, k);
                const double score = json_number_value(json_object_get(p, "score"));
                assert_true(score <= last); /* highest first */
                last = score;
                /* raw scores are logits: their softmax is sqz infer's probability */
                const double prob = raw ? exp(score - max_raw) / sum : score;
                const double expected = json_number_value(json_object_get(scores, json_string_value(json_object_get(p, "label"))));
                if (!(fabs(prob - expected) <= 1e-6))
                    fail_msg("input %zu label %s: %.9g, sqz infer %.9g (raw %d)", i,
                             json_string_value(json_object_get(p, "label")), prob, expected, raw);
            }
        }
        json_decref(got), json_decref(req);
    }
    /* one text: one list of predictions, not a batch */
    json_t *req = embed_request(json_array_get(texts, 1), NULL, NULL);
    json_t *got = post_json(s.port, "/predict", req, &status);
    assert_int_equal(status, 200);
    assert_true(json_is_object(json_array_get(got, 0)));
    assert_string_equal(json_string_value(json_object_get(json_array_get(got, 0), "label")),
                        json_string_value(json_object_get(json_array_get(want, 1), "label")));
    json_decref(got), json_decref(req);
    /* an embedding route on a classifier is the backend's refusal, and so is /rerank on a
     * classifier with more than one label (TEI: not a re-ranker) */
    expect_error(s.port, "/embed", "{\"inputs\": \"x\"}", 424, "Backend");
    expect_error(s.port, "/rerank", "{\"query\": \"q\", \"texts\": [\"x\"]}", 424, "Backend");
    assert_int_equal(stop_server(&s), 0);
    json_decref(batch), json_decref(texts), json_decref(want);
}

static void tokenize_gives_the_tokenizers_ids(void **unused)
{
    (void)unused;
    server s = start_server(INFER "/embed", NULL, NULL);
    const char *text = "Café crème, playing!";
    sqz_tokenizer *tok = NULL;
    assert_sqz_ok(sqz_tokenizer_load(INFER "/embed", &tok));
    sqz_encoding *enc = NULL;
    assert_sqz_ok(sqz_tokenizer_encode(tok, text, strlen(text), NULL, 0, 0, &enc));
    for (int special = 0; special < 2; special++) {
        json_t *req = embed_request(json_string(text), "add_special_tokens", json_boolean(special));
        json_decref(json_object_get(req, "inputs")); /* embed_request took its own reference */
        int status;
        json_t *got = post_json(s.port, "/tokenize", req, &status);
        assert_int_equal(status, 200);
        json_t *tokens = json_array_get(got, 0);
        assert_int_equal(json_array_size(tokens), enc->length - (special ? 0 : 2));
        for (size_t t = 0; t < json_array_size(tokens); t++) {
            json_t *o = json_array_get(tokens, t);
            const size_t at = t + (special ? 0 : 1);
            assert_int_equal(json_integer_value(json_object_get(o, "id")), enc->input_ids[at]);
            assert_int_equal(json_is_true(json_object_get(o, "special")), enc->sequence_ids[at] < 0);
            if (enc->sequence_ids[at] >= 0)
                assert_int_equal(json_integer_value(json_object_get(o, "start")), (json_int_t)enc->offsets[at].start);
        }
        json_decref(got), json_decref(req);
    }
    sqz_encoding_free(enc);
    sqz_tokenizer_free(tok);
    assert_int_equal(stop_server(&s), 0);
}

static void every_error_class(void **unused)
{
    (void)unused;
    server s = start_server(INFER "/embed", "--payload-limit 4096 --max-client-batch-size 4", NULL);
    /* 422: bodies that are not what the route takes */
    expect_error(s.port, "/embed", "{\"inputs\": [\"a\", ", 422, "Validation");
    expect_error(s.port, "/embed", "not json at all", 422, "Validation");
    expect_error(s.port, "/embed", "[\"a list\"]", 422, "Validation");
    expect_error(s.port, "/embed", "{\"inputs\": 5}", 422, "Validation");
    expect_error(s.port, "/embed", "{\"inputs\": [\"a\", 7]}", 422, "Validation");
    expect_error(s.port, "/embed", "{\"text\": \"a\"}", 422, "Validation");
    expect_error(s.port, "/embed", "{\"inputs\": \"a\", \"normalize\": \"yes\"}", 422, "Validation");
    expect_error(s.port, "/embed", "{\"inputs\": \"a\", \"truncation_direction\": \"Left\"}", 422, "Validation");
    expect_error(s.port, "/embed", "{\"inputs\": \"a\", \"inputs\": \"b\"}", 422, "Validation");
    expect_error(s.port, "/v1/embeddings", "{\"input\": \"a\", \"encoding_format\": \"hex\"}", 422, "Validation");
    expect_error(s.port, "/v1/embeddings", "{\"input\": [1, 2]}", 422, "Validation");
    /* 422 Tokenizer: a text the pipeline cannot encode (empty, invalid UTF-8) */
    expect_error(s.port, "/embed", "{\"inputs\": [\"fine\", \"\"]}", 422, "Tokenizer");
    expect_error(s.port, "/embed", "{\"inputs\": \"\\u0000\\udfff\"}", 422, "Validation"); /* lone surrogate: bad JSON */
    /* 413: too many inputs, none, too long without truncation, too big a body */
    expect_error(s.port, "/embed", "{\"inputs\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", 413, "Validation");
    expect_error(s.port, "/embed", "{\"inputs\": []}", 413, "Validation");
    char long_text[2048] = "{\"inputs\": \"";
    for (int i = 0; i < 100; i++)
        strcat(long_text, "word ");
    strcat(long_text, "\"}");
    expect_error(s.port, "/embed", long_text, 413, "Validation");
    long_text[strlen(long_text) - 1] = '\0';
    strcat(long_text, ", \"truncate\": true}");
    char *answer = NULL;
    assert_int_equal(http(s.port, "POST", "/embed", long_text, strlen(long_text), &answer), 200);
    free(answer);
    char *huge = malloc(1 << 20);
    memset(huge, ' ', 1 << 20);
    memcpy(huge, "{\"inputs\": \"", 12);
    memcpy(huge + (1 << 20) - 2, "\"}", 2);
    assert_int_equal(http(s.port, "POST", "/embed", huge, 1 << 20, &answer), 413);
    assert_non_null(strstr(answer, "\"error_type\":\"Validation\""));
    free(answer), free(huge);
    /* 404 and the wrong method */
    assert_int_equal(http(s.port, "POST", "/nowhere", "{}", 2, &answer), 404);
    free(answer);
    assert_int_equal(http(s.port, "GET", "/embed", NULL, 0, &answer), 404);
    free(answer);
    /* a model without a classifier refuses /predict as TEI does (424) */
    expect_error(s.port, "/predict", "{\"inputs\": \"a\"}", 424, "Backend");
    expect_error(s.port, "/rerank", "{\"query\": \"q\", \"texts\": [\"a\"]}", 424, "Backend");
    /* after all that, it still answers */
    assert_int_equal(post_text(s.port, "/embed", "{\"inputs\": \"still fine\"}", &answer), 200);
    free(answer);
    assert_int_equal(stop_server(&s), 0);
}

/* Launches of the server's warm-up run on cpu_ref, counted in this process with the same
 * pipeline options, so a fault can be put on the first request's run. */
static unsigned warm_up_launches(const char *model_dir)
{
    sqz_model *model = NULL;
    sqz_tokenizer *tok = NULL;
    sqz_pipeline *pipe = NULL;
    sqz_session *session = NULL;
    assert_sqz_ok(sqz_model_load(model_dir, NULL, &model));
    assert_sqz_ok(sqz_tokenizer_load(model_dir, &tok));
    const sqz_pipeline_options po = {.task = SQZ_TASK_AUTO, .batch_tokens = 16384, .normalize = SQZ_NORMALIZE_OFF};
    assert_sqz_ok(sqz_pipeline_create(model, tok, &po, &pipe));
    sqz_session_options so = {.backend = "cpu_ref"};
    assert_sqz_ok(sqz_session_create(model, &so, &session));
    assert_sqz_ok(sqz_pipeline_use_session(pipe, session));
    sqz_pipeline_item *item = NULL;
    assert_sqz_ok(sqz_pipeline_encode(pipe, &(sqz_text){SERVE_WARM_UP_TEXT, strlen(SERVE_WARM_UP_TEXT), NULL, 0}, &item));
    assert_sqz_ok(sqz_pipeline_run(pipe, session, &item, 1, NULL));
    assert_null(sqz_pipeline_item_error(item));
    sqz_run_stats stats;
    assert_sqz_ok(sqz_session_last_stats(session, &stats));
    sqz_pipeline_item_free(item);
    sqz_session_free(session);
    sqz_pipeline_free(pipe);
    sqz_tokenizer_free(tok);
    sqz_model_free(model);
    return (unsigned)stats.launches;
}

static void backend_failure_is_424_and_the_server_goes_on(void **unused)
{
    (void)unused;
    const unsigned launches = warm_up_launches(INFER "/embed");
    assert_true(launches > 0);
    char env[128];
    /* the first launch after the warm-up fails, and none after it */
    snprintf(env, sizeof env, "SQZ_FAULT_LAUNCH=%u:1000000000", launches + 1);
    server s = start_server(INFER "/embed", NULL, env);
    expect_error(s.port, "/embed", "{\"inputs\": \"A man is playing a guitar.\", \"normalize\": false}", 424, "Backend");
    char *answer = NULL;
    assert_int_equal(http(s.port, "GET", "/health", NULL, 0, &answer), 200);
    free(answer);
    int status;
    json_t *req = embed_request(json_string("A man is playing a guitar."), "normalize", json_false());
    json_decref(json_object_get(req, "inputs"));
    json_t *got = post_json(s.port, "/embed", req, &status);
    assert_int_equal(status, 200);
    json_t *want = infer_records(INFER "/embed", INFER "/embed/input.jsonl", "--task embed --no-normalize");
    same_floats(json_array_get(got, 0), json_object_get(json_array_get(want, 0), "embedding"), 1e-6, "after the fault", 0);
    json_decref(got), json_decref(req), json_decref(want);
    char *metrics = NULL;
    assert_int_equal(http(s.port, "GET", "/metrics", NULL, 0, &metrics), 200);
    assert_non_null(strstr(metrics, "te_request_failure{err=\"Backend\"} 1\n"));
    free(metrics);
    assert_int_equal(stop_server(&s), 0);
}

/* A request big enough to keep the server busy a while (many texts at full length). */
typedef struct big_request {
    int port, status;
    char *body;
    bool done;
} big_request;

static void *send_big(void *arg)
{
    big_request *b = arg;
    char *answer = NULL;
    b->status = http(b->port, "POST", "/embed", b->body, strlen(b->body), &answer);
    free(answer);
    __atomic_store_n(&b->done, true, __ATOMIC_SEQ_CST);
    return NULL;
}

static char *big_body(int texts)
{
    size_t cap = (size_t)texts * 400 + 64, len = 0;
    char *body = malloc(cap);
    len += (size_t)sprintf(body, "{\"inputs\": [");
    for (int i = 0; i < texts; i++)
        len += (size_t)sprintf(body + len, "%s\"text %d: the committee met on Tuesday to discuss the new budget for "
                                           "the city library, which had been closed for two years after the flood, "
                                           "and several members argued at length\"", i ? "," : "", i);
    sprintf(body + len, "], \"truncate\": true}");
    return body;
}

/* Whether the server has a request admitted (its /metrics, which takes no place). */
static bool in_flight(int port)
{
    char *metrics = NULL;
    const bool yes = http(port, "GET", "/metrics", NULL, 0, &metrics) == 200 &&
                     strstr(metrics, "sqz_requests_in_flight 1\n") != NULL;
    free(metrics);
    return yes;
}

static void overload_is_429_and_sigterm_drains(void **unused)
{
    (void)unused;
    const char *args = "--max-concurrent-requests 1 --max-client-batch-size 100000 --payload-limit 100000000";
    server s = start_server(INFER "/embed", args, NULL);
    big_request big = {.port = s.port, .body = big_body(300)};
    /* 429: once the big request holds the one place, a second one finds none */
    bool refused = false;
    for (int attempt = 0; attempt < 5 && !refused; attempt++) {
        big.done = false;
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, send_big, &big), 0);
        while (!__atomic_load_n(&big.done, __ATOMIC_SEQ_CST) && !refused) {
            if (!in_flight(s.port))
                continue;
            char *answer = NULL;
            const int st = post_text(s.port, "/embed", "{\"inputs\": \"small\"}", &answer);
            if (st == 429) {
                refused = strstr(answer, "\"error_type\":\"Overloaded\"") != NULL;
                assert_true(refused);
            } else {
                assert_int_equal(st, 200); /* the big one was answered in between */
            }
            free(answer);
        }
        pthread_join(t, NULL);
        assert_int_equal(big.status, 200);
    }
    assert_true(refused);
    /* SIGTERM while the big request is in flight: it is answered, then the server exits 0 */
    bool drained = false;
    for (int attempt = 0; attempt < 5 && !drained; attempt++) {
        big.done = false;
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, send_big, &big), 0);
        bool admitted = false;
        while (!admitted && !__atomic_load_n(&big.done, __ATOMIC_SEQ_CST))
            admitted = in_flight(s.port);
        if (admitted) {
            kill(s.pid, SIGTERM);
            pthread_join(t, NULL);
            assert_int_equal(big.status, 200);
            int status = 0;
            assert_int_equal(waitpid(s.pid, &status, 0), s.pid);
            forget(s.pid);
            assert_true(WIFEXITED(status));
            assert_int_equal(WEXITSTATUS(status), 0);
            drained = true;
        } else {
            pthread_join(t, NULL);
        }
    }
    assert_true(drained);
    size_t size;
    char *log = (char *)read_whole(s.log, &size);
    assert_non_null(strstr(log, "SIGTERM: answering the requests in flight"));
    assert_non_null(strstr(log, "stopped"));
    free(log);
    free(big.body);
}

/* Many clients at once while launches fail now and then: every request is answered once,
 * with 200 and the right embeddings or with 424, never anything else. */
typedef struct client {
    int port, index;
    json_t *texts, *want; /* shared, read-only */
    int ok, failed;
    char problem[256];
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    for (int r = 0; r < 12 && !c->problem[0]; r++) {
        /* a different slice of the texts each time: batches mix requests of every size */
        const size_t n = json_array_size(c->texts), first = (size_t)(c->index * 7 + r * 3) % n;
        const size_t count = 1 + (size_t)(c->index + r) % 5;
        json_t *req = json_object(), *texts = json_array();
        for (size_t k = 0; k < count; k++)
        { /* a copy: the shared strings' reference counts are not this thread's to touch */
            json_t *shared = json_array_get(c->texts, (first + k) % n);
            json_array_append_new(texts, json_stringn(json_string_value(shared), json_string_length(shared)));
        }
        json_object_set_new(req, "inputs", texts);
        json_object_set_new(req, "normalize", json_false());
        json_object_set_new(req, "truncate", json_true());
        char *text = json_dumps(req, JSON_COMPACT), *answer = NULL;
        const int status = http(c->port, "POST", "/embed", text, strlen(text), &answer);
        json_t *got = status == 200 ? json_loads(answer, 0, NULL) : NULL;
        if (status == 424 && strstr(answer, "\"error_type\":\"Backend\"")) {
            c->failed++;
        } else if (status != 200 || json_array_size(got) != count) {
            snprintf(c->problem, sizeof c->problem, "status %d: %.150s", status, answer ? answer : "");
        } else {
            for (size_t k = 0; k < count && !c->problem[0]; k++) {
                json_t *g = json_array_get(got, k), *w = json_array_get(c->want, (first + k) % n);
                for (size_t d = 0; d < json_array_size(w); d++)
                    if (fabs(json_number_value(json_array_get(g, d)) - json_number_value(json_array_get(w, d))) > 1e-6)
                        snprintf(c->problem, sizeof c->problem, "text %zu differs at %zu", (first + k) % n, d);
            }
            c->ok++;
        }
        json_decref(got), json_decref(req);
        free(text), free(answer);
    }
    return NULL;
}

/* The value of the /metrics line that starts with `name` (a name with its labels), or -1. */
static double metric(const char *metrics, const char *name)
{
    for (const char *at = strstr(metrics, name); at; at = strstr(at + 1, name))
        if ((at == metrics || at[-1] == '\n') && at[strlen(name)] == ' ')
            return atof(at + strlen(name) + 1);
    return -1;
}

/* Runs the clients of concurrent_clients_under_faults (16 at once, 12 requests each);
 * fails on any request that is neither 200 with the right embeddings nor 424. */
static void run_clients(int port, json_t *texts, json_t *want, int *ok, int *failed)
{
    enum { CLIENTS = 16 };
    client clients[CLIENTS];
    pthread_t threads[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = (client){.port = port, .index = i, .texts = texts, .want = want};
        assert_int_equal(pthread_create(&threads[i], NULL, client_main, &clients[i]), 0);
    }
    *ok = *failed = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(threads[i], NULL);
        if (clients[i].problem[0])
            fail_msg("client %d: %s", i, clients[i].problem);
        *ok += clients[i].ok;
        *failed += clients[i].failed;
    }
    assert_int_equal(*ok + *failed, CLIENTS * 12);
}

static void concurrent_clients_under_faults(void **unused)
{
    (void)unused;
    json_t *lists[1] = {infer_records(INFER "/embed", INFER "/embed/input.jsonl", "--task embed --no-normalize")};
    json_t *texts = answerable(INFER "/embed/input.jsonl", lists, 1);
    json_t *want = json_array();
    for (size_t i = 0; i < json_array_size(lists[0]); i++)
        json_array_append(want, json_object_get(json_array_get(lists[0], i), "embedding"));
    const unsigned launches = warm_up_launches(INFER "/embed");
    char env[128];
    /* a fault every few runs after the warm-up, at varying places within a run */
    snprintf(env, sizeof env, "SQZ_FAULT_LAUNCH=%u:%u", launches + 3, 3 * launches + 7);
    server s = start_server(INFER "/embed", "--max-batch-tokens 256", env);
    int ok = 0, failed = 0;
    run_clients(s.port, texts, want, &ok, &failed);
    assert_true(ok > 0);
    char *metrics = NULL;
    assert_int_equal(http(s.port, "GET", "/metrics", NULL, 0, &metrics), 200);
    /* the faults did fire (runs failed; most were answered by their halves) */
    const char *failures = strstr(metrics, "\nsqz_batch_failures ");
    assert_non_null(failures);
    assert_true(atoi(failures + strlen("\nsqz_batch_failures ")) > 0);
    char line[128];
    snprintf(line, sizeof line, "te_request_failure{err=\"Backend\"} %d\n", failed);
    assert_non_null(strstr(metrics, line));
    assert_non_null(strstr(metrics, "te_queue_size 0\n"));
    free(metrics);
    assert_int_equal(stop_server(&s), 0);
    json_decref(texts), json_decref(want), json_decref(lists[0]);
}

static void vanishing_clients_do_not_hurt_others(void **unused)
{
    (void)unused;
    server s = start_server(INFER "/embed", NULL, NULL);
    for (int i = 0; i < 20; i++) {
        /* half a body, then gone */
        int fd = connect_to(s.port);
        assert_true(fd >= 0);
        const char *part = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [\"a";
        send_all(fd, part, strlen(part));
        close(fd);
        /* a whole request, gone before the answer */
        fd = connect_to(s.port);
        assert_true(fd >= 0);
        const char *whole = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\n{\"inputs\": \"gone\"}";
        send_all(fd, whole, strlen(whole));
        close(fd);
        /* headers only, then gone */
        fd = connect_to(s.port);
        assert_true(fd >= 0);
        send_all(fd, "POST /emb", 9);
        close(fd);
    }
    char *answer = NULL;
    assert_int_equal(post_text(s.port, "/embed", "{\"inputs\": \"still here\"}", &answer), 200);
    free(answer);
    assert_int_equal(http(s.port, "GET", "/health", NULL, 0, &answer), 200);
    free(answer);
    assert_int_equal(stop_server(&s), 0);
}

/* ---- /rerank ---------------------------------------------------------------------------- */

/* A one-label sequence classifier in `dir`: the classify fixture's encoder and tokenizer with
 * a fresh random one-row classifier head (from `seed`). */
static void write_one_label_model(const char *dir, uint64_t seed)
{
    assert_int_equal(mkdir(dir, 0777), 0);
    const char *copied[] = {"vocab.txt", "tokenizer_config.json"};
    for (size_t i = 0; i < 2; i++) {
        char *from = test_path(INFER "/classify", copied[i]), *to = test_path(dir, copied[i]);
        copy_file(from, to);
        free(from), free(to);
    }
    json_t *config = json_load_file(INFER "/classify/config.json", 0, NULL);
    assert_non_null(config);
    json_object_set_new(config, "id2label", json_pack("{s:s}", "0", "relevance"));
    json_object_set_new(config, "label2id", json_pack("{s:i}", "relevance", 0));
    char *path = test_path(dir, "config.json");
    assert_int_equal(json_dump_file(config, path, JSON_INDENT(2)), 0);
    json_decref(config), free(path);
    sqz_tensor_file *file = NULL;
    assert_sqz_ok(sqz_tensor_file_read(INFER "/classify/model.safetensors", NULL, &file));
    sqz_tf_write_tensor *tensors = calloc(file->count, sizeof *tensors);
    float weight[64], bias;
    size_t n = 0;
    for (size_t i = 0; i < file->count; i++) {
        const sqz_tf_tensor *t = &file->tensors[i];
        if (!t->data)
            continue; /* integer buffers the engine does not read */
        tensors[n] = (sqz_tf_write_tensor){.name = t->name, .ndim = t->ndim, .data = t->data};
        memcpy(tensors[n].shape, t->shape, sizeof t->shape);
        if (strcmp(t->name, "classifier.weight") == 0) {
            assert_true(t->ndim == 2 && t->shape[1] <= 64);
            for (int64_t k = 0; k < t->shape[1]; k++)
                weight[k] = test_uniform(&seed);
            tensors[n].shape[0] = 1;
            tensors[n].data = weight;
        } else if (strcmp(t->name, "classifier.bias") == 0) {
            bias = 0.5f * test_uniform(&seed);
            tensors[n].shape[0] = 1;
            tensors[n].data = &bias;
        }
        n++;
    }
    path = test_path(dir, "model.safetensors");
    assert_sqz_ok(sqz_safetensors_write(path, tensors, n, SQZ_TF_F32));
    free(path), free(tensors);
    sqz_tensor_file_free(file);
}

/* The one label's logit for (query, text) from the session's padded run of that pair alone:
 * the tokenizer is shared with the server, nothing else of its path (pipeline, packing,
 * batching) is. */
static double reference_logit(sqz_session *session, const sqz_tokenizer *tok, const char *query, const char *text,
                              int max_length)
{
    sqz_encoding *enc = NULL;
    assert_sqz_ok(sqz_tokenizer_encode(tok, query, strlen(query), text, strlen(text), max_length, &enc));
    const sqz_input in = {.batch = 1, .seq_len = (int)enc->length, .input_ids = enc->input_ids,
                          .attention_mask = enc->attention_mask, .token_type_ids = enc->token_type_ids};
    sqz_result *result = NULL;
    assert_sqz_ok(sqz_session_run(session, &in, &result));
    const sqz_output *logits = sqz_result_find(result, "logits");
    assert_non_null(logits);
    assert_true(logits->ndim == 2 && logits->shape[0] == 1 && logits->shape[1] == 1);
    const double logit = logits->data[0];
    sqz_result_free(result);
    sqz_encoding_free(enc);
    return logit;
}

static json_t *rerank_request(const char *query, json_t *texts, const char *flag, bool value)
{
    json_t *req = json_pack("{s:s, s:O, s:b}", "query", query, "texts", texts, "truncate", 1);
    if (flag)
        json_object_set_new(req, flag, json_boolean(value));
    return req;
}

static void rerank_scores_are_sigmoid_of_logits(void **unused)
{
    (void)unused;
    char *dir = test_path(tmp, "reranker");
    const uint64_t seed = (uint64_t)time(NULL);
    print_message("the one-label model's head: seed %llu\n", (unsigned long long)seed);
    write_one_label_model(dir, seed);
    json_t *records = infer_records(INFER "/classify", INFER "/classify/input.jsonl", "--task classify");
    json_t *texts = answerable(INFER "/classify/input.jsonl", &records, 1);
    const size_t n = json_array_size(texts);
    const char *query = "Which review says the film was good?";
    /* the references, independently of the server */
    sqz_model *model = NULL;
    sqz_tokenizer *tok = NULL;
    sqz_session *session = NULL;
    assert_sqz_ok(sqz_model_load(dir, NULL, &model));
    assert_sqz_ok(sqz_tokenizer_load(dir, &tok));
    sqz_model_info mi;
    assert_sqz_ok(sqz_model_get_info(model, &mi));
    assert_int_equal(mi.num_labels, 1);
    sqz_session_options so = {.backend = "cpu_ref"};
    assert_sqz_ok(sqz_session_create(model, &so, &session));
    double *logit = malloc(n * sizeof *logit);
    for (size_t i = 0; i < n; i++)
        logit[i] = reference_logit(session, tok, query, json_string_value(json_array_get(texts, i)),
                                   mi.max_position_embeddings);
    server s = start_server(dir, "--max-client-batch-size 64", NULL);
    char *answer = NULL;
    assert_int_equal(http(s.port, "GET", "/info", NULL, 0, &answer), 200);
    json_t *info = json_loads(answer, 0, NULL);
    assert_non_null(json_object_get(json_object_get(info, "model_type"), "reranker"));
    json_decref(info), free(answer);
    for (int variant = 0; variant < 3; variant++) { /* sigmoid; raw_scores; return_text */
        json_t *req = rerank_request(query, texts, variant == 1 ? "raw_scores" : variant == 2 ? "return_text" : NULL, true);
        int status;
        json_t *got = post_json(s.port, "/rerank", req, &status);
        assert_int_equal(status, 200);
        assert_int_equal(json_array_size(got), n);
        bool *seen = calloc(n, sizeof *seen);
        double last = INFINITY;
        for (size_t r = 0; r < n; r++) {
            json_t *rank = json_array_get(got, r);
            const json_int_t index = json_integer_value(json_object_get(rank, "index"));
            assert_true(json_is_integer(json_object_get(rank, "index")) && index >= 0 && (size_t)index < n);
            assert_false(seen[index]);
            seen[index] = true;
            const double score = json_number_value(json_object_get(rank, "score"));
            assert_true(score <= last); /* highest first */
            last = score;
            const double want = variant == 1 ? logit[index] : 1.0 / (1.0 + exp(-logit[index]));
            if (!(fabs(score - want) <= 1e-6 * fmax(1.0, fabs(want))))
                fail_msg("rank %zu (text %d): score %.9g, expected %.9g (variant %d)", r, (int)index, score, want, variant);
            json_t *text = json_object_get(rank, "text");
            if (variant == 2)
                assert_string_equal(json_string_value(text), json_string_value(json_array_get(texts, (size_t)index)));
            else
                assert_null(text);
        }
        free(seen);
        json_decref(got), json_decref(req);
    }
    /* /predict on a one-label model: that label with sigmoid(logit), as TEI answers */
    json_t *req = json_pack("{s:[s,O]}", "inputs", query, json_array_get(texts, 0));
    int status;
    json_t *got = post_json(s.port, "/predict", req, &status);
    assert_int_equal(status, 200);
    assert_int_equal(json_array_size(got), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(got, 0), "label")), "relevance");
    const double score = json_number_value(json_object_get(json_array_get(got, 0), "score"));
    assert_true(fabs(score - 1.0 / (1.0 + exp(-logit[0]))) <= 1e-6);
    json_decref(got), json_decref(req);
    /* the errors: TEI's classes */
    expect_error(s.port, "/rerank", "{\"query\": \"q\", \"texts\": []}", 413, "Validation");
    expect_error(s.port, "/rerank", "{\"texts\": [\"a\"]}", 422, "Validation");
    expect_error(s.port, "/rerank", "{\"query\": 5, \"texts\": [\"a\"]}", 422, "Validation");
    expect_error(s.port, "/rerank", "{\"query\": \"q\"}", 422, "Validation");
    expect_error(s.port, "/rerank", "{\"query\": \"q\", \"texts\": \"a\"}", 422, "Validation");
    expect_error(s.port, "/rerank", "{\"query\": \"q\", \"texts\": [\"a\", 3]}", 422, "Validation");
    expect_error(s.port, "/rerank", "{\"query\": \"q\", \"texts\": [\"a\"], \"raw_scores\": 1}", 422, "Validation");
    expect_error(s.port, "/rerank", "{\"query\": \"\", \"texts\": [\"a\", \"\"]}", 422, "Tokenizer");
    char body[8192] = "{\"query\": \"q\", \"texts\": [\"";
    for (int i = 0; i < 100; i++)
        strcat(body, "word ");
    strcat(body, "\"]}");
    expect_error(s.port, "/rerank", body, 413, "Validation"); /* too long without truncate */
    strcpy(body, "{\"query\": \"q\", \"texts\": [\"a\"");
    for (int i = 0; i < 64; i++)
        strcat(body, ", \"a\"");
    strcat(body, "]}");
    expect_error(s.port, "/rerank", body, 413, "Validation"); /* 65 texts, more than 64 */
    assert_int_equal(stop_server(&s), 0);
    free(logit);
    sqz_session_free(session);
    sqz_tokenizer_free(tok);
    sqz_model_free(model);
    json_decref(texts), json_decref(records);
    free(dir);
}

/* ---- several devices ------------------------------------------------------------------ */

static void several_devices_share_the_batches(void **unused)
{
    (void)unused;
    /* --device and --devices together are a usage error */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s serve --model %s --device 0 --devices cpu_ref,cpu_ref 2>/dev/null", SQZ_SQZ_BINARY,
             INFER "/embed");
    const int rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
    json_t *lists[1] = {infer_records(INFER "/embed", INFER "/embed/input.jsonl", "--task embed --no-normalize")};
    json_t *texts = answerable(INFER "/embed/input.jsonl", lists, 1);
    json_t *want = json_array();
    for (size_t i = 0; i < json_array_size(lists[0]); i++)
        json_array_append(want, json_object_get(json_array_get(lists[0], i), "embedding"));
    const char *batches[2] = {"sqz_device_batches{index=\"0\",device=\"cpu_ref\"}",
                              "sqz_device_batches{index=\"1\",device=\"cpu_ref\"}"};
    const char *items[2] = {"sqz_device_items{index=\"0\",device=\"cpu_ref\"}",
                            "sqz_device_items{index=\"1\",device=\"cpu_ref\"}"};
    const char *failures[2] = {"sqz_device_batch_failures{index=\"0\",device=\"cpu_ref\"}",
                               "sqz_device_batch_failures{index=\"1\",device=\"cpu_ref\"}"};
    const unsigned launches = warm_up_launches(INFER "/embed");
    char env[2][128];
    /* faults = 1: every session gets the faults (a fault every few runs after its own
     * warm-up); faults = 2: only the second session the server makes, device 1's ("@2") */
    snprintf(env[0], sizeof env[0], "SQZ_FAULT_LAUNCH=%u:%u", launches + 3, 3 * launches + 7);
    snprintf(env[1], sizeof env[1], "SQZ_FAULT_LAUNCH=%u:%u@2", launches + 3, 3 * launches + 7);
    for (int faults = 0; faults < 3; faults++) {
        server s = start_server(INFER "/embed", "--devices cpu_ref,cpu_ref --max-batch-tokens 256",
                                faults ? env[faults - 1] : NULL);
        char *metrics = NULL;
        int ok = 0, failed = 0, all_ok = 0, all_failed = 0;
        /* rounds of 16 clients until both devices have run batches (the first round all but
         * always does: a batch goes to an idle device before a busy one takes a second) */
        for (int round = 0; round < 5; round++) {
            run_clients(s.port, texts, want, &ok, &failed);
            all_ok += ok;
            all_failed += failed;
            if (!faults)
                assert_int_equal(failed, 0);
            free(metrics);
            assert_int_equal(http(s.port, "GET", "/metrics", NULL, 0, &metrics), 200);
            if (metric(metrics, batches[0]) > 0 && metric(metrics, batches[1]) > 0 &&
                (faults < 2 || metric(metrics, failures[1]) > 0))
                break;
        }
        assert_true(metric(metrics, batches[0]) > 0 && metric(metrics, batches[1]) > 0);
        /* each item ran on one device: the devices' counts add up to the whole */
        assert_true(metric(metrics, batches[0]) + metric(metrics, batches[1]) == metric(metrics, "te_batch_inference_count"));
        assert_true(metric(metrics, items[0]) + metric(metrics, items[1]) == metric(metrics, "te_batch_next_size_sum"));
        if (faults) { /* the failing runs were answered 424 item by item, the rest 200 */
            assert_true(metric(metrics, "sqz_batch_failures") > 0);
            assert_true(metric(metrics, "te_request_failure{err=\"Backend\"}") == all_failed);
            assert_true(all_ok > 0);
        }
        if (faults == 2) /* the healthy device failed nothing; the faulty one's failures were all */
            assert_true(metric(metrics, failures[0]) == 0 && metric(metrics, failures[1]) > 0);
        free(metrics);
        assert_int_equal(stop_server(&s), 0);
    }
    json_decref(texts), json_decref(want), json_decref(lists[0]);
}

/* ---- before the warm-up ------------------------------------------------------------------ */

static void not_ready_is_503_until_the_warm_up(void **unused)
{
    (void)unused;
    char *gate = test_path(tmp, "warm-up-gate");
    assert_int_equal(mkfifo(gate, 0600), 0);
    char env[600];
    snprintf(env, sizeof env, "SQZ_SERVE_WARM_UP_GATE=%s", gate);
    /* the server holds its warm-up until the gate is written: however long this takes, it is
     * listening and not ready */
    server s = start_server_until(INFER "/embed", NULL, env, "warm-up held until");
    for (int i = 0; i < 3; i++) {
        char *answer = NULL;
        assert_int_equal(http(s.port, "GET", "/health", NULL, 0, &answer), 503);
        json_t *parsed = json_loads(answer, 0, NULL);
        assert_string_equal(json_string_value(json_object_get(parsed, "error_type")), "Unhealthy");
        assert_non_null(json_string_value(json_object_get(parsed, "error")));
        json_decref(parsed), free(answer);
        expect_error(s.port, "/embed", "{\"inputs\": \"a\"}", 503, "Unhealthy");
        expect_error(s.port, "/v1/embeddings", "{\"input\": \"a\"}", 503, "Unhealthy");
    }
    char *metrics = NULL;
    assert_int_equal(http(s.port, "GET", "/metrics", NULL, 0, &metrics), 200);
    assert_true(metric(metrics, "te_request_failure{err=\"Unhealthy\"}") == 6);
    assert_true(metric(metrics, "te_batch_inference_count") == 0);
    free(metrics);
    /* open the gate (the server may not have opened its end yet: ENXIO until it has) */
    int fd = -1;
    for (const double deadline = now_s() + 60; fd < 0 && now_s() < deadline;) {
        fd = open(gate, O_WRONLY | O_NONBLOCK);
        if (fd < 0)
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "go", 2), 2);
    close(fd);
    int status = -1;
    for (const double deadline = now_s() + 120; status != 200 && now_s() < deadline;) {
        char *answer = NULL;
        status = http(s.port, "GET", "/health", NULL, 0, &answer);
        free(answer);
        if (status != 200) {
            assert_int_equal(status, 503);
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
        }
    }
    assert_int_equal(status, 200);
    char *answer = NULL;
    assert_int_equal(post_text(s.port, "/embed", "{\"inputs\": \"ready now\"}", &answer), 200);
    free(answer);
    assert_int_equal(stop_server(&s), 0);
    free(gate);
}

int main(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s serve --model /nonexistent 2>&1 | grep -q 'without libmicrohttpd'", SQZ_SQZ_BINARY);
    if (system(cmd) == 0) {
        printf("SKIP: sqz was built without libmicrohttpd\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    tmp = make_temp_dir();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(embeddings_equal_infer_and_transformers),
        cmocka_unit_test(predict_equals_infer),
        cmocka_unit_test(tokenize_gives_the_tokenizers_ids),
        cmocka_unit_test(every_error_class),
        cmocka_unit_test(backend_failure_is_424_and_the_server_goes_on),
        cmocka_unit_test(overload_is_429_and_sigterm_drains),
        cmocka_unit_test(concurrent_clients_under_faults),
        cmocka_unit_test(vanishing_clients_do_not_hurt_others),
        cmocka_unit_test(rerank_scores_are_sigmoid_of_logits),
        cmocka_unit_test(several_devices_share_the_batches),
        cmocka_unit_test(not_ready_is_503_until_the_warm_up),
    };
    const int failed = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < n_live; i++)
        if (kill(live[i], SIGKILL) == 0)
            waitpid(live[i], NULL, 0);
    remove_temp_dir(tmp);
    return failed;
}
