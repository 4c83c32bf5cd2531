/* Model folders as people have them (tests/fixtures/sentence, written by
 * tools/gen_sentence_fixtures.py with transformers and sentence-transformers): tokenizers from
 * tokenizer.json alone against transformers' ids, what sqz info and the --pooling/--normalize
 * flags do on a sentence-transformers folder, sharded checkpoints, and every bad or
 * unsupported tokenizer, module or index file refused with the file and the field named. The
 * embeddings themselves are compared with sentence-transformers in test_infer. */
#include "tests/test_util.h"

#include <jansson.h>
#include <math.h>
#include <sys/wait.h>

#define SENT SQZ_FIXTURES_DIR "/sentence"

static void write_str(const char *path, const char *text) { write_whole(path, text, strlen(text)); }

/* A temporary copy of a fixture folder (subfolders included). */
static char *copy_dir(const char *from)
{
    char *dir = make_temp_dir();
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r '%s'/. '%s'", from, dir);
    assert_int_equal(system(cmd), 0);
    return dir;
}

static void write_in(const char *dir, const char *name, const char *text)
{
    char *p = test_path(dir, name);
    write_str(p, text);
    free(p);
}

static void remove_in(const char *dir, const char *name)
{
    char *p = test_path(dir, name);
    assert_int_equal(unlink(p), 0);
    free(p);
}

/* ---- tokenizer.json against transformers ------------------------------------------------- */

static void tokenizer_json_matches_transformers(void **unused)
{
    size_t size;
    char *data = (char *)read_whole(SENT "/tokenizer/expected.jsonl", &size);
    char *nl = strchr(data, '\n');
    assert_non_null(nl);
    json_t *header = json_loadb(data, (size_t)(nl - data), 0, NULL);
    json_t *texts = json_object_get(header, "texts");
    assert_true(json_is_array(texts));
    /* uncased: tokenizer.json + tokenizer_config.json as the real model ships them; alone:
     * the same tokenizer.json with nothing else (transformers gives the same ids, checked by
     * the generator); cased: a tokenizer transformers 5 saved (tokenizer.json + config) */
    char *alone = make_temp_dir();
    char *p = test_path(alone, "tokenizer.json");
    copy_file(SENT "/tokenizer/uncased/tokenizer.json", p);
    free(p);
    sqz_tokenizer *uncased = NULL, *cased = NULL, *solo = NULL;
    assert_sqz_ok(sqz_tokenizer_load(SENT "/tokenizer/uncased", &uncased));
    assert_sqz_ok(sqz_tokenizer_load(SENT "/tokenizer/cased", &cased));
    assert_sqz_ok(sqz_tokenizer_load(alone, &solo));
    assert_non_null(strstr(sqz_tokenizer_source(solo), "tokenizer.json"));
    sqz_tokenizer_info info;
    assert_sqz_ok(sqz_tokenizer_get_info(cased, &info));
    assert_int_equal(info.do_lower_case, 0);
    assert_int_equal(info.tokenize_chinese_chars, 0);
    assert_int_equal(info.vocab_size, 3000);
    sqz_encoding *enc = NULL;
    size_t records = 0, compared = 0, failures = 0, pairs = 0, truncated = 0;
    for (char *line = nl + 1; line < data + size;) {
        char *end = strchr(line, '\n');
        json_t *r = json_loadb(line, (size_t)(end - line), 0, NULL);
        line = end + 1;
        assert_non_null(r);
        const char *cfg = json_string_value(json_object_get(r, "config"));
        json_t *text = json_array_get(texts, (size_t)json_integer_value(json_object_get(r, "text")));
        json_t *pair = json_object_get(r, "pair");
        json_t *ptext = json_is_integer(pair) ? json_array_get(texts, (size_t)json_integer_value(pair)) : NULL;
        const int max_length = (int)json_integer_value(json_object_get(r, "max_length"));
        json_t *ids = json_object_get(r, "ids");
        const char *types = json_string_value(json_object_get(r, "types"));
        assert_true(cfg && json_is_string(text) && json_is_array(ids) && types);
        sqz_tokenizer *toks[2] = {strcmp(cfg, "cased") == 0 ? cased : uncased, solo};
        const int n_toks = strcmp(cfg, "cased") == 0 ? 1 : 2;
        records++;
        pairs += ptext != NULL;
        truncated += max_length > 0;
        for (int k = 0; k < n_toks; k++) {
            assert_sqz_ok(sqz_tokenizer_encode(toks[k], json_string_value(text), json_string_length(text),
                                               ptext ? json_string_value(ptext) : NULL,
                                               ptext ? json_string_length(ptext) : 0, max_length, &enc));
            bool ok = enc->length == json_array_size(ids) && strlen(types) == enc->length;
            for (size_t i = 0; ok && i < enc->length; i++)
                ok = enc->input_ids[i] == json_integer_value(json_array_get(ids, i)) &&
                     enc->token_type_ids[i] == types[i] - '0';
            compared++;
            if (!ok && failures++ < 5)
                printf("MISMATCH (%s%s) text %lld pair %lld max_length %d: %zu tokens, transformers %zu\n",
                       cfg, k ? ", tokenizer.json alone" : "", json_integer_value(json_object_get(r, "text")),
                       ptext ? json_integer_value(pair) : -1LL, max_length, enc->length, json_array_size(ids));
        }
        json_decref(r);
    }
    printf("%zu transformers records (%zu pairs, %zu truncated) over %zu texts: %zu encodings "
           "compared, %zu mismatches\n", records, pairs, truncated, json_array_size(texts), compared, failures);
    assert_true(records > 1000);
    assert_int_equal(failures, 0);
    sqz_encoding_free(enc);
    sqz_tokenizer_free(uncased);
    sqz_tokenizer_free(cased);
    sqz_tokenizer_free(solo);
    json_decref(header);
    free(data);
    remove_temp_dir(alone);
}

