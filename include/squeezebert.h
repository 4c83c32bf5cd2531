/*
 * squeezebert.h - the public C API of the squeezebert inference engine.
 *
 * The engine loads a Hugging Face SqueezeBERT (or BERT) checkpoint directory as
 * downloaded, compiles the network into a plan of kernel launches and runs that plan on
 * a backend. Every call returns an sqz_status; on failure sqz_last_error() gives a
 * sentence naming what was wrong and where (file, tensor, field, expected vs found).
 *
 * Usage:
 *
 *     sqz_model *model = NULL;
 *     if (sqz_model_load("squeezebert-mnli/", NULL, &model) != SQZ_OK) {
 *         fprintf(stderr, "%s\n", sqz_last_error());
 *         return 1;
 *     }
 *     sqz_session *session = NULL;
 *     sqz_session_options options = {.backend = "cpu_ref"};
 *     sqz_session_create(model, &options, &session);
 *     int64_t ids[2][5] = {{101, 7592, 2088, 102, 0}, {101, 2748, 102, 0, 0}};
 *     int64_t mask[2][5] = {{1, 1, 1, 1, 0}, {1, 1, 1, 0, 0}};
 *     sqz_input in = {.batch = 2, .seq_len = 5, .input_ids = &ids[0][0],
 *                     .attention_mask = &mask[0][0]};
 *     sqz_result *res = NULL;
 *     if (sqz_session_run(session, &in, &res) == SQZ_OK) {
 *         const sqz_output *logits = sqz_result_find(res, "logits");
 *         ... logits->data holds [2][num_labels] floats ...
 *         sqz_result_free(res);
 *     }
 *     sqz_session_free(session);
 *     sqz_model_free(model);
 *
 * Ownership: every object is created by a *_load/_create/_run/_write call and released
 * by the matching *_free. Strings returned by the library stay valid as long as the
 * object they came from. A result stays valid after its session is freed (except outputs
 * left on the device). The library never exits or aborts on bad input.
 *
 * Statuses: each function's comment ends with the statuses it returns besides SQZ_OK and when
 * ("Status: ..."). Besides those, any function returns SQZ_ERR_INVALID_ARGUMENT for a NULL
 * pointer it needs, SQZ_ERR_OUT_OF_MEMORY when an allocation fails, and SQZ_ERR_INTERNAL for a
 * broken invariant (a bug to report). On failure the *out argument is NULL (or left as the
 * comment says) and sqz_last_error() has the message.
 *
 * Threads (checked by tests/test_threads.c; no call takes a lock the caller must know of):
 *  - sqz_model: immutable once loaded. Any number of threads may use one model at once:
 *    sessions, embedders, info, labels, graphs. Free it after everything made from it.
 *  - sqz_session: one thread at a time, for every call that takes it (external locking if
 *    threads share one). Different sessions run at once, on one model, on one device or several.
 *  - sqz_result: independent of its session's thread: read it from any threads, free it once
 *    from any thread, before or after its session is freed (device outputs excepted, see
 *    sqz_session_set_output_options).
 *  - sqz_tokenizer: immutable once loaded; any number of threads may encode with it at once.
 *    An sqz_encoding is one thread's at a time.
 *  - sqz_embedder: sqz_embedder_embed and sqz_embedder_get_info from any threads at once;
 *    sqz_embedder_use_tokenizer and sqz_embedder_override change it, so call them before
 *    sharing it.
 *  - sqz_validation: immutable; read it from any threads.
 *  - The rest (status names, sqz_last_error, backends and devices, precision helpers, half
 *    conversions, sqz_random_model_write into different folders, sqz_measure_peak) may be
 *    called from any thread at any time.
 *  - sqz_last_error() is per thread: a failure in one thread never changes another's message.
 *    The text stays until that thread's next call into the library.
 */
#ifndef SQUEEZEBERT_H
#define SQUEEZEBERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 3: one sqz_session_create and one sqz_validate, each taking sqz_session_options (the
 *    _on/_with variants are gone); sqz_model_load takes sqz_model_load_options (the checkpoint
 *    limits the library used to read from the environment); only SQZ_API functions are
 *    exported from the shared library; packed runs (sqz_session_run_packed/submit_packed) and
 *    the text pipeline (squeezebert_pipeline.h).
 * 2: outputs in fp16 or left on the device, runs in flight (sqz_session_submit/wait). */
#define SQZ_API_VERSION 3

/* Marks the functions of the API: the only symbols the shared library exports (everything
 * else is built with hidden visibility). */
#if defined(__GNUC__) || defined(__clang__)
#define SQZ_API __attribute__((visibility("default")))
#else
#define SQZ_API
#endif

/* Status codes, grouped by who is at fault. */
typedef enum sqz_status {
    SQZ_OK = 0,
    SQZ_ERR_INVALID_ARGUMENT, /* a caller passed something the API does not allow */
    SQZ_ERR_IO,               /* a file could not be opened, read or written */
    SQZ_ERR_FORMAT,           /* a file is malformed: truncated, corrupt, bad JSON */
    SQZ_ERR_UNSUPPORTED,      /* well-formed, but outside what the engine handles */
    SQZ_ERR_MODEL_MISMATCH,   /* weights disagree with the config: shape, dtype, missing */
    SQZ_ERR_INPUT,            /* run input is invalid: id out of range, too long, bad mask */
    SQZ_ERR_OUT_OF_MEMORY,
    SQZ_ERR_NO_DEVICE,        /* the backend is built in but no usable device/driver */
    SQZ_ERR_BACKEND,          /* a backend call failed (driver error) */
    SQZ_ERR_INTERNAL,         /* a broken invariant: a bug in the engine */
    SQZ_STATUS_COUNT
} sqz_status;

