/*
 * squeezebert_pipeline.h - texts in, typed answers out: the text pipeline of the squeezebert
 * engine as a library (runtime/pipeline.c). `sqz infer` is a JSON Lines front end over it.
 *
 * A pipeline ties a model and its tokenizer to one task (classification, sentence embeddings,
 * token labels, question answering, fill-mask). A text goes through it in four steps:
 *
 *     encode    sqz_pipeline_encode: tokenize with the task's truncation policy -> an item
 *               (a text that cannot be encoded gets its error, and the rest go on);
 *     batch     sqz_pipeline_plan_batches: sort items by length and cut them under a token
 *               budget;
 *     run       sqz_pipeline_submit + sqz_session_wait: a batch as one packed run;
 *     answer    sqz_pipeline_answer: the run's outputs -> each item's typed answer.
 *
 * sqz_pipeline_run does all of it on one session, in input order, retrying a failed batch in
 * halves down to single items, so one bad item fails only itself:
 *
 *     sqz_pipeline *pipe = NULL;
 *     sqz_pipeline_options opt = {.task = SQZ_TASK_AUTO};
 *     sqz_pipeline_create(model, tokenizer, &opt, &pipe);
 *     sqz_pipeline_use_session(pipe, session);
 *     sqz_pipeline_item *items[2];
 *     sqz_pipeline_encode(pipe, &(sqz_text){"a fine day", 10, NULL, 0}, &items[0]);
 *     sqz_pipeline_encode(pipe, &(sqz_text){"rain again", 10, NULL, 0}, &items[1]);
 *     sqz_pipeline_run(pipe, session, items, 2);
 *     for each item: sqz_pipeline_item_error(it) or sqz_pipeline_item_answer(it)
 *     sqz_pipeline_item_free(...); sqz_pipeline_free(pipe);
 *
 * No JSON here: answers are plain structs (tools/ formats them).
 *
 * Ownership: a pipeline borrows its model and tokenizer (they must outlive it) unless it was
 * opened from a folder (sqz_pipeline_open), and owns its embedder. An item owns copies of its
 * texts; its answer and every string in it stay valid until sqz_pipeline_item_free (label and
 * token strings until the pipeline's model and tokenizer are freed).
 *
 * Threads: a pipeline is immutable once created: any number of threads may encode, batch,
 * answer and run with it at once. An item is used by one thread at a time. sqz_pipeline_run
 * and sqz_pipeline_submit use their session as sqz_session_submit does (one thread at a time
 * per session).
 */
#ifndef SQUEEZEBERT_PIPELINE_H
#define SQUEEZEBERT_PIPELINE_H

#include "squeezebert.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sqz_task {
    SQZ_TASK_AUTO = 0,   /* from the checkpoint's head (base model: embed) */
    SQZ_TASK_CLASSIFY,   /* sequence classification: probabilities per label */
    SQZ_TASK_EMBED,      /* sentence embedding with the checkpoint's pooling */
    SQZ_TASK_TOKENS,     /* a label per token of the text, with character offsets */
    SQZ_TASK_QA,         /* the answer span of a question in a context */
    SQZ_TASK_FILL_MASK,  /* the top-k tokens for each [MASK] */
    SQZ_TASK_COUNT
} sqz_task;

/* "auto", "classify", "embed", "tokens", "qa", "fill-mask". */
SQZ_API const char *sqz_task_name(sqz_task task);
/* The reverse; an unknown name is SQZ_ERR_INVALID_ARGUMENT. */
SQZ_API sqz_status sqz_task_from_name(const char *name, sqz_task *out);
/* The task a head answers (SQZ_TASK_AUTO for a head without one: multiple choice). */
SQZ_API sqz_task sqz_task_for_head(sqz_head head);

typedef enum sqz_normalize {
    SQZ_NORMALIZE_DEFAULT = 0, /* as the checkpoint says (a Normalize module) */
    SQZ_NORMALIZE_ON,
    SQZ_NORMALIZE_OFF
} sqz_normalize;

