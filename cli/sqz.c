/* sqz: the command line of the squeezebert engine. Uses only the public API. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "squeezebert.h"
#include "cli/cli_options.h"
#include "cli/json_io.h"
#include "cli/sqz_commands.h"

#define EXIT_USAGE 2
#define EXIT_NO_DEVICE 77 /* the backend is built in but has no device here */

static int fail(const char *command, sqz_status status)
{
    fprintf(stderr, "sqz %s: %s: %s\n", command, sqz_status_str(status), sqz_last_error());
    return 1;
}


/* ---- forward ------------------------------------------------------------------------------ */

static const char forward_help[] =
    "usage: sqz forward --model DIR [--backend cpu_ref|cpu|opencl|cuda] [--device D] [--precision P]\n"
    "                   [--threads N] --input IN.json --output OUT.json [--verbose]\n"
    "\n"
    "Runs the checkpoint in DIR (config.json + model.safetensors or pytorch_model.bin) on the\n"
    "ids in IN.json and writes every output of the model to OUT.json.\n"
    "\n"
    "  IN.json   {\"input_ids\": [[...], ...], \"attention_mask\": [[...]], \"token_type_ids\": [[...]]}\n"
    "            mask and types are optional; [N][K][W] for multiple-choice models\n"
    "  OUT.json  outputs named as transformers names them (last_hidden_state, pooler_output,\n"
    "            logits, start_logits, end_logits), nested arrays, 9 significant digits;\n"
    "            values at padded positions (mask 0) are unspecified\n"
    "  --backend cpu_ref (default), cpu, opencl or cuda; --device picks one by index or name (`sqz devices`)\n"
    "  --threads N cpu backend: compute threads (default: every core)\n"
    "  --precision fp32 (default), tf32, fp16 or bf16 (CUDA runs all four, cpu fp32 and bf16; the others fp32)\n"
    "  --verbose prints the model summary, ignored weight keys and timings to stderr\n";

static int cmd_forward(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(forward_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"model", true, NULL},  {"backend", true, NULL}, {"input", true, NULL},
                     {"output", true, NULL}, {"verbose", false, NULL}, {"device", true, NULL},
                     {"precision", true, NULL}, {"threads", true, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("forward", argc, argv, opts, n))
        return EXIT_USAGE;
    const char *model_dir = cli_get(opts, n, "model"), *in_path = cli_get(opts, n, "input"),
               *out_path = cli_get(opts, n, "output"), *backend = cli_get(opts, n, "backend");
    const char *device = NULL;
    char device_buf[32];
    if (cli_device_for("forward", backend ? backend : "cpu_ref", cli_get(opts, n, "device"), cli_get(opts, n, "threads"),
                       device_buf, sizeof device_buf, &device))
        return EXIT_USAGE;
    const bool verbose = cli_get(opts, n, "verbose") != NULL;
    if (!model_dir || !in_path || !out_path) {
        fprintf(stderr, "sqz forward: --model, --input and --output are required\n\n%s", forward_help);
        return EXIT_USAGE;
    }
    char err[1024];
    cli_input input;
    if (cli_input_read(in_path, &input, err, sizeof err)) {
        fprintf(stderr, "sqz forward: invalid input: %s\n", err);
        return 1;
    }
    double t0 = cli_now_seconds();
    sqz_model *model = NULL;
    sqz_session *session = NULL;
    sqz_result *result = NULL;
    int rc = 1;
    sqz_status st = cli_load_model(model_dir, &model);
    if (st != SQZ_OK) {
        rc = fail("forward", st);
        goto done;
    }
    double t1 = cli_now_seconds();
    if (verbose) {
        sqz_model_info info;
        sqz_model_get_info(model, &info);
        fprintf(stderr, "sqz forward: %s (%s, %s head) from %s: %d layers, hidden %d, %lld "
                "parameters, loaded in %.3f s\n", info.architecture, info.model_type,
                sqz_head_name(info.head), info.weights_path, info.num_layers, info.hidden_size,
                (long long)info.num_parameters, t1 - t0);
        size_t ignored = sqz_model_ignored_key_count(model);
        if (ignored)
            fprintf(stderr, "sqz forward: %zu key(s) in the weight file are not used:\n", ignored);
        for (size_t i = 0; i < ignored; i++)
            fprintf(stderr, "  %s\n", sqz_model_ignored_key(model, i));
    }
    sqz_session_options so = cli_session_options(backend, device, SQZ_PRECISION_FP32);
    if ((st = sqz_precision_from_name(cli_get(opts, n, "precision"), &so.precision)) != SQZ_OK ||
        (st = sqz_session_create(model, &so, &session)) != SQZ_OK) {
        rc = fail("forward", st);
        goto done;
    }
    double t2 = cli_now_seconds();
    if (verbose)
        fprintf(stderr, "sqz forward: running on %s\n", sqz_session_device(session));
    if ((st = sqz_session_run(session, &input.input, &result)) != SQZ_OK) {
        rc = fail("forward", st);
        goto done;
    }
    double t3 = cli_now_seconds();
    FILE *f = strcmp(out_path, "-") == 0 ? stdout : fopen(out_path, "w");
    if (!f) {
        fprintf(stderr, "sqz forward: cannot write %s: %s\n", out_path, strerror(errno));
        goto done;
    }
    size_t non_finite = 0;
    int werr = cli_outputs_write(f, result, &non_finite);
    if (f != stdout)
        werr |= fclose(f) != 0;
    if (werr) {
        fprintf(stderr, "sqz forward: error writing %s\n", out_path);
        goto done;
    }
    if (non_finite)
        fprintf(stderr, "sqz forward: warning: %zu output values are not finite (written as null)\n",
                non_finite);
    if (verbose)
        fprintf(stderr, "sqz forward: session %.3f s, run %.3f s (%d x %d tokens%s)\n", t2 - t1,
                t3 - t2, input.input.batch, input.input.seq_len,
                input.input.choices ? ", multiple choice" : "");
    rc = 0;
done:
    sqz_result_free(result);
    sqz_session_free(session);
    sqz_model_free(model);
    cli_input_release(&input);
    return rc;
}

