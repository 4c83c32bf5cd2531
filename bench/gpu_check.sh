#!/usr/bin/env bash
# The one-call GPU check: run it first whenever a GPU machine is lent (see tools/
# prepare_gpu_deps.sh for what must travel with it). Sized to finish in under 8 minutes on
# an H100 or H200. Every step runs even if an earlier one failed; each step's log and a
# JSON summary go to $OUT (default ./gpu-check-out), and the summary table prints last.
# GPU_CHECK_STEPS=gpu-info,build,... runs only the steps named (build is needed by most; the
# issue-12 steps are outputs-tests, bench-outputs, bench-devices, infer-embed, infer-replay, pdl,
# torch-peer-compile).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
# The device tool returns at most 8 files, so step logs live in one folder that is packed into
# $OUT/logs.tgz after every step (a run cut off by its time limit still returns what it had).
LOGS=$(mktemp -d)
# Whole-run budget: a step gets min(its own limit, what is left); steps past it are recorded
# as not run, so the summary always prints inside the device call's limit.
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-480}))
root=$PWD/.gpu-deps/root
lib=$root/usr/lib/x86_64-linux-gnu
declare -a names=() results=() notes=()

step() { # step NAME TIMEOUT_S COMMAND...: runs, logs to $LOGS/NAME.log, records the result
  local name=$1 limit=$2; shift 2
  [ -n "${GPU_CHECK_STEPS:-}" ] && [[ ",$GPU_CHECK_STEPS," != *",$name,"* ]] && return
  local start=$SECONDS rc left=$((deadline - SECONDS - 15))
  names+=("$name")
  if [ "$left" -lt 10 ]; then results+=("not-run"); notes+=("budget spent"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name"
  timeout -k 5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 25 "$LOGS/$name.log"
  tar -czf "$OUT/logs.tgz" -C "$LOGS" .
  case $rc in
    0) results+=("pass") ;;
    77) results+=("skip") ;;
    124) results+=("TIMEOUT") ;;
    *) results+=("FAIL($rc)") ;;
  esac
  notes+=("$((SECONDS - start)) s")
}

# Carried Debian libraries (build and run); harmless where they are installed already.
if [ -d "$root" ]; then
  export PKG_CONFIG_SYSROOT_DIR=$root
  export PKG_CONFIG_PATH=$lib/pkgconfig:$root/usr/share/pkgconfig
  export PKG_CONFIG_EXECUTABLE=$root/usr/bin/pkgconf
  export PATH=$root/usr/bin:$PATH
  export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  cmake_deps=(-DPKG_CONFIG_EXECUTABLE="$root/usr/bin/pkgconf" -DOpenCL_INCLUDE_DIR="$root/usr/include"
              -DOpenCL_LIBRARY="$lib/libOpenCL.so")
else
  cmake_deps=()
fi

# NVIDIA's OpenCL driver is mounted into GPU containers without its ICD file, so the
# loader finds no platform; OCL_ICD_VENDORS can name the library directly (docs/opencl.md).
if [ -z "${OCL_ICD_VENDORS:-}" ] && [ ! -e /etc/OpenCL/vendors/nvidia.icd ]; then
  for candidate in libnvidia-opencl.so.1 /usr/local/nvidia/lib64/libnvidia-opencl.so.1 \
                   /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1; do
    if [ -e "$candidate" ] || ldconfig -p 2>/dev/null | grep -q "$candidate"; then
      export OCL_ICD_VENDORS=$candidate
      break
    fi
  done
fi

step gpu-info 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -n 2; echo "OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-unset}"'
# Binaries built on the CPU machine for sm_90a (tools/prepare_gpu_deps.sh --build) travel in
# build-gpu with a hash of the sources they were built from; when the hash still matches, the
# GPU minutes go to checking, not compiling. CMake and CTest files name the folder they were
# made in, so that path is made to lead here.
source bench/source_hash.sh
if [ -f build-gpu/source-hash ] && [ "$(cat build-gpu/source-hash)" = "$(source_hash)" ]; then
  built_in=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' build-gpu/CMakeCache.txt)
  if [ -n "$built_in" ] && [ "$built_in" != "$PWD" ] && [ ! -e "$built_in" ]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in"
  fi
  step build 30 bash -c 'echo "prebuilt for sm_90a from these sources (build-gpu/source-hash)"; ls -la build-gpu/sqz'
