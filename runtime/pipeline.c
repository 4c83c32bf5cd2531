/* The text pipeline (include/squeezebert_pipeline.h): texts to tokens with the task's
 * truncation, tokens to batches under a budget, batches to packed runs, outputs to answers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "squeezebert_pipeline.h"

#define DEFAULT_BATCH_TOKENS 8192
#define DEFAULT_TOP_K 5
#define DEFAULT_MAX_ANSWER_LENGTH 15
/* fill-mask: a batch's [tokens x vocab] logits are held at once, so its budget counts them,
 * against this many times the token budget */
#define FILL_MASK_BUDGET_FACTOR 64

struct sqz_pipeline {
    const sqz_model *model;
    const sqz_tokenizer *tok;
    sqz_model *owned_model;         /* sqz_pipeline_open */
    sqz_tokenizer *owned_tok;
    sqz_model_info model_info;
    sqz_tokenizer_info tok_info;
    sqz_embedder *embedder;         /* embed only */
    sqz_embedder_info emb_info;
    sqz_pipeline_info info;
    const char **label_names;       /* [num_labels] */
};

struct sqz_pipeline_item {
    char *text, *pair;              /* owned copies (pair NULL without one) */
    size_t text_len, pair_len;
    sqz_encoding *enc;
    size_t *use;                    /* the encoding's tokens that run, in order (qa truncation) */
    int64_t *ids, *types;           /* [n_use]: what runs */
    size_t n_use;
    char *error;
    void *user;
    bool answered;
    sqz_answer answer;
    double *probabilities;          /* the answer's arrays, owned */
    float *embedding;
    sqz_token_label *tokens;
    sqz_mask_candidate *candidates;
};

/* ---- tasks -------------------------------------------------------------------------------- */

static const char *const task_names[SQZ_TASK_COUNT] = {"auto", "classify", "embed", "tokens", "qa", "fill-mask"};

const char *sqz_task_name(sqz_task task)
{
    return (unsigned)task < SQZ_TASK_COUNT ? task_names[task] : "?";
}

sqz_status sqz_task_from_name(const char *name, sqz_task *out)
{
    for (int i = 0; name && i < SQZ_TASK_COUNT; i++)
        if (strcmp(name, task_names[i]) == 0) {
            *out = (sqz_task)i;
            return SQZ_OK;
        }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "unknown task '%s' (auto, classify, embed, tokens, qa, fill-mask)",
                    name ? name : "(null)");
}

sqz_task sqz_task_for_head(sqz_head head)
{
    switch (head) {
    case SQZ_HEAD_SEQUENCE_CLASSIFICATION: return SQZ_TASK_CLASSIFY;
    case SQZ_HEAD_TOKEN_CLASSIFICATION: return SQZ_TASK_TOKENS;
    case SQZ_HEAD_QUESTION_ANSWERING: return SQZ_TASK_QA;
    case SQZ_HEAD_MASKED_LM: return SQZ_TASK_FILL_MASK;
    case SQZ_HEAD_BASE: return SQZ_TASK_EMBED;
    default: return SQZ_TASK_AUTO;
    }
}

/* ---- the pipeline ------------------------------------------------------------------------- */