/* ---- graph -------------------------------------------------------------------------------- */

static const char graph_help[] =
    "usage: sqz graph --model DIR --dot [--tokens T] [--sequences S] [--output FILE]\n"
    "\n"
    "Compiles the model's graph into a plan for a bucket of T packed tokens (default 128) in S\n"
    "sequences (default 1) and draws it in Graphviz DOT (render with: dot -Tsvg FILE).\n";

static int cmd_graph(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(graph_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"model", true, NULL},  {"dot", false, NULL}, {"tokens", true, NULL},
                     {"sequences", true, NULL}, {"output", true, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("graph", argc, argv, opts, n))
        return EXIT_USAGE;
    long tokens = 128, sequences = 1;
    if ((cli_get(opts, n, "tokens") &&
         cli_int("graph", "tokens", cli_get(opts, n, "tokens"), 1, 1 << 20, &tokens)) ||
        (cli_get(opts, n, "sequences") &&
         cli_int("graph", "sequences", cli_get(opts, n, "sequences"), 1, 1 << 20, &sequences)))
        return EXIT_USAGE;
    if (!cli_get(opts, n, "model") || !cli_get(opts, n, "dot")) {
        fprintf(stderr, "sqz graph: --model and --dot are required\n\n%s", graph_help);
        return EXIT_USAGE;
    }
    if (sequences > tokens) {
        fprintf(stderr, "sqz graph: --sequences (%ld) cannot exceed --tokens (%ld)\n", sequences, tokens);
        return EXIT_USAGE;
    }
    sqz_model *model = NULL;
    char *dot = NULL;
    sqz_status st = cli_load_model(cli_get(opts, n, "model"), &model);
    if (st == SQZ_OK)
        st = sqz_model_graph_dot(model, (int)tokens, (int)sequences, &dot);
    sqz_model_free(model);
    if (st != SQZ_OK)
        return fail("graph", st);
    const char *out_path = cli_get(opts, n, "output");
    FILE *f = out_path ? fopen(out_path, "w") : stdout;
    int rc = 0;
    if (!f || fputs(dot, f) < 0) {
        fprintf(stderr, "sqz graph: cannot write %s: %s\n", out_path ? out_path : "stdout",
                strerror(errno));
        rc = 1;
    }
    if (f && f != stdout && fclose(f) != 0)
        rc = 1;
    sqz_free(dot);
    return rc;
}

/* ---- random-model --------------------------------------------------------------------------- */

static const char random_help[] =
    "usage: sqz random-model --config squeezebert-uncased|squeezebert-mnli|tiny --seed S --out DIR\n"
    "\n"
    "                        [--variant LIST]\n"
    "\n"
    "Writes a deterministic random-weight checkpoint (config.json + model.safetensors) in the\n"
    "Hugging Face layout. squeezebert-uncased and squeezebert-mnli have the shapes of the\n"
    "published checkpoints (51 M parameters); tiny is a 2-layer model (hidden 128, 2 heads of\n"
    "64) for quick checks.\n"
    "\n"
    "  --variant LIST  comma-separated variants (docs/variants.md): linear (linear attention),\n"
    "                  share=K (layers share weights in groups of K), stride=K (run every Kth\n"
    "                  layer), layers=N (run the first N), positions=P (position table size,\n"
    "                  for long inputs). The same list joined by '+' after a preset name works\n"
    "                  wherever a preset does (--random tiny+linear+positions=4096).\n";

static int cmd_random_model(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(random_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"config", true, NULL}, {"seed", true, NULL}, {"out", true, NULL},
                         {"variant", true, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("random-model", argc, argv, opts, n))
        return EXIT_USAGE;
    if (!cli_get(opts, n, "config") || !cli_get(opts, n, "out")) {
        fprintf(stderr, "sqz random-model: --config and --out are required\n\n%s", random_help);
        return EXIT_USAGE;
    }
    unsigned long long seed = 0;
    if (cli_get(opts, n, "seed")) {
        char *end = NULL;
        errno = 0;
        seed = strtoull(cli_get(opts, n, "seed"), &end, 10);
        if (errno || !end || *end || cli_get(opts, n, "seed")[0] == '-') {
            fprintf(stderr, "sqz random-model: --seed must be a non-negative integer\n");
            return EXIT_USAGE;
        }
    }
    char preset[256];
    const char *variant = cli_get(opts, n, "variant");
    if ((size_t)snprintf(preset, sizeof preset, "%s%s%s", cli_get(opts, n, "config"), variant ? "+" : "",
                         variant ? variant : "") >= sizeof preset) {
        fprintf(stderr, "sqz random-model: --config and --variant are too long\n");
        return EXIT_USAGE;
    }
    for (char *c = preset; *c; c++) /* the list's commas are the preset's '+' */
        if (*c == ',')
            *c = '+';
    double t0 = cli_now_seconds();
    sqz_status st = sqz_random_model_write(preset, seed, cli_get(opts, n, "out"));
    if (st != SQZ_OK)
        return fail("random-model", st);
    fprintf(stderr, "sqz random-model: wrote %s (seed %llu) to %s in %.2f s\n", preset, seed,
            cli_get(opts, n, "out"), cli_now_seconds() - t0);
    return 0;
}

/* ---- info / backends ----------------------------------------------------------------------- */

