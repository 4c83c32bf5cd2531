/* The host logic of the CUDA backend's cuBLASLt plan cache (cuda/cuda_gemm.cuh): the key and
 * the choice of a slot. Plain C++ without CUDA, so that tests/test_cuda_sim.cc checks it. */
#ifndef SQZ_CUDA_LT_KEY_H
#define SQZ_CUDA_LT_KEY_H

#include <cstdint>
#include <cstring>

/* Everything a cuBLASLt plan (its descriptors, layouts and the heuristic's algorithm) depends
 * on; the operands' addresses enter only through their alignments. All int64_t: no padding,
 * so memcmp compares exactly the fields. */
struct lt_key {
    int64_t rows, cin, cout, cin_g, cout_g, groups;
    int64_t bias;                                   /* 0/1: the epilogue */
    int64_t dtype, precision;                       /* storage type, compute type */
    int64_t align_a, align_b, align_d, align_bias; /* bytes: weights, input, output, bias */
    int64_t workspace;                              /* bytes the heuristic may use */
};

/* The slot for key among n entries (each with .used, .key and .last_used): the one holding it
 * (*hit = true), else the first unused one, else the least recently used (which the caller
 * empties and refills). */
template <typename Entry> static int lt_cache_slot(const Entry *entries, int n, const lt_key &key, bool *hit)
{
    int slot = 0;
    *hit = false;
    for (int i = 0; i < n; i++) {
        if (entries[i].used && memcmp(&entries[i].key, &key, sizeof key) == 0) {
            *hit = true;
            return i;
        }
        if (entries[slot].used && (!entries[i].used || entries[i].last_used < entries[slot].last_used))
            slot = i;
    }
    return slot;
}

#endif