sqz_status sqz_pipeline_create(const sqz_model *model, const sqz_tokenizer *tokenizer,
                               const sqz_pipeline_options *options, sqz_pipeline **out)
{
    if (!model || !tokenizer || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_create: model, tokenizer and out are required");
    *out = NULL;
    const sqz_pipeline_options defaults = {0};
    const sqz_pipeline_options *o = options ? options : &defaults;
    if ((unsigned)o->task >= SQZ_TASK_COUNT || o->max_length < 0 || (o->max_length > 0 && o->max_length < 3) ||
        o->batch_tokens < 0 || o->top_k < 0 || o->max_answer_length < 0 || o->pooling_count < 0 ||
        o->pooling_count > SQZ_MAX_POOL_MODES || (unsigned)o->normalize > SQZ_NORMALIZE_OFF)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_create: options out of range (task %d, "
                        "max_length %ld: 0 or at least 3, batch_tokens %ld, top_k %d, max_answer_length %d, "
                        "pooling_count %d, normalize %d)", (int)o->task, o->max_length, o->batch_tokens,
                        o->top_k, o->max_answer_length, o->pooling_count, (int)o->normalize);
    sqz_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    p->model = model;
    p->tok = tokenizer;
    sqz_model_get_info(model, &p->model_info);
    sqz_tokenizer_get_info(tokenizer, &p->tok_info);
    sqz_pipeline_info *info = &p->info;
    const sqz_task native = sqz_task_for_head(p->model_info.head);
    info->task = o->task == SQZ_TASK_AUTO ? native : o->task;
    sqz_status st = SQZ_OK;
    if (native == SQZ_TASK_AUTO) {
        st = sqz_fail(SQZ_ERR_UNSUPPORTED, "the pipeline has no task for this checkpoint's %s (%s head)",
                      p->model_info.architecture, sqz_head_name(p->model_info.head));
        goto fail;
    }
    if (info->task != native) {
        st = sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "task '%s' needs a different head than this checkpoint's %s (%s)",
                      sqz_task_name(o->task), p->model_info.architecture, sqz_head_name(p->model_info.head));
        goto fail;
    }
    if (info->task == SQZ_TASK_FILL_MASK && p->tok_info.mask_id < 0) {
        st = sqz_fail(SQZ_ERR_UNSUPPORTED, "fill-mask needs a [MASK] token in the vocabulary");
        goto fail;
    }
    info->max_length = o->max_length;
    if (info->task == SQZ_TASK_EMBED) {
        const int normalize = o->normalize == SQZ_NORMALIZE_ON ? 1 : o->normalize == SQZ_NORMALIZE_OFF ? 0 : -1;
        if ((st = sqz_embedder_load(model, &p->embedder)) != SQZ_OK ||
            (st = sqz_embedder_override(p->embedder, o->pooling, o->pooling_count, normalize)) != SQZ_OK ||
            (st = sqz_embedder_use_tokenizer(p->embedder, tokenizer)) != SQZ_OK)
            goto fail;
        sqz_embedder_get_info(p->embedder, &p->emb_info);
        info->dimension = p->emb_info.dimension;
        if (info->max_length == 0)
            info->max_length = p->emb_info.truncate_at;
    }
    if (info->max_length == 0 || info->max_length > p->model_info.max_position_embeddings)
        info->max_length = p->model_info.max_position_embeddings;
    info->batch_tokens = o->batch_tokens ? o->batch_tokens : DEFAULT_BATCH_TOKENS;
    info->top_k = o->top_k ? o->top_k : DEFAULT_TOP_K;
    info->max_answer_length = o->max_answer_length ? o->max_answer_length : DEFAULT_MAX_ANSWER_LENGTH;
    info->num_labels = p->model_info.num_labels;
    if (!(p->label_names = malloc((info->num_labels > 0 ? (size_t)info->num_labels : 1) * sizeof *p->label_names))) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        goto fail;
    }
    for (int i = 0; i < info->num_labels; i++) {
        const char *name = sqz_model_label(model, i);
        p->label_names[i] = name ? name : "?";
    }
    *out = p;
    return SQZ_OK;
fail:
    sqz_embedder_free(p->embedder);
    free(p->label_names);
    free(p);
    return st;
}

