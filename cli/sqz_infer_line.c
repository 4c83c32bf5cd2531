/* One line of sqz infer (see cli/sqz_infer_line.h): JSON in, JSON out. */
#include "cli/sqz_infer_line.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "cli/json_real.h"

char *infer_message(const char *what, const char *detail)
{
    size_t n = strlen(what) + (detail ? strlen(detail) + 2 : 0) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    return s;
}

void infer_item_free(infer_item *it)
{
    if (!it)
        return;
    json_decref(it->copied);
    free(it->error);
    free(it->text);
    free(it->pair);
    sqz_pipeline_item_free(it->item);
    free(it->record);
    free(it);
}

static char *dup_string(json_t *s, size_t *len)
{
    *len = json_string_length(s);
    char *copy = malloc(*len + 1);
    if (copy) {
        memcpy(copy, json_string_value(s), *len);
        copy[*len] = '\0';
    }
    return copy;
}

void infer_parse_line(bool qa, infer_item *it, const char *line, size_t len)
{
    json_error_t err;
    json_t *root = json_loadb(line, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        it->error = infer_message("invalid JSON", err.text);
        return;
    }
    if (!json_is_object(root)) {
        it->error = infer_message("expected a JSON object", NULL);
        json_decref(root);
        return;
    }
    const char *first = qa ? "question" : "text", *second = qa ? "context" : "text_pair";
    it->copied = json_object();
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, first) != 0 && strcmp(key, second) != 0)
            json_object_set(it->copied, key, value);
    }
    json_t *a = json_object_get(root, first), *b = json_object_get(root, second);
    if (!a || !json_is_string(a))
        it->error = infer_message(qa ? "field 'question' is missing or not a string"
                                     : "field 'text' is missing or not a string", NULL);
    else if (qa && (!b || !json_is_string(b)))
        it->error = infer_message("field 'context' is missing or not a string", NULL);
    else if (!qa && b && !json_is_null(b) && !json_is_string(b))
        it->error = infer_message("field 'text_pair' is not a string", NULL);
    else {
        /* empty texts are the pipeline's to refuse */
        it->text = dup_string(a, &it->text_len);
        if (b && json_is_string(b))
            it->pair = dup_string(b, &it->pair_len);
        if (!it->text || (b && json_is_string(b) && !it->pair))
            it->error = infer_message("out of memory", NULL);
    }
    json_decref(root);
}

void infer_encode_line(const sqz_pipeline *pipeline, infer_item *it)
{
    if (it->error)
        return;
    const sqz_text text = {it->text, it->text_len, it->pair, it->pair_len};
    if (sqz_pipeline_encode(pipeline, &text, &it->item) != SQZ_OK) {
        it->error = infer_message(sqz_last_error(), NULL);
        return;
    }
    sqz_pipeline_item_set_user(it->item, it);
    free(it->text);
    free(it->pair);
    it->text = it->pair = NULL;
}

const char *infer_item_error(const infer_item *it)
{
    return it->error ? it->error : sqz_pipeline_item_error(it->item);
}

/* An embedding is written as text (cli_json_real) rather than a json_t per value: the record
 * carries this placeholder string where the array goes, and the dumped text has it replaced.
 * The random part keeps input fields from imitating it; if the placeholder still appears more
 * than once, the record is made the slow way. */
static char embedding_placeholder[48];
static pthread_once_t placeholder_once = PTHREAD_ONCE_INIT;

static void make_placeholder(void)
{
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, GRND_NONBLOCK) != (ssize_t)sizeof nonce)
        nonce = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&nonce;
    snprintf(embedding_placeholder, sizeof embedding_placeholder, "sqz-embedding-%016llx",
             (unsigned long long)nonce);
}

/* `text` with its one "<placeholder>" replaced by the embedding's array; NULL when the
 * placeholder is not there exactly once (or memory runs out). Non-finite values are null. */
static char *splice_embedding(const char *text, const sqz_answer *a)
{
    char quoted[sizeof embedding_placeholder + 2];
    snprintf(quoted, sizeof quoted, "\"%s\"", embedding_placeholder);
    const char *at = strstr(text, quoted);
    if (!at || strstr(at + 1, quoted))
        return NULL;
    const size_t head = (size_t)(at - text), tail = strlen(at + strlen(quoted));
    char *out = malloc(head + tail + 3 + (size_t)a->dimension * CLI_JSON_REAL_MAX);
    if (!out)
        return NULL;
    memcpy(out, text, head);
    char *p = out + head;
    *p++ = '[';
    for (int c = 0; c < a->dimension; c++) {
        if (c)
            *p++ = ',';
        if (isfinite(a->embedding[c])) {
            p += cli_json_real(a->embedding[c], p);
        } else {
            memcpy(p, "null", 4);
            p += 4;
        }
    }
    *p++ = ']';
    memcpy(p, at + strlen(quoted), tail + 1);
    return out;
}

