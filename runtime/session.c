/* Sessions: a model bound to a backend through the executor (runtime/executor.c). A run takes
 * packed sequences (or packs a padded batch into its real tokens), picks or compiles the plan
 * for its bucket, has the executor run it and lays the outputs out packed (or scattered back
 * into the padded layout). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph/builder.h"
#include "graph/plan.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "runtime/executor.h"
#include "runtime/model.h"
#include "runtime/outputs.h"

#define PLAN_CACHE_SIZE 8
#define MAX_BATCH_TOKENS (1 << 24) /* padded tokens per run; beyond this split the batch */

typedef struct packed_batch {
    int64_t rows;   /* sequences: batch * max(choices, 1) */
    int64_t width;  /* padded length W */
    int64_t tokens; /* kept tokens T */
    int64_t score_rows, max_len;
    int32_t *token_ids, *token_types, *positions, *key_valid; /* [T] */
    int32_t *seq_offsets, *score_offsets;                     /* [rows + 1] */
    int32_t *first_tokens;                                    /* [rows] */
    int32_t *packed_index; /* [rows * W]: packed token of (row, w), or -1 when dropped */
    int32_t *out_rows;     /* [selected]: the tokens a masked LM decodes */
    int64_t selected;
    bool all_rows;         /* out_rows is every token in order (then padding extends it) */
} packed_batch;

typedef struct cached_plan {
    sqz_bucket bucket;
    sqz_plan *plan;
    unsigned long last_used;
    int in_flight; /* runs in flight that use it: never evicted meanwhile */
    const sqz_buffer *prepared_arena; /* the binding the backend's prepare() last saw */
} cached_plan;

/* One output of a run: where it goes in the result block and how it is laid out. */
typedef struct out_entry {
    int output; /* index into the plan graph's outputs */
    sqz_output_format format;
    int ndim;
    int64_t shape[SQZ_MAX_DIMS];
    size_t offset, bytes; /* in the result block (or the device area) */
} out_entry;

/* A run between submit and wait. */
typedef struct run_slot {
    bool busy;
    bool landed;           /* waited for by the session itself (before growing the arena) */
    sqz_status landed_status;
    char *landed_error;
    sqz_ticket ticket;     /* 0 until the submit is complete */
    int plan_index;
    packed_batch p;        /* the real sequences first, then padding (pad_for_replay) */
    sqz_run_dims dims;     /* what ran */
    sqz_run_dims real;     /* the caller's sequences alone */
    double compile_seconds;
    double host_seconds;   /* spent in submit: the device time of backends that finish there */
    sqz_result *result;
    void *staging;         /* the input image, uploaded in one copy */
    size_t staging_bytes;
    sqz_buffer *device_out; /* outputs formatted on the device, before the download */
    size_t device_out_bytes;
} run_slot;

struct sqz_session {
    const sqz_model *model;
    sqz_executor x;            /* the backend instance and its launch loop */
    sqz_graph graph;
    sqz_buffer *weights;
    size_t *weight_offsets;
    sqz_buffer *arena;
    size_t arena_bytes;
    cached_plan plans[PLAN_CACHE_SIZE];
    unsigned long clock;
    sqz_compile_options compile;
    sqz_precision precision;
    /* the last run, for validation and statistics */
    sqz_plan *last_plan;
    sqz_run_dims last_dims;
    sqz_run_stats last_stats;
    size_t weight_bytes;
    float *host_out;        /* reused between runs for outputs that need rearranging */
    size_t host_out_bytes;
    char (*selected)[SQZ_NAME_LEN]; /* outputs to collect (sqz_session_select_outputs); NULL: all */
    size_t n_selected;
    sqz_output_options out_options;
    sqz_pool *pool;             /* result memory shared with the results */
    run_slot slots[SQZ_RUN_SLOTS];
    sqz_ticket last_ticket;
    bool pad_runs;              /* pad batches to replayable shapes (pad_for_replay) */
    double busy_seconds;        /* device time of the runs waited for (sqz_session_busy_seconds) */
    /* the executor's observers that this session attached */
    sqz_guard_observer guard;
    sqz_profile_observer profile;
    sqz_fault_observer faults; /* test hook (SQZ_FAULT_LAUNCH / SQZ_FAULT_ALLOC) */
};

struct sqz_result {
    sqz_output *outputs;
    size_t count;
    sqz_pool *pool;  /* NULL: holds nothing of a session */
    void *block;     /* the host outputs; returned to the pool, unless the caller's */
    size_t block_capacity;
    bool block_owned;
    int lease;       /* device outputs: the pool's lease, or -1 */
};

/* ---- graph for a model ------------------------------------------------------------------ */

static int model_weight_index(const void *user, const char *name)
{
    return sqz_model_weight_index(user, name);
}

static void model_weight_shape(const void *user, int index, int64_t *rows, int64_t *cols)
{
    const sqz_model *m = user;
    *rows = m->weights[index].rows;
    *cols = m->weights[index].cols;
}

static sqz_status build_model_graph(const sqz_model *m, sqz_graph *g)
{
    const sqz_config *c = &m->config;
    sqz_net_desc net = {
        .head = c->head,
        .vocab_size = c->vocab_size,
        .hidden_size = c->hidden_size,
        .num_layers = sqz_config_layers_run(c),
        .linear_attention = c->linear_attention,
        .layer_stride = c->layer_stride,
        .share_layers = c->share_layers,
        .num_heads = c->num_heads,
        .intermediate_size = c->intermediate_size,
        .max_position_embeddings = c->max_position_embeddings,
        .type_vocab_size = c->type_vocab_size,
        .num_labels = c->num_labels,
        .q_groups = c->q_groups,
        .k_groups = c->k_groups,
        .v_groups = c->v_groups,
        .post_attention_groups = c->post_attention_groups,
        .intermediate_groups = c->intermediate_groups,
        .output_groups = c->output_groups,
        .layer_norm_eps = (float)c->layer_norm_eps,
        .encoder_layer_norm_eps = (float)c->encoder_layer_norm_eps,
        .has_pooler = m->has_pooler,
        .weight_index = model_weight_index,
        .weight_shape = model_weight_shape,
        .user = m,
    };
    return sqz_build_graph(&net, g);
}

void sqz_free(void *memory) { free(memory); }

sqz_status sqz_model_graph_dot(const sqz_model *model, int max_tokens, int max_sequences, char **out)
{
    if (!model || !out || max_tokens < 1 || max_sequences < 1 || max_sequences > max_tokens)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT,
                        "sqz_model_graph_dot: needs a model, out, and 1 <= sequences <= tokens");
    *out = NULL;
    sqz_graph g;
    sqz_status s = build_model_graph(model, &g);
    if (s != SQZ_OK)
        return s;
    int64_t max_len = max_tokens < model->config.max_position_embeddings
                          ? max_tokens : model->config.max_position_embeddings;
    sqz_bucket bucket = {max_tokens, max_sequences, max_len};
    sqz_plan *plan = NULL;
    s = sqz_plan_compile(&g, &bucket, NULL, &plan);
    sqz_graph_release(&g);
    if (s == SQZ_OK)
        s = sqz_plan_to_dot(plan, out);
    sqz_plan_free(plan);
    return s;
}

/* ---- sessions ------------------------------------------------------------------------- */

/* Sessions created by this process, counted from 1: SQZ_FAULT_*=...@K aims at the Kth. */
static unsigned long sessions_created;

/* Every buffer of a session is allocated through the executor, so the fault hook sees it. */
static sqz_status session_alloc(sqz_session *s, size_t bytes, sqz_buffer **out)
{
    return sqz_executor_alloc(&s->x, bytes, out);
}

static size_t align_up(size_t x) { return (x + SQZ_ARENA_ALIGN - 1) / SQZ_ARENA_ALIGN * SQZ_ARENA_ALIGN; }

static sqz_status upload_weights(sqz_session *s)
{
    const sqz_model *m = s->model;
    s->weight_offsets = calloc(m->n_weights ? m->n_weights : 1, sizeof *s->weight_offsets);
    if (!s->weight_offsets)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    size_t total = 0;
    for (size_t i = 0; i < m->n_weights; i++) {
        const sqz_weight *w = &m->weights[i];
        if (w->alias_of >= 0) {
            s->weight_offsets[i] = s->weight_offsets[w->alias_of];
            continue;
        }
        s->weight_offsets[i] = total;
        total += align_up((size_t)(w->rows * w->cols) * sizeof(float));
    }
    s->weight_bytes = total;
    sqz_status st = session_alloc(s, total, &s->weights);
    for (size_t i = 0; i < m->n_weights && st == SQZ_OK; i++)
        if (m->weights[i].alias_of < 0)
            st = s->x.ops->upload(s->x.ctx, s->weights, s->weight_offsets[i], m->weights[i].data,
                                (size_t)(m->weights[i].rows * m->weights[i].cols) * sizeof(float));
    return st;
}

/* Which fused ops the backend implements, asked with nodes shaped like this model's. */
static uint64_t fusable_ops(const sqz_session *s)
{
    if (!s->x.ops->supports)
        return 0;
    sqz_node probe = {0};
    for (size_t n = 0; n < s->graph.n_nodes; n++)
        if (s->graph.nodes[n].op == SQZ_OP_ATTN_SCORES)
            probe.params = s->graph.nodes[n].params;
    uint64_t mask = 0;
    for (int op = 0; op < SQZ_OP_COUNT; op++) {
        if (!sqz_op_is_fused((sqz_op)op))
            continue;
        probe.op = (sqz_op)op;
        if (s->x.ops->supports(s->x.ctx, &probe))
            mask |= 1ull << op;
    }
    return mask;
}