sqz_status sqz_pipeline_open(const char *model_dir, const sqz_pipeline_options *options, sqz_pipeline **out)
{
    if (!model_dir || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_open: model_dir and out are required");
    *out = NULL;
    sqz_model *model = NULL;
    sqz_tokenizer *tok = NULL;
    sqz_status st = sqz_model_load(model_dir, NULL, &model);
    if (st == SQZ_OK)
        st = sqz_tokenizer_load(model_dir, &tok);
    if (st == SQZ_OK)
        st = sqz_pipeline_create(model, tok, options, out);
    if (st != SQZ_OK) {
        sqz_tokenizer_free(tok);
        sqz_model_free(model);
        return st;
    }
    (*out)->owned_model = model;
    (*out)->owned_tok = tok;
    return SQZ_OK;
}

void sqz_pipeline_free(sqz_pipeline *p)
{
    if (!p)
        return;
    sqz_embedder_free(p->embedder);
    free(p->label_names);
    sqz_tokenizer_free(p->owned_tok);
    sqz_model_free(p->owned_model);
    free(p);
}

sqz_status sqz_pipeline_get_info(const sqz_pipeline *p, sqz_pipeline_info *out)
{
    if (!p || !out)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_get_info: pipeline and out are required");
    *out = p->info;
    return SQZ_OK;
}

const sqz_model *sqz_pipeline_model(const sqz_pipeline *p) { return p ? p->model : NULL; }

const sqz_tokenizer *sqz_pipeline_tokenizer(const sqz_pipeline *p) { return p ? p->tok : NULL; }

sqz_status sqz_pipeline_use_session(const sqz_pipeline *p, sqz_session *session)
{
    if (!p || !session)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_use_session: pipeline and session are required");
    const char *names[2];
    size_t count = 0;
    switch (p->info.task) {
    case SQZ_TASK_EMBED:
        if (p->emb_info.needs_pooler)
            names[count++] = "pooler_output";
        if (p->emb_info.needs_hidden)
            names[count++] = "last_hidden_state";
        break;
    case SQZ_TASK_QA:
        names[count++] = "start_logits";
        names[count++] = "end_logits";
        break;
    default:
        names[count++] = "logits";
        break;
    }
    return sqz_session_select_outputs(session, names, count);
}

/* ---- items -------------------------------------------------------------------------------- */

static char *copy_bytes(const char *bytes, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, bytes, len);
        copy[len] = '\0';
    }
    return copy;
}

void sqz_pipeline_item_set_error(sqz_pipeline_item *it, const char *message)
{
    if (it && !it->error)
        it->error = copy_bytes(message ? message : "", message ? strlen(message) : 0);
}

/* Fills use/ids/types from the encoding: every token, or for qa (only-second) the first
 * max_length - 1 and the final [SEP]. */
static void choose_tokens(const sqz_pipeline *p, sqz_pipeline_item *it)
{
    const bool qa = p->info.task == SQZ_TASK_QA;
    const sqz_encoding *e = it->enc;
    const size_t max = (size_t)p->info.max_length;
    it->n_use = qa && e->length > max ? max : e->length;
    it->use = malloc((it->n_use ? it->n_use : 1) * sizeof *it->use);
    it->ids = malloc((it->n_use ? it->n_use : 1) * sizeof *it->ids);
    it->types = malloc((it->n_use ? it->n_use : 1) * sizeof *it->types);
    if (!it->use || !it->ids || !it->types) {
        sqz_pipeline_item_set_error(it, "out of memory");
        return;
    }
    for (size_t w = 0; w < it->n_use; w++)
        it->use[w] = w;
    if (it->n_use < e->length) {
        it->use[it->n_use - 1] = e->length - 1;
        if (e->sequence_ids[it->n_use - 2] != 1) {
            sqz_pipeline_item_set_error(it, "the question leaves no room for the context within --max-length");
            return;
        }
    }
    for (size_t w = 0; w < it->n_use; w++) {
        it->ids[w] = e->input_ids[it->use[w]];
        it->types[w] = e->token_type_ids[it->use[w]];
    }
    if (qa) {
        /* a context of only spaces or control characters is a non-empty string with no
         * tokens: no span can be answered (found by fuzz_infer_line) */
        bool context = false;
        for (size_t i = 0; i < it->n_use && !context; i++)
            context = e->sequence_ids[it->use[i]] == 1;
        if (!context) {
            sqz_pipeline_item_set_error(it, "the context has no tokens");
            return;
        }
    }
    if (p->info.task == SQZ_TASK_FILL_MASK) {
        bool any = false;
        for (size_t i = 0; i < it->n_use && !any; i++)
            any = it->ids[i] == p->tok_info.mask_id;
        if (!any)
            sqz_pipeline_item_set_error(it, "the text has no [MASK] token");
    }
}

