/* The input JSON of `sqz forward` ({"input_ids": [[...]], "attention_mask": ...,
 * "token_type_ids": ...}) through cli_input_read. What it accepts must be a rectangular
 * input whose arrays hold exactly batch x choices x seq_len values. */
#include "tests/fuzz/fuzz_util.h"

#include "cli/json_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("input", data, size);
    cli_input in;
    char err[512];
    if (cli_input_read(path, &in, err, sizeof err) == 0) {
        FUZZ_CHECK(in.input.batch > 0 && in.input.seq_len > 0 && in.input.choices >= 0);
        const size_t n = (size_t)in.input.batch * (size_t)(in.input.choices ? in.input.choices : 1) *
                         (size_t)in.input.seq_len;
        volatile int64_t sum = 0; /* reads every value: ASan checks the sizes */
        for (size_t i = 0; i < n; i++) {
            sum += in.ids[i];
            if (in.mask)
                sum += in.mask[i];
            if (in.types)
                sum += in.types[i];
        }
        (void)sum;
        cli_input_release(&in);
    } else {
        FUZZ_CHECK(err[0] != '\0');
    }
    return 0;
}
