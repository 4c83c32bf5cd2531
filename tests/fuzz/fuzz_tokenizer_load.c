/* Tokenizer loading: vocab.txt, tokenizer.json and tokenizer_config.json of a checkpoint
 * folder. Input: the three files separated by 0xFF 0xFE (vocab.txt first; a missing part
 * means the file is absent, as the optional ones may be, and an empty vocab.txt part too, so
 * that folders with tokenizer.json alone are reached). A tokenizer that loads is used once on
 * a fixed text, so that the tables it built are exercised too. */
#include "tests/fuzz/fuzz_util.h"

#include "squeezebert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *parts[3];
    size_t lens[3];
    size_t n = fuzz_split(data, size, parts, lens, 3);
    static const char *const names[3] = {"vocab.txt", "tokenizer.json", "tokenizer_config.json"};
    char path[600];
    for (size_t i = 0; i < 3; i++) {
        if (i < n && (i > 0 || lens[0] > 0))
            fuzz_write(names[i], parts[i], lens[i]);
        else {
            snprintf(path, sizeof path, "%s/%s", fuzz_dir(), names[i]);
            unlink(path);
        }
    }
    sqz_tokenizer *tok = NULL;
    if (sqz_tokenizer_load(fuzz_dir(), &tok) == SQZ_OK) {
        sqz_tokenizer_info info;
        FUZZ_CHECK(sqz_tokenizer_get_info(tok, &info) == SQZ_OK);
        FUZZ_CHECK(info.vocab_size > 0);
        static const char text[] = "Hello, [MASK] wörld! 你好 unaffable ##ing [SEP] \xcc\x81x";
        sqz_encoding *enc = NULL;
        if (sqz_tokenizer_encode(tok, text, sizeof text - 1, "pair text", 9, 16, &enc) == SQZ_OK) {
            FUZZ_CHECK(enc->length <= 16);
            for (size_t k = 0; k < enc->length; k++)
                FUZZ_CHECK(enc->input_ids[k] >= 0 && enc->input_ids[k] < info.vocab_size);
        }
        sqz_encoding_free(enc);
        for (int32_t id = 0; id < info.vocab_size && id < 64; id++) {
            const char *s = sqz_tokenizer_id_to_token(tok, id);
            FUZZ_CHECK(s != NULL);
        }
        sqz_tokenizer_free(tok);
    }
    return 0;
}
