/* cuda-sim's runtime: fibers for CUDA threads, the scheduler, warp-collective operations,
 * cp.async, launch checks and the runtime API subset. The model is described in cuda_sim.h. */
#define SQZ_CUDA_SIM_RUNTIME 1 /* this file defines the runtime calls: no redirection */
#include "cuda/sim/cuda_sim.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <deque>
#include <set>
#include <vector>

/* Switching fibers: on x86-64 a few instructions that swap the callee-saved registers and
 * the stack pointer (swapcontext also saves the signal mask, two system calls per switch,
 * which made switching most of the simulation's time); elsewhere ucontext. */
#if defined(__x86_64__)
#define SIM_FAST_SWITCH 1
extern "C" void sqzsim_switch(void **save_sp, void *next_sp);
__asm__(".text\n"
        ".globl sqzsim_switch\n"
        ".type sqzsim_switch,@function\n"
        "sqzsim_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size sqzsim_switch, .-sqzsim_switch\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIM_ASAN 1
#endif
#endif
#ifdef SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

/* the runtime's opaque handles, defined here for the simulation */
/* a device-to-host copy into pinned memory, not yet landed (see cudaMemcpyAsync below) */
struct PendingCopy {
    void *dst;
    std::vector<unsigned char> bytes; /* the source as it was in stream order */
    uint64_t number;                  /* its place in the stream's order of copies */
};
struct CUstream_st {
    std::deque<PendingCopy> pending;
    uint64_t copies = 0; /* device-to-host copies into pinned memory enqueued so far */
    bool capturing = false;
    std::vector<struct SimLaunch> captured;
    int mode = 0; /* 0 forward, 1 reverse, 2 random */
    uint64_t seed = 1;
    std::mt19937_64 rng{1};
};
struct SimLaunch {
    const char *name;
    const void *kernel;
    dim3 grid, block;
    size_t shared_bytes;
    std::function<void()> body;
    bool overlapped; /* programmatic dependent launch */
};
struct CUgraph_st {
    std::vector<SimLaunch> launches;
};
struct CUgraphExec_st {
    std::vector<SimLaunch> launches;
};
struct CUevent_st {
    std::chrono::steady_clock::time_point at;
    bool recorded = false;
    CUstream_st *stream = nullptr; /* where it was last recorded */
    uint64_t copies = 0;           /* the stream's copies before it */
};

namespace sqzsim {

thread_local ThreadIds *current_ids;

namespace {

constexpr int WARP = 32;
constexpr size_t STACK_BYTES = 512 * 1024; /* AddressSanitizer's frames are large */
constexpr size_t SLOT = 48;                /* bytes of one lane's operands of a collective */
constexpr int MAX_THREADS = 1024;
constexpr size_t DEFAULT_SHARED = 48 * 1024;
constexpr int MAX_SHARED_OPTIN = 232448; /* 227 KiB: sm_90's dynamic shared memory per block */

enum class State { Ready, AtBarrier, AtWarp, Done };
enum class Coll { None, Sync, Shuffle, Mma, Ldmatrix };

struct Copy {
    void *dst;
    const void *src;
    unsigned bytes, src_bytes;
};

struct Fiber {
    ThreadIds ids;
    int linear = 0;
    State state = State::Ready;
#ifdef SIM_FAST_SWITCH
    void *sp = nullptr;
#else
    ucontext_t ctx;
#endif
    char *stack = nullptr;
    void *asan_fake = nullptr;
    bool waited = false;                  /* for the previous grid (griddepcontrol.wait) */
    std::vector<Copy> open;               /* cp.async issued since the last commit */
    std::deque<std::vector<Copy>> groups; /* committed, oldest first */
};

struct WarpState {
    unsigned arrived = 0;
    unsigned mask = 0;
    Coll kind = Coll::None;
    int detail = 0;
    const char *what = "";
    alignas(16) unsigned char in[WARP][SLOT];
    alignas(16) unsigned char out[WARP][SLOT];
};

struct Block {
    const char *kernel = "";
    CUstream_st *stream = nullptr;
    std::vector<Fiber> *fibers = nullptr;
    int n_threads = 0, live = 0, at_barrier = 0;
    std::vector<WarpState> warps;
    unsigned char *shared = nullptr;
    size_t shared_bytes = 0;
    const std::function<void()> *body = nullptr;
    bool overlapped = false; /* its threads must wait for the previous grid first */
#ifdef SIM_FAST_SWITCH
    void *scheduler_sp = nullptr;
#else
    ucontext_t scheduler;
#endif
    const void *scheduler_stack = nullptr;
    size_t scheduler_stack_bytes = 0;
};

thread_local Block *cur_block;
thread_local Fiber *cur_fiber;
thread_local cudaError_t last_error = cudaSuccess;
thread_local char last_detail[640];
thread_local cudaError_t last_detail_code = cudaSuccess;

/* Pinned host allocations (cudaMallocHost, cudaHostAlloc) and the streams that exist, for the
 * copies that land late; shared by every thread. */
std::mutex memory_lock;
std::map<uintptr_t, size_t> pinned; /* start -> bytes */
std::set<CUstream_st *> streams;

std::mutex attr_lock;
std::map<const void *, int> shared_limits; /* cudaFuncAttributeMaxDynamicSharedMemorySize */

cudaError_t fail(cudaError_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t fail(cudaError_t code, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_detail, sizeof last_detail, fmt, args);
    va_end(args);
    last_detail_code = code;
    return code;
}

/* ---- fiber stacks: reused, with a guard page below each ---------------------------------- */
thread_local std::vector<char *> stack_pool;

char *stack_for(size_t index)
{
    while (stack_pool.size() <= index) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *p = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "cuda-sim: cannot map a fiber stack\n");
            abort();
        }
        mprotect(p, page, PROT_NONE); /* an overflowing fiber faults instead of corrupting */
        stack_pool.push_back((char *)p + page);
    }
    return stack_pool[index];
}

