/* cuda-sim itself: that it finds what it exists to find, and that its emulations follow the
 * documented semantics. Small kernels written here run through the same launch path as the
 * backend's:
 * - a missing __syncthreads or __syncwarp changes the answer between thread orders, while
 *   the same kernels with the barrier agree in every order;
 * - mma.sync m16n8k16 (fp16 and bf16) equals A B + C for registers filled by the PTX ISA's
 *   fragment tables, ldmatrix (x1/x2/x4, transposed or not) hands each lane the documented
 *   elements, shuffles follow CUDA's rules for xor and width;
 * - cp.async lands at the wait_group that covers it (forward order) or when issued (reverse
 *   order), and fills zeros past src_bytes;
 * - launch limits of sm_90 are enforced with messages that say what to do;
 * - graphs replay the arguments they captured;
 * - a device-to-host copy into pinned memory lands only when the host waits for it (an event
 *   recorded after it, its stream), reads as NaN until then, and copies the source as it was
 *   in stream order; a copy into pageable memory lands at once; a stream's wait for an event
 *   lands nothing on the host;
 * - CUDA's fp16/bf16 conversions, which cuda-sim uses, round exactly as the formats define;
 * - broken kernels (shuffle outside the mask, misaligned cp.async, ldmatrix outside shared
 *   memory, a lane that ends while its warp waits, divergent collectives, a block that
 *   deadlocks) are stopped with a message naming the kernel, block and thread.
 * Also the host logic of the CUDA backend's cuBLASLt plan cache (cuda/cuda_lt_key.h): keys
 * found again, every key field telling keys apart, empty slots filled before the least
 * recently used is replaced (cuBLASLt itself does not exist here). */
#define SQZ_CUDA_SIM 1
#define sqzk sqzk_test

#include "cuda/cuda_prims.cuh"

#include "cuda/cuda_lt_key.h"

#include <signal.h>
#include <sys/wait.h>

#include <string>
#include <vector>

#include "tests/test_float16.h"
#include "tests/test_util.h"

using sqzk::cp_async_16;

/* a stream whose launches run in the given thread order */
struct scheduled_stream {
    cudaStream_t s = nullptr;
    explicit scheduled_stream(const char *schedule)
    {
        assert_int_equal(cudaStreamCreateWithFlags(&s, 0), cudaSuccess);
        assert_true(sqzsim::set_schedule(s, schedule));
    }
    ~scheduled_stream() { cudaStreamDestroy(s); }
    operator cudaStream_t() const { return s; }
};

/* ---- barriers ------------------------------------------------------------------------ */

template <bool BARRIER> __global__ void neighbour_after_write(int *out)
{
    SQZ_DYNAMIC_SHARED(smem);
    int *a = (int *)smem;
    const int t = threadIdx.x, n = blockDim.x;
    a[t] = t + 1;
    if (BARRIER)
        __syncthreads();
    out[t] = a[(t + 1) % n];
}

template <bool BARRIER> std::vector<int> run_neighbour(const char *schedule, int threads)
{
    std::vector<int> out((size_t)threads, 0);
    scheduled_stream s(schedule);
    sqz_launch("neighbour_after_write", neighbour_after_write<BARRIER>, 1, threads, threads * sizeof(int), s,
               out.data());
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    return out;
}

static void a_missing_syncthreads_changes_the_answer(void **unused)
{
    for (int threads : {64, 96, 1024}) {
        std::vector<int> want((size_t)threads);
        for (int t = 0; t < threads; t++)
            want[(size_t)t] = (t + 1) % threads + 1;
        for (const char *schedule : {"forward", "reverse", "random:5"})
            assert_true(run_neighbour<true>(schedule, threads) == want);
        const std::vector<int> fwd = run_neighbour<false>("forward", threads),
                               rev = run_neighbour<false>("reverse", threads);
        assert_true(fwd != rev);
        assert_true(fwd != want || rev != want);
    }
}