/* Short fixed name of a status ("format error"). Never NULL. */
SQZ_API const char *sqz_status_str(sqz_status status);

/* The detailed message of the most recent failure on this thread ("" if none). */
SQZ_API const char *sqz_last_error(void);

/* ---- models ------------------------------------------------------------------- */

typedef struct sqz_model sqz_model;

/* Which task head the checkpoint's `architectures` entry asks for. */
typedef enum sqz_head {
    SQZ_HEAD_BASE = 0,                 /* last_hidden_state, pooler_output */
    SQZ_HEAD_SEQUENCE_CLASSIFICATION,  /* logits [N, num_labels] */
    SQZ_HEAD_TOKEN_CLASSIFICATION,     /* logits [N, W, num_labels] */
    SQZ_HEAD_QUESTION_ANSWERING,       /* start_logits, end_logits [N, W] */
    SQZ_HEAD_MULTIPLE_CHOICE,          /* logits [N, K] */
    SQZ_HEAD_MASKED_LM,                /* logits [N, W, vocab] */
    SQZ_HEAD_COUNT
} sqz_head;

SQZ_API const char *sqz_head_name(sqz_head head);

typedef struct sqz_model_info {
    const char *model_type;    /* "squeezebert" or "bert" */
    const char *architecture;  /* e.g. "SqueezeBertForSequenceClassification" */
    const char *weights_path;  /* the file the weights came from */
    sqz_head head;
    int vocab_size, hidden_size, num_layers, num_heads, intermediate_size;
    int max_position_embeddings, type_vocab_size, num_labels;
    int q_groups, k_groups, v_groups, post_attention_groups, intermediate_groups,
        output_groups;                    /* all 1 for BERT */
    double layer_norm_eps;                /* embedding and MLM-head LayerNorm */
    double encoder_layer_norm_eps;        /* LayerNorms inside the layers */
    int64_t num_parameters;               /* floats held (tied weights counted once) */
    /* the variants of docs/variants.md (config.json's sqz_* keys) */
    bool linear_attention;                /* sqz_attention "linear" */
    int share_layers;                     /* layers share weights in groups of this many; 0: no */
    int layer_stride, layers_run;         /* every layer_stride-th layer runs, layers_run in all */
} sqz_model_info;

/* Limits that keep a hostile weight file from costing unbounded time or memory; raise them
 * for an unusual but trusted checkpoint. A zero field takes the default. */
typedef struct sqz_model_load_options {
    size_t max_header_bytes; /* the JSON header of a safetensors file; 0: 100 MiB */
    size_t max_pickle_bytes; /* the pickle of a pytorch_model.bin (zip or legacy); 0: 256 MiB */
} sqz_model_load_options;

/* Loads config.json plus the weights from `dir`: model.safetensors, or a sharded
 * model.safetensors.index.json with its shards, or pytorch_model.bin, or
 * pytorch_model.bin.index.json with its shards (transformers' order of preference). A shard
 * that is missing, or that holds other tensors than the index gives it, is an error naming it.
 * options: NULL for the defaults; the model keeps them for the files read later
 * (sqz_embedder_load's Dense modules).
 * Status: IO: config.json or a weight file missing or unreadable; FORMAT: malformed JSON or
 * weights, or a limit of `options` exceeded; UNSUPPORTED: a model type, architecture or
 * setting the engine does not run; MODEL_MISMATCH: weights that disagree with the config. */
SQZ_API sqz_status sqz_model_load(const char *dir, const sqz_model_load_options *options, sqz_model **out);
SQZ_API void sqz_model_free(sqz_model *model);
/* Status: INVALID_ARGUMENT only. */
SQZ_API sqz_status sqz_model_get_info(const sqz_model *model, sqz_model_info *out);
/* Label name for class `index` (id2label, or "LABEL_<i>"); NULL when out of range. */
SQZ_API const char *sqz_model_label(const sqz_model *model, int index);
/* Keys present in the weight file that the model does not use (listed by --verbose). */
SQZ_API size_t sqz_model_ignored_key_count(const sqz_model *model);
SQZ_API const char *sqz_model_ignored_key(const sqz_model *model, size_t index);

/* Writes a deterministic random-weight checkpoint (config.json + model.safetensors) in
 * the Hugging Face layout. preset: "squeezebert-uncased", "squeezebert-mnli" or "tiny".
 * Status: INVALID_ARGUMENT: an unknown preset; IO: the folder or a file cannot be written. */
SQZ_API sqz_status sqz_random_model_write(const char *preset, uint64_t seed, const char *out_dir);

/* The compiled graph in Graphviz DOT form, for a bucket of `max_tokens` packed tokens in
 * `max_sequences` sequences. *out is released with sqz_free.
 * Status: INVALID_ARGUMENT: not 1 <= max_sequences <= max_tokens. */
SQZ_API sqz_status sqz_model_graph_dot(const sqz_model *model, int max_tokens, int max_sequences,
                                       char **out);
SQZ_API void sqz_free(void *memory);

/* ---- backends and sessions ------------------------------------------------------ */

