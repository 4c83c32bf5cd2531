/* The OpenCL backend: any ICD (PoCL on CPUs, NVIDIA's driver on GPUs). Buffers are plain
 * cl_mem objects addressed as (buffer, element offset); the program is built once per
 * device and its binary cached on disk; launches are enqueued on one in-order queue with
 * no clFinish between them. */
#include <CL/cl.h>
#include <CL/cl_ext.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/error.h"

extern const char sqz_opencl_kernels_source[];

#define MAX_HEAD_DIM 128 /* SQZ_MAX_HEAD_DIM in the kernels */

static const char *cl_error_name(cl_int code)
{
    switch (code) {
#define NAME(c) case c: return #c
    NAME(CL_SUCCESS); NAME(CL_DEVICE_NOT_FOUND); NAME(CL_DEVICE_NOT_AVAILABLE);
    NAME(CL_COMPILER_NOT_AVAILABLE); NAME(CL_MEM_OBJECT_ALLOCATION_FAILURE);
    NAME(CL_OUT_OF_RESOURCES); NAME(CL_OUT_OF_HOST_MEMORY); NAME(CL_PROFILING_INFO_NOT_AVAILABLE);
    NAME(CL_MEM_COPY_OVERLAP); NAME(CL_IMAGE_FORMAT_MISMATCH); NAME(CL_IMAGE_FORMAT_NOT_SUPPORTED);
    NAME(CL_BUILD_PROGRAM_FAILURE); NAME(CL_MAP_FAILURE); NAME(CL_MISALIGNED_SUB_BUFFER_OFFSET);
    NAME(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST); NAME(CL_COMPILE_PROGRAM_FAILURE);
    NAME(CL_LINKER_NOT_AVAILABLE); NAME(CL_LINK_PROGRAM_FAILURE); NAME(CL_DEVICE_PARTITION_FAILED);
    NAME(CL_KERNEL_ARG_INFO_NOT_AVAILABLE); NAME(CL_INVALID_VALUE); NAME(CL_INVALID_DEVICE_TYPE);
    NAME(CL_INVALID_PLATFORM); NAME(CL_INVALID_DEVICE); NAME(CL_INVALID_CONTEXT);
    NAME(CL_INVALID_QUEUE_PROPERTIES); NAME(CL_INVALID_COMMAND_QUEUE); NAME(CL_INVALID_HOST_PTR);
    NAME(CL_INVALID_MEM_OBJECT); NAME(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR);
    NAME(CL_INVALID_IMAGE_SIZE); NAME(CL_INVALID_SAMPLER); NAME(CL_INVALID_BINARY);
    NAME(CL_INVALID_BUILD_OPTIONS); NAME(CL_INVALID_PROGRAM); NAME(CL_INVALID_PROGRAM_EXECUTABLE);
    NAME(CL_INVALID_KERNEL_NAME); NAME(CL_INVALID_KERNEL_DEFINITION); NAME(CL_INVALID_KERNEL);
    NAME(CL_INVALID_ARG_INDEX); NAME(CL_INVALID_ARG_VALUE); NAME(CL_INVALID_ARG_SIZE);
    NAME(CL_INVALID_KERNEL_ARGS); NAME(CL_INVALID_WORK_DIMENSION); NAME(CL_INVALID_WORK_GROUP_SIZE);
    NAME(CL_INVALID_WORK_ITEM_SIZE); NAME(CL_INVALID_GLOBAL_OFFSET); NAME(CL_INVALID_EVENT_WAIT_LIST);
    NAME(CL_INVALID_EVENT); NAME(CL_INVALID_OPERATION); NAME(CL_INVALID_GL_OBJECT);
    NAME(CL_INVALID_BUFFER_SIZE); NAME(CL_INVALID_MIP_LEVEL); NAME(CL_INVALID_GLOBAL_WORK_SIZE);
    NAME(CL_INVALID_PROPERTY); NAME(CL_INVALID_IMAGE_DESCRIPTOR); NAME(CL_INVALID_COMPILER_OPTIONS);
    NAME(CL_INVALID_LINKER_OPTIONS); NAME(CL_INVALID_DEVICE_PARTITION_COUNT);
    NAME(CL_PLATFORM_NOT_FOUND_KHR);
#undef NAME
    default: return "unknown OpenCL error";
    }
}

