/* ReLU on CUDA: one grid-stride elementwise kernel each way, on the core's
 * stream: the RELU and RELU_DX of relu.h, the same expressions as on the CPU. */
#include <cuda_runtime.h>

#include "relu.h"

#define THREADS 256

namespace {

__global__ void relu_fwd_kernel(const float *x, float *y, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = RELU(x[i], 0);
}

__global__ void relu_bwd_kernel(const float *x, const float *dy, float *dx, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        dx[i] = RELU_DX(x[i], 0, dy[i], 0);
}

int grid_for(size_t total)
{
    size_t blocks = (total + THREADS - 1) / THREADS;
    return (int)(blocks < 65535 ? (blocks ? blocks : 1) : 65535);
}

int launched(const dm_elementwise *s, const char *what, dm_error *err)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return dm_fail(err, DM_ERR_DEVICE, "%s: cuda: %s launch failed: %s", s->name, what,
                       cudaGetErrorString(e));
    return DM_OK;
}

} // namespace

int relu_forward_cuda(const dm_elementwise *s, void *stream, size_t count, const float *x, float *y,
                      dm_error *err)
{
    relu_fwd_kernel<<<grid_for(count), THREADS, 0, (cudaStream_t)stream>>>(x, y, count);
    return launched(s, "relu forward", err);
}

int relu_backward_cuda(const dm_elementwise *s, void *stream, size_t count, const float *x,
                       const float *y, const float *dy, float *dx, dm_error *err)
{
    (void)y;
    relu_bwd_kernel<<<grid_for(count), THREADS, 0, (cudaStream_t)stream>>>(x, dy, dx, count);
    return launched(s, "relu backward", err);
}