/* Backends compiled into this library, by index; NULL past the end. */
SQZ_API const char *sqz_backend_name(size_t index);
/* SQZ_OK when `name` can run here; otherwise the reason is in sqz_last_error().
 * Status: INVALID_ARGUMENT: not a backend of this build; NO_DEVICE: no usable device or driver. */
SQZ_API sqz_status sqz_backend_probe(const char *name);
/* The backend "auto" stands for on this machine: cuda when a CUDA device can run, else opencl
 * when OpenCL lists a GPU, else cpu (oneDNN) when it can run (on a CPU it is faster than an
 * OpenCL CPU driver), else opencl, else cpu_ref. Never an emulating backend. A static name,
 * never NULL; it probes the backends (loading their drivers), so the first call takes a while
 * and sqz_last_error() may then hold a failed probe's reason. The command line's
 * `--backend auto` and the Python package's backend="auto" are this choice. */
SQZ_API const char *sqz_backend_auto(void);
/* True for a backend that emulates device code on the host to check it (cuda-sim): slow,
 * so never the one to measure or to serve with unless asked for by name. */
SQZ_API bool sqz_backend_is_emulated(const char *name);

typedef struct sqz_session sqz_session;

/* One line per device of every backend built in (CUDA, OpenCL, the host), with memory
 * and capabilities, or the reason a backend has none. *out is released with sqz_free.
 * Status: INVALID_ARGUMENT only (a backend without devices is a line, not a failure). */
SQZ_API sqz_status sqz_devices_describe(char **out);

/* Arithmetic and storage of a session. fp32: fp32 everywhere (no TF32). tf32: fp32 storage,
 * matrix products on tensor cores with TF32 inputs. fp16 / bf16: activations and matrix
 * weights stored in 16 bits, matrix products on tensor cores, fp32 accumulation, and fp32
 * statistics (LayerNorm, softmax) and elementwise math. cpu_ref and OpenCL run fp32 only;
 * CUDA runs all four. docs/engineering.md gives the tolerance of each against cpu_ref. */
typedef enum sqz_precision {
    SQZ_PRECISION_FP32 = 0,
    SQZ_PRECISION_TF32,
    SQZ_PRECISION_FP16,
    SQZ_PRECISION_BF16,
    SQZ_PRECISION_COUNT
} sqz_precision;
/* "fp32", "tf32", "fp16", "bf16" (NULL or "" is fp32); anything else is an error naming them.
 * Status: INVALID_ARGUMENT: not one of the names. */
SQZ_API sqz_status sqz_precision_from_name(const char *name, sqz_precision *out);
SQZ_API const char *sqz_precision_name(sqz_precision precision);
/* The documented bar against cpu_ref at a precision: max |backend - cpu_ref| / max |cpu_ref|
 * per node (1e-4 for fp32; docs/engineering.md derives the others). */
SQZ_API double sqz_precision_tolerance(sqz_precision precision);

typedef struct sqz_session_options {
    const char *backend;     /* NULL: cpu_ref; else "cpu_ref", "cpu", "opencl", "cuda", "cuda-sim" */
    const char *device;      /* NULL: the backend's default; else a device index or a name
                                substring as sqz_devices_describe lists them */
    sqz_precision precision; /* SQZ_PRECISION_FP32 when zero-initialised */
    /* NULL, or backend settings "BACKEND.KEY=VALUE;...", e.g. "cuda.graphs=0;cuda.report=1"
     * or "opencl.cache_dir=/tmp/c". Each backend reads its own keys and refuses unknown ones
     * of its own by name; docs/engineering.md lists them. */
    const char *settings;
    /* Checking and debugging (sqz fills these from SQZ_DEBUG, SQZ_GUARD_BYTES,
     * SQZ_DISABLE_FUSION, SQZ_FAULT_LAUNCH and SQZ_FAULT_ALLOC; zero: off). */
    int debug;          /* 1: print the graph passes, 2: and the graph after each, 3: also time
                         * every launch (synchronising) and print a profile by op after each run */
    size_t guard_bytes; /* N > 0: N canary bytes after every planned tensor, checked after every
                         * launch; an overwrite fails the run naming the node (slow: tests) */
    bool unfused;       /* plan without the fused ops (to validate the unfused kernels) */
    /* Test hook: "N", "N:P", "N@K" or "N:P@K": the Nth launch (buffer allocation) of the
     * session fails, then every Pth after it; @K: only in the Kth session this process
     * creates. Anything else makes sqz_session_create fail. */
    const char *fault_launch, *fault_alloc;
} sqz_session_options;
/* A session binds a model to a backend: weights uploaded once, plans cached per bucket.
 * options: NULL for the defaults (cpu_ref, its default device, fp32); a zero-initialised
 * struct means the same. The model must outlive the session.
 * Status: INVALID_ARGUMENT: an unknown backend, device, setting or precision, or a malformed
 * fault hook; UNSUPPORTED: a precision or op the backend lacks; NO_DEVICE: the backend is built in but has no usable
 * device; BACKEND: the driver failed (uploading the weights, building kernels). */
SQZ_API sqz_status sqz_session_create(const sqz_model *model, const sqz_session_options *options,
                                      sqz_session **out);
SQZ_API sqz_precision sqz_session_precision(const sqz_session *session);
SQZ_API void sqz_session_free(sqz_session *session);
/* The device the session runs on, in words. */
SQZ_API const char *sqz_session_device(const sqz_session *session);
/* The kernel variants the session's backend has chosen so far (after a run), as text: one
 * tab-separated line per variant of each op shape it met: op family, shape, variant name,
 * seconds per run (-1 where the variant does not apply), max |difference| from variant 0
 * relative to variant 0's largest value, FLOPs, bytes moved, and 1 on the chosen variant's
 * line. Released with sqz_free. SQZ_ERR_UNSUPPORTED for a backend without variants.
 * Status: UNSUPPORTED: the backend has no variants. */
