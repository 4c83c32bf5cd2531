/* cuda-sim: the CUDA backend's device code run on the host CPU, so that kernels are checked in
 * every CI run before they meet a GPU.
 *
 * cuda/cuda_backend.cu is compiled a second time by the host C++ compiler with SQZ_CUDA_SIM
 * defined; this header then stands in for the CUDA runtime. What it models:
 * - every CUDA thread is a fiber with its own stack; the threads of a block run one at a
 *   time, each until it reaches a barrier, a warp-collective operation or its end, in an
 *   order the schedule chooses (forward, reverse or a seeded random permutation, new at
 *   every barrier), and a warp runs on to the next barrier before the next warp starts (the
 *   random order sometimes interleaves warps instead), so a missing __syncthreads or
 *   __syncwarp changes the answer;
 * - blocks run one after another, in the schedule's order too;
 * - warp-collective operations (shuffles, __syncwarp, mma.sync, ldmatrix) wait for every
 *   lane their mask names and are computed from the documented register layouts; a lane
 *   missing, exited or at a different collective is reported as a fault;
 * - a cp.async copy lands at the latest moment the rules allow (the cp.async.wait_group that
 *   covers it) in the forward order, at the earliest (when issued) in the reverse order, and
 *   at either in the random order;
 * - dynamic shared memory is a heap block of exactly the launch's size, filled with 0xff
 *   bytes (NaN as fp32, fp16 and bf16) at the start of every block; static __shared__
 *   variables are refused at compile time because they could not be re-poisoned;
 * - launch limits of an sm_90 device (grid, block, dynamic shared memory with and without
 *   cudaFuncSetAttribute) and the alignment that cp.async and ldmatrix need are checked;
 * - device memory is host memory (AddressSanitizer sees every access), filled with 0xff
 *   bytes when allocated; streams are synchronous (an event is complete when recorded, a
 *   stream's wait for one has nothing to wait for), except that a device-to-host copy into
 *   pinned memory lands only when the host synchronises with it, its destination 0xff bytes
 *   until then; graphs record launches and replay them with the arguments they were captured
 *   with, as CUDA graphs do.
 * A fault (a broken rule above) prints where it happened and aborts: it is a bug in a kernel.
 * What it cannot show (accumulation order inside the tensor cores, timing, bank conflicts,
 * register spills) is listed in docs/engineering.md. */
#ifndef SQZ_CUDA_SIM_H
#define SQZ_CUDA_SIM_H

#ifndef __cplusplus
#error "cuda_sim.h is C++"
#endif

/* CUDA's keywords, defined before CUDA's headers so that they keep these meanings */
#define __host__
#define __device__
#define __global__
#define __constant__
/* see above: kernels take shared memory through SQZ_DYNAMIC_SHARED */
#define __shared__ static_shared_memory_is_not_supported_by_cuda_sim_use_SQZ_DYNAMIC_SHARED

#include <vector_types.h>     /* dim3, uint4, float4: CUDA's own type definitions */
#include <vector_functions.h> /* make_float2, make_uint4, ... */
#include <driver_types.h>     /* cudaError_t, cudaDeviceProp, the handle types */
#include <cuda_bf16.h>        /* host conversions, bit-exact round to nearest even */
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace sqzsim {

/* what device code sees of the running CUDA thread */
struct ThreadIds {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
};
extern thread_local ThreadIds *current_ids;

/* ---- device-side operations (called by the running fiber) ---------------------------- */
void syncthreads();
void syncwarp(unsigned mask);
uint64_t shuffle(unsigned mask, uint64_t value, int src_lane, const char *what);
int lane_id();
void *dynamic_shared(size_t *bytes);
[[noreturn]] void fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

enum MmaType { MMA_F16, MMA_BF16 };
void mma_m16n8k16(MmaType type, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
void ldmatrix(int matrices, bool trans, uint32_t *regs, const void *row_address);
void cp_async(void *shared_dst, const void *global_src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups_allowed);
/* griddepcontrol.wait: marks the thread as having waited (a launch that overlaps the previous
 * kernel faults when a thread reaches a barrier, a collective, a cp.async or its end first) */
void wait_for_previous_grid();

/* ---- host side --------------------------------------------------------------------- */
/* Runs (or, during graph capture, records) one launch; body calls the kernel. `overlapped`: a
 * programmatic dependent launch, whose threads must wait for the previous grid first. */
cudaError_t launch(const char *name, const void *kernel, dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, std::function<void()> body, bool overlapped = false);

/* The order in which a stream's launches run their blocks, and each block its threads between
 * synchronisation points: "forward" (the default), "reverse", "random" or "random:SEED" (a
 * new permutation each time, from a generator seeded once per stream). False if `text` is
 * none of these. */
bool set_schedule(cudaStream_t stream, const char *text);

namespace api {
/* The subset of the CUDA runtime API the backend calls, with the same names and meanings. */
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t stop);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char *cudaGetErrorName(cudaError_t err);
const char *cudaGetErrorString(cudaError_t err);
cudaError_t sim_func_set_attribute(const void *func, cudaFuncAttribute attr, int value);
template <typename F> cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute attr, int value)
{
    return sim_func_set_attribute((const void *)func, attr, value);
}
} // namespace api
} // namespace sqzsim

