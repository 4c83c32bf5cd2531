/* The graph IR: tensors and nodes of primitive ops over packed, token-major activations.
 *
 * Activations are [rows][cols] row-major, fp32 as built; the assign-dtypes pass gives them
 * (and the float inputs) the session's 16-bit storage type at fp16 and bf16. Rows are the packed real tokens of a batch
 * (no padding), or its sequences, or the attention score rows; the plan is compiled for
 * a bucket (max tokens, max sequences, max length) and run on any batch that fits. */
#ifndef SQZ_GRAPH_GRAPH_H
#define SQZ_GRAPH_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "squeezebert.h"

typedef enum sqz_op {
    SQZ_OP_GATHER_ROWS = 0, /* out[r] = table[index[r]]                         (index, table) */
    SQZ_OP_ADD,             /* out = a + b                                              (a, b) */
    SQZ_OP_LAYERNORM,       /* per row over cols, biased variance        (x, gamma, beta) */
    SQZ_OP_LINEAR,          /* grouped 1x1 conv / nn.Linear: out = x W^T + b  (x, W[, b]) */
    SQZ_OP_GELU,            /* exact erf form                                          (x) */
    SQZ_OP_TANH,            /*                                                          (x) */
    SQZ_OP_ATTN_SCORES,     /* S = scale * Q K^T per sequence and head (q, k, seq_off, score_off) */
    SQZ_OP_ATTN_KEY_MASK,   /* S += lowest float where the key is padding
                                                     (s, key_valid, seq_off, score_off) */
    SQZ_OP_ATTN_SOFTMAX,    /* softmax over keys              (s, seq_off, score_off) */
    SQZ_OP_ATTN_CONTEXT,    /* ctx = P V per sequence and head  (p, v, seq_off, score_off) */
    SQZ_OP_LINEAR_ATTENTION,/* the linear-attention variant (docs/variants.md): per sequence and
                               head, with f(x) = elu(x) + 1 and j over the valid keys,
                               ctx_i = f(q_i) (sum_j f(k_j) v_j^T) / (f(q_i) . sum_j f(k_j)),
                               zeros when no key is valid  (q, k, v, key_valid, seq_off) */
    /* Fused ops, made by the fusion pass only for backends that implement them. */
    SQZ_OP_EMBED_LAYERNORM, /* LN(word[ids] + pos[positions] + type[types])
                               (ids, positions, types, word, pos, type, gamma, beta) */
    SQZ_OP_LINEAR_GELU,     /* gelu(x W^T + b)                                  (x, W, b) */
    SQZ_OP_ADD_LAYERNORM,   /* LN(a + b), the residual and post-LN      (a, b, gamma, beta) */
    SQZ_OP_ATTENTION,       /* softmax(scale Q K^T + key mask) V in one launch
                               (q, k, v, key_valid, seq_off, score_off) */
    SQZ_OP_FFN,             /* gelu(x W1^T + b1) W2^T + b2, both grouped alike, so that group g of
                               the second reads only what group g of the first wrote; the
                               hidden activation is never stored      (x, W1, b1, W2, b2) */
    SQZ_OP_QKV,             /* the query, key and value projections of one input as one grouped
                               product: group g of the output is [q_g | k_g | v_g], each
                               cols / (3 groups) wide (sqz_qkv_column), for an ATTENTION node
                               that reads them there          (x, Wq, bq, Wk, bk, Wv, bv) */
    SQZ_OP_FFN_ADD_LAYERNORM, /* LN(residual + ffn(x)): the FFN above, its residual and post-LN
                               (x, W1, b1, W2, b2, residual, gamma, beta) */
    SQZ_OP_COUNT
} sqz_op;

const char *sqz_op_name(sqz_op op);
/* True for the ops only the fusion pass creates. */
bool sqz_op_is_fused(sqz_op op);

/* Weights are always F32 in the IR (a backend may keep its own 16-bit copy); index inputs
 * are I32; activations are F32, F16 (IEEE half) or BF16, one type per plan. */
