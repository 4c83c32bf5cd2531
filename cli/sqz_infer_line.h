/* One line of sqz infer: the JSON Lines record in, the text pipeline's answer (see
 * include/squeezebert_pipeline.h) out as a JSON record. Kept apart from the threaded front end
 * (cli/sqz_infer.c) so that a fuzz target can call it alone; the answer's JSON is here so
 * that other front ends can share it. */
#ifndef SQZ_TOOLS_INFER_LINE_H
#define SQZ_TOOLS_INFER_LINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "squeezebert_pipeline.h"

/* One input line on its way through sqz infer. */
typedef struct infer_item {
    size_t line;          /* 1-based */
    json_t *copied;       /* input fields other than the text ones (object, may be NULL) */
    char *error;          /* the line failed before the pipeline (JSON, too long) */
    char *text, *pair;    /* owned UTF-8 (pair may be NULL), until encoded */
    size_t text_len, pair_len;
    sqz_pipeline_item *item; /* the pipeline's item (NULL with `error`); its user is this */
    char *record;         /* the output line, without newline */
} infer_item;

/* A malloc'd message: `what`, then ": detail" when detail is given (NULL without memory). */
char *infer_message(const char *what, const char *detail);

/* Fills it->text/pair/copied from one line (len bytes, need not be NUL-terminated), or
 * sets it->error. qa: {"question", "context"} instead of {"text", "text_pair"}. */
void infer_parse_line(bool qa, infer_item *it, const char *line, size_t len);

/* Encodes a parsed line with the pipeline (nothing when it->error is set): it->item, whose
 * own error says when it cannot be answered; the texts move into it. */
void infer_encode_line(const sqz_pipeline *pipeline, infer_item *it);

/* Why the line has no answer, or NULL. */
const char *infer_item_error(const infer_item *it);

/* Makes it->record: the copied fields, then the answer's fields or {"line", "error"}. */
void infer_make_record(infer_item *it);

/* Frees what the item owns and the item itself. */
void infer_item_free(infer_item *it);

#endif
