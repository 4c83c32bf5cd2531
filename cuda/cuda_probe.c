/* Device discovery for the CUDA backend. Runs plans in a later stage; today it tells
 * clearly whether a usable device and driver are present. */
#include <cuda_runtime_api.h>

#include "runtime/error.h"

sqz_status sqz_cuda_probe(void);

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
