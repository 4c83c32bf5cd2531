/* Parsing and tokenizing one line of sqz infer (see tools/sqz_infer_line.h). */
#include "tools/sqz_infer_line.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    sqz_encoding_free(it->enc);
    free(it->use);
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
    else if (json_string_length(a) == 0 || (qa && json_string_length(b) == 0))
        it->error = infer_message(qa ? "empty question or context" : "empty text", NULL);
    else {
        it->text = dup_string(a, &it->text_len);
        if (b && json_is_string(b))
            it->pair = dup_string(b, &it->pair_len);
        if (!it->text || (b && json_is_string(b) && !it->pair))
            it->error = infer_message("out of memory", NULL);
    }
    json_decref(root);
}

void infer_tokenize_line(const infer_line_setup *s, infer_item *it)
{
    if (it->error)
        return;
    /* qa truncates only the context (only_second): encode whole, then cut context tokens
     * from the end, keeping the final [SEP] */
    sqz_status st = sqz_tokenizer_encode(s->tok, it->text, it->text_len, it->pair, it->pair_len,
                                         s->qa ? 0 : (int)s->max_length, &it->enc);
    if (st != SQZ_OK) {
        it->error = infer_message(sqz_last_error(), NULL);
        return;
    }
    const sqz_encoding *e = it->enc;
    const size_t max = s->max_length;
    it->n_use = s->qa && e->length > max ? max : e->length;
    it->use = malloc((it->n_use ? it->n_use : 1) * sizeof *it->use);
    if (!it->use) {
        it->error = infer_message("out of memory", NULL);
        return;
    }
    for (size_t w = 0; w < it->n_use; w++)
        it->use[w] = w;
    if (it->n_use < e->length) {
        it->use[it->n_use - 1] = e->length - 1;
        if (e->sequence_ids[it->n_use - 2] != 1) {
            it->error = infer_message("the question leaves no room for the context within "
                                      "--max-length", NULL);
            return;
        }
    }
    if (s->qa) {
        /* a context of only spaces or control characters is a non-empty string with no
         * tokens: no span can be answered (found by fuzz_infer_line) */
        bool context = false;
        for (size_t i = 0; i < it->n_use && !context; i++)
            context = e->sequence_ids[it->use[i]] == 1;
        if (!context) {
            it->error = infer_message("the context has no tokens", NULL);
            return;
        }
    }
    if (s->fill_mask) {
        bool any = false;
        for (size_t i = 0; i < it->n_use && !any; i++)
            any = e->input_ids[it->use[i]] == s->mask_id;
        if (!any)
            it->error = infer_message("the text has no [MASK] token", NULL);
    }
}