static const char info_help[] =
    "usage: sqz info --model DIR [--verbose]\n"
    "\n"
    "Loads the checkpoint and prints its configuration; --verbose lists weight-file keys the\n"
    "model does not use.\n";

static int cmd_info(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"model", true, NULL}, {"verbose", false, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("info", argc, argv, opts, n))
        return EXIT_USAGE;
    if (!cli_get(opts, n, "model")) {
        fprintf(stderr, "sqz info: --model is required\n\n%s", info_help);
        return EXIT_USAGE;
    }
    sqz_model *model = NULL;
    sqz_status st = cli_load_model(cli_get(opts, n, "model"), &model);
    if (st != SQZ_OK)
        return fail("info", st);
    sqz_model_info i;
    sqz_model_get_info(model, &i);
    printf("architecture      %s (%s head)\n", i.architecture, sqz_head_name(i.head));
    printf("model_type        %s\n", i.model_type);
    printf("weights           %s\n", i.weights_path);
    printf("parameters        %lld\n", (long long)i.num_parameters);
    printf("layers x hidden   %d x %d, %d heads, intermediate %d\n", i.num_layers, i.hidden_size,
           i.num_heads, i.intermediate_size);
    if (i.linear_attention || i.share_layers || i.layer_stride > 1 || i.layers_run < i.num_layers)
        printf("variant           %s attention, %d of %d layers run (stride %d), weights shared in groups of "
               "%d layers\n", i.linear_attention ? "linear" : "softmax", i.layers_run, i.num_layers, i.layer_stride,
               i.share_layers ? i.share_layers : 1);
    printf("groups q/k/v      %d/%d/%d, post-attention %d, intermediate %d, output %d\n",
           i.q_groups, i.k_groups, i.v_groups, i.post_attention_groups, i.intermediate_groups,
           i.output_groups);
    printf("vocab / positions %d / %d, token types %d\n", i.vocab_size, i.max_position_embeddings,
           i.type_vocab_size);
    printf("layer norm eps    %g (embeddings, MLM head), %g (encoder)\n", i.layer_norm_eps,
           i.encoder_layer_norm_eps);
    if (i.head == SQZ_HEAD_SEQUENCE_CLASSIFICATION || i.head == SQZ_HEAD_TOKEN_CLASSIFICATION) {
        printf("labels           ");
        for (int k = 0; k < i.num_labels; k++)
            printf(" %d=%s", k, sqz_model_label(model, k));
        printf("\n");
    }
    size_t ignored = sqz_model_ignored_key_count(model);
    printf("unused keys       %zu%s\n", ignored, ignored && !cli_get(opts, n, "verbose") ? " (--verbose lists them)" : "");
    if (cli_get(opts, n, "verbose"))
        for (size_t k = 0; k < ignored; k++)
            printf("  %s\n", sqz_model_ignored_key(model, k));
    int rc = 0;
    /* what sqz infer and sqz tokenize read besides the weights; a checkpoint without
     * tokenizer files is fine, broken ones are errors */
    sqz_tokenizer *tok = NULL;
    st = sqz_tokenizer_load(cli_get(opts, n, "model"), &tok);
    if (st == SQZ_OK) {
        sqz_tokenizer_info t;
        sqz_tokenizer_get_info(tok, &t);
        printf("tokenizer         %s\n", sqz_tokenizer_source(tok));
        printf("                  %d entries; lower case %s, strip accents %s, split CJK %s, clean "
               "text %s; %d characters per word; model_max_length %d%s\n", t.vocab_size,
               t.do_lower_case ? "yes" : "no", t.strip_accents ? "yes" : "no",
               t.tokenize_chinese_chars ? "yes" : "no", t.clean_text ? "yes" : "no",
               t.max_input_chars_per_word, t.model_max_length, t.model_max_length ? "" : " (none)");
    } else if (st == SQZ_ERR_IO && strstr(sqz_last_error(), "no tokenizer vocabulary")) {
        printf("tokenizer         none (no vocab.txt or tokenizer.json)\n");
    } else {
        printf("tokenizer         error: %s\n", sqz_last_error());
        rc = 1;
    }
    sqz_embedder *emb = NULL;
    if ((st = sqz_embedder_load(model, &emb)) == SQZ_OK && (!tok || (st = sqz_embedder_use_tokenizer(emb, tok)) == SQZ_OK)) {
        sqz_embedder_info e;
        sqz_embedder_get_info(emb, &e);
        char modes[256] = "";
        for (int k = 0; k < e.pool_count; k++)
            snprintf(modes + strlen(modes), sizeof modes - strlen(modes), "%s%s", k ? "+" : "",
                     sqz_pool_mode_name(e.pool[k]));
        printf("embedding (embed) %s; pooling %s%s%s%s, %d Dense module%s, normalize %s, max length %d%s, "
               "inputs cut at %d tokens, %d floats\n",
               e.from_modules ? "sentence-transformers modules.json" : "no modules.json", modes,
               e.pooling_file[0] ? " (" : "", e.pooling_file, e.pooling_file[0] ? ")" : "",
               e.dense_count, e.dense_count == 1 ? "" : "s", e.normalize ? "yes" : "no",
               e.max_seq_length, e.max_seq_length ? " (sentence_bert_config.json)" : " (not given)",
               e.truncate_at, e.dimension);
    } else {
        printf("embedding (embed) error: %s\n", sqz_last_error());
        rc = 1;
    }
    sqz_embedder_free(emb);
    sqz_tokenizer_free(tok);
    sqz_model_free(model);
    return rc;
}

