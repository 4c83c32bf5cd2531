/* sqz infer under failure (issues 7 and 12): batches failing at random points through the
 * fault-injection hook (SQZ_FAULT_LAUNCH / SQZ_FAULT_ALLOC) lose and duplicate no line over
 * 10,000-line runs, on one device or several (--devices, two sessions on the host: a device
 * that is lost has its batches retried on the other); an interrupted run (SIGINT) resumed
 * with --resume gives exactly the output of an uninterrupted one. cpu_ref results do not
 * depend on batching, so every line that is not an error record must be byte-identical to
 * the fault-free run. */
#include "tests/test_util.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

#define MODEL SQZ_FIXTURES_DIR "/infer/classify"
#define LINES 10000

static char *tmp, *input, *reference;

/* A number in [0, n) from a 64-bit LCG (the seed is printed, so a failure can be rerun). */
static unsigned pick(uint64_t *state, unsigned n)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((*state >> 33) % n);
}

/* Runs sqz infer with `env` (NAME=VALUE, or NULL) prepended; returns the exit status. extra
 * may name --devices instead of the default --backend cpu_ref. */
static int run_infer(const char *env, const char *in, const char *out, const char *extra)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s infer --model %s %s --input '%s' --output '%s' %s "
             "2> '%s/stderr.log'", env ? env : "", SQZ_SQZ_BINARY, MODEL,
             extra && strstr(extra, "--devices") ? "" : "--backend cpu_ref", in, out, extra ? extra : "", tmp);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The 10,000-line input: the fixture's lines (good and bad ones) in random order, each with
 * its own number "n" so a lost, duplicated or misplaced line shows. */
static void make_input(void)
{
    size_t size;
    char *text = (char *)read_whole(MODEL "/input.jsonl", &size);
    char *lines[256];
    size_t n = 0;
    for (char *p = text; p < text + size && n < 256;) {
        char *end = memchr(p, '\n', (size_t)(text + size - p));
        if (!end)
            end = text + size;
        *end = '\0';
        if (p[0] == '{' && strstr(p, "\"text\""))
            lines[n++] = p;
        p = end + 1;
    }
    assert_true(n > 10);
    FILE *f = fopen(input, "wb");
    assert_non_null(f);
    uint64_t state = 12345;
    for (size_t i = 0; i < LINES; i++) {
        size_t k = pick(&state, (unsigned)n);
        if (i % 997 == 5)
            fprintf(f, "{\"n\": %zu, not json\n", i); /* an error record in the middle */
        else
            fprintf(f, "{\"n\": %zu, %s\n", i, lines[k] + 1);
    }
    fclose(f);
    free(text);
}

static int setup(void **unused)
{
    tmp = make_temp_dir();
    input = test_path(tmp, "input.jsonl");
    reference = test_path(tmp, "reference.jsonl");
    make_input();
    int rc = run_infer(NULL, input, reference, NULL);
    assert_true(rc == 0 || rc == 1); /* 1: the fixture has lines that are errors on purpose */
    return 0;
}

static int teardown(void **unused)
{
    free(input);
    free(reference);
    remove_temp_dir(tmp);
    return 0;
}

/* Line i of `got` must be line i of the reference, or an error record for line i+1 when
 * `allow_errors` (a line that failed alone); returns how many were such errors. */
static size_t compare_outputs(const char *got_path, bool allow_errors)
{
    size_t gn, rn;
    char *got = (char *)read_whole(got_path, &gn), *ref = (char *)read_whole(reference, &rn);
    size_t errors = 0, line = 0;
    char *g = got, *r = ref;
    while (r < ref + rn) {
        char *re = memchr(r, '\n', (size_t)(ref + rn - r));
        assert_non_null(re);
        char *ge = g < got + gn ? memchr(g, '\n', (size_t)(got + gn - g)) : NULL;
        if (!ge)
            fail_msg("output has %zu lines, expected %d", line, LINES);
        line++;
        if ((size_t)(ge - g) != (size_t)(re - r) || memcmp(g, r, (size_t)(re - r)) != 0) {
            char want[64];
            snprintf(want, sizeof want, "\"line\":%zu,\"error\":\"injected fault", line);
            if (!allow_errors || !strstr(g, want) || strstr(g, want) > ge)
                fail_msg("line %zu differs: %.*s", line, (int)(ge - g < 300 ? ge - g : 300), g);
            errors++;
        }
        g = ge + 1;
        r = re + 1;
    }
    if (g != got + gn)
        fail_msg("output has more than %d lines", LINES);
    assert_int_equal(line, LINES);
    free(got);
    free(ref);
    return errors;
}