sqz_status sqz_precision_from_name(const char *name, sqz_precision *out)
{
    if (!out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_precision_from_name: out is required");
    for (int p = 0; p < SQZ_PRECISION_COUNT; p++)
        if (!name || !*name || strcmp(name, sqz_precision_name((sqz_precision)p)) == 0) {
            *out = name && *name ? (sqz_precision)p : SQZ_PRECISION_FP32;
            return SQZ_OK;
        }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "unknown precision '%s' (fp32, tf32, fp16, bf16)", name);
}

const char *sqz_precision_name(sqz_precision p)
{
    static const char *const names[SQZ_PRECISION_COUNT] = {"fp32", "tf32", "fp16", "bf16"};
    return (unsigned)p < SQZ_PRECISION_COUNT ? names[p] : "?";
}

double sqz_precision_tolerance(sqz_precision p)
{
    /* fp32: summation-order differences only. The others: about 20 unit roundoffs of the
     * rounded operands (tf32 and fp16 2^-11, bf16 2^-8 with storage rounding), the growth
     * seen over 12 layers; docs/engineering.md "Tolerances" has the derivation and the
     * measured values. */
    static const double bars[SQZ_PRECISION_COUNT] = {1e-4, 1e-2, 1e-2, 8e-2};
    return (unsigned)p < SQZ_PRECISION_COUNT ? bars[p] : 1e-4;
}

sqz_precision sqz_session_precision(const sqz_session *s) { return s ? s->precision : SQZ_PRECISION_FP32; }

