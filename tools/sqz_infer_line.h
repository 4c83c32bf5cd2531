/* One input line of sqz infer: parsing the JSON Lines record and tokenizing it. Kept apart
 * from the threaded pipeline (tools/sqz_infer.c) so that a fuzz target can call it alone. */
#ifndef SQZ_TOOLS_INFER_LINE_H
#define SQZ_TOOLS_INFER_LINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "squeezebert.h"

/* One input line on its way through the pipeline. */
typedef struct infer_item {
    size_t line;          /* 1-based */
    json_t *copied;       /* input fields other than the text ones (object, may be NULL) */
    char *error;          /* set when the line fails before or after compute */
    char *text, *pair;    /* owned UTF-8 (pair may be NULL) */
    size_t text_len, pair_len;
    sqz_encoding *enc;
    size_t *use;          /* the encoding's tokens that are run, in order (qa truncation) */
    size_t n_use;
    char *record;         /* the output line, without newline */
} infer_item;

/* What tokenizing a line needs to know of the run. */
typedef struct infer_line_setup {
    const sqz_tokenizer *tok;
    bool qa;             /* {"question", "context"} instead of {"text", "text_pair"} */
    bool fill_mask;      /* a line without [MASK] is an error */
    int32_t mask_id;
    size_t max_length;   /* >= 3 */
} infer_line_setup;

/* A malloc'd message: `what`, then ": detail" when detail is given (NULL without memory). */
char *infer_message(const char *what, const char *detail);

/* Fills it->text/pair/copied from one line (len bytes, need not be NUL-terminated), or
 * sets it->error. */
void infer_parse_line(bool qa, infer_item *it, const char *line, size_t len);

/* Tokenizes a parsed line (nothing when it->error is set); fills enc/use/n_use or error. */
void infer_tokenize_line(const infer_line_setup *s, infer_item *it);

/* Frees what the item owns and the item itself. */
void infer_item_free(infer_item *it);

#endif
