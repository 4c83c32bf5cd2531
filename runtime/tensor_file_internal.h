/* Shared pieces of the checkpoint readers (tensor_file.c, safetensors.c, torch_bin.c with
 * zip.c and pickle.c). Not part of the engine's interface: only these files and their
 * tests use it. */
#ifndef SQZ_RUNTIME_TENSOR_FILE_INTERNAL_H
#define SQZ_RUNTIME_TENSOR_FILE_INTERNAL_H

#include <stdint.h>
#include <stdio.h>

#include "runtime/tensor_file.h"

/* An open checkpoint: the readers only ever read at explicit offsets, checked against
 * `size`, so a hostile length can never send them past the end of the file. */
typedef struct sqz_tf_source {
    FILE *fp;
    const char *path;
    uint64_t size;
    size_t max_header_bytes, max_pickle_bytes; /* the caller's limits, defaults filled in */
} sqz_tf_source;

/* Little-endian loads from file bytes, which need not be aligned. */
static inline uint16_t sqz_tf_le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

static inline uint32_t sqz_tf_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t sqz_tf_le64(const unsigned char *p)
{
    return sqz_tf_le32(p) | (uint64_t)sqz_tf_le32(p + 4) << 32;
}

/* Reads exactly `n` bytes at `offset`; `what` names the thing being read for the error. */
sqz_status sqz_tf_read_at(const sqz_tf_source *src, uint64_t offset, void *buf, size_t n,
                          const char *what);

/* Each reader fills `out->tensors` / `out->count` (out->path is already set). On failure
 * it may leave a partial tensor list behind, which sqz_tensor_file_free releases. */
sqz_status sqz_tf_read_safetensors(const sqz_tf_source *src, sqz_tensor_file *out);
sqz_status sqz_tf_read_torch_zip(const sqz_tf_source *src, sqz_tensor_file *out);
/* How messages about a limit name the knob that raises it: the option, and the environment
 * variable the sqz command line fills it from. */
#define SQZ_TF_HEADER_LIMIT_KNOB "max_header_bytes of sqz_model_load_options; SQZ_MAX_HEADER_BYTES for sqz"
#define SQZ_TF_PICKLE_LIMIT_KNOB "max_pickle_bytes of sqz_model_load_options; SQZ_MAX_PICKLE_BYTES for sqz"

/* Frees the tensors a failed reader left, keeping the path (for a second attempt). */
void sqz_tensor_file_clear(sqz_tensor_file *file);
/* torch.save before 1.6: the caller has matched the magic-number pickle at offset 0. */
sqz_status sqz_tf_read_torch_legacy(const sqz_tf_source *src, sqz_tensor_file *out);

size_t sqz_tf_dtype_size(sqz_tf_dtype dtype);
/* True for the dtypes that are materialised as fp32 (F32, F16, BF16, F64). */
int sqz_tf_dtype_is_float(sqz_tf_dtype dtype);
/* Loads one little-endian element of a float dtype and returns it as fp32. */
float sqz_tf_load_f32(sqz_tf_dtype dtype, const unsigned char *p);
/* fp64 -> fp32, round to nearest even, out-of-range values to +-inf (no UB). */
float sqz_tf_f64_to_f32(double value);

/* Copies `s` into `out` for use inside an error message: at most `cap`-1 bytes, with
 * control and non-ASCII bytes shown as '?', and "..." when cut. Returns `out`. */
const char *sqz_tf_printable(const char *s, size_t len, char *out, size_t cap);

/* Refuses duplicate tensor names (the message names the file and the name); the list
 * keeps its order. */
sqz_status sqz_tf_check_unique_names(const sqz_tensor_file *file);

#endif