/* ---- switching ------------------------------------------------------------------------ */
void enter_fiber(Block &b, Fiber &f)
{
    cur_fiber = &f;
    current_ids = &f.ids;
#ifdef SIM_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, STACK_BYTES);
#endif
#ifdef SIM_FAST_SWITCH
    sqzsim_switch(&b.scheduler_sp, f.sp);
#else
    swapcontext(&b.scheduler, &f.ctx);
#endif
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    cur_fiber = nullptr;
    current_ids = nullptr;
}

void leave_fiber(bool ending)
{
    Fiber &f = *cur_fiber;
    Block &b = *cur_block;
#ifdef SIM_ASAN
    __sanitizer_start_switch_fiber(ending ? nullptr : &f.asan_fake, b.scheduler_stack, b.scheduler_stack_bytes);
#else
    (void)ending;
#endif
#ifdef SIM_FAST_SWITCH
    sqzsim_switch(&f.sp, b.scheduler_sp);
#else
    swapcontext(&f.ctx, &b.scheduler);
#endif
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(f.asan_fake, nullptr, nullptr);
#endif
}

void land(const Copy &c)
{
    memcpy(c.dst, c.src, c.src_bytes);
    memset((char *)c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
}

const char *coll_name(const WarpState &w) { return w.what; }

/* A thread of a launch that overlaps the previous kernel reaches `what`: it must have waited
 * for that kernel by now (the kernels wait first thing; plain memory reads are not seen here,
 * so this catches a kernel without the wait, not one that reads before it). */
void require_waited(const char *what)
{
    if (cur_block->overlapped && !cur_fiber->waited)
        fault("launched to overlap the previous kernel, it reaches %s before sqz_wait_for_previous_grid()", what);
}

void thread_end()
{
    Fiber &f = *cur_fiber;
    Block &b = *cur_block;
    require_waited("its end");
    for (auto &g : f.groups)
        for (const Copy &c : g)
            land(c);
    for (const Copy &c : f.open)
        land(c);
    f.groups.clear();
    f.open.clear();
    const int lane = f.linear % WARP;
    const WarpState &w = b.warps[(size_t)(f.linear / WARP)];
    if (w.arrived && (w.mask >> lane & 1))
        fault("lane %d ended while lanes 0x%08x of its warp wait for it at %s", lane, w.arrived, coll_name(w));
    f.state = State::Done;
    b.live--;
}

void fiber_main()
{
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &cur_block->scheduler_stack, &cur_block->scheduler_stack_bytes);
#endif
    (*cur_block->body)();
    thread_end();
    leave_fiber(true);
    abort(); /* an ended fiber is never resumed */
}

/* ---- schedules ------------------------------------------------------------------------- */
void permutation(CUstream_st *s, std::vector<int> &order)
{
    for (size_t i = 0; i < order.size(); i++)
        order[i] = (int)i;
    if (s->mode == 1)
        std::reverse(order.begin(), order.end());
    else if (s->mode == 2)
        std::shuffle(order.begin(), order.end(), s->rng);
}