static int cmd_backends(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs("usage: sqz backends\n\nLists the backends compiled into this build and whether each "
              "can run here.\n", stdout);
        return 0;
    }
    if (argc > 0) {
        fprintf(stderr, "sqz backends: takes no arguments\n");
        return EXIT_USAGE;
    }
    for (size_t i = 0; sqz_backend_name(i); i++) {
        const char *name = sqz_backend_name(i);
        sqz_status st = sqz_backend_probe(name);
        printf("%-8s %s%s%s\n", name, st == SQZ_OK ? "ready" : sqz_status_str(st),
               st == SQZ_OK ? "" : ": ", st == SQZ_OK ? "" : sqz_last_error());
    }
    return 0;
}

/* ---- demo ---------------------------------------------------------------------------------- */

static const char demo_help[] =
    "usage: sqz demo [--config squeezebert-uncased|squeezebert-mnli|tiny] [--model DIR] [--seed S]\n"
    "                [--batch N] [--length W] [--no-padding] [--backend cpu_ref|cpu|opencl|cuda]\n"
    "                [--device D] [--threads N] [--precision fp32|tf32|fp16|bf16] [--repeat R]\n"
    "\n"
    "The main job on an embedded default: writes a deterministic random-weight checkpoint\n"
    "(default: the full-size squeezebert-uncased shape) to a temporary directory, or uses\n"
    "--model DIR, runs N random sequences of W tokens (default 2 x 32, one of them padded)\n"
    "through it and prints what it computed and how long each step took. With --repeat R the\n"
    "first run (plan compile, kernel build) is reported apart and the median of R runs after.\n";

static int cmd_demo(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(demo_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"config", true, NULL}, {"model", true, NULL},  {"seed", true, NULL},
                     {"batch", true, NULL},  {"length", true, NULL}, {"backend", true, NULL},
                     {"device", true, NULL}, {"repeat", true, NULL}, {"no-padding", false, NULL},
                     {"precision", true, NULL}, {"threads", true, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("demo", argc, argv, opts, n))
        return EXIT_USAGE;
    const char *backend = cli_get(opts, n, "backend") ? cli_get(opts, n, "backend") : "cpu_ref", *device = NULL;
    char device_buf[32];
    if (cli_device_for("demo", backend, cli_get(opts, n, "device"), cli_get(opts, n, "threads"), device_buf,
                       sizeof device_buf, &device))
        return EXIT_USAGE;
    long batch = 2, length = 32, seed = 1, repeat = 1;
    if ((cli_get(opts, n, "batch") && cli_int("demo", "batch", cli_get(opts, n, "batch"), 1, 4096, &batch)) ||
        (cli_get(opts, n, "length") && cli_int("demo", "length", cli_get(opts, n, "length"), 2, 65536, &length)) ||
        (cli_get(opts, n, "seed") && cli_int("demo", "seed", cli_get(opts, n, "seed"), 0, 1L << 30, &seed)) ||
        (cli_get(opts, n, "repeat") && cli_int("demo", "repeat", cli_get(opts, n, "repeat"), 1, 1000, &repeat)))
        return EXIT_USAGE;
    const char *preset = cli_get(opts, n, "config") ? cli_get(opts, n, "config") : "squeezebert-uncased";
    char tmp_dir[] = "/tmp/sqz-demo-XXXXXX";
    const char *dir = cli_get(opts, n, "model");
    bool made = false;
    double t0 = cli_now_seconds();
    if (!dir) {
        if (!mkdtemp(tmp_dir)) {
            fprintf(stderr, "sqz demo: cannot create a temporary directory: %s\n", strerror(errno));
            return 1;
        }
        made = true;
        dir = tmp_dir;
        sqz_status st = sqz_random_model_write(preset, (uint64_t)seed, dir);
        if (st != SQZ_OK) {
            cli_remove_checkpoint(dir);
            return fail("demo", st);
        }
        printf("wrote random %s checkpoint (seed %ld) to %s in %.2f s\n", preset, seed, dir,
               cli_now_seconds() - t0);
    }
    int rc = 1;
    sqz_model *model = NULL;
    sqz_session *session = NULL;
    sqz_result *result = NULL;
    int64_t *ids = NULL, *mask = NULL;
    double t1 = cli_now_seconds();
    sqz_status st = cli_load_model(dir, &model);
    if (st != SQZ_OK) {
        rc = fail("demo", st);
        goto done;
    }
    sqz_model_info info;
    sqz_model_get_info(model, &info);
    printf("loaded %s: %d layers, hidden %d, groups q/k/v %d/%d/%d, %lld parameters, in %.2f s\n",
           info.architecture, info.num_layers, info.hidden_size, info.q_groups, info.k_groups,
           info.v_groups, (long long)info.num_parameters, cli_now_seconds() - t1);
    if (length > info.max_position_embeddings) {
        fprintf(stderr, "sqz demo: --length %ld exceeds max_position_embeddings %d\n", length,
                info.max_position_embeddings);
        goto done;
    }
    ids = calloc((size_t)(batch * length), sizeof *ids);
    mask = calloc((size_t)(batch * length), sizeof *mask);
    if (!ids || !mask) {
        fprintf(stderr, "sqz demo: out of memory\n");
        goto done;
    }
    uint64_t state = (uint64_t)seed * 2654435761u + 1;
    long real_tokens = 0;
    for (long b = 0; b < batch; b++) {
        /* every other sequence padded unless --no-padding */
        long len = b % 2 && !cli_get(opts, n, "no-padding") ? length - length / 4 : length;
        for (long w = 0; w < length; w++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            long id = 1000 + (long)((state >> 33) % (uint64_t)(info.vocab_size - 1000 > 0 ? info.vocab_size - 1000 : 1));
            ids[b * length + w] = w == 0 ? 101 % info.vocab_size : w == len - 1 ? 102 % info.vocab_size
                                  : w < len ? id % info.vocab_size : 0;
            mask[b * length + w] = w < len;
            real_tokens += w < len;
        }
    }
    double t_session = cli_now_seconds();
    sqz_session_options so = cli_session_options(backend, device, SQZ_PRECISION_FP32);
    if ((st = sqz_precision_from_name(cli_get(opts, n, "precision"), &so.precision)) != SQZ_OK ||
        (st = sqz_session_create(model, &so, &session)) != SQZ_OK) {
        rc = fail("demo", st);
        goto done;
    }
    printf("session on %s (%s) ready in %.2f s\n", backend, sqz_session_device(session),
           cli_now_seconds() - t_session);
    sqz_input input = {.batch = (int)batch, .seq_len = (int)length, .input_ids = ids,
                       .attention_mask = mask};
    double times[1001] = {0};
    for (long r = 0; r < repeat + (repeat > 1); r++) {
        sqz_result_free(result);
        result = NULL;
        double t2 = cli_now_seconds();
        if ((st = sqz_session_run(session, &input, &result)) != SQZ_OK) {
            rc = fail("demo", st);
            goto done;
        }
        times[r] = cli_now_seconds() - t2;
    }
    double elapsed = times[0];
    if (repeat > 1) {
        printf("first run (plan compile and warm-up included): %.3f s\n", times[0]);
        /* median of the timed runs */
        double *t = times + 1;
        for (long i = 1; i < repeat; i++)
            for (long j = i; j > 0 && t[j] < t[j - 1]; j--) {
                double x = t[j];
                t[j] = t[j - 1];
                t[j - 1] = x;
            }
        elapsed = t[repeat / 2];
    }
    printf("forward on %s: %ld sequences x %ld positions (%ld real tokens) in %.3f s%s: %.1f "
           "tokens/s, %.2f sequences/s\n", backend, batch, length, real_tokens, elapsed,
           repeat > 1 ? " (median)" : "", real_tokens / elapsed, batch / elapsed);
    for (size_t i = 0; i < sqz_result_count(result); i++) {
        const sqz_output *o = sqz_result_get(result, i);
        int64_t count = 1;
        printf("  %-18s [", o->name);
        for (int d = 0; d < o->ndim; d++) {
            printf("%s%lld", d ? ", " : "", (long long)o->shape[d]);
            count *= o->shape[d];
        }
        double sum = 0, sum_sq = 0;
        for (int64_t k = 0; k < count; k++) {
            sum += o->data[k];
            sum_sq += (double)o->data[k] * o->data[k];
        }
        printf("]  first values %.6f %.6f %.6f  mean %.6f  rms %.6f\n", o->data[0],
               count > 1 ? o->data[1] : 0.0f, count > 2 ? o->data[2] : 0.0f, sum / count,
               sum_sq > 0 ? sqrt(sum_sq / count) : 0.0);
    }
    rc = 0;
done:
    sqz_result_free(result);
    sqz_session_free(session);
    sqz_model_free(model);
    free(ids);
    free(mask);
    if (made)
        cli_remove_checkpoint(dir);
    return rc;
}

