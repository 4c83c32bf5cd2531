/* The cpu backend's row kernels at x86 level "baseline" (flags in CMakeLists.txt). */
#define CPU_LEVEL baseline
#define CPU_LEVEL_NAME "baseline"
#include "cpu/cpu_kernels.inc"