/* Every OpenCL call goes through this: the failing call, its error name, file:line. */
#define CL_TRY(call)                                                                        \
    do {                                                                                    \
        cl_int err_ = (call);                                                               \
        if (err_ != CL_SUCCESS)                                                             \
            return sqz_fail(err_ == CL_MEM_OBJECT_ALLOCATION_FAILURE ||                     \
                                    err_ == CL_OUT_OF_RESOURCES ||                          \
                                    err_ == CL_OUT_OF_HOST_MEMORY                           \
                                ? SQZ_ERR_OUT_OF_MEMORY : SQZ_ERR_BACKEND,                  \
                            "opencl: %s failed: %s (%d) at %s:%d", #call,                   \
                            cl_error_name(err_), (int)err_, __FILE__, __LINE__);            \
    } while (0)

typedef enum kernel_id {
    K_GATHER_ROWS, K_ADD, K_GELU, K_TANH, K_LAYERNORM, K_ADD_LAYERNORM, K_EMBED_LAYERNORM,
    K_LINEAR, K_ATTN_SCORES, K_ATTN_KEY_MASK, K_ATTN_SOFTMAX, K_ATTN_CONTEXT, K_ATTENTION,
    K_ATTENTION_D64, K_LINEAR_ATTENTION, K_COUNT
} kernel_id;

static const char *const kernel_names[K_COUNT] = {
    "sqz_gather_rows", "sqz_add", "sqz_gelu", "sqz_tanh", "sqz_layernorm", "sqz_add_layernorm",
    "sqz_embed_layernorm", "sqz_linear", "sqz_attn_scores", "sqz_attn_key_mask",
    "sqz_attn_softmax", "sqz_attn_context", "sqz_attention", "sqz_attention_d64",
    "sqz_linear_attention",
};

struct sqz_buffer {
    cl_mem mem;
    size_t bytes;
};

typedef struct cl_backend {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    cl_program program;
    cl_kernel kernels[K_COUNT];
    cl_ulong max_alloc;
    char description[512];
    char cache_dir[1024]; /* the setting opencl.cache_dir, or "" */
} cl_backend;

/* ---- device discovery ------------------------------------------------------------------- */

typedef struct device_entry {
    cl_platform_id platform;
    cl_device_id device;
} device_entry;

/* All devices of all platforms, in platform order. */
static sqz_status enumerate(device_entry **out, cl_uint *count)
{
    *out = NULL;
    *count = 0;
    cl_uint n_platforms = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &n_platforms);
    if (err == CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && n_platforms == 0))
        return sqz_fail(SQZ_ERR_NO_DEVICE,
                        "opencl: no OpenCL platform is installed (no ICD found: install "
                        "pocl-opencl-icd or a GPU driver; in GPU containers see OCL_ICD_VENDORS "
                        "in docs/opencl.md)");
    CL_TRY(err);
    cl_platform_id platforms[16];
    if (n_platforms > 16)
        n_platforms = 16;
    CL_TRY(clGetPlatformIDs(n_platforms, platforms, NULL));
    device_entry *list = NULL;
    cl_uint total = 0;
    for (cl_uint p = 0; p < n_platforms; p++) {
        cl_uint n = 0;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, NULL, &n) != CL_SUCCESS || n == 0)
            continue;
        cl_device_id ids[64];
        if (n > 64)
            n = 64;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, n, ids, NULL) != CL_SUCCESS)
            continue;
        device_entry *bigger = realloc(list, (total + n) * sizeof *list);
        if (!bigger) {
            free(list);
            return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
        }
        list = bigger;
        for (cl_uint d = 0; d < n; d++)
            list[total++] = (device_entry){platforms[p], ids[d]};
    }
    if (total == 0) {
        free(list);
        return sqz_fail(SQZ_ERR_NO_DEVICE, "opencl: %u platform(s) but no device", n_platforms);
    }
    *out = list;
    *count = total;
    return SQZ_OK;
}