/* ---- devices / validate ------------------------------------------------------------------- */

static int cmd_devices(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs("usage: sqz devices\n\nLists every device of every backend in this build (CUDA, OpenCL, the "
              "host) with\nits memory and capabilities, or why a backend has none. The index or a "
              "name\nsubstring is what --device takes.\n", stdout);
        return 0;
    }
    if (argc > 0) {
        fprintf(stderr, "sqz devices: takes no arguments\n");
        return EXIT_USAGE;
    }
    char *text = NULL;
    sqz_status st = sqz_devices_describe(&text);
    if (st != SQZ_OK)
        return fail("devices", st);
    fputs(text, stdout);
    sqz_free(text);
    return 0;
}

/* B random sequences of up to S tokens for a model (random ids, every other row padded to a
 * random length, token types mixed), as sqz validate and sqz kernels run them; the arrays are
 * the caller's to free. Returns 0, or 1 after saying why. */
static int random_batch(const sqz_model_info *info, long batch, long seq, long seed, sqz_input *input, int64_t **ids,
                        int64_t **mask, int64_t **types)
{
    const int choices = info->head == SQZ_HEAD_MULTIPLE_CHOICE ? 2 : 0;
    const long rows = batch * (choices ? choices : 1);
    *ids = calloc((size_t)(rows * seq), sizeof **ids);
    *mask = calloc((size_t)(rows * seq), sizeof **mask);
    *types = calloc((size_t)(rows * seq), sizeof **types);
    if (!*ids || !*mask || !*types) {
        fprintf(stderr, "sqz: out of memory for %ld x %ld tokens\n", rows, seq);
        return 1;
    }
    uint64_t state = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 12345;
    for (long r = 0; r < rows; r++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        long len = r % 2 ? 1 + (long)((state >> 33) % (uint64_t)seq) : seq; /* every other row padded */
        for (long w = 0; w < seq; w++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            (*ids)[r * seq + w] = (int64_t)((state >> 33) % (uint64_t)info->vocab_size);
            (*mask)[r * seq + w] = w < len;
            (*types)[r * seq + w] = info->type_vocab_size > 1 && w >= len / 2 ? 1 : 0;
        }
    }
    *input = (sqz_input){.batch = (int)batch, .choices = choices, .seq_len = (int)seq,
                         .input_ids = *ids, .attention_mask = *mask, .token_type_ids = *types};
    return 0;
}

