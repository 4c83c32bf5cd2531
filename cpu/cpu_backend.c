/* The cpu backend: for servers without a GPU. Matrix products are oneDNN's (Debian's
 * libdnnl): a linear layer runs a matmul primitive, with the bias and the exact erf GELU in its
 * post-ops, made once per shape with the token count left to run time, on tiles of 128 rows x
 * one group's columns. The other ops are vectorised row kernels (cpu_kernels.inc); attention
 * runs per (sequence, head) with its score block in cache. Work is split into tasks (tiles of
 * a product, blocks of rows, pairs of sequence and head) that a team of threads takes in turn
 * (cpu_pool.h), each thread running oneDNN on itself. Buffers are host memory. Threads: every
 * core by default, or device "threads=N".
 *
 * bf16 (CPUs with AVX512-BF16 or AMX): activations are stored in bf16, the dtype the plan's
 * tensors have (the assign-dtypes pass), matrix weights are read from a bf16 copy made once, and LayerNorm, softmax, GELU and every
 * elementwise op compute in fp32. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "cpu/cpu_pool.h"
#include "runtime/backend.h"
#include "runtime/error.h"

#define MAX_THREADS 1024
#define MATMUL_CACHE 64 /* distinct tile shapes of a session; BERT-family models have < 20 */

#define DNNL_TRY(call)                                                                        \
    do {                                                                                      \
        dnnl_status_t s_ = (call);                                                            \
        if (s_ != dnnl_success)                                                               \
            return sqz_fail(s_ == dnnl_out_of_memory ? SQZ_ERR_OUT_OF_MEMORY : SQZ_ERR_BACKEND, \
                            "cpu: %s failed: %s at %s:%d", #call, dnnl_status2str(s_),       \
                            __FILE__, __LINE__);                                              \
    } while (0)

/* A linear layer's fp32 weights as oneDNN's GEMM reads them fastest: per group, [k][n] with a
 * row's n output features next to each other (checkpoints store [n][k]), groups one after the
 * other. oneDNN asked for this layout (format_tag any on the weights); on this backend's tiles it
 * made the 192- and 768-wide products 15-18 % faster than reading [n][k] transposed. bf16 keeps
 * [n][k]: there the transposed layout measured slower. */
typedef struct packed_weight {
    size_t offset; /* of the [n][k] original in the weights buffer */
    int64_t cout, k;
    int groups;
    float *data;
} packed_weight;

struct sqz_buffer {
    unsigned char *data;
    size_t bytes;
    uint16_t *shadow; /* weights at bf16: the same elements, rounded, at half the byte offsets */
    bool shadow_valid;
    packed_weight *packed; /* made at first use, dropped by an upload */
    int n_packed;
};

/* One matmul primitive: M (tokens) is given at execution time. ldw 0: weights [n][k] read
 * transposed; else [k][n] rows ldw apart. */
typedef struct matmul {
    int64_t k, n, lda, ldc, ldw;
    bool bias, gelu;
    dnnl_primitive_t prim;
} matmul;

typedef struct cpu_ctx {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int threads;
    bool bf16;
    cpu_pool *pool;
    const cpu_kernels *k;
    matmul cache[MATMUL_CACHE];
    int n_cache, evict;
    float *scratch; /* per-thread working rows and attention blocks */
    size_t scratch_floats;
    char description[320];
} cpu_ctx;

/* ---- device ---------------------------------------------------------------------------- */

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx: return "AVX-512 + AMX";
    case dnnl_cpu_isa_avx512_core_bf16: return "AVX-512 BF16";
    case dnnl_cpu_isa_avx512_core_vnni: return "AVX-512 VNNI";
    case dnnl_cpu_isa_avx512_core: return "AVX-512";
    case dnnl_cpu_isa_avx2_vnni: return "AVX2 VNNI";
    case dnnl_cpu_isa_avx2: return "AVX2";
    case dnnl_cpu_isa_avx: return "AVX";
    case dnnl_cpu_isa_sse41: return "SSE4.1";
    default: return "baseline";
    }
}

static bool cpu_has_bf16(void)
{
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa(), need = (unsigned)dnnl_cpu_isa_avx512_core_bf16;
    return (isa & need) == need; /* the ISA values are nested bit sets */
}

static const cpu_kernels *best_kernels(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return &sqz_cpu_kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &sqz_cpu_kernels_avx2;
#endif
    return &sqz_cpu_kernels_baseline;
}

static void cpu_model_name(char *out, size_t size)
{
    snprintf(out, size, "host CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0 && strchr(line, ':')) {
            const char *v = strchr(line, ':') + 1;
            while (*v == ' ')
                v++;
            snprintf(out, size, "%.*s", (int)strcspn(v, "\n"), v);
            break;
        }
    if (f)
        fclose(f);
}

/* "" / NULL / "0" / "default": every core; "threads=N": N threads. */
static sqz_status parse_device(const char *device, int *threads)
{
    *threads = omp_get_num_procs();
    if (!device || !*device || strcmp(device, "0") == 0 || strcmp(device, "default") == 0)
        return SQZ_OK;
    if (strncmp(device, "threads=", 8) == 0) {
        char *end = NULL;
        long n = strtol(device + 8, &end, 10);
        if (end && end != device + 8 && *end == '\0' && n >= 1 && n <= MAX_THREADS) {
            *threads = (int)n;
            return SQZ_OK;
        }
    }
    return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "cpu: device '%s' is not understood: give threads=N "
                    "(N in 1..%d) or nothing for every core (%d here)", device, MAX_THREADS,
                    omp_get_num_procs());
}

static void describe_into(char *out, size_t size, int threads, bool bf16, const cpu_kernels *k)
{
    char model[160];
    cpu_model_name(model, sizeof model);
    const dnnl_version_t *v = dnnl_version();
    snprintf(out, size, "%s (oneDNN %d.%d.%d, %s; row kernels %s)%s, %d thread%s", model, v->major,
             v->minor, v->patch, isa_name(dnnl_get_effective_cpu_isa()), k->level, bf16 ? ", bf16" : "",
             threads, threads == 1 ? "" : "s");
}