template <bool SYNC> __global__ void warp_neighbour(int *out)
{
    SQZ_DYNAMIC_SHARED(smem);
    int *a = (int *)smem;
    const int t = threadIdx.x;
    a[t] = 10 * t;
    if (SYNC)
        __syncwarp();
    out[t] = a[t ^ 1];
}

template <bool SYNC> std::vector<int> run_warp_neighbour(const char *schedule)
{
    std::vector<int> out(32, 0);
    scheduled_stream s(schedule);
    sqz_launch("warp_neighbour", warp_neighbour<SYNC>, 1, 32, 32 * sizeof(int), s, out.data());
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    return out;
}

static void a_missing_syncwarp_changes_the_answer(void **unused)
{
    std::vector<int> want(32);
    for (int t = 0; t < 32; t++)
        want[(size_t)t] = 10 * (t ^ 1);
    for (const char *schedule : {"forward", "reverse", "random:9"})
        assert_true(run_warp_neighbour<true>(schedule) == want);
    assert_true(run_warp_neighbour<false>("forward") != run_warp_neighbour<false>("reverse"));
}

/* ---- shuffles ------------------------------------------------------------------------ */

__global__ void shuffles(int *xor1, int *xor_w8, int *idx_w16, int *down)
{
    const int t = threadIdx.x;
    xor1[t] = __shfl_xor_sync(0xffffffffu, t * 3, 1);
    xor_w8[t] = __shfl_xor_sync(0xffffffffu, t * 3, 8, 8); /* a later group of 8 gives the lane's own value */
    idx_w16[t] = __shfl_sync(0xffffffffu, t * 3, 5, 16);
    down[t] = __shfl_down_sync(0xffffffffu, t * 3, 4);
}

static void shuffles_follow_cuda(void **unused)
{
    int a[32], b[32], c[32], d[32];
    sqz_launch("shuffles", shuffles, 1, 32, 0, scheduled_stream("reverse"), a, b, c, d);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int t = 0; t < 32; t++) {
        assert_int_equal(a[t], (t ^ 1) * 3);
        assert_int_equal(b[t], ((t ^ 8) >= (t & ~7) + 8 ? t : t ^ 8) * 3);
        assert_int_equal(c[t], ((t & ~15) + 5) * 3);
        assert_int_equal(d[t], (t + 4 < 32 ? t + 4 : t) * 3);
    }
}

/* ---- tensor-core operations ------------------------------------------------------------- */

template <typename T> static uint16_t bits16(float f);
template <> uint16_t bits16<__half>(float f) { return test_half_bits(f); }
template <> uint16_t bits16<__nv_bfloat16>(float f) { return test_bf16_bits(f); }

/* registers per lane, filled on the host from the PTX ISA's tables for mma.m16n8k16 */
struct mma_io {
    uint32_t a[32][4], b[32][2];
    float c[32][4], d[32][4];
};

template <typename T> __global__ void one_mma(mma_io *io)
{
    const int l = threadIdx.x;
    uint32_t a[4], b[2];
    float acc[4];
    for (int i = 0; i < 4; i++)
        a[i] = io->a[l][i], acc[i] = io->c[l][i];
    b[0] = io->b[l][0], b[1] = io->b[l][1];
    sqzk::mma_16816<T>(acc, a, b);
    for (int i = 0; i < 4; i++)
        io->d[l][i] = acc[i];
}