static const char validate_help[] =
    "usage: sqz validate (--model DIR | --random squeezebert-uncased|squeezebert-mnli|tiny)\n"
    "                    --backend cpu|opencl|cuda [--device D] [--batch B] [--seq S] [--seed N]\n"
    "                    [--precision fp32|tf32|fp16|bf16] [--tolerance T]\n"
    "\n"
    "Runs the same fresh random input on the backend and on cpu_ref, keeping every\n"
    "intermediate tensor, and compares each node the backend ran with cpu_ref's tensor of\n"
    "the same name: max abs error, max relative error (max abs / max |cpu_ref|), NMSE.\n"
    "Prints a table, names the first node out of tolerance (default: the precision's bar,\n"
    "1e-4 relative for fp32; see docs/engineering.md) and exits 1 if any node failed. B sequences (default 4) of\n"
    "up to S tokens (default 32), random ids, some rows padded, token types mixed; the seed\n"
    "defaults to the clock and is printed. SQZ_DISABLE_FUSION=1 validates the unfused plan.\n"
    "Exit status: 0 all nodes pass, 1 a node failed or an error, 2 usage, 77 no device.\n";

static int cmd_validate(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(validate_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"model", true, NULL},   {"random", true, NULL}, {"backend", true, NULL},
                     {"device", true, NULL},  {"batch", true, NULL},  {"seq", true, NULL},
                     {"seed", true, NULL},    {"tolerance", true, NULL}, {"precision", true, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("validate", argc, argv, opts, n))
        return EXIT_USAGE;
    long batch = 4, seq = 32, seed = (long)(time(NULL) % 1000000);
    if ((cli_get(opts, n, "batch") && cli_int("validate", "batch", cli_get(opts, n, "batch"), 1, 65536, &batch)) ||
        (cli_get(opts, n, "seq") && cli_int("validate", "seq", cli_get(opts, n, "seq"), 1, 65536, &seq)) ||
        (cli_get(opts, n, "seed") && cli_int("validate", "seed", cli_get(opts, n, "seed"), 0, 1L << 30, &seed)))
        return EXIT_USAGE;
    sqz_precision precision;
    if (sqz_precision_from_name(cli_get(opts, n, "precision"), &precision) != SQZ_OK) {
        fprintf(stderr, "sqz validate: %s\n", sqz_last_error());
        return EXIT_USAGE;
    }
    double tolerance = sqz_precision_tolerance(precision);
    if (cli_get(opts, n, "tolerance")) {
        char *end = NULL;
        tolerance = strtod(cli_get(opts, n, "tolerance"), &end);
        if (!end || *end || !(tolerance > 0)) {
            fprintf(stderr, "sqz validate: --tolerance must be a positive number\n");
            return EXIT_USAGE;
        }
    }
    const char *model_dir = cli_get(opts, n, "model"), *preset = cli_get(opts, n, "random");
    const char *backend = cli_get(opts, n, "backend");
    if (!backend || (!model_dir == !preset)) {
        fprintf(stderr, "sqz validate: --backend and one of --model or --random are required\n\n%s",
                validate_help);
        return EXIT_USAGE;
    }
    sqz_status probe = sqz_backend_probe(backend);
    if (probe != SQZ_OK) { /* before writing a model nobody will run */
        fail("validate", probe);
        return probe == SQZ_ERR_NO_DEVICE ? EXIT_NO_DEVICE : 1;
    }
    char tmp_dir[] = "/tmp/sqz-validate-XXXXXX";
    if (preset) {
        if (!mkdtemp(tmp_dir)) {
            fprintf(stderr, "sqz validate: cannot create a temporary directory: %s\n", strerror(errno));
            return 1;
        }
        sqz_status st = sqz_random_model_write(preset, (uint64_t)seed, tmp_dir);
        if (st != SQZ_OK) {
            cli_remove_checkpoint(tmp_dir);
            return fail("validate", st);
        }
        model_dir = tmp_dir;
    }
    int rc = 1;
    sqz_model *model = NULL;
    sqz_validation *v = NULL;
    int64_t *ids = NULL, *mask = NULL, *types = NULL;
    sqz_status st = cli_load_model(model_dir, &model);
    if (st != SQZ_OK) {
        rc = fail("validate", st);
        goto done;
    }
    sqz_model_info info;
    sqz_model_get_info(model, &info);
    if (seq > info.max_position_embeddings)
        seq = info.max_position_embeddings;
    const long rows = batch * (info.head == SQZ_HEAD_MULTIPLE_CHOICE ? 2 : 1);
    sqz_input input;
    if (random_batch(&info, batch, seq, seed, &input, &ids, &mask, &types) != 0)
        goto done;
    sqz_session_options so = cli_session_options(backend, cli_get(opts, n, "device"), precision);
    if ((st = sqz_validate(model, &so, &input, tolerance, &v)) != SQZ_OK) {
        rc = fail("validate", st);
        if (st == SQZ_ERR_NO_DEVICE)
            rc = EXIT_NO_DEVICE; /* a test harness reports this as skipped */
        goto done;
    }
    printf("validate %s %s on %s against cpu_ref: %s, %ld x %ld tokens, seed %ld, tolerance %.0e\n",
           backend, sqz_precision_name(precision), sqz_validation_device(v), info.architecture, rows, seq,
           seed, tolerance);
    printf("%-36s %-16s %10s %10s %10s  %s\n", "node", "op", "max abs", "max rel", "NMSE", "result");
    for (size_t i = 0; i < sqz_validation_count(v); i++) {
        const sqz_node_check *c = sqz_validation_get(v, i);
        printf("%-36s %-16s %10.3e %10.3e %10.3e  %s\n", c->node, c->op, c->max_abs, c->max_rel,
               c->nmse, c->passed ? "pass" : "FAIL");
    }
    int64_t argmax_mismatches = 0, argmax_rows = sqz_validation_argmax(v, &argmax_mismatches);
    if (argmax_rows)
        printf("argmax of the logits: %lld of %lld rows differ from cpu_ref\n", (long long)argmax_mismatches,
               (long long)argmax_rows);
    long first = sqz_validation_first_failure(v);
    if (first >= 0) {
        printf("first node out of tolerance: %s (%s), max relative error %.3e > %.0e\n",
               sqz_validation_get(v, (size_t)first)->node, sqz_validation_get(v, (size_t)first)->op,
               sqz_validation_get(v, (size_t)first)->max_rel, tolerance);
    } else if (argmax_mismatches) {
        printf("all %zu nodes within tolerance, but the argmax of %lld rows differs\n",
               sqz_validation_count(v), (long long)argmax_mismatches);
    } else {
        printf("all %zu nodes within tolerance\n", sqz_validation_count(v));
        rc = 0;
    }
done:
    sqz_validation_free(v);
    sqz_model_free(model);
    free(ids), free(mask), free(types);
    if (preset)
        cli_remove_checkpoint(tmp_dir);
    return rc;
}