SQZ_API sqz_status sqz_session_kernel_report(const sqz_session *session, char **out);

/* What the last run waited for (sqz_session_run or sqz_session_wait) did. */
typedef struct sqz_run_stats {
    int64_t tokens, sequences;   /* real (packed) tokens and sequences computed */
    int64_t padded_tokens;       /* batch x choices x seq_len of the input, padding included */
    double flops;                /* counted from the plan's nodes, 2 per multiply-add */
    size_t launches;             /* kernel launches in the plan */
    size_t arena_bytes;          /* device memory for activations (the session's arena) */
    size_t weight_bytes;         /* device memory for weights */
    double compile_seconds;      /* time spent compiling a plan in that run; 0 if cached */
} sqz_run_stats;

/* Status: INVALID_ARGUMENT: also before the first run. */
SQZ_API sqz_status sqz_session_last_stats(const sqz_session *session, sqz_run_stats *out);

/* One padded batch, row-major. For multiple choice the arrays are [batch][choices][seq_len],
 * otherwise [batch][seq_len]. attention_mask (1 = token, 0 = padding) and token_type_ids
 * may be NULL (all ones / all zeros). Tokens with mask 0 are dropped before compute
 * (packing), except position 0 which the pooler reads; outputs at masked positions are
 * unspecified (written as 0). A row whose mask is all zero is rejected. */
typedef struct sqz_input {
    int batch;
    int choices; /* K for multiple choice; 0 otherwise */
    int seq_len;
    const int64_t *input_ids;
    const int64_t *attention_mask;
    const int64_t *token_type_ids;
} sqz_input;

#define SQZ_MAX_DIMS 4

/* Element type of returned outputs (sqz_session_set_output_options). */
typedef enum sqz_output_type {
    SQZ_OUTPUT_FP32 = 0, /* float */
    SQZ_OUTPUT_FP16,     /* IEEE binary16 bits in uint16_t, rounded to nearest even from the
                            session's values (exact when the session computes in fp16) */
} sqz_output_type;

/* Where returned outputs are left. */
typedef enum sqz_output_place {
    SQZ_OUTPUT_ON_HOST = 0,  /* host memory (the default) */
    SQZ_OUTPUT_ON_DEVICE,    /* device memory, for callers that chain their own GPU work:
                                only the cuda, cuda-sim and cpu_ref backends */
} sqz_output_place;

typedef struct sqz_output {
    const char *name; /* as transformers names it: "logits", "last_hidden_state", ... */
    int ndim;
    int64_t shape[SQZ_MAX_DIMS];
    const float *data; /* row-major, product(shape) floats; NULL for fp16 or device outputs */
    /* since API version 2 */
    sqz_output_type type;   /* of the elements below */
    const void *values;     /* row-major host elements (== data for fp32); NULL on the device */
    const void *device_data;/* SQZ_OUTPUT_ON_DEVICE: the first element in device memory (cuda:
                               a device pointer of the session's device, complete when the run's
                               sqz_session_wait returns; cuda-sim and cpu_ref: host memory);
                               NULL otherwise */
    size_t bytes;           /* product(shape) x element size */
} sqz_output;

typedef struct sqz_result sqz_result;

/* Runs one batch and waits for it: sqz_session_submit followed by sqz_session_wait. The padded
 * form of sqz_session_run_packed: the masked tokens are dropped (packing) and the outputs come
 * back scattered into the padded layout; values are those of the packed run.
 * Status: as sqz_session_submit and sqz_session_wait. */
SQZ_API sqz_status sqz_session_run(sqz_session *session, const sqz_input *input, sqz_result **out);

/* Since API version 3: sequences back to back, without padding. Sequence i is tokens
 * offsets[i] .. offsets[i + 1] - 1 (offsets[0] = 0, each sequence 1 to max_position_embeddings
 * tokens, every token attended, positions counted from 0 in each sequence). For a
 * multiple-choice model the sequences are sets of `choices` consecutive ones. The library
 * reads the arrays only during the call (submit or run); they stay the caller's. */
typedef struct sqz_packed_input {
    int sequences;                 /* N >= 1 */
    int choices;                   /* K for multiple choice (N a multiple of K); 0 otherwise */
    const int64_t *offsets;        /* [N + 1] */
    const int64_t *input_ids;      /* [offsets[N]] */
    const int64_t *token_type_ids; /* [offsets[N]], or NULL for all zeros */
    /* Masked LMs only: the packed tokens whose logits are wanted, in this order
     * (n_output_tokens of them, each below offsets[N]); the head then decodes only those rows,
     * and "logits" comes back as [n_output_tokens][vocab]. NULL: every token. */
    const int64_t *output_tokens;
    int64_t n_output_tokens;
} sqz_packed_input;

/* Runs packed sequences and waits. Outputs come back packed: per-token outputs as
 * [offsets[N]][C] (start_logits/end_logits as [offsets[N]]), per-sequence outputs as [N][C],
 * multiple-choice logits as [N / K][K]. Everything else (selection, output options, results,
 * their ownership and lifetime) is as for sqz_session_run. Invalid input is SQZ_ERR_INPUT naming
 * the sequence and token.
 * Status: as sqz_session_submit_packed and sqz_session_wait. */
