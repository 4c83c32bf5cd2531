/* The pickle machine (runtime/pickle.h): it knows only the opcodes and the handful of
 * callables torch.save emits for a dict of tensors; anything else is refused before it
 * could mean anything. Nothing here recurses on file data: containers are built on an
 * explicit stack, and every count that file data can drive is bounded below. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/pickle.h"
#include "runtime/tensor_file_internal.h"

#define PK_MAX_STRING 65536 /* no string torch.save writes for a state dict is near this */
#define PK_MAX_GLOBAL_LINE 256
#define PK_MAX_VALUES ((size_t)SQZ_TF_MAX_TENSORS * 40) /* objects and container slots */

static sqz_status pk_error(sqz_pk_machine *m, const char *what)
{
    return sqz_fail(SQZ_ERR_FORMAT, "%s: malformed pickle at offset %zu in %s (entry %s): %s",
                    m->path, m->op_pos, m->path, m->entry, what);
}

static sqz_status pk_oom(sqz_pk_machine *m)
{
    return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory reading the pickle (entry %s)",
                    m->path, m->entry);
}

static void pk_free_value(sqz_pk_value *v)
{
    switch (v->kind) {
    case SQZ_PK_STR:
        free(v->u.str.s);
        break;
    case SQZ_PK_TUPLE:
    case SQZ_PK_LIST:
    case SQZ_PK_DICT:
        free(v->u.seq.items);
        break;
    case SQZ_PK_TENSOR:
        free(v->u.tensor);
        break;
    default:
        break;
    }
    free(v);
}

void sqz_pk_free(sqz_pk_machine *m)
{
    for (size_t i = 0; i < m->n_all; i++)
        pk_free_value(m->all[i]);
    free(m->all);
    free(m->stack);
    free(m->marks);
    free(m->memo);
}

/* Grows *arr (of `elem` bytes each) so that it holds at least `need` elements. */
static int pk_reserve(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / elem)
        return 0;
    void *p = realloc(*arr, n * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = n;
    return 1;
}

static sqz_status pk_charge(sqz_pk_machine *m, size_t n)
{
    if (n > PK_MAX_VALUES - m->budget_used)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: pickle in entry %s builds more than %zu objects (at offset %zu): "
                        "far more than a state dict needs",
                        m->path, m->entry, PK_MAX_VALUES, m->op_pos);
    m->budget_used += n;
    return SQZ_OK;
}

static sqz_status pk_new(sqz_pk_machine *m, sqz_pk_kind kind, sqz_pk_value **out)
{
    sqz_status status = pk_charge(m, 1);
    if (status != SQZ_OK)
        return status;
    if (!pk_reserve((void **)&m->all, &m->all_cap, m->n_all + 1, sizeof *m->all))
        return pk_oom(m);
    sqz_pk_value *v = calloc(1, sizeof *v);
    if (!v)
        return pk_oom(m);
    v->kind = kind;
    m->all[m->n_all++] = v;
    *out = v;
    return SQZ_OK;
}

static sqz_status pk_push(sqz_pk_machine *m, sqz_pk_value *v)
{
    if (m->depth >= SQZ_TF_MAX_PICKLE_STACK)
        return sqz_fail(SQZ_ERR_FORMAT,
                        "%s: pickle stack deeper than %d at offset %zu in %s (entry %s)",
                        m->path, SQZ_TF_MAX_PICKLE_STACK, m->op_pos, m->path, m->entry);
    if (!pk_reserve((void **)&m->stack, &m->stack_cap, m->depth + 1, sizeof *m->stack))
        return pk_oom(m);
    m->stack[m->depth++] = v;
    return SQZ_OK;
}

static sqz_status pk_pop(sqz_pk_machine *m, sqz_pk_value **out)
{
    size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    if (m->depth <= floor)
        return pk_error(m, "stack underflow (or a pop across a MARK)");
    *out = m->stack[--m->depth];
    return SQZ_OK;
}

/* Pops the topmost mark; returns the index where the marked items start. */
static sqz_status pk_pop_mark(sqz_pk_machine *m, size_t *start)
{
    if (m->n_marks == 0)
        return pk_error(m, "no MARK on the stack");
    *start = m->marks[--m->n_marks];
    return SQZ_OK;
}