/* ---- kernels ------------------------------------------------------------------------------- */

static const char kernels_help[] =
    "usage: sqz kernels (--model DIR | --random squeezebert-uncased|squeezebert-mnli|tiny)\n"
    "                   --backend cuda|cuda-sim [--device D] [--precision fp32|tf32|fp16|bf16]\n"
    "                   [--batch B] [--seq S] [--seed N] [--peak-tflops T] [--peak-gbs G]\n"
    "\n"
    "The kernel lab's table: runs B random sequences of S tokens (default 256 x 128; every other\n"
    "row padded, as in sqz validate) once, which makes the backend check and time every kernel\n"
    "variant that applies to each op shape it meets (docs/engineering.md, \"Kernel variants\"),\n"
    "and prints per shape and variant: microseconds per run, the difference from variant 0\n"
    "(max |difference| / max |variant 0|), TFLOP/s, GB/s of the least traffic the op needs, and\n"
    "the fraction of the roofline, max(FLOPs / peak, bytes / bandwidth) / time, with the chosen\n"
    "variant marked. Peaks: --peak-tflops and --peak-gbs, else the datasheet figures of an\n"
    "H100 SXM or H200 at the precision (tensor cores; fp32 on CUDA cores), else none. On\n"
    "cuda-sim the times are the emulation's, not a GPU's. Exit 77 when the backend has no device.\n";

/* datasheet peaks by device name and precision: TFLOP/s dense and GB/s (performance notes) */
static bool datasheet_peaks(const char *device, sqz_precision p, double *tflops, double *gbs)
{
    const double bw = strstr(device, "H200") ? 4800 : strstr(device, "H100") ? 3350 : 0;
    if (bw == 0)
        return false;
    *gbs = bw;
    *tflops = p == SQZ_PRECISION_FP32 ? 67 : p == SQZ_PRECISION_TF32 ? 495 : 989;
    return true;
}