SQZ_API sqz_status sqz_session_run_packed(sqz_session *session, const sqz_packed_input *input,
                                          sqz_result **out);
/* Which outputs later runs return (names as sqz_result_find takes them; count 0: all, the
 * default). On a backend that formats outputs on the device (cuda, cuda-sim, cpu_ref) only
 * these are copied into their final layout and cross to the host. An unknown name is
 * SQZ_ERR_INVALID_ARGUMENT naming the model's outputs.
 * Status: INVALID_ARGUMENT: an unknown name. */
SQZ_API sqz_status sqz_session_select_outputs(sqz_session *session, const char *const *names, size_t count);

typedef struct sqz_output_options {
    sqz_output_type type;   /* SQZ_OUTPUT_FP32 when zero-initialised */
    sqz_output_place place; /* SQZ_OUTPUT_ON_HOST when zero-initialised */
} sqz_output_options;
/* The type and place of the outputs of later submits. A backend that cannot leave outputs on
 * the device (opencl) is SQZ_ERR_UNSUPPORTED. Device outputs stay valid until sqz_result_free
 * of their result or sqz_session_free of their session, whichever comes first; each holds its
 * own device memory until then.
 * Status: INVALID_ARGUMENT: an unknown type or place; UNSUPPORTED: device outputs on a backend
 * without them. */
SQZ_API sqz_status sqz_session_set_output_options(sqz_session *session, const sqz_output_options *options);

/* ---- runs in flight -----------------------------------------------------------------
 *
 * A session keeps up to SQZ_MAX_IN_FLIGHT runs in flight, so the host packs the next batch
 * while the device computes one and copies the previous one's outputs back (on CUDA: a
 * compute stream and a copy stream linked by events; other backends finish the run inside
 * submit). Results are identical to sqz_session_run's.
 *
 *     sqz_ticket a, b;
 *     sqz_session_submit(s, &batch0, &a);     (returns once the run is enqueued; the input
 *     sqz_session_submit(s, &batch1, &b);      arrays may be reused at once)
 *     sqz_session_wait(s, a, &r0);            (r0 complete; batch1 still computing)
 *     sqz_session_submit(s, &batch2, &a); ...
 *
 * Threads: as for every session call, one thread at a time (see the top of this file). Select
 * and options apply to later submits; runs already in flight keep what they were submitted with.
 *
 * Memory: host outputs of a result live in one block. The session keeps the blocks that
 * sqz_result_free gives back (pinned memory on CUDA, so the copy is asynchronous and nothing
 * is mapped afresh per run) and reuses them; sqz_session_submit_into takes the caller's memory
 * instead. A submit that fails has no ticket and leaves nothing in flight; a wait that fails
 * ends its run. */
#define SQZ_MAX_IN_FLIGHT 2
typedef uint64_t sqz_ticket;

/* Packs and enqueues `input`. With SQZ_MAX_IN_FLIGHT runs not yet waited for it is
 * SQZ_ERR_INVALID_ARGUMENT.
 * Status: INVALID_ARGUMENT: SQZ_MAX_IN_FLIGHT runs in flight; INPUT: an id, token type or mask
 * out of range, a row without tokens, a length past the model's positions, a shape the head
 * does not take; BACKEND: the driver failed. */
SQZ_API sqz_status sqz_session_submit(sqz_session *session, const sqz_input *input, sqz_ticket *ticket);
/* The packed form of sqz_session_submit (outputs as sqz_session_run_packed gives them).
 * Status: as sqz_session_submit, INPUT naming the sequence and token. */
SQZ_API sqz_status sqz_session_submit_packed(sqz_session *session, const sqz_packed_input *input,
                                             sqz_ticket *ticket);
/* As sqz_session_submit, with the host outputs written into `memory` (`bytes` long, at least
 * what sqz_session_output_bytes gives; the outputs lie back to back, each starting 256-byte
 * aligned relative to `memory`). The memory must stay valid until the run's wait; the result's
 * outputs point into it, and sqz_result_free leaves it alone.
 * Status: as sqz_session_submit; INVALID_ARGUMENT also when `bytes` is too small. */
SQZ_API sqz_status sqz_session_submit_into(sqz_session *session, const sqz_input *input, void *memory,
                                           size_t bytes, sqz_ticket *ticket);
/* Host bytes the outputs of `input` need under the current selection and options.
 * Status: INPUT: as sqz_session_submit for the shape of `input`. */
SQZ_API sqz_status sqz_session_output_bytes(const sqz_session *session, const sqz_input *input, size_t *bytes);
/* Waits for the run of `ticket` and hands its result over (release it with sqz_result_free).
 * Status: INVALID_ARGUMENT: a ticket not in flight; BACKEND: the run failed on the device. */
SQZ_API sqz_status sqz_session_wait(sqz_session *session, sqz_ticket ticket, sqz_result **out);
/* Runs submitted and not yet waited for. */
SQZ_API int sqz_session_in_flight(const sqz_session *session);
/* Seconds the device has spent on this session's runs that were waited for. On CUDA, each
 * run from its input copy starting to its outputs being written, timed by events on the
 * compute stream (a pause inside a run while the device waits for the host counts as busy;
 * time between runs does not); on backends that finish a run inside submit, the time submit
 * took. Against wall time it says how busy the device was.
 * Status: INVALID_ARGUMENT only. */
