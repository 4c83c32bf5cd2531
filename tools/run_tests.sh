#!/usr/bin/env bash
# README command 2 (and CI): install what is missing, build with warnings as errors and run
# every test; then the same suite again in an AddressSanitizer + UndefinedBehaviorSanitizer
# build; a short run of every fuzz target (tests/fuzz, clang + libFuzzer); and the CPU tests
# under valgrind. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh --fuzz # clang (libFuzzer) and valgrind too: this script runs both
jobs=$(nproc)
total_passed=0 total_failed=0 total_skipped=0

# adds a ctest log's counts to the totals printed at the end
count() {
  local line failed total skipped
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$1" | tail -1)
  failed=$(sed -E 's/.*, ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<< "$line")
  total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<< "$line")
  skipped=$(grep -c "(Skipped)" "$1" || true)
  total_failed=$((total_failed + failed))
  total_skipped=$((total_skipped + skipped))
  total_passed=$((total_passed + total - failed - skipped))
}

run_suite() {
  local dir=$1; shift
  echo "== build $dir ($*)"
  cmake -S . -B "$dir" -DSQZ_WERROR=ON "$@" > "$dir.log" 2>&1 || { cat "$dir.log"; return 1; }
  cmake --build "$dir" -j"$jobs" >> "$dir.log" 2>&1 || { tail -50 "$dir.log"; return 1; }
  echo "== test $dir"
  ctest --test-dir "$dir" --output-on-failure -j"$jobs" 2>&1 | tee "$dir.ctest.log"
  count "$dir.ctest.log"
}

mkdir -p build-tests
run_suite build-tests/release -DCMAKE_BUILD_TYPE=RelWithDebInfo
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite build-tests/sanitize -DCMAKE_BUILD_TYPE=Debug -DSQZ_SANITIZE=ON

# every fuzz target for a few seconds from its committed corpus (crashers included)
fuzz_dir=build-tests/fuzz
echo "== build $fuzz_dir (clang, libFuzzer, ASan + UBSan)"
cmake -S . -B "$fuzz_dir" -DCMAKE_C_COMPILER=clang -DSQZ_FUZZ=ON -DSQZ_BUILD_TESTS=OFF \
  -DSQZ_WITH_OPENCL=OFF -DSQZ_WITH_CUDA=OFF -DSQZ_WITH_CUDA_SIM=OFF -DSQZ_WITH_CPU=OFF -DSQZ_WERROR=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  > "$fuzz_dir.log" 2>&1 || { cat "$fuzz_dir.log"; exit 1; }
cmake --build "$fuzz_dir" -j"$jobs" >> "$fuzz_dir.log" 2>&1 || { tail -50 "$fuzz_dir.log"; exit 1; }
echo "== fuzz $fuzz_dir"
ctest --test-dir "$fuzz_dir" --output-on-failure -j"$jobs" -L fuzz 2>&1 | tee "$fuzz_dir.ctest.log"
count "$fuzz_dir.ctest.log"

# valgrind on the CPU tests of the release build (the slow model and fixture tests, and
# those that run sqz as a child, are left to ASan); no OpenCL vendor is loaded
echo "== valgrind"
mkdir -p build-tests/no-icd
for t in test_tensor_file test_cpu_ref_ops test_graph test_bad_input; do
  OCL_ICD_VENDORS="$PWD/build-tests/no-icd" valgrind --quiet --error-exitcode=99 \
    --leak-check=full --errors-for-leak-kinds=definite \
    --suppressions=tests/fuzz/valgrind.supp build-tests/release/tests/$t > "build-tests/valgrind-$t.log" 2>&1 \
    || { echo "valgrind: $t failed"; cat "build-tests/valgrind-$t.log"; exit 1; }
  echo "valgrind: $t clean"
  total_passed=$((total_passed + 1))
done
echo "total: $total_passed passed, $total_failed failed, $total_skipped skipped"