static void test_random_launch_faults(void **unused)
{
    char *out = test_path(tmp, "faults.jsonl");
    uint64_t state = (uint64_t)time(NULL);
    print_message("fault seed %llu\n", (unsigned long long)state);
    for (int round = 0; round < 3; round++) {
        /* the first fault somewhere in the run, then one every 150..1150 launches */
        unsigned first = 1 + pick(&state, 600); /* a run has about 1,300 launches */
        unsigned every = 150 + pick(&state, 1000);
        char env[64];
        snprintf(env, sizeof env, "SQZ_FAULT_LAUNCH=%u:%u", first, every);
        print_message("%s\n", env);
        int rc = run_infer(env, input, out, NULL);
        assert_true(rc == 0 || rc == 1);
        size_t errors = compare_outputs(out, true);
        print_message("  %zu lines failed alone\n", errors);
        char *log = test_path(tmp, "stderr.log");
        size_t n;
        char *text = (char *)read_whole(log, &n);
        assert_non_null(strstr(text, "retried in smaller parts")); /* a fault did hit */
        free(text);
        free(log);
    }
    /* one failure only: every line must come out exactly as without faults */
    assert_true(run_infer("SQZ_FAULT_LAUNCH=777", input, out, NULL) <= 1);
    assert_int_equal(compare_outputs(out, false), 0);
    free(out);
}

static bool log_mentions(const char *what)
{
    char *log = test_path(tmp, "stderr.log");
    size_t n;
    char *text = (char *)read_whole(log, &n);
    const bool found = strstr(text, what) != NULL;
    free(text);
    free(log);
    return found;
}

/* Two devices (two sessions on the host); the second is lost after its 40th launch: every
 * launch from there fails. Its batches go to the first, the second is retired, and the
 * output is exactly the fault-free one. */
static void test_lost_device(void **unused)
{
    char *out = test_path(tmp, "lost.jsonl");
    assert_true(run_infer("SQZ_FAULT_LAUNCH=40:1@2", input, out, "--devices cpu_ref,cpu_ref:0") <= 1);
    assert_int_equal(compare_outputs(out, false), 0);
    assert_true(log_mentions("retrying it on another device"));
    assert_true(log_mentions("cpu_ref:0 failed 3 batches in a row; the other devices take its work"));
    assert_true(log_mentions("on 2 devices"));
    /* faults at random points on both: a line may fail alone everywhere (an error record),
     * none is lost or written twice */
    uint64_t state = (uint64_t)time(NULL) ^ 0x5eed;
    char env[64];
    snprintf(env, sizeof env, "SQZ_FAULT_LAUNCH=%u:%u", 1 + pick(&state, 300), 100 + pick(&state, 500));
    print_message("%s on two devices\n", env);
    const int rc = run_infer(env, input, out, "--devices cpu_ref,cpu_ref");
    assert_true(rc == 0 || rc == 1);
    print_message("  %zu lines failed alone\n", compare_outputs(out, true));
    /* every device fails everything: every line gets its error record, in order */
    assert_int_equal(run_infer("SQZ_FAULT_LAUNCH=1:1", input, out, "--devices cpu_ref,cpu_ref"), 1);
    assert_true(compare_outputs(out, true) > LINES / 2);
    size_t n;
    char *text = (char *)read_whole(out, &n);
    assert_null(strstr(text, "\"label\"")); /* no answer: nothing ran */
    free(text);
    free(out);
}

static void test_allocation_fault(void **unused)
{
    char *out = test_path(tmp, "alloc.jsonl");
    /* allocation 1 holds the weights; 2 is the first arena, 4 a later (larger) one */
    assert_true(run_infer("SQZ_FAULT_ALLOC=2:2", input, out, NULL) <= 1);
    assert_int_equal(compare_outputs(out, false), 0);
    free(out);
}

