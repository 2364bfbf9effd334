/* Flatten on CUDA: a device-to-device copy on the core's stream (NCHW
 * order is already the flattened order), skipped when src == dst. */
#include <cuda_runtime.h>

#include "dmnist/layer.h"
extern "C" {
#include "flatten.h"
}

int flatten_copy_cuda(const flatten_state *s, void *stream, size_t count, const float *src,
                      float *dst, dm_error *err)
{
    if (src == dst) return DM_OK;
    cudaError_t e = cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice,
                                    (cudaStream_t)stream);
    if (e != cudaSuccess)
        return dm_fail(err, DM_ERR_DEVICE, "%s: cuda: cudaMemcpyAsync failed: %s", s->name,
                       cudaGetErrorString(e));
    return DM_OK;
}