static sqz_status pk_seq_append(sqz_pk_machine *m, sqz_pk_value *seq, sqz_pk_value **items,
                                size_t n)
{
    sqz_status status = pk_charge(m, n);
    if (status != SQZ_OK)
        return status;
    if (!pk_reserve((void **)&seq->u.seq.items, &seq->u.seq.cap, seq->u.seq.n + n,
                    sizeof *seq->u.seq.items))
        return pk_oom(m);
    if (n)
        memcpy(seq->u.seq.items + seq->u.seq.n, items, n * sizeof *items);
    seq->u.seq.n += n;
    return SQZ_OK;
}

/* Makes a tuple/list/dict of the n top stack items (popping them) and pushes it. */
static sqz_status pk_collect(sqz_pk_machine *m, sqz_pk_kind kind, size_t start)
{
    size_t n = m->depth - start;
    if (kind == SQZ_PK_DICT && n % 2)
        return pk_error(m, "DICT needs key/value pairs but has an odd number of items");
    sqz_pk_value *v = NULL;
    sqz_status status = pk_new(m, kind, &v);
    if (status == SQZ_OK)
        status = pk_seq_append(m, v, m->stack + start, n);
    if (status != SQZ_OK)
        return status;
    m->depth = start;
    return pk_push(m, v);
}

static sqz_status pk_need(sqz_pk_machine *m, size_t n)
{
    if (m->len - m->pos < n) {
        char what[96];
        snprintf(what, sizeof what, "opcode 0x%02x needs %zu more bytes, only %zu left",
                 m->buf[m->op_pos], n, m->len - m->pos);
        return pk_error(m, what);
    }
    return SQZ_OK;
}

static uint64_t pk_read_uint(sqz_pk_machine *m, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = v << 8 | m->buf[m->pos + i - 1];
    m->pos += n;
    return v;
}

static sqz_status pk_push_string(sqz_pk_machine *m, size_t len)
{
    sqz_status status = pk_need(m, len);
    if (status != SQZ_OK)
        return status;
    if (len > PK_MAX_STRING)
        return pk_error(m, "string longer than 64 KiB");
    if (memchr(m->buf + m->pos, '\0', len))
        return pk_error(m, "string contains a NUL byte");
    sqz_pk_value *v = NULL;
    status = pk_new(m, SQZ_PK_STR, &v);
    if (status != SQZ_OK)
        return status;
    v->u.str.s = malloc(len + 1);
    if (!v->u.str.s)
        return pk_oom(m);
    memcpy(v->u.str.s, m->buf + m->pos, len);
    v->u.str.s[len] = '\0';
    v->u.str.len = len;
    m->pos += len;
    return pk_push(m, v);
}

static sqz_status pk_push_int(sqz_pk_machine *m, int64_t i)
{
    sqz_pk_value *v = NULL;
    sqz_status status = pk_new(m, SQZ_PK_INT, &v);
    if (status != SQZ_OK)
        return status;
    v->u.i = i;
    return pk_push(m, v);
}

static const struct {
    const char *name;
    sqz_tf_dtype dtype;
} storage_classes[] = {
    {"FloatStorage", SQZ_TF_F32}, {"HalfStorage", SQZ_TF_F16},  {"BFloat16Storage", SQZ_TF_BF16},
    {"DoubleStorage", SQZ_TF_F64}, {"LongStorage", SQZ_TF_I64}, {"IntStorage", SQZ_TF_I32},
    {"ShortStorage", SQZ_TF_I16}, {"CharStorage", SQZ_TF_I8},   {"ByteStorage", SQZ_TF_U8},
    {"BoolStorage", SQZ_TF_BOOL},
};

