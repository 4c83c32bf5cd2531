/* A program from outside the project, built against an installed squeezebert (by pkg-config
 * and by find_package; tests/install/check_install.sh): writes the tiny random model into
 * the folder it is given, loads it, runs a padded batch on cpu_ref and prints the logits, one
 * per line. Exit 1, with the library's message, on any failure or implausible output. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <squeezebert.h>

#if SQZ_API_VERSION != 3
#error "built against another version of squeezebert.h"
#endif

#define SEQ 8

static int failed(const char *what, sqz_status status)
{
    fprintf(stderr, "consumer: %s: %s: %s\n", what, sqz_status_str(status), sqz_last_error());
    return 1;
}

/* Runs `rows` rows of SEQ ids (0 = padding) and copies the logits out. */
static sqz_status run_rows(sqz_session *session, const int64_t *ids, int rows, float *logits, size_t capacity)
{
    int64_t mask[2 * SEQ];
    for (int i = 0; i < rows * SEQ; i++)
        mask[i] = ids[i] != 0;
    const sqz_input input = {.batch = rows, .seq_len = SEQ, .input_ids = ids, .attention_mask = mask};
    sqz_result *result = NULL;
    sqz_status status = sqz_session_run(session, &input, &result);
    if (status != SQZ_OK)
        return status;
    const sqz_output *out = sqz_result_find(result, "logits");
    if (!out || out->ndim != 2 || out->shape[0] != rows || (size_t)(out->shape[0] * out->shape[1]) > capacity)
        status = SQZ_ERR_INTERNAL;
    else
        memcpy(logits, out->data, out->bytes);
    sqz_result_free(result);
    return status;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: consumer EMPTY_OR_NEW_FOLDER\n");
        return 2;
    }
    sqz_status status = sqz_random_model_write("tiny", 7, argv[1]);
    if (status != SQZ_OK)
        return failed("sqz_random_model_write", status);
    sqz_model *model = NULL;
    if ((status = sqz_model_load(argv[1], NULL, &model)) != SQZ_OK)
        return failed("sqz_model_load", status);
    sqz_model_info info;
    sqz_model_get_info(model, &info);
    sqz_session *session = NULL;
    if ((status = sqz_session_create(model, NULL, &session)) != SQZ_OK)
        return failed("sqz_session_create", status);
    /* the second row is the first one's prefix, padded: alone and unpadded it must agree */
    const int64_t batch[2 * SEQ] = {101, 7, 19, 42, 5, 77, 13, 102, 101, 7, 19, 42, 102, 0, 0, 0};
    const int64_t alone[SEQ] = {101, 7, 19, 42, 102, 0, 0, 0};
    float both[64], single[32];
    const int labels = info.num_labels;
    if (labels < 1 || labels > 32)
        return failed("the tiny model's labels", SQZ_ERR_INTERNAL);
    if ((status = run_rows(session, batch, 2, both, 64)) != SQZ_OK ||
        (status = run_rows(session, alone, 1, single, 32)) != SQZ_OK)
        return failed("sqz_session_run", status);
    for (int j = 0; j < labels; j++) {
        if (!isfinite(both[j]) || !isfinite(both[labels + j]) ||
            fabsf(both[labels + j] - single[j]) > 1e-5f * (1.0f + fabsf(single[j]))) {
            fprintf(stderr, "consumer: logit %d: %g in the batch, %g alone\n", j, both[labels + j], single[j]);
            return 1;
        }
    }
    for (int i = 0; i < 2 * labels; i++)
        printf("%.9g\n", both[i]);
    sqz_session_free(session);
    sqz_model_free(model);
    return 0;
}