/* vocab.txt and tokenizer.json together: tokenizer.json's vocabulary wins (transformers never
 * reads vocab.txt then), and sqz_tokenizer_source says where they differ. */
static void tokenizer_json_wins_over_vocab_txt(void **unused)
{
    char *dir = copy_dir(SENT "/tokenizer/cased");
    char *p = test_path(dir, "vocab.txt");
    write_str(p, "[UNK]\n[PAD]\n[CLS]\n[SEP]\nhello\n");
    free(p);
    sqz_tokenizer *tok = NULL;
    assert_sqz_ok(sqz_tokenizer_load(dir, &tok));
    sqz_tokenizer_info info;
    assert_sqz_ok(sqz_tokenizer_get_info(tok, &info));
    assert_int_equal(info.vocab_size, 3000);
    assert_non_null(strstr(sqz_tokenizer_source(tok), "differs from id 0"));
    sqz_tokenizer_free(tok);
    /* and a tokenizer.json without model.vocab takes vocab.txt's */
    write_in(dir, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\"}}");
    assert_sqz_ok(sqz_tokenizer_load(dir, &tok));
    assert_sqz_ok(sqz_tokenizer_get_info(tok, &info));
    assert_int_equal(info.vocab_size, 5);
    sqz_tokenizer_free(tok);
    remove_temp_dir(dir);
}

