/* The tokenizer on arbitrary bytes, single texts and pairs, with and without truncation,
 * on the fixture vocabulary (uncased, and cased without accent stripping). Checks what
 * callers rely on: ids in the vocabulary, offsets inside the text and ordered, the length
 * limit, the [CLS] ... [SEP] framing.
 *
 * Input: [flags][text] or [flags][text 0xFF 0xFE pair]; flags pick the tokenizer and
 * max_length. */
#include "tests/fuzz/fuzz_util.h"

#include "squeezebert.h"

static sqz_tokenizer *tokenizers[2];
static sqz_tokenizer_info infos[2];

static void load(int k, const char *dir)
{
    if (sqz_tokenizer_load(dir, &tokenizers[k]) != SQZ_OK) {
        fprintf(stderr, "fuzz_tokenize: cannot load %s: %s\n", dir, sqz_last_error());
        abort();
    }
    sqz_tokenizer_get_info(tokenizers[k], &infos[k]);
}

static void check(const sqz_encoding *e, const sqz_tokenizer_info *info, size_t text_len,
                  size_t pair_len, int max_length, int has_pair)
{
    FUZZ_CHECK(e->length >= (size_t)(has_pair ? 3 : 2));
    if (max_length >= (has_pair ? 3 : 2))
        FUZZ_CHECK(e->length <= (size_t)max_length);
    FUZZ_CHECK(e->input_ids[0] == info->cls_id && e->sequence_ids[0] == -1);
    FUZZ_CHECK(e->input_ids[e->length - 1] == info->sep_id);
    size_t last_end[2] = {0, 0};
    for (size_t k = 0; k < e->length; k++) {
        FUZZ_CHECK(e->input_ids[k] >= 0 && e->input_ids[k] < info->vocab_size);
        FUZZ_CHECK(e->attention_mask[k] == 1);
        int s = e->sequence_ids[k];
        FUZZ_CHECK(s >= -1 && s <= (has_pair ? 1 : 0));
        if (s < 0)
            continue;
        FUZZ_CHECK(e->token_type_ids[k] == s);
        const size_t limit = s == 0 ? text_len : pair_len;
        FUZZ_CHECK(e->offsets[k].start <= e->offsets[k].end && e->offsets[k].end <= limit);
        /* tokens follow the text: a word's pieces may share an end, never go back */
        FUZZ_CHECK(e->offsets[k].start >= last_end[s] || e->offsets[k].start == e->offsets[k].end ||
                   e->offsets[k].end <= last_end[s]);
        if (e->offsets[k].end > last_end[s])
            last_end[s] = e->offsets[k].end;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tokenizers[0]) {
        load(0, SQZ_FIXTURES_DIR "/tokenizer");
        load(1, SQZ_FUZZ_DIR "/cased_tokenizer");
    }
    if (size < 1)
        return 0;
    static const int lengths[8] = {0, 1, 2, 3, 5, 16, 128, 512};
    const int k = data[0] >> 7;
    const int max_length = lengths[data[0] & 7];
    const uint8_t *parts[2];
    size_t lens[2];
    size_t n = fuzz_split(data + 1, size - 1, parts, lens, 2);
    /* copies of exactly the input's length, so ASan catches a read one byte past the end */
    char *text = malloc(lens[0] ? lens[0] : 1);
    char *pair = n > 1 ? malloc(lens[1] ? lens[1] : 1) : NULL;
    FUZZ_CHECK(text && (n < 2 || pair));
    memcpy(text, parts[0], lens[0]);
    if (pair)
        memcpy(pair, parts[1], lens[1]);
    const size_t pair_len = pair ? lens[1] : 0;
    sqz_encoding *enc = NULL;
    sqz_status st = sqz_tokenizer_encode(tokenizers[k], text, lens[0], pair, pair_len,
                                         max_length, &enc);
    if (st == SQZ_OK)
        check(enc, &infos[k], lens[0], pair_len, max_length, pair_len > 0);
    else
        FUZZ_CHECK(st == SQZ_ERR_INPUT || st == SQZ_ERR_OUT_OF_MEMORY);
    /* an encoding reused for a second call must give the same result as a fresh one */
    if (st == SQZ_OK && size % 3 == 0) {
        size_t len1 = enc->length;
        int64_t last = enc->input_ids[len1 - 2];
        FUZZ_CHECK(sqz_tokenizer_encode(tokenizers[k], text, lens[0], pair, pair_len, max_length,
                                        &enc) == SQZ_OK);
        FUZZ_CHECK(enc->length == len1 && enc->input_ids[len1 - 2] == last);
    }
    sqz_encoding_free(enc);
    free(text);
    free(pair);
    return 0;
}
