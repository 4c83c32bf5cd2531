/* sentence-transformers module files through sqz_embedder_load: modules.json,
 * 1_Pooling/config.json, sentence_bert_config.json and 2_Dense/config.json, separated by
 * 0xFF 0xFE (a missing part: the file is absent). The model (a tiny SqueezeBERT) and the Dense
 * weights come from tests/fixtures/sentence/st-sqb-dense and are read once; only the module
 * files change. An embedder that loads is applied to fixed hidden states, so what it read is
 * exercised too. */
#include "tests/fuzz/fuzz_util.h"

#include <math.h>
#include <sys/stat.h>

#include "runtime/model.h"

#define FIXTURE SQZ_FIXTURES_DIR "/sentence/st-sqb-dense"

static const char *const files[4] = {"modules.json", "1_Pooling/config.json",
                                     "sentence_bert_config.json", "2_Dense/config.json"};

static void remove_module_files(void)
{
    char p[600];
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", fuzz_dir(), files[i]);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/2_Dense/model.safetensors", fuzz_dir());
    unlink(p);
    snprintf(p, sizeof p, "%s/1_Pooling", fuzz_dir());
    rmdir(p);
    snprintf(p, sizeof p, "%s/2_Dense", fuzz_dir());
    rmdir(p);
}

/* The model, loaded once, pointing at the private folder for its module files. */
static sqz_model *setup(void)
{
    static sqz_model *model;
    if (model)
        return model;
    if (sqz_model_load(FIXTURE, NULL, &model) != SQZ_OK) {
        fprintf(stderr, "fuzz_modules: %s\n", sqz_last_error());
        abort();
    }
    char p[600];
    snprintf(p, sizeof p, "%s/1_Pooling", fuzz_dir());
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/2_Dense", fuzz_dir());
    mkdir(p, 0700);
    FILE *in = fopen(FIXTURE "/2_Dense/model.safetensors", "rb");
    static uint8_t weights[1 << 16];
    size_t n = in ? fread(weights, 1, sizeof weights, in) : 0;
    if (!in || n == sizeof weights)
        abort();
    fclose(in);
    fuzz_write("2_Dense/model.safetensors", weights, n);
    atexit(remove_module_files); /* runs before fuzz_util's own clean-up */
    free(model->dir);
    model->dir = strdup(fuzz_dir());
    return model;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sqz_model *model = setup();
    const uint8_t *parts[4];
    size_t lens[4];
    size_t n = fuzz_split(data, size, parts, lens, 4);
    char path[600];
    for (size_t i = 0; i < 4; i++) {
        if (i < n) {
            fuzz_write(files[i], parts[i], lens[i]);
        } else {
            snprintf(path, sizeof path, "%s/%s", fuzz_dir(), files[i]);
            unlink(path);
        }
    }
    sqz_embedder *emb = NULL;
    if (sqz_embedder_load(model, &emb) == SQZ_OK) {
        sqz_embedder_info info;
        FUZZ_CHECK(sqz_embedder_get_info(emb, &info) == SQZ_OK);
        FUZZ_CHECK(info.dimension > 0 && info.pool_count > 0);
        static float hidden[5 * 32], pooled[32];
        for (int i = 0; i < 5 * 32; i++)
            hidden[i] = (float)((i * 37) % 11) - 5.0f;
        for (int i = 0; i < 32; i++)
            pooled[i] = (float)(i % 3) - 1.0f;
        float *out = malloc((size_t)info.dimension * sizeof *out);
        FUZZ_CHECK(out != NULL);
        if (sqz_embedder_embed(emb, hidden, 5, pooled, out) == SQZ_OK)
            for (int i = 0; i < info.dimension; i++)
                FUZZ_CHECK(!isnan(out[i]));
        free(out);
        sqz_embedder_free(emb);
    }
    return 0;
}