/* A post-processor with other framing ids and type ids is followed (tokenizers' meaning). */
static void post_processor_framing(void **unused)
{
    char *dir = make_temp_dir();
    write_in(dir, "tokenizer.json",
             "{\"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"vocab\": {\"[UNK]\": 0, "
             "\"<s>\": 1, \"</s>\": 2, \"<m>\": 3, \"a\": 4, \"b\": 5}},"
             " \"post_processor\": {\"type\": \"TemplateProcessing\","
             " \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 1}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
             " {\"SpecialToken\": {\"id\": \"</s>\", \"type_id\": 0}}],"
             " \"pair\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
             " {\"SpecialToken\": {\"id\": \"<m>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"B\", \"type_id\": 2}},"
             " {\"SpecialToken\": {\"id\": \"</s>\", \"type_id\": 3}}],"
             " \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]},"
             " \"</s>\": {\"id\": \"</s>\", \"ids\": [2], \"tokens\": [\"</s>\"]},"
             " \"<m>\": {\"id\": \"<m>\", \"ids\": [3], \"tokens\": [\"<m>\"]}}}}");
    sqz_tokenizer *tok = NULL;
    assert_sqz_ok(sqz_tokenizer_load(dir, &tok));
    sqz_encoding *enc = NULL;
    assert_sqz_ok(sqz_tokenizer_encode(tok, "a", 1, "b a", 3, 0, &enc));
    static const int64_t ids[] = {1, 4, 3, 5, 4, 2}, types[] = {0, 0, 0, 2, 2, 3};
    assert_int_equal(enc->length, 6);
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(enc->input_ids[i], ids[i]);
        assert_int_equal(enc->token_type_ids[i], types[i]);
    }
    assert_sqz_ok(sqz_tokenizer_encode(tok, "b", 1, NULL, 0, 0, &enc));
    assert_int_equal(enc->length, 3);
    assert_int_equal(enc->input_ids[0], 1);
    assert_int_equal(enc->token_type_ids[0], 1);
    assert_int_equal(enc->input_ids[2], 2);
    sqz_encoding_free(enc);
    enc = NULL;
    sqz_tokenizer_free(tok);
    /* BertProcessing: [CLS]/[SEP] ids from the file, types 0 0 0 1 1 */
    write_in(dir, "tokenizer.json",
             "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"x\": 1, \"y\": 2}},"
             " \"post_processor\": {\"type\": \"BertProcessing\", \"sep\": [\"y\", 2], \"cls\": [\"x\", 1]}}");
    assert_sqz_ok(sqz_tokenizer_load(dir, &tok));
    assert_sqz_ok(sqz_tokenizer_encode(tok, "q", 1, "r", 1, 0, &enc));
    static const int64_t bids[] = {1, 0, 2, 0, 2}, btypes[] = {0, 0, 0, 1, 1};
    assert_int_equal(enc->length, 5);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(enc->input_ids[i], bids[i]);
        assert_int_equal(enc->token_type_ids[i], btypes[i]);
    }
    sqz_encoding_free(enc);
    sqz_tokenizer_free(tok);
    remove_temp_dir(dir);
}