sqz_status sqz_pipeline_encode(const sqz_pipeline *p, const sqz_text *in, sqz_pipeline_item **out)
{
    if (!p || !in || !out || (!in->text && in->text_len) || (!in->pair && in->pair_len))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_encode: pipeline, input and out are required");
    *out = NULL;
    sqz_pipeline_item *it = calloc(1, sizeof *it);
    if (!it)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    const bool qa = p->info.task == SQZ_TASK_QA;
    it->text = copy_bytes(in->text ? in->text : "", in->text_len);
    it->text_len = in->text_len;
    if (in->pair) {
        it->pair = copy_bytes(in->pair, in->pair_len);
        it->pair_len = in->pair_len;
    }
    if (!it->text || (in->pair && !it->pair)) {
        sqz_pipeline_item_free(it);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    }
    *out = it;
    if (it->text_len == 0 || (qa && it->pair_len == 0)) {
        sqz_pipeline_item_set_error(it, qa ? "empty question or context" : "empty text");
        return SQZ_OK;
    }
    /* qa truncates only the context (only_second): encode whole, then cut context tokens
     * from the end (choose_tokens) */
    if (sqz_tokenizer_encode(p->tok, it->text, it->text_len, it->pair, it->pair_len,
                             qa ? 0 : (int)p->info.max_length, &it->enc) != SQZ_OK) {
        sqz_pipeline_item_set_error(it, sqz_last_error());
        return SQZ_OK;
    }
    choose_tokens(p, it);
    return SQZ_OK;
}

static void clear_answer(sqz_pipeline_item *it)
{
    free(it->probabilities);
    free(it->embedding);
    free(it->tokens);
    free(it->candidates);
    it->probabilities = NULL, it->embedding = NULL, it->tokens = NULL, it->candidates = NULL;
    it->answered = false;
}

void sqz_pipeline_item_free(sqz_pipeline_item *it)
{
    if (!it)
        return;
    clear_answer(it);
    free(it->text);
    free(it->pair);
    sqz_encoding_free(it->enc);
    free(it->use);
    free(it->ids);
    free(it->types);
    free(it->error);
    free(it);
}

const char *sqz_pipeline_item_error(const sqz_pipeline_item *it) { return it ? it->error : NULL; }

void sqz_pipeline_item_set_user(sqz_pipeline_item *it, void *user)
{
    if (it)
        it->user = user;
}

void *sqz_pipeline_item_user(const sqz_pipeline_item *it) { return it ? it->user : NULL; }

size_t sqz_pipeline_item_tokens(const sqz_pipeline_item *it, const int64_t **ids, const int64_t **types)
{
    if (ids)
        *ids = it ? it->ids : NULL;
    if (types)
        *types = it ? it->types : NULL;
    return it && it->ids ? it->n_use : 0;
}

const sqz_answer *sqz_pipeline_item_answer(const sqz_pipeline_item *it)
{
    return it && it->answered && !it->error ? &it->answer : NULL;
}

/* ---- answers ------------------------------------------------------------------------------ */

/* Code points in the first `bytes` bytes of UTF-8 text (offsets as transformers gives them). */
static size_t code_points(const char *text, size_t bytes)
{
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++)
        n += ((unsigned char)text[i] & 0xC0) != 0x80;
    return n;
}

static void softmax(const float *logits, size_t n, double *out)
{
    double m = -INFINITY, sum = 0;
    for (size_t i = 0; i < n; i++)
        m = logits[i] > m ? logits[i] : m;
    for (size_t i = 0; i < n; i++)
        sum += out[i] = exp((double)logits[i] - m);
    for (size_t i = 0; i < n; i++)
        out[i] /= sum;
}