typedef enum sqz_dtype { SQZ_DTYPE_F32 = 0, SQZ_DTYPE_I32, SQZ_DTYPE_F16, SQZ_DTYPE_BF16, SQZ_DTYPE_COUNT } sqz_dtype;

const char *sqz_dtype_name(sqz_dtype dtype);
size_t sqz_dtype_size(sqz_dtype dtype);
bool sqz_dtype_is_float(sqz_dtype dtype);
/* The storage type of activations at a precision: F16 or BF16 at those, else F32. */
sqz_dtype sqz_precision_activation_dtype(sqz_precision precision);
/* n values of a float dtype as fp32 and back (round to nearest even on the way down); `src`
 * and `dst` may be the same memory (in-place conversion). */
void sqz_dtype_to_f32(sqz_dtype dtype, const void *src, size_t n, float *dst);
void sqz_dtype_from_f32(sqz_dtype dtype, const float *src, size_t n, void *dst);

/* What a tensor's row count scales with. */
typedef enum sqz_extent {
    SQZ_EXTENT_FIXED = 0,         /* rows fixed at compile time (weights) */
    SQZ_EXTENT_TOKENS,            /* packed tokens of the batch */
    SQZ_EXTENT_SEQUENCES,         /* sequences of the batch */
    SQZ_EXTENT_SEQUENCES_PLUS_ONE,/* prefix-offset arrays */
    SQZ_EXTENT_SCORES,            /* sum over sequences of length^2 */
    SQZ_EXTENT_SELECTED,          /* the tokens a run wants per-token outputs of (a masked LM
                                     decodes only those) */
    SQZ_EXTENT_COUNT
} sqz_extent;

typedef enum sqz_tensor_kind {
    SQZ_TENSOR_WEIGHT = 0, /* a model weight, bound by index */
    SQZ_TENSOR_INPUT,      /* written by the executor before each run */
    SQZ_TENSOR_ACTIVATION, /* produced by exactly one node */
    SQZ_TENSOR_KIND_COUNT
} sqz_tensor_kind;

#define SQZ_NAME_LEN 80

typedef struct sqz_tensor_desc {
    char name[SQZ_NAME_LEN];
    sqz_tensor_kind kind;
    sqz_dtype dtype;
    sqz_extent extent;
    int64_t fixed_rows; /* rows when extent is FIXED */
    int64_t cols;
    int weight_index;   /* model weight for SQZ_TENSOR_WEIGHT, else -1 */
    int producer;       /* node index for activations, else -1 */
    bool is_output;     /* read back after a run: never overwritten by memory reuse */
} sqz_tensor_desc;

#define SQZ_NODE_MAX_INPUTS 8

typedef union sqz_op_params {
    struct { float eps; } layernorm;
    struct { int groups; } linear;
    /* qkv_groups > 0: q, k and v are one SQZ_OP_QKV output of that many groups (all three
       inputs name it), 0: three tensors */
    struct { int heads, head_dim; float scale; int qkv_groups; } attention;
    struct { int groups; float eps; } ffn_layernorm; /* SQZ_OP_FFN_ADD_LAYERNORM */
} sqz_op_params;

/* Where column `col` (0 <= col < width) of part `part` (0 q, 1 k, 2 v) lies in an SQZ_OP_QKV
 * output of `groups` groups over `width` channels per part (sqz validate slices by it; the CUDA
 * kernels' qkv_layout, cuda/cuda_kernels.cuh, is the same rule in device code). */
static inline int64_t sqz_qkv_column(int64_t width, int groups, int part, int64_t col)
{
    const int64_t per_group = width / groups;
    return (col / per_group) * 3 * per_group + part * per_group + col % per_group;
}

typedef struct sqz_node {
    sqz_op op;
    char name[SQZ_NAME_LEN];
    int n_inputs;
    int inputs[SQZ_NODE_MAX_INPUTS]; /* tensor indices; -1 for an absent optional input */
    int output;
    sqz_op_params params;
} sqz_node;