static sqz_status cpu_list_devices(char **text)
{
    char line[320];
    describe_into(line, sizeof line, omp_get_num_procs(), false, best_kernels());
    return sqz_text_append(text, "cpu      0  %s by default (threads=N to change); bf16 %s\n", line,
                           cpu_has_bf16() ? "yes" : "n/a on this CPU");
}

static void cpu_destroy(void *ctx)
{
    cpu_ctx *c = ctx;
    if (!c)
        return;
    for (int i = 0; i < c->n_cache; i++)
        dnnl_primitive_destroy(c->cache[i].prim);
    if (c->stream)
        dnnl_stream_destroy(c->stream);
    if (c->engine)
        dnnl_engine_destroy(c->engine);
    sqz_cpu_pool_destroy(c->pool);
    free(c->scratch);
    free(c);
}

static sqz_status cpu_create_checked(cpu_ctx *c, const char *device)
{
    sqz_status st = parse_device(device, &c->threads);
    if (st != SQZ_OK)
        return st;
    c->k = best_kernels();
    if ((st = sqz_cpu_pool_create(c->threads, &c->pool)) != SQZ_OK)
        return st;
    DNNL_TRY(dnnl_engine_create(&c->engine, dnnl_cpu, 0));
    DNNL_TRY(dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags));
    describe_into(c->description, sizeof c->description, c->threads, false, c->k);
    return SQZ_OK;
}

static sqz_status cpu_create(void **ctx, const char *device, const char *settings)
{
    static const char *const none[] = {NULL}; /* its one knob, threads=N, is the device text */
    sqz_status checked = sqz_settings_check(settings, "cpu", none);
    if (checked != SQZ_OK)
        return checked;
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    sqz_status st = cpu_create_checked(c, device);
    if (st != SQZ_OK) {
        cpu_destroy(c);
        return st;
    }
    *ctx = c;
    return SQZ_OK;
}

static sqz_status cpu_set_precision(void *ctx, sqz_precision precision)
{
    cpu_ctx *c = ctx;
    if (precision == SQZ_PRECISION_FP32)
        return SQZ_OK;
    if (precision != SQZ_PRECISION_BF16)
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cpu: runs fp32 and bf16, not %s", sqz_precision_name(precision));
    if (!cpu_has_bf16())
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cpu: bf16 needs AVX512-BF16 or AMX; this CPU has %s",
                        isa_name(dnnl_get_effective_cpu_isa()));
    c->bf16 = true;
    describe_into(c->description, sizeof c->description, c->threads, true, c->k);
    return SQZ_OK;
}

static const char *cpu_describe(void *ctx) { return ((cpu_ctx *)ctx)->description; }

/* ---- buffers ------------------------------------------------------------ */

static sqz_status cpu_buffer_alloc(void *ctx, size_t bytes, sqz_buffer **out)
{
    sqz_buffer *b = calloc(1, sizeof *b);
    /* 64-byte rows for the vector loads; calloc'd contents so nothing reads garbage */
    const size_t rounded = (bytes + 63) / 64 * 64;
    unsigned char *data = b && rounded >= bytes ? aligned_alloc(64, rounded ? rounded : 64) : NULL;
    if (!data) {
        free(b);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes", bytes);
    }
    memset(data, 0, rounded ? rounded : 64);
    b->data = data;
    b->bytes = bytes;
    *out = b;
    return SQZ_OK;
}

static void drop_packed(sqz_buffer *b)
{
    for (int i = 0; i < b->n_packed; i++)
        free(b->packed[i].data);
    free(b->packed);
    b->packed = NULL;
    b->n_packed = 0;
}

static void cpu_buffer_free(void *ctx, sqz_buffer *b)
{
    if (b) {
        free(b->data);
        free(b->shadow);
        drop_packed(b);
    }
    free(b);
}

static sqz_status cpu_upload(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu: upload of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, dst->bytes);
    if (bytes)
        memcpy(dst->data + offset, src, bytes);
    dst->shadow_valid = false;
    drop_packed(dst);
    return SQZ_OK;
}

static sqz_status cpu_download(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes)
{
    if (offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu: download of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, src->bytes);
    if (!bytes)
        return SQZ_OK;
    memcpy(dst, src->data + offset, bytes);
    return SQZ_OK;
}

/* ---- tensors ------------------------------------------------------------------------------- */

static unsigned char *tensor_base(const sqz_binding *b, int tensor)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[tensor];
    if (d->kind == SQZ_TENSOR_WEIGHT)
        return b->weights->data + b->weight_offsets[d->weight_index];
    return b->arena->data + b->plan->offsets[tensor];
}

/* A view of an fp32-valued tensor as rows of `cols`: fp32 in place, or bf16. */
typedef struct view {
    unsigned char *base;
    int64_t cols;
    bool bf16;
} view;

static view view_of(const sqz_binding *b, int tensor)
{
    const sqz_tensor_desc *d = &b->plan->graph.tensors[tensor];
    return (view){tensor_base(b, tensor), d->cols, d->dtype == SQZ_DTYPE_BF16};
}

/* Row r as fp32: in place, or converted into `tmp` (cols floats). */
static const float *row_in(const cpu_ctx *c, view v, int64_t r, float *tmp)
{
    if (!v.bf16)
        return (const float *)v.base + r * v.cols;
    c->k->bf16_to_f32((const uint16_t *)v.base + r * v.cols, v.cols, tmp);
    return tmp;
}

/* Where to compute row r: in place for fp32, else `tmp`, which row_out then stores. */
static float *row_dst(view v, int64_t r, float *tmp) { return v.bf16 ? tmp : (float *)v.base + r * v.cols; }

static void row_out(const cpu_ctx *c, view v, int64_t r, const float *values)
{
    if (v.bf16)
        c->k->f32_to_bf16(values, v.cols, (uint16_t *)v.base + r * v.cols);
}