static void device_string(cl_device_id d, cl_device_info what, char *out, size_t size)
{
    out[0] = '\0';
    if (clGetDeviceInfo(d, what, size, out, NULL) != CL_SUCCESS)
        snprintf(out, size, "?");
}

static void platform_string(cl_platform_id p, cl_platform_info what, char *out, size_t size)
{
    out[0] = '\0';
    if (clGetPlatformInfo(p, what, size, out, NULL) != CL_SUCCESS)
        snprintf(out, size, "?");
}

static sqz_status probe(void)
{
    device_entry *list;
    cl_uint n;
    sqz_status st = enumerate(&list, &n);
    free(list);
    return st;
}

static sqz_status cl_list_devices(char **text)
{
    device_entry *list;
    cl_uint n;
    sqz_status st = enumerate(&list, &n);
    if (st != SQZ_OK)
        return sqz_text_append(text, "opencl   -  %s\n", sqz_last_error());
    for (cl_uint i = 0; i < n && st == SQZ_OK; i++) {
        char name[256], platform[256], version[256];
        cl_ulong mem = 0, alloc = 0;
        cl_uint units = 0;
        cl_device_type type = 0;
        device_string(list[i].device, CL_DEVICE_NAME, name, sizeof name);
        device_string(list[i].device, CL_DEVICE_VERSION, version, sizeof version);
        platform_string(list[i].platform, CL_PLATFORM_NAME, platform, sizeof platform);
        clGetDeviceInfo(list[i].device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
        clGetDeviceInfo(list[i].device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, NULL);
        clGetDeviceInfo(list[i].device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL);
        clGetDeviceInfo(list[i].device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
        st = sqz_text_append(text, "opencl   %u  %s [%s] (%s, %s): %.1f GiB, max buffer %.1f GiB, %u compute units\n",
                             i, name, type & CL_DEVICE_TYPE_GPU ? "GPU" : type & CL_DEVICE_TYPE_CPU ? "CPU" : "other",
                             platform, version, mem / 1073741824.0, alloc / 1073741824.0, units);
    }
    free(list);
    return st;
}

/* ---- program build with an on-disk binary cache ----------------------------------------- */

static uint64_t fnv1a(uint64_t h, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)data[i];
        h *= 1099511628211ull;
    }
    return h;
}

static const char build_options[] = "-cl-std=CL1.2";

/* The setting opencl.cache_dir (the command line fills it from $SQZ_CACHE_DIR), else
 * $XDG_CACHE_HOME/squeezebert, else ~/.cache/squeezebert, as any program finds its cache;
 * "" if none. */
static void cache_path(const cl_backend *b, char *out, size_t size)
{
    char dir[1024];
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (b->cache_dir[0])
        snprintf(dir, sizeof dir, "%s", b->cache_dir);
    else if (xdg && *xdg)
        snprintf(dir, sizeof dir, "%s/squeezebert", xdg);
    else if (home && *home)
        snprintf(dir, sizeof dir, "%s/.cache/squeezebert", home);
    else {
        out[0] = '\0';
        return;
    }
    /* key: source, options, device, driver */
    char name[256], driver[256], version[256];
    device_string(b->device, CL_DEVICE_NAME, name, sizeof name);
    device_string(b->device, CL_DRIVER_VERSION, driver, sizeof driver);
    platform_string(b->platform, CL_PLATFORM_VERSION, version, sizeof version);
    uint64_t h = 1469598103934665603ull;
    h = fnv1a(h, sqz_opencl_kernels_source, strlen(sqz_opencl_kernels_source));
    h = fnv1a(h, build_options, sizeof build_options);
    h = fnv1a(h, name, strlen(name));
    h = fnv1a(h, driver, strlen(driver));
    h = fnv1a(h, version, strlen(version));
    mkdir(dir, 0755); /* parents are the user's; a failure only disables the cache */
    snprintf(out, size, "%s/opencl-%016llx.bin", dir, (unsigned long long)h);
}

