/* Reading and writing checkpoint weight files: safetensors and PyTorch's zip+pickle
 * `pytorch_model.bin`. Files are treated as hostile: every size, offset and shape is
 * checked against the file before use, and anything outside the small subset that
 * torch.save / save_pretrained write is refused with a message naming file and place. */
#ifndef SQZ_RUNTIME_TENSOR_FILE_H
#define SQZ_RUNTIME_TENSOR_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "squeezebert.h"

#define SQZ_TF_MAX_DIMS 8

typedef enum sqz_tf_dtype {
    SQZ_TF_F32 = 0,
    SQZ_TF_F16,
    SQZ_TF_BF16,
    SQZ_TF_F64,
    SQZ_TF_I64,
    SQZ_TF_I32,
    SQZ_TF_I16,
    SQZ_TF_I8,
    SQZ_TF_U8,
    SQZ_TF_BOOL,
    SQZ_TF_DTYPE_COUNT
} sqz_tf_dtype;

const char *sqz_tf_dtype_name(sqz_tf_dtype dtype); /* "F32", "F16", ... */

typedef struct sqz_tf_tensor {
    char *name;
    sqz_tf_dtype dtype;       /* dtype as stored in the file */
    int ndim;
    int64_t shape[SQZ_TF_MAX_DIMS];
    int64_t numel;
    /* Contiguous row-major fp32 copy for F32/F16/BF16 (widened) and F64 (rounded); NULL
     * for other dtypes, which the engine never needs (e.g. int64 position_ids) and only
     * lists. */
    float *data;
} sqz_tf_tensor;

typedef struct sqz_tensor_file {
    char *path;
    sqz_tf_tensor *tensors;
    size_t count;
} sqz_tensor_file;

/* Reads `path`; the format is chosen by content (zip magic -> PyTorch, otherwise
 * safetensors; the pre-1.6 non-zip torch.save format is refused with a hint). Tensors keep
 * the file's order. limits: NULL or zero fields for the defaults below. On failure *out is
 * NULL and sqz_last_error() names the file, the tensor or byte offset, and what was expected. */
sqz_status sqz_tensor_file_read(const char *path, const sqz_model_load_options *limits,
                                sqz_tensor_file **out);
void sqz_tensor_file_free(sqz_tensor_file *file);
const sqz_tf_tensor *sqz_tensor_file_find(const sqz_tensor_file *file, const char *name);

/* One tensor to write: fp32 source data, stored as F32, F16 or BF16 (rounded to
 * nearest even). */
typedef struct sqz_tf_write_tensor {
    const char *name;
    int ndim;
    int64_t shape[SQZ_TF_MAX_DIMS];
    const float *data;
} sqz_tf_write_tensor;

sqz_status sqz_safetensors_write(const char *path, const sqz_tf_write_tensor *tensors,
                                 size_t count, sqz_tf_dtype stored_dtype);

/* Limits that keep hostile files from costing unbounded time or memory. */
#define SQZ_TF_MAX_TENSORS 100000
#define SQZ_TF_MAX_NAME 1024
#define SQZ_TF_MAX_HEADER_BYTES (100u << 20)  /* safetensors JSON header */
#define SQZ_TF_MAX_PICKLE_BYTES (256u << 20)  /* data.pkl */
#define SQZ_TF_MAX_PICKLE_STACK 100000
#define SQZ_TF_MAX_PICKLE_MEMO 1000000

/* fp16/bf16 conversions (exact, round-to-nearest-even on the way down). */
float sqz_f16_to_f32(uint16_t bits);
float sqz_bf16_to_f32(uint16_t bits);
uint16_t sqz_f32_to_f16(float value);
uint16_t sqz_f32_to_bf16(float value);

#endif