template <typename T> static void check_mma(void)
{
    uint64_t rng = 77;
    float A[16][16], B[16][8], C[16][8];
    mma_io io;
    memset(&io, 0, sizeof io);
    /* every element of A, B and C, placed where the tables say its lane and register are */
    for (int row = 0; row < 16; row++)
        for (int col = 0; col < 16; col++) {
            const uint16_t h = bits16<T>(4 * test_uniform(&rng));
            A[row][col] = std::is_same<T, __half>::value ? test_half_value(h) : test_bf16_value(h);
            const int lane = (row % 8) * 4 + (col % 8) / 2;
            const int reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0), upper = col % 2;
            io.a[lane][reg] |= (uint32_t)h << (16 * upper);
        }
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) {
            const uint16_t h = bits16<T>(4 * test_uniform(&rng));
            B[k][n] = std::is_same<T, __half>::value ? test_half_value(h) : test_bf16_value(h);
            const int lane = n * 4 + (k % 8) / 2;
            io.b[lane][k >= 8 ? 1 : 0] |= (uint32_t)h << (16 * (k % 2));
        }
    for (int row = 0; row < 16; row++)
        for (int n = 0; n < 8; n++) {
            C[row][n] = test_uniform(&rng);
            io.c[(row % 8) * 4 + n / 2][(row >= 8 ? 2 : 0) + n % 2] = C[row][n];
        }
    sqz_launch("one_mma", one_mma<T>, 1, 32, 0, scheduled_stream("random:3"), &io);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int row = 0; row < 16; row++)
        for (int n = 0; n < 8; n++) {
            double want = C[row][n];
            for (int k = 0; k < 16; k++)
                want += (double)A[row][k] * B[k][n];
            const float got = io.d[(row % 8) * 4 + n / 2][(row >= 8 ? 2 : 0) + n % 2];
            assert_true(fabs(got - want) <= 1e-6 * fmax(1.0, fabs(want)));
        }
}

static void mma_is_a_b_plus_c_in_the_documented_layout(void **unused)
{
    check_mma<__half>();
    check_mma<__nv_bfloat16>();
}

template <int N, bool TRANS> __global__ void load_matrices(const uint16_t *tile, int pitch, uint32_t *out)
{
    SQZ_DYNAMIC_SHARED(smem);
    uint16_t *s = (uint16_t *)smem;
    for (int i = threadIdx.x; i < 32 * pitch; i += 32)
        s[i] = tile[i];
    __syncwarp();
    const int l = threadIdx.x;
    /* lane l gives row l % 8 of matrix l / 8: matrices side by side, 8 columns apart */
    uint32_t r[N];
    sqzk::ldmatrix<N, TRANS>(r, s + (l % 8) * pitch + (l / 8 % N) * 8);
    for (int i = 0; i < N; i++)
        out[l * 4 + i] = r[i];
}

template <int N, bool TRANS> static void check_ldmatrix(void)
{
    const int pitch = 40; /* 80 bytes: rows 16-byte aligned, matrices at columns 0, 8, 16, 24 */
    std::vector<uint16_t> tile((size_t)(32 * pitch));
    for (size_t i = 0; i < tile.size(); i++)
        tile[i] = (uint16_t)(i * 7 + 1);
    std::vector<uint32_t> out(32 * 4, 0);
    sqz_launch("load_matrices", load_matrices<N, TRANS>, 1, 32, 32 * pitch * 2, scheduled_stream("reverse"), tile.data(),
               pitch, out.data());
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int l = 0; l < 32; l++)
        for (int m = 0; m < N; m++)
            for (int j = 0; j < 2; j++) {
                /* the element (row, column) of matrix m this lane's half j holds */
                const int row = TRANS ? 2 * (l % 4) + j : l / 4, col = TRANS ? l / 4 : 2 * (l % 4) + j;
                const uint16_t want = tile[(size_t)(row * pitch + m * 8 + col)];
                assert_int_equal((out[(size_t)(l * 4 + m)] >> (16 * j)) & 0xffff, want);
            }
}

static void ldmatrix_hands_out_the_documented_elements(void **unused)
{
    check_ldmatrix<1, false>();
    check_ldmatrix<2, false>();
    check_ldmatrix<4, false>();
    check_ldmatrix<1, true>();
    check_ldmatrix<2, true>();
    check_ldmatrix<4, true>();
}

/* ---- cp.async ---------------------------------------------------------------------------- */