SQZ_API sqz_status sqz_session_busy_seconds(const sqz_session *session, double *seconds);

/* IEEE binary16 (SQZ_OUTPUT_FP16 values) to fp32, exactly; and fp32 to binary16, rounded to
 * nearest even (overflow to infinity, NaN stays NaN). */
SQZ_API float sqz_half_to_float(uint16_t bits);
SQZ_API uint16_t sqz_float_to_half(float value);

SQZ_API size_t sqz_result_count(const sqz_result *result);
SQZ_API const sqz_output *sqz_result_get(const sqz_result *result, size_t index);
SQZ_API const sqz_output *sqz_result_find(const sqz_result *result, const char *name);
SQZ_API void sqz_result_free(sqz_result *result);

/* ---- validation against the reference ------------------------------------------------- */

/* How one node's output on the backend compares with cpu_ref's for the same tensor. */
typedef struct sqz_node_check {
    const char *node;    /* the node (and tensor) name, e.g. "layer3.post_attention_norm" */
    const char *op;      /* the op the backend ran, e.g. "add_layernorm" */
    int64_t values;      /* how many values were compared */
    double max_abs;      /* max |backend - cpu_ref| */
    double max_rel;      /* max_abs / max |cpu_ref|: the infinity-norm relative error */
    double nmse;         /* sum (backend - cpu_ref)^2 / sum cpu_ref^2 */
    int passed;          /* max_rel <= tolerance and every value finite */
} sqz_node_check;

typedef struct sqz_validation sqz_validation;

/* Runs `input` on the session `options` describe (NULL: cpu_ref, fp32; the fused plan unless
 * options->unfused) and on cpu_ref (fp32, double accumulation, the same fusion and guard
 * bytes), keeping every intermediate tensor, and compares every node the backend ran with
 * the cpu_ref tensor of the same name, in launch order. Returns SQZ_OK when both runs
 * completed; whether the nodes passed is in the report.
 * Status: as sqz_session_create and sqz_session_run (for either session); INVALID_ARGUMENT
 * also for a tolerance that is not positive. */
SQZ_API sqz_status sqz_validate(const sqz_model *model, const sqz_session_options *options,
                                const sqz_input *input, double tolerance, sqz_validation **out);
SQZ_API size_t sqz_validation_count(const sqz_validation *validation);
SQZ_API const sqz_node_check *sqz_validation_get(const sqz_validation *validation, size_t index);
/* Index of the first node that left tolerance, or -1 when all passed. */
SQZ_API long sqz_validation_first_failure(const sqz_validation *validation);
SQZ_API const char *sqz_validation_device(const sqz_validation *validation);
/* Rows of the classification-style outputs ("logits", "start_logits", "end_logits") whose
 * argmax was compared with cpu_ref (per sequence, per choice set, per real token, or over a
 * sequence's real positions); *mismatches gets how many differ. 0 for a model without them. */
SQZ_API int64_t sqz_validation_argmax(const sqz_validation *validation, int64_t *mismatches);
SQZ_API void sqz_validation_free(sqz_validation *validation);

/* ---- tokenizer ---------------------------------------------------------------------
 *
 * The WordPiece tokenizer of BERT and SqueezeBERT, giving exactly what transformers'
 * BertTokenizerFast gives (ids, token types, mask, offsets), for one text or a pair,
 * with longest_first truncation. A loaded tokenizer is immutable (threads: see the top).
 *
 *     sqz_tokenizer *tok = NULL;
 *     if (sqz_tokenizer_load("squeezebert-mnli/", &tok) != SQZ_OK) ...
 *     sqz_encoding *enc = NULL;
 *     if (sqz_tokenizer_encode(tok, text, strlen(text), NULL, 0, 512, &enc) == SQZ_OK) {
 *         ... enc->input_ids[0 .. enc->length) ...
 *     }
 *     sqz_encoding_free(enc);
 *     sqz_tokenizer_free(tok);
 */

typedef struct sqz_tokenizer sqz_tokenizer;

typedef struct sqz_tokenizer_info {
    int vocab_size;               /* entries of the vocabulary */
    int do_lower_case;            /* 1/0 */
    int strip_accents;            /* 1/0 after resolving "null" (= do_lower_case) */
    int tokenize_chinese_chars;   /* 1/0 */
    int clean_text;               /* 1/0 */
    int max_input_chars_per_word; /* longer words become one unknown token */
    int model_max_length;         /* tokenizer_config.json's, 0 when absent or unbounded */
    int32_t unk_id, cls_id, sep_id, pad_id, mask_id; /* -1 when the token is not in the vocab;
                                                        cls/sep: the framing of one text */
    size_t special_token_count;   /* tokens matched literally in the raw text */
} sqz_tokenizer_info;