static sqz_status ensure_scratch(cpu_ctx *c, size_t per_thread)
{
    const size_t need = per_thread * (size_t)c->threads;
    if (need <= c->scratch_floats)
        return SQZ_OK;
    free(c->scratch);
    c->scratch = aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
    c->scratch_floats = c->scratch ? need : 0;
    if (!c->scratch)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes of working memory", need * 4);
    return SQZ_OK;
}

static float *thread_scratch(const cpu_ctx *c, size_t per_thread, int worker)
{
    return c->scratch + per_thread * (size_t)worker;
}

/* ---- linear: oneDNN matmul, one execution per group ------------------------------------------ */

static sqz_status matmul_for(cpu_ctx *c, int64_t k, int64_t n, int64_t lda, int64_t ldc, int64_t ldw, bool bias,
                             bool gelu, dnnl_primitive_t *out)
{
    for (int i = 0; i < c->n_cache; i++) {
        const matmul *m = &c->cache[i];
        if (m->k == k && m->n == n && m->lda == lda && m->ldc == ldc && m->ldw == ldw && m->bias == bias &&
            m->gelu == gelu) {
            *out = m->prim;
            return SQZ_OK;
        }
    }
    const dnnl_data_type_t t = c->bf16 ? dnnl_bf16 : dnnl_f32;
    /* x [M, k] rows lda apart; W [n][k] read as its transpose, or [k][n] rows ldw apart; y [M, n]
     * rows ldc apart */
    dnnl_memory_desc_t src, wei, bmd, dst;
    dnnl_dims_t src_dims = {DNNL_RUNTIME_DIM_VAL, k}, src_strides = {lda, 1};
    dnnl_dims_t wei_dims = {k, n}, wei_strides = {ldw ? ldw : 1, ldw ? 1 : k};
    dnnl_dims_t b_dims = {1, n}, b_strides = {n, 1};
    dnnl_dims_t dst_dims = {DNNL_RUNTIME_DIM_VAL, n}, dst_strides = {ldc, 1};
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&src, 2, src_dims, t, src_strides));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&wei, 2, wei_dims, t, wei_strides));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&bmd, 2, b_dims, dnnl_f32, b_strides));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&dst, 2, dst_dims, t, dst_strides));
    dnnl_matmul_desc_t desc;
    DNNL_TRY(dnnl_matmul_desc_init(&desc, &src, &wei, bias ? &bmd : NULL, &dst));
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_status_t s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success && gelu) {
        s = dnnl_post_ops_create(&post);
        if (s == dnnl_success)
            s = dnnl_post_ops_append_eltwise(post, 1.0f, dnnl_eltwise_gelu_erf, 0.0f, 0.0f);
        if (s == dnnl_success)
            s = dnnl_primitive_attr_set_post_ops(attr, post);
    }
    if (s == dnnl_success)
        s = dnnl_primitive_desc_create(&pd, &desc, attr, c->engine, NULL);
    if (s == dnnl_success)
        s = dnnl_primitive_create(&prim, pd);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (post)
        dnnl_post_ops_destroy(post);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return sqz_fail(SQZ_ERR_BACKEND, "cpu: oneDNN matmul %lldx%lld (%s%s) could not be created: %s",
                        (long long)k, (long long)n, c->bf16 ? "bf16" : "fp32", gelu ? ", GELU" : "",
                        dnnl_status2str(s));
    int slot = c->n_cache;
    if (slot == MATMUL_CACHE) { /* full: the entries are replaced in turn (nothing runs between launches) */
        slot = c->evict++ % MATMUL_CACHE;
        dnnl_primitive_destroy(c->cache[slot].prim);
    } else {
        c->n_cache++;
    }
    c->cache[slot] = (matmul){k, n, lda, ldc, ldw, bias, gelu, prim};
    *out = prim;
    return SQZ_OK;
}

#define SHADOW_CHUNK (1 << 16)

typedef struct shadow_job {
    const cpu_ctx *c;
    sqz_buffer *w;
    int64_t n;
} shadow_job;

static void shadow_task(void *arg, int64_t task, int worker)
{
    const shadow_job *j = arg;
    const int64_t i = task * SHADOW_CHUNK, count = j->n - i < SHADOW_CHUNK ? j->n - i : SHADOW_CHUNK;
    j->c->k->f32_to_bf16((const float *)j->w->data + i, count, j->w->shadow + i);
}

static sqz_status ensure_shadow(cpu_ctx *c, sqz_buffer *w)
{
    if (w->shadow_valid)
        return SQZ_OK;
    const int64_t n = (int64_t)(w->bytes / 4);
    if (!w->shadow && !(w->shadow = malloc((size_t)(n ? n : 1) * 2)))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cpu: cannot allocate the bf16 copy of the weights (%zu bytes)",
                        (size_t)n * 2);
    shadow_job job = {c, w, n};
    sqz_cpu_pool_run(c->pool, shadow_task, &job, (n + SHADOW_CHUNK - 1) / SHADOW_CHUNK);
    w->shadow_valid = true;
    return SQZ_OK;
}

typedef struct pack_job {
    const float *src;
    float *dst;
    int64_t k, n; /* per group */
} pack_job;

static void pack_task(void *arg, int64_t g, int worker)
{
    const pack_job *j = arg;
    const float *w = j->src + g * j->n * j->k;
    float *t = j->dst + g * j->k * j->n;
    for (int64_t i = 0; i < j->n; i++)
        for (int64_t kk = 0; kk < j->k; kk++)
            t[kk * j->n + i] = w[i * j->k + kk];
}