__global__ void async_copies(const float *src, float *seen)
{
    SQZ_DYNAMIC_SHARED(smem);
    float *s = (float *)smem;
    if (threadIdx.x != 0)
        return;
    cp_async_16(s, src, 16);
    cp_async_16(s + 4, src + 4, 8); /* half read, half zeros */
    sqzk::cp_async_commit();
    cp_async_16(s + 8, src + 8, 0); /* nothing read: zeros */
    sqzk::cp_async_commit();
    for (int i = 0; i < 12; i++)
        seen[i] = s[i]; /* before any wait: nothing has landed */
    sqzk::cp_async_wait<1>();
    for (int i = 0; i < 12; i++)
        seen[12 + i] = s[i]; /* the first group only */
    sqzk::cp_async_wait<0>();
    for (int i = 0; i < 12; i++)
        seen[24 + i] = s[i];
}

static void cp_async_lands_at_the_latest_or_earliest_moment(void **unused)
{
    float *src = nullptr;
    assert_int_equal(cudaMalloc((void **)&src, 16 * sizeof(float)), cudaSuccess);
    for (int i = 0; i < 16; i++)
        src[i] = (float)(i + 1);
    float seen[36];
    sqz_launch("async_copies", async_copies, 1, 32, 64, scheduled_stream("forward"), src, seen);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int i = 0; i < 12; i++)
        assert_true(isnan(seen[i])); /* shared memory starts as NaN */
    for (int i = 0; i < 12; i++) {
        const float first = i < 4 ? (float)(i + 1) : i < 6 ? (float)(i + 1) : i < 8 ? 0.0f : NAN;
        if (i < 8)
            assert_true(seen[12 + i] == first);
        else
            assert_true(isnan(seen[12 + i]));
        assert_true(seen[24 + i] == (i < 6 ? (float)(i + 1) : 0.0f));
    }
    /* the reverse order lands every copy as early as allowed: when it is issued */
    sqz_launch("async_copies", async_copies, 1, 32, 64, scheduled_stream("reverse"), src, seen);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int i = 0; i < 36; i++)
        assert_true(seen[i] == (i % 12 < 6 ? (float)(i % 12 + 1) : 0.0f));
    cudaFree(src);
}

/* ---- launches and graphs ---------------------------------------------------------------- */

__global__ void set_value(int *p, int v) { p[threadIdx.x + blockIdx.x * blockDim.x] = v; }

static void launch_limits_are_enforced(void **unused)
{
    int *p = nullptr;
    sqz_launch("set_value", set_value, dim3(1, 1, 70000), 1, 0, nullptr, p, 1);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    sqz_launch("set_value", set_value, dim3(1, 1, 70000), 1, 0, nullptr, p, 1);
    assert_non_null(strstr(cudaGetErrorString(cudaGetLastError()), "65535"));
    sqz_launch("set_value", set_value, 1, 1025, 0, nullptr, p, 1);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    sqz_launch("set_value", set_value, 1, dim3(1, 1, 65), 0, nullptr, p, 1);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    /* dynamic shared memory above 48 KiB needs the attribute, up to sm_90's 227 KiB */
    std::vector<int> out(1, 0);
    sqz_launch("neighbour_after_write", neighbour_after_write<true>, 1, 1, 64 * 1024, nullptr, out.data());
    const cudaError_t refused = cudaGetLastError();
    assert_int_equal(refused, cudaErrorInvalidValue);
    assert_non_null(strstr(cudaGetErrorString(refused), "cudaFuncSetAttribute"));
    assert_int_equal(cudaFuncSetAttribute(neighbour_after_write<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          300 * 1024),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue); /* recorded, as the runtime does */
    assert_int_equal(cudaFuncSetAttribute(neighbour_after_write<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          64 * 1024),
                     cudaSuccess);
    sqz_launch("neighbour_after_write", neighbour_after_write<true>, 1, 1, 64 * 1024, nullptr, out.data());
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_int_equal(out[0], 1);
    sqz_launch("neighbour_after_write", neighbour_after_write<true>, 1, 1, 65 * 1024, nullptr, out.data());
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
}