/* Loads the tokenizer of `model_dir` from the files transformers writes:
 *  - tokenizer.json: the WordPiece vocabulary (model.vocab) and unk_token /
 *    continuing_subword_prefix / max_input_chars_per_word, the BertNormalizer settings, the
 *    post-processor's framing tokens and token type ids (TemplateProcessing in BERT's shape, or
 *    BertProcessing), added_tokens. A normalizer, pre-tokenizer, model or post-processor of
 *    another kind is refused by name (SQZ_ERR_UNSUPPORTED), never approximated.
 *  - vocab.txt: the vocabulary, one token per line. When tokenizer.json has a vocabulary too,
 *    tokenizer.json's wins (transformers never reads vocab.txt then); sqz_tokenizer_source
 *    says whether they differ.
 *  - tokenizer_config.json: do_lower_case, strip_accents, tokenize_chinese_chars,
 *    model_max_length, the special token strings, added_tokens_decoder.
 * At least one vocabulary is required. A setting in tokenizer_config.json wins over
 * tokenizer.json, which wins over the BERT defaults (lower case, strip accents with lower
 * case, split CJK, clean text, "##", 100 characters per word, [CLS] A [SEP] B [SEP] with types
 * 0 0 0 1 1). tokenizer.json's truncation and padding are not used (transformers overrides
 * them on every call that asks for truncation or padding). transformers 5 reads only the
 * vocabulary from tokenizer.json and rebuilds the rest from tokenizer_config.json and these
 * defaults; the two agree on every tokenizer.json it writes, and where a hand-made file departs
 * from the defaults this follows the file, as the tokenizers library does.
 * Status: IO: no vocabulary file, or one unreadable; FORMAT: a malformed file; UNSUPPORTED: a
 * normalizer, pre-tokenizer, model or post-processor of another kind. */
SQZ_API sqz_status sqz_tokenizer_load(const char *model_dir, sqz_tokenizer **out);
SQZ_API void sqz_tokenizer_free(sqz_tokenizer *tokenizer);
/* Status: INVALID_ARGUMENT only. */
SQZ_API sqz_status sqz_tokenizer_get_info(const sqz_tokenizer *tokenizer, sqz_tokenizer_info *out);
/* Which files the tokenizer came from, in words (for sqz info); never NULL. */
SQZ_API const char *sqz_tokenizer_source(const sqz_tokenizer *tokenizer);
/* The vocabulary entry of `id`; NULL when out of range. */
SQZ_API const char *sqz_tokenizer_id_to_token(const sqz_tokenizer *tokenizer, int32_t id);
/* The id of a vocabulary entry (exact bytes); -1 when absent. */
SQZ_API int32_t sqz_tokenizer_token_to_id(const sqz_tokenizer *tokenizer, const char *token, size_t len);

/* [start, end) byte offsets into the text a token came from. */
typedef struct sqz_span {
    size_t start, end;
} sqz_span;

/* One encoded input, special tokens included, unpadded. Read-only for the caller. */
typedef struct sqz_encoding {
    size_t length;                 /* tokens */
    const int64_t *input_ids;      /* [length] */
    const int64_t *token_type_ids; /* [length]: 0 for [CLS] text [SEP], 1 for pair [SEP] */
    const int64_t *attention_mask; /* [length]: all 1 */
    const sqz_span *offsets;       /* [length]: bytes of the text (or pair) the token covers;
                                      {0, 0} for the [CLS]/[SEP] the encoder adds */
    const int8_t *sequence_ids;    /* [length]: 0 text, 1 pair, -1 an added [CLS]/[SEP] */
    int truncated;                 /* 1 when truncation removed tokens */
} sqz_encoding;

/* Encodes `text` (UTF-8, text_len bytes, NULs allowed) and, unless pair is NULL or pair_len
 * is 0 (transformers treats an empty pair as no pair), `pair`, as
 * [CLS] text [SEP] (pair [SEP]). max_length > 0 truncates "longest_first" to that many tokens
 * in total, as transformers does with truncation=True (when max_length is smaller than the
 * 2 or 3 added tokens, transformers leaves the input untruncated, and so does this);
 * max_length 0 means no truncation. Invalid UTF-8 fails with SQZ_ERR_INPUT naming the byte.
 * *out must be NULL (a new encoding is allocated) or an encoding from an earlier call,
 * which is overwritten in place, reusing its memory. On failure *out stays valid (or NULL),
 * with length 0 if it was reused.
 * Status: INPUT: invalid UTF-8 (the message names the byte). */
SQZ_API sqz_status sqz_tokenizer_encode(const sqz_tokenizer *tokenizer, const char *text, size_t text_len,
                                        const char *pair, size_t pair_len, int max_length,
                                        sqz_encoding **out);
SQZ_API void sqz_encoding_free(sqz_encoding *encoding);

/* ---- end of tokenizer --------------------------------------------------------------- */

/* ---- sentence embeddings -----------------------------------------------------------
 *
 * What sentence-transformers computes after the transformer, read from the checkpoint folder
 * as it saves it: modules.json (Transformer, then Pooling, any Dense modules, Normalize),
 * the pooling's config.json in both formats (the older pooling_mode_*_tokens booleans and the
 * newer pooling_mode name or list), each Dense module's config.json and weights, and
 * sentence_bert_config.json (max_seq_length, do_lower_case). Without modules.json the
 * embedding is the pooler output (CLS when the model has no pooler), unnormalised. A module
 * or setting this code does not implement is refused by name (SQZ_ERR_UNSUPPORTED).
 *
 *     sqz_embedder *emb = NULL;
 *     sqz_embedder_load(model, &emb);
 *     ... run the sequence, then with its last_hidden_state rows [len][hidden] ...
 *     sqz_embedder_embed(emb, hidden_rows, len, pooler_row, out);   (info.dimension floats)
 */