static size_t argmax(const double *x, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static const char *label_name(const sqz_pipeline *p, size_t index)
{
    return index < (size_t)p->info.num_labels ? p->label_names[index] : "?";
}

static const char *const out_of_memory_answer = "out of memory formatting the answer";

/* Each answer_* returns NULL on success, else the item's error message. */
static const char *answer_classify(const sqz_pipeline *p, sqz_pipeline_item *it, const float *logits)
{
    const size_t L = (size_t)p->info.num_labels;
    if (!(it->probabilities = malloc(L * sizeof *it->probabilities)))
        return out_of_memory_answer;
    softmax(logits, L, it->probabilities);
    const size_t best = argmax(it->probabilities, L);
    it->answer.label = (int)best;
    it->answer.label_name = label_name(p, best);
    it->answer.score = it->probabilities[best];
    it->answer.probabilities = it->probabilities;
    it->answer.num_labels = (int)L;
    it->answer.label_names = p->label_names;
    return NULL;
}

static const char *answer_embed(const sqz_pipeline *p, sqz_pipeline_item *it, const float *hidden_rows,
                                const float *pooled_row)
{
    if (!(it->embedding = malloc((size_t)p->emb_info.dimension * sizeof *it->embedding)) ||
        sqz_embedder_embed(p->embedder, hidden_rows, it->n_use, pooled_row, it->embedding) != SQZ_OK)
        return out_of_memory_answer;
    it->answer.embedding = it->embedding;
    it->answer.dimension = p->emb_info.dimension;
    return NULL;
}

static const char *answer_tokens(const sqz_pipeline *p, sqz_pipeline_item *it, const float *logits)
{
    const sqz_encoding *e = it->enc;
    const size_t L = (size_t)p->info.num_labels;
    double *probs = malloc(L * sizeof *probs);
    it->tokens = malloc((it->n_use ? it->n_use : 1) * sizeof *it->tokens);
    if (!probs || !it->tokens) {
        free(probs);
        return out_of_memory_answer;
    }
    size_t n = 0;
    for (size_t w = 0; w < it->n_use; w++) {
        const size_t k = it->use[w];
        if (e->sequence_ids[k] != 0)
            continue;
        softmax(logits + w * L, L, probs);
        const size_t best = argmax(probs, L);
        const char *piece = sqz_tokenizer_id_to_token(p->tok, (int32_t)e->input_ids[k]);
        it->tokens[n++] = (sqz_token_label){piece ? piece : "[UNK]", (int)best, label_name(p, best), probs[best],
                                            code_points(it->text, e->offsets[k].start),
                                            code_points(it->text, e->offsets[k].end)};
    }
    free(probs);
    it->answer.tokens = it->tokens;
    it->answer.n_tokens = n;
    return NULL;
}

/* Softmax over the context tokens only, then the best span within the answer length. */
static const char *answer_qa(const sqz_pipeline *p, sqz_pipeline_item *it, const float *start_logits,
                             const float *end_logits)
{
    const sqz_encoding *e = it->enc;
    const char *why = out_of_memory_answer;
    size_t n = 0;
    size_t *pos = malloc(e->length * sizeof *pos);
    float *sl = malloc(e->length * sizeof *sl), *el = malloc(e->length * sizeof *el);
    double *ps = malloc(e->length * sizeof *ps), *pe = malloc(e->length * sizeof *pe);
    if (!pos || !sl || !el || !ps || !pe)
        goto done;
    for (size_t w = 0; w < it->n_use; w++)
        if (e->sequence_ids[it->use[w]] == 1) {
            pos[n] = it->use[w];
            sl[n] = start_logits[w];
            el[n++] = end_logits[w];
        }
    if (n == 0) {
        why = "no context tokens remain after truncation";
        goto done;
    }
    softmax(sl, n, ps);
    softmax(el, n, pe);
    size_t bi = 0, bj = 0;
    double best = -1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i; j < n && j < i + (size_t)p->info.max_answer_length; j++)
            if (ps[i] * pe[j] > best) {
                best = ps[i] * pe[j];
                bi = i, bj = j;
            }
    const size_t start = e->offsets[pos[bi]].start, end = e->offsets[pos[bj]].end;
    it->answer.answer = it->pair + start;
    it->answer.answer_len = end - start;
    it->answer.start = code_points(it->pair, start);
    it->answer.end = code_points(it->pair, end);
    it->answer.score = best;
    why = NULL;
done:
    free(pos), free(sl), free(el), free(ps), free(pe);
    return why;
}