/* The allow-list: a name that is not here is refused before anything refers to it. */
static sqz_status pk_push_global(sqz_pk_machine *m, const char *module, size_t module_len,
                                 const char *name, size_t name_len)
{
    sqz_pk_callable which = SQZ_PK_CALL_ORDERED_DICT;
    sqz_tf_dtype dtype = SQZ_TF_F32;
    int ok = 0;
#define IS(s, len, lit) ((len) == sizeof(lit) - 1 && memcmp((s), (lit), (len)) == 0)
    if (IS(module, module_len, "collections") && IS(name, name_len, "OrderedDict")) {
        which = SQZ_PK_CALL_ORDERED_DICT;
        ok = 1;
    } else if (IS(module, module_len, "torch._utils") &&
               IS(name, name_len, "_rebuild_tensor_v2")) {
        which = SQZ_PK_CALL_REBUILD_TENSOR_V2;
        ok = 1;
    } else if (IS(module, module_len, "torch._utils") &&
               IS(name, name_len, "_rebuild_parameter")) {
        which = SQZ_PK_CALL_REBUILD_PARAMETER;
        ok = 1;
    } else if (IS(module, module_len, "torch")) {
        for (size_t k = 0; k < sizeof storage_classes / sizeof storage_classes[0]; k++) {
            if (name_len == strlen(storage_classes[k].name) &&
                memcmp(name, storage_classes[k].name, name_len) == 0) {
                which = SQZ_PK_CALL_STORAGE;
                dtype = storage_classes[k].dtype;
                ok = 1;
            }
        }
    }
#undef IS
    if (!ok) {
        char mod[100], nam[100];
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: pickle refers to class %s.%s which is not allowed (at offset %zu in "
                        "%s, entry %s; only collections.OrderedDict, "
                        "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and "
                        "torch.*Storage are)",
                        m->path, sqz_tf_printable(module, module_len, mod, sizeof mod),
                        sqz_tf_printable(name, name_len, nam, sizeof nam), m->op_pos, m->path,
                        m->entry);
    }
    sqz_pk_value *v = NULL;
    sqz_status status = pk_new(m, SQZ_PK_GLOBAL, &v);
    if (status != SQZ_OK)
        return status;
    v->u.global.which = which;
    v->u.global.dtype = dtype;
    return pk_push(m, v);
}

static sqz_status pk_read_line(sqz_pk_machine *m, const char **s, size_t *len)
{
    size_t avail = m->len - m->pos;
    size_t limit = avail < PK_MAX_GLOBAL_LINE ? avail : PK_MAX_GLOBAL_LINE;
    const unsigned char *nl = memchr(m->buf + m->pos, '\n', limit);
    if (!nl)
        return pk_error(m, "GLOBAL name is not terminated by a newline within 256 bytes");
    *s = (const char *)m->buf + m->pos;
    *len = (size_t)(nl - (m->buf + m->pos));
    m->pos += *len + 1;
    return SQZ_OK;
}

static int pk_is_int_tuple(const sqz_pk_value *v, int allow_negative)
{
    if (v->kind != SQZ_PK_TUPLE)
        return 0;
    for (size_t k = 0; k < v->u.seq.n; k++)
        if (v->u.seq.items[k]->kind != SQZ_PK_INT ||
            (!allow_negative && v->u.seq.items[k]->u.i < 0))
            return 0;
    return 1;
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]): the tensor is only described here; its data is checked
 * and copied once all storages are known. */
static sqz_status pk_rebuild_tensor(sqz_pk_machine *m, const sqz_pk_value *args, sqz_pk_value **out)
{
    size_t n = args->u.seq.n;
    sqz_pk_value *const *a = args->u.seq.items;
    if (n != 6 && n != 7)
        return pk_error(m, "_rebuild_tensor_v2 expects 6 or 7 arguments");
    if (a[0]->kind != SQZ_PK_STORAGE)
        return pk_error(m, "_rebuild_tensor_v2: argument 1 must be a storage (persistent id)");
    if (a[1]->kind != SQZ_PK_INT || a[1]->u.i < 0)
        return pk_error(m, "_rebuild_tensor_v2: storage_offset must be a non-negative int");
    if (!pk_is_int_tuple(a[2], 0) || !pk_is_int_tuple(a[3], 0) ||
        a[2]->u.seq.n != a[3]->u.seq.n)
        return pk_error(m, "_rebuild_tensor_v2: size and stride must be tuples of "
                           "non-negative ints of equal length");
    if (a[2]->u.seq.n > SQZ_TF_MAX_DIMS)
        return sqz_fail(SQZ_ERR_UNSUPPORTED,
                        "%s: tensor at pickle offset %zu in %s has %zu dimensions (at most %d)",
                        m->path, m->op_pos, m->entry, a[2]->u.seq.n, SQZ_TF_MAX_DIMS);
    if (a[4]->kind != SQZ_PK_BOOL || a[5]->kind != SQZ_PK_DICT ||
        (n == 7 && a[6]->kind != SQZ_PK_NONE && a[6]->kind != SQZ_PK_DICT))
        return pk_error(m, "_rebuild_tensor_v2: requires_grad must be a bool, backward_hooks "
                           "a dict and metadata None or a dict");
    sqz_pk_value *v = NULL;
    sqz_status status = pk_new(m, SQZ_PK_TENSOR, &v);
    if (status != SQZ_OK)
        return status;
    sqz_pk_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return pk_oom(m);
    v->u.tensor = t;
    t->storage = a[0];
    t->offset = a[1]->u.i;
    t->ndim = (int)a[2]->u.seq.n;
    for (int d = 0; d < t->ndim; d++) {
        t->shape[d] = a[2]->u.seq.items[d]->u.i;
        t->stride[d] = a[3]->u.seq.items[d]->u.i;
    }
    *out = v;
    return SQZ_OK;
}