static void graphs_replay_what_they_captured(void **unused)
{
    scheduled_stream s("forward");
    int values[64];
    memset(values, 0, sizeof values);
    int v = 7;
    assert_int_equal(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    sqz_launch("set_value", set_value, 2, 32, 0, s, values, v);
    assert_int_equal(values[0], 0); /* captured, not run */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    assert_int_equal(cudaStreamEndCapture(s, &graph), cudaSuccess);
    assert_int_equal(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    v = 9; /* a later value of the argument does not reach the graph */
    assert_int_equal(cudaGraphLaunch(exec, s), cudaSuccess);
    for (int i = 0; i < 64; i++)
        assert_int_equal(values[i], 7);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
}

/* ---- copies and events ---------------------------------------------------------------- */

static void pinned_copies_land_when_the_host_waits(void **unused)
{
    cudaStream_t compute, copy;
    assert_int_equal(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking), cudaSuccess);
    int *dev = nullptr, *pinned = nullptr, pageable[64];
    assert_int_equal(cudaMalloc((void **)&dev, 64 * sizeof(int)), cudaSuccess);
    assert_int_equal(cudaHostAlloc((void **)&pinned, 64 * sizeof(int), cudaHostAllocPortable), cudaSuccess);
    cudaEvent_t before, ready, done;
    assert_int_equal(cudaEventCreateWithFlags(&before, cudaEventDisableTiming), cudaSuccess);
    assert_int_equal(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), cudaSuccess);
    assert_int_equal(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), cudaSuccess);
    sqz_launch("set_value", set_value, 2, 32, 0, compute, dev, 7);
    assert_int_equal(cudaEventRecord(ready, compute), cudaSuccess);
    assert_int_equal(cudaStreamWaitEvent(copy, ready, 0), cudaSuccess);
    assert_int_equal(cudaEventRecord(before, copy), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(pinned, dev, 64 * sizeof(int), cudaMemcpyDeviceToHost, copy), cudaSuccess);
    assert_int_equal(cudaEventRecord(done, copy), cudaSuccess);
    assert_int_equal(pinned[3], -1); /* in flight: 0xff bytes */
    sqz_launch("set_value", set_value, 2, 32, 0, compute, dev, 9); /* later in stream order */
    assert_int_equal(cudaStreamWaitEvent(compute, done, 0), cudaSuccess); /* the device waits, not the host */
    assert_int_equal(cudaEventSynchronize(before), cudaSuccess);          /* recorded before the copy */
    assert_int_equal(pinned[3], -1);
    assert_int_equal(cudaEventSynchronize(done), cudaSuccess);
    for (int i = 0; i < 64; i++)
        assert_int_equal(pinned[i], 7); /* the source as it was when the copy's turn came */
    assert_int_equal(cudaMemcpyAsync(pageable, dev, sizeof pageable, cudaMemcpyDeviceToHost, copy), cudaSuccess);
    assert_int_equal(pageable[63], 9); /* pageable: synchronous, as in CUDA */
    assert_int_equal(cudaMemcpyAsync(pinned, dev, 64 * sizeof(int), cudaMemcpyDeviceToHost, copy), cudaSuccess);
    assert_int_equal(pinned[0], -1);
    assert_int_equal(cudaStreamSynchronize(copy), cudaSuccess);
    assert_int_equal(pinned[0], 9);
    assert_int_equal(cudaMemcpyAsync(pinned, dev, 64 * sizeof(int), cudaMemcpyDeviceToHost, copy), cudaSuccess);
    assert_int_equal(cudaEventRecord(done, copy), cudaSuccess);
    assert_int_equal(cudaEventQuery(done), cudaSuccess); /* complete: landed */
    assert_int_equal(pinned[1], 9);
    assert_int_equal(cudaFreeHost(pageable), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpyAsync(pinned, dev, 64 * sizeof(int), cudaMemcpyDeviceToHost, copy), cudaSuccess);
    assert_int_equal(cudaFreeHost(pinned), cudaSuccess); /* lands first, then frees (ASan would see a late write) */
    for (cudaEvent_t e : {before, ready, done})
        cudaEventDestroy(e);
    cudaFree(dev);
    cudaStreamDestroy(compute);
    cudaStreamDestroy(copy);
}

