/* One JSON Lines record of sqz infer: parsed and tokenized exactly as the reader thread
 * does (tools/sqz_infer_line.c), for the text/text_pair tasks and for qa, with a short
 * --max-length so the truncation paths run. Every line must end as either an error or a
 * token list the compute step can use: n_use within --max-length, indices in the
 * encoding, the last one a [SEP]. */
#include "tests/fuzz/fuzz_util.h"

#include "tools/sqz_infer_line.h"

static sqz_tokenizer *tok;
static sqz_tokenizer_info info;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok) {
        if (sqz_tokenizer_load(SQZ_FIXTURES_DIR "/infer/qa", &tok) != SQZ_OK) {
            fprintf(stderr, "fuzz_infer_line: %s\n", sqz_last_error());
            abort();
        }
        sqz_tokenizer_get_info(tok, &info);
    }
    /* the harness's own choice of mode comes from the size, so the record bytes are
     * exactly a line as sqz infer would read it */
    const int mode = (int)(size % 3); /* 0 text, 1 qa, 2 fill-mask */
    static const size_t lengths[4] = {3, 4, 9, 64};
    infer_line_setup setup = {tok, mode == 1, mode == 2, info.mask_id, lengths[size / 3 % 4]};
    char *line = malloc(size ? size : 1); /* exact size: ASan sees a read past the end */
    FUZZ_CHECK(line != NULL);
    memcpy(line, data, size);
    infer_item *it = calloc(1, sizeof *it);
    FUZZ_CHECK(it != NULL);
    it->line = 1;
    infer_parse_line(setup.qa, it, line, size);
    infer_tokenize_line(&setup, it);
    if (!it->error) {
        FUZZ_CHECK(it->text != NULL && it->enc != NULL);
        FUZZ_CHECK(it->n_use >= 2 && it->n_use <= setup.max_length);
        for (size_t w = 0; w < it->n_use; w++)
            FUZZ_CHECK(it->use[w] < it->enc->length);
        FUZZ_CHECK(it->enc->input_ids[it->use[it->n_use - 1]] == info.sep_id);
        if (setup.qa) {
            bool context = false;
            for (size_t w = 0; w < it->n_use; w++)
                context |= it->enc->sequence_ids[it->use[w]] == 1;
            FUZZ_CHECK(context);
        }
    }
    infer_item_free(it);
    free(line);
    return 0;
}
