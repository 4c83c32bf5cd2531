#!/usr/bin/env bash
# Run HERE (a machine with Debian's registry) before a GPU check: the GPU machine reaches no
# registry and its image has no Debian -dev packages, so the libraries and headers the build
# needs travel with the call in .gpu-deps/ (git-ignored; pass it in the device tool's carry).
# With --build it also builds build-gpu here for sm_90a (binaries and test programs, object
# files removed, stamped with bench/source_hash.sh's hash), so that the GPU check skips its
# build when the sources are unchanged:
#   tools/prepare_gpu_deps.sh --build && (device tool) carry [".gpu-deps", "build-gpu"]
#   command "bench/gpu_check.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(
  libjansson4 libjansson-dev
  libcmocka0 libcmocka-dev
  libutf8proc2 libutf8proc-dev
  zlib1g zlib1g-dev
  ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-c-headers opencl-clhpp-headers
  pkgconf pkgconf-bin libpkgconf3
)
rm -rf .gpu-deps
mkdir -p .gpu-deps/debs .gpu-deps/root
[ "$(id -u)" -eq 0 ] && apt-get update -qq
(cd .gpu-deps/debs && apt-get download -qq "${packages[@]}")
for deb in .gpu-deps/debs/*.deb; do dpkg -x "$deb" .gpu-deps/root; done
rm -rf .gpu-deps/debs
du -sh .gpu-deps
if [ "${1:-}" = "--build" ]; then
  source bench/source_hash.sh
  rm -rf build-gpu
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR=ON -DSQZ_WITH_CUDA=ON -DSQZ_WITH_OPENCL=ON \
    -DSQZ_WITH_CUDA_SIM=OFF -DCMAKE_CUDA_ARCHITECTURES=90a > /dev/null
  cmake --build build-gpu -j"$(nproc)" > build-gpu.log 2>&1 || { tail -30 build-gpu.log; exit 1; }
  find build-gpu -name '*.o' -delete
  rm -f build-gpu/*.a build-gpu/libsqueezebert.so*  # everything links the static library in
  # only the test programs the GPU check runs (its tests step): the carry limit is 64 MiB
  for t in build-gpu/tests/test_*; do
    case "$(basename "$t")" in test_backend_ops|test_fixtures|test_infer|test_cli) ;; *) rm -f "$t" ;; esac
  done
  source_hash > build-gpu/source-hash
  du -sh build-gpu
fi