/* ---- collectives --------------------------------------------------------------------- */
unsigned lanes_present(const Block &b, int warp)
{
    const int n = std::min(WARP, b.n_threads - warp * WARP);
    return n >= WARP ? 0xffffffffu : (1u << n) - 1;
}

void compute(Block &b, WarpState &w, int warp)
{
    switch (w.kind) {
    case Coll::Sync:
    case Coll::None:
        break;
    case Coll::Shuffle:
        for (int l = 0; l < WARP; l++) {
            if (!(w.mask >> l & 1))
                continue;
            int src;
            memcpy(&src, w.in[l] + 8, 4);
            if (src < 0 || src >= WARP || !(w.mask >> src & 1))
                fault("%s: lane %d of warp %d reads lane %d, which its mask 0x%08x does not name", w.what, l, warp, src,
                      w.mask);
            memcpy(w.out[l], w.in[src], 8);
        }
        break;
    case Coll::Mma: {
        /* the PTX ISA's fragment layouts of mma.m16n8k16 (.f16/.bf16 inputs, .f32 accumulators) */
        float A[16][16], B[16][8], C[16][8];
        for (int l = 0; l < WARP; l++) {
            const int g = l >> 2, t = l & 3;
            uint16_t a[8], bb[4];
            float c[4];
            memcpy(a, w.in[l], 16);
            memcpy(bb, w.in[l] + 16, 8);
            memcpy(c, w.in[l] + 24, 16);
            auto value = [&](uint16_t bits) {
                if (w.detail == MMA_F16) {
                    __half_raw raw;
                    raw.x = bits;
                    return __half2float(__half(raw));
                }
                __nv_bfloat16_raw raw;
                raw.x = bits;
                return __bfloat162float(__nv_bfloat16(raw));
            };
            for (int i = 0; i < 8; i++) {
                const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
                const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                A[row][col] = value(a[i]);
            }
            for (int i = 0; i < 4; i++)
                B[t * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = value(bb[i]);
            for (int i = 0; i < 4; i++)
                C[i < 2 ? g : g + 8][t * 2 + (i & 1)] = c[i];
        }
        for (int l = 0; l < WARP; l++) {
            const int g = l >> 2, t = l & 3;
            float d[4];
            for (int i = 0; i < 4; i++) {
                const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
                /* products of 16-bit values are exact in fp32; the sum is exact in double,
                 * then rounded once (the hardware's order and rounding are unspecified) */
                double s = C[row][col];
                for (int k = 0; k < 16; k++)
                    s += (double)A[row][k] * B[k][col];
                d[i] = (float)s;
            }
            memcpy(w.out[l], d, 16);
        }
        break;
    }
    case Coll::Ldmatrix: {
        const int matrices = w.detail >> 1;
        const bool trans = w.detail & 1;
        const unsigned char *rows[WARP];
        for (int l = 0; l < matrices * 8; l++) {
            memcpy(&rows[l], w.in[l], sizeof rows[l]);
            const unsigned char *p = rows[l];
            if ((uintptr_t)p % 16)
                fault("ldmatrix: lane %d's row address %p is not 16-byte aligned", l, (const void *)p);
            if (p < b.shared || p + 16 > b.shared + b.shared_bytes)
                fault("ldmatrix: lane %d's row address %p is outside the block's %zu bytes of shared memory", l,
                      (const void *)p, b.shared_bytes);
        }
        for (int l = 0; l < WARP; l++) {
            uint32_t r[4] = {0, 0, 0, 0};
            for (int m = 0; m < matrices; m++) {
                uint16_t e[2];
                for (int j = 0; j < 2; j++) {
                    /* normal: row l/4, column 2(l%4)+j; transposed: row 2(l%4)+j, column l/4 */
                    const int row = trans ? 2 * (l % 4) + j : l / 4, col = trans ? l / 4 : 2 * (l % 4) + j;
                    memcpy(&e[j], rows[m * 8 + row] + 2 * col, 2);
                }
                r[m] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
            }
            memcpy(w.out[l], r, 16);
        }
        break;
    }
    }
}

void collective(Coll kind, int detail, unsigned mask, const char *what, const void *in, size_t in_bytes, void *out,
                size_t out_bytes)
{
    Fiber &f = *cur_fiber;
    Block &b = *cur_block;
    require_waited(what);
    const int lane = f.linear % WARP, warp = f.linear / WARP;
    WarpState &w = b.warps[(size_t)warp];
    if (!(mask >> lane & 1))
        fault("%s: lane %d calls it with mask 0x%08x, which does not name the lane", what, lane, mask);
    const unsigned present = lanes_present(b, warp);
    if (mask & ~present)
        fault("%s: mask 0x%08x names lanes that a block of %d threads does not have", what, mask, b.n_threads);
    for (int l = 0; l < WARP; l++)
        if ((mask >> l & 1) && (*b.fibers)[(size_t)(warp * WARP + l)].state == State::Done)
            fault("%s: mask 0x%08x names lane %d, which has ended", what, mask, l);
    if (!w.arrived) {
        w.kind = kind;
        w.mask = mask;
        w.detail = detail;
        w.what = what;
    } else if (w.kind != kind || w.mask != mask || w.detail != detail) {
        fault("lane %d is at %s (mask 0x%08x) while lanes 0x%08x of its warp wait at %s (mask 0x%08x)", lane, what,
              mask, w.arrived, w.what, w.mask);
    }
    memcpy(w.in[lane], in, in_bytes);
    w.arrived |= 1u << lane;
    if (w.arrived == mask) {
        compute(b, w, warp);
        w.arrived = 0;
        for (int l = 0; l < WARP; l++)
            if ((mask >> l & 1) && l != lane)
                (*b.fibers)[(size_t)(warp * WARP + l)].state = State::Ready;
    } else {
        f.state = State::AtWarp;
        leave_fiber(false);
    }
    memcpy(out, w.out[lane], out_bytes);
}

/* ---- blocks and launches ------------------------------------------------------------- */
void deadlock(const Block &b)
{
    int barrier = 0, done = 0;
    std::string waits;
    for (size_t i = 0; i < b.warps.size(); i++) {
        const WarpState &w = b.warps[i];
        if (w.arrived) {
            char line[160];
            snprintf(line, sizeof line, "; warp %zu: lanes 0x%08x wait at %s (mask 0x%08x)", i, w.arrived, w.what,
                     w.mask);
            waits += line;
        }
    }
    for (const Fiber &f : *b.fibers) {
        barrier += f.state == State::AtBarrier;
        done += f.state == State::Done;
    }
    fprintf(stderr, "cuda-sim: deadlock in kernel %s: %d threads at __syncthreads, %d ended%s\n", b.kernel, barrier,
            done, waits.c_str());
    abort();
}

void run_block(Block &b, CUstream_st *s, uint3 block_idx, dim3 grid, dim3 dims)
{
    std::vector<Fiber> &fibers = *b.fibers;
    for (int i = 0; i < b.n_threads; i++) {
        Fiber &f = fibers[(size_t)i];
        f.linear = i;
        f.state = State::Ready;
        f.ids.thread_idx = make_uint3((unsigned)i % dims.x, (unsigned)i / dims.x % dims.y,
                                      (unsigned)i / (dims.x * dims.y));
        f.ids.block_idx = block_idx;
        f.ids.block_dim = dims;
        f.ids.grid_dim = grid;
        f.stack = stack_for((size_t)i);
        f.waited = false;
        f.open.clear();
        f.groups.clear();
#ifdef SIM_ASAN
        __asan_unpoison_memory_region(f.stack, STACK_BYTES); /* frames the last fiber left */
#endif
#ifdef SIM_FAST_SWITCH
        /* what sqzsim_switch pops: six registers, then fiber_main as the return address,
         * above it a slot standing for fiber_main's own return address (it never returns),
         * so that it starts with the stack aligned as after a call */
        void **top = (void **)(f.stack + STACK_BYTES);
        top[-1] = nullptr;
        top[-2] = (void *)fiber_main;
        for (int r = 3; r <= 8; r++)
            top[-r] = nullptr;
        f.sp = top - 8;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
#endif
    }
    for (WarpState &w : b.warps)
        w.arrived = 0;
    b.live = b.n_threads;
    b.at_barrier = 0;
    if (b.shared_bytes)
        memset(b.shared, 0xff, b.shared_bytes); /* NaN in every float format */
    std::vector<int> order((size_t)b.n_threads);
    std::vector<std::vector<int>> warp_order(b.warps.size());
    auto release_barrier = [&] {
        if (b.at_barrier > 0 && b.at_barrier == b.live) {
            for (Fiber &g : fibers)
                if (g.state == State::AtBarrier)
                    g.state = State::Ready;
            b.at_barrier = 0;
        }
    };
    while (b.live > 0) {
        permutation(s, order);
        /* A warp first met runs on (its lanes taking turns at its collectives) until all of it
         * waits at a barrier or has ended, before the next warp starts: warps drift as far
         * apart as a barrier lets them, which is what exposes a missing one. The random order
         * sometimes interleaves warps instead, one collective at a time. */
        const bool whole_warps = s->mode != 2 || (s->rng() & 1);
        for (auto &w : warp_order)
            w.clear();
        for (int i : order)
            warp_order[(size_t)(i / WARP)].push_back(i);
        bool ran = false;
        for (int i : order) {
            if (fibers[(size_t)i].state != State::Ready)
                continue;
            enter_fiber(b, fibers[(size_t)i]);
            ran = true;
            release_barrier();
            for (bool more = whole_warps; more;) {
                more = false;
                for (int lane : warp_order[(size_t)(i / WARP)])
                    if (fibers[(size_t)lane].state == State::Ready) {
                        enter_fiber(b, fibers[(size_t)lane]);
                        release_barrier();
                        more = true;
                    }
            }
        }
        if (!ran)
            deadlock(b);
    }
}

void execute(CUstream_st *s, const SimLaunch &l)
{
    Block b;
    std::vector<Fiber> fibers((size_t)(l.block.x * l.block.y * l.block.z));
    b.kernel = l.name;
    b.stream = s;
    b.fibers = &fibers;
    b.n_threads = (int)fibers.size();
    b.warps.resize((size_t)((b.n_threads + WARP - 1) / WARP));
    b.body = &l.body;
    b.overlapped = l.overlapped;
    b.shared_bytes = l.shared_bytes;
    unsigned char *shared = l.shared_bytes ? (unsigned char *)aligned_alloc(128, (l.shared_bytes + 127) / 128 * 128)
                                           : nullptr;
    b.shared = shared;
    Block *outer = cur_block;
    cur_block = &b;
    const size_t n_blocks = (size_t)l.grid.x * l.grid.y * l.grid.z;
    if (s->mode == 0 || n_blocks <= 1) {
        for (size_t i = 0; i < n_blocks; i++)
            run_block(b, s, make_uint3((unsigned)(i % l.grid.x), (unsigned)(i / l.grid.x % l.grid.y),
                                       (unsigned)(i / ((size_t)l.grid.x * l.grid.y))),
                      l.grid, l.block);
    } else {
        std::vector<size_t> order(n_blocks);
        for (size_t i = 0; i < n_blocks; i++)
            order[i] = s->mode == 1 ? n_blocks - 1 - i : i;
        if (s->mode == 2)
            std::shuffle(order.begin(), order.end(), s->rng);
        for (size_t i : order)
            run_block(b, s, make_uint3((unsigned)(i % l.grid.x), (unsigned)(i / l.grid.x % l.grid.y),
                                       (unsigned)(i / ((size_t)l.grid.x * l.grid.y))),
                      l.grid, l.block);
    }
    cur_block = outer;
    free(shared);
}

CUstream_st default_stream;

CUstream_st *stream_of(cudaStream_t s) { return s ? s : &default_stream; }

bool is_pinned(const void *p, size_t bytes)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = pinned.upper_bound(a);
    if (it == pinned.begin())
        return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}

