/* config.json through sqz_config_load: what a downloaded checkpoint's config can do. A
 * config that loads must satisfy the invariants the graph builder relies on. */
#include "tests/fuzz/fuzz_util.h"

#include "runtime/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("config.json", data, size);
    sqz_config c;
    if (sqz_config_load(path, &c) == SQZ_OK) {
        for (int i = 0; c.labels && i < c.num_labels; i++)
            FUZZ_CHECK(c.labels[i] != NULL);
        sqz_config_release(&c);
    }
    return 0;
}