static sqz_status pk_reduce(sqz_pk_machine *m)
{
    sqz_pk_value *args = NULL, *callable = NULL, *result = NULL;
    sqz_status status = pk_pop(m, &args);
    if (status == SQZ_OK)
        status = pk_pop(m, &callable);
    if (status != SQZ_OK)
        return status;
    if (callable->kind != SQZ_PK_GLOBAL || args->kind != SQZ_PK_TUPLE)
        return pk_error(m, "REDUCE needs an allowed class and a tuple of arguments");
    switch (callable->u.global.which) {
    case SQZ_PK_CALL_ORDERED_DICT:
        if (args->u.seq.n != 0)
            return pk_error(m, "OrderedDict is only accepted with no arguments");
        status = pk_new(m, SQZ_PK_DICT, &result);
        break;
    case SQZ_PK_CALL_REBUILD_TENSOR_V2:
        status = pk_rebuild_tensor(m, args, &result);
        break;
    case SQZ_PK_CALL_REBUILD_PARAMETER:
        /* _rebuild_parameter(data, requires_grad, backward_hooks): the tensor itself. */
        if (args->u.seq.n != 3 || args->u.seq.items[0]->kind != SQZ_PK_TENSOR)
            return pk_error(m, "_rebuild_parameter expects (tensor, requires_grad, hooks)");
        result = args->u.seq.items[0];
        break;
    default:
        return pk_error(m, "a storage class cannot be called");
    }
    if (status != SQZ_OK)
        return status;
    return pk_push(m, result);
}

/* BINPERSID: ('storage', torch.<X>Storage, key, location, numel) names a storage. */
static sqz_status pk_persistent_load(sqz_pk_machine *m)
{
    sqz_pk_value *pid = NULL;
    sqz_status status = pk_pop(m, &pid);
    if (status != SQZ_OK)
        return status;
    sqz_pk_value *const *a = pid->kind == SQZ_PK_TUPLE ? pid->u.seq.items : NULL;
    const size_t fields = m->legacy ? 6 : 5;
    if (a && m->legacy && pid->u.seq.n == 6 && a[5]->kind != SQZ_PK_NONE)
        return pk_error(m, "persistent id names a view of a storage, which state dicts never do");
    if (!a || pid->u.seq.n != fields || a[0]->kind != SQZ_PK_STR ||
        strcmp(a[0]->u.str.s, "storage") || a[1]->kind != SQZ_PK_GLOBAL ||
        a[1]->u.global.which != SQZ_PK_CALL_STORAGE || a[2]->kind != SQZ_PK_STR ||
        a[3]->kind != SQZ_PK_STR || a[4]->kind != SQZ_PK_INT || a[4]->u.i < 0)
        return pk_error(m, m->legacy ? "persistent id must be ('storage', torch.<Type>Storage, "
                                       "key, location, numel, None)"
                                     : "persistent id must be ('storage', torch.<Type>Storage, key, "
                                       "location, numel)");
    /* The key becomes part of a zip entry name: keep it to a plain file name. */
    const char *key = a[2]->u.str.s;
    size_t key_len = a[2]->u.str.len;
    int key_ok = key_len > 0 && key_len <= 64;
    for (size_t k = 0; key_ok && k < key_len; k++) {
        char c = key[k];
        key_ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 c == '_';
    }
    if (!key_ok)
        return pk_error(m, "storage key must be 1-64 letters, digits or '_'");
    int64_t numel = a[4]->u.i;
    if ((uint64_t)numel > UINT64_MAX / 8)
        return pk_error(m, "storage element count is out of range");
    sqz_pk_value *v = NULL;
    status = pk_new(m, SQZ_PK_STORAGE, &v);
    if (status != SQZ_OK)
        return status;
    v->u.storage.dtype = a[1]->u.global.dtype;
    v->u.storage.key = key;
    v->u.storage.numel = numel;
    return pk_push(m, v);
}