static void bad_tokenizer_files(void **unused)
{
    static const struct {
        const char *file, *text;
        sqz_status status;
        const char *mentions[2];
    } cases[] = {
        {"tokenizer.json", "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": []}, \"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0}}}",
         SQZ_ERR_UNSUPPORTED, {"normalizer", "\"Sequence\""}},
        {"tokenizer.json", "{\"normalizer\": null, \"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0}}}",
         SQZ_ERR_UNSUPPORTED, {"normalizer", "null"}},
        {"tokenizer.json", "{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0}}}",
         SQZ_ERR_UNSUPPORTED, {"pre_tokenizer", "Metaspace"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
         SQZ_ERR_UNSUPPORTED, {"model", "Unigram"}},
        {"tokenizer.json", "{\"model\": {\"vocab\": {\"[UNK]\": 0}}}",
         SQZ_ERR_UNSUPPORTED, {"model", "without a type"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"a\": 2}}}",
         SQZ_ERR_FORMAT, {"model.vocab[\"a\"]", "0..1"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"a\": 0}}}",
         SQZ_ERR_FORMAT, {"model.vocab", "id 0 to two tokens"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": [\"[UNK]\"]}}",
         SQZ_ERR_FORMAT, {"model.vocab", "object"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"unk_token\": 7, \"vocab\": {\"[UNK]\": 0}}}",
         SQZ_ERR_FORMAT, {"model.unk_token", "string"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2}},"
                           " \"post_processor\": {\"type\": \"RobertaProcessing\"}}",
         SQZ_ERR_UNSUPPORTED, {"post_processor", "RobertaProcessing"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2}},"
                           " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
                           " \"pair\": [], \"special_tokens\": {}}}",
         SQZ_ERR_UNSUPPORTED, {"post_processor.single", "[CLS] A [SEP]"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2}},"
                           " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"[CLS]\", \"type_id\": 0}},"
                           " {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": {\"id\": \"[SEP]\", \"type_id\": 0}}],"
                           " \"pair\": [], \"special_tokens\": {\"[CLS]\": {\"ids\": [1, 2]}, \"[SEP]\": {\"ids\": [2]}}}}",
         SQZ_ERR_UNSUPPORTED, {"special_tokens[\"[CLS]\"]", "exactly one id"}},
        {"tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2}},"
                           " \"post_processor\": {\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 2], \"cls\": [\"[CLS]\", 1]}}",
         SQZ_OK, {"", ""}},
        {"tokenizer_config.json", "{\"cls_token\": \"[SEP]\"}", SQZ_ERR_UNSUPPORTED,
         {"tokenizer_config.json", "disagree"}},
        {"tokenizer.json", "[1, 2]", SQZ_ERR_FORMAT, {"tokenizer.json", "not an object"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *dir = make_temp_dir();
        write_in(dir, cases[i].file, cases[i].text);
        if (strcmp(cases[i].file, "tokenizer_config.json") == 0) /* with the case above it */
            write_in(dir, "tokenizer.json", cases[i - 1].text);
        sqz_tokenizer *tok = NULL;
        sqz_status st = sqz_tokenizer_load(dir, &tok);
        if (cases[i].status == SQZ_OK) {
            assert_int_equal(st, SQZ_OK);
            sqz_tokenizer_free(tok);
        } else {
            assert_fails_with(st, cases[i].status, cases[i].file, cases[i].mentions[0], cases[i].mentions[1]);
            assert_null(tok);
        }
        remove_temp_dir(dir);
    }
}

/* ---- sentence-transformers folders --------------------------------------------------------- */

static char *run_sqz(const char *args, int *status)
{
    char *dir = make_temp_dir(), cmd[4096];
    char *out = test_path(dir, "out.txt");
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2>&1", SQZ_SQZ_BINARY, args, out);
    int rc = system(cmd);
    *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    size_t n;
    char *text = (char *)read_whole(out, &n);
    free(out);
    remove_temp_dir(dir);
    return text;
}

static void info_shows_what_was_read(void **unused)
{
    int status;
    char *out = run_sqz("info --model " SENT "/st-bert-mean", &status);
    assert_int_equal(status, 0);
    const char *want[] = {"tokenizer.json (vocabulary and settings) + tokenizer_config.json", "sentence-transformers modules.json",
                          "pooling mean", "1_Pooling/config.json", "normalize yes",
                          "max length 24 (sentence_bert_config.json)", "cut at 24 tokens", "32 floats"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(out, want[i]))
            fail_msg("sqz info lacks \"%s\":\n%s", want[i], out);
    free(out);
    out = run_sqz("info --model " SENT "/st-sqb-dense", &status);
    assert_int_equal(status, 0);
    assert_non_null(strstr(out, "pooling max+weightedmean+lasttoken"));
    assert_non_null(strstr(out, "2 Dense modules"));
    assert_non_null(strstr(out, "16 floats"));
    assert_non_null(strstr(out, "pytorch_model.bin.index.json"));
    free(out);
}

/* One embedding record's values. */
static size_t embedding_of(const char *jsonl_line, double *out, size_t max)
{
    json_t *r = json_loads(jsonl_line, JSON_DISABLE_EOF_CHECK, NULL);
    json_t *e = json_object_get(r, "embedding");
    size_t n = json_array_size(e);
    for (size_t i = 0; i < n && i < max; i++)
        out[i] = json_number_value(json_array_get(e, i));
    json_decref(r);
    return n;
}

static void flags_override_the_modules(void **unused)
{
    int status;
    double v[256];
    /* default: mean, normalised, 32 floats */
    char *out = run_sqz("infer --model " SENT "/st-bert-mean --backend cpu_ref --input " SENT
                        "/st-bert-mean/input.jsonl 2>/dev/null | head -1", &status);
    assert_int_equal(embedding_of(out, v, 256), 32);
    double norm = 0;
    for (int i = 0; i < 32; i++)
        norm += v[i] * v[i];
    assert_true(fabs(norm - 1.0) < 1e-5);
    free(out);
    /* --pooling cls,mean --no-normalize: 64 floats, the second half the mean, not unit length */
    out = run_sqz("infer --model " SENT "/st-bert-mean --backend cpu_ref --pooling cls,mean --no-normalize"
                  " --input " SENT "/st-bert-mean/input.jsonl 2>/dev/null | head -1", &status);
    assert_int_equal(embedding_of(out, v, 256), 64);
    double mean_norm = 0;
    for (int i = 32; i < 64; i++)
        mean_norm += v[i] * v[i];
    assert_true(fabs(mean_norm - 1.0) > 1e-3);
    free(out);
    /* a pooling that does not fit the Dense module after it is refused before any work */
    out = run_sqz("infer --model " SENT "/st-sqb-dense --backend cpu_ref --pooling mean --input /dev/null", &status);
    assert_int_equal(status, 1);
    assert_non_null(strstr(out, "Dense"));
    free(out);
    out = run_sqz("infer --model " SENT "/st-bert-mean --pooling median --input /dev/null", &status);
    assert_int_equal(status, 2);
    free(out);
    out = run_sqz("infer --model " SENT "/st-bert-mean --normalize --no-normalize --input /dev/null", &status);
    assert_int_equal(status, 2);
    free(out);
    /* sqz tokenize takes a tokenizer.json-only folder too */
    out = run_sqz("tokenize --model " SENT "/st-bert-mean < " SENT "/st-bert-mean/input.jsonl", &status);
    assert_int_equal(status, 0);
    assert_non_null(strstr(out, "\"input_ids\": [101, "));
    free(out);
}

/* sqz similarity's cosines are those of sentence-transformers' embeddings of the same texts */
static void similarity_matches_the_reference(void **unused)
{
    char *dir = make_temp_dir();
    char *in = test_path(dir, "in.jsonl");
    size_t n;
    char *input = (char *)read_whole(SENT "/st-bert-mean/input.jsonl", &n);
    char *expected = (char *)read_whole(SENT "/st-bert-mean/expected.jsonl", &n);
    /* the first three texts and their reference embeddings */
    double ref[3][32];
    char *line = expected, *keep = input;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(embedding_of(line, ref[i], 32), 32);
        line = strchr(line, '\n') + 1;
        keep = strchr(keep, '\n') + 1;
    }
    *keep = '\0';
    write_str(in, input);
    char args[1024];
    snprintf(args, sizeof args, "similarity --model %s/st-bert-mean --backend cpu_ref --input %s --pairs 3", SENT, in);
    int status;
    char *out = run_sqz(args, &status);
    assert_int_equal(status, 0);
    /* "most similar pairs:" then three lines "  0.123  text a  |  text b", best first */
    char *p = strstr(out, "most similar pairs:");
    assert_non_null(p);
    double printed[3];
    for (int k = 0; k < 3; k++) {
        p = strchr(p, '\n') + 1;
        printed[k] = strtod(p, NULL);
    }
    double cos[3];
    int k = 0;
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++) {
            double xy = 0, xx = 0, yy = 0;
            for (int c = 0; c < 32; c++)
                xy += ref[a][c] * ref[b][c], xx += ref[a][c] * ref[a][c], yy += ref[b][c] * ref[b][c];
            cos[k++] = xy / sqrt(xx * yy);
        }
    for (int i = 0; i < 3; i++) /* best first */
        for (int j = i + 1; j < 3; j++)
            if (cos[j] > cos[i]) {
                double t = cos[i];
                cos[i] = cos[j], cos[j] = t;
            }
    for (int i = 0; i < 3; i++) {
        printf("pair %d: sqz similarity %.3f, sentence-transformers %.5f\n", i, printed[i], cos[i]);
        assert_true(fabs(printed[i] - cos[i]) <= 5e-4 + 1e-6); /* printed with 3 decimals */
    }
    free(out), free(input), free(expected), free(in);
    remove_temp_dir(dir);
}

static sqz_status load_embedder(const char *dir)
{
    sqz_model *model = NULL;
    sqz_status st = sqz_model_load(dir, NULL, &model);
    if (st != SQZ_OK)
        return st;
    sqz_embedder *emb = NULL;
    st = sqz_embedder_load(model, &emb);
    sqz_embedder_free(emb);
    sqz_model_free(model);
    return st;
}

static void bad_module_files(void **unused)
{
    static const struct {
        const char *base, *file, *text; /* text NULL: remove the file */
        sqz_status status;
        const char *mentions[2];
    } cases[] = {
        {"st-bert-mean", "1_Pooling/config.json", "{\"embedding_dimension\": 32, \"pooling_mode\": \"median\"}",
         SQZ_ERR_UNSUPPORTED, {"pooling_mode", "\"median\""}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"embedding_dimension\": 32, \"pooling_mode\": []}",
         SQZ_ERR_FORMAT, {"pooling_mode", "list"}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"embedding_dimension\": 32, \"pooling_mode\": [\"mean\", 3]}",
         SQZ_ERR_UNSUPPORTED, {"pooling_mode", "non-string"}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"word_embedding_dimension\": 32, \"pooling_mode_mean_tokens\": \"yes\"}",
         SQZ_ERR_FORMAT, {"pooling_mode_mean_tokens", "true or false"}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"word_embedding_dimension\": 32, \"pooling_mode_median_tokens\": true}",
         SQZ_ERR_UNSUPPORTED, {"pooling_mode_median_tokens", "not supported"}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"word_embedding_dimension\": 31, \"pooling_mode_mean_tokens\": true}",
         SQZ_ERR_MODEL_MISMATCH, {"word_embedding_dimension", "hidden_size is 32"}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"pooling_mode\": \"mean\"}",
         SQZ_ERR_FORMAT, {"word_embedding_dimension", "integer"}},
        {"st-bert-mean", "1_Pooling/config.json", NULL, SQZ_ERR_IO, {"1_Pooling/config.json", "cannot open"}},
        {"st-bert-mean", "1_Pooling/config.json", "{\"pooling_mode\": ", SQZ_ERR_FORMAT, {"1_Pooling/config.json", "invalid JSON"}},
        {"st-bert-mean", "modules.json", "{\"0\": {}}", SQZ_ERR_FORMAT, {"modules.json", "not a list"}},
        {"st-bert-mean", "modules.json",
         "[{\"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"},"
         " {\"path\": \"1_Pooling\", \"type\": \"sentence_transformers.models.Pooling\"},"
         " {\"path\": \"2\", \"type\": \"sentence_transformers.models.LayerNorm\"}]",
         SQZ_ERR_UNSUPPORTED, {"modules.json", "\"sentence_transformers.models.LayerNorm\""}},
        {"st-bert-mean", "modules.json",
         "[{\"path\": \"\", \"type\": \"my_package.Transformer\"}]",
         SQZ_ERR_UNSUPPORTED, {"modules.json", "\"my_package.Transformer\""}},
        {"st-bert-mean", "modules.json",
         "[{\"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"},"
         " {\"path\": \"../../etc\", \"type\": \"sentence_transformers.models.Pooling\"}]",
         SQZ_ERR_FORMAT, {"modules.json", "\"path\" \"../../etc\""}},
        {"st-bert-mean", "modules.json",
         "[{\"path\": \"0_BERT\", \"type\": \"sentence_transformers.models.Transformer\"}]",
         SQZ_ERR_UNSUPPORTED, {"modules.json", "\"0_BERT\""}},
        {"st-bert-mean", "modules.json", "[{\"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"}]",
         SQZ_ERR_UNSUPPORTED, {"modules.json", "no Pooling"}},
        {"st-bert-mean", "modules.json", "[{\"path\": 3, \"type\": \"x\"}]", SQZ_ERR_FORMAT, {"modules.json", "\"path\""}},
        {"st-bert-mean", "sentence_bert_config.json", "{\"max_seq_length\": \"long\"}",
         SQZ_ERR_FORMAT, {"sentence_bert_config.json", "max_seq_length"}},
        {"st-sqb-dense", "2_Dense/config.json", "{\"in_features\": 96, \"out_features\": 48, \"activation_function\": \"torch.nn.modules.activation.Softplus\"}",
         SQZ_ERR_UNSUPPORTED, {"activation_function", "Softplus"}},
        {"st-sqb-dense", "2_Dense/config.json", "{\"in_features\": 95, \"out_features\": 48}",
         SQZ_ERR_MODEL_MISMATCH, {"in_features", "96"}},
        {"st-sqb-dense", "2_Dense/config.json", "{\"in_features\": 96, \"out_features\": 47}",
         SQZ_ERR_MODEL_MISMATCH, {"linear.weight", "[47, 96]"}},
        {"st-sqb-dense", "2_Dense/config.json", "{\"in_features\": 96, \"out_features\": 48, \"use_residual\": true}",
         SQZ_ERR_UNSUPPORTED, {"2_Dense/config.json", "use_residual"}},
        {"st-sqb-dense", "2_Dense/config.json", "{\"in_features\": 96, \"out_features\": 48, \"module_input_name\": \"token_embeddings\"}",
         SQZ_ERR_UNSUPPORTED, {"2_Dense/config.json", "module_input_name"}},
        {"st-sqb-dense", "2_Dense/model.safetensors", NULL, SQZ_ERR_IO, {"2_Dense", "no weights"}},
        {"st-sqb-dense", "3_Dense/config.json", "{\"in_features\": 48, \"out_features\": 16, \"bias\": true,"
                                                " \"activation_function\": \"torch.nn.modules.linear.Identity\"}",
         SQZ_ERR_MODEL_MISMATCH, {"linear.bias", "missing"}},
        {"st-sqb-dense", "4_Normalize/config.json", "{\"module_input_name\": \"token_embeddings\"}",
         SQZ_ERR_UNSUPPORTED, {"4_Normalize/config.json", "module_input_name"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char from[512];
        snprintf(from, sizeof from, "%s/%s", SENT, cases[i].base);
        char *dir = copy_dir(from);
        if (cases[i].text) {
            char cmd[1024];
            snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s/%s')\"", dir, cases[i].file);
            assert_int_equal(system(cmd), 0);
            write_in(dir, cases[i].file, cases[i].text);
        } else {
            remove_in(dir, cases[i].file);
        }
        assert_fails_with(load_embedder(dir), cases[i].status, cases[i].mentions[0], cases[i].mentions[1]);
        remove_temp_dir(dir);
    }
    /* size limit before parsing: a 2 MB modules.json */
    char *dir = copy_dir(SENT "/st-bert-mean");
    size_t big = 2u << 20;
    char *text = malloc(big + 1);
    memset(text, ' ', big);
    text[0] = '[', text[big - 1] = ']', text[big] = 0;
    write_in(dir, "modules.json", text);
    free(text);
    assert_fails_with(load_embedder(dir), SQZ_ERR_FORMAT, "modules.json", "more than");
    remove_temp_dir(dir);
}

