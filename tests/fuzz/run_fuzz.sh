#!/bin/sh
# One short fuzz run under ctest: TARGET CORPUS SECONDS ARTIFACT_DIR [libFuzzer flags...].
# Every committed seed (crashers included) runs first, so this is also the regression test;
# new inputs go to a temporary folder, never into the source tree. A crash leaves its input
# in ARTIFACT_DIR and fails the test.
set -eu
target=$1 corpus=$2 seconds=$3 artifacts=$4
shift 4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"
exec_target() {
  "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$(basename "$target")-" "$@" "$work" "$corpus"
}
exec_target "$@"