/* ---- conversions ---------------------------------------------------------------------- */

static void conversions_round_to_nearest_even(void **unused)
{
    /* every fp16 and every bf16 value, the midpoints between neighbours (ties) and points just
     * either side of them, plus overflow, subnormals and signed zeros */
    std::vector<float> xs = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, -1e-8f, 3e38f, -3e38f, INFINITY};
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        const double a = test_half_value((uint16_t)h), b = test_half_value((uint16_t)(h + 1));
        xs.push_back((float)a);
        if ((h & 0x7fff) != 0x7bff && (h & 0x7fff) != 0x7fff && (h & 0x8000) == ((h + 1) & 0x8000)) {
            const float mid = (float)((a + b) / 2);
            xs.push_back(mid);
            xs.push_back(nextafterf(mid, INFINITY));
            xs.push_back(nextafterf(mid, -INFINITY));
        }
    }
    for (uint32_t h = 0; h < 0x10000; h += 7)
        if (!isnan(test_bf16_value((uint16_t)h)))
            xs.push_back(test_bf16_value((uint16_t)h) * 1.00390625f); /* a quarter step and ties */
    /* NaN stays NaN (its payload is not part of the definition) */
    assert_true(__hisnan(__float2half_rn(NAN)));
    assert_true(isnan(__bfloat162float(__float2bfloat16_rn(NAN))));
    uint64_t rng = 1;
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = (uint32_t)(test_uniform(&rng) * 2147483647.0f) * 2u + (uint32_t)(i & 1);
        float f;
        memcpy(&f, &bits, 4);
        if (!isnan(f))
            xs.push_back(f);
    }
    for (float x : xs) {
        const __half h = __float2half_rn(x);
        const __nv_bfloat16 b = __float2bfloat16_rn(x);
        uint16_t hb, bb;
        memcpy(&hb, &h, 2);
        memcpy(&bb, &b, 2);
        if (hb != test_half_bits(x))
            fail_msg("fp16 of %.9g: CUDA 0x%04x, by definition 0x%04x", (double)x, hb, test_half_bits(x));
        if (bb != test_bf16_bits(x))
            fail_msg("bf16 of %.9g: CUDA 0x%04x, by definition 0x%04x", (double)x, bb, test_bf16_bits(x));
        if (__half2float(h) != test_half_value(hb) && !isnan(test_half_value(hb)))
            fail_msg("fp16 0x%04x back to fp32 differs", hb);
        if (__bfloat162float(b) != test_bf16_value(bb))
            fail_msg("bf16 0x%04x back to fp32 differs", bb);
    }
}

/* ---- faults --------------------------------------------------------------------------------- */

__global__ void shuffle_outside_mask(int *out)
{
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 20);
}

__global__ void shuffle_by_lane_outside_mask(int *out)
{
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);
}

__global__ void misaligned_cp_async(const float *src)
{
    SQZ_DYNAMIC_SHARED(smem);
    cp_async_16(smem + 4, src, 16);
}

__global__ void ldmatrix_outside_shared(uint32_t *out)
{
    SQZ_DYNAMIC_SHARED(smem);
    uint32_t r[1];
    sqzk::ldmatrix<1, false>(r, smem + 1024);
    out[threadIdx.x] = r[0];
}

__global__ void writes_without_waiting(int *out) { out[threadIdx.x] = 1; }

__global__ void waits_then_writes(int *out)
{
    sqz_wait_for_previous_grid();
    out[threadIdx.x] = 2;
}

__global__ void copies_before_waiting(const float *src)
{
    SQZ_DYNAMIC_SHARED(smem);
    sqzk::cp_async_16(smem, src, 16);
    sqz_wait_for_previous_grid();
    sqzk::cp_async_commit();
    sqzk::cp_async_wait<0>();
}

