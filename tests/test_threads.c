/* What the header promises about threads, checked with real threads: one model shared by
 * sessions that run at once (one per thread, on every backend that can run here) gives what a
 * single-threaded run gives, bit for bit; one tokenizer and one embedder shared by threads
 * encode and embed as they do alone; results are freed in another thread than the one that ran
 * them; sqz_last_error() keeps each thread's own message. Inputs are fresh random each run (the
 * seed is printed). Built with the sanitizers, ThreadSanitizer finds data races here too. */
#include "tests/test_util.h"

#include <jansson.h>
#include <pthread.h>
#include <time.h>

#define FIXTURES SQZ_FIXTURES_DIR "/models"
#define THREADS 4
#define BATCHES 3
#define ROUNDS 2
#define BATCH 3
#define SEQ 24

/* A result's host outputs copied out: the single-threaded answer each thread must match. */
typedef struct outputs {
    size_t count;
    size_t bytes[8];
    unsigned char *data[8];
} outputs;

typedef struct batch {
    int64_t ids[BATCH * SEQ], mask[BATCH * SEQ], types[BATCH * SEQ];
    sqz_input input;
} batch;

static uint64_t seed;

static uint64_t next_random(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 33;
}

/* Rows of random length (1..SEQ real tokens, [CLS] first), random ids and token types. */
static void random_batch(uint64_t *state, int vocab, batch *b)
{
    for (int r = 0; r < BATCH; r++) {
        const int len = 1 + (int)(next_random(state) % SEQ);
        for (int t = 0; t < SEQ; t++) {
            const int i = r * SEQ + t;
            b->mask[i] = t < len;
            b->ids[i] = t == 0 ? 2 : t < len ? (int64_t)(next_random(state) % (uint64_t)vocab) : 0;
            b->types[i] = t < len ? (int64_t)(next_random(state) % 2) : 0;
        }
    }
    b->input = (sqz_input){.batch = BATCH, .seq_len = SEQ, .input_ids = b->ids,
                           .attention_mask = b->mask, .token_type_ids = b->types};
}

static void copy_outputs(const sqz_result *r, outputs *out)
{
    out->count = sqz_result_count(r);
    assert_true(out->count > 0 && out->count <= 8);
    for (size_t i = 0; i < out->count; i++) {
        const sqz_output *o = sqz_result_get(r, i);
        out->bytes[i] = o->bytes;
        out->data[i] = malloc(o->bytes);
        assert_non_null(out->data[i]);
        memcpy(out->data[i], o->values, o->bytes);
    }
}

static void free_outputs(outputs *o)
{
    for (size_t i = 0; i < o->count; i++)
        free(o->data[i]);
}

/* ---- sessions ----------------------------------------------------------------------------- */

typedef struct session_job {
    const sqz_model *model;
    const char *backend;
    const batch *batches;
    int thread;
    sqz_result *results[ROUNDS * BATCHES]; /* handed to the main thread, which frees them */
    int run_of[ROUNDS * BATCHES];          /* which batch each result is of */
    sqz_status status;
    char message[512];
} session_job;

static const char *settings_for(const char *backend)
{
    /* a CUDA session picks kernel variants by timing them unless told not to; bit-for-bit
     * comparisons need the same choice in every session */
    return strncmp(backend, "cuda", 4) == 0 ? "cuda.measure=0" : NULL;
}

static void *run_session(void *arg)
{
    session_job *job = arg;
    const sqz_session_options options = {.backend = job->backend, .settings = settings_for(job->backend)};
    sqz_session *s = NULL;
    job->status = sqz_session_create(job->model, &options, &s);
    /* each thread its own order of the batches, so different shapes run at once */
    for (int k = 0; k < ROUNDS * BATCHES && job->status == SQZ_OK; k++) {
        job->run_of[k] = (k + job->thread) % BATCHES;
        job->status = sqz_session_run(s, &job->batches[job->run_of[k]].input, &job->results[k]);
    }
    if (job->status != SQZ_OK)
        snprintf(job->message, sizeof job->message, "%s", sqz_last_error());
    sqz_session_free(s); /* the results outlive it */
    return NULL;
}

