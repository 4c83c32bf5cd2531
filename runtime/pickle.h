/* The pickle machine behind the torch checkpoint reader (runtime/torch_bin.c): it runs
 * the subset of pickle protocols 2-5 that torch.save writes for a state dict and builds
 * plain values from it - None, bools, ints, floats, strings, tuples, lists, dicts, the
 * allowed classes, storages (named by persistent ids) and tensors (views of storages).
 * Any other opcode or class is refused, naming it, before it could mean anything. The
 * limits (string length, object count, stack and memo size) are in pickle.c and
 * runtime/tensor_file.h. */
#ifndef SQZ_RUNTIME_PICKLE_H
#define SQZ_RUNTIME_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/tensor_file.h"

typedef enum sqz_pk_kind {
    SQZ_PK_NONE,
    SQZ_PK_BOOL,
    SQZ_PK_INT,
    SQZ_PK_FLOAT,
    SQZ_PK_STR,
    SQZ_PK_TUPLE,
    SQZ_PK_LIST,
    SQZ_PK_DICT, /* items hold key, value, key, value, ... */
    SQZ_PK_GLOBAL,
    SQZ_PK_STORAGE,
    SQZ_PK_TENSOR,
} sqz_pk_kind;

typedef enum sqz_pk_callable {
    SQZ_PK_CALL_ORDERED_DICT,
    SQZ_PK_CALL_REBUILD_TENSOR_V2,
    SQZ_PK_CALL_REBUILD_PARAMETER,
    SQZ_PK_CALL_STORAGE, /* torch.<X>Storage, dtype in the value */
} sqz_pk_callable;

typedef struct sqz_pk_value sqz_pk_value;

typedef struct sqz_pk_tensor {
    const sqz_pk_value *storage;
    int64_t offset;
    int ndim;
    int64_t shape[SQZ_TF_MAX_DIMS];
    int64_t stride[SQZ_TF_MAX_DIMS];
} sqz_pk_tensor;

struct sqz_pk_value {
    sqz_pk_kind kind;
    union {
        int64_t i;
        double f;
        struct {
            char *s;
            size_t len;
        } str;
        struct {
            sqz_pk_value **items;
            size_t n, cap;
        } seq;
        struct {
            sqz_pk_callable which;
            sqz_tf_dtype dtype;
        } global;
        struct {
            sqz_tf_dtype dtype;
            const char *key; /* borrowed from a SQZ_PK_STR value; both live until the end */
            int64_t numel;
        } storage;
        sqz_pk_tensor *tensor;
    } u;
};

typedef struct sqz_pk_machine {
    const char *path;  /* the file */
    const char *entry; /* the data.pkl entry name, for messages */
    const unsigned char *buf;
    size_t len, pos;
    size_t op_pos; /* offset of the opcode being run */

    sqz_pk_value **stack;
    size_t depth, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    sqz_pk_value **memo;
    size_t memo_cap, memo_used;

    /* Every value lives here until the machine is freed: values are shared freely
     * (memo, containers) and may even form cycles, so they are never freed one by one. */
    sqz_pk_value **all;
    size_t n_all, all_cap;
    size_t budget_used; /* values plus container slots, against PK_MAX_VALUES */

    sqz_pk_value none_value;
    /* the legacy (pre-1.6) format: several pickles back to back, storages after them, and
     * persistent ids with a sixth field (view metadata, always None for a state dict) */
    int legacy;
} sqz_pk_machine;

/* An empty machine for the pickles of file `path`; `entry` says where in the file they
 * lie, for messages. `legacy` reads the persistent ids of the pre-1.6 format. Set buf,
 * len (and pos, when not 0) before running; sqz_pk_free releases everything. */
void sqz_pk_init(sqz_pk_machine *m, const char *path, const char *entry, int legacy);

/* Runs the pickle at buf[pos..len) to its STOP opcode; *result is the single object it
 * built, and pos is left after the STOP. Values live until sqz_pk_free. */
sqz_status sqz_pk_run(sqz_pk_machine *m, sqz_pk_value **result);

/* The next pickle of the same file starts with an empty stack and memo. */
void sqz_pk_reset(sqz_pk_machine *m);

void sqz_pk_free(sqz_pk_machine *m);

/* The value under string key `key` of a dict, or NULL (also when `dict` is no dict). */
const sqz_pk_value *sqz_pk_dict_get(const sqz_pk_value *dict, const char *key);

/* "None", "int", "dict", ...: the kind as messages name it. */
const char *sqz_pk_kind_name(sqz_pk_kind kind);

#endif