/* The packed copy of the [cout][k] fp32 weights at byte `offset` of w (see packed_weight). */
static sqz_status packed_for(cpu_ctx *c, sqz_buffer *w, size_t offset, int64_t cout, int64_t k, int groups,
                             const float **out)
{
    for (int i = 0; i < w->n_packed; i++) {
        const packed_weight *p = &w->packed[i];
        if (p->offset == offset && p->cout == cout && p->k == k && p->groups == groups) {
            *out = p->data;
            return SQZ_OK;
        }
    }
    packed_weight *grown = realloc(w->packed, (size_t)(w->n_packed + 1) * sizeof *grown);
    float *data = aligned_alloc(64, ((size_t)(cout * k) * sizeof(float) + 63) / 64 * 64);
    if (grown)
        w->packed = grown;
    if (!grown || !data) {
        free(data);
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "cpu: cannot allocate the packed copy of a %lldx%lld weight",
                        (long long)cout, (long long)k);
    }
    pack_job job = {(const float *)(w->data + offset), data, k, cout / groups};
    sqz_cpu_pool_run(c->pool, pack_task, &job, groups);
    w->packed[w->n_packed++] = (packed_weight){offset, cout, k, groups, data};
    *out = data;
    return SQZ_OK;
}

/* One tile of a linear layer: rows [r0, r0 + m) of group g, output columns [n0, n0 + nb) of
 * that group, through a matmul primitive made for nb columns (oneDNN runs it on the calling
 * thread: it is inside our parallel region). */
typedef struct linear_job {
    const cpu_ctx *c;
    dnnl_primitive_t prim;
    const unsigned char *x, *w;
    const float *bias;
    unsigned char *y;
    int64_t cin, cout, k, n, nb;
    bool packed; /* w is packed_weight's layout, else [cout][k] */
    size_t el;
    dnnl_data_type_t t;
    int64_t rows, groups, col_blocks, row_tiles;
    atomic_int failed;
} linear_job;

static dnnl_status_t linear_tile(const linear_job *j, int64_t g, int64_t r0, int64_t m, int64_t n0)
{
    dnnl_memory_desc_t src, wei, bmd, dst;
    dnnl_dims_t src_dims = {m, j->k}, src_strides = {j->cin, 1}, wei_dims = {j->k, j->nb};
    dnnl_dims_t wei_strides = {j->packed ? j->n : 1, j->packed ? 1 : j->k};
    dnnl_dims_t b_dims = {1, j->nb}, b_strides = {j->nb, 1}, dst_dims = {m, j->nb}, dst_strides = {j->cout, 1};
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(&src, 2, src_dims, j->t, src_strides);
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_strides(&wei, 2, wei_dims, j->t, wei_strides);
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_strides(&bmd, 2, b_dims, dnnl_f32, b_strides);
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_strides(&dst, 2, dst_dims, j->t, dst_strides);
    const int64_t col = g * j->n + n0; /* first output feature of the tile */
    const size_t first_weight = (size_t)(j->packed ? g * j->k * j->n + n0 : col * j->k);
    dnnl_memory_t mem[4] = {0};
    if (s == dnnl_success)
        s = dnnl_memory_create(&mem[0], &src, j->c->engine, (void *)(j->x + (size_t)(r0 * j->cin + g * j->k) * j->el));
    if (s == dnnl_success)
        s = dnnl_memory_create(&mem[1], &wei, j->c->engine, (void *)(j->w + first_weight * j->el));
    if (s == dnnl_success)
        s = dnnl_memory_create(&mem[2], &dst, j->c->engine, j->y + (size_t)(r0 * j->cout + col) * j->el);
    if (s == dnnl_success && j->bias)
        s = dnnl_memory_create(&mem[3], &bmd, j->c->engine, (void *)(j->bias + col));
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]},
                                   {DNNL_ARG_DST, mem[2]}, {DNNL_ARG_BIAS, mem[3]}};
        s = dnnl_primitive_execute(j->prim, j->c->stream, j->bias ? 4 : 3, args);
    }
    for (int i = 0; i < 4; i++)
        if (mem[i])
            dnnl_memory_destroy(mem[i]);
    return s;
}

#define LINEAR_TILE_ROWS 128

static void linear_task(void *arg, int64_t t, int worker)
{
    linear_job *j = arg;
    /* row tiles vary fastest: a thread's next tile most often reads the weights it just read,
     * still in its L2 */
    const int64_t rt = t % j->row_tiles, cb = t / j->row_tiles % j->col_blocks, gi = t / j->row_tiles / j->col_blocks;
    const int64_t r0 = rt * LINEAR_TILE_ROWS, m = j->rows - r0 < LINEAR_TILE_ROWS ? j->rows - r0 : LINEAR_TILE_ROWS;
    if (linear_tile(j, gi, r0, m, cb * j->nb) != dnnl_success)
        atomic_store(&j->failed, 1);
}

static sqz_status run_linear(cpu_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows)
{
    const sqz_graph *g = &b->plan->graph;
    const int *in = node->inputs;
    const int64_t cin = g->tensors[in[0]].cols, cout = g->tensors[node->output].cols;
    const int groups = node->params.linear.groups;
    if (groups < 1 || cin % groups || cout % groups)
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu: node '%s': %lld -> %lld features in %d groups", node->name,
                        (long long)cin, (long long)cout, groups);
    const int64_t k = cin / groups, n = cout / groups;
    /* Tiles of 128 rows x a block of a group's columns, handed out to the threads one at a
     * time: on a machine other work shares, a thread that loses its core delays one tile, not
     * a fixed half of the product (oneDNN's own split is static). Columns are split only when
     * there are too few row tiles to keep every thread busy. */
    const int64_t row_tiles = (rows + LINEAR_TILE_ROWS - 1) / LINEAR_TILE_ROWS;
    int64_t col_blocks = 1;
    while (groups * row_tiles * col_blocks < 4 * c->threads && n % (2 * col_blocks) == 0 &&
           n / (2 * col_blocks) >= 64)
        col_blocks *= 2;
    const int64_t nb = n / col_blocks;
    const bool has_bias = node->n_inputs > 2 && in[2] >= 0, gelu = node->op == SQZ_OP_LINEAR_GELU;
    const unsigned char *w = tensor_base(b, in[1]);
    const bool packed = !c->bf16 && g->tensors[in[1]].kind == SQZ_TENSOR_WEIGHT;
    sqz_status st = SQZ_OK;
    if (c->bf16) {
        if ((st = ensure_shadow(c, b->weights)) != SQZ_OK)
            return st;
        w = (const unsigned char *)(b->weights->shadow + (w - b->weights->data) / 4);
    } else if (packed) {
        const float *p = NULL;
        if ((st = packed_for(c, b->weights, (size_t)(w - b->weights->data), cout, k, groups, &p)) != SQZ_OK)
            return st;
        w = (const unsigned char *)p;
    }
    dnnl_primitive_t prim = NULL;
    if ((st = matmul_for(c, k, nb, cin, cout, packed ? n : 0, has_bias, gelu, &prim)) != SQZ_OK)
        return st;
    linear_job job = {c, prim, tensor_base(b, in[0]), w,
                      has_bias ? (const float *)tensor_base(b, in[2]) : NULL, tensor_base(b, node->output),
                      cin, cout, k, n, nb, packed, c->bf16 ? 2 : 4, c->bf16 ? dnnl_bf16 : dnnl_f32,
                      rows, groups, col_blocks, row_tiles, 0};
    sqz_cpu_pool_run(c->pool, linear_task, &job, groups * row_tiles * col_blocks);
    if (atomic_load(&job.failed))
        return sqz_fail(SQZ_ERR_BACKEND, "cpu: node '%s': a oneDNN matmul tile failed", node->name);
    return SQZ_OK;
}