static sqz_status build_log_failure(cl_backend *b, cl_int err)
{
    size_t n = 0;
    clGetProgramBuildInfo(b->program, b->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n);
    char *log = malloc(n + 1);
    if (log) {
        log[0] = '\0';
        clGetProgramBuildInfo(b->program, b->device, CL_PROGRAM_BUILD_LOG, n, log, NULL);
        log[n] = '\0';
    }
    sqz_status st = sqz_fail(SQZ_ERR_BACKEND, "opencl: clBuildProgram failed: %s (%d); build log:\n%.1500s",
                             cl_error_name(err), (int)err, log ? log : "(unavailable)");
    free(log);
    return st;
}

static bool load_cached(cl_backend *b, const char *path)
{
    FILE *f = path[0] ? fopen(path, "rb") : NULL;
    if (!f)
        return false;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = n > 0 ? malloc((size_t)n) : NULL;
    bool ok = data && fread(data, 1, (size_t)n, f) == (size_t)n;
    fclose(f);
    if (ok) {
        size_t size = (size_t)n;
        const unsigned char *bin = data;
        cl_int status = 0, err = 0;
        b->program = clCreateProgramWithBinary(b->context, 1, &b->device, &size, &bin, &status, &err);
        ok = err == CL_SUCCESS && status == CL_SUCCESS &&
             clBuildProgram(b->program, 1, &b->device, build_options, NULL, NULL) == CL_SUCCESS;
        if (!ok && b->program) {
            clReleaseProgram(b->program);
            b->program = NULL;
        }
    }
    free(data);
    return ok; /* a stale or foreign binary just means building from source */
}

/* with the pid, a temporary name no other writer of the cache (thread or process) uses */
static unsigned long cache_writes;

