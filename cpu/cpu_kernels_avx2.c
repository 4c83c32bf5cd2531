/* The cpu backend's row kernels at x86 level "avx2" (flags in CMakeLists.txt). */
#define CPU_LEVEL avx2
#define CPU_LEVEL_NAME "avx2"
#include "cpu/cpu_kernels.inc"