/* Zero-initialised: every default. */
typedef struct sqz_pipeline_options {
    sqz_task task;
    /* tokens per input after truncation, 3 or more; 0: for embed the embedder's truncate_at,
     * else max_position_embeddings (never above it) */
    long max_length;
    /* padded tokens per batch (sorted by length, so little padding); 0: 8192. Fill-mask
     * counts the [tokens x vocab] logits of a batch against 64 x this. */
    long batch_tokens;
    int top_k;              /* fill-mask: candidates per [MASK]; 0: 5 */
    int max_answer_length;  /* qa: tokens in an answer; 0: 15 */
    sqz_pool_mode pooling[SQZ_MAX_POOL_MODES]; /* embed: replaces the checkpoint's modes */
    int pooling_count;      /* 0: the checkpoint's (modules.json, else the pooler) */
    sqz_normalize normalize;
} sqz_pipeline_options;

typedef struct sqz_pipeline sqz_pipeline;

/* A pipeline for `model` with `tokenizer`. The task must be one the model's head answers
 * (SQZ_ERR_INVALID_ARGUMENT naming both; a multiple-choice head has none: SQZ_ERR_UNSUPPORTED);
 * fill-mask needs a [MASK] token; embed reads the folder's sentence-transformers modules
 * (sqz_embedder_load). options NULL: every default. */
SQZ_API sqz_status sqz_pipeline_create(const sqz_model *model, const sqz_tokenizer *tokenizer,
                                       const sqz_pipeline_options *options, sqz_pipeline **out);
/* sqz_model_load + sqz_tokenizer_load of `model_dir`, then sqz_pipeline_create; the pipeline
 * owns both. */
SQZ_API sqz_status sqz_pipeline_open(const char *model_dir, const sqz_pipeline_options *options,
                                     sqz_pipeline **out);
SQZ_API void sqz_pipeline_free(sqz_pipeline *pipeline);

typedef struct sqz_pipeline_info {
    sqz_task task;            /* resolved: never SQZ_TASK_AUTO */
    long max_length, batch_tokens;
    int top_k, max_answer_length;
    int dimension;            /* embed: floats per embedding; 0 otherwise */
    int num_labels;           /* classify, tokens */
} sqz_pipeline_info;

SQZ_API sqz_status sqz_pipeline_get_info(const sqz_pipeline *pipeline, sqz_pipeline_info *out);
SQZ_API const sqz_model *sqz_pipeline_model(const sqz_pipeline *pipeline);
SQZ_API const sqz_tokenizer *sqz_pipeline_tokenizer(const sqz_pipeline *pipeline);

/* Selects on `session` only the outputs the task reads (for embed, what the pooling reads:
 * the full hidden state is most of a GPU run's time), so less crosses to the host. */
SQZ_API sqz_status sqz_pipeline_use_session(const sqz_pipeline *pipeline, sqz_session *session);

/* ---- items ----------------------------------------------------------------------------- */

/* One input: a text, or a text pair; for qa the question (text) and the context (pair).
 * UTF-8, lengths in bytes (NULs allowed); pair NULL or pair_len 0 for none. */
typedef struct sqz_text {
    const char *text;
    size_t text_len;
    const char *pair;
    size_t pair_len;
} sqz_text;

typedef struct sqz_pipeline_item sqz_pipeline_item;

/* Tokenizes one input with the task's truncation: longest-first to max_length, except qa,
 * where only the context is cut (only-second), keeping the final [SEP]. *out always gets an
 * item (SQZ_OK) unless memory runs out; an input that cannot be answered (empty text, invalid
 * UTF-8, no [MASK] for fill-mask, a question leaving no room for the context, a context
 * without tokens) gets its error, readable with sqz_pipeline_item_error. */
SQZ_API sqz_status sqz_pipeline_encode(const sqz_pipeline *pipeline, const sqz_text *input,
                                       sqz_pipeline_item **out);
SQZ_API void sqz_pipeline_item_free(sqz_pipeline_item *item);
/* A pointer of the caller's carried with the item (NULL until set), e.g. its request. */
SQZ_API void sqz_pipeline_item_set_user(sqz_pipeline_item *item, void *user);
SQZ_API void *sqz_pipeline_item_user(const sqz_pipeline_item *item);
/* Why the item has no answer (encoding, its run, or answering it); NULL while it has none. */
SQZ_API const char *sqz_pipeline_item_error(const sqz_pipeline_item *item);
/* Gives the item an error (a caller's scheduling that ran out of retries); the first one stays. */
SQZ_API void sqz_pipeline_item_set_error(sqz_pipeline_item *item, const char *message);
/* The tokens the item runs (special tokens included, after truncation): their count, and
 * when ids/types are not NULL, the arrays (valid as long as the item). 0 with an error from
 * encoding. */
