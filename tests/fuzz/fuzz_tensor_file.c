/* A checkpoint file (safetensors, or the zip container + pickle of pytorch_model.bin) read
 * by sqz_tensor_file_read, format chosen by content as for a real download. Built twice,
 * as fuzz_safetensors and fuzz_torch_zip, with different seeds. Every tensor that loads must
 * be consistent: its element count matches its shape, and float data is present. */
#include "tests/fuzz/fuzz_util.h"

#include "runtime/tensor_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("model.bin", data, size);
    sqz_tensor_file *file = NULL;
    if (sqz_tensor_file_read(path, NULL, &file) == SQZ_OK) {
        for (size_t i = 0; i < file->count; i++) {
            const sqz_tf_tensor *t = &file->tensors[i];
            int64_t numel = 1;
            FUZZ_CHECK(t->ndim >= 0 && t->ndim <= SQZ_TF_MAX_DIMS);
            for (int d = 0; d < t->ndim; d++) {
                FUZZ_CHECK(t->shape[d] >= 0);
                numel *= t->shape[d];
            }
            FUZZ_CHECK(numel == t->numel);
            FUZZ_CHECK(t->name != NULL);
            if (t->dtype == SQZ_TF_F32 || t->dtype == SQZ_TF_F16 || t->dtype == SQZ_TF_BF16 || t->dtype == SQZ_TF_F64) {
                FUZZ_CHECK(t->data != NULL);
                volatile float sum = 0; /* reads every element: ASan checks the extent */
                for (int64_t k = 0; k < t->numel; k++)
                    sum += t->data[k];
                (void)sum;
            }
            FUZZ_CHECK(sqz_tensor_file_find(file, t->name) != NULL);
        }
        sqz_tensor_file_free(file);
    } else {
        FUZZ_CHECK(file == NULL);
        FUZZ_CHECK(sqz_last_error()[0] != '\0');
    }
    return 0;
}