/* How a graph output maps to a user-visible output. */
typedef enum sqz_output_layout {
    SQZ_LAYOUT_PER_TOKEN = 0,     /* [N, W, cols] (or [N, W] when col_count == 1 && squeeze) */
    SQZ_LAYOUT_PER_SEQUENCE,      /* [N, cols] */
    SQZ_LAYOUT_PER_CHOICE,        /* [N, K]: one value per sequence, N*K sequences */
} sqz_output_layout;

typedef struct sqz_graph_output {
    char name[SQZ_NAME_LEN];
    int tensor;
    int64_t col_begin, col_count;
    bool squeeze;
    sqz_output_layout layout;
} sqz_graph_output;

/* Named inputs the executor fills for every run (indices into tensors, -1 if unused). */
typedef struct sqz_graph_inputs {
    int token_ids;     /* I32 [T, 1] */
    int token_types;   /* I32 [T, 1] */
    int positions;     /* I32 [T, 1] */
    int key_valid;     /* I32 [T, 1]: 1 = attend to this key */
    int seq_offsets;   /* I32 [S + 1]: first packed token of each sequence */
    int score_offsets; /* I32 [S + 1]: first score row of each sequence (sum of len^2) */
    int first_tokens;  /* I32 [S, 1]: packed index of each sequence's position 0 */
    int out_rows;      /* I32 [selected, 1]: packed index of each token the head decodes (masked
                          LMs only; -1 elsewhere) */
} sqz_graph_inputs;

typedef struct sqz_graph {
    sqz_tensor_desc *tensors;
    size_t n_tensors, cap_tensors;
    sqz_node *nodes;
    size_t n_nodes, cap_nodes;
    sqz_graph_output *outputs;
    size_t n_outputs, cap_outputs;
    sqz_graph_inputs in;
} sqz_graph;

/* Runtime sizes of one batch. */
typedef struct sqz_run_dims {
    int64_t tokens, sequences, score_rows, max_len;
    int64_t selected; /* rows of SQZ_EXTENT_SELECTED tensors, at most tokens */
} sqz_run_dims;

void sqz_graph_init(sqz_graph *graph);
void sqz_graph_release(sqz_graph *graph);
sqz_status sqz_graph_copy(const sqz_graph *src, sqz_graph *dst);

/* Builders return the new index, or -1 on allocation failure (message set). */
int sqz_graph_add_tensor(sqz_graph *graph, const char *name, sqz_tensor_kind kind,
                         sqz_dtype dtype, sqz_extent extent, int64_t fixed_rows, int64_t cols);
int sqz_graph_add_weight(sqz_graph *graph, const char *name, int weight_index, int64_t rows,
                         int64_t cols);
/* Adds a node and its output activation tensor; returns the output tensor index. */
int sqz_graph_add_node(sqz_graph *graph, sqz_op op, const char *name, const int *inputs,
                       int n_inputs, sqz_op_params params, sqz_extent out_extent,
                       int64_t out_cols);
sqz_status sqz_graph_add_output(sqz_graph *graph, const char *name, int tensor,
                                int64_t col_begin, int64_t col_count, bool squeeze,
                                sqz_output_layout layout);

int64_t sqz_extent_rows(sqz_extent extent, int64_t fixed_rows, const sqz_run_dims *dims);
int64_t sqz_tensor_rows(const sqz_tensor_desc *tensor, const sqz_run_dims *dims);

/* Checks structure, dtypes and shapes of every node; the message names the node. Dtypes:
 * weights F32, index operands I32, every other tensor of one float dtype. */
sqz_status sqz_graph_verify(const sqz_graph *graph);

/* FLOPs of one node for the given batch (2 per multiply-add), for benchmarks. */
double sqz_node_flops(const sqz_graph *graph, const sqz_node *node, const sqz_run_dims *dims);

#endif
