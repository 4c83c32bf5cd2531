#!/usr/bin/env bash
# README command 1: install what is missing, build, and run the main job on its embedded
# defaults: `sqz infer` (text in, answers out) on the small classification checkpoint that
# ships in tests/fixtures/infer/classify, then a timed forward of a deterministic random
# model of the full squeezebert-uncased shape (arguments go to `sqz demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSQZ_BUILD_TESTS=OFF > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j"$(nproc)" --target sqz >> build.log 2>&1 || { cat build.log; exit 1; }
echo "== sqz infer: JSON Lines of text in, one answer per line out (random-weight fixture model)"
printf '%s\n' '{"id": 1, "text": "a wonderful, moving film"}' \
              '{"id": 2, "text": "not good at all", "text_pair": "the plot was thin"}' \
              '{"id": 3, "text": ""}' |
  build/sqz infer --model tests/fixtures/infer/classify || true  # line 3 shows an error record
echo "== sqz demo: full-size squeezebert-uncased shape, random weights"
build/sqz demo "$@"
