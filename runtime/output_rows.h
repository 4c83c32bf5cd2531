/* Which source row a row of a formatted output comes from (sqz_output_format in
 * runtime/backend.h): one definition for the host (C) and the CUDA kernel. */
#ifndef SQZ_RUNTIME_OUTPUT_ROWS_H
#define SQZ_RUNTIME_OUTPUT_ROWS_H

#include <stdint.h>

#ifdef __CUDACC__
#define SQZ_HOST_DEVICE __host__ __device__
#else
#define SQZ_HOST_DEVICE
#endif

/* width 0: row itself. width W > 0: row r * W + w is the packed token at position w of
 * sequence r (positions rise within a sequence, so a binary search finds it), or -1 when that
 * position was dropped or its key_valid is 0 (padding, written as zeros). */
static inline SQZ_HOST_DEVICE int64_t sqz_output_source_row(int64_t row, int64_t width, const int32_t *seq_offsets,
                                                            const int32_t *positions, const int32_t *key_valid)
{
    if (width == 0)
        return row;
    const int64_t r = row / width, w = row % width, end = seq_offsets[r + 1];
    int64_t lo = seq_offsets[r], hi = end;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (positions[mid] < w)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < end && positions[lo] == w && key_valid[lo] ? lo : -1;
}

#endif
