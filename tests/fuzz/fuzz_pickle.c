/* The pickle (data.pkl) of pytorch_model.bin. The fuzzer mutates the pickle and the sizes
 * of the storages; the harness wraps them in a well-formed stored zip, so the mutations are
 * spent on the pickle machine and the tensor views rather than on the container (which
 * fuzz_torch_zip covers).
 *
 * Input: [n][n x little-endian u16 storage byte sizes][pickle bytes]; storage k is the zip
 * entry "archive/data/<k>" filled with a fixed byte pattern. */
#include "tests/fuzz/fuzz_util.h"

#include "runtime/tensor_file.h"

#define MAX_STORAGES 16

static unsigned char *zip_buf;
static size_t zip_len, zip_cap;

static void put(const void *p, size_t n)
{
    if (zip_len + n > zip_cap) {
        size_t cap = zip_cap ? zip_cap : 4096;
        while (cap < zip_len + n)
            cap *= 2;
        zip_buf = realloc(zip_buf, cap);
        FUZZ_CHECK(zip_buf != NULL);
        zip_cap = cap;
    }
    memcpy(zip_buf + zip_len, p, n);
    zip_len += n;
}

static void put16(unsigned v)
{
    unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(b, 2);
}

static void put32(uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put(b, 4);
}

typedef struct entry {
    char name[40];
    const unsigned char *data;
    size_t size;
    uint32_t offset;
} entry;

/* A local header + data; CRC 0 means "not computed", which the reader accepts (torch can
 * write such files), so no CRC code is needed here. */
static void put_local(entry *e)
{
    e->offset = (uint32_t)zip_len;
    put32(0x04034b50u), put16(20), put16(0), put16(0), put16(0), put16(0);
    put32(0), put32((uint32_t)e->size), put32((uint32_t)e->size);
    put16((unsigned)strlen(e->name)), put16(0);
    put(e->name, strlen(e->name));
    put(e->data, e->size);
}

static void put_central(const entry *e)
{
    put32(0x02014b50u), put16(20), put16(20), put16(0), put16(0), put16(0), put16(0);
    put32(0), put32((uint32_t)e->size), put32((uint32_t)e->size);
    put16((unsigned)strlen(e->name)), put16(0), put16(0), put16(0), put16(0), put32(0);
    put32(e->offset);
    put(e->name, strlen(e->name));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char pattern[65536];
    if (!pattern[1])
        for (size_t i = 0; i < sizeof pattern; i++)
            pattern[i] = (unsigned char)(i * 37 + 11);
    if (size < 1)
        return 0;
    size_t n = data[0] % (MAX_STORAGES + 1);
    if (size < 1 + 2 * n)
        return 0;
    entry entries[MAX_STORAGES + 2];
    size_t count = 0;
    entry *pkl = &entries[count++];
    snprintf(pkl->name, sizeof pkl->name, "archive/data.pkl");
    pkl->data = data + 1 + 2 * n;
    pkl->size = size - 1 - 2 * n;
    entry *order = &entries[count++];
    snprintf(order->name, sizeof order->name, "archive/byteorder");
    order->data = (const unsigned char *)"little";
    order->size = 6;
    for (size_t k = 0; k < n; k++) {
        entry *e = &entries[count++];
        snprintf(e->name, sizeof e->name, "archive/data/%zu", k);
        e->data = pattern;
        e->size = (size_t)(data[1 + 2 * k] | data[2 + 2 * k] << 8);
    }
    zip_len = 0;
    for (size_t i = 0; i < count; i++)
        put_local(&entries[i]);
    uint32_t cd = (uint32_t)zip_len;
    for (size_t i = 0; i < count; i++)
        put_central(&entries[i]);
    uint32_t cd_size = (uint32_t)zip_len - cd;
    put32(0x06054b50u), put16(0), put16(0), put16((unsigned)count), put16((unsigned)count);
    put32(cd_size), put32(cd), put16(0);

    const char *path = fuzz_write("model.bin", zip_buf, zip_len);
    sqz_tensor_file *file = NULL;
    if (sqz_tensor_file_read(path, NULL, &file) == SQZ_OK) {
        for (size_t i = 0; i < file->count; i++) {
            const sqz_tf_tensor *t = &file->tensors[i];
            if (t->data) {
                volatile float sum = 0; /* reads every element: ASan checks the extent */
                for (int64_t k = 0; k < t->numel; k++)
                    sum += t->data[k];
                (void)sum;
            }
        }
        sqz_tensor_file_free(file);
    } else {
        FUZZ_CHECK(file == NULL);
    }
    return 0;
}