/* The task's fields of an answer. Probabilities and embeddings as JSON reals (printed with 9
 * significant digits by the caller's json_dumps; an embedding as a placeholder when `fast`,
 * see splice_embedding). */
static json_t *answer_json(const sqz_answer *a, bool fast)
{
    json_t *r = json_object();
    switch (a->task) {
    case SQZ_TASK_CLASSIFY: {
        json_t *scores = json_object();
        json_object_set_new(r, "label", json_string(a->label_name));
        json_object_set_new(r, "score", json_real(a->score));
        for (int i = 0; i < a->num_labels; i++)
            json_object_set_new(scores, a->label_names[i], json_real(a->probabilities[i]));
        json_object_set_new(r, "scores", scores);
        break;
    }
    case SQZ_TASK_EMBED: {
        if (fast) {
            json_object_set_new(r, "embedding", json_string(embedding_placeholder));
            break;
        }
        json_t *arr = json_array();
        for (int c = 0; c < a->dimension; c++)
            json_array_append_new(arr, json_real(a->embedding[c]));
        json_object_set_new(r, "embedding", arr);
        break;
    }
    case SQZ_TASK_TOKENS: {
        json_t *tokens = json_array();
        for (size_t i = 0; i < a->n_tokens; i++) {
            const sqz_token_label *t = &a->tokens[i];
            json_t *o = json_object();
            json_object_set_new(o, "token", json_string(t->token));
            json_object_set_new(o, "label", json_string(t->label_name));
            json_object_set_new(o, "score", json_real(t->score));
            json_object_set_new(o, "start", json_integer((json_int_t)t->start));
            json_object_set_new(o, "end", json_integer((json_int_t)t->end));
            json_array_append_new(tokens, o);
        }
        json_object_set_new(r, "tokens", tokens);
        break;
    }
    case SQZ_TASK_QA:
        json_object_set_new(r, "answer", json_stringn(a->answer, a->answer_len));
        json_object_set_new(r, "start", json_integer((json_int_t)a->start));
        json_object_set_new(r, "end", json_integer((json_int_t)a->end));
        json_object_set_new(r, "score", json_real(a->score));
        break;
    case SQZ_TASK_FILL_MASK: {
        json_t *masks = json_array();
        for (size_t m = 0; m < a->n_masks; m++) {
            json_t *top = json_array();
            for (size_t k = 0; k < a->per_mask; k++) {
                const sqz_mask_candidate *c = &a->candidates[m * a->per_mask + k];
                json_t *o = json_object();
                json_object_set_new(o, "token", json_string(c->token));
                json_object_set_new(o, "token_id", json_integer((json_int_t)c->token_id));
                json_object_set_new(o, "score", json_real(c->score));
                json_array_append_new(top, o);
            }
            json_array_append_new(masks, top);
        }
        json_object_set_new(r, "masks", masks);
        break;
    }
    default: break;
    }
    return r;
}

static char *record_text(const infer_item *it, const sqz_answer *answer, const char *error, bool fast)
{
    json_t *record = it->copied ? json_deep_copy(it->copied) : json_object();
    if (!answer) {
        json_object_set_new(record, "line", json_integer((json_int_t)it->line));
        json_object_set_new(record, "error", json_string(error ? error : "no answer"));
    } else {
        json_t *fields = answer_json(answer, fast);
        json_object_update(record, fields);
        json_decref(fields);
    }
    char *text = json_dumps(record, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(record);
    return text;
}

void infer_make_record(infer_item *it)
{
    const char *error = infer_item_error(it);
    const sqz_answer *answer = error ? NULL : sqz_pipeline_item_answer(it->item);
    if (answer && answer->task == SQZ_TASK_EMBED) {
        pthread_once(&placeholder_once, make_placeholder);
        char *text = record_text(it, answer, error, true);
        it->record = text ? splice_embedding(text, answer) : NULL;
        free(text);
        if (it->record)
            return;
    }
    it->record = record_text(it, answer, error, false);
}
