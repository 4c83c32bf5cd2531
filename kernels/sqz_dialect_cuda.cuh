/* Compiles kernels/sqz_kernels.cl as CUDA C++: the OpenCL C words the kernels use, mapped to
 * CUDA. Kernels launched with a grid covering OpenCL's global size behave the same,
 * because every kernel returns early outside its range. */
#ifndef SQZ_DIALECT_CUDA_CUH
#define SQZ_DIALECT_CUDA_CUH

#include <cfloat>
#include <cmath>

#define SQZ_FN __device__ __forceinline__
#ifdef SQZ_CUDA_SIM
#define __kernel __attribute__((unused)) static __global__ /* must not collide with the GPU's copies */
#else
#define __kernel extern "C" __global__
#endif
#define __global
/* ulong: glibc's sys/types.h already defines it as unsigned long (64 bits here) */

__device__ __forceinline__ size_t get_global_id(int d)
{
    return d == 0 ? (size_t)blockIdx.x * blockDim.x + threadIdx.x
         : d == 1 ? (size_t)blockIdx.y * blockDim.y + threadIdx.y
                  : (size_t)blockIdx.z * blockDim.z + threadIdx.z;
}

__device__ __forceinline__ int clamp(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

/* OpenCL's float8 with the operations the kernels use: arithmetic, fma, .lo/.hi halves. */
struct float8 {
    float v[8];
    __device__ float8() {}
    __device__ float8(float s)
    {
        for (int i = 0; i < 8; i++)
            v[i] = s;
    }
    __device__ float4 half(int h) const { return make_float4(v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3]); }
};

__device__ __forceinline__ float4 operator+(float4 a, float4 b)
{
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

#define SQZ_F8_BINARY(op)                                                                   \
    __device__ __forceinline__ float8 operator op(const float8 &a, const float8 &b)         \
    {                                                                                       \
        float8 r;                                                                           \
        for (int i = 0; i < 8; i++)                                                         \
            r.v[i] = a.v[i] op b.v[i];                                                      \
        return r;                                                                           \
    }                                                                                       \
    __device__ __forceinline__ float8 operator op(const float8 &a, float b) { return a op float8(b); }
SQZ_F8_BINARY(+)
SQZ_F8_BINARY(*)
#undef SQZ_F8_BINARY
__device__ __forceinline__ float8 &operator*=(float8 &a, float b)
{
    for (int i = 0; i < 8; i++)
        a.v[i] *= b;
    return a;
}

__device__ __forceinline__ float8 fma(const float8 &a, const float8 &b, const float8 &c)
{
    float8 r;
    for (int i = 0; i < 8; i++)
        r.v[i] = fmaf(a.v[i], b.v[i], c.v[i]);
    return r;
}

__device__ __forceinline__ float8 vload8(size_t index, const float *p)
{
    float8 r;
    for (int i = 0; i < 8; i++)
        r.v[i] = p[8 * index + i];
    return r;
}

__device__ __forceinline__ void vstore8(const float8 &x, size_t index, float *p)
{
    for (int i = 0; i < 8; i++)
        p[8 * index + i] = x.v[i];
}

__device__ __forceinline__ float sqz_rsqrt(float x) { return rsqrtf(x); }
#define rsqrt sqz_rsqrt

/* v.lo / v.hi: OpenCL vector component syntax, rewritten by the macros below (the kernels
 * use no other identifier named lo or hi) */
#define lo half(0)
#define hi half(1)

#endif
