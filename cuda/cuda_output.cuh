/* Outputs in the caller's layout on the device (sqz_output_format in runtime/backend.h):
 * padding rows as zeros, a column slice, fp32 or fp16, written into one area that a single
 * copy takes to the host. Included by cuda/cuda_backend.cu after cuda_kernels.cuh. */
#ifndef SQZ_CUDA_OUTPUT_CUH
#define SQZ_CUDA_OUTPUT_CUH

#include "runtime/output_rows.h"

namespace sqzk {

constexpr int FORMAT_THREADS = 128;

/* Blocks stride over destination rows, a block's threads over its columns; the source row
 * is sqz_output_source_row's (every thread of a block takes the same few search steps over
 * the same cached words). The host implementation, sqz_format_output_host, is the reference. */
template <typename TIn, typename TOut>
__global__ void __launch_bounds__(FORMAT_THREADS)
format_rows(const TIn *src, int src_cols, int col_begin, int cols, long long rows, int width, const int *seq_offsets,
            const int *positions, const int *key_valid, TOut *dst)
{
    sqz_wait_for_previous_grid();
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long from = sqz_output_source_row(row, width, seq_offsets, positions, key_valid);
        TOut *out = dst + row * cols;
        const TIn *in = from >= 0 ? src + from * src_cols + col_begin : nullptr;
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            out[c] = from_f<TOut>(in ? to_f(in[c]) : 0.0f);
    }
}

} // namespace sqzk

#endif
