#!/usr/bin/env bash
# Long fuzzing runs of the tests/fuzz targets (the test command runs each for seconds only).
#   tools/fuzz_long.sh [-j JOBS] [-t SECONDS] [-n RUNS] [-b BUILD_DIR] [TARGET...]
# Each target runs until RUNS executions (default 10 million) or SECONDS (default 1800),
# whichever comes first, JOBS targets at a time (default 1). The working corpus grows in
# BUILD_DIR/fuzz-corpus/<target> (seeded from tests/fuzz/corpus, which is not written);
# crashers go to BUILD_DIR/fuzz-artifacts; logs to BUILD_DIR/fuzz-logs/<target>.log, and
# a summary line per target (executions, coverage, result) is printed at the end. Copy a
# crasher into tests/fuzz/corpus/<target>/ once fixed: it is then a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=1 seconds=1800 runs=10000000 build=build-fuzz
while getopts "j:t:n:b:" o; do
  case $o in
    j) jobs=$OPTARG ;; t) seconds=$OPTARG ;; n) runs=$OPTARG ;; b) build=$OPTARG ;;
    *) echo "usage: $0 [-j JOBS] [-t SECONDS] [-n RUNS] [-b BUILD_DIR] [TARGET...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
all=(fuzz_infer_line fuzz_tokenize fuzz_forward_input fuzz_config fuzz_safetensors
     fuzz_torch_zip fuzz_pickle fuzz_tokenizer_load fuzz_modules)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

tools/install_deps.sh --fuzz
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DSQZ_FUZZ=ON -DSQZ_BUILD_TESTS=OFF \
    -DSQZ_WITH_OPENCL=OFF -DSQZ_WITH_CUDA=OFF -DSQZ_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null
build=$(cd "$build" && pwd)
mkdir -p "$build/fuzz-corpus" "$build/fuzz-artifacts" "$build/fuzz-logs"

run_one() {
  local t=$1 dict=()
  case $t in
    fuzz_torch_zip|fuzz_pickle) dict=(-dict=tests/fuzz/pickle.dict) ;;
    fuzz_tokenize) ;;
    *) dict=(-dict=tests/fuzz/json.dict) ;;
  esac
  mkdir -p "$build/fuzz-corpus/$t"
  "$build/tests/fuzz/$t" -runs="$runs" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 \
    -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t-" "${dict[@]}" \
    "$build/fuzz-corpus/$t" "tests/fuzz/corpus/$t" >"$build/fuzz-logs/$t.log" 2>&1
  local rc=$?
  local execs cov
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$build/fuzz-logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$build/fuzz-logs/$t.log" | tail -1 || true)
  echo "$t: rc $rc, ${execs:-?} executions, ${cov:-no coverage line}"
  return $rc
}
export -f run_one
export build seconds runs
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'
