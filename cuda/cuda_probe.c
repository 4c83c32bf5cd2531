/* Device discovery for the CUDA backend. Runs plans in a later stage; today it tells
 * clearly whether a usable device and driver are present. */
#include <cuda_runtime_api.h>

#include "runtime/backend.h"
#include "runtime/error.h"

sqz_status sqz_cuda_probe(void)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
        return sqz_fail(SQZ_ERR_NO_DEVICE, "cuda: no usable device (cudaGetDeviceCount: %s: %s)",
                        cudaGetErrorName(err), cudaGetErrorString(err));
    if (count == 0)
        return sqz_fail(SQZ_ERR_NO_DEVICE, "cuda: the driver reports no CUDA device");
    return SQZ_OK;
}

sqz_status sqz_cuda_list_devices(char **text)
{
    if (sqz_cuda_probe() != SQZ_OK)
        return sqz_text_append(text, "cuda     -  %s\n", sqz_last_error());
    int count = 0;
    cudaGetDeviceCount(&count);
    for (int i = 0; i < count; i++) {
        struct cudaDeviceProp prop;
        cudaError_t err = cudaGetDeviceProperties(&prop, i);
        sqz_status st = err != cudaSuccess
            ? sqz_text_append(text, "cuda     %d  (cudaGetDeviceProperties: %s)\n", i, cudaGetErrorString(err))
            : sqz_text_append(text, "cuda     %d  %s [GPU] (sm_%d%d): %.1f GiB, %d SMs (plans run here once the CUDA backend lands)\n",
                              i, prop.name, prop.major, prop.minor, prop.totalGlobalMem / 1073741824.0,
                              prop.multiProcessorCount);
        if (st != SQZ_OK)
            return st;
    }
    return SQZ_OK;
}