typedef enum sqz_pool_mode {
    SQZ_POOL_CLS = 0,          /* the first token ("cls") */
    SQZ_POOL_MAX,              /* per-feature maximum over the tokens ("max") */
    SQZ_POOL_MEAN,             /* mean over the tokens ("mean") */
    SQZ_POOL_MEAN_SQRT_LEN,    /* sum / sqrt(tokens) ("mean_sqrt_len_tokens") */
    SQZ_POOL_WEIGHTED_MEAN,    /* token i (from 0) weighted i + 1 ("weightedmean") */
    SQZ_POOL_LAST_TOKEN,       /* the last token ("lasttoken") */
    SQZ_POOL_POOLER,           /* the model's pooler_output ("pooler"; not a sentence-transformers mode) */
    SQZ_POOL_MODE_COUNT
} sqz_pool_mode;

#define SQZ_MAX_POOL_MODES 8

SQZ_API const char *sqz_pool_mode_name(sqz_pool_mode mode);
/* Status: INVALID_ARGUMENT: not one of the names. */
SQZ_API sqz_status sqz_pool_mode_from_name(const char *name, sqz_pool_mode *out);

typedef struct sqz_embedder sqz_embedder;

typedef struct sqz_embedder_info {
    int from_modules;      /* 1 when modules.json was read */
    int pool_count;        /* modes, concatenated in this order */
    sqz_pool_mode pool[SQZ_MAX_POOL_MODES];
    int dense_count;       /* Dense modules after the pooling */
    int normalize;         /* 1: L2-normalised at the end */
    int max_seq_length;    /* sentence_bert_config.json's, 0 when it gives none */
    int truncate_at;       /* the length inputs are cut at (after sqz_embedder_use_tokenizer):
                              max_seq_length, else with modules.json the smaller of the
                              tokenizer's model_max_length and the model's positions (as
                              sentence-transformers), else the model's positions */
    int do_lower_case;     /* sentence_bert_config.json's (lower-cases the text first) */
    int dimension;         /* floats per embedding */
    int needs_hidden, needs_pooler; /* which outputs sqz_embedder_embed reads */
    const char *pooling_file; /* the pooling's config.json ("" without modules.json) */
} sqz_embedder_info;

/* Reads the modules of the folder `model` was loaded from.
 * Status: IO, FORMAT: as sqz_model_load, for the modules' files; UNSUPPORTED: a module or
 * setting not implemented; MODEL_MISMATCH: a Dense module whose sizes do not chain. */
SQZ_API sqz_status sqz_embedder_load(const sqz_model *model, sqz_embedder **out);
SQZ_API void sqz_embedder_free(sqz_embedder *embedder);
/* Status: INVALID_ARGUMENT only. */
SQZ_API sqz_status sqz_embedder_get_info(const sqz_embedder *embedder, sqz_embedder_info *out);
/* Settles what depends on the tokenizer: truncate_at, and refuses do_lower_case with a
 * tokenizer that does not lower-case (sentence-transformers would lower-case the text first).
 * Status: UNSUPPORTED: do_lower_case with a tokenizer that keeps case. */
SQZ_API sqz_status sqz_embedder_use_tokenizer(sqz_embedder *embedder, const sqz_tokenizer *tokenizer);
/* Replaces the pooling modes (count 0 keeps them) and the normalisation (-1 keeps it, 0 off,
 * 1 on); Dense modules stay. For a command line's --pooling and --normalize.
 * Status: INVALID_ARGUMENT: a count or mode out of range, or modes whose width the first
 * Dense module does not take; UNSUPPORTED: "pooler" on a model without one. */
SQZ_API sqz_status sqz_embedder_override(sqz_embedder *embedder, const sqz_pool_mode *modes, int count,
                                         int normalize);
/* One sequence's embedding: `hidden` holds its `len` real tokens' last_hidden_state rows
 * ([CLS] first, no padding), `pooled` its pooler_output row (NULL when not needed). Pooling
 * and Dense run in double over the fp32 inputs; `out` gets info.dimension floats.
 * Status: INVALID_ARGUMENT: len 0, or `pooled` NULL when needed. */
SQZ_API sqz_status sqz_embedder_embed(const sqz_embedder *embedder, const float *hidden, size_t len,
                                      const float *pooled, float *out);

/* ---- end of sentence embeddings ------------------------------------------------------- */

/* ---- benchmark ----------------------------------------------------------------------
 *
 * Support for `sqz bench`: the measured peak of a device, against which a benchmark states
 * the fraction of peak the whole model reaches.
 */

/* The best rate of a backend's own LINEAR kernel (dense, one group) on a device. */
typedef struct sqz_peak {
    double gflops;            /* best rate over the timed launches, FLOPs counted from the graph */
    int64_t rows;             /* tokens of the product [rows x in] x [in x out] that was timed */
    int64_t in_features, out_features;
    double flops_per_launch;
    int launches;             /* timed launches (warm-up launches not counted) */
    double seconds;           /* wall time spent measuring, warm-up included */
    char device[256];         /* the device in use, as sqz_session_device would name it */
} sqz_peak;

/* Times the backend's LINEAR kernel on a [rows x 1024] x [1024 x 1024] product on `device`
 * (NULL: the backend's default), growing rows from 64 until one launch takes 50 ms, then
 * launching it repeatedly for about `budget_seconds` and keeping the best rate. precision:
 * NULL (fp32) or a name sqz_precision_from_name takes, if the backend runs it.
 * Status: as sqz_session_create on that backend; UNSUPPORTED also for a precision it lacks. */
SQZ_API sqz_status sqz_measure_peak(const char *backend, const char *device, const char *precision,
                                    double budget_seconds, sqz_peak *out);

/* ---- end of benchmark --------------------------------------------------------------- */

#ifdef __cplusplus
}
#endif

#endif /* SQUEEZEBERT_H */