static sqz_status session_create(const sqz_model *model, const sqz_session_options *o, bool keep_all,
                                 sqz_session **out)
{
    if (!model || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_create: model and out are required");
    *out = NULL;
    const char *name = o->backend ? o->backend : "cpu_ref";
    const unsigned long number = __atomic_add_fetch(&sessions_created, 1, __ATOMIC_RELAXED);
    sqz_fault_observer faults = {0};
    sqz_status st = sqz_fault_setting_parse("fault_launch (SQZ_FAULT_LAUNCH)", o->fault_launch, number,
                                            &faults.launch_at, &faults.launch_every);
    if (st == SQZ_OK)
        st = sqz_fault_setting_parse("fault_alloc (SQZ_FAULT_ALLOC)", o->fault_alloc, number, &faults.alloc_at,
                                     &faults.alloc_every);
    if (st != SQZ_OK)
        return st;
    sqz_session *s = calloc(1, sizeof *s);
    if (!s)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    s->model = model;
    s->compile.debug = o->debug;
    s->compile.guard_bytes = o->guard_bytes;
    s->compile.keep_all = keep_all;
    s->faults = faults;
    s->compile.precision = o->precision;
    sqz_graph_init(&s->graph);
    s->precision = o->precision;
    st = sqz_executor_open(&s->x, name, o->device, o->settings, o->precision);
    /* observers: the fault hook first, so an injected failure precedes any other check */
    if (st == SQZ_OK && (faults.launch_at || faults.alloc_at)) {
        sqz_observer f = sqz_fault_observer_table(&s->faults);
        st = sqz_executor_observe(&s->x, &f);
    }
    if (st == SQZ_OK && o->guard_bytes > 0) {
        sqz_observer g = sqz_guard_observer_table(&s->guard);
        st = sqz_executor_observe(&s->x, &g);
    }
    if (st == SQZ_OK && o->debug >= 3) {
        sqz_observer p = sqz_profile_observer_table(&s->profile);
        st = sqz_executor_observe(&s->x, &p);
    }
    const sqz_backend_ops *ops = s->x.ops;
    if (st == SQZ_OK)
        st = build_model_graph(model, &s->graph);
    if (st == SQZ_OK)
        st = upload_weights(s);
    if (st == SQZ_OK && ops->supports)
        for (size_t n = 0; n < s->graph.n_nodes && st == SQZ_OK; n++)
            if (!ops->supports(s->x.ctx, &s->graph.nodes[n]))
                st = sqz_fail(SQZ_ERR_UNSUPPORTED, "backend '%s' does not implement op %s (node '%s') "
                              "at %s", name, sqz_op_name(s->graph.nodes[n].op), s->graph.nodes[n].name,
                              sqz_precision_name(o->precision));
    if (st == SQZ_OK)
        s->compile.fusable_ops = o->unfused ? 0 : fusable_ops(s);
    if (st == SQZ_OK)
        st = sqz_pool_create(ops->host_alloc ? ops->host_free : NULL, &s->pool);
    /* padding only helps runs that replay, and must not change what validation reads */
    s->pad_runs = st == SQZ_OK && !keep_all && ops->records_runs && ops->records_runs(s->x.ctx) &&
                  o->guard_bytes == 0 && o->debug < 3 && !faults.launch_at;
    if (st != SQZ_OK) {
        sqz_session_free(s);
        return st;
    }
    *out = s;
    return SQZ_OK;
}

sqz_status sqz_session_create(const sqz_model *model, const sqz_session_options *options, sqz_session **out)
{
    static const sqz_session_options defaults; /* cpu_ref, its default device, fp32 */
    if (!options)
        options = &defaults;
    return session_create(model, options, false, out);
}

sqz_status sqz_session_last_stats(const sqz_session *s, sqz_run_stats *out)
{
    if (!s || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_last_stats: session and out are required");
    if (!s->last_plan)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_last_stats: the session has not run yet");
    *out = s->last_stats;
    return SQZ_OK;
}

sqz_status sqz_session_kernel_report(const sqz_session *s, char **out)
{
    if (!s || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_kernel_report: session and out are required");
    *out = NULL;
    if (!s->x.ops->kernel_report)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "backend '%s' has no kernel variants to report", s->x.ops->name);
    return s->x.ops->kernel_report(s->x.ctx, out);
}

const char *sqz_session_device(const sqz_session *s)
{
    return s && s->x.ops->describe ? s->x.ops->describe(s->x.ctx) : "";
}

static void slot_release(sqz_session *s, run_slot *slot);

void sqz_session_free(sqz_session *s)
{
    if (!s)
        return;
    for (int k = 0; k < SQZ_RUN_SLOTS; k++) {
        run_slot *slot = &s->slots[k];
        if (slot->busy && !slot->landed && s->x.ops->run_wait)
            s->x.ops->run_wait(s->x.ctx, k); /* nothing may still write into what is freed below */
        slot_release(s, slot);
        if (slot->staging)
            s->x.ops->host_free ? s->x.ops->host_free(slot->staging) : free(slot->staging);
        if (slot->device_out)
            s->x.ops->buffer_free(s->x.ctx, slot->device_out);
    }
    if (s->pool) {
        /* device outputs die with their session (documented); host ones live on */
        size_t index = 0;
        for (sqz_buffer *b; (b = sqz_pool_orphan(s->pool, &index)) != NULL;)
            s->x.ops->buffer_free(s->x.ctx, b);
        sqz_pool_session_done(s->pool);
    }
    for (int i = 0; i < PLAN_CACHE_SIZE; i++) {
        if (s->plans[i].plan && s->x.ops && s->x.ops->release && s->x.ctx)
            s->x.ops->release(s->x.ctx, s->plans[i].plan);
        sqz_plan_free(s->plans[i].plan);
    }
    if (s->arena)
        s->x.ops->buffer_free(s->x.ctx, s->arena);
    if (s->weights)
        s->x.ops->buffer_free(s->x.ctx, s->weights);
    sqz_executor_close(&s->x);
    sqz_guard_observer_release(&s->guard);
    free(s->weight_offsets);
    free(s->host_out);
    free(s->selected);
    sqz_graph_release(&s->graph);
    free(s);
}

/* ---- packing ---------------------------------------------------------------------------- */


static void packed_release(packed_batch *p)
{
    free(p->token_ids);
    free(p->token_types);
    free(p->positions);
    free(p->key_valid);
    free(p->seq_offsets);
    free(p->score_offsets);
    free(p->first_tokens);
    free(p->packed_index);
    free(p->out_rows);
    memset(p, 0, sizeof *p);
}

/* Sizes a packed batch and allocates its arrays (packed_index only for a padded batch,
 * width > 0). */
static sqz_status packed_alloc(packed_batch *p, int64_t rows, int64_t width, int64_t tokens, int64_t score_rows,
                               int64_t max_len)
{
    *p = (packed_batch){.rows = rows, .width = width, .tokens = tokens, .score_rows = score_rows, .max_len = max_len};
    const size_t T = (size_t)tokens, N = (size_t)rows;
    p->token_ids = malloc(T * sizeof(int32_t));
    p->token_types = malloc(T * sizeof(int32_t));
    p->positions = malloc(T * sizeof(int32_t));
    p->key_valid = malloc(T * sizeof(int32_t));
    p->seq_offsets = malloc((N + 1) * sizeof(int32_t));
    p->score_offsets = malloc((N + 1) * sizeof(int32_t));
    p->first_tokens = malloc(N * sizeof(int32_t));
    p->out_rows = malloc((T ? T : 1) * sizeof(int32_t));
    if (p->width > 0)
        p->packed_index = malloc(N * (size_t)p->width * sizeof(int32_t));
    if (!p->token_ids || !p->token_types || !p->positions || !p->key_valid || !p->seq_offsets ||
        !p->score_offsets || !p->first_tokens || !p->out_rows || (p->width > 0 && !p->packed_index)) {
        packed_release(p);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory packing the batch");
    }
    for (size_t t = 0; t < T; t++) /* every token, unless the caller names some */
        p->out_rows[t] = (int32_t)t;
    p->selected = tokens;
    p->all_rows = true;
    return SQZ_OK;
}

/* "[i][j]" or "[i][k][j]" for messages. */
static void position_name(const sqz_input *in, int64_t row, int64_t w, char *out, size_t size)
{
    if (in->choices > 0)
        snprintf(out, size, "[%lld][%lld][%lld]", (long long)(row / in->choices),
                 (long long)(row % in->choices), (long long)w);
    else
        snprintf(out, size, "[%lld][%lld]", (long long)row, (long long)w);
}

static sqz_status validate_and_pack(const sqz_model *m, const sqz_input *in, packed_batch *p)
{
    const sqz_config *c = &m->config;
    memset(p, 0, sizeof *p);
    if (!in || !in->input_ids)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_run: input_ids are required");
    if (in->batch < 1 || in->seq_len < 1 || in->choices < 0)
        return sqz_fail(SQZ_ERR_INPUT, "input: batch (%d) and sequence length (%d) must be at "
                        "least 1", in->batch, in->seq_len);
    if (c->head == SQZ_HEAD_MULTIPLE_CHOICE && in->choices < 1)
        return sqz_fail(SQZ_ERR_INPUT, "input: a multiple-choice model (%s) needs input_ids shaped "
                        "[batch][choices][length]", c->architecture);
    if (c->head != SQZ_HEAD_MULTIPLE_CHOICE && in->choices > 0)
        return sqz_fail(SQZ_ERR_INPUT, "input: input_ids shaped [batch][choices][length] are only "
                        "for multiple-choice models; %s takes [batch][length]", c->architecture);
    if (in->seq_len > c->max_position_embeddings)
        return sqz_fail(SQZ_ERR_INPUT, "input: sequence length %d exceeds max_position_embeddings "
                        "%d of this model", in->seq_len, c->max_position_embeddings);
    const int64_t rows = (int64_t)in->batch * (in->choices > 0 ? in->choices : 1);
    const int64_t W = in->seq_len;
    if (rows * W > MAX_BATCH_TOKENS)
        return sqz_fail(SQZ_ERR_INPUT, "input: %lld padded tokens in one run exceed the limit of "
                        "%d; split the batch", (long long)(rows * W), MAX_BATCH_TOKENS);
    char where[64];
    int64_t kept = 0, score_rows = 0, max_len = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t len = 0;
        for (int64_t w = 0; w < W; w++) {
            const int64_t i = r * W + w;
            const int64_t id = in->input_ids[i];
            const int64_t mask = in->attention_mask ? in->attention_mask[i] : 1;
            const int64_t type = in->token_type_ids ? in->token_type_ids[i] : 0;
            if (mask != 0 && mask != 1) {
                position_name(in, r, w, where, sizeof where);
                return sqz_fail(SQZ_ERR_INPUT, "input: attention_mask%s = %lld, expected 0 or 1",
                                where, (long long)mask);
            }
            if (id < 0 || id >= c->vocab_size) {
                position_name(in, r, w, where, sizeof where);
                return sqz_fail(SQZ_ERR_INPUT, "input: input_ids%s = %lld is outside the vocabulary "
                                "(vocab_size %d)", where, (long long)id, c->vocab_size);
            }
            if (type < 0 || type >= c->type_vocab_size) {
                position_name(in, r, w, where, sizeof where);
                return sqz_fail(SQZ_ERR_INPUT, "input: token_type_ids%s = %lld is outside "
                                "0..%d (type_vocab_size %d)", where, (long long)type,
                                c->type_vocab_size - 1, c->type_vocab_size);
            }
            len += (mask == 1 || w == 0);
        }
        bool any_valid = false;
        for (int64_t w = 0; w < W && !any_valid; w++)
            any_valid = !in->attention_mask || in->attention_mask[r * W + w] == 1;
        if (!any_valid) {
            position_name(in, r, 0, where, sizeof where);
            where[strlen(where) - 3] = '\0'; /* drop the "[0]" of the position */
            return sqz_fail(SQZ_ERR_INPUT, "input: attention_mask%s is all zeros; every sequence "
                            "needs at least one token", where);
        }
        kept += len;
        score_rows += len * len;
        max_len = len > max_len ? len : max_len;
    }
    if (score_rows > INT32_MAX)
        return sqz_fail(SQZ_ERR_INPUT, "input: the batch needs %lld attention score rows, more "
                        "than one run allows; split the batch", (long long)score_rows);
    sqz_status st = packed_alloc(p, rows, W, kept, score_rows, max_len);
    if (st != SQZ_OK)
        return st;
    int32_t t = 0, score = 0;
    for (int64_t r = 0; r < rows; r++) {
        p->seq_offsets[r] = t;
        p->score_offsets[r] = score;
        p->first_tokens[r] = t;
        for (int64_t w = 0; w < W; w++) {
            const int64_t i = r * W + w;
            const int64_t mask = in->attention_mask ? in->attention_mask[i] : 1;
            /* position 0 is kept even when masked: the pooler reads it, as transformers does */
            if (mask == 1 || w == 0) {
                p->token_ids[t] = (int32_t)in->input_ids[i];
                p->token_types[t] = in->token_type_ids ? (int32_t)in->token_type_ids[i] : 0;
                p->positions[t] = (int32_t)w;
                p->key_valid[t] = (int32_t)mask;
                p->packed_index[i] = t++;
            } else {
                p->packed_index[i] = -1;
            }
        }
        int32_t len = t - p->seq_offsets[r];
        score += len * len;
    }
    p->seq_offsets[rows] = t;
    p->score_offsets[rows] = score;
    return SQZ_OK;
}

/* A packed input as the caller gives it: sequences back to back, positions from 0, every
 * token attended. The packed batch has width 0 (no padded layout to scatter into). */
static sqz_status validate_packed(const sqz_model *m, const sqz_packed_input *in, packed_batch *p)
{
    const sqz_config *c = &m->config;
    memset(p, 0, sizeof *p);
    if (!in || !in->input_ids || !in->offsets)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_run_packed: input_ids and offsets are required");
    if (in->sequences < 1 || in->choices < 0)
        return sqz_fail(SQZ_ERR_INPUT, "packed input: sequences (%d) must be at least 1 and choices (%d) at "
                        "least 0", in->sequences, in->choices);
    if (c->head == SQZ_HEAD_MULTIPLE_CHOICE && (in->choices < 1 || in->sequences % in->choices != 0))
        return sqz_fail(SQZ_ERR_INPUT, "packed input: a multiple-choice model (%s) needs choices >= 1 dividing "
                        "the %d sequences (got choices %d)", c->architecture, in->sequences, in->choices);
    if (c->head != SQZ_HEAD_MULTIPLE_CHOICE && in->choices > 0)
        return sqz_fail(SQZ_ERR_INPUT, "packed input: choices are only for multiple-choice models; %s takes "
                        "choices 0", c->architecture);
    const int64_t rows = in->sequences;
    if (in->offsets[0] != 0)
        return sqz_fail(SQZ_ERR_INPUT, "packed input: offsets[0] = %lld, expected 0", (long long)in->offsets[0]);
    int64_t score_rows = 0, max_len = 0;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t len = in->offsets[r + 1] - in->offsets[r];
        if (len < 1 || len > c->max_position_embeddings)
            return sqz_fail(SQZ_ERR_INPUT, "packed input: sequence %lld has %lld tokens (offsets[%lld] = %lld, "
                            "offsets[%lld] = %lld); each needs 1 to %d (max_position_embeddings)", (long long)r,
                            (long long)len, (long long)r, (long long)in->offsets[r], (long long)(r + 1),
                            (long long)in->offsets[r + 1], c->max_position_embeddings);
        if (in->offsets[r + 1] > MAX_BATCH_TOKENS)
            return sqz_fail(SQZ_ERR_INPUT, "packed input: more than %d tokens in one run; split the batch",
                            MAX_BATCH_TOKENS);
        score_rows += len * len;
        max_len = len > max_len ? len : max_len;
    }
    if (score_rows > INT32_MAX)
        return sqz_fail(SQZ_ERR_INPUT, "packed input: the batch needs %lld attention score rows, more than one "
                        "run allows; split the batch", (long long)score_rows);
    const int64_t tokens = in->offsets[rows];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = in->offsets[r]; t < in->offsets[r + 1]; t++) {
            const int64_t id = in->input_ids[t], type = in->token_type_ids ? in->token_type_ids[t] : 0;
            if (id < 0 || id >= c->vocab_size)
                return sqz_fail(SQZ_ERR_INPUT, "packed input: input_ids[%lld] (sequence %lld, token %lld) = %lld is "
                                "outside the vocabulary (vocab_size %d)", (long long)t, (long long)r,
                                (long long)(t - in->offsets[r]), (long long)id, c->vocab_size);
            if (type < 0 || type >= c->type_vocab_size)
                return sqz_fail(SQZ_ERR_INPUT, "packed input: token_type_ids[%lld] (sequence %lld, token %lld) = "
                                "%lld is outside 0..%d (type_vocab_size %d)", (long long)t, (long long)r,
                                (long long)(t - in->offsets[r]), (long long)type, c->type_vocab_size - 1,
                                c->type_vocab_size);
        }
    sqz_status st = packed_alloc(p, rows, 0, tokens, score_rows, max_len);
    if (st != SQZ_OK)
        return st;
    int64_t score = 0;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t begin = in->offsets[r], len = in->offsets[r + 1] - begin;
        p->seq_offsets[r] = p->first_tokens[r] = (int32_t)begin;
        p->score_offsets[r] = (int32_t)score;
        for (int64_t w = 0; w < len; w++) {
            p->token_ids[begin + w] = (int32_t)in->input_ids[begin + w];
            p->token_types[begin + w] = in->token_type_ids ? (int32_t)in->token_type_ids[begin + w] : 0;
            p->positions[begin + w] = (int32_t)w;
            p->key_valid[begin + w] = 1;
        }
        score += len * len;
    }
    p->seq_offsets[rows] = (int32_t)tokens;
    p->score_offsets[rows] = (int32_t)score;
    if (in->output_tokens) {
        if (c->head != SQZ_HEAD_MASKED_LM) {
            packed_release(p);
            return sqz_fail(SQZ_ERR_INPUT, "packed input: output_tokens selects the rows a masked LM decodes; %s "
                            "computes every token's outputs", c->architecture);
        }
        if (in->n_output_tokens < 1 || in->n_output_tokens > tokens) {
            packed_release(p);
            return sqz_fail(SQZ_ERR_INPUT, "packed input: n_output_tokens = %lld, expected 1 to %lld (the tokens)",
                            (long long)in->n_output_tokens, (long long)tokens);
        }
        for (int64_t i = 0; i < in->n_output_tokens; i++) {
            if (in->output_tokens[i] < 0 || in->output_tokens[i] >= tokens) {
                const long long bad = (long long)in->output_tokens[i];
                packed_release(p);
                return sqz_fail(SQZ_ERR_INPUT, "packed input: output_tokens[%lld] = %lld is not one of the %lld "
                                "tokens", (long long)i, bad, (long long)tokens);
            }
            p->out_rows[i] = (int32_t)in->output_tokens[i];
        }
        p->selected = in->n_output_tokens;
        p->all_rows = false;
    }
    return SQZ_OK;
}