/* logits: the [n_use][V] rows of the item's tokens. */
static const char *answer_fill_mask(const sqz_pipeline *p, sqz_pipeline_item *it, const float *logits, size_t V)
{
    /* ids without a vocab.txt entry (checkpoint padding rows) take no part */
    const size_t n = V < (size_t)p->tok_info.vocab_size ? V : (size_t)p->tok_info.vocab_size;
    const size_t per_mask = (size_t)p->info.top_k < n ? (size_t)p->info.top_k : n;
    size_t masks = 0;
    for (size_t w = 0; w < it->n_use; w++)
        masks += it->ids[w] == p->tok_info.mask_id;
    double *probs = malloc((n ? n : 1) * sizeof *probs);
    it->candidates = malloc((masks * per_mask > 0 ? masks * per_mask : 1) * sizeof *it->candidates);
    if (!probs || !it->candidates) {
        free(probs);
        return out_of_memory_answer;
    }
    sqz_mask_candidate *c = it->candidates;
    for (size_t w = 0; w < it->n_use; w++) {
        if (it->ids[w] != p->tok_info.mask_id)
            continue;
        softmax(logits + w * V, n, probs);
        for (size_t k = 0; k < per_mask; k++) {
            size_t best = SIZE_MAX;
            for (size_t i = 0; i < n; i++)
                if (probs[i] >= 0 && (best == SIZE_MAX || probs[i] > probs[best]))
                    best = i;
            const char *piece = sqz_tokenizer_id_to_token(p->tok, (int32_t)best);
            *c++ = (sqz_mask_candidate){(int32_t)best, piece ? piece : "?", probs[best]};
            probs[best] = -1; /* taken */
        }
    }
    free(probs);
    it->answer.candidates = it->candidates;
    it->answer.n_masks = masks;
    it->answer.per_mask = per_mask;
    return NULL;
}

/* The output `name` of a run of `rows` rows of `cols` floats on the host, or NULL (with the
 * error set). cols 0: any. */
static const sqz_output *host_output(const sqz_result *r, const char *name, int64_t rows, int64_t cols)
{
    const sqz_output *o = sqz_result_find(r, name);
    if (!o || !o->data || o->shape[0] != rows || (cols && (o->ndim < 2 ? 1 : o->shape[1]) != cols)) {
        sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_answer: the result has no host fp32 output '%s' of %lld "
                 "rows: not the packed run of these items", name, (long long)rows);
        return NULL;
    }
    return o;
}

sqz_status sqz_pipeline_answer(const sqz_pipeline *p, const sqz_result *result, sqz_pipeline_item *const *items,
                               size_t n)
{
    if (!p || !result || (n && !items))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_answer: pipeline, result and items are required");
    int64_t tokens = 0;
    for (size_t i = 0; i < n; i++)
        tokens += (int64_t)items[i]->n_use;
    const int64_t N = (int64_t)n;
    const int64_t H = p->model_info.hidden_size, L = p->info.num_labels;
    const sqz_output *a = NULL, *b = NULL;
    switch (p->info.task) {
    case SQZ_TASK_CLASSIFY: a = host_output(result, "logits", N, L); break;
    case SQZ_TASK_TOKENS: a = host_output(result, "logits", tokens, L); break;
    case SQZ_TASK_FILL_MASK: a = host_output(result, "logits", tokens, 0); break;
    case SQZ_TASK_QA:
        a = host_output(result, "start_logits", tokens, 0);
        b = a ? host_output(result, "end_logits", tokens, 0) : NULL;
        break;
    case SQZ_TASK_EMBED:
        a = p->emb_info.needs_hidden ? host_output(result, "last_hidden_state", tokens, H) : NULL;
        b = p->emb_info.needs_pooler ? host_output(result, "pooler_output", N, H) : NULL;
        if ((p->emb_info.needs_hidden && !a) || (p->emb_info.needs_pooler && !b))
            return SQZ_ERR_INVALID_ARGUMENT;
        break;
    default: break;
    }
    if (p->info.task != SQZ_TASK_EMBED && (!a || (p->info.task == SQZ_TASK_QA && !b)))
        return SQZ_ERR_INVALID_ARGUMENT;
    int64_t first = 0; /* the item's first token in the packed outputs */
    for (size_t r = 0; r < n; r++) {
        sqz_pipeline_item *it = items[r];
        clear_answer(it);
        memset(&it->answer, 0, sizeof it->answer);
        it->answer.task = p->info.task;
        const char *why = NULL;
        switch (p->info.task) {
        case SQZ_TASK_CLASSIFY: why = answer_classify(p, it, a->data + r * (size_t)L); break;
        case SQZ_TASK_TOKENS: why = answer_tokens(p, it, a->data + first * L); break;
        case SQZ_TASK_FILL_MASK: why = answer_fill_mask(p, it, a->data + first * a->shape[1], (size_t)a->shape[1]); break;
        case SQZ_TASK_QA: why = answer_qa(p, it, a->data + first, b->data + first); break;
        case SQZ_TASK_EMBED:
            why = answer_embed(p, it, a ? a->data + first * H : NULL, b ? b->data + r * (size_t)H : NULL);
            break;
        default: break;
        }
        if (why) {
            clear_answer(it);
            sqz_pipeline_item_set_error(it, why);
        } else {
            it->answered = true;
        }
        first += (int64_t)it->n_use;
    }
    return SQZ_OK;
}