/* Lands the stream's pending copies up to number `upto`, in order (memory_lock held). */
void land_copies(CUstream_st *s, uint64_t upto)
{
    while (!s->pending.empty() && s->pending.front().number <= upto) {
        PendingCopy &c = s->pending.front();
        memcpy(c.dst, c.bytes.data(), c.bytes.size());
        s->pending.pop_front();
    }
}

/* What a device-wide synchronisation lands: every stream's copies (memory_lock held). */
void land_everything()
{
    land_copies(&default_stream, UINT64_MAX);
    for (CUstream_st *s : streams)
        land_copies(s, UINT64_MAX);
}

} // namespace

/* ---- device side --------------------------------------------------------------------- */
[[noreturn]] void fault(const char *fmt, ...)
{
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    if (cur_block && cur_fiber)
        fprintf(stderr, "cuda-sim: fault in kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n", cur_block->kernel,
                cur_fiber->ids.block_idx.x, cur_fiber->ids.block_idx.y, cur_fiber->ids.block_idx.z,
                cur_fiber->ids.thread_idx.x, cur_fiber->ids.thread_idx.y, cur_fiber->ids.thread_idx.z, text);
    else
        fprintf(stderr, "cuda-sim: fault: %s\n", text);
    abort();
}

void wait_for_previous_grid()
{
    if (!cur_fiber)
        fault("griddepcontrol.wait outside a kernel");
    cur_fiber->waited = true; /* launches run one after another here: the previous one has ended */
}