/* What a run was asked for: a padded batch (outputs scattered back into [N][W]) or a packed
 * one (outputs as computed, [T] and [N] rows). Exactly one is set. */
typedef struct run_input {
    const sqz_input *padded;
    const sqz_packed_input *packed;
} run_input;

/* ---- running ------------------------------------------------------------------------------ */

static int64_t next_pow2(int64_t x)
{
    int64_t p = 1;
    while (p < x)
        p *= 2;
    return p;
}

/* Runs of at most this many tokens are padded to replayable shapes (pad_for_replay): above
 * it a run's launches cost little next to its work, and padding would cost more. */
#define REPLAY_PAD_MAX_TOKENS 4096
/* Shapes per bucket and dimension: padding costs at most 1/16 of a bucket's tokens. */
#define REPLAY_STEPS 16

static bool pads_for_replay(const sqz_session *s, const packed_batch *p)
{
    return s->pad_runs && p->tokens + 1 <= REPLAY_PAD_MAX_TOKENS;
}

/* The plan's bucket. A batch padded for replay needs room for one sequence and one token
 * more than it has. */
static sqz_bucket bucket_for(const sqz_session *s, const packed_batch *p)
{
    const int64_t extra = pads_for_replay(s, p);
    const int64_t tokens = p->tokens + extra < 16 ? 16 : p->tokens + extra;
    sqz_bucket b = {next_pow2(tokens), next_pow2(p->rows + extra), next_pow2(p->max_len)};
    if (b.max_sequences > b.max_tokens)
        b.max_sequences = b.max_tokens;
    return b;
}

/* Finds or compiles the plan of the batch's bucket; plans of runs in flight stay cached. */
static sqz_status get_plan(sqz_session *s, const packed_batch *p, int *index, double *compile_seconds)
{
    const sqz_bucket b = bucket_for(s, p);
    int victim = -1;
    for (int i = 0; i < PLAN_CACHE_SIZE; i++) {
        cached_plan *c = &s->plans[i];
        if (c->plan && memcmp(&c->bucket, &b, sizeof b) == 0) {
            c->last_used = ++s->clock;
            *index = i;
            return SQZ_OK;
        }
        if (c->in_flight)
            continue;
        if (victim < 0 || !c->plan || (s->plans[victim].plan && c->last_used < s->plans[victim].last_used))
            victim = i;
    }
    SQZ_CHECK_INTERNAL(victim >= 0); /* at most SQZ_RUN_SLOTS of the cache are in flight */
    sqz_plan *plan = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sqz_status st = sqz_plan_compile(&s->graph, &b, &s->compile, &plan);
    if (st != SQZ_OK)
        return st;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *compile_seconds = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (s->last_plan == s->plans[victim].plan)
        s->last_plan = NULL;
    if (s->plans[victim].plan && s->x.ops->release)
        s->x.ops->release(s->x.ctx, s->plans[victim].plan);
    sqz_plan_free(s->plans[victim].plan);
    s->plans[victim] = (cached_plan){b, plan, ++s->clock, 0, NULL};
    *index = victim;
    return SQZ_OK;
}

static int64_t round_up_to(int64_t x, int64_t step) { return (x + step - 1) / step * step; }

/* Grows a packed batch with dummy sequences (ids 0, positions from 0, every key valid) so
 * that its tokens and sequences are one of REPLAY_STEPS steps of the bucket's, its longest
 * sequence the bucket's and its score rows their bound. A backend that records a run's
 * launches (CUDA graphs) keys them by these dims, so batches of other lengths in the same
 * steps replay the same graph; every kernel then reads what changes from run to run from the
 * uploaded arrays. The dummies run after the real sequences and nothing reads their outputs;
 * each token's arithmetic does not depend on the others', so the real outputs are those of
 * the unpadded batch. Leaves the batch as it is when the steps do not fit. */
static sqz_status pad_for_replay(packed_batch *p, const sqz_bucket *b, int64_t max_positions,
                                 sqz_run_dims *dims)
{
    *dims = (sqz_run_dims){p->tokens, p->rows, p->score_rows, p->max_len, p->selected};
    const int64_t token_step = b->max_tokens / REPLAY_STEPS > 16 ? b->max_tokens / REPLAY_STEPS : 16;
    const int64_t seq_step = b->max_sequences / REPLAY_STEPS > 1 ? b->max_sequences / REPLAY_STEPS : 1;
    const int64_t longest = b->max_len < max_positions ? b->max_len : max_positions;
    int64_t seqs = round_up_to(p->rows + 1, seq_step);
    seqs = seqs < b->max_sequences ? seqs : b->max_sequences;
    const int64_t extra_seqs = seqs - p->rows;
    int64_t tokens = round_up_to(p->tokens + extra_seqs, token_step);
    tokens = tokens < b->max_tokens ? tokens : b->max_tokens;
    const int64_t extra_tokens = tokens - p->tokens;
    if (extra_seqs < 1 || extra_tokens < extra_seqs || extra_tokens > extra_seqs * longest)
        return SQZ_OK;
    int32_t *arrays[8] = {p->token_ids, p->token_types, p->positions, p->key_valid, p->seq_offsets,
                          p->score_offsets, p->first_tokens, p->out_rows};
    const int64_t sizes[8] = {tokens, tokens, tokens, tokens, seqs + 1, seqs + 1, seqs, tokens};
    for (int i = 0; i < 8; i++) {
        int32_t *bigger = realloc(arrays[i], (size_t)sizes[i] * sizeof *bigger);
        if (!bigger)
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory padding the batch");
        arrays[i] = bigger;
    }
    p->token_ids = arrays[0], p->token_types = arrays[1], p->positions = arrays[2];
    p->key_valid = arrays[3], p->seq_offsets = arrays[4], p->score_offsets = arrays[5];
    p->first_tokens = arrays[6], p->out_rows = arrays[7];
    int64_t t = p->tokens, score = p->score_offsets[p->rows];
    for (int64_t r = p->rows; r < seqs; r++) {
        const int64_t k = r - p->rows;
        const int64_t len = extra_tokens / extra_seqs + (k < extra_tokens % extra_seqs);
        p->seq_offsets[r] = (int32_t)t;
        p->score_offsets[r] = (int32_t)score;
        p->first_tokens[r] = (int32_t)t;
        for (int64_t w = 0; w < len; w++, t++) {
            p->token_ids[t] = 0;
            p->token_types[t] = 0;
            p->positions[t] = (int32_t)w;
            p->key_valid[t] = 1;
        }
        score += len * len;
    }
    p->seq_offsets[seqs] = (int32_t)t;
    p->score_offsets[seqs] = (int32_t)score;
    if (p->all_rows) { /* the padding decoded too, so the selection does not change the key */
        for (int64_t k = p->tokens; k < tokens; k++)
            p->out_rows[k] = (int32_t)k;
        p->selected = tokens;
    }
    /* score rows at their bound for these dims, so they do not change the key */
    *dims = (sqz_run_dims){tokens, seqs, tokens * b->max_len, b->max_len, p->selected};
    return SQZ_OK;
}

