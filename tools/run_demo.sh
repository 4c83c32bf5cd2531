#!/usr/bin/env bash
# README command 1: install what is missing, build, and run the main job on its embedded
# default: a deterministic random-weight model of the full squeezebert-uncased shape,
# two sequences of 32 tokens on the scalar reference, with what it computed and how long.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSQZ_BUILD_TESTS=OFF > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j"$(nproc)" --target sqz >> build.log 2>&1 || { cat build.log; exit 1; }
build/sqz demo "$@"