static void test_interrupt_and_resume(void **unused)
{
    char *out = test_path(tmp, "resumed.jsonl");
    unlink(out);
    /* the input comes through a pipe that stays open, so the run is interrupted with lines
     * in flight and the reader blocked in read() */
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pipefd[1]);
        dup2(pipefd[0], 0);
        char log[1024];
        snprintf(log, sizeof log, "%s/stderr.log", tmp);
        if (!freopen(log, "w", stderr))
            _exit(126);
        execl(SQZ_SQZ_BINARY, SQZ_SQZ_BINARY, "infer", "--model", MODEL, "--backend", "cpu_ref",
              "--output", out, (char *)NULL);
        _exit(127);
    }
    close(pipefd[0]);
    size_t n;
    char *text = (char *)read_whole(input, &n);
    /* 6,000 lines: more than one window of 4096 lines, fewer than all */
    size_t cut = 0;
    for (size_t lines = 0; cut < n && lines < 6000; cut++)
        lines += text[cut] == '\n';
    assert_int_equal(write(pipefd[1], text, cut), (ssize_t)cut);
    struct stat st;
    const struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 6000 && (stat(out, &st) != 0 || st.st_size == 0); i++)
        nanosleep(&tick, NULL);
    assert_true(stat(out, &st) == 0 && st.st_size > 0);
    kill(pid, SIGINT);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    close(pipefd[1]);
    free(text);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 128 + SIGINT);
    char *log = test_path(tmp, "stderr.log");
    text = (char *)read_whole(log, &n);
    assert_non_null(strstr(text, "interrupted by SIGINT"));
    assert_non_null(strstr(text, "records written"));
    free(text);
    size_t written;
    char *partial = (char *)read_whole(out, &written);
    size_t partial_lines = 0;
    for (size_t i = 0; i < written; i++)
        partial_lines += partial[i] == '\n';
    free(partial);
    print_message("interrupted after %zu lines\n", partial_lines);
    assert_true(partial_lines > 0 && partial_lines < LINES);
    /* the rerun appends the rest: exactly the uninterrupted output */
    int rc = run_infer(NULL, input, out, "--resume");
    assert_true(rc == 0 || rc == 1);
    assert_int_equal(compare_outputs(out, false), 0);
    /* resuming a finished run does nothing */
    rc = run_infer(NULL, input, out, "--resume");
    assert_true(rc == 0);
    assert_int_equal(compare_outputs(out, false), 0);
    /* a partial last record (a killed run) is cut and redone */
    FILE *f = fopen(out, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    assert_int_equal(truncate(out, size - 7), 0);
    rc = run_infer(NULL, input, out, "--resume");
    assert_true(rc == 0 || rc == 1);
    assert_int_equal(compare_outputs(out, false), 0);
    free(log);
    free(out);
}

static void test_long_line_limit(void **unused)
{
    char *in = test_path(tmp, "long.jsonl"), *out = test_path(tmp, "long-out.jsonl");
    FILE *f = fopen(in, "wb");
    fputs("{\"text\": \"short\"}\n{\"text\": \"", f);
    for (int i = 0; i < 200000; i++)
        fputs("word ", f);
    fputs("\"}\n{\"text\": \"after\"}\n", f);
    fclose(f);
    assert_int_equal(run_infer("SQZ_MAX_LINE_BYTES=100000", in, out, NULL), 1);
    size_t n;
    char *text = (char *)read_whole(out, &n);
    assert_non_null(strstr(text, "{\"line\":2,\"error\":\"line too long: more than 100000 bytes"));
    char *third = strchr(strchr(text, '\n') + 1, '\n') + 1;
    assert_non_null(strstr(third, "\"label\""));
    free(text);
    free(in);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_launch_faults),
        cmocka_unit_test(test_allocation_fault),
        cmocka_unit_test(test_lost_device),
        cmocka_unit_test(test_interrupt_and_resume),
        cmocka_unit_test(test_long_line_limit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