else
  step build 240 bash -c "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR=ON -DSQZ_WITH_CUDA=ON -DSQZ_WITH_OPENCL=ON -DSQZ_WITH_CUDA_SIM=OFF -DCMAKE_CUDA_ARCHITECTURES=90a ${cmake_deps[*]} && cmake --build build-gpu -j16"
fi
step devices 30 build-gpu/sqz devices
# every precision against cpu_ref on the full-size random model (fused; fp32 also unfused),
# in parallel: each is one CPU thread of cpu_ref plus a moment of GPU
step validate-cuda 120 bash -c 'v() { build-gpu/sqz validate --random squeezebert-uncased --backend cuda --batch 4 --seq 64 --seed 5 "$@"; }
  v --precision fp32 > /tmp/v-fp32.log 2>&1 & SQZ_DISABLE_FUSION=1 v --precision fp32 > /tmp/v-fp32-unfused.log 2>&1 &
  v --precision tf32 > /tmp/v-tf32.log 2>&1 & v --precision fp16 > /tmp/v-fp16.log 2>&1 & v --precision bf16 > /tmp/v-bf16.log 2>&1 &
  rc=0; for j in $(jobs -p); do wait $j || rc=1; done
  for f in fp32 fp32-unfused tf32 fp16 bf16; do echo "-- $f"; head -n 1 /tmp/v-$f.log; sort -g -k4 /tmp/v-$f.log | grep -E "pass|FAIL" | tail -n 2; tail -n 2 /tmp/v-$f.log; done; exit $rc'
# every kernel variant on its own (SQZ_CUDA_VARIANTS fixes it; docs/engineering.md "Kernel
# variants") against cpu_ref on the full-size model, at the precisions it runs: 70 and 200
# tokens give the flash attention 1 to 4 key chunks, both warp counts and padded rows; the
# FFN and GEMM variants see partial tiles. In parallel (cpu_ref is one core each). Then
# racecheck and memcheck on the tensor-core kernels.
step variants 150 bash -c 'set -o pipefail
  { for p in fp32 tf32 fp16 bf16; do for v in linear=simt,attention=simt,ffn=simt,ffn_ln=simt linear=cublas,ffn=split,ffn_ln=split linear=cublaslt,ffn=split,ffn_ln=split; do echo "$v $p"; done; done
    for p in fp16 bf16; do for v in linear=mma128,attention=flash,ffn=fused,ffn_ln=split linear=mma64,attention=flash,ffn=split,ffn_ln=split linear=mma128,attention=flash,ffn_ln=fused; do echo "$v $p"; done; done; } |
  while read v p; do echo "$v $p 3 70"; echo "$v $p 2 200"; done |
  xargs -P 16 -n 4 sh -c '"'"'out=$(SQZ_CUDA_VARIANTS=$0 build-gpu/sqz validate --random squeezebert-uncased --backend cuda --precision $1 --batch $2 --seq $3 --seed 3 2>&1); rc=$?; echo "$rc $0 $1 $2x$3: $(echo "$out" | tail -n 1) | worst: $(echo "$out" | grep -E " (pass|FAIL)$" | sort -g -k4 | tail -n 1 | tr -s " ")"'"'"' | sort | tee /tmp/variants-summary
  rc=0; grep -qv "^0 " /tmp/variants-summary && rc=1
  for v in linear=mma128,attention=flash,ffn=fused,ffn_ln=split linear=mma64,ffn_ln=fused; do
    SQZ_CUDA_VARIANTS=$v compute-sanitizer --tool racecheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --precision fp16 --batch 2 --seq 150 --seed 4 | tail -n 1 || rc=3
    SQZ_CUDA_VARIANTS=$v compute-sanitizer --tool memcheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --precision bf16 --batch 3 --seq 70 --seed 4 | tail -n 1 || rc=3
  done
  exit $rc'