/* ---- attention ----------------------------------------------------------------------------- */

typedef struct attn_shape {
    int heads, d;
    float scale;
    const int32_t *seq_off, *score_off;
    int64_t sequences;
} attn_shape;

/* The [len][d] slice of head h of a token-major tensor, as fp32 with leading dimension *ld:
 * in place for fp32, converted into `tmp` for bf16. */
static const float *head_slice(const cpu_ctx *c, view v, int64_t first, int64_t len, int h, int d, float *tmp,
                               int64_t *ld)
{
    if (!v.bf16) {
        *ld = v.cols;
        return (const float *)v.base + first * v.cols + (int64_t)h * d;
    }
    for (int64_t r = 0; r < len; r++)
        c->k->bf16_to_f32((const uint16_t *)v.base + (first + r) * v.cols + (int64_t)h * d, d, tmp + r * d);
    *ld = d;
    return tmp;
}

/* Adds the lowest float to the scores of padded keys, as cpu_ref does (so a row whose keys are
 * all padding still averages, as transformers' does). */
static void mask_keys(float *s, int64_t len, const int32_t *valid)
{
    for (int64_t b = 0; b < len; b++)
        if (!valid[b])
            s[b] += -FLT_MAX;
}

static sqz_status check_sequences(const sqz_node *node, const attn_shape *a, const sqz_run_dims *dims)
{
    const int32_t *so = a->score_off; /* NULL: an op without score blocks */
    bool ok = a->seq_off[0] == 0 && (!so || so[0] == 0) && a->sequences >= 0;
    for (int64_t s = 0; ok && s < a->sequences; s++) {
        const int64_t len = (int64_t)a->seq_off[s + 1] - a->seq_off[s];
        ok = len >= 1 && len <= dims->max_len && (!so || (int64_t)so[s + 1] - so[s] == len * len);
    }
    if (!ok || a->seq_off[a->sequences] != dims->tokens || (so && so[a->sequences] != dims->score_rows))
        return sqz_fail(SQZ_ERR_INTERNAL, "cpu: node '%s': sequence offsets are inconsistent with %lld tokens",
                        node->name, (long long)dims->tokens);
    return SQZ_OK;
}

/* One node's attention work: a task per (sequence, head). */
typedef struct attn_job {
    const cpu_ctx *c;
    const sqz_binding *b;
    const sqz_node *node;
    const attn_shape *a;
    int64_t L;
    size_t per_thread;
    view first, second, third, out;
    const int32_t *valid;
    atomic_int failed;
} attn_job;

/* softmax(scale Q K^T + mask) V of one (sequence, head); the [len][len] block stays in the
 * thread's cache between the two products. */
static void attention_task(void *arg, int64_t pair, int worker)
{
    attn_job *j = arg;
    const cpu_ctx *c = j->c;
    const attn_shape *a = j->a;
    const int64_t s = pair / a->heads, L = j->L, d = a->d, o = a->seq_off[s], len = a->seq_off[s + 1] - o;
    const int h = (int)(pair % a->heads);
    float *scores = thread_scratch(c, j->per_thread, worker), *tq = scores + L * L, *tk = tq + L * d;
    float *tv = tk + L * d, *to = tv + L * d;
    int64_t ldq, ldk, ldv;
    const float *Q = head_slice(c, j->first, o, len, h, a->d, tq, &ldq);
    const float *K = head_slice(c, j->second, o, len, h, a->d, tk, &ldk);
    const float *V = head_slice(c, j->third, o, len, h, a->d, tv, &ldv);
    const view out = j->out;
    float *O = out.bf16 ? to : (float *)out.base + o * out.cols + (int64_t)h * d;
    const int64_t ldo = out.bf16 ? d : out.cols;
    bool ok = dnnl_sgemm('N', 'T', len, len, d, a->scale, Q, ldq, K, ldk, 0.0f, scores, len) == dnnl_success;
    bool masked = false; /* packed sequences have every key valid: skip the row scans then */
    for (int64_t t = 0; t < len && !masked; t++)
        masked = !j->valid[o + t];
    for (int64_t r = 0; r < len; r++) {
        if (masked)
            mask_keys(scores + r * len, len, j->valid + o);
        c->k->softmax(scores + r * len, len);
    }
    ok = ok && dnnl_sgemm('N', 'N', len, d, len, 1.0f, scores, len, V, ldv, 0.0f, O, ldo) == dnnl_success;
    if (out.bf16)
        for (int64_t r = 0; r < len; r++)
            c->k->f32_to_bf16(to + r * d, d, (uint16_t *)out.base + (o + r) * out.cols + (int64_t)h * d);
    if (!ok)
        atomic_store(&j->failed, 1);
}