void syncthreads()
{
    if (!cur_fiber)
        fault("__syncthreads outside a kernel");
    require_waited("__syncthreads");
    cur_fiber->state = State::AtBarrier;
    cur_block->at_barrier++;
    leave_fiber(false);
}

void syncwarp(unsigned mask)
{
    char none = 0;
    collective(Coll::Sync, 0, mask, "__syncwarp", &none, 1, &none, 1);
}

uint64_t shuffle(unsigned mask, uint64_t value, int src_lane, const char *what)
{
    unsigned char in[12];
    memcpy(in, &value, 8);
    memcpy(in + 8, &src_lane, 4);
    uint64_t out;
    collective(Coll::Shuffle, 0, mask, what, in, sizeof in, &out, 8);
    return out;
}

int lane_id() { return cur_fiber->linear % WARP; }

void *dynamic_shared(size_t *bytes)
{
    if (bytes)
        *bytes = cur_block->shared_bytes;
    return cur_block->shared;
}

void mma_m16n8k16(MmaType type, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
{
    unsigned char in[40];
    memcpy(in, a, 16);
    memcpy(in + 16, b, 8);
    memcpy(in + 24, c, 16);
    collective(Coll::Mma, type, 0xffffffffu, type == MMA_F16 ? "mma.sync.m16n8k16.f16" : "mma.sync.m16n8k16.bf16", in,
               sizeof in, d, 16);
}

void ldmatrix(int matrices, bool trans, uint32_t *regs, const void *row_address)
{
    uint32_t out[4];
    collective(Coll::Ldmatrix, matrices * 2 + (trans ? 1 : 0), 0xffffffffu, trans ? "ldmatrix.trans" : "ldmatrix",
               &row_address, sizeof row_address, out, sizeof out);
    memcpy(regs, out, (size_t)matrices * 4);
}

void cp_async(void *shared_dst, const void *global_src, unsigned bytes, unsigned src_bytes)
{
    Block &b = *cur_block;
    require_waited("cp.async");
    const unsigned char *d = (const unsigned char *)shared_dst, *s = (const unsigned char *)global_src;
    if ((uintptr_t)d % bytes || (uintptr_t)s % bytes)
        fault("cp.async of %u bytes from %p to %p: both addresses must be %u-byte aligned", bytes, global_src,
              shared_dst, bytes);
    if (d < b.shared || d + bytes > b.shared + b.shared_bytes)
        fault("cp.async destination %p is outside the block's %zu bytes of shared memory", shared_dst, b.shared_bytes);
    if (b.shared_bytes && s + src_bytes > b.shared && s < b.shared + b.shared_bytes)
        fault("cp.async source %p is in shared memory; it must be global", global_src);
    if (src_bytes > bytes)
        fault("cp.async reads %u bytes into a %u-byte copy", src_bytes, bytes);
    /* a copy may land any time between its issue and its wait: the forward order takes the
     * latest moment (a missing wait shows), reverse the earliest (a buffer refilled while
     * another warp still reads it shows), random either, copy by copy */
    const Copy c{shared_dst, global_src, bytes, src_bytes};
    const int mode = b.stream->mode;
    if (mode == 1 || (mode == 2 && (b.stream->rng() & 1)))
        land(c);
    else
        cur_fiber->open.push_back(c);
}

void cp_async_commit()
{
    Fiber &f = *cur_fiber;
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}

void cp_async_wait(int pending_groups_allowed)
{
    Fiber &f = *cur_fiber;
    while ((int)f.groups.size() > pending_groups_allowed) {
        for (const Copy &c : f.groups.front())
            land(c);
        f.groups.pop_front();
    }
}

/* ---- host side ------------------------------------------------------------------------- */
cudaError_t launch(const char *name, const void *kernel, dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, std::function<void()> body, bool overlapped)
{
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (!block.x || !block.y || !block.z || threads > MAX_THREADS || block.z > 64)
        return last_error = fail(cudaErrorInvalidConfiguration,
                                 "launch of %s: a block of (%u,%u,%u) threads; at most 1024 threads, z at most 64",
                                 name, block.x, block.y, block.z);
    if (!grid.x || !grid.y || !grid.z || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        return last_error = fail(cudaErrorInvalidConfiguration,
                                 "launch of %s: a grid of (%u,%u,%u) blocks; x at most 2^31-1, y and z at most 65535",
                                 name, grid.x, grid.y, grid.z);
    int limit = (int)DEFAULT_SHARED;
    {
        std::lock_guard<std::mutex> hold(attr_lock);
        auto it = shared_limits.find(kernel);
        if (it != shared_limits.end())
            limit = it->second;
    }
    if (shared_bytes > (size_t)limit)
        return last_error = fail(cudaErrorInvalidValue,
                                 "launch of %s asks for %zu bytes of dynamic shared memory; its limit is %d (above "
                                 "48 KiB the kernel needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize), at most "
                                 "%d on sm_90)",
                                 name, shared_bytes, limit, MAX_SHARED_OPTIN);
    CUstream_st *s = stream_of(stream);
    SimLaunch l{name, kernel, grid, block, shared_bytes, std::move(body), overlapped};
    if (s->capturing)
        s->captured.push_back(std::move(l));
    else
        execute(s, l);
    return cudaSuccess;
}

bool set_schedule(cudaStream_t stream, const char *text)
{
    CUstream_st *s = stream_of(stream);
    if (!text || !*text || strcmp(text, "forward") == 0) {
        s->mode = 0;
    } else if (strcmp(text, "reverse") == 0) {
        s->mode = 1;
    } else if (strncmp(text, "random", 6) == 0 && (text[6] == '\0' || text[6] == ':')) {
        char *end = nullptr;
        unsigned long long seed = text[6] ? strtoull(text + 7, &end, 10) : 1;
        if (text[6] && (!*(text + 7) || *end))
            return false;
        s->mode = 2;
        s->seed = seed;
        s->rng.seed(seed);
    } else {
        return false;
    }
    return true;
}

namespace api {

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device)
{
    if (device != 0)
        return last_error = fail(cudaErrorInvalidDevice, "cuda-sim has one device, 0");
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuda-sim: CUDA kernels emulated on the host, sm_90 limits");
    p->totalGlobalMem = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
    p->sharedMemPerBlock = DEFAULT_SHARED;
    p->sharedMemPerBlockOptin = MAX_SHARED_OPTIN;
    p->regsPerBlock = 65536;
    p->warpSize = WARP;
    p->maxThreadsPerBlock = MAX_THREADS;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->l2CacheSize = 50 << 20;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : (last_error = fail(cudaErrorInvalidDevice, "cuda-sim has one device, 0"));
}

cudaError_t cudaDriverGetVersion(int *version)
{
    *version = 13000; /* the toolkit this emulates: CUDA 13.0 */
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags)
{
    (void)flags;
    *stream = new CUstream_st;
    std::lock_guard<std::mutex> hold(memory_lock);
    streams.insert(*stream);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if (!stream)
        return last_error = fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of the null stream");
    {
        /* CUDA finishes a destroyed stream's work: its copies land */
        std::lock_guard<std::mutex> hold(memory_lock);
        land_copies(stream, UINT64_MAX);
        streams.erase(stream);
    }
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    CUstream_st *s = stream_of(stream);
    if (s->capturing)
        return last_error = fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize during stream capture");
    std::lock_guard<std::mutex> hold(memory_lock);
    land_copies(s, UINT64_MAX);
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags)
{
    (void)flags;
    if (!event)
        return last_error = fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent on a null event");
    /* streams run their work at once, so what the event marks is done: nothing to wait for. The
     * host has not synchronised, so copies to pinned memory do not land here. */
    (void)stream_of(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode)
{
    (void)mode;
    CUstream_st *s = stream_of(stream);
    if (s->capturing)
        return last_error = fail(cudaErrorIllegalState, "cudaStreamBeginCapture on a stream already capturing");
    s->capturing = true;
    s->captured.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph)
{
    CUstream_st *s = stream_of(stream);
    if (!s->capturing)
        return last_error = fail(cudaErrorIllegalState, "cudaStreamEndCapture on a stream that is not capturing");
    s->capturing = false;
    *graph = new CUgraph_st{std::move(s->captured)};
    s->captured.clear();
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
{
    (void)flags;
    *exec = new CUgraphExec_st{graph->launches};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream)
{
    CUstream_st *s = stream_of(stream);
    for (const SimLaunch &l : exec->launches)
        execute(s, l);
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        return last_error = fail(cudaErrorMemoryAllocation, "cudaMalloc of %zu bytes: out of host memory", bytes);
    memset(p, 0xff, bytes); /* device memory starts as garbage: NaN here */
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr)
{
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes)
{
    *ptr = malloc(bytes ? bytes : 1);
    if (!*ptr)
        return last_error = fail(cudaErrorMemoryAllocation, "cudaMallocHost of %zu bytes: out of memory", bytes);
    std::lock_guard<std::mutex> hold(memory_lock);
    pinned[(uintptr_t)*ptr] = bytes ? bytes : 1;
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned flags)
{
    (void)flags; /* one device: portable, mapped or not, the memory is the same here */
    return api::cudaMallocHost(ptr, bytes);
}

cudaError_t cudaFreeHost(void *ptr)
{
    if (!ptr)
        return cudaSuccess;
    std::lock_guard<std::mutex> hold(memory_lock);
    if (!pinned.erase((uintptr_t)ptr))
        return last_error = fail(cudaErrorInvalidValue, "cudaFreeHost of memory that cudaMallocHost did not give");
    land_everything(); /* cudaFreeHost synchronises the device first */
    free(ptr);
    return cudaSuccess;
}

/* Copies run in stream order, at once, except one kind: a device-to-host copy into pinned
 * memory lands only when the host synchronises with it (cudaStreamSynchronize, or
 * cudaEventSynchronize / a successful cudaEventQuery of an event recorded after it), the
 * latest moment CUDA allows; until then its destination holds 0xff bytes (NaN), so host code
 * that reads it without waiting sees garbage, as it could on a GPU. The source is taken as it
 * is in stream order. A copy into pageable memory is synchronous, as in CUDA. */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream)
{
    CUstream_st *s = stream_of(stream);
    if (s->capturing)
        return last_error = fail(cudaErrorStreamCaptureUnsupported, "cuda-sim does not capture copies");
    std::lock_guard<std::mutex> hold(memory_lock);
    if (kind == cudaMemcpyDeviceToHost && bytes && is_pinned(dst, bytes)) {
        PendingCopy c{dst, std::vector<unsigned char>((const unsigned char *)src, (const unsigned char *)src + bytes),
                      ++s->copies};
        memset(dst, 0xff, bytes);
        s->pending.push_back(std::move(c));
        return cudaSuccess;
    }
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream)
{
    if (stream_of(stream)->capturing)
        return last_error = fail(cudaErrorStreamCaptureUnsupported, "cuda-sim does not capture memsets");
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    *event = new CUevent_st;
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags)
{
    (void)flags; /* timing or not, blocking sync or not: the same here */
    return api::cudaEventCreate(event);
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    CUstream_st *s = stream_of(stream);
    if (s->capturing)
        return last_error = fail(cudaErrorStreamCaptureUnsupported, "cuda-sim does not capture events");
    event->at = std::chrono::steady_clock::now();
    event->recorded = true;
    std::lock_guard<std::mutex> hold(memory_lock);
    event->stream = s;
    event->copies = s->copies;
    return cudaSuccess;
}

/* Waiting for an event lands the copies its stream had enqueued before it was recorded. */
cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    std::lock_guard<std::mutex> hold(memory_lock);
    if (event->stream && (event->stream == &default_stream || streams.count(event->stream)))
        land_copies(event->stream, event->copies);
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) { return api::cudaEventSynchronize(event); }

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t stop)
{
    if (!start->recorded || !stop->recorded)
        return last_error = fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime of an unrecorded event");
    *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
    return cudaSuccess;
}

cudaError_t cudaGetLastError()
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError() { return last_error; }

const char *cudaGetErrorName(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    default: return "cudaError (cuda-sim)";
    }
}

const char *cudaGetErrorString(cudaError_t err)
{
    if (err == cudaSuccess)
        return "no error";
    if (err == last_detail_code && last_detail[0])
        return last_detail;
    return api::cudaGetErrorName(err);
}

cudaError_t sim_func_set_attribute(const void *func, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaSuccess;
    if (value < 0 || value > MAX_SHARED_OPTIN)
        return last_error = fail(cudaErrorInvalidValue,
                                 "cudaFuncSetAttribute: %d bytes of dynamic shared memory; sm_90 allows at most %d",
                                 value, MAX_SHARED_OPTIN);
    std::lock_guard<std::mutex> hold(attr_lock);
    shared_limits[func] = value;
    return cudaSuccess;
}

} // namespace api
} // namespace sqzsim