# the kernel lab's table at full size, 256 x 128 tokens per precision and 1 x 128 at fp16: time,
# TFLOP/s, GB/s and roofline fraction of every variant of every op shape (sqz kernels)
step kernels 150 bash -c 'rc=0; for p in fp16 bf16 tf32 fp32; do echo "-- $p 256 x 128"; build-gpu/sqz kernels --random squeezebert-uncased --backend cuda --precision $p --batch 256 --seq 128 || rc=1; done
  echo "-- fp16 1 x 128"; build-gpu/sqz kernels --random squeezebert-uncased --backend cuda --precision fp16 --batch 1 --seq 128 || rc=1; exit $rc'
# the transformers fixtures (every head, 3 configs) at every precision
step validate-fixtures 120 bash -c 'ls -d tests/fixtures/models/*/*-safetensors | while read m; do for p in fp32 tf32 fp16 bf16; do echo "$m $p"; done; done |
  xargs -P 16 -n 2 sh -c '"'"'build-gpu/sqz validate --model $0 --backend cuda --precision $1 --batch 3 --seq 24 --seed 9 > /tmp/fx-$(basename $(dirname $0))-$(basename $0)-$1.log 2>&1; echo "$? $0 $1 $(grep -oE "(all [0-9]+ nodes within tolerance|first node out of tolerance.*)" /tmp/fx-$(basename $(dirname $0))-$(basename $0)-$1.log)"'"'"' | sort | tee /tmp/fx-summary; ! grep -qv "^0 " /tmp/fx-summary'
step throughput-cuda 150 bash -c 'build-gpu/sqz random-model --config squeezebert-uncased --seed 1 --out /tmp/sqb-full > /dev/null && for p in fp32 tf32 fp16 bf16; do for cell in "1 128" "32 128" "256 128" "32 512"; do set -- $cell; echo "-- $p $1x$2"; build-gpu/sqz demo --model /tmp/sqb-full --backend cuda --precision $p --batch $1 --length $2 --no-padding --repeat 15 | grep -E "forward on|first run"; done; done'
# per-op time of a warm run (the last of 3; each launch synchronised, so no graph), and the
# measured cuBLASLt-or-cuBLAS choice per GEMM shape
step profile 60 bash -c 'for p in fp32 fp16; do for b in 1 256; do echo "-- $p batch $b x 128"; SQZ_CUDA_REPORT=1 SQZ_DEBUG=3 build-gpu/sqz demo --model /tmp/sqb-full --backend cuda --precision $p --batch $b --length 128 --no-padding --repeat 3 > /tmp/prof 2>&1; grep "sqz cuda:" /tmp/prof; grep -E "^  [a-z_]+ +[0-9]+ launches" /tmp/prof | tail -n 7; done; done'
step torch-peer 150 python3 bench/torch_gpu_peer.py /tmp/sqb-full --cells 1x128,32x128,256x128,32x512 --fp16 --json "$OUT/torch.json"
step compute-sanitizer 120 bash -c 'set -o pipefail; for p in fp32 fp16; do compute-sanitizer --tool memcheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --precision $p --batch 3 --seq 16 --seed 2 | tail -n 1 || exit 3; compute-sanitizer --tool racecheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --precision $p --batch 2 --seq 70 --seed 2 | tail -n 1 || exit 3; done; compute-sanitizer --tool memcheck --error-exitcode 3 build-gpu/sqz demo --config tiny --backend cuda --precision bf16 --batch 3 --length 40 --repeat 3 | tail -n 2'
step sqz-bench-cuda 150 build-gpu/sqz bench --model /tmp/sqb-full --backends cuda --devices cuda:0 --precisions fp32,tf32,fp16,bf16 --batch 1,32,256 --length 128 --mixed-batch 32 --budget 0.5 --json "$OUT/bench.json" --plot "$OUT/bench.svg"
# the same with only pooler_output returned: device work without the 100 MB hidden-state copy,
# which is what PyTorch's figure (outputs left on the GPU) compares with
step sqz-bench-cuda-pooled 90 build-gpu/sqz bench --model /tmp/sqb-full --backends cuda --devices cuda:0 --precisions fp32,fp16 --batch 1,32,256 --length 128 --mixed-batch none --budget 0.5 --peak-budget 0 --outputs pooler_output --json "$OUT/bench-pooled.json"