/* Linear attention (docs/variants.md) of one (sequence, head): f(x) = elu(x) + 1 on Q and on
 * the valid keys, KV = f(K)^T V and Z = sum of f(K) rows ([d][d] and [d], in cache), then
 * f(Q) KV divided row by row by f(Q) Z: two small GEMMs whose cost grows with the length. */
static void linear_attention_task(void *arg, int64_t pair, int worker)
{
    attn_job *j = arg;
    const cpu_ctx *c = j->c;
    const attn_shape *a = j->a;
    const int64_t s = pair / a->heads, L = j->L, d = a->d, o = a->seq_off[s], len = a->seq_off[s + 1] - o;
    const int h = (int)(pair % a->heads);
    float *fq = thread_scratch(c, j->per_thread, worker), *fk = fq + L * d, *tv = fk + L * d, *kv = tv + L * d;
    float *z = kv + d * d, *to = z + d;
    int64_t ldq, ldk, ldv;
    const float *Q = head_slice(c, j->first, o, len, h, a->d, fq, &ldq);
    const float *K = head_slice(c, j->second, o, len, h, a->d, fk, &ldk);
    const float *V = head_slice(c, j->third, o, len, h, a->d, tv, &ldv);
    for (int64_t i = 0; i < d; i++)
        z[i] = 0.0f;
    for (int64_t r = 0; r < len; r++) /* in place when head_slice converted into the same buffer */
        for (int64_t i = 0; i < d; i++) {
            const float x = Q[r * ldq + i], y = K[r * ldk + i];
            fq[r * d + i] = x > 0.0f ? x + 1.0f : expf(x);
            fk[r * d + i] = j->valid[o + r] ? (y > 0.0f ? y + 1.0f : expf(y)) : 0.0f;
            z[i] += fk[r * d + i];
        }
    const view out = j->out;
    float *O = out.bf16 ? to : (float *)out.base + o * out.cols + (int64_t)h * d;
    const int64_t ldo = out.bf16 ? d : out.cols;
    bool ok = dnnl_sgemm('T', 'N', d, d, len, 1.0f, fk, d, V, ldv, 0.0f, kv, d) == dnnl_success;
    ok = ok && dnnl_sgemm('N', 'N', len, d, d, 1.0f, fq, d, kv, d, 0.0f, O, ldo) == dnnl_success;
    for (int64_t r = 0; ok && r < len; r++) {
        float den = 0.0f;
        for (int64_t i = 0; i < d; i++)
            den += fq[r * d + i] * z[i];
        for (int64_t i = 0; i < d; i++)
            O[r * ldo + i] = den > 0.0f ? O[r * ldo + i] / den : 0.0f;
        if (out.bf16)
            c->k->f32_to_bf16(to + r * d, d, (uint16_t *)out.base + (o + r) * out.cols + (int64_t)h * d);
    }
    if (!ok)
        atomic_store(&j->failed, 1);
}

static sqz_status run_linear_attention(cpu_ctx *c, const sqz_binding *b, const sqz_node *node, const attn_shape *a,
                                       const sqz_run_dims *dims)
{
    const int *in = node->inputs;
    attn_job job = {c, b, node, a, dims->max_len, 0, view_of(b, in[0]), view_of(b, in[1]), view_of(b, in[2]),
                    view_of(b, node->output), (const int32_t *)tensor_base(b, in[3]), 0};
    job.per_thread = (size_t)(4 * job.L * a->d + a->d * a->d + a->d);
    sqz_status st = ensure_scratch(c, job.per_thread);
    if (st != SQZ_OK)
        return st;
    sqz_cpu_pool_run(c->pool, linear_attention_task, &job, a->sequences * a->heads);
    if (atomic_load(&job.failed))
        return sqz_fail(SQZ_ERR_BACKEND, "cpu: node '%s': oneDNN sgemm failed", node->name);
    return SQZ_OK;
}

/* The unfused parts (SQZ_DISABLE_FUSION=1, fp32): the same arithmetic, one step per node.
 * Head h of sequence s has the [len][len] block at element score_off[s] * heads + h len^2. */
static void attention_part_task(void *arg, int64_t pair, int worker)
{
    attn_job *j = arg;
    const cpu_ctx *c = j->c;
    const attn_shape *a = j->a;
    const int64_t s = pair / a->heads, L = j->L, d = a->d, o = a->seq_off[s], len = a->seq_off[s + 1] - o;
    const int h = (int)(pair % a->heads);
    float *blk = (float *)j->out.base + (int64_t)a->score_off[s] * a->heads + (int64_t)h * len * len;
    const float *in_blk = (const float *)j->first.base + (blk - (float *)j->out.base);
    float *t1 = thread_scratch(c, j->per_thread, worker), *t2 = t1 + L * d;
    int64_t ld1, ld2;
    bool ok = true;
    switch (j->node->op) {
    case SQZ_OP_ATTN_SCORES: {
        const float *Q = head_slice(c, j->first, o, len, h, a->d, t1, &ld1);
        const float *K = head_slice(c, j->second, o, len, h, a->d, t2, &ld2);
        ok = dnnl_sgemm('N', 'T', len, len, d, a->scale, Q, ld1, K, ld2, 0.0f, blk, len) == dnnl_success;
        break;
    }
    case SQZ_OP_ATTN_KEY_MASK:
        memcpy(blk, in_blk, (size_t)(len * len) * sizeof(float));
        for (int64_t r = 0; r < len; r++)
            mask_keys(blk + r * len, len, j->valid + o);
        break;
    case SQZ_OP_ATTN_SOFTMAX:
        memcpy(blk, in_blk, (size_t)(len * len) * sizeof(float));
        for (int64_t r = 0; r < len; r++)
            c->k->softmax(blk + r * len, len);
        break;
    default: { /* context: P V into the head's columns */
        const float *P = (const float *)j->first.base + (int64_t)a->score_off[s] * a->heads + (int64_t)h * len * len;
        const float *V = head_slice(c, j->second, o, len, h, a->d, t2, &ld2);
        float *O = (float *)j->out.base + o * j->out.cols + (int64_t)h * d;
        ok = dnnl_sgemm('N', 'N', len, d, len, 1.0f, P, len, V, ld2, 0.0f, O, j->out.cols) == dnnl_success;
        break;
    }
    }
    if (!ok)
        atomic_store(&j->failed, 1);
}

