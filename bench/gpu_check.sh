#!/usr/bin/env bash
# The one-call GPU check: run it first whenever a GPU machine is lent (see tools/
# prepare_gpu_deps.sh for what must travel with it). Sized to finish in under 8 minutes on
# an H100 or H200. Every step runs even if an earlier one failed; each step's log and a
# JSON summary go to $OUT (default ./gpu-check-out), and the summary table prints last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
root=$PWD/.gpu-deps/root
lib=$root/usr/lib/x86_64-linux-gnu
declare -a names=() results=() notes=()

step() { # step NAME TIMEOUT_S COMMAND...: runs, logs to $OUT/NAME.log, records the result
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  names+=("$name")
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

step gpu-info 60 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -n 2; echo "OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-unset}"'
step build 300 bash -c "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR=ON -DSQZ_WITH_CUDA=ON -DSQZ_WITH_OPENCL=ON -DCMAKE_CUDA_ARCHITECTURES=90a ${cmake_deps[*]} && cmake --build build-gpu -j16"
step devices 60 build-gpu/sqz devices
step devices-without-icd-workaround 60 env -u OCL_ICD_VENDORS build-gpu/sqz devices
step tests 300 ctest --test-dir build-gpu --output-on-failure -j8
step validate-cuda-fused 180 build-gpu/sqz validate --random squeezebert-uncased --backend cuda --batch 4 --seq 64 --seed 5
step validate-cuda-unfused 180 env SQZ_DISABLE_FUSION=1 build-gpu/sqz validate --random squeezebert-uncased --backend cuda --batch 4 --seq 64 --seed 5
step compute-sanitizer 180 bash -c 'compute-sanitizer --tool memcheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --batch 3 --seq 16 --seed 2 && compute-sanitizer --tool racecheck --error-exitcode 3 build-gpu/sqz validate --random tiny --backend cuda --batch 2 --seq 8 --seed 2'
step throughput-cuda 180 bash -c 'build-gpu/sqz random-model --config squeezebert-uncased --seed 1 --out /tmp/sqb-full && for cell in "1 128" "32 128" "256 128" "32 512"; do set -- $cell; build-gpu/sqz demo --model /tmp/sqb-full --backend cuda --batch $1 --length $2 --no-padding --repeat 20 | grep -E "forward on|first run"; done'
step sqz-bench-cuda 240 build-gpu/sqz bench --model /tmp/sqb-full --backends cuda,opencl --devices cuda:0,opencl:NVIDIA --precisions fp32 --batch 1,32,256 --length 128 --mixed-batch 32 --budget 1 --json "$OUT/bench.json" --plot "$OUT/bench.svg"
step torch-peer 240 python3 bench/torch_gpu_peer.py /tmp/sqb-full --fp16 --json "$OUT/torch.json"
step validate-opencl-gpu-fused 120 build-gpu/sqz validate --random squeezebert-uncased --backend opencl --device NVIDIA --batch 4 --seq 64 --seed 5
step validate-opencl-gpu-unfused 120 env SQZ_DISABLE_FUSION=1 build-gpu/sqz validate --random squeezebert-uncased --backend opencl --device NVIDIA --batch 4 --seq 64 --seed 5
step throughput-opencl-gpu 120 bash -c 'build-gpu/sqz random-model --config squeezebert-uncased --seed 1 --out /tmp/sqb-full && for b in 1 32 256; do build-gpu/sqz demo --model /tmp/sqb-full --backend opencl --device NVIDIA --batch $b --length 128 --no-padding --repeat 5 | grep -E "forward on|first run"; done'

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
grep -h -E "forward on|first run|all [0-9]+ nodes|first node out|sequences/s \(" "$OUT"/validate-*.log \
  "$OUT"/throughput-*.log "$OUT"/torch-peer.log 2>/dev/null