/* Whether `name` is an entry of the comma-separated `list`. */
static bool listed(const char *list, const char *name)
{
    const size_t n = strlen(name);
    for (const char *p = list; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* Every backend that can run here, or those SQZ_TEST_BACKENDS lists ("cpu_ref,opencl": for
 * ThreadSanitizer, which cannot follow cuda-sim's own stack switching) */
static void sessions_share_a_model(void **unused)
{
    sqz_model *model = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/base-safetensors", NULL, &model));
    sqz_model_info info;
    assert_sqz_ok(sqz_model_get_info(model, &info));
    uint64_t state = seed;
    batch batches[BATCHES];
    for (int b = 0; b < BATCHES; b++)
        random_batch(&state, info.vocab_size, &batches[b]);

    size_t backends_run = 0;
    for (size_t n = 0; sqz_backend_name(n); n++) {
        const char *backend = sqz_backend_name(n), *only = getenv("SQZ_TEST_BACKENDS");
        if (only && !listed(only, backend))
            continue;
        if (sqz_backend_probe(backend) != SQZ_OK) {
            print_message("%s: not here (%s)\n", backend, sqz_last_error());
            continue;
        }
        /* the answer: one session, one thread */
        outputs want[BATCHES];
        sqz_session *alone = NULL;
        const sqz_session_options options = {.backend = backend, .settings = settings_for(backend)};
        assert_sqz_ok(sqz_session_create(model, &options, &alone));
        for (int b = 0; b < BATCHES; b++) {
            sqz_result *r = NULL;
            assert_sqz_ok(sqz_session_run(alone, &batches[b].input, &r));
            copy_outputs(r, &want[b]);
            sqz_result_free(r);
        }
        sqz_session_free(alone);

        pthread_t threads[THREADS];
        session_job *jobs = calloc(THREADS, sizeof *jobs);
        assert_non_null(jobs);
        for (int t = 0; t < THREADS; t++) {
            jobs[t] = (session_job){.model = model, .backend = backend, .batches = batches, .thread = t};
            assert_int_equal(pthread_create(&threads[t], NULL, run_session, &jobs[t]), 0);
        }
        for (int t = 0; t < THREADS; t++)
            assert_int_equal(pthread_join(threads[t], NULL), 0);
        size_t compared = 0;
        for (int t = 0; t < THREADS; t++) {
            if (jobs[t].status != SQZ_OK)
                fail_msg("%s, thread %d: %s: %s", backend, t, sqz_status_str(jobs[t].status), jobs[t].message);
            for (int k = 0; k < ROUNDS * BATCHES; k++) {
                const outputs *w = &want[jobs[t].run_of[k]];
                const sqz_result *r = jobs[t].results[k];
                assert_int_equal(sqz_result_count(r), w->count);
                for (size_t i = 0; i < w->count; i++) {
                    const sqz_output *o = sqz_result_get(r, i);
                    assert_int_equal(o->bytes, w->bytes[i]);
                    if (memcmp(o->values, w->data[i], w->bytes[i]) != 0)
                        fail_msg("%s, thread %d, batch %d: output '%s' differs from the single-threaded "
                                 "run (seed %llu)", backend, t, jobs[t].run_of[k], o->name,
                                 (unsigned long long)seed);
                    compared += w->bytes[i] / sizeof(float);
                }
                sqz_result_free(jobs[t].results[k]);
            }
        }
        print_message("%s: %d sessions at once, %zu values equal to one session's\n", backend, THREADS,
                      compared);
        free(jobs);
        for (int b = 0; b < BATCHES; b++)
            free_outputs(&want[b]);
        backends_run++;
    }
    assert_true(backends_run >= 1); /* cpu_ref at least */
    sqz_model_free(model);
}

/* ---- tokenizer ---------------------------------------------------------------------------- */

#define MAX_TEXTS 400

typedef struct encoded {
    size_t length;
    int64_t *ids, *types;
    sqz_span *offsets;
} encoded;

typedef struct token_job {
    const sqz_tokenizer *tok;
    char *const *texts;
    const char *const *pairs;
    size_t n;
    const encoded *want;
    int thread;
    char failure[512];
} token_job;

static sqz_status encode(const sqz_tokenizer *tok, const char *text, const char *pair, sqz_encoding **enc)
{
    return sqz_tokenizer_encode(tok, text, strlen(text), pair, pair ? strlen(pair) : 0, 64, enc);
}

static void *encode_all(void *arg)
{
    token_job *job = arg;
    sqz_encoding *enc = NULL; /* one encoding, reused in place, per thread */
    for (size_t k = 0; k < job->n && !job->failure[0]; k++) {
        const size_t i = (k * 7 + (size_t)job->thread * 13) % job->n;
        const encoded *w = &job->want[i];
        if (encode(job->tok, job->texts[i], job->pairs[i], &enc) != SQZ_OK)
            snprintf(job->failure, sizeof job->failure, "text %zu: %s", i, sqz_last_error());
        else if (enc->length != w->length || memcmp(enc->input_ids, w->ids, w->length * sizeof *w->ids) ||
                 memcmp(enc->token_type_ids, w->types, w->length * sizeof *w->types) ||
                 memcmp(enc->offsets, w->offsets, w->length * sizeof *w->offsets))
            snprintf(job->failure, sizeof job->failure, "text %zu: encoded differently than alone", i);
    }
    sqz_encoding_free(enc);
    return NULL;
}

/* Texts of the tokenizer fixtures' corpus plus random ones (ASCII, accents, CJK, punctuation). */
static size_t gather_texts(char **texts, size_t max)
{
    json_error_t err;
    FILE *f = fopen(SQZ_FIXTURES_DIR "/tokenizer/corpus.jsonl", "r");
    assert_non_null(f);
    size_t n = 0;
    char line[1 << 16];
    while (n < max / 2 && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, &err);
        const char *text = json_string_value(json_object_get(j, "text"));
        if (text)
            texts[n++] = strdup(text);
        json_decref(j);
    }
    fclose(f);
    static const char *const pieces[] = {"the ", "Caf\xc3\xa9 ", "\xe7\x94\x9f\xe6\xb4\xbb", "!", " ",
                                         "un\xcc\x81", "running", "[MASK]", "42", "\xe2\x80\x94"};
    uint64_t state = seed ^ 0x5bd1e995u;
    while (n < max) {
        char text[512] = "";
        const int words = 1 + (int)(next_random(&state) % 40);
        for (int w = 0; w < words; w++)
            strncat(text, pieces[next_random(&state) % 10], sizeof text - strlen(text) - 1);
        texts[n++] = strdup(text);
    }
    return n;
}

static void tokenizer_shared_by_threads(void **unused)
{
    sqz_tokenizer *tok = NULL;
    assert_sqz_ok(sqz_tokenizer_load(SQZ_FIXTURES_DIR "/tokenizer", &tok));
    char *texts[MAX_TEXTS];
    const char *pairs[MAX_TEXTS];
    const size_t n = gather_texts(texts, MAX_TEXTS);
    encoded *want = calloc(n, sizeof *want);
    assert_non_null(want);
    for (size_t i = 0; i < n; i++) {
        pairs[i] = i % 3 == 0 ? texts[(i + 1) % n] : NULL; /* some pairs, truncated to 64 */
        sqz_encoding *enc = NULL;
        assert_sqz_ok(encode(tok, texts[i], pairs[i], &enc));
        want[i] = (encoded){enc->length, malloc(enc->length * sizeof(int64_t) + 1),
                            malloc(enc->length * sizeof(int64_t) + 1), malloc(enc->length * sizeof(sqz_span) + 1)};
        memcpy(want[i].ids, enc->input_ids, enc->length * sizeof(int64_t));
        memcpy(want[i].types, enc->token_type_ids, enc->length * sizeof(int64_t));
        memcpy(want[i].offsets, enc->offsets, enc->length * sizeof(sqz_span));
        sqz_encoding_free(enc);
    }
    pthread_t threads[THREADS];
    token_job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (token_job){.tok = tok, .texts = texts, .pairs = pairs, .n = n, .want = want, .thread = t};
        assert_int_equal(pthread_create(&threads[t], NULL, encode_all, &jobs[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(threads[t], NULL), 0);
        if (jobs[t].failure[0])
            fail_msg("thread %d: %s (seed %llu)", t, jobs[t].failure, (unsigned long long)seed);
    }
    print_message("%d threads encoded %zu texts each as one thread does\n", THREADS, n);
    for (size_t i = 0; i < n; i++) {
        free(want[i].ids), free(want[i].types), free(want[i].offsets);
        free(texts[i]);
    }
    free(want);
    sqz_tokenizer_free(tok);
}

/* ---- embedder ----------------------------------------------------------------------------- */

typedef struct embed_job {
    const sqz_embedder *emb;
    const float *hidden, *pooled;
    size_t len;
    int dimension;
    const float *want;
    int same;
} embed_job;

static void *embed_many(void *arg)
{
    embed_job *job = arg;
    float *got = malloc((size_t)job->dimension * sizeof *got);
    job->same = got != NULL;
    for (int k = 0; k < 200 && job->same; k++)
        job->same = sqz_embedder_embed(job->emb, job->hidden, job->len, job->pooled, got) == SQZ_OK &&
                    memcmp(got, job->want, (size_t)job->dimension * sizeof *got) == 0;
    free(got);
    return NULL;
}

static void embedder_shared_by_threads(void **unused)
{
    sqz_model *model = NULL;
    sqz_embedder *emb = NULL;
    assert_sqz_ok(sqz_model_load(FIXTURES "/sqb-default/base-safetensors", NULL, &model));
    assert_sqz_ok(sqz_embedder_load(model, &emb));
    sqz_embedder_info info;
    assert_sqz_ok(sqz_embedder_get_info(emb, &info));
    sqz_model_info mi;
    assert_sqz_ok(sqz_model_get_info(model, &mi));
    const size_t len = 9;
    float *hidden = malloc(len * (size_t)mi.hidden_size * sizeof *hidden);
    float *pooled = malloc((size_t)mi.hidden_size * sizeof *pooled);
    float *want = malloc((size_t)info.dimension * sizeof *want);
    assert_true(hidden && pooled && want);
    uint64_t state = seed;
    for (size_t i = 0; i < len * (size_t)mi.hidden_size; i++)
        hidden[i] = test_uniform(&state);
    for (int i = 0; i < mi.hidden_size; i++)
        pooled[i] = test_uniform(&state);
    assert_sqz_ok(sqz_embedder_embed(emb, hidden, len, pooled, want));
    pthread_t threads[THREADS];
    embed_job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (embed_job){emb, hidden, pooled, len, info.dimension, want, 0};
        assert_int_equal(pthread_create(&threads[t], NULL, embed_many, &jobs[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(threads[t], NULL), 0);
        assert_true(jobs[t].same);
    }
    free(hidden), free(pooled), free(want);
    sqz_embedder_free(emb);
    sqz_model_free(model);
}

/* ---- error messages ------------------------------------------------------------------------- */

typedef struct error_job {
    int thread;
    int own_messages; /* failures whose message named this thread's folder */
} error_job;

static void *fail_repeatedly(void *arg)
{
    error_job *job = arg;
    char dir[64];
    snprintf(dir, sizeof dir, "/nonexistent-sqz-thread-%d", job->thread);
    for (int k = 0; k < 300; k++) {
        sqz_model *m = NULL;
        if (sqz_model_load(dir, NULL, &m) == SQZ_ERR_IO && strstr(sqz_last_error(), dir))
            job->own_messages++;
    }
    return NULL;
}

static void last_error_is_per_thread(void **unused)
{
    pthread_t threads[THREADS];
    error_job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (error_job){t, 0};
        assert_int_equal(pthread_create(&threads[t], NULL, fail_repeatedly, &jobs[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(threads[t], NULL), 0);
        assert_int_equal(jobs[t].own_messages, 300);
    }
}

int main(void)
{
    const char *given = getenv("SQZ_TEST_SEED");
    seed = given ? strtoull(given, NULL, 10) : (uint64_t)time(NULL);
    printf("test_threads: seed %llu (SQZ_TEST_SEED=%llu repeats this run)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sessions_share_a_model),
        cmocka_unit_test(tokenizer_shared_by_threads),
        cmocka_unit_test(embedder_shared_by_threads),
        cmocka_unit_test(last_error_is_per_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