SQZ_API size_t sqz_pipeline_item_tokens(const sqz_pipeline_item *item, const int64_t **ids,
                                        const int64_t **types);

/* ---- answers --------------------------------------------------------------------------- */

/* Probabilities are computed in fp64 from the fp32 outputs; code-point offsets are those
 * transformers' return_offsets_mapping gives. docs/infer.md states each task's rule. */
typedef struct sqz_token_label {
    const char *token;   /* the WordPiece string ("##ing" for a continuation) */
    int label;           /* argmax of the token's softmax (first on ties) */
    const char *label_name;
    double score;        /* its probability */
    size_t start, end;   /* [start, end) in code points of the text */
} sqz_token_label;

typedef struct sqz_mask_candidate {
    int32_t token_id;
    const char *token;
    double score;
} sqz_mask_candidate;

typedef struct sqz_answer {
    sqz_task task;
    /* classify: the argmax label (first on ties) and its probability; qa: the span's score */
    int label;
    const char *label_name;
    double score;
    const double *probabilities; /* classify: [num_labels], softmax in id order */
    int num_labels;
    const char *const *label_names; /* classify: [num_labels], id2label (or "LABEL_<i>") */
    const float *embedding;      /* embed: [dimension] */
    int dimension;
    const sqz_token_label *tokens; /* tokens: one per token of the text, in order */
    size_t n_tokens;
    const char *answer;          /* qa: the context's bytes of the span (not NUL-terminated) */
    size_t answer_len;
    size_t start, end;           /* qa: [start, end) in code points of the context */
    const sqz_mask_candidate *candidates; /* fill-mask: [n_masks][per_mask], best first */
    size_t n_masks, per_mask;
} sqz_answer;

/* The item's answer; NULL until answered, or with an error. */
SQZ_API const sqz_answer *sqz_pipeline_item_answer(const sqz_pipeline_item *item);

/* ---- batches and runs ------------------------------------------------------------------- */

/* Orders `items` for running: items with an error first, in their order (*failed gets how
 * many), then the others by token count (ties keep their order), cut into batches of at most
 * batch_tokens padded tokens each (a longer item alone). ends[b] is one past the last item of
 * batch b (indices into `items`, after the failed ones); returns the batch count. `ends` needs
 * room for n entries. */
SQZ_API size_t sqz_pipeline_plan_batches(const sqz_pipeline *pipeline, sqz_pipeline_item **items, size_t n,
                                         size_t *failed, size_t *ends);

/* Submits `n` items (none with an error) as one packed run on `session` (sqz_session_submit's
 * rules: at most SQZ_MAX_IN_FLIGHT in flight). Wait with sqz_session_wait, then answer. */
SQZ_API sqz_status sqz_pipeline_submit(const sqz_pipeline *pipeline, sqz_session *session,
                                       sqz_pipeline_item *const *items, size_t n, sqz_ticket *ticket);
/* Each item's answer from the result of the run the items were submitted in, in that order.
 * An item that cannot be answered gets its error (qa: no context token left); SQZ_OK unless
 * the result is not that run's (wrong outputs or shapes). */
SQZ_API sqz_status sqz_pipeline_answer(const sqz_pipeline *pipeline, const sqz_result *result,
                                       sqz_pipeline_item *const *items, size_t n);

/* Everything for `n` encoded items on one session: batches, two runs in flight, answers. A
 * batch that fails is retried in halves down to single items; an item that fails alone gets
 * the engine's message as its error. Items keep their order; each ends with an answer or an
 * error (items that already have one are left as they are). Returns SQZ_OK unless an argument is invalid. *retried (may be NULL) gets how many
 * failed batches were split. */
SQZ_API sqz_status sqz_pipeline_run(const sqz_pipeline *pipeline, sqz_session *session,
                                    sqz_pipeline_item *const *items, size_t n, size_t *retried);

#ifdef __cplusplus
}
#endif

#endif /* SQUEEZEBERT_PIPELINE_H */
