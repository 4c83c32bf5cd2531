/* Device discovery for the OpenCL backend: is there any platform with a device? */
#include <CL/cl.h>
#include <CL/cl_ext.h>

#include "runtime/error.h"

sqz_status sqz_opencl_probe(void);

sqz_status sqz_opencl_probe(void)
{
    cl_uint platforms = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &platforms);
    if (err == CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && platforms == 0))
        return sqz_fail(SQZ_ERR_NO_DEVICE, "opencl: no OpenCL platform is installed (no ICD found; "
                        "install pocl-opencl-icd or a GPU driver, or set OCL_ICD_VENDORS)");
    if (err != CL_SUCCESS)
        return sqz_fail(SQZ_ERR_NO_DEVICE, "opencl: clGetPlatformIDs failed with code %d", (int)err);
    return SQZ_OK;
}