# CPU-only suites run in CI; here the ones that reach a GPU backend (CUDA, NVIDIA OpenCL).
step tests 150 ctest --test-dir build-gpu --output-on-failure -j16 -R 'backend_ops|fixtures|validate|test_infer$|test_cli'

# ---- issue 12: outputs, runs in flight, replay across lengths, several devices -----------------
# (the full-size model and the lines, when the steps that make them were not among GPU_CHECK_STEPS)
[ -x build-gpu/sqz ] && [ ! -d /tmp/sqb-full ] && build-gpu/sqz random-model --config squeezebert-uncased --seed 1 --out /tmp/sqb-full > /dev/null
# test_outputs on the GPU: layouts against cpu_ref, fp16 outputs against fp32 bit for bit, device
# outputs copied back, two runs in flight against one at a time, a graph replayed across lengths
step outputs-tests 120 ctest --test-dir build-gpu --output-on-failure -R 'test_outputs|test_bench'
# wall time of a run against its device time (dev ms: events on the compute stream from the input
# copy to the outputs written), per output choice, latency and throughput (two runs in flight);
# targets at fp16 batch 256: pooler_output wall within 15% of dev ms, fp16 last_hidden_state 1.5x
step bench-outputs 200 bash -c 'b() { build-gpu/sqz bench --model /tmp/sqb-full --backends cuda --devices cuda:0 --precisions fp16 --batch 1,32,256 --length 128 --mixed-batch none --budget 0.5 --peak-budget 0 --timing both --quiet "$@" | grep -E "^engine|sqz:cuda"; }
  for o in "--outputs pooler_output" "--outputs last_hidden_state --output-type fp16" "--output-place device" ""; do echo "-- ${o:-every output, fp32}"; b $o --json "$OUT/bench-12-$(echo ${o:-all} | tr -c "a-z0-9" _).json"; done'
# two sessions at once: on every GPU when there are several, else two on GPU 0
step bench-devices 120 bash -c 'n=$(nvidia-smi -L | wc -l); d=cuda:0,cuda:0; [ "$n" -gt 1 ] && d=all; echo "-- devices $d"
  build-gpu/sqz bench --model /tmp/sqb-full --backends cuda --devices $d --precisions fp16 --batch 32,256 --length 128 --mixed-batch none --budget 1 --peak-budget 0 --timing throughput --together --outputs pooler_output --quiet --json "$OUT/bench-devices.json" | grep -E "^engine|sqz:cuda"'
# sqz infer --task embed on 100,000 mixed-length lines, fp16, one GPU: lines/s and device busy
# (sqz_session_busy_seconds over the wall time), then on every GPU at once
step infer-embed 240 bash -c 'python3 bench/make_infer_lines.py /tmp/sqb-full --lines 100000 --out /tmp/lines.jsonl || exit 1
  for d in cuda:0 all; do [ $d = all ] && [ "$(nvidia-smi -L | wc -l)" -lt 2 ] && continue; echo "-- --devices $d"
    build-gpu/sqz infer --model /tmp/sqb-full --task embed --devices $d --precision fp16 --input /tmp/lines.jsonl --output /tmp/emb-$d.jsonl 2>&1 | tail -n 4; done
  build-gpu/sqz bench --model /tmp/sqb-full --backends cuda --devices cuda:0 --precisions fp16 --batch 128 --length 128 --mixed-batch 128 --budget 1 --peak-budget 0 --timing throughput --outputs pooler_output --quiet | grep -E "^engine|sqz:cuda"'
# batch-1 runs of mixed lengths (--batch-tokens 1: a batch per line) replay graphs across lengths:
# the embeddings must be those of runs without graphs
step infer-replay 120 bash -c '[ -f /tmp/lines.jsonl ] || python3 bench/make_infer_lines.py /tmp/sqb-full --lines 100000 --out /tmp/lines.jsonl; head -n 3000 /tmp/lines.jsonl > /tmp/l3k.jsonl; for g in 1 0; do echo "-- SQZ_CUDA_GRAPHS=$g"; SQZ_CUDA_GRAPHS=$g build-gpu/sqz infer --model /tmp/sqb-full --task embed --backend cuda --batch-tokens 1 --input /tmp/l3k.jsonl --output /tmp/replay-$g.jsonl 2>&1 | tail -n 1; done
  python3 -c "import json; a=[json.loads(l)[\"embedding\"] for l in open(\"/tmp/replay-1.jsonl\")]; b=[json.loads(l)[\"embedding\"] for l in open(\"/tmp/replay-0.jsonl\")]; d=max(abs(x-y) for u,v in zip(a,b) for x,y in zip(u,v)); print(len(a), \"lines, max |graph - no graph| =\", d); exit(0 if len(a)==len(b)==3000 and d<=1e-5 else 1)"'
