/* cli_json_real against jansson itself (json_dumps of json_real with JSON_REAL_PRECISION(9),
 * what `sqz infer` wrote before and what the Python package mirrors): byte-identical text on
 * edge values (zeros, powers of ten and the values either side, the limits of the exact path,
 * subnormals, the float range's ends) and on random floats, both random bit patterns (every
 * exponent) and values shaped like embeddings and probabilities. */
#include "tests/test_util.h"

#include <float.h>
#include <jansson.h>
#include <math.h>

#include "cli/json_real.h"

static void expect_as_jansson(float f)
{
    if (!isfinite(f)) /* not a JSON number: sqz infer writes null, apart from this */
        return;
    char got[CLI_JSON_REAL_MAX];
    const size_t len = cli_json_real(f, got);
    json_t *r = json_real(f);
    char *want = json_dumps(r, JSON_REAL_PRECISION(9) | JSON_ENCODE_ANY);
    json_decref(r);
    if (strcmp(got, want) != 0 || len != strlen(want))
        fail_msg("%a (%.9g): got \"%s\" (length %zu), jansson \"%s\"", (double)f, (double)f, got, len, want);
    free(want);
}

static void edge_values(void **unused)
{
    const float fixed[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 2.0f, 10.0f, 100.0f, 123456789.0f, 999999999.0f,
                           1e9f, 1e10f, 0.1f, 0.01f, 1e-4f, 1e-5f, 9.99999e-5f, 1e-19f, 1e-20f, 1e-18f,
                           FLT_MAX, -FLT_MAX, FLT_MIN, FLT_MIN / 2, FLT_TRUE_MIN, 3.0e-39f, 16777216.0f,
                           0.333333343f, 2.5f, 0.125f, 1.5e-7f};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        expect_as_jansson(fixed[i]);
        expect_as_jansson(nextafterf(fixed[i], INFINITY));
        expect_as_jansson(nextafterf(fixed[i], -INFINITY));
    }
    for (int e = -45; e <= 38; e++) /* each power of ten and its float neighbours */
        for (int s = -1; s <= 1; s += 2) {
            const float p = (float)(s * pow(10.0, e));
            expect_as_jansson(p);
            expect_as_jansson(nextafterf(p, INFINITY));
            expect_as_jansson(nextafterf(p, -INFINITY));
            expect_as_jansson(p * 9.9999999f);
            expect_as_jansson(p * 5.0f);
        }
}

static void random_values(void **unused)
{
    uint64_t x = 88172645463325252ull;
    for (long i = 0; i < 1500000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        float f;
        if (i % 2 == 0) {
            const uint32_t bits = (uint32_t)x;
            memcpy(&f, &bits, 4);
            if (!isfinite(f))
                continue;
        } else {
            f = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
            if (i % 6 == 1)
                f *= 1e-3f;
        }
        expect_as_jansson(f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(edge_values),
        cmocka_unit_test(random_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