/* Waits for the runs in flight (their results are kept for their own waits), so that device
 * memory they use can be replaced. */
static void land_all(sqz_session *s)
{
    for (int k = 0; k < SQZ_RUN_SLOTS; k++) {
        run_slot *slot = &s->slots[k];
        if (!slot->busy || !slot->ticket || slot->landed || !s->x.ops->run_wait)
            continue; /* free, being submitted (the caller), or done */
        slot->landed = true;
        slot->landed_status = s->x.ops->run_wait(s->x.ctx, k);
        if (slot->landed_status != SQZ_OK)
            slot->landed_error = strdup(sqz_last_error());
    }
}

static sqz_status ensure_arena(sqz_session *s, size_t bytes)
{
    if (s->arena && s->arena_bytes >= bytes)
        return SQZ_OK;
    land_all(s);
    if (s->arena)
        s->x.ops->buffer_free(s->x.ctx, s->arena);
    s->arena = NULL;
    s->arena_bytes = 0;
    sqz_status st = session_alloc(s, bytes, &s->arena);
    if (st == SQZ_OK)
        s->arena_bytes = bytes;
    return st;
}

static sqz_status host_alloc(sqz_session *s, size_t bytes, void **out)
{
    if (s->x.ops->host_alloc)
        return s->x.ops->host_alloc(s->x.ctx, bytes ? bytes : 1, out);
    *out = malloc(bytes ? bytes : 1);
    return *out ? SQZ_OK : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory (%zu host bytes)", bytes);
}

static void host_free(sqz_session *s, void *memory)
{
    if (s->x.ops->host_free)
        s->x.ops->host_free(memory);
    else
        free(memory);
}

/* Every input of a run in one host image of the arena's input region (the plan places the
 * inputs first, together), uploaded in one copy (the guard observer, when attached, then
 * writes the canaries after each input). */
static sqz_status upload_inputs(sqz_session *s, run_slot *slot, const sqz_plan *plan, const sqz_run_dims *dims)
{
    const packed_batch *p = &slot->p;
    const sqz_graph_inputs *in = &plan->graph.in;
    struct { int tensor; const int32_t *data; int64_t count; } items[] = {
        {in->token_ids, p->token_ids, dims->tokens},     {in->token_types, p->token_types, dims->tokens},
        {in->positions, p->positions, dims->tokens},     {in->key_valid, p->key_valid, dims->tokens},
        {in->seq_offsets, p->seq_offsets, dims->sequences + 1},
        {in->score_offsets, p->score_offsets, dims->sequences + 1},
        {in->first_tokens, p->first_tokens, dims->sequences},
        {in->out_rows, p->out_rows, dims->selected},
    };
    const size_t n_items = sizeof items / sizeof items[0];
    size_t lo = SIZE_MAX, hi = 0;
    for (size_t i = 0; i < n_items; i++) {
        if (items[i].tensor < 0)
            continue;
        const size_t at = (size_t)plan->offsets[items[i].tensor];
        const size_t end = at + (size_t)items[i].count * sizeof(int32_t);
        lo = at < lo ? at : lo;
        hi = end > hi ? end : hi;
    }
    if (hi <= lo)
        return SQZ_OK;
    if (slot->staging_bytes < hi - lo) {
        if (slot->staging)
            host_free(s, slot->staging);
        slot->staging = NULL;
        slot->staging_bytes = 0;
        sqz_status st = host_alloc(s, hi - lo, &slot->staging);
        if (st != SQZ_OK)
            return st;
        slot->staging_bytes = hi - lo;
    }
    unsigned char *image = slot->staging;
    memset(image, 0, hi - lo);
    for (size_t i = 0; i < n_items; i++)
        if (items[i].tensor >= 0)
            memcpy(image + (size_t)plan->offsets[items[i].tensor] - lo, items[i].data,
                   (size_t)items[i].count * sizeof(int32_t));
    /* a guarded run writes more into the arena right after: keep the copies in order */
    return s->x.ops->upload_async && plan->guard_bytes == 0
               ? s->x.ops->upload_async(s->x.ctx, (int)(slot - s->slots), s->arena, lo, image, hi - lo)
               : s->x.ops->upload(s->x.ctx, s->arena, lo, image, hi - lo);
}

static bool output_selected(const sqz_session *s, const char *name)
{
    if (!s->selected)
        return true;
    for (size_t i = 0; i < s->n_selected; i++)
        if (strcmp(s->selected[i], name) == 0)
            return true;
    return false;
}

sqz_status sqz_session_select_outputs(sqz_session *s, const char *const *names, size_t count)
{
    if (!s || (count && !names))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_select_outputs: session and names are required");
    char available[512] = "";
    for (size_t o = 0; o < s->graph.n_outputs; o++)
        snprintf(available + strlen(available), sizeof available - strlen(available), "%s%s", o ? ", " : "",
                 s->graph.outputs[o].name);
    for (size_t i = 0; i < count; i++) {
        bool known = false;
        for (size_t o = 0; names[i] && o < s->graph.n_outputs && !known; o++)
            known = strcmp(names[i], s->graph.outputs[o].name) == 0;
        if (!known)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_select_outputs: the model has no output '%s' "
                            "(it has: %s)", names[i] ? names[i] : "(null)", available);
    }
    char (*selected)[SQZ_NAME_LEN] = NULL;
    if (count && !(selected = calloc(count, sizeof *selected)))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    for (size_t i = 0; i < count; i++)
        snprintf(selected[i], SQZ_NAME_LEN, "%s", names[i]);
    free(s->selected);
    s->selected = selected;
    s->n_selected = count;
    return SQZ_OK;
}

sqz_status sqz_session_set_output_options(sqz_session *s, const sqz_output_options *options)
{
    if (!s || !options)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_set_output_options: session and options are required");
    if ((unsigned)options->type > SQZ_OUTPUT_FP16 || (unsigned)options->place > SQZ_OUTPUT_ON_DEVICE)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_set_output_options: type %d or place %d is not "
                        "one of sqz_output_type / sqz_output_place", (int)options->type, (int)options->place);
    if (options->place == SQZ_OUTPUT_ON_DEVICE && (!s->x.ops->format_output || !s->x.ops->device_address))
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "backend '%s' cannot leave outputs on the device (cuda, cuda-sim and "
                        "cpu_ref can)", s->x.ops->name);
    s->out_options = *options;
    return SQZ_OK;
}

/* The selected outputs of a run with the caller's shape (rows sequences of width W), in
 * their final layout, back to back in one block; *total gets its size. */
static sqz_status layout_outputs(const sqz_session *s, const sqz_graph *g, const run_input *in,
                                 out_entry **out, size_t *count, size_t *total)
{
    out_entry *e = calloc(g->n_outputs ? g->n_outputs : 1, sizeof *e);
    if (!e)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for outputs");
    /* padded: rows sequences of width W; packed: rows sequences of T tokens in all (W 0) */
    const int choices = in->padded ? in->padded->choices : in->packed->choices;
    const int64_t rows = in->padded ? (int64_t)in->padded->batch * (choices > 0 ? choices : 1)
                                    : in->packed->sequences;
    const int64_t batch = choices > 0 ? rows / choices : rows;
    const int64_t W = in->padded ? in->padded->seq_len : 0;
    const int64_t tokens = in->padded ? rows * W : in->packed->offsets[rows];
    const size_t element = s->out_options.type == SQZ_OUTPUT_FP16 ? 2 : 4;
    size_t n = 0, at = 0;
    for (size_t o = 0; o < g->n_outputs; o++) {
        const sqz_graph_output *go = &g->outputs[o];
        if (!output_selected(s, go->name))
            continue;
        out_entry *x = &e[n++];
        x->output = (int)o;
        x->format = (sqz_output_format){go->tensor, go->col_begin, go->col_count, rows, 0,
                                        s->out_options.type == SQZ_OUTPUT_FP16};
        if (go->layout == SQZ_LAYOUT_PER_TOKEN && W > 0) {
            x->ndim = go->squeeze ? 2 : 3;
            x->shape[0] = batch, x->shape[1] = W, x->shape[2] = go->col_count;
            x->format.rows = tokens;
            x->format.width = W;
        } else if (go->layout == SQZ_LAYOUT_PER_TOKEN) {
            /* a masked LM's logits: the tokens the caller named, in that order */
            const bool named = g->tensors[go->tensor].extent == SQZ_EXTENT_SELECTED && in->packed->output_tokens;
            const int64_t n_rows = named ? in->packed->n_output_tokens : tokens;
            x->ndim = go->squeeze ? 1 : 2;
            x->shape[0] = n_rows, x->shape[1] = go->col_count;
            x->format.rows = n_rows;
        } else if (go->layout == SQZ_LAYOUT_PER_SEQUENCE) {
            x->ndim = 2;
            x->shape[0] = batch, x->shape[1] = go->col_count;
        } else {
            x->ndim = 2;
            x->shape[0] = batch, x->shape[1] = choices;
        }
        x->offset = at;
        x->bytes = (size_t)(x->format.rows * x->format.col_count) * element;
        at = align_up(at + x->bytes);
    }
    *out = e;
    *count = n;
    *total = at;
    return SQZ_OK;
}