/* ---- batches and runs --------------------------------------------------------------------- */

typedef struct sort_key {
    size_t tokens, index;
    sqz_pipeline_item *item;
} sort_key;

static int by_tokens(const void *a, const void *b)
{
    const sort_key *x = a, *y = b;
    if (x->tokens != y->tokens)
        return x->tokens < y->tokens ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

size_t sqz_pipeline_plan_batches(const sqz_pipeline *p, sqz_pipeline_item **items, size_t n, size_t *failed,
                                 size_t *ends)
{
    *failed = 0;
    sort_key *keys = malloc((n ? n : 1) * sizeof *keys);
    if (!p || !keys) {
        free(keys);
        sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "sqz_pipeline_plan_batches: out of memory");
        return 0;
    }
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i]->error)
            items[(*failed)++] = items[i]; /* stays ahead of i: the order is kept */
        else
            keys[ok] = (sort_key){items[i]->n_use, ok, items[i]}, ok++;
    }
    qsort(keys, ok, sizeof *keys, by_tokens);
    sqz_pipeline_item **rest = items + *failed;
    for (size_t i = 0; i < ok; i++)
        rest[i] = keys[i].item;
    free(keys);
    const size_t multiple = p->info.task == SQZ_TASK_FILL_MASK ? (size_t)p->model_info.vocab_size : 1;
    const size_t budget = (size_t)p->info.batch_tokens * (multiple > 1 ? FILL_MASK_BUDGET_FACTOR : 1);
    size_t batches = 0, start = 0;
    while (start < ok) {
        size_t end = start + 1;
        /* sorted ascending: the last item of the batch sets its padded width */
        while (end < ok && (end - start + 1) * rest[end]->n_use * multiple <= budget)
            end++;
        ends[batches++] = *failed + end;
        start = end;
    }
    return batches;
}

sqz_status sqz_pipeline_submit(const sqz_pipeline *p, sqz_session *session, sqz_pipeline_item *const *items, size_t n,
                               sqz_ticket *ticket)
{
    if (!p || !session || !items || n == 0 || !ticket)
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_submit: pipeline, session, items (at least one) "
                        "and ticket are required");
    size_t tokens = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i]->error || !items[i]->ids)
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_submit: item %zu has no tokens to run (%s)", i,
                            items[i]->error ? items[i]->error : "not encoded");
        tokens += items[i]->n_use;
    }
    int64_t *offsets = malloc((n + 1) * sizeof *offsets);
    int64_t *ids = malloc(tokens * sizeof *ids), *types = malloc(tokens * sizeof *types);
    sqz_status st = SQZ_OK;
    if (!offsets || !ids || !types) {
        st = sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory for a batch");
    } else {
        offsets[0] = 0;
        for (size_t i = 0; i < n; i++) {
            const sqz_pipeline_item *it = items[i];
            memcpy(ids + offsets[i], it->ids, it->n_use * sizeof *ids);
            memcpy(types + offsets[i], it->types, it->n_use * sizeof *types);
            offsets[i + 1] = offsets[i] + (int64_t)it->n_use;
        }
        const sqz_packed_input in = {(int)n, 0, offsets, ids, types};
        st = sqz_session_submit_packed(session, &in, ticket);
    }
    free(offsets), free(ids), free(types);
    return st;
}