# programmatic dependent launch (cuda.pdl, off by default until measured): validated against
# cpu_ref with it on, the 3,000 batch-1 lines replayed with graphs compared with it off, and
# batch 1 and 32 latency with it off and on, in one run
step pdl 180 bash -c 'set -o pipefail; SQZ_CUDA_PDL=1 build-gpu/sqz validate --random squeezebert-uncased --backend cuda --precision fp16 --batch 4 --seq 64 --seed 5 | tail -n 2 || exit 1
  SQZ_CUDA_PDL=1 compute-sanitizer --tool racecheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --precision fp16 --batch 2 --seq 70 --seed 2 | tail -n 1 || exit 3
  if [ -f /tmp/l3k.jsonl ] && [ -f /tmp/replay-0.jsonl ]; then SQZ_CUDA_PDL=1 build-gpu/sqz infer --model /tmp/sqb-full --task embed --backend cuda --batch-tokens 1 --input /tmp/l3k.jsonl --output /tmp/replay-pdl.jsonl 2>&1 | tail -n 1
    python3 -c "import json; a=[json.loads(l)[\"embedding\"] for l in open(\"/tmp/replay-pdl.jsonl\")]; b=[json.loads(l)[\"embedding\"] for l in open(\"/tmp/replay-0.jsonl\")]; d=max(abs(x-y) for u,v in zip(a,b) for x,y in zip(u,v)); print(len(a), \"lines, max |pdl - no graph| =\", d); exit(0 if len(a)==len(b)==3000 and d<=1e-5 else 1)" || exit 1; fi
  for p in 0 1 0 1; do echo "-- SQZ_CUDA_PDL=$p"; SQZ_CUDA_PDL=$p build-gpu/sqz bench --model /tmp/sqb-full --backends cuda --devices cuda:0 --precisions fp16 --batch 1,32 --length 128 --mixed-batch none --budget 0.5 --peak-budget 0 --outputs pooler_output --quiet | grep -E "^engine|sqz:cuda"; done'
# PyTorch torch.compile (max-autotune when it builds within its budget, else default) and ONNX
# Runtime's CUDA provider where the image has it, with the host-copy columns (bench/README.md)
step torch-peer-compile 420 python3 bench/torch_gpu_peer.py /tmp/sqb-full --cells 1x128,32x128,256x128 --fp16 --compile --compile-budget 180 --ort --json "$OUT/torch-12.json"
{
  echo "{\"date\": \"$(date -u +%FT%TZ)\", \"steps\": ["
  for i in "${!names[@]}"; do
    [ "$i" -gt 0 ] && echo ","
    printf '{"step": "%s", "result": "%s", "time": "%s"}' "${names[$i]}" "${results[$i]}" "${notes[$i]}"
  done
  echo "]}"
} > "$OUT/summary.json"
echo
echo "== GPU check summary ($(date -u +%F), logs in $OUT)"
printf '%-34s %-10s %s\n' step result time
for i in "${!names[@]}"; do
  printf '%-34s %-10s %s\n' "${names[$i]}" "${results[$i]}" "${notes[$i]}"
done
grep -h -E "^-- |forward on|all [0-9]+ nodes|first node out|sequences/s \(" "$LOGS"/validate-cuda.log \
  "$LOGS"/throughput-*.log "$LOGS"/torch-peer*.log 2>/dev/null
grep -h -E "^-- |^engine|sqz:cuda|lines/s|device busy|max \|graph" "$LOGS"/bench-outputs.log "$LOGS"/bench-devices.log \
  "$LOGS"/infer-*.log 2>/dev/null
