#!/usr/bin/env bash
# Issue-4 throughput check: the full-size squeezebert-uncased shape (random weights) on the
# OpenCL backend and on the scalar reference, in one run on one machine, at sequence
# lengths 128 and 32 (no padding). Prints sequences/s and the ratio. Usage:
#   bench/opencl_vs_cpu_ref.sh [BUILD_DIR] [OPENCL_DEVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
device=${2:-}
sqz=$build/sqz
model=$(mktemp -d /tmp/sqz-bench-XXXXXX)
trap 'rm -rf "$model"' EXIT
"$sqz" random-model --config squeezebert-uncased --seed 1 --out "$model" 2>/dev/null
seq_per_s() { grep -o '[0-9.]* sequences/s' | cut -d' ' -f1; }
printf '%-8s %-6s %-22s %-22s %s\n' length batch "cpu_ref seq/s (s/seq)" "opencl seq/s (s/seq)" "opencl / cpu_ref"
for length in 128 32; do
  ref_batch=$((length == 128 ? 1 : 4))
  ref=$("$sqz" demo --model "$model" --backend cpu_ref --batch $ref_batch --length $length --no-padding | seq_per_s)
  ocl=$("$sqz" demo --model "$model" --backend opencl ${device:+--device "$device"} --batch 16 --length $length \
        --no-padding --repeat 5 | seq_per_s)
  awk -v l=$length -v r="$ref" -v o="$ocl" 'BEGIN { printf "%-8d %-6s %-22s %-22s %.1fx\n", l, "16", sprintf("%.2f (%.3f)", r, 1/r), sprintf("%.2f (%.3f)", o, 1/o), o / r }'
done
echo "(cpu_ref: batch 1 at length 128, 4 at 32, one run each; opencl: median of 5 runs after a warm-up)"