static void store_cached(cl_backend *b, const char *path)
{
    size_t size = 0;
    if (!path[0] || clGetProgramInfo(b->program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0)
        return;
    unsigned char *data = malloc(size);
    if (!data)
        return;
    if (clGetProgramInfo(b->program, CL_PROGRAM_BINARIES, sizeof data, &data, NULL) == CL_SUCCESS) {
        char tmp[1200];
        snprintf(tmp, sizeof tmp, "%s.%ld.%lu.tmp", path, (long)getpid(),
                 __atomic_add_fetch(&cache_writes, 1, __ATOMIC_RELAXED));
        FILE *f = fopen(tmp, "wb");
        if (f) {
            bool ok = fwrite(data, 1, size, f) == size;
            ok = fclose(f) == 0 && ok;
            if (!ok || rename(tmp, path) != 0) /* atomic: readers never see half a file */
                remove(tmp);
        }
    }
    free(data);
}

static sqz_status build_program(cl_backend *b)
{
    char path[1100];
    cache_path(b, path, sizeof path);
    if (load_cached(b, path))
        return SQZ_OK;
    const char *src = sqz_opencl_kernels_source;
    cl_int err;
    b->program = clCreateProgramWithSource(b->context, 1, &src, NULL, &err);
    CL_TRY(err);
    err = clBuildProgram(b->program, 1, &b->device, build_options, NULL, NULL);
    if (err != CL_SUCCESS)
        return build_log_failure(b, err);
    store_cached(b, path);
    return SQZ_OK;
}

/* ---- backend slots -------------------------------------------------------------------------- */

static void cl_destroy(void *ctx)
{
    cl_backend *b = ctx;
    if (!b)
        return;
    for (int k = 0; k < K_COUNT; k++)
        if (b->kernels[k])
            clReleaseKernel(b->kernels[k]);
    if (b->program)
        clReleaseProgram(b->program);
    if (b->queue)
        clReleaseCommandQueue(b->queue);
    if (b->context)
        clReleaseContext(b->context);
    free(b);
}

static sqz_status select_device(cl_backend *b, const char *want)
{
    device_entry *list;
    cl_uint n;
    sqz_status st = enumerate(&list, &n);
    if (st != SQZ_OK)
        return st;
    int chosen = -1;
    if (!want || !*want) {
        for (cl_uint i = 0; i < n && chosen < 0; i++) { /* first GPU, else the first device */
            cl_device_type type = 0;
            clGetDeviceInfo(list[i].device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
            if (type & CL_DEVICE_TYPE_GPU)
                chosen = (int)i;
        }
        if (chosen < 0)
            chosen = 0;
    } else {
        char *end = NULL;
        long index = strtol(want, &end, 10);
        if (end && *end == '\0' && index >= 0 && index < (long)n)
            chosen = (int)index;
        for (cl_uint i = 0; i < n && chosen < 0; i++) {
            char name[256];
            device_string(list[i].device, CL_DEVICE_NAME, name, sizeof name);
            if (strstr(name, want))
                chosen = (int)i;
        }
        if (chosen < 0) {
            free(list);
            return sqz_fail(SQZ_ERR_INVALID_ARGUMENT, "opencl: no device matches '%s' (%u device(s); "
                            "see `sqz devices`)", want, n);
        }
    }
    b->platform = list[chosen].platform;
    b->device = list[chosen].device;
    free(list);
    return SQZ_OK;
}

static sqz_status cl_create_checked(cl_backend *b, const char *device)
{
    sqz_status st = select_device(b, device);
    if (st != SQZ_OK)
        return st;
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)b->platform, 0};
    b->context = clCreateContext(props, 1, &b->device, NULL, NULL, &err);
    CL_TRY(err);
    b->queue = clCreateCommandQueue(b->context, b->device, 0, &err);
    CL_TRY(err);
    CL_TRY(clGetDeviceInfo(b->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof b->max_alloc, &b->max_alloc, NULL));
    if ((st = build_program(b)) != SQZ_OK)
        return st;
    for (int k = 0; k < K_COUNT; k++) {
        b->kernels[k] = clCreateKernel(b->program, kernel_names[k], &err);
        if (err != CL_SUCCESS)
            return sqz_fail(SQZ_ERR_BACKEND, "opencl: clCreateKernel(%s) failed: %s (%d)",
                            kernel_names[k], cl_error_name(err), (int)err);
    }
    char name[256], platform[256];
    cl_ulong mem = 0;
    device_string(b->device, CL_DEVICE_NAME, name, sizeof name);
    platform_string(b->platform, CL_PLATFORM_NAME, platform, sizeof platform);
    clGetDeviceInfo(b->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    snprintf(b->description, sizeof b->description, "%s (%s), %.1f GiB", name, platform,
             mem / 1073741824.0);
    return SQZ_OK;
}

static sqz_status cl_create(void **ctx, const char *device, const char *settings)
{
    static const char *const known[] = {"cache_dir", NULL};
    sqz_status st = sqz_settings_check(settings, "opencl", known);
    if (st != SQZ_OK)
        return st;
    cl_backend *b = calloc(1, sizeof *b);
    if (!b)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    sqz_settings_get(settings, "opencl", "cache_dir", b->cache_dir, sizeof b->cache_dir);
    st = cl_create_checked(b, device);
    if (st != SQZ_OK) {
        cl_destroy(b);
        return st;
    }
    *ctx = b;
    return SQZ_OK;
}

static const char *cl_describe(void *ctx) { return ((cl_backend *)ctx)->description; }

static sqz_status cl_buffer_alloc(void *ctx, size_t bytes, sqz_buffer **out)
{
    cl_backend *b = ctx;
    if (bytes == 0)
        bytes = 4;
    if (bytes > b->max_alloc)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "opencl: %zu bytes exceed this device's largest buffer "
                        "(%llu bytes); use a smaller batch", bytes, (unsigned long long)b->max_alloc);
    sqz_buffer *buf = calloc(1, sizeof *buf);
    if (!buf)
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "out of memory");
    cl_int err;
    buf->mem = clCreateBuffer(b->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS) {
        free(buf);
        CL_TRY(err);
    }
    buf->bytes = bytes;
    *out = buf;
    return SQZ_OK;
}

static void cl_buffer_free(void *ctx, sqz_buffer *buf)
{
    if (buf && buf->mem)
        clReleaseMemObject(buf->mem);
    free(buf);
}

