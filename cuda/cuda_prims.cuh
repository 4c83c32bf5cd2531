/* The device primitives the CUDA kernels use beyond plain CUDA C++ (tensor-core mma.sync,
 * ldmatrix, cp.async), the launch helper and dynamic shared memory: each defined once for the
 * GPU (inline PTX, as the PTX ISA documents it) and once for cuda-sim (cuda/sim/cuda_sim.h),
 * which emulates them with the same register layouts. Kernels use only these, so the same
 * kernel text runs in both. */
#ifndef SQZ_CUDA_PRIMS_CUH
#define SQZ_CUDA_PRIMS_CUH

#ifdef SQZ_CUDA_SIM
#include "cuda/sim/cuda_sim.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

/* kernel<<<grid, block, shared_bytes, stream>>>(args...), each argument converted to the
 * kernel's parameter type; `name` names the kernel in cuda-sim's reports. Errors are read
 * with cudaGetLastError, as after <<<>>>.
 * overlap: programmatic dependent launch (sm_90): the kernel's blocks may start while the
 * previous kernel on the stream is still finishing, so a kernel launched this way must call
 * sqz_wait_for_previous_grid() before it touches memory that kernel (or any before it) reads or
 * writes. Every kernel of cuda/ does so first thing; the shared OpenCL kernels do not and are
 * never launched this way. */
template <typename... P, typename... A>
static inline void sqz_launch_overlapping(bool overlap, const char *name, void (*kernel)(P...), dim3 grid, dim3 block,
                                          size_t shared_bytes, cudaStream_t stream, A... args)
{
#ifdef SQZ_CUDA_SIM
    sqzsim::launch(name, (const void *)kernel, grid, block, shared_bytes, stream,
                   [=] { kernel(static_cast<P>(args)...); }, overlap);
#else
    (void)name;
    if (!overlap) {
        kernel<<<grid, block, shared_bytes, stream>>>(static_cast<P>(args)...);
        return;
    }
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid, config.blockDim = block, config.dynamicSmemBytes = shared_bytes, config.stream = stream;
    config.attrs = &attribute, config.numAttrs = 1;
    (void)cudaLaunchKernelEx(&config, kernel, static_cast<P>(args)...); /* its error: cudaGetLastError */
#endif
}

template <typename... P, typename... A>
static inline void sqz_launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                              cudaStream_t stream, A... args)
{
    sqz_launch_overlapping(false, name, kernel, grid, block, shared_bytes, stream, args...);
}

/* The wait of a kernel launched to overlap (sqz_launch_overlapping): returns once the previous
 * kernels on the stream have finished and their writes are visible. A no-op otherwise. */
__device__ __forceinline__ void sqz_wait_for_previous_grid()
{
#ifdef SQZ_CUDA_SIM
    sqzsim::wait_for_previous_grid();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* The block's dynamic shared memory (the launch's shared_bytes), 16-byte aligned. */
#ifdef SQZ_CUDA_SIM
#define SQZ_DYNAMIC_SHARED(name) unsigned char *name = (unsigned char *)::sqzsim::dynamic_shared(nullptr)
#else
#define SQZ_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace sqzk {

/* two values in one 32-bit register, the first in the low half (the lower column index of an
 * mma fragment) */
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &h, 4);
    return r;
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &h, 4);
    return r;
}

/* acc += A B for one 16x8x16 tile on tensor cores: A 16x16 row-major (4 registers), B 16x8
 * column-major (2 registers), fp32 accumulators (4), in the fragment layouts of PTX's
 * mma.m16n8k16 with .f16 or .bf16 inputs (T). */
template <typename T>
__device__ __forceinline__ void mma_16816(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
#ifdef SQZ_CUDA_SIM
    sqzsim::mma_m16n8k16(std::is_same<T, __half>::value ? sqzsim::MMA_F16 : sqzsim::MMA_BF16, acc, a, b, acc);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same<T, __half>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap(); /* built for an architecture without these tensor cores: never launched there */
#endif
}

/* ldmatrix.m8n8.b16 from shared memory: lanes 8i..8i+7 give the 16-byte rows of matrix i;
 * register i of lane l gets row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i (transposed:
 * rows 2(l%4) and 2(l%4)+1 of column l/4). */
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void *shared_row)
{
    static_assert(N == 1 || N == 2 || N == 4, "x1, x2 or x4");
#ifdef SQZ_CUDA_SIM
    sqzsim::ldmatrix(N, TRANS, r, shared_row);
#else
    const unsigned addr = (unsigned)__cvta_generic_to_shared(shared_row);
    if constexpr (N == 4 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
    else if constexpr (N == 4)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
    else if constexpr (N == 2 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
    else if constexpr (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
    else if constexpr (!TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr) : "memory");
#endif
}

/* 16 bytes from global to shared memory without passing through registers; only src_bytes
 * of them are read and the rest are zeros (0: nothing is read, the 16 bytes are zeros).
 * Both addresses 16-byte aligned. Lands by the cp_async_wait that covers its group. */
__device__ __forceinline__ void cp_async_16(void *shared_dst, const void *global_src, unsigned src_bytes)
{
#ifdef SQZ_CUDA_SIM
    sqzsim::cp_async(shared_dst, global_src, 16, src_bytes);
#else
    const unsigned addr = (unsigned)__cvta_generic_to_shared(shared_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(global_src), "r"(src_bytes)
                 : "memory");
#endif
}

/* closes the group of this thread's cp.async copies issued since the last commit */
__device__ __forceinline__ void cp_async_commit()
{
#ifdef SQZ_CUDA_SIM
    sqzsim::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

/* waits until at most N of this thread's committed groups are still in flight */
template <int N> __device__ __forceinline__ void cp_async_wait()
{
#ifdef SQZ_CUDA_SIM
    sqzsim::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

} // namespace sqzk

#endif