/* A range of the run's items, [begin, end). */
typedef struct item_range {
    size_t begin, end;
} item_range;

/* A failed batch: its halves to run again, or for a single item, its error. */
static void batch_failed(sqz_pipeline_item **items, item_range r, const char *message, item_range *pending,
                         size_t *n_pending, size_t *retried)
{
    if (r.end - r.begin == 1) {
        sqz_pipeline_item_set_error(items[r.begin], message);
        return;
    }
    const size_t half = r.begin + (r.end - r.begin) / 2;
    pending[(*n_pending)++] = (item_range){half, r.end};
    pending[(*n_pending)++] = (item_range){r.begin, half};
    if (retried)
        (*retried)++;
}

sqz_status sqz_pipeline_run(const sqz_pipeline *p, sqz_session *session, sqz_pipeline_item *const *items, size_t n,
                            size_t *retried)
{
    if (retried)
        *retried = 0;
    if (!p || !session || (n && !items))
        return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_run: pipeline, session and items are required");
    for (size_t i = 0; i < n; i++)
        if (!items[i])
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "sqz_pipeline_run: item %zu is NULL", i);
    /* the run's own order (sorted by length); the answers land in the items, whose order is
     * the caller's */
    sqz_pipeline_item **order = malloc((n ? n : 1) * sizeof *order);
    size_t *ends = malloc((n ? n : 1) * sizeof *ends);
    /* pending ranges: every batch, and at most two halves per split of a range */
    item_range *pending = malloc((2 * n + 2) * sizeof *pending);
    if (!order || !ends || !pending) {
        free(order), free(ends), free(pending);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    }
    size_t answerable = 0;
    for (size_t i = 0; i < n; i++)
        if (!items[i]->answered && !items[i]->error)
            order[answerable++] = items[i];
    size_t failed;
    const size_t batches = sqz_pipeline_plan_batches(p, order, answerable, &failed, ends);
    size_t n_pending = 0;
    for (size_t b = batches; b-- > 0;) /* a stack: the first batch on top */
        pending[n_pending++] = (item_range){b ? ends[b - 1] : 0, ends[b]};
    item_range flight[SQZ_MAX_IN_FLIGHT];
    sqz_ticket tickets[SQZ_MAX_IN_FLIGHT];
    int in_flight = 0;
    while (n_pending > 0 || in_flight > 0) {
        if (n_pending > 0 && in_flight < SQZ_MAX_IN_FLIGHT) {
            const item_range r = pending[--n_pending];
            if (sqz_pipeline_submit(p, session, order + r.begin, r.end - r.begin, &tickets[in_flight]) == SQZ_OK)
                flight[in_flight++] = r;
            else
                batch_failed(order, r, sqz_last_error(), pending, &n_pending, retried);
            continue;
        }
        const item_range r = flight[0];
        const sqz_ticket ticket = tickets[0];
        for (int i = 1; i < in_flight; i++)
            flight[i - 1] = flight[i], tickets[i - 1] = tickets[i];
        in_flight--;
        sqz_result *result = NULL;
        if (sqz_session_wait(session, ticket, &result) != SQZ_OK ||
            sqz_pipeline_answer(p, result, order + r.begin, r.end - r.begin) != SQZ_OK)
            batch_failed(order, r, sqz_last_error(), pending, &n_pending, retried);
        sqz_result_free(result);
    }
    free(order), free(ends), free(pending);
    return SQZ_OK;
}
