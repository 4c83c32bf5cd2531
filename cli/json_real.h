/* JSON reals as jansson's json_dumps writes them with JSON_REAL_PRECISION(9) ("%.9g", ".0"
 * added to an integral value, exponents without "+" or leading zeros), byte for byte, without
 * a json_t per value or a printf per value: `sqz infer` writes 384 to 1024 of them per line,
 * and that was 10-20 % of an embedding job's CPU time on the cpu backend. */
#ifndef SQZ_CLI_JSON_REAL_H
#define SQZ_CLI_JSON_REAL_H

#include <stddef.h>

#define CLI_JSON_REAL_MAX 32 /* bytes a real takes, with its terminating NUL */

/* Writes a finite float's text into out (CLI_JSON_REAL_MAX bytes); returns its length. */
size_t cli_json_real(float value, char *out);

#endif