sqz_status sqz_session_output_bytes(const sqz_session *s, const sqz_input *input, size_t *bytes)
{
    if (!s || !input || !bytes)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_output_bytes: session, input and bytes are required");
    if (input->batch < 1 || input->seq_len < 1 || input->choices < 0)
        return sqz_fail(SQZ_ERR_INPUT, "input: batch (%d) and sequence length (%d) must be at least 1",
                        input->batch, input->seq_len);
    out_entry *e = NULL;
    size_t n;
    const run_input in = {input, NULL};
    sqz_status st = layout_outputs(s, &s->graph, &in, &e, &n, bytes);
    free(e);
    return st;
}

/* Whether packed token i is position i of the padded batch for every position (nothing was
 * dropped): then a per-token output already has the result's layout. */
static bool packed_is_dense(const packed_batch *p, int64_t real_tokens)
{
    if (real_tokens != p->rows * p->width)
        return false;
    for (int64_t i = 0; i < real_tokens; i++)
        if (p->packed_index[i] != i || !p->key_valid[i])
            return false;
    return true;
}

/* Outputs in their layout without format_output: each tensor downloaded (straight into the
 * block when it already has the layout) and rearranged on the host. */
static sqz_status format_on_host(sqz_session *s, run_slot *slot, const sqz_plan *plan, const out_entry *e,
                                 size_t n, unsigned char *block)
{
    const bool dense = packed_is_dense(&slot->p, slot->real.tokens);
    for (size_t i = 0; i < n; i++) {
        const sqz_output_format *f = &e[i].format;
        const sqz_tensor_desc *d = &plan->graph.tensors[f->tensor];
        const size_t values = (size_t)(sqz_tensor_rows(d, &slot->dims) * d->cols), bytes = values * sizeof(float);
        const size_t offset = (size_t)plan->offsets[f->tensor];
        if (d->dtype == SQZ_DTYPE_F32 && !f->half && f->col_begin == 0 && f->col_count == d->cols &&
            (f->width == 0 || dense)) {
            sqz_status st = s->x.ops->download(s->x.ctx, s->arena, offset, block + e[i].offset, e[i].bytes);
            if (st != SQZ_OK)
                return st;
            continue;
        }
        if (bytes > s->host_out_bytes) {
            free(s->host_out);
            s->host_out_bytes = 0;
            if (!(s->host_out = malloc(bytes)))
                return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory reading outputs");
            s->host_out_bytes = bytes;
        }
        sqz_status st = s->x.ops->download(s->x.ctx, s->arena, offset, s->host_out, values * sqz_dtype_size(d->dtype));
        if (st != SQZ_OK)
            return st;
        sqz_dtype_to_f32(d->dtype, s->host_out, values, s->host_out);
        sqz_format_output_host(f, s->host_out, d->cols, slot->p.seq_offsets, slot->p.positions, slot->p.key_valid,
                               block + e[i].offset);
    }
    return SQZ_OK;
}

/* Host memory for a result's outputs: the caller's, or a block of the pool, or a new one. */
static sqz_status result_memory(sqz_session *s, sqz_result *res, size_t total, void *memory, size_t memory_bytes)
{
    if (memory) {
        if (memory_bytes < total)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_submit_into: the outputs need %zu bytes, the "
                            "memory given has %zu (sqz_session_output_bytes)", total, memory_bytes);
        res->block = memory;
        return SQZ_OK;
    }
    res->block = sqz_pool_take_block(s->pool, total ? total : 1, &res->block_capacity);
    if (!res->block) {
        sqz_status st = host_alloc(s, total, &res->block);
        if (st != SQZ_OK) {
            res->block = NULL;
            return st;
        }
        res->block_capacity = total ? total : 1;
    }
    res->block_owned = true;
    return SQZ_OK;
}

/* A device buffer of at least `bytes` for outputs left on the device: one a freed result gave
 * back when it is big enough (the others are freed), else a new one. */
static sqz_status device_outputs_buffer(sqz_session *s, size_t bytes, sqz_buffer **out, size_t *capacity)
{
    *out = NULL;
    for (size_t have; ;) {
        sqz_buffer *b = sqz_pool_collect_returned(s->pool, &have);
        if (!b)
            break;
        if (!*out && have >= bytes) {
            *out = b;
            *capacity = have;
        } else {
            s->x.ops->buffer_free(s->x.ctx, b);
        }
    }
    if (*out)
        return SQZ_OK;
    *capacity = bytes ? bytes : 1;
    return session_alloc(s, *capacity, out);
}

/* Writes the outputs in their layout on the device and starts their copy to the host. */
static sqz_status finish_on_device(sqz_session *s, int k, const sqz_binding *binding, const out_entry *e, size_t n,
                                   size_t total, sqz_result *res)
{
    run_slot *slot = &s->slots[k];
    const bool on_device = s->out_options.place == SQZ_OUTPUT_ON_DEVICE;
    sqz_buffer *area = NULL;
    sqz_status st = SQZ_OK;
    if (on_device) {
        size_t capacity = 0;
        if ((st = device_outputs_buffer(s, total, &area, &capacity)) != SQZ_OK)
            return st;
        if ((st = sqz_pool_lend(s->pool, area, capacity, &res->lease)) != SQZ_OK) {
            s->x.ops->buffer_free(s->x.ctx, area);
            return st;
        }
    } else {
        if (slot->device_out_bytes < total) {
            if (slot->device_out)
                s->x.ops->buffer_free(s->x.ctx, slot->device_out);
            slot->device_out = NULL;
            slot->device_out_bytes = 0;
            if ((st = session_alloc(s, total ? total : 1, &slot->device_out)) != SQZ_OK)
                return st;
            slot->device_out_bytes = total ? total : 1;
        }
        area = slot->device_out;
    }
    for (size_t i = 0; i < n && st == SQZ_OK; i++)
        st = s->x.ops->format_output(s->x.ctx, binding, &e[i].format, area, e[i].offset);
    if (st != SQZ_OK)
        return st;
    if (on_device) {
        unsigned char *base = s->x.ops->device_address(s->x.ctx, area);
        for (size_t i = 0; i < n; i++)
            res->outputs[i].device_data = base + e[i].offset;
    }
    return s->x.ops->run_download(s->x.ctx, k, area, 0, on_device ? NULL : res->block, on_device ? 0 : total);
}

/* Everything a result needs but its values: names, shapes, where the values will be. */
static sqz_status result_skeleton(sqz_session *s, const sqz_plan *plan, const out_entry *e, size_t n,
                                  sqz_result *res)
{
    res->outputs = calloc(n ? n : 1, sizeof *res->outputs);
    if (!res->outputs)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for outputs");
    const bool on_device = s->out_options.place == SQZ_OUTPUT_ON_DEVICE;
    for (size_t i = 0; i < n; i++) {
        sqz_output *o = &res->outputs[i];
        if (!(o->name = strdup(plan->graph.outputs[e[i].output].name)))
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for outputs");
        res->count++;
        o->ndim = e[i].ndim;
        memcpy(o->shape, e[i].shape, sizeof o->shape);
        o->type = s->out_options.type;
        o->bytes = e[i].bytes;
        if (!on_device) {
            o->values = (unsigned char *)res->block + e[i].offset;
            o->data = o->type == SQZ_OUTPUT_FP32 ? o->values : NULL;
        }
    }
    return SQZ_OK;
}

static void slot_release(sqz_session *s, run_slot *slot)
{
    sqz_result_free(slot->result);
    slot->result = NULL;
    packed_release(&slot->p);
    if (slot->busy && s->plans[slot->plan_index].in_flight > 0)
        s->plans[slot->plan_index].in_flight--;
    free(slot->landed_error);
    slot->landed_error = NULL;
    slot->busy = slot->landed = false;
    slot->ticket = 0;
}

/* Packs, uploads and launches one run in slot k, and starts its outputs' way back. */
static sqz_status submit_run(sqz_session *s, int k, const run_input *input, void *memory, size_t memory_bytes)
{
    run_slot *slot = &s->slots[k];
    packed_batch *p = &slot->p;
    sqz_status st = input->padded ? validate_and_pack(s->model, input->padded, p)
                                  : validate_packed(s->model, input->packed, p);
    if (st != SQZ_OK)
        return st;
    slot->real = (sqz_run_dims){p->tokens, p->rows, p->score_rows, p->max_len, p->selected};
    slot->dims = slot->real;
    slot->compile_seconds = 0;
    st = get_plan(s, p, &slot->plan_index, &slot->compile_seconds);
    if (st != SQZ_OK)
        return st;
    s->plans[slot->plan_index].in_flight++;
    slot->busy = true; /* from here slot_release gives the plan back */
    sqz_plan *plan = s->plans[slot->plan_index].plan;
    if (pads_for_replay(s, p))
        st = pad_for_replay(p, &plan->bucket, s->model->config.max_position_embeddings, &slot->dims);
    if (st == SQZ_OK)
        st = ensure_arena(s, plan->arena_bytes);
    if (st != SQZ_OK)
        return st;
    const sqz_run_dims dims = slot->dims;
    sqz_binding binding = {plan, s->weights, s->weight_offsets, s->arena};
    cached_plan *cp = &s->plans[slot->plan_index];
    if (cp->prepared_arena != s->arena) {
        if ((st = sqz_executor_prepare(&s->x, &binding)) != SQZ_OK)
            return st;
        cp->prepared_arena = s->arena;
    }
    st = upload_inputs(s, slot, plan, &dims);
    if (st == SQZ_OK)
        st = sqz_executor_run(&s->x, &binding, &dims, true);
    /* the outputs: laid out, then formatted and copied back on the device's queues, or on the host */
    out_entry *e = NULL;
    size_t n = 0, total = 0;
    if (st == SQZ_OK)
        st = layout_outputs(s, &plan->graph, input, &e, &n, &total);
    sqz_result *res = NULL;
    if (st == SQZ_OK && !(res = calloc(1, sizeof *res)))
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (res) {
        res->lease = -1;
        sqz_pool_ref(s->pool);
        res->pool = s->pool;
    }
    slot->result = res;
    const bool on_device = s->out_options.place == SQZ_OUTPUT_ON_DEVICE;
    if (st == SQZ_OK && !on_device)
        st = result_memory(s, res, total, memory, memory_bytes);
    if (st == SQZ_OK)
        st = result_skeleton(s, plan, e, n, res);
    const bool async = s->x.ops->format_output && s->x.ops->run_download && s->x.ops->run_wait;
    if (st == SQZ_OK && async) {
        st = finish_on_device(s, k, &binding, e, n, total, res);
    } else if (st == SQZ_OK) {
        if (s->x.ops->synchronize)
            st = s->x.ops->synchronize(s->x.ctx);
        if (st == SQZ_OK)
            st = format_on_host(s, slot, plan, e, n, res->block);
        slot->landed = true;
        slot->landed_status = SQZ_OK;
    }
    free(e);
    return st;
}

