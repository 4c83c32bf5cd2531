/* The cpu backend's row kernels at x86 level "avx512" (flags in CMakeLists.txt). */
#define CPU_LEVEL avx512
#define CPU_LEVEL_NAME "avx512"
#include "cpu/cpu_kernels.inc"
