#!/usr/bin/env bash
# README command 2 (and CI): install what is missing, build with warnings as errors and run
# every test; then the same suite again in an AddressSanitizer + UndefinedBehaviorSanitizer
# build. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh
jobs=$(nproc)

run_suite() {
  local dir=$1; shift
  echo "== build $dir ($*)"
  cmake -S . -B "$dir" -DSQZ_WERROR=ON "$@" > "$dir.log" 2>&1 || { cat "$dir.log"; return 1; }
  cmake --build "$dir" -j"$jobs" >> "$dir.log" 2>&1 || { tail -50 "$dir.log"; return 1; }
  echo "== test $dir"
  ctest --test-dir "$dir" --output-on-failure -j"$jobs"
}

mkdir -p build-tests
run_suite build-tests/release -DCMAKE_BUILD_TYPE=RelWithDebInfo
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite build-tests/sanitize -DCMAKE_BUILD_TYPE=Debug -DSQZ_SANITIZE=ON