__global__ void lane_ends_early(int *out)
{
    if (threadIdx.x == 3)
        return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void divergent_collectives(int *out)
{
    if (threadIdx.x < 16)
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
    else
        __syncwarp();
}

__global__ void barrier_against_syncwarp(int *out)
{
    if (threadIdx.x < 16)
        __syncthreads(); /* waits for lanes 16-31, which wait at __syncwarp for lanes 0-15 */
    else
        __syncwarp();
    out[threadIdx.x] = 1;
}

/* runs `launch` in a child process; it must abort and print `expected` */
template <typename F> static void expect_fault(F launch, const char *expected)
{
    int pipe_fd[2];
    assert_int_equal(pipe(pipe_fd), 0);
    fflush(stdout);
    fflush(stderr);
    const pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        dup2(pipe_fd[1], 2);
        close(pipe_fd[0]);
        launch();
        _exit(0);
    }
    close(pipe_fd[1]);
    std::string text;
    char buf[512];
    ssize_t got;
    while ((got = read(pipe_fd[0], buf, sizeof buf)) > 0)
        text.append(buf, (size_t)got);
    close(pipe_fd[0]);
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
        fail_msg("expected an abort with \"%s\"; status 0x%x, stderr: %s", expected, status, text.c_str());
    if (text.find(expected) == std::string::npos)
        fail_msg("expected \"%s\" in: %s", expected, text.c_str());
}

static void broken_kernels_are_stopped(void **unused)
{
    static int out[64];
    static uint32_t words[32];
    static float src[8] __attribute__((aligned(16)));
    expect_fault([] { sqz_launch("shuffle_outside_mask", shuffle_outside_mask, 1, 32, 0, nullptr, out); },
                 "reads lane 20, which its mask 0x0000ffff does not name");
    expect_fault([] { sqz_launch("shuffle_by_lane_outside_mask", shuffle_by_lane_outside_mask, 1, 32, 0, nullptr,
                                 out); },
                 "lane 16 calls it with mask 0x0000ffff, which does not name the lane");
    expect_fault([] { sqz_launch("misaligned_cp_async", misaligned_cp_async, 1, 1, 64, nullptr, (const float *)src); },
                 "must be 16-byte aligned");
    expect_fault([] { sqz_launch("ldmatrix_outside_shared", ldmatrix_outside_shared, 1, 32, 256, nullptr, words); },
                 "outside the block's 256 bytes of shared memory");
    expect_fault([] { sqz_launch("lane_ends_early", lane_ends_early, 1, 32, 0, nullptr, out); }, "lane 3");
    expect_fault([] { sqz_launch("divergent_collectives", divergent_collectives, 1, 32, 0, nullptr, out); },
                 "while lanes");
    expect_fault([] { sqz_launch("barrier_against_syncwarp", barrier_against_syncwarp, 1, 32, 0, nullptr, out); },
                 "deadlock in kernel barrier_against_syncwarp");
    expect_fault([] { sqz_launch("shuffle_outside_mask", shuffle_outside_mask, 2, 32, 0, nullptr, out); },
                 "kernel shuffle_outside_mask, block (");
    /* a launch that may overlap the previous kernel: every thread waits for it first */
    expect_fault([] { sqz_launch_overlapping(true, "writes_without_waiting", writes_without_waiting, 1, 32, 0, nullptr,
                                             out); },
                 "reaches its end before sqz_wait_for_previous_grid()");
    expect_fault([] { sqz_launch_overlapping(true, "copies_before_waiting", copies_before_waiting, 1, 1, 64, nullptr,
                                             (const float *)src); },
                 "reaches cp.async before sqz_wait_for_previous_grid()");
    sqz_launch_overlapping(true, "waits_then_writes", waits_then_writes, 1, 32, 0, nullptr, out);
    sqz_launch("writes_without_waiting", writes_without_waiting, 1, 32, 0, nullptr, out + 32); /* not overlapping */
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int i = 0; i < 32; i++)
        assert_true(out[i] == 2 && out[32 + i] == 1);
}