static sqz_status pk_memo_put(sqz_pk_machine *m, uint64_t index)
{
    if (index >= SQZ_TF_MAX_PICKLE_MEMO)
        return pk_error(m, "memo index beyond the limit");
    if (m->depth == 0)
        return pk_error(m, "memo store with an empty stack");
    if (index >= m->memo_cap) {
        size_t old = m->memo_cap;
        if (!pk_reserve((void **)&m->memo, &m->memo_cap, (size_t)index + 1, sizeof *m->memo))
            return pk_oom(m);
        memset(m->memo + old, 0, (m->memo_cap - old) * sizeof *m->memo);
    }
    if (!m->memo[index])
        m->memo_used++;
    m->memo[index] = m->stack[m->depth - 1];
    return SQZ_OK;
}

static sqz_status pk_memo_get(sqz_pk_machine *m, uint64_t index)
{
    if (index >= m->memo_cap || !m->memo[index]) {
        char what[80];
        snprintf(what, sizeof what, "memo entry %llu read before it was stored",
                 (unsigned long long)index);
        return pk_error(m, what);
    }
    return pk_push(m, m->memo[index]);
}

static sqz_status pk_setitems(sqz_pk_machine *m, size_t start)
{
    if (start == 0 || m->stack[start - 1]->kind != SQZ_PK_DICT)
        return pk_error(m, "SETITEM(S) needs a dict below its items");
    if ((m->depth - start) % 2)
        return pk_error(m, "SETITEMS has an odd number of items");
    sqz_status status = pk_seq_append(m, m->stack[start - 1], m->stack + start, m->depth - start);
    m->depth = start;
    return status;
}

static sqz_status pk_appends(sqz_pk_machine *m, size_t start)
{
    if (start == 0 || m->stack[start - 1]->kind != SQZ_PK_LIST)
        return pk_error(m, "APPEND(S) needs a list below its items");
    sqz_status status = pk_seq_append(m, m->stack[start - 1], m->stack + start, m->depth - start);
    m->depth = start;
    return status;
}