static int cmd_kernels(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(kernels_help, stdout);
        return 0;
    }
    cli_option opts[] = {{"model", true, NULL},  {"random", true, NULL},    {"backend", true, NULL},
                         {"device", true, NULL}, {"batch", true, NULL},     {"seq", true, NULL},
                         {"seed", true, NULL},   {"precision", true, NULL}, {"peak-tflops", true, NULL},
                         {"peak-gbs", true, NULL}};
    const size_t n = sizeof opts / sizeof opts[0];
    if (cli_parse("kernels", argc, argv, opts, n))
        return EXIT_USAGE;
    long batch = 256, seq = 128, seed = 1;
    if ((cli_get(opts, n, "batch") && cli_int("kernels", "batch", cli_get(opts, n, "batch"), 1, 65536, &batch)) ||
        (cli_get(opts, n, "seq") && cli_int("kernels", "seq", cli_get(opts, n, "seq"), 1, 65536, &seq)) ||
        (cli_get(opts, n, "seed") && cli_int("kernels", "seed", cli_get(opts, n, "seed"), 0, 1L << 30, &seed)))
        return EXIT_USAGE;
    sqz_precision precision;
    if (sqz_precision_from_name(cli_get(opts, n, "precision"), &precision) != SQZ_OK) {
        fprintf(stderr, "sqz kernels: %s\n", sqz_last_error());
        return EXIT_USAGE;
    }
    double peak_tflops = 0, peak_gbs = 0;
    for (int k = 0; k < 2; k++) {
        const char *text = cli_get(opts, n, k ? "peak-gbs" : "peak-tflops");
        char *end = NULL;
        double *into = k ? &peak_gbs : &peak_tflops;
        if (text && (*into = strtod(text, &end), !end || *end || !(*into > 0))) {
            fprintf(stderr, "sqz kernels: --%s must be a positive number\n", k ? "peak-gbs" : "peak-tflops");
            return EXIT_USAGE;
        }
    }
    const char *model_dir = cli_get(opts, n, "model"), *preset = cli_get(opts, n, "random");
    const char *backend = cli_get(opts, n, "backend");
    if (!backend || (!model_dir == !preset)) {
        fprintf(stderr, "sqz kernels: --backend and one of --model or --random are required\n\n%s", kernels_help);
        return EXIT_USAGE;
    }
    sqz_status probe = sqz_backend_probe(backend);
    if (probe != SQZ_OK) {
        fail("kernels", probe);
        return probe == SQZ_ERR_NO_DEVICE ? EXIT_NO_DEVICE : 1;
    }
    char tmp_dir[] = "/tmp/sqz-kernels-XXXXXX";
    if (preset) {
        if (!mkdtemp(tmp_dir)) {
            fprintf(stderr, "sqz kernels: cannot create a temporary directory: %s\n", strerror(errno));
            return 1;
        }
        sqz_status st = sqz_random_model_write(preset, (uint64_t)seed, tmp_dir);
        if (st != SQZ_OK) {
            cli_remove_checkpoint(tmp_dir);
            return fail("kernels", st);
        }
        model_dir = tmp_dir;
    }
    int rc = 1;
    sqz_model *model = NULL;
    sqz_session *session = NULL;
    sqz_result *result = NULL;
    char *report = NULL;
    int64_t *ids = NULL, *mask = NULL, *types = NULL;
    sqz_model_info info;
    sqz_input input;
    sqz_session_options so = cli_session_options(backend, cli_get(opts, n, "device"), precision);
    sqz_status st = cli_load_model(model_dir, &model);
    if (st == SQZ_OK) {
        sqz_model_get_info(model, &info);
        if (seq > info.max_position_embeddings)
            seq = info.max_position_embeddings;
        if (random_batch(&info, batch, seq, seed, &input, &ids, &mask, &types) != 0)
            goto done;
        st = sqz_session_create(model, &so, &session);
    }
    if (st == SQZ_OK && (st = sqz_session_kernel_report(session, &report)) == SQZ_OK) { /* before a long run */
        sqz_free(report);
        report = NULL;
    }
    if (st == SQZ_OK)
        st = sqz_session_run(session, &input, &result);
    if (st == SQZ_OK)
        st = sqz_session_kernel_report(session, &report);
    if (st != SQZ_OK) {
        rc = fail("kernels", st);
        goto done;
    }
    const bool peaks = (peak_tflops > 0 && peak_gbs > 0) ||
                       datasheet_peaks(sqz_session_device(session), precision, &peak_tflops, &peak_gbs);
    printf("kernels %s %s on %s: %s, %ld x %ld tokens (every other row padded)%s\n", backend,
           sqz_precision_name(precision), sqz_session_device(session), info.architecture, batch, seq,
           peaks ? "" : "; no roofline (give --peak-tflops and --peak-gbs)");
    if (peaks)
        printf("roofline from %.0f TFLOP/s and %.0f GB/s\n", peak_tflops, peak_gbs);
    printf("%-9s %-58s %-9s %10s %9s %8s %8s %8s\n", "op", "shape", "variant", "us", "diff", "TFLOP/s", "GB/s",
           "roofline");
    for (char *save = NULL, *line = strtok_r(report, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *field[8];
        int k = 0;
        for (char *f_save = NULL, *f = strtok_r(line, "\t", &f_save); f && k < 8; f = strtok_r(NULL, "\t", &f_save))
            field[k++] = f;
        if (k != 8)
            continue;
        const double seconds = atof(field[3]), flops = atof(field[5]), bytes = atof(field[6]);
        if (seconds < 0) {
            printf("%-9s %-58s %-9s %10s\n", field[0], field[1], field[2], "n/a");
            continue;
        }
        const double floor_s = peaks ? fmax(flops / (peak_tflops * 1e12), bytes / (peak_gbs * 1e9)) : 0;
        char roofline[16] = "-";
        if (peaks && seconds > 0)
            snprintf(roofline, sizeof roofline, "%.0f%%", 100 * floor_s / seconds);
        printf("%-9s %-58s %-9s %10.1f %9.1e %8.1f %8.0f %8s%s\n", field[0], field[1], field[2], seconds * 1e6,
               atof(field[4]), seconds > 0 ? flops / seconds * 1e-12 : 0, seconds > 0 ? bytes / seconds * 1e-9 : 0,
               roofline, strcmp(field[7], "1") == 0 ? "  <- chosen" : "");
    }
    rc = 0;
done:
    sqz_free(report);
    sqz_result_free(result);
    sqz_session_free(session);
    sqz_model_free(model);
    free(ids), free(mask), free(types);
    if (preset)
        cli_remove_checkpoint(tmp_dir);
    return rc;
}

/* ---- main ---------------------------------------------------------------------------------- */

static const char main_help[] =
    "usage: sqz COMMAND [OPTIONS]   (sqz COMMAND --help for each)\n"
    "\n"
    "commands:\n"
    "  infer         text in, answers out: classify, embed, tokens, qa, fill-mask (JSON Lines)\n"
    "  tokenize      JSON Lines of text in, token ids out (the checkpoint's WordPiece tokenizer)\n"
    "  similarity    embed a few texts and show which are close (cosine of the embeddings)\n"
    "  serve         HTTP server with text-embeddings-inference's API (docs/serve.md)\n"
    "  bench         throughput and latency over backends, devices, batch sizes and lengths\n"
    "  demo          the main job on an embedded default: random full-size model, timed forward\n"
    "  forward       run a checkpoint on input ids from JSON, write every output as JSON\n"
    "  graph         draw the compiled plan of a checkpoint (Graphviz DOT)\n"
    "  random-model  write a deterministic random-weight checkpoint\n"
    "  info          print a checkpoint's configuration, unused weight keys, tokenizer and\n"
    "                embedding sources\n"
    "  backends      list the backends of this build and whether they can run here\n"
    "  devices       list every CUDA and OpenCL device with its memory and capabilities\n"
    "  validate      run a backend and cpu_ref on the same input and compare every node\n"
    "  kernels       the kernel variants a backend measured for each op shape, with roofline\n";

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(main_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("sqz (squeezebert engine) API %d\n", SQZ_API_VERSION);
        return 0;
    }
    static const struct { const char *name; int (*run)(int, char **); } commands[] = {
        {"forward", cmd_forward}, {"graph", cmd_graph},   {"random-model", cmd_random_model},
        {"info", cmd_info},       {"backends", cmd_backends}, {"demo", cmd_demo},
        {"devices", cmd_devices}, {"validate", cmd_validate},
        {"infer", sqz_cli_infer}, {"tokenize", sqz_cli_tokenize}, {"bench", sqz_cli_bench},
        {"similarity", sqz_cli_similarity}, {"serve", sqz_cli_serve}, {"kernels", cmd_kernels},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "sqz: unknown command '%s'\n\n%s", argv[1], main_help);
    return EXIT_USAGE;
}