/* ---- the cuBLASLt plan cache's slot choice ----------------------------------------------- */

struct cached_key {
    lt_key key;
    bool used;
    unsigned long last_used;
};

static lt_key plan_key(int64_t rows)
{
    lt_key k;
    memset(&k, 0, sizeof k);
    k.rows = rows, k.cin = 768, k.cout = 3072, k.groups = 4, k.cin_g = 192, k.cout_g = 768, k.bias = 1;
    k.align_a = k.align_b = k.align_d = k.align_bias = 256, k.workspace = 32 << 20;
    return k;
}

static void lt_cache_finds_keys_and_replaces_the_least_recently_used(void **unused)
{
    (void)unused;
    cached_key e[4] = {};
    bool hit = true;
    unsigned long clock = 0;
    /* what linear_lt does with a slot: fill it on a miss, mark it used now */
    auto use = [&](const lt_key &k) {
        const int i = lt_cache_slot(e, 4, k, &hit);
        if (!hit)
            e[i].key = k, e[i].used = true;
        e[i].last_used = ++clock;
        return i;
    };
    assert_int_equal(lt_cache_slot(e, 4, plan_key(1), &hit), 0);
    assert_false(hit);
    for (int r = 1; r <= 4; r++) {
        assert_int_equal(use(plan_key(r)), r - 1);
        assert_false(hit);
    }
    for (int r = 1; r <= 4; r++) { /* found again; key 1 is now the least recently used */
        assert_int_equal(use(plan_key(r)), r - 1);
        assert_true(hit);
    }
    /* a key that differs from a cached one in any single field is another key */
    static_assert(sizeof(lt_key) % sizeof(int64_t) == 0, "lt_key is all int64_t fields");
    for (size_t f = 0; f < sizeof(lt_key) / sizeof(int64_t); f++) {
        int64_t fields[sizeof(lt_key) / sizeof(int64_t)];
        lt_key k = plan_key(2);
        memcpy(fields, &k, sizeof k);
        fields[f] += 1000; /* (rows + 1 would be the next key's) */
        memcpy(&k, fields, sizeof k);
        assert_int_equal(lt_cache_slot(e, 4, k, &hit), 0); /* a miss: the least recently used */
        assert_false(hit);
    }
    use(plan_key(1)); /* now key 2 is the least recently used */
    assert_true(hit);
    assert_int_equal(use(plan_key(5)), 1);
    assert_false(hit);
    assert_int_equal(lt_cache_slot(e, 4, plan_key(2), &hit), 2); /* replaced: gone; key 3 is next to go */
    assert_false(hit);
    for (int r : {1, 3, 4, 5}) {
        lt_cache_slot(e, 4, plan_key(r), &hit);
        assert_true(hit);
    }
    /* an emptied slot is filled before anything is replaced, and its old key is not found */
    e[2].used = false;
    assert_int_equal(lt_cache_slot(e, 4, plan_key(3), &hit), 2);
    assert_false(hit);
    assert_int_equal(lt_cache_slot(e, 4, plan_key(9), &hit), 2);
    assert_false(hit);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_missing_syncthreads_changes_the_answer),
        cmocka_unit_test(a_missing_syncwarp_changes_the_answer),
        cmocka_unit_test(shuffles_follow_cuda),
        cmocka_unit_test(mma_is_a_b_plus_c_in_the_documented_layout),
        cmocka_unit_test(ldmatrix_hands_out_the_documented_elements),
        cmocka_unit_test(cp_async_lands_at_the_latest_or_earliest_moment),
        cmocka_unit_test(launch_limits_are_enforced),
        cmocka_unit_test(graphs_replay_what_they_captured),
        cmocka_unit_test(pinned_copies_land_when_the_host_waits),
        cmocka_unit_test(conversions_round_to_nearest_even),
        cmocka_unit_test(broken_kernels_are_stopped),
        cmocka_unit_test(lt_cache_finds_keys_and_replaces_the_least_recently_used),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