/* ---- sharded checkpoints ------------------------------------------------------------------- */

static void sharded_checkpoints(void **unused)
{
    /* both shard formats load every tensor (the embeddings are checked in test_infer) */
    const char *dirs[] = {SENT "/st-bert-cls-sqrt", SENT "/st-sqb-dense"};
    for (int i = 0; i < 2; i++) {
        sqz_model *m = NULL;
        assert_sqz_ok(sqz_model_load(dirs[i], NULL, &m));
        sqz_model_info info;
        assert_sqz_ok(sqz_model_get_info(m, &info));
        assert_non_null(strstr(info.weights_path, ".index.json"));
        assert_true(info.num_parameters > 100000);
        sqz_model_free(m);
    }
    static const struct {
        const char *edit; /* a sed expression applied to the index, or "rm FILE" */
        sqz_status status;
        const char *mentions[2];
    } cases[] = {
        {"rm model-00002-of-00002.safetensors", SQZ_ERR_IO, {"model-00002-of-00002.safetensors", "missing"}},
        {"s/\"pooler.dense.bias\": \"model-00002-of-00002.safetensors\"/\"pooler.dense.bias\": \"model-00001-of-00002.safetensors\"/",
         SQZ_ERR_MODEL_MISMATCH, {"pooler.dense.bias", "disagree"}},
        {"/\"pooler.dense.bias\"/d", SQZ_ERR_MODEL_MISMATCH, {"pooler.dense.bias", "does not list"}},
        {"s/\"pooler.dense.bias\": \"model-00002-of-00002.safetensors\"/\"pooler.dense.bias\": \"..\\/x.safetensors\"/",
         SQZ_ERR_FORMAT, {"weight_map[\"pooler.dense.bias\"]", "file name"}},
        {"s/\"weight_map\"/\"weights\"/", SQZ_ERR_FORMAT, {"model.safetensors.index.json", "weight_map"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *dir = copy_dir(SENT "/st-bert-cls-sqrt");
        char cmd[1024];
        if (strncmp(cases[i].edit, "rm ", 3) == 0)
            snprintf(cmd, sizeof cmd, "rm '%s/%s'", dir, cases[i].edit + 3);
        else
            snprintf(cmd, sizeof cmd, "sed -i '%s' '%s/model.safetensors.index.json'", cases[i].edit, dir);
        assert_int_equal(system(cmd), 0);
        sqz_model *m = NULL;
        assert_fails_with(sqz_model_load(dir, NULL, &m), cases[i].status, cases[i].mentions[0], cases[i].mentions[1]);
        assert_null(m);
        remove_temp_dir(dir);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tokenizer_json_matches_transformers),
        cmocka_unit_test(tokenizer_json_wins_over_vocab_txt),
        cmocka_unit_test(post_processor_framing),
        cmocka_unit_test(bad_tokenizer_files),
        cmocka_unit_test(info_shows_what_was_read),
        cmocka_unit_test(flags_override_the_modules),
        cmocka_unit_test(similarity_matches_the_reference),
        cmocka_unit_test(bad_module_files),
        cmocka_unit_test(sharded_checkpoints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
