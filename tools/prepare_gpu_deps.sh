#!/usr/bin/env bash
# Run HERE (a machine with Debian's registry) before a GPU check: the GPU machine reaches no
# registry and its image has no Debian -dev packages, so the libraries and headers the build
# needs travel with the call in .gpu-deps/ (git-ignored; pass it in the device tool's carry).
#   tools/prepare_gpu_deps.sh && (device tool) carry [".gpu-deps"] command "bench/gpu_check.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(
  libjansson4 libjansson-dev
  libcmocka0 libcmocka-dev
  libutf8proc2 libutf8proc-dev
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