/* the backend's calls go to the simulation (CUDA's own header declares the real ones too) */
#ifndef SQZ_CUDA_SIM_RUNTIME
#define cudaGetDeviceCount sqzsim::api::cudaGetDeviceCount
#define cudaGetDeviceProperties sqzsim::api::cudaGetDeviceProperties
#define cudaSetDevice sqzsim::api::cudaSetDevice
#define cudaDriverGetVersion sqzsim::api::cudaDriverGetVersion
#define cudaStreamCreateWithFlags sqzsim::api::cudaStreamCreateWithFlags
#define cudaStreamDestroy sqzsim::api::cudaStreamDestroy
#define cudaStreamSynchronize sqzsim::api::cudaStreamSynchronize
#define cudaStreamWaitEvent sqzsim::api::cudaStreamWaitEvent
#define cudaStreamBeginCapture sqzsim::api::cudaStreamBeginCapture
#define cudaStreamEndCapture sqzsim::api::cudaStreamEndCapture
#define cudaGraphInstantiate sqzsim::api::cudaGraphInstantiate
#define cudaGraphLaunch sqzsim::api::cudaGraphLaunch
#define cudaGraphDestroy sqzsim::api::cudaGraphDestroy
#define cudaGraphExecDestroy sqzsim::api::cudaGraphExecDestroy
#define cudaMalloc sqzsim::api::cudaMalloc
#define cudaFree sqzsim::api::cudaFree
#define cudaMallocHost sqzsim::api::cudaMallocHost
#define cudaHostAlloc sqzsim::api::cudaHostAlloc
#define cudaFreeHost sqzsim::api::cudaFreeHost
#define cudaMemcpyAsync sqzsim::api::cudaMemcpyAsync
#define cudaMemsetAsync sqzsim::api::cudaMemsetAsync
#define cudaEventCreate sqzsim::api::cudaEventCreate
#define cudaEventCreateWithFlags sqzsim::api::cudaEventCreateWithFlags
#define cudaEventQuery sqzsim::api::cudaEventQuery
#define cudaEventDestroy sqzsim::api::cudaEventDestroy
#define cudaEventRecord sqzsim::api::cudaEventRecord
#define cudaEventSynchronize sqzsim::api::cudaEventSynchronize
#define cudaEventElapsedTime sqzsim::api::cudaEventElapsedTime
#define cudaGetLastError sqzsim::api::cudaGetLastError
#define cudaPeekAtLastError sqzsim::api::cudaPeekAtLastError
#define cudaGetErrorName sqzsim::api::cudaGetErrorName
#define cudaGetErrorString sqzsim::api::cudaGetErrorString
#define cudaFuncSetAttribute sqzsim::api::cudaFuncSetAttribute
#endif

#define threadIdx (::sqzsim::current_ids->thread_idx)
#define blockIdx (::sqzsim::current_ids->block_idx)
#define blockDim (::sqzsim::current_ids->block_dim)
#define gridDim (::sqzsim::current_ids->grid_dim)

inline void __syncthreads() { sqzsim::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { sqzsim::syncwarp(mask); }

/* shuffles of 4- and 8-byte values, with CUDA's rules for width < 32 */
template <typename T> inline T sim_shfl_result(uint64_t bits)
{
    T v;
    memcpy(&v, &bits, sizeof v);
    return v;
}
template <typename T> inline uint64_t sim_shfl_bits(T v)
{
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 4- or 8-byte values");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    return bits;
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    const int lane = sqzsim::lane_id(), base = lane & ~(width - 1);
    return sim_shfl_result<T>(sqzsim::shuffle(mask, sim_shfl_bits(v), base + (src & (width - 1)), "__shfl_sync"));
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    const int lane = sqzsim::lane_id(), base = lane & ~(width - 1);
    int src = lane ^ lane_mask;
    if (src >= base + width) /* a later group: the lane keeps its own value */
        src = lane;
    return sim_shfl_result<T>(sqzsim::shuffle(mask, sim_shfl_bits(v), src, "__shfl_xor_sync"));
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    const int lane = sqzsim::lane_id(), base = lane & ~(width - 1);
    int src = lane + (int)delta;
    if (src >= base + width)
        src = lane;
    return sim_shfl_result<T>(sqzsim::shuffle(mask, sim_shfl_bits(v), src, "__shfl_down_sync"));
}

/* atomics: the threads of a simulation run one at a time, so a plain update is atomic */
inline unsigned atomicMax(unsigned *address, unsigned value)
{
    const unsigned old = *address;
    *address = old > value ? old : value;
    return old;
}
inline unsigned __float_as_uint(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}

/* device maths that the C++ library lacks */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

#endif