static sqz_status submit(sqz_session *s, const run_input *input, void *memory, size_t memory_bytes,
                         sqz_ticket *ticket)
{
    if (!s || !ticket)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_submit: session and ticket are required");
    *ticket = 0;
    int k = 0;
    while (k < SQZ_RUN_SLOTS && s->slots[k].busy)
        k++;
    if (k == SQZ_RUN_SLOTS)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_submit: %d runs are already in flight; wait for "
                        "one first (SQZ_MAX_IN_FLIGHT)", SQZ_RUN_SLOTS);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sqz_status st = submit_run(s, k, input, memory, memory_bytes);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s->slots[k].host_seconds = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (st != SQZ_OK) {
        /* what was enqueued may still read the slot's memory: let it finish first */
        if (s->slots[k].busy && s->x.ops->synchronize) {
            char message[1024];
            snprintf(message, sizeof message, "%s", sqz_last_error());
            s->x.ops->synchronize(s->x.ctx);
            sqz_fail(st, "%s", message);
        }
        slot_release(s, &s->slots[k]);
        return st;
    }
    s->slots[k].ticket = *ticket = ++s->last_ticket;
    return SQZ_OK;
}

sqz_status sqz_session_submit(sqz_session *s, const sqz_input *input, sqz_ticket *ticket)
{
    const run_input in = {input, NULL};
    return submit(s, &in, NULL, 0, ticket);
}

sqz_status sqz_session_submit_packed(sqz_session *s, const sqz_packed_input *input, sqz_ticket *ticket)
{
    const run_input in = {NULL, input};
    return submit(s, &in, NULL, 0, ticket);
}

sqz_status sqz_session_submit_into(sqz_session *s, const sqz_input *input, void *memory, size_t bytes,
                                   sqz_ticket *ticket)
{
    if (!memory)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_submit_into: memory is required");
    const run_input in = {input, NULL};
    return submit(s, &in, memory, bytes, ticket);
}

sqz_status sqz_session_busy_seconds(const sqz_session *s, double *seconds)
{
    if (!s || !seconds)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_busy_seconds: session and seconds are required");
    *seconds = s->busy_seconds;
    return SQZ_OK;
}

void sqz_session_graph_counts(const sqz_session *s, unsigned long *captured, unsigned long *replayed)
{
    *captured = *replayed = 0;
    if (s && s->x.ops->graph_counts)
        s->x.ops->graph_counts(s->x.ctx, captured, replayed);
}

int sqz_session_in_flight(const sqz_session *s)
{
    int n = 0;
    for (int k = 0; s && k < SQZ_RUN_SLOTS; k++)
        n += s->slots[k].busy;
    return n;
}

sqz_status sqz_session_wait(sqz_session *s, sqz_ticket ticket, sqz_result **out)
{
    if (!s || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_wait: session and out are required");
    *out = NULL;
    int k = 0;
    while (k < SQZ_RUN_SLOTS && !(s->slots[k].busy && s->slots[k].ticket == ticket))
        k++;
    if (k == SQZ_RUN_SLOTS)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_session_wait: ticket %llu is not a run in flight on this "
                        "session", (unsigned long long)ticket);
    run_slot *slot = &s->slots[k];
    sqz_status st = slot->landed ? slot->landed_status : s->x.ops->run_wait(s->x.ctx, k);
    if (slot->landed && st != SQZ_OK)
        sqz_fail(st, "%s", slot->landed_error ? slot->landed_error : "a run in flight failed");
    if (st == SQZ_OK) {
        const cached_plan *c = &s->plans[slot->plan_index];
        s->last_plan = c->plan;
        s->last_dims = slot->dims;
        sqz_run_stats *rs = &s->last_stats;
        memset(rs, 0, sizeof *rs);
        rs->tokens = slot->real.tokens;
        rs->sequences = slot->real.sequences;
        rs->padded_tokens = slot->p.width ? slot->p.rows * slot->p.width : slot->real.tokens;
        for (size_t i = 0; i < c->plan->n_launches; i++) /* useful work: the caller's sequences */
            rs->flops += sqz_node_flops(&c->plan->graph, &c->plan->graph.nodes[c->plan->launches[i]], &slot->real);
        rs->launches = c->plan->n_launches;
        rs->arena_bytes = s->arena_bytes;
        rs->weight_bytes = s->weight_bytes;
        rs->compile_seconds = slot->compile_seconds;
        const double device = s->x.ops->run_device_seconds ? s->x.ops->run_device_seconds(s->x.ctx, k) : -1;
        s->busy_seconds += device >= 0 ? device : slot->host_seconds;
        *out = slot->result;
        slot->result = NULL;
    } else {
        s->last_plan = NULL;
    }
    slot_release(s, slot);
    return st;
}

/* Submits one run and waits for it. */
static sqz_status run_and_wait(sqz_session *s, const run_input *input, sqz_result **out, const char *api)
{
    if (!s || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "%s: session and out are required", api);
    *out = NULL;
    sqz_ticket ticket;
    sqz_status st = submit(s, input, NULL, 0, &ticket);
    return st == SQZ_OK ? sqz_session_wait(s, ticket, out) : st;
}

sqz_status sqz_session_run_packed(sqz_session *s, const sqz_packed_input *input, sqz_result **out)
{
    const run_input in = {NULL, input};
    return run_and_wait(s, &in, out, "sqz_session_run_packed");
}

/* The padded form over the same core: validate_and_pack turns the padded batch into the packed
 * one (dropping masked tokens), and the outputs are scattered back to [N][W] as they are
 * formatted (on the device where the backend can). */
sqz_status sqz_session_run(sqz_session *s, const sqz_input *input, sqz_result **out)
{
    const run_input in = {input, NULL};
    return run_and_wait(s, &in, out, "sqz_session_run");
}

/* ---- results -------------------------------------------------------------------------------- */

size_t sqz_result_count(const sqz_result *r) { return r ? r->count : 0; }

const sqz_output *sqz_result_get(const sqz_result *r, size_t index)
{
    return r && index < r->count ? &r->outputs[index] : NULL;
}

const sqz_output *sqz_result_find(const sqz_result *r, const char *name)
{
    for (size_t i = 0; r && name && i < r->count; i++)
        if (strcmp(r->outputs[i].name, name) == 0)
            return &r->outputs[i];
    return NULL;
}

void sqz_result_free(sqz_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->count; i++)
        free((void *)r->outputs[i].name);
    free(r->outputs);
    if (r->pool)
        sqz_pool_release_result(r->pool, r->block_owned ? r->block : NULL, r->block_capacity, r->lease);
    free(r);
}

/* ---- validation ---------------------------------------------------------------------------- */

struct sqz_validation {
    int64_t argmax_rows, argmax_mismatches; /* over every *logits output */
    sqz_node_check *checks;
    char (*names)[SQZ_NAME_LEN]; /* checks[i].node points here */
    size_t count;
    char *device;
};

/* Reads tensor `t` of the session's last run as fp32 (rows for those dims x cols values). */
static sqz_status read_tensor(sqz_session *s, size_t t, float **out, int64_t *count)
{
    const sqz_plan *plan = s->last_plan;
    const sqz_tensor_desc *d = &plan->graph.tensors[t];
    *count = sqz_tensor_rows(d, &s->last_dims) * d->cols;
    *out = malloc((size_t)(*count ? *count : 1) * sizeof **out);
    if (!*out)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", d->name);
    sqz_status st = s->x.ops->download(s->x.ctx, s->arena, (size_t)plan->offsets[t], *out,
                                       (size_t)*count * sqz_dtype_size(d->dtype));
    if (st == SQZ_OK)
        sqz_dtype_to_f32(d->dtype, *out, (size_t)*count, *out);
    return st;
}

