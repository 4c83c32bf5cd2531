# Sourced by tools/prepare_gpu_deps.sh and bench/gpu_check.sh: one hash of every source the
# build reads, so a build-gpu folder made on the CPU machine is used on the GPU machine only
# when it was built from exactly these sources.
source_hash() {
  find CMakeLists.txt cmake include runtime graph cpu_ref cpu opencl cuda kernels cli tests/CMakeLists.txt \
    tests/*.c tests/*.cc tests/*.h -type f 2>/dev/null | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-40
}
