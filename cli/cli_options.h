/* Command-line options shared by every sqz subcommand. */
#ifndef SQZ_TOOLS_CLI_OPTIONS_H
#define SQZ_TOOLS_CLI_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include "squeezebert.h"

typedef struct cli_option {
    const char *name;  /* without the leading "--" */
    bool takes_value;
    const char *value; /* set by cli_parse; "1" for a present flag */
} cli_option;

/* Accepts --name value and --name=value; non-zero (message printed as "sqz COMMAND: ...")
 * on an unknown option, a missing value or a stray argument. */
int cli_parse(const char *command, int argc, char **argv, cli_option *opts, size_t n);
/* The value of option `name`, or NULL when it was not given. */
const char *cli_get(const cli_option *opts, size_t n, const char *name);
/* Parses an integer option in [min, max]; non-zero (message printed) when it is not one. */
int cli_int(const char *command, const char *name, const char *text, long min, long max, long *out);
/* sqz_backend_auto() for "auto"; any other name is returned as it is. */
const char *cli_pick_backend(const char *wanted);
/* Backend settings (sqz_session_options.settings) from the environment, for every session a
 * command opens: SQZ_CUDA_SYNC, _GRAPHS, _MEASURE, _REPORT and _VARIANTS as cuda.sync, ...,
 * and SQZ_CACHE_DIR as opencl.cache_dir; NULL when none is set. */
const char *cli_backend_settings(void);
/* sqz_model_load with the limits a user set in the environment: SQZ_MAX_HEADER_BYTES and
 * SQZ_MAX_PICKLE_BYTES (positive byte counts; anything else keeps the default). */
sqz_status cli_load_model(const char *dir, sqz_model **out);
/* Session options for a command: the backend, device and precision given, the settings above
 * and the checking switches from the environment (SQZ_DEBUG, SQZ_GUARD_BYTES,
 * SQZ_DISABLE_FUSION, SQZ_FAULT_LAUNCH, SQZ_FAULT_ALLOC). The strings stay valid until the
 * next call. */
sqz_session_options cli_session_options(const char *backend, const char *device, sqz_precision precision);
/* The device string for --threads N (the cpu backend's "threads=N", written into buf) or
 * `device` as given when threads is NULL; non-zero (message printed) on misuse. */
int cli_device_for(const char *command, const char *backend, const char *device, const char *threads,
                   char *buf, size_t size, const char **out);
/* One device of a backend, as `sqz devices` names it ("" device: the backend's default). */
typedef struct cli_device {
    char backend[32];
    char device[128];
} cli_device;
/* Every device `sqz devices` lists for `backend` (its lines "BACKEND INDEX ..."), at most
 * `max`; the count. */
int cli_devices_of(const char *backend, cli_device *out, int max);
/* "BACKEND[:DEVICE],..." into at most `max` entries; -1 (message printed as "sqz COMMAND:
 * ...") when an entry is empty, has an empty backend, or there are too many. */
int cli_parse_devices(const char *command, const char *spec, cli_device *out, int max);
/* The devices a command runs on, one session each: `devices` ("all": every device of `backend`
 * that `sqz devices` lists; else "BACKEND[:DEVICE],...") or, when it is NULL, `backend` with
 * `device` (NULL: the backend's default). The count, or 0 (message printed as "sqz COMMAND:
 * ...") when the list is malformed or names no device. */
int cli_resolve_devices(const char *command, const char *backend, const char *device, const char *devices,
                        cli_device *out, int max);

/* Monotonic seconds, for the commands' timings. */
double cli_now_seconds(void);
/* Removes a checkpoint written by sqz_random_model_write (config.json, model.safetensors, the folder). */
void cli_remove_checkpoint(const char *dir);

/* True when --help or -h is among the arguments. */
bool cli_wants_help(int argc, char **argv);

#endif