static sqz_status cl_upload(void *ctx, sqz_buffer *dst, size_t offset, const void *src, size_t bytes)
{
    cl_backend *b = ctx;
    if (offset > dst->bytes || bytes > dst->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "opencl: upload of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, dst->bytes);
    if (bytes)
        CL_TRY(clEnqueueWriteBuffer(b->queue, dst->mem, CL_TRUE, offset, bytes, src, 0, NULL, NULL));
    return SQZ_OK;
}

static sqz_status cl_download(void *ctx, sqz_buffer *src, size_t offset, void *dst, size_t bytes)
{
    cl_backend *b = ctx;
    if (offset > src->bytes || bytes > src->bytes - offset)
        return sqz_fail(SQZ_ERR_INTERNAL, "opencl: download of %zu bytes at %zu overruns a %zu-byte buffer",
                        bytes, offset, src->bytes);
    if (bytes)
        CL_TRY(clEnqueueReadBuffer(b->queue, src->mem, CL_TRUE, offset, bytes, dst, 0, NULL, NULL));
    return SQZ_OK;
}

static sqz_status cl_synchronize(void *ctx) { CL_TRY(clFinish(((cl_backend *)ctx)->queue)); return SQZ_OK; }

static bool cl_supports(void *ctx, const sqz_node *node)
{
    switch (node->op) { /* the fused ops named here; one added later is not taken by default */
    case SQZ_OP_ATTENTION: /* q, k and v as three tensors, not one QKV output */
    case SQZ_OP_LINEAR_ATTENTION: /* per-head sums in registers */
        return node->params.attention.head_dim <= MAX_HEAD_DIM && !node->params.attention.qkv_groups;
    case SQZ_OP_EMBED_LAYERNORM:
    case SQZ_OP_LINEAR_GELU:
    case SQZ_OP_ADD_LAYERNORM:
        return true;
    default:
        return (unsigned)node->op < SQZ_OP_COUNT && !sqz_op_is_fused(node->op);
    }
}

/* ---- launches ------------------------------------------------------------------------------ */

typedef struct args {
    cl_kernel kernel;
    cl_uint next;
    cl_int err;
} args;

static void arg(args *a, size_t size, const void *value)
{
    if (a->err == CL_SUCCESS)
        a->err = clSetKernelArg(a->kernel, a->next, size, value);
    a->next++;
}

static void arg_int(args *a, int64_t v)
{
    cl_int x = (cl_int)v;
    arg(a, sizeof x, &x);
}

static void arg_tensor(args *a, const sqz_binding *bind, int tensor)
{
    const sqz_tensor_desc *d = &bind->plan->graph.tensors[tensor];
    const bool weight = d->kind == SQZ_TENSOR_WEIGHT;
    cl_mem mem = weight ? bind->weights->mem : bind->arena->mem;
    size_t bytes = weight ? bind->weight_offsets[d->weight_index] : (size_t)bind->plan->offsets[tensor];
    cl_ulong elements = bytes / 4;
    arg(a, sizeof mem, &mem);
    arg(a, sizeof elements, &elements);
}

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

static sqz_status cl_launch(void *ctx, const sqz_binding *bind, const sqz_node *node,
                            const sqz_run_dims *dims)
{
    cl_backend *b = ctx;
    const sqz_graph *g = &bind->plan->graph;
    const sqz_tensor_desc *out = &g->tensors[node->output];
    const int64_t rows = sqz_tensor_rows(out, dims), cols = out->cols;
    const int *in = node->inputs;
    const sqz_op_params *p = &node->params;
    sqz_status st = sqz_backend_check_dtype("opencl", bind, node, SQZ_DTYPE_F32); /* fp32 kernels only */
    if (st != SQZ_OK)
        return st;
    kernel_id k;
    switch (node->op) {
    case SQZ_OP_GATHER_ROWS: k = K_GATHER_ROWS; break;
    case SQZ_OP_ADD: k = K_ADD; break;
    case SQZ_OP_GELU: k = K_GELU; break;
    case SQZ_OP_TANH: k = K_TANH; break;
    case SQZ_OP_LAYERNORM: k = K_LAYERNORM; break;
    case SQZ_OP_ADD_LAYERNORM: k = K_ADD_LAYERNORM; break;
    case SQZ_OP_EMBED_LAYERNORM: k = K_EMBED_LAYERNORM; break;
    case SQZ_OP_LINEAR:
    case SQZ_OP_LINEAR_GELU: k = K_LINEAR; break;
    case SQZ_OP_ATTN_SCORES: k = K_ATTN_SCORES; break;
    case SQZ_OP_ATTN_KEY_MASK: k = K_ATTN_KEY_MASK; break;
    case SQZ_OP_ATTN_SOFTMAX: k = K_ATTN_SOFTMAX; break;
    case SQZ_OP_ATTN_CONTEXT: k = K_ATTN_CONTEXT; break;
    case SQZ_OP_ATTENTION: k = p->attention.head_dim == 64 ? K_ATTENTION_D64 : K_ATTENTION; break;
    case SQZ_OP_LINEAR_ATTENTION: k = K_LINEAR_ATTENTION; break;
    default:
        return sqz_fail(SQZ_ERR_UNSUPPORTED, "opencl: op %s (node '%s') is not implemented",
                        sqz_op_name(node->op), node->name);
    }
    if (rows == 0)
        return SQZ_OK;
    args a = {b->kernels[k], 0, CL_SUCCESS};
    size_t global[3] = {1, 1, 1}, local[3] = {1, 1, 1};
    cl_uint work_dims = 1;
    bool explicit_local = false;
    for (int i = 0; i < node->n_inputs; i++) /* every kernel takes its tensors first, in node order */
        if (in[i] >= 0)
            arg_tensor(&a, bind, in[i]);
    switch (node->op) {
    case SQZ_OP_GATHER_ROWS:
        arg_tensor(&a, bind, node->output);
        arg_int(&a, rows), arg_int(&a, cols), arg_int(&a, sqz_tensor_rows(&g->tensors[in[1]], dims));
        global[0] = (size_t)cols, global[1] = (size_t)rows, work_dims = 2;
        break;
    case SQZ_OP_ADD:
    case SQZ_OP_GELU:
    case SQZ_OP_TANH: {
        arg_tensor(&a, bind, node->output);
        cl_ulong n = (cl_ulong)(rows * cols);
        arg(&a, sizeof n, &n);
        global[0] = (size_t)n;
        break;
    }
    case SQZ_OP_LAYERNORM:
    case SQZ_OP_ADD_LAYERNORM: {
        arg_tensor(&a, bind, node->output);
        arg_int(&a, rows), arg_int(&a, cols);
        float eps = p->layernorm.eps;
        arg(&a, sizeof eps, &eps);
        global[0] = (size_t)rows;
        break;
    }
    case SQZ_OP_EMBED_LAYERNORM: {
        arg_tensor(&a, bind, node->output);
        arg_int(&a, rows), arg_int(&a, cols);
        for (int t = 3; t < 6; t++)
            arg_int(&a, g->tensors[in[t]].fixed_rows);
        float eps = p->layernorm.eps;
        arg(&a, sizeof eps, &eps);
        global[0] = (size_t)rows;
        break;
    }
    case SQZ_OP_LINEAR:
    case SQZ_OP_LINEAR_GELU: {
        const bool has_bias = node->n_inputs > 2 && in[2] >= 0;
        if (!has_bias)
            arg_tensor(&a, bind, in[1]); /* any valid buffer; the kernel does not read it */
        arg_tensor(&a, bind, node->output);
        arg_int(&a, rows), arg_int(&a, g->tensors[in[0]].cols), arg_int(&a, cols);
        arg_int(&a, p->linear.groups), arg_int(&a, has_bias), arg_int(&a, node->op == SQZ_OP_LINEAR_GELU);
        /* 16 output tiles per work-group along dim 0 measured best on PoCL (AVX-512) */
        local[0] = 16, local[1] = 1;
        global[0] = round_up((size_t)((cols + 3) / 4), local[0]);
        global[1] = (size_t)((rows + 3) / 4);
        work_dims = 2;
        explicit_local = true;
        break;
    }
    case SQZ_OP_ATTN_SCORES: {
        arg_tensor(&a, bind, node->output);
        arg_int(&a, dims->tokens), arg_int(&a, dims->sequences), arg_int(&a, p->attention.heads);
        arg_int(&a, p->attention.head_dim);
        float scale = p->attention.scale;
        arg(&a, sizeof scale, &scale);
        arg_int(&a, dims->max_len);
        global[0] = (size_t)dims->tokens, global[1] = (size_t)p->attention.heads;
        global[2] = (size_t)dims->max_len, work_dims = 3;
        break;
    }
    case SQZ_OP_ATTN_KEY_MASK:
        arg_tensor(&a, bind, node->output);
        arg_int(&a, dims->tokens), arg_int(&a, dims->sequences), arg_int(&a, p->attention.heads);
        arg_int(&a, dims->max_len);
        global[0] = (size_t)dims->tokens, global[1] = (size_t)p->attention.heads;
        global[2] = (size_t)dims->max_len, work_dims = 3;
        break;
    case SQZ_OP_ATTN_SOFTMAX:
        arg_tensor(&a, bind, node->output);
        arg_int(&a, dims->tokens), arg_int(&a, dims->sequences), arg_int(&a, p->attention.heads);
        global[0] = (size_t)dims->tokens, global[1] = (size_t)p->attention.heads, work_dims = 2;
        break;
    case SQZ_OP_ATTN_CONTEXT:
        arg_tensor(&a, bind, node->output);
        arg_int(&a, dims->tokens), arg_int(&a, dims->sequences), arg_int(&a, p->attention.heads);
        arg_int(&a, p->attention.head_dim);
        global[0] = (size_t)dims->tokens, global[1] = (size_t)p->attention.heads;
        global[2] = (size_t)p->attention.head_dim, work_dims = 3;
        break;
    case SQZ_OP_ATTENTION: {
        arg_tensor(&a, bind, node->output);
        arg_int(&a, dims->tokens), arg_int(&a, dims->sequences), arg_int(&a, p->attention.heads);
        arg_int(&a, p->attention.head_dim);
        float scale = p->attention.scale;
        arg(&a, sizeof scale, &scale);
        global[0] = (size_t)dims->tokens, global[1] = (size_t)p->attention.heads, work_dims = 2;
        break;
    }
    case SQZ_OP_LINEAR_ATTENTION:
        arg_tensor(&a, bind, node->output);
        arg_int(&a, dims->sequences), arg_int(&a, p->attention.heads), arg_int(&a, p->attention.head_dim);
        global[0] = (size_t)(dims->sequences * p->attention.head_dim), global[1] = (size_t)p->attention.heads;
        work_dims = 2;
        break;
    default: break;
    }
    if (a.err != CL_SUCCESS)
        return sqz_fail(SQZ_ERR_BACKEND, "opencl: clSetKernelArg(%s, %u) for node '%s' failed: %s (%d)",
                        kernel_names[k], a.next - 1, node->name, cl_error_name(a.err), (int)a.err);
    cl_int err = clEnqueueNDRangeKernel(b->queue, b->kernels[k], work_dims, NULL, global,
                                        explicit_local ? local : NULL, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return sqz_fail(SQZ_ERR_BACKEND, "opencl: clEnqueueNDRangeKernel(%s) for node '%s' failed: %s (%d)",
                        kernel_names[k], node->name, cl_error_name(err), (int)err);
    return SQZ_OK;
}

const sqz_backend_ops sqz_opencl_backend = {
    .api_version = SQZ_BACKEND_API_VERSION,
    .name = "opencl",
    .probe = probe,
    .list_devices = cl_list_devices,
    .create = cl_create,
    .destroy = cl_destroy,
    .describe = cl_describe,
    .buffer_alloc = cl_buffer_alloc,
    .buffer_free = cl_buffer_free,
    .upload = cl_upload,
    .download = cl_download,
    .supports = cl_supports,
    .launch = cl_launch,
    .synchronize = cl_synchronize,
};
