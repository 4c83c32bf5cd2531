/* One JSON Lines record of sqz infer: parsed and encoded exactly as the reader thread does
 * (cli/sqz_infer_line.c, then the library's sqz_pipeline_encode), for the text/text_pair
 * tasks, for qa and for fill-mask, with a short max_length so the truncation paths run. Every
 * line must end as either an error or a token list a run can use: within max_length, the
 * last one a [SEP], a qa context token present, and its record must be made. */
#include "tests/fuzz/fuzz_util.h"

#include "cli/sqz_infer_line.h"

#define LENGTHS 4

static const size_t lengths[LENGTHS] = {3, 4, 9, 64};
static const char *const folders[3] = {"classify", "qa", "fill-mask"};
static sqz_model *models[3];
static sqz_tokenizer *tokenizers[3];
static sqz_pipeline *pipelines[3][LENGTHS];

static sqz_pipeline *pipeline_for(int mode, int length)
{
    if (!pipelines[mode][length]) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/infer/%s", SQZ_FIXTURES_DIR, folders[mode]);
        const sqz_pipeline_options options = {.max_length = (long)lengths[length]};
        if ((!models[mode] && sqz_model_load(dir, &models[mode]) != SQZ_OK) ||
            (!tokenizers[mode] && sqz_tokenizer_load(dir, &tokenizers[mode]) != SQZ_OK) ||
            sqz_pipeline_create(models[mode], tokenizers[mode], &options, &pipelines[mode][length]) != SQZ_OK) {
            fprintf(stderr, "fuzz_infer_line: %s\n", sqz_last_error());
            abort();
        }
    }
    return pipelines[mode][length];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the harness's own choice of mode comes from the size, so the record bytes are
     * exactly a line as sqz infer would read it */
    const int mode = (int)(size % 3); /* 0 text, 1 qa, 2 fill-mask */
    const int length = (int)(size / 3 % LENGTHS);
    const sqz_pipeline *pipe = pipeline_for(mode, length);
    sqz_tokenizer_info info;
    sqz_tokenizer_get_info(sqz_pipeline_tokenizer(pipe), &info);
    char *line = malloc(size ? size : 1); /* exact size: ASan sees a read past the end */
    FUZZ_CHECK(line != NULL);
    memcpy(line, data, size);
    infer_item *it = calloc(1, sizeof *it);
    FUZZ_CHECK(it != NULL);
    it->line = 1;
    infer_parse_line(mode == 1, it, line, size);
    infer_encode_line(pipe, it);
    if (!infer_item_error(it)) {
        const int64_t *ids = NULL, *types = NULL;
        const size_t n = sqz_pipeline_item_tokens(it->item, &ids, &types);
        FUZZ_CHECK(n >= 2 && n <= lengths[length] && ids && types);
        for (size_t w = 0; w < n; w++)
            FUZZ_CHECK(ids[w] >= 0 && ids[w] < info.vocab_size);
        FUZZ_CHECK(ids[n - 1] == info.sep_id);
        if (mode == 1) {
            bool context = false;
            for (size_t w = 0; w + 1 < n; w++) /* before the final [SEP] */
                context |= types[w] == 1;
            FUZZ_CHECK(context);
        }
    }
    infer_make_record(it);
    FUZZ_CHECK(it->record != NULL);
    infer_item_free(it);
    free(line);
    return 0;
}