static sqz_status run_attention(cpu_ctx *c, const sqz_binding *b, const sqz_node *node, const attn_shape *a,
                                const sqz_run_dims *dims)
{
    const bool fused = node->op == SQZ_OP_ATTENTION;
    if (!fused && c->bf16) /* a masked score is the lowest float, which bf16 cannot hold; so CUDA too */
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "cpu: node '%s': the unfused attention (%s) runs at fp32 only; "
                        "bf16 runs the fused attention", node->name, sqz_op_name(node->op));
    const int *in = node->inputs;
    attn_job job = {c, b, node, a, dims->max_len, 0, view_of(b, in[0]), {0}, {0}, view_of(b, node->output),
                    NULL, 0};
    if (node->op != SQZ_OP_ATTN_SOFTMAX)
        job.second = view_of(b, in[1]);
    if (fused) {
        job.third = view_of(b, in[2]);
        job.valid = (const int32_t *)tensor_base(b, in[3]);
    } else if (node->op == SQZ_OP_ATTN_KEY_MASK) {
        job.valid = (const int32_t *)tensor_base(b, in[1]);
    }
    job.per_thread = (size_t)(job.L * job.L + 4 * job.L * a->d);
    sqz_status st = ensure_scratch(c, job.per_thread);
    if (st != SQZ_OK)
        return st;
    sqz_cpu_pool_run(c->pool, fused ? attention_task : attention_part_task, &job, a->sequences * a->heads);
    if (atomic_load(&job.failed))
        return sqz_fail(SQZ_ERR_BACKEND, "cpu: node '%s': oneDNN sgemm failed", node->name);
    return SQZ_OK;
}

/* ---- row ops ------------------------------------------------------------------------------- */

/* Every index inside its table, or an error naming the node and the table. */
static sqz_status check_indices(const sqz_binding *b, const sqz_node *node, int index_tensor, int table_tensor,
                                int64_t rows, const sqz_run_dims *dims)
{
    const int32_t *idx = (const int32_t *)tensor_base(b, index_tensor);
    const sqz_tensor_desc *table = &b->plan->graph.tensors[table_tensor];
    const int64_t table_rows = sqz_tensor_rows(table, dims); /* a weight, or an activation (the pooler's) */
    for (int64_t r = 0; r < rows; r++)
        if (idx[r] < 0 || idx[r] >= table_rows)
            return sqz_fail(SQZ_ERR_INPUT, "cpu: node '%s': index %d (row %lld) is outside the %lld rows of '%s'",
                            node->name, idx[r], (long long)r, (long long)table_rows, table->name);
    return SQZ_OK;
}

static float gelu_exact(float x)
{
    /* erfc of the negated argument: no cancellation in the negative tail, unlike 1 + erf */
    return (float)(0.5 * x * erfc(-x / sqrt(2.0)));
}

#define ROWS_PER_TASK 16

typedef struct rows_job {
    const cpu_ctx *c;
    const sqz_binding *b;
    const sqz_node *node;
    view a, bv, out;
    int64_t rows;
} rows_job;

/* ROWS_PER_TASK rows of a row op, each row in one pass while it is in L1 */
static void rows_task(void *arg, int64_t task, int worker)
{
    const rows_job *j = arg;
    const cpu_ctx *c = j->c;
    const sqz_binding *b = j->b;
    const int *in = j->node->inputs;
    const view a = j->a, bv = j->bv, out = j->out;
    const int64_t cols = out.cols, end = (task + 1) * ROWS_PER_TASK < j->rows ? (task + 1) * ROWS_PER_TASK : j->rows;
    const float eps = j->node->params.layernorm.eps;
    float *t0 = thread_scratch(c, (size_t)(3 * cols), worker), *t1 = t0 + cols, *t2 = t1 + cols;
    for (int64_t r = task * ROWS_PER_TASK; r < end; r++) {
        float *y = row_dst(out, r, t2);
        switch (j->node->op) {
        case SQZ_OP_GATHER_ROWS:
            memcpy(y, row_in(c, bv, ((const int32_t *)a.base)[r], t0), (size_t)cols * sizeof(float));
            break;
        case SQZ_OP_ADD: c->k->add(row_in(c, a, r, t0), row_in(c, bv, r, t1), cols, y); break;
        case SQZ_OP_GELU: {
            const float *x = row_in(c, a, r, t0);
            for (int64_t i = 0; i < cols; i++)
                y[i] = gelu_exact(x[i]);
            break;
        }
        case SQZ_OP_TANH: {
            const float *x = row_in(c, a, r, t0);
            for (int64_t i = 0; i < cols; i++)
                y[i] = tanhf(x[i]);
            break;
        }
        case SQZ_OP_LAYERNORM:
            c->k->layernorm(row_in(c, a, r, t0), cols, (const float *)tensor_base(b, in[1]),
                            (const float *)tensor_base(b, in[2]), eps, y);
            break;
        case SQZ_OP_ADD_LAYERNORM: /* the residual and its LayerNorm in one pass */
            c->k->add(row_in(c, a, r, t0), row_in(c, bv, r, t1), cols, y);
            c->k->layernorm(y, cols, (const float *)tensor_base(b, in[2]), (const float *)tensor_base(b, in[3]), eps, y);
            break;
        case SQZ_OP_EMBED_LAYERNORM: {
            /* (word + position) + type, the reference's order, then LN */
            const float *word = (const float *)tensor_base(b, in[3]) + (int64_t)((const int32_t *)a.base)[r] * cols;
            const float *pos = (const float *)tensor_base(b, in[4]) + (int64_t)((const int32_t *)bv.base)[r] * cols;
            const float *type =
                (const float *)tensor_base(b, in[5]) + (int64_t)((const int32_t *)tensor_base(b, in[2]))[r] * cols;
            c->k->add(word, pos, cols, y);
            c->k->add(y, type, cols, y);
            c->k->layernorm(y, cols, (const float *)tensor_base(b, in[6]), (const float *)tensor_base(b, in[7]), eps, y);
            break;
        }
        default: break;
        }
        row_out(c, out, r, y);
    }
}