sqz_status sqz_pk_run(sqz_pk_machine *m, sqz_pk_value **result)
{
    /* Allocated up front so that stack arithmetic never starts from a NULL base. */
    if (!pk_reserve((void **)&m->stack, &m->stack_cap, 64, sizeof *m->stack) ||
        !pk_reserve((void **)&m->marks, &m->marks_cap, 64, sizeof *m->marks))
        return sqz_fail(SQZ_ERR_OUT_OF_MEMORY, "%s: out of memory", m->path);
    sqz_status status = SQZ_OK;
    for (;;) {
        if (status != SQZ_OK)
            return status;
        if (m->pos >= m->len) {
            m->op_pos = m->pos;
            return pk_error(m, "the pickle ends without a STOP opcode (truncated?)");
        }
        m->op_pos = m->pos;
        unsigned op = m->buf[m->pos++];
        sqz_pk_value *v = NULL, *w = NULL;
        size_t start = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if ((status = pk_need(m, 1)) != SQZ_OK)
                return status;
            if (m->buf[m->pos] < 2 || m->buf[m->pos] > 5)
                return pk_error(m, "pickle protocol must be 2..5");
            m->pos++;
            break;
        case 0x95: /* FRAME: a length hint for buffered readers; the data follows inline */
            if ((status = pk_need(m, 8)) != SQZ_OK)
                return status;
            if (pk_read_uint(m, 8) > m->len - m->pos)
                return pk_error(m, "FRAME is longer than the rest of the pickle");
            break;
        case '.': /* STOP */
            if (m->n_marks != 0 || m->depth != 1)
                return pk_error(m, "STOP with an unbalanced stack (expected exactly one object)");
            if (m->pos != m->len && !m->legacy)
                return pk_error(m, "bytes follow the STOP opcode");
            *result = m->stack[0];
            return SQZ_OK;
        case '(': /* MARK */
            if (m->n_marks >= SQZ_TF_MAX_PICKLE_STACK)
                return pk_error(m, "too many nested MARKs");
            if (!pk_reserve((void **)&m->marks, &m->marks_cap, m->n_marks + 1, sizeof *m->marks))
                return pk_oom(m);
            m->marks[m->n_marks++] = m->depth;
            break;
        case '}': /* EMPTY_DICT */
        case ']': /* EMPTY_LIST */
        case ')': /* EMPTY_TUPLE */
            status = pk_new(m, op == '}'   ? SQZ_PK_DICT
                               : op == ']' ? SQZ_PK_LIST
                                           : SQZ_PK_TUPLE,
                            &v);
            if (status == SQZ_OK)
                status = pk_push(m, v);
            break;
        case 't': /* TUPLE */
        case 'l': /* LIST */
        case 'd': /* DICT */
            status = pk_pop_mark(m, &start);
            if (status == SQZ_OK)
                status = pk_collect(m, op == 't'   ? SQZ_PK_TUPLE
                                       : op == 'l' ? SQZ_PK_LIST
                                                   : SQZ_PK_DICT,
                                    start);
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            size_t n = op - 0x84u;
            size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
            if (m->depth < floor + n)
                return pk_error(m, "TUPLE1/2/3 with too few items on the stack");
            status = pk_collect(m, SQZ_PK_TUPLE, m->depth - n);
            break;
        }
        case 's': /* SETITEM */
            if (m->depth < 3 || (m->n_marks && m->depth < m->marks[m->n_marks - 1] + 3))
                return pk_error(m, "SETITEM with too few items on the stack");
            status = pk_setitems(m, m->depth - 2);
            break;
        case 'u': /* SETITEMS */
            status = pk_pop_mark(m, &start);
            if (status == SQZ_OK)
                status = pk_setitems(m, start);
            break;
        case 'a': /* APPEND */
            if (m->depth < 2 || (m->n_marks && m->depth < m->marks[m->n_marks - 1] + 2))
                return pk_error(m, "APPEND with too few items on the stack");
            status = pk_appends(m, m->depth - 1);
            break;
        case 'e': /* APPENDS */
            status = pk_pop_mark(m, &start);
            if (status == SQZ_OK)
                status = pk_appends(m, start);
            break;
        case 'J': /* BININT: signed 32-bit */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_push_int(m, (int64_t)(int32_t)pk_read_uint(m, 4));
            break;
        case 'K': /* BININT1 */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_push_int(m, (int64_t)pk_read_uint(m, 1));
            break;
        case 'M': /* BININT2 */
            if ((status = pk_need(m, 2)) == SQZ_OK)
                status = pk_push_int(m, (int64_t)pk_read_uint(m, 2));
            break;
        case 0x8a: { /* LONG1: n-byte two's complement; only what fits in 64 bits */
            if ((status = pk_need(m, 1)) != SQZ_OK)
                return status;
            size_t n = m->buf[m->pos++];
            if (n > 8)
                return pk_error(m, "LONG1 integer wider than 64 bits");
            if ((status = pk_need(m, n)) != SQZ_OK)
                return status;
            uint64_t u = pk_read_uint(m, n);
            if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1u)
                u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
            int64_t i;
            memcpy(&i, &u, sizeof i);
            status = pk_push_int(m, i);
            break;
        }
        case 'G': { /* BINFLOAT: big-endian IEEE double */
            if ((status = pk_need(m, 8)) != SQZ_OK)
                return status;
            uint64_t u = 0;
            for (int k = 0; k < 8; k++)
                u = u << 8 | m->buf[m->pos++];
            status = pk_new(m, SQZ_PK_FLOAT, &v);
            if (status == SQZ_OK) {
                memcpy(&v->u.f, &u, sizeof v->u.f);
                status = pk_push(m, v);
            }
            break;
        }
        case 'N': /* NONE */
            status = pk_push(m, &m->none_value);
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            status = pk_new(m, SQZ_PK_BOOL, &v);
            if (status == SQZ_OK) {
                v->u.i = op == 0x88;
                status = pk_push(m, v);
            }
            break;
        case 'X': /* BINUNICODE */
        case 'T': /* BINSTRING */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_push_string(m, (size_t)pk_read_uint(m, 4));
            break;
        case 0x8c: /* SHORT_BINUNICODE */
        case 'U':  /* SHORT_BINSTRING */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_push_string(m, (size_t)pk_read_uint(m, 1));
            break;
        case 0x8d: { /* BINUNICODE8 */
            if ((status = pk_need(m, 8)) != SQZ_OK)
                return status;
            uint64_t n = pk_read_uint(m, 8);
            if (n > PK_MAX_STRING)
                return pk_error(m, "string longer than 64 KiB");
            status = pk_push_string(m, (size_t)n);
            break;
        }
        case 'q': /* BINPUT */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_memo_put(m, pk_read_uint(m, 1));
            break;
        case 'r': /* LONG_BINPUT */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_memo_put(m, pk_read_uint(m, 4));
            break;
        case 0x94: /* MEMOIZE */
            status = pk_memo_put(m, m->memo_used);
            break;
        case 'h': /* BINGET */
            if ((status = pk_need(m, 1)) == SQZ_OK)
                status = pk_memo_get(m, pk_read_uint(m, 1));
            break;
        case 'j': /* LONG_BINGET */
            if ((status = pk_need(m, 4)) == SQZ_OK)
                status = pk_memo_get(m, pk_read_uint(m, 4));
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            const char *mod = NULL, *name = NULL;
            size_t mod_len = 0, name_len = 0;
            status = pk_read_line(m, &mod, &mod_len);
            if (status == SQZ_OK)
                status = pk_read_line(m, &name, &name_len);
            if (status == SQZ_OK)
                status = pk_push_global(m, mod, mod_len, name, name_len);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            status = pk_pop(m, &w);
            if (status == SQZ_OK)
                status = pk_pop(m, &v);
            if (status != SQZ_OK)
                return status;
            if (v->kind != SQZ_PK_STR || w->kind != SQZ_PK_STR)
                return pk_error(m, "STACK_GLOBAL needs two strings");
            status = pk_push_global(m, v->u.str.s, v->u.str.len, w->u.str.s, w->u.str.len);
            break;
        case 'R': /* REDUCE */
            status = pk_reduce(m);
            break;
        case 'b': /* BUILD: only the OrderedDict state torch writes (_metadata); ignored */
            status = pk_pop(m, &w);
            if (status != SQZ_OK)
                return status;
            if (m->depth == 0 || m->stack[m->depth - 1]->kind != SQZ_PK_DICT)
                return pk_error(m, "BUILD is only accepted on an OrderedDict");
            break;
        case 'Q': /* BINPERSID */
            status = pk_persistent_load(m);
            break;
        default:
            return sqz_fail(SQZ_ERR_UNSUPPORTED,
                            "%s: unsupported pickle opcode 0x%02x at offset %zu in %s (entry %s); "
                            "only the subset torch.save writes for a state dict is accepted",
                            m->path, op, m->op_pos, m->path, m->entry);
        }
    }
}

void sqz_pk_init(sqz_pk_machine *m, const char *path, const char *entry, int legacy)
{
    memset(m, 0, sizeof *m);
    m->none_value.kind = SQZ_PK_NONE;
    m->path = path;
    m->entry = entry;
    m->legacy = legacy;
}

void sqz_pk_reset(sqz_pk_machine *m)
{
    m->depth = 0;
    m->n_marks = 0;
    if (m->memo)
        memset(m->memo, 0, m->memo_cap * sizeof *m->memo);
    m->memo_used = 0;
}

const sqz_pk_value *sqz_pk_dict_get(const sqz_pk_value *dict, const char *key)
{
    for (size_t i = 0; dict->kind == SQZ_PK_DICT && i + 1 < dict->u.seq.n; i += 2)
        if (dict->u.seq.items[i]->kind == SQZ_PK_STR &&
            strcmp(dict->u.seq.items[i]->u.str.s, key) == 0)
            return dict->u.seq.items[i + 1];
    return NULL;
}

static const char *const kind_names[] = {
    "None", "bool", "int", "float", "str", "tuple", "list", "dict", "class", "storage", "tensor",
};

const char *sqz_pk_kind_name(sqz_pk_kind kind) { return kind_names[kind]; }
