/* The cuda-sim backend: cuda/cuda_backend.cu compiled by the host C++ compiler against
 * cuda/sim/cuda_sim.h, so that the CUDA backend's code and kernels run (slowly) on the CPU
 * and every CI run checks them against cpu_ref. */
#define SQZ_CUDA_SIM 1
#include "cuda/cuda_backend.cu"