static sqz_status run_rows(cpu_ctx *c, const sqz_binding *b, const sqz_node *node, int64_t rows,
                           const sqz_run_dims *dims)
{
    const int *in = node->inputs;
    const view out = view_of(b, node->output);
    sqz_status st = SQZ_OK;
    if (node->op == SQZ_OP_GATHER_ROWS)
        st = check_indices(b, node, in[0], in[1], rows, dims);
    if (node->op == SQZ_OP_EMBED_LAYERNORM)
        for (int t = 0; t < 3 && st == SQZ_OK; t++)
            st = check_indices(b, node, in[t], in[3 + t], rows, dims);
    if (st == SQZ_OK)
        st = ensure_scratch(c, (size_t)(3 * out.cols));
    if (st != SQZ_OK)
        return st;
    const rows_job job = {c, b, node, node->n_inputs > 0 ? view_of(b, in[0]) : out,
                          node->n_inputs > 1 ? view_of(b, in[1]) : out, out, rows};
    sqz_cpu_pool_run(c->pool, rows_task, (void *)&job, (rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK);
    return SQZ_OK;
}

/* ---- launch ---------------------------------------------------------------------------------- */

static sqz_status launch_checked(cpu_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims);

static sqz_status cpu_launch(void *ctx, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    cpu_ctx *c = ctx;
    /* every oneDNN call runs on the thread that makes it (the team is ours): primitives are
     * made and run with an OpenMP thread count of 1; the caller's setting is put back */
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    sqz_status st = launch_checked(c, b, node, dims);
    omp_set_num_threads(saved);
    return st;
}

static sqz_status launch_checked(cpu_ctx *c, const sqz_binding *b, const sqz_node *node, const sqz_run_dims *dims)
{
    const sqz_tensor_desc *out = &b->plan->graph.tensors[node->output];
    const int64_t rows = sqz_tensor_rows(out, dims);
    /* the matmuls and the weights' copy follow the precision set */
    sqz_status st = sqz_backend_check_dtype("cpu", b, node, c->bf16 ? SQZ_DTYPE_BF16 : SQZ_DTYPE_F32);
    if (st != SQZ_OK)
        return st;
    if (rows > 0) {
        attn_shape a = {0};
        const bool fused = node->op == SQZ_OP_ATTENTION;
        if (fused || (node->op >= SQZ_OP_ATTN_SCORES && node->op <= SQZ_OP_ATTN_CONTEXT)) {
            const int offsets = fused ? 4 : node->op == SQZ_OP_ATTN_SOFTMAX ? 1 : 2;
            a = (attn_shape){node->params.attention.heads, node->params.attention.head_dim,
                             node->params.attention.scale,
                             (const int32_t *)tensor_base(b, node->inputs[offsets]),
                             (const int32_t *)tensor_base(b, node->inputs[offsets + 1]), dims->sequences};
            st = check_sequences(node, &a, dims);
        } else if (node->op == SQZ_OP_LINEAR_ATTENTION) {
            a = (attn_shape){node->params.attention.heads, node->params.attention.head_dim, 0.0f,
                             (const int32_t *)tensor_base(b, node->inputs[4]), NULL, dims->sequences};
            st = check_sequences(node, &a, dims);
        }
        if (st != SQZ_OK)
            return st;
        switch (node->op) {
        case SQZ_OP_LINEAR:
        case SQZ_OP_LINEAR_GELU: st = run_linear(c, b, node, rows); break;
        case SQZ_OP_ATTENTION:
        case SQZ_OP_ATTN_SCORES:
        case SQZ_OP_ATTN_KEY_MASK:
        case SQZ_OP_ATTN_SOFTMAX:
        case SQZ_OP_ATTN_CONTEXT: st = run_attention(c, b, node, &a, dims); break;
        case SQZ_OP_LINEAR_ATTENTION: st = run_linear_attention(c, b, node, &a, dims); break;
        case SQZ_OP_GATHER_ROWS:
        case SQZ_OP_ADD:
        case SQZ_OP_GELU:
        case SQZ_OP_TANH:
        case SQZ_OP_LAYERNORM:
        case SQZ_OP_ADD_LAYERNORM:
        case SQZ_OP_EMBED_LAYERNORM: st = run_rows(c, b, node, rows, dims); break;
        default:
            return sqz_fail(SQZ_ERR_UNSUPPORTED, "cpu: op %s (node '%s') is not implemented", sqz_op_name(node->op),
                            node->name);
        }
    }
    return st;
}

/* every primitive op, and the fused ops named here: a fused op added later is not taken by
 * default */
static bool cpu_supports(void *ctx, const sqz_node *node)
{
    switch (node->op) {
    case SQZ_OP_EMBED_LAYERNORM:
    case SQZ_OP_LINEAR_GELU:
    case SQZ_OP_ADD_LAYERNORM:
        return true;
    case SQZ_OP_ATTENTION: /* q, k and v as three tensors, not one QKV output */
        return !node->params.attention.qkv_groups;
    default:
        return (unsigned)node->op < SQZ_OP_COUNT && !sqz_op_is_fused(node->op);
    }
}

const sqz_backend_ops sqz_cpu_backend = {
    .api_version = SQZ_BACKEND_API_VERSION,
    .name = "cpu",
    .probe = NULL,
    .list_devices = cpu_list_devices,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .describe = cpu_describe,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .supports = cpu_supports,
    .launch = cpu_launch,
    .synchronize = NULL,
    .set_precision = cpu_set_precision,
};