static void compare(const float *got, const float *ref, int64_t n, double tolerance, sqz_node_check *c)
{
    double max_abs = 0, max_ref = 0, err2 = 0, ref2 = 0;
    bool finite = true;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) {
            finite &= isfinite(got[i]) == isfinite(ref[i]) && got[i] == ref[i];
            continue;
        }
        double d = (double)got[i] - ref[i];
        max_abs = fmax(max_abs, fabs(d));
        max_ref = fmax(max_ref, fabs(ref[i]));
        err2 += d * d;
        ref2 += (double)ref[i] * ref[i];
    }
    c->values = n;
    c->max_abs = max_abs;
    c->max_rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    c->nmse = ref2 > 0 ? err2 / ref2 : err2;
    c->passed = finite && c->max_rel <= tolerance;
}

static int64_t argmax_of(const float *x, int64_t n, int64_t stride, const int64_t *valid)
{
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if ((!valid || valid[i]) && (best < 0 || x[i * stride] > x[best * stride]))
            best = i;
    return best;
}

/* Counts the rows of every "...logits" output whose argmax differs between the two results:
 * per sequence or choice, per real token (tokens, masked LM), and over the real positions of
 * a sequence (question answering's start and end). */
static void compare_argmax(const sqz_result *got, const sqz_result *want, const sqz_input *in, sqz_validation *v)
{
    for (size_t o = 0; o < sqz_result_count(want); o++) {
        const sqz_output *w = sqz_result_get(want, o), *g = sqz_result_find(got, w->name);
        const size_t len = strlen(w->name);
        if (!g || len < 6 || strcmp(w->name + len - 6, "logits") != 0 || g->ndim != w->ndim)
            continue;
        const int64_t *mask = in->attention_mask;
        if (w->ndim == 3) { /* [batch, width, labels]: every real token */
            for (int64_t r = 0; r < w->shape[0] * w->shape[1]; r++) {
                if (mask && !mask[r])
                    continue;
                v->argmax_rows++;
                v->argmax_mismatches += argmax_of(g->data + r * w->shape[2], w->shape[2], 1, NULL) !=
                                        argmax_of(w->data + r * w->shape[2], w->shape[2], 1, NULL);
            }
        } else if (w->ndim == 2) {
            const bool positions = strcmp(w->name, "logits") != 0; /* start_logits, end_logits */
            for (int64_t r = 0; r < w->shape[0]; r++) {
                const int64_t *valid = positions && mask ? mask + r * w->shape[1] : NULL;
                v->argmax_rows++;
                v->argmax_mismatches += argmax_of(g->data + r * w->shape[1], w->shape[1], 1, valid) !=
                                        argmax_of(w->data + r * w->shape[1], w->shape[1], 1, valid);
            }
        }
    }
}

/* Compares `got` (n_got values of the test session's node `node`) with cpu_ref's activation
 * named `name`, as the next check of v. */
static sqz_status check_tensor(sqz_session *test, sqz_session *ref, const sqz_node *node, const char *name,
                               const float *got, int64_t n_got, double tolerance, sqz_validation *v)
{
    const sqz_graph *rg = &ref->last_plan->graph;
    size_t match = rg->n_tensors;
    for (size_t t = 0; t < rg->n_tensors && match == rg->n_tensors; t++)
        if (strcmp(rg->tensors[t].name, name) == 0 && rg->tensors[t].kind == SQZ_TENSOR_ACTIVATION)
            match = t;
    if (match == rg->n_tensors)
        return sqz_fail(SQZ_ERR_INTERNAL, "validate: cpu_ref has no tensor '%s'", name);
    float *want = NULL;
    int64_t n_want;
    sqz_status st = read_tensor(ref, match, &want, &n_want);
    if (st == SQZ_OK && n_got != n_want)
        st = sqz_fail(SQZ_ERR_INTERNAL, "validate: '%s' has %lld values on %s, %lld on cpu_ref", name,
                      (long long)n_got, test->x.ops->name, (long long)n_want);
    if (st == SQZ_OK) {
        sqz_node_check *c = &v->checks[v->count];
        snprintf(v->names[v->count], SQZ_NAME_LEN, "%s", name);
        c->node = v->names[v->count++];
        c->op = sqz_op_name(node->op);
        compare(got, want, n_got, tolerance, c);
    }
    free(want);
    return st;
}

/* Part `part` (q, k, v) of a QKV node's output against cpu_ref's projection of the same
 * weight: cpu_ref never fuses, so its three linear nodes still exist, named as before. */
static sqz_status check_qkv_part(sqz_session *test, sqz_session *ref, const sqz_node *node, int part,
                                 const float *got, int64_t n_got, double tolerance, sqz_validation *v)
{
    const sqz_graph *tg = &test->last_plan->graph, *rg = &ref->last_plan->graph;
    const char *weight = tg->tensors[node->inputs[1 + 2 * part]].name;
    const char *name = NULL;
    for (size_t n = 0; n < rg->n_nodes && !name; n++)
        if (rg->nodes[n].op == SQZ_OP_LINEAR && strcmp(rg->tensors[rg->nodes[n].inputs[1]].name, weight) == 0)
            name = rg->tensors[rg->nodes[n].output].name;
    if (!name)
        return sqz_fail(SQZ_ERR_INTERNAL, "validate: cpu_ref has no projection by '%s' (part %d of '%s')", weight,
                        part, node->name);
    const int64_t cols = tg->tensors[node->output].cols, width = cols / 3, rows = n_got / cols;
    float *slice = malloc((size_t)(rows * width > 0 ? rows * width : 1) * sizeof *slice);
    if (!slice)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < width; c++)
            slice[r * width + c] = got[r * cols + sqz_qkv_column(width, node->params.linear.groups, part, c)];
    sqz_status st = check_tensor(test, ref, node, name, slice, rows * width, tolerance, v);
    free(slice);
    return st;
}

sqz_status sqz_validate(const sqz_model *model, const sqz_session_options *options, const sqz_input *input,
                        double tolerance, sqz_validation **out)
{
    static const sqz_session_options defaults; /* cpu_ref against itself */
    if (!options)
        options = &defaults;
    if (!model || !out || !(tolerance > 0))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_validate: model, out and a positive tolerance are "
                        "required");
    *out = NULL;
    sqz_session *test = NULL, *ref = NULL;
    sqz_result *r1 = NULL, *r2 = NULL;
    sqz_validation *v = calloc(1, sizeof *v);
    float *got = NULL;
    sqz_status st = v ? SQZ_OK : sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    if (st == SQZ_OK)
        st = session_create(model, options, true, &test);
    /* the reference is checked as closely as the session under test */
    const sqz_session_options ref_options = {.backend = "cpu_ref", .guard_bytes = options->guard_bytes,
                                             .unfused = options->unfused};
    if (st == SQZ_OK)
        st = session_create(model, &ref_options, true, &ref);
    if (st == SQZ_OK)
        st = sqz_session_run(test, input, &r1);
    if (st == SQZ_OK)
        st = sqz_session_run(ref, input, &r2);
    if (st == SQZ_OK) {
        /* a QKV node is checked as its three parts */
        const size_t most = 3 * test->last_plan->n_launches + 1;
        v->device = strdup(sqz_session_device(test));
        v->checks = calloc(most, sizeof *v->checks);
        v->names = calloc(most, sizeof *v->names);
        if (!v->device || !v->checks || !v->names)
            st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (size_t k = 0; st == SQZ_OK && k < test->last_plan->n_launches; k++) {
        const sqz_graph *tg = &test->last_plan->graph;
        const sqz_node *node = &tg->nodes[test->last_plan->launches[k]];
        int64_t n_got;
        st = read_tensor(test, (size_t)node->output, &got, &n_got);
        if (st == SQZ_OK && node->op == SQZ_OP_QKV)
            for (int part = 0; part < 3 && st == SQZ_OK; part++)
                st = check_qkv_part(test, ref, node, part, got, n_got, tolerance, v);
        else if (st == SQZ_OK)
            st = check_tensor(test, ref, node, tg->tensors[node->output].name, got, n_got, tolerance, v);
        free(got);
        got = NULL;
    }
    sqz_model_info info;
    sqz_model_get_info(model, &info);
    /* a masked LM scores a whole vocabulary, where near-ties are normal: not a classification */
    if (st == SQZ_OK && info.head != SQZ_HEAD_MASKED_LM)
        compare_argmax(r1, r2, input, v);
    sqz_result_free(r1);
    sqz_result_free(r2);
    sqz_session_free(test);
    sqz_session_free(ref);
    if (st != SQZ_OK) {
        sqz_validation_free(v);
        return st;
    }
    *out = v;
    return SQZ_OK;
}

size_t sqz_validation_count(const sqz_validation *v) { return v ? v->count : 0; }

const sqz_node_check *sqz_validation_get(const sqz_validation *v, size_t index)
{
    return v && index < v->count ? &v->checks[index] : NULL;
}

long sqz_validation_first_failure(const sqz_validation *v)
{
    for (size_t i = 0; v && i < v->count; i++)
        if (!v->checks[i].passed)
            return (long)i;
    return -1;
}

const char *sqz_validation_device(const sqz_validation *v) { return v && v->device ? v->device : ""; }

int64_t sqz_validation_argmax(const sqz_validation *v, int64_t *mismatches)
{
    if (mismatches)
        *mismatches = v ? v->argmax_mismatches : 0;
    return v ? v->argmax_rows : 0;
}

void sqz_validation_free(sqz_validation *v)
{
    if (!v)
        return;
    free(v->device);
    free(v->checks);
    free(v->names);
    free(v);
}
